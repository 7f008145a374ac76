"""The operator's side of elevation and oversight on the admin port (all behind the operator token).

``/v1/approvals`` lists, shows, approves and denies approval requests; ``/v1/sessions`` lists
live sessions with their elevation and anomaly state; ``/v1/sessions/{id}/accountability``
verifies a session's record and its audit trail; ``/v1/events`` streams the audit log live
(Server-Sent Events) for the console. An agent's own token gets 401 on every one of them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy.admin.api import operator_refusal, optional_body, problem
from proxy.audit.feed import EventFeed, FeedClosed
from proxy.audit.inspect import inspect_session
from proxy.audit.sink import AuditSink, AuditUnavailable
from proxy.core.action import Activity
from proxy.core.anomaly import escalation
from proxy.core.approval_store import Approvals
from proxy.core.approvals import ApprovalError, ApprovalRequest, approver_identity, grant_key, rfc3339
from proxy.core.policy import Policy
from proxy.core.revocations import RevocationList
from proxy.core.sessions import Session, SessionIntegrityError, SessionManager, token_fingerprint
from proxy.state.base import Store

log = logging.getLogger(__name__)

APPROVER_FIELD = frozenset({"approver"})
_APPROVER_HINT = 'The body must be empty or a JSON object like {"approver": "alice"}.'
SESSION_ID = re.compile(r"^ses_[A-Za-z0-9_]{1,80}$")
HEARTBEAT_SECONDS = 15.0


def _session_view(session: Session) -> dict[str, Any]:
    return {
        "session_id": session.session_id,
        "agent_id": session.agent_id,
        "mode": session.mode,
        "scope": list(session.scope),
        "intent": session.intent,
        "origin": session.origin,
        "created_at": rfc3339(session.created_at),
        "expires_at": rfc3339(session.expires_at),
    }


class ControlApi:
    def __init__(
        self,
        *,
        admin_token: str | None,
        policy: Policy,
        sessions: SessionManager,
        approvals: Approvals,
        store: Store,
        audit: AuditSink,
        audit_path: Path | None,
        feed: EventFeed,
        revocations: RevocationList,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._admin_token = admin_token
        self._policy = policy
        self._sessions = sessions
        self._approvals = approvals
        self._store = store
        self._audit = audit
        self._audit_path = audit_path
        self._feed = feed
        self._revocations = revocations
        self._clock = clock
        self.heartbeat_seconds = HEARTBEAT_SECONDS

    def use_policy(self, policy: Policy) -> None:
        self._policy = policy

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/approvals", self.list_approvals),
            web.get("/v1/approvals/{approval_id}", self.get_approval),
            web.post("/v1/approvals/{approval_id}/approve", self.approve),
            web.post("/v1/approvals/{approval_id}/deny", self.deny),
            web.get("/v1/sessions", self.list_sessions),
            web.get("/v1/sessions/{session_id}/accountability", self.accountability),
            web.get("/v1/events", self.events),
        ]

    # -- approvals ----------------------------------------------------------------------------

    async def list_approvals(self, request: web.Request) -> web.Response:
        if (refusal := operator_refusal(request, self._admin_token)) is not None:
            return refusal
        status = request.query.get("status", "pending")
        if status not in ("pending", "all"):
            return problem(400, "status must be 'pending' or 'all'.")
        found = await self._approvals.recent(pending_only=status == "pending")
        now = self._clock()
        return web.json_response({"approvals": [r.public(now) for r in found]})

    async def get_approval(self, request: web.Request) -> web.Response:
        if (refusal := operator_refusal(request, self._admin_token)) is not None:
            return refusal
        approval_id = request.match_info["approval_id"]
        try:
            found = await self._approvals.get(approval_id)
        except SessionIntegrityError as exc:  # reported, never shown as if it were valid
            return problem(409, f"Approval request {approval_id} cannot be trusted: {exc}.")
        if found is None:
            return problem(404, f"No approval request {approval_id!r} (unknown, or decided long ago).")
        return web.json_response(found.public(self._clock()))

    async def approve(self, request: web.Request) -> web.Response:
        return await self._decide(request, approve=True)

    async def deny(self, request: web.Request) -> web.Response:
        return await self._decide(request, approve=False)

    async def _decide(self, request: web.Request, *, approve: bool) -> web.Response:
        if (refusal := operator_refusal(request, self._admin_token)) is not None:
            return refusal
        assert self._admin_token is not None
        body, refused = await optional_body(request, APPROVER_FIELD, _APPROVER_HINT)
        if refused is not None:
            return refused
        approver = approver_identity(token_fingerprint(self._admin_token), body.get("approver"))
        approval_id = request.match_info["approval_id"]
        try:
            if approve:
                decided, elevation = await self._approvals.approve(approval_id, approver)
            else:
                decided = await self._approvals.deny(approval_id, approver)
        except ApprovalError as exc:
            return problem(exc.status, exc.message)
        except AuditUnavailable:
            verb = "approved" if approve else "denied"
            return problem(503, f"The audit log cannot be written, so nothing was {verb}; retry when it recovers.")
        now = self._clock()
        body: dict[str, Any] = {"approval": decided.public(now)}
        if approve:
            body["elevation"] = _elevation_view(decided, elevation.active(now))
        return web.json_response(body)

    # -- sessions -----------------------------------------------------------------------------

    async def list_sessions(self, request: web.Request) -> web.Response:
        if (refusal := operator_refusal(request, self._admin_token)) is not None:
            return refusal
        sessions = await self._sessions.recent()
        ids = [s.session_id for s in sessions]
        elevations = await self._approvals.elevations(ids)
        counts = await self._store.activity_counts(ids)
        now = self._clock()
        settings = self._policy.guardian.anomaly
        out = []
        for session, elevation, (calls, denials, writes) in zip(sessions, elevations, counts, strict=True):
            flagged = escalation(Activity(calls=calls, denials=denials, writes=writes), settings) is not None
            revoked = self._revocations.reason(session.agent_id, session.session_id, None) is not None
            out.append(
                {
                    **_session_view(session),
                    "revoked": revoked,
                    # A revoked session can use nothing, its elevation included: showing one would mislead.
                    "elevation": None if elevation is None or revoked else elevation.public(now),
                    "anomaly": {"calls": calls, "denials": denials, "writes": writes, "flagged": flagged},
                }
            )
        return web.json_response({"sessions": out})

    async def accountability(self, request: web.Request) -> web.Response:
        if (refusal := operator_refusal(request, self._admin_token)) is not None:
            return refusal
        session_id = request.match_info["session_id"]
        if not SESSION_ID.fullmatch(session_id):
            return problem(404, f"No session {session_id!r}.")
        record, hmac_valid = await self._sessions.inspect(session_id)
        if record is None:
            return problem(404, f"No session {session_id!r} (unknown or expired).")
        shown = dict(record)
        for key in ("created_at", "expires_at"):
            if isinstance(shown.get(key), int | float):
                shown[key] = rfc3339(shown[key])
        return web.json_response(
            {"session": shown, "hmac_valid": hmac_valid, "audit": await self._audit_view(session_id)}
        )

    async def _audit_view(self, session_id: str) -> dict[str, Any]:
        count, head = self._audit.count, self._audit.head
        view: dict[str, Any] = {"log": str(self._audit_path) if self._audit_path else "-", "head": head, "count": count}
        if self._audit_path is None:
            view.update(
                verifiable=False,
                chain_valid=None,
                session_events=None,
                session_chain_valid=None,
                problems=[
                    "The audit log is written to stdout, so Wicket cannot read it back to verify it here; "
                    "verify the collected log with `wicket audit verify FILE`."
                ],
            )
            return view
        found = await asyncio.to_thread(
            inspect_session, self._audit_path, session_id, written_count=count, written_head=head
        )
        view.update(
            verifiable=True,
            chain_valid=found.chain_valid,
            verified_count=found.verified_count,
            session_events=found.session_events,
            session_chain_valid=found.session_chain_valid,
            problems=found.problems,
            calls=found.calls,
            calls_omitted=found.calls_omitted,
        )
        return view

    # -- the live feed ------------------------------------------------------------------------

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Every audit event written after the connection opened, as ``data: {json}``; a comment
        line every ``heartbeat_seconds`` keeps proxies from closing an idle stream."""
        if (refusal := operator_refusal(request, self._admin_token)) is not None:
            return refusal
        try:
            subscription = self._feed.subscribe()
        except FeedClosed:
            return problem(503, "Wicket is shutting down.")
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        with subscription:
            await response.prepare(request)
            try:
                await response.write(b": connected\n\n")
                while True:
                    event = await subscription.next(wait=self.heartbeat_seconds)
                    if event is None:
                        await response.write(b": heartbeat\n\n")
                        continue
                    line = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
                    await response.write(b"data: " + line.encode() + b"\n\n")
            except (FeedClosed, ConnectionError):
                pass
        return response


def _elevation_view(request: ApprovalRequest, active: frozenset[str]) -> dict[str, Any]:
    return {
        "session_id": request.session_id,
        "actions": [a for a in request.actions if grant_key(a, request.arguments_sha256) in active]
        or list(request.actions),
        "expires_at": rfc3339(request.elevation_expires_at),
    }
