"""The operator's view of pinned MCP tools on the admin port (behind the operator token).

``GET /v1/tools`` lists every pinned tool with its status (pinned, changed, poisoned,
approved), both hashes and the pending definition to review; ``POST /v1/tools/{name}/approve``
adopts the pending definition as the new pin. An agent's own token gets 401 on both.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from proxy.admin.api import operator_refusal
from proxy.audit.sink import AuditUnavailable
from proxy.core.approvals import approver_identity
from proxy.core.sessions import token_fingerprint
from proxy.core.toolpins import ToolPinError, ToolPins

APPROVER_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,128}$")
MAX_NAME = 1024
_BODY_FIELDS = frozenset({"approver", "upstream", "sha256"})
_BODY_HINT = 'The body must be empty or a JSON object like {"approver": "alice", "upstream": "...", "sha256": "..."}.'


def _problem(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


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
        ]

    async def list_tools(self, request: web.Request) -> web.Response:
        if (refusal := operator_refusal(request, self._admin_token)) is not None:
            return refusal
        status = request.query.get("status", "all")
        if status not in ("all", "pending"):
            return _problem(400, "status must be 'all' or 'pending'.")
        upstream = request.query.get("upstream") or None
        tools = await self._toolpins.states(upstream)
        if status == "pending":
            tools = [t for t in tools if t["pending_sha256"] is not None]
        return web.json_response({"tools": tools}, dumps=_dumps)

    async def approve(self, request: web.Request) -> web.Response:
        if (refusal := operator_refusal(request, self._admin_token)) is not None:
            return refusal
        assert self._admin_token is not None
        name = request.match_info["name"]
        if not 0 < len(name) <= MAX_NAME:
            return _problem(404, "No such tool.")
        body, problem = await _body(request)
        if problem is not None:
            return problem
        approver = approver_identity(token_fingerprint(self._admin_token), body.get("approver"))["decided_by"]
        upstream = body.get("upstream") or self._upstream
        try:
            tool = await self._toolpins.approve(upstream, name, approver, sha256=body.get("sha256"))
        except ToolPinError as exc:
            return _problem(exc.status, exc.message)
        except AuditUnavailable:
            return _problem(503, "The audit log cannot be written, so nothing was approved; retry when it recovers.")
        return web.json_response({"tool": tool}, dumps=_dumps)


async def _body(request: web.Request) -> tuple[dict[str, str], web.Response | None]:
    """The optional body: ``approver`` (a label recorded next to the credential's fingerprint),
    ``upstream`` (default: this Wicket's) and ``sha256`` (the pending hash the operator reviewed)."""
    raw = await request.read()
    if not raw.strip():
        return {}, None
    try:
        body: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}, _problem(400, _BODY_HINT)
    if not isinstance(body, dict) or set(body) - _BODY_FIELDS:
        return {}, _problem(400, _BODY_HINT)
    out: dict[str, str] = {}
    for key, value in body.items():
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            return {}, _problem(400, f"{key} must be a non-empty string.")
        out[key] = value.strip()
    if "approver" in out and not APPROVER_NAME.fullmatch(out["approver"]):
        return {}, _problem(400, "approver must be 1-128 printable characters.")
    if "upstream" in out and len(out["upstream"]) > 2048:
        return {}, _problem(400, "upstream must be at most 2048 characters.")
    return out, None


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
