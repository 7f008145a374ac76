"""The operator's view of pinned MCP tools on the admin port (behind the operator token).

``GET /v1/tools`` lists every pinned tool with its status (pinned, changed, poisoned,
approved), both hashes and the pending definition to review; ``POST /v1/tools/{name}/approve``
adopts the pending definition as the new pin; ``POST /v1/tools/{name}/trust`` accepts the
annotations of the pinned definition (``readOnlyHint: true`` then makes the tool a read) until
its definition changes. An agent's own token gets 401 on all three.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from proxy.admin.api import operator_refusal, optional_body, problem
from proxy.audit.sink import AuditUnavailable
from proxy.core.approvals import approver_identity
from proxy.core.sessions import token_fingerprint
from proxy.core.toolpins import ToolPinError, ToolPins

MAX_NAME = 1024
_BODY_FIELDS = frozenset({"approver", "upstream", "sha256"})
_BODY_HINT = 'The body must be empty or a JSON object like {"approver": "alice", "upstream": "...", "sha256": "..."}.'


class ToolsApi:
    def __init__(self, *, admin_token: str | None, toolpins: ToolPins, upstream: str) -> None:
        self._admin_token = admin_token
        self._toolpins = toolpins
        self._upstream = upstream  # the default when a request names none: the one this Wicket proxies

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/tools", self.list_tools),
            # ``.+``: tool names may contain "/" (sent percent-encoded, decoded before matching).
            web.post("/v1/tools/{name:.+}/approve", self.approve),
            web.post("/v1/tools/{name:.+}/trust", self.trust),
        ]

    async def list_tools(self, request: web.Request) -> web.Response:
        if (refusal := operator_refusal(request, self._admin_token)) is not None:
            return refusal
        status = request.query.get("status", "all")
        if status not in ("all", "pending", "held"):
            return problem(400, "status must be 'all', 'pending' or 'held'.")
        upstream = request.query.get("upstream") or None
        tools = await self._toolpins.states(upstream)
        if status == "pending":
            tools = [t for t in tools if t["pending_sha256"] is not None]
        elif status == "held":  # held at a higher effect than their annotations claim
            tools = [t for t in tools if t.get("held_above_annotations")]
        return web.json_response({"tools": tools}, dumps=_dumps)

    async def approve(self, request: web.Request) -> web.Response:
        return await self._decide(request, self._toolpins.approve, "approved")

    async def trust(self, request: web.Request) -> web.Response:
        return await self._decide(request, self._toolpins.trust, "trusted")

    async def _decide(self, request: web.Request, decide: Any, done: str) -> web.Response:
        """One operator decision about one tool (``approve`` or ``trust``), with the same body and answers."""
        if (refusal := operator_refusal(request, self._admin_token)) is not None:
            return refusal
        assert self._admin_token is not None
        name = request.match_info["name"]
        if not 0 < len(name) <= MAX_NAME:
            return problem(404, "No such tool.")
        body, refused = await optional_body(request, _BODY_FIELDS, _BODY_HINT)
        if refused is not None:
            return refused
        if len(body.get("upstream", "")) > 2048:
            return problem(400, "upstream must be at most 2048 characters.")
        approver = approver_identity(token_fingerprint(self._admin_token), body.get("approver"))["decided_by"]
        upstream = body.get("upstream") or self._upstream
        try:
            tool = await decide(upstream, name, approver, sha256=body.get("sha256"))
        except ToolPinError as exc:
            return problem(exc.status, exc.message)
        except AuditUnavailable:
            return problem(503, f"The audit log cannot be written, so nothing was {done}; retry when it recovers.")
        return web.json_response({"tool": tool}, dumps=_dumps)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
