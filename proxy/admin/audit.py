"""The audit log's signed checkpoints on the admin port (behind the operator token).

``GET /v1/audit/checkpoint`` shows the chain head, the last signed checkpoint and whether the
log is on hold; ``POST /v1/audit/acknowledge`` is how an operator accepts a log that fell behind
its last checkpoint (``wicket audit acknowledge``): audited first, then the hold is lifted and
the file is signed as it now is.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy.admin.api import operator_refusal, optional_body, problem
from proxy.audit.checkpoint import CheckpointingSink
from proxy.audit.sink import AuditUnavailable
from proxy.core.approvals import approver_identity
from proxy.core.checker import Checker
from proxy.core.sessions import token_fingerprint
from proxy.telemetry import Metrics

_BODY_FIELDS = frozenset({"approver", "note"})
_BODY_HINT = 'The body must be empty or a JSON object like {"approver": "alice", "note": "restored from backup"}.'
MAX_NOTE = 1024


class AuditApi:
    def __init__(
        self, *, admin_token: str | None, checkpoints: CheckpointingSink | None, checker: Checker, metrics: Metrics
    ) -> None:
        self._admin_token = admin_token
        self._checkpoints = checkpoints
        self._checker = checker
        self._metrics = metrics

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/audit/checkpoint", self.status),
            web.post("/v1/audit/acknowledge", self.acknowledge),
        ]

    def _unavailable(self, request: web.Request) -> web.Response | None:
        if (refusal := operator_refusal(request, self._admin_token)) is not None:
            return refusal
        if self._checkpoints is None:
            return problem(404, "The audit log goes to stdout, so Wicket keeps no checkpoints of it.")
        return None

    def _view(self, checkpoints: CheckpointingSink) -> dict[str, Any]:
        last = checkpoints.last
        return {
            "log": str(checkpoints.path),
            "checkpoints": str(checkpoints.checkpoints_path),
            "count": checkpoints.count,
            "head": checkpoints.head,
            "held": checkpoints.hold is not None,
            "hold_reason": checkpoints.hold,
            "last_checkpoint": last.view() if last is not None else None,
            "problem": checkpoints.checkpoint_problem,
        }

    async def status(self, request: web.Request) -> web.Response:
        if (refusal := self._unavailable(request)) is not None:
            return refusal
        assert self._checkpoints is not None
        return web.json_response(self._view(self._checkpoints))

    async def acknowledge(self, request: web.Request) -> web.Response:
        if (refusal := self._unavailable(request)) is not None:
            return refusal
        checkpoints = self._checkpoints
        assert checkpoints is not None and self._admin_token is not None
        body, refused = await optional_body(request, _BODY_FIELDS, _BODY_HINT)
        if refused is not None:
            return refused
        if len(body.get("note", "")) > MAX_NOTE:
            return problem(400, f"note must be at most {MAX_NOTE} characters.")
        hold = checkpoints.hold
        if hold is None:
            return problem(409, "The audit log is not on hold: there is nothing to acknowledge.")
        who = approver_identity(token_fingerprint(self._admin_token), body.get("approver"))
        event: dict[str, Any] = {
            "event": "audit_acknowledged",
            "protocol": "api",
            "reason": hold,
            "decided_by": who["decided_by"],
        }
        if "note" in body:
            event["note"] = body["note"]
        try:
            await self._checker.audit_event(event)
        except AuditUnavailable:
            return problem(503, "The audit log cannot be written, so the hold stays; retry when it recovers.")
        try:
            await checkpoints.acknowledge(hold)
        except (AuditUnavailable, OSError) as exc:
            checkpoints.checkpoint_problem = f"no checkpoint could be signed after the acknowledgement: {exc}"
        self._metrics.audit_held.set(0)
        return web.json_response({"acknowledged": hold, **self._view(checkpoints)})
