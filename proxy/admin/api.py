"""The admin port: the operator's control API (``/v1``); health and metrics are in ``health.py``.

It listens on loopback by default. Every state-changing call needs the operator token:
an agent sharing localhost with the sidecar holds only its own runtime token, which
never equals it.
"""

from __future__ import annotations

import hmac
import json
import re
import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from proxy.adapters import jsonrpc
from proxy.adapters.http_guard import OriginPolicy
from proxy.admin.console import console_routes
from proxy.audit.sink import AuditSink, AuditUnavailable
from proxy.core.approvals import rfc3339
from proxy.core.checker import Checker
from proxy.core.policy import Policy
from proxy.core.revocations import KINDS, SignedRevocations
from proxy.core.sessions import MODES, TOKEN_PREFIX, SessionManager, token_fingerprint
from proxy.credentials.keys import JWKS_PATH
from proxy.state.base import Store, StoreUnavailable
from proxy.telemetry import Metrics

AGENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$")
RESERVED_AGENTS = frozenset({"anonymous"})


APPROVER_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,128}$")


def problem(status: int, message: str, *, challenge: str | None = None) -> web.Response:
    """Every admin-port error: ``{"error": message}``, with ``WWW-Authenticate`` for a 401."""
    headers = {"WWW-Authenticate": challenge} if challenge else None
    return web.json_response({"error": message}, status=status, headers=headers)


async def optional_body(
    request: web.Request, fields: frozenset[str], hint: str
) -> tuple[dict[str, str], web.Response | None]:
    """An operator call's optional JSON body of string ``fields``; ``approver`` (a label recorded
    next to the credential's fingerprint) must be a short printable name. ``hint`` shows the shape."""
    raw = await request.read()
    if not raw.strip():
        return {}, None
    try:
        body: Any = jsonrpc.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}, problem(400, hint)
    if not isinstance(body, dict) or set(body) - fields:
        return {}, problem(400, hint)
    out: dict[str, str] = {}
    for key, value in body.items():
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            return {}, problem(400, f"{key} must be a non-empty string.")
        out[key] = value.strip()
    if "approver" in out and not APPROVER_NAME.fullmatch(out["approver"]):
        return {}, problem(400, "approver must be 1-128 printable characters.")
    return out, None


def operator_refusal(request: web.Request, admin_token: str | None) -> web.Response | None:
    """None when the request carries the operator token; otherwise the refusal to send.

    An agent's runtime token (``wkt_...``) or JWT never equals the operator token, so an agent
    sharing localhost with the sidecar gets 401 here for every operator call.
    """
    if not admin_token:
        return problem(503, "The control API is disabled: start Wicket with WICKET_ADMIN_TOKEN set.")
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(credential.strip().encode(), admin_token.encode()):
        return problem(
            401,
            "Operator credential required (Authorization: Bearer $WICKET_ADMIN_TOKEN).",
            challenge='Bearer realm="wicket-admin"',
        )
    return None


def host_check(origins: OriginPolicy, metrics: Metrics) -> Middleware:
    """DNS-rebinding protection for the admin port, as on the data port: a page a browser loaded
    from another site cannot reach ``/v1`` through a name that resolves to this host."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == JWKS_PATH:
            return await handler(request)  # public keys, fetched by upstreams under whatever name they use
        refused = origins.host_problem(request.headers.get("Host"))
        if refused is not None:
            metrics.rejections.labels("origin").inc()
            return problem(403, f"Forbidden: {refused}.")
        return await handler(request)

    return check


@web.middleware
async def store_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every control call that needs the state store answers 503 when it is down, never a 500."""
    try:
        return await handler(request)
    except StoreUnavailable as exc:
        return problem(503, f"The state store is unavailable ({exc}); nothing was changed.")


class AdminApi:
    def __init__(
        self,
        *,
        admin_token: str | None,
        policy: Policy,
        sessions: SessionManager,
        checker: Checker,
        audit: AuditSink,
        store: Store,
        revocations: SignedRevocations,
        metrics: Metrics,
    ) -> None:
        self._admin_token = admin_token
        self._revocations = revocations
        self._policy = policy
        self._sessions = sessions
        self._checker = checker
        self._audit = audit
        self._store = store
        self._metrics = metrics

    def use_policy(self, policy: Policy) -> None:
        self._policy = policy

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/sessions", self.create_session),
            web.post("/v1/revocations", self.revoke),
            *console_routes(),
        ]

    def _operator(self, request: web.Request) -> web.Response | None:
        """None when the request carries the operator token; otherwise the refusal to send."""
        return operator_refusal(request, self._admin_token)

    async def create_session(self, request: web.Request) -> web.Response:
        if (refusal := self._operator(request)) is not None:
            return refusal
        try:
            body: Any = await request.json(loads=jsonrpc.loads)
        except (ValueError, UnicodeDecodeError):
            return problem(400, "The body must be a JSON object.")
        if not isinstance(body, dict):
            return problem(400, "The body must be a JSON object.")
        unknown = set(body) - {"agent_id", "scope", "mode", "intent", "ttl_seconds"}
        if unknown:
            return problem(400, f"Unknown field(s): {', '.join(sorted(unknown))}.")
        agent_id = body.get("agent_id")
        if not isinstance(agent_id, str) or not AGENT_ID.fullmatch(agent_id) or agent_id in RESERVED_AGENTS:
            return problem(400, "agent_id must be 1-128 characters of [A-Za-z0-9._:@/-] and not 'anonymous'.")
        scope = body.get("scope", list(self._policy.default_scope.patterns))
        if isinstance(scope, str):
            scope = [scope]
        if not isinstance(scope, list) or not all(isinstance(s, str) and s for s in scope):
            return problem(400, "scope must be a list of non-empty tool-name globs.")
        mode = body.get("mode", "read-only")
        if mode not in MODES:
            return problem(400, f"mode must be one of: {', '.join(MODES)}.")
        intent = body.get("intent")
        if intent is not None and (not isinstance(intent, str) or len(intent) > 2000):
            return problem(400, "intent must be a string of at most 2000 characters.")
        ttl = body.get("ttl_seconds", self._policy.session_ttl_seconds)
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= self._policy.session_max_ttl_seconds:
            return problem(400, f"ttl_seconds must be an integer from 1 to {self._policy.session_max_ttl_seconds}.")

        granted_by = "operator" if mode == "read-write" else None
        session = await self._sessions.create(
            agent_id, scope=scope, mode=mode, ttl_seconds=ttl, intent=intent, granted_by=granted_by
        )
        token = await self._sessions.issue_token(session)
        try:
            await self._checker.audit_event(
                {
                    "event": "session",
                    "action": "session.create",
                    "agent_id": agent_id,
                    "session_id": session.session_id,
                    "protocol": "api",
                    "mode": mode,
                    "scope": list(session.scope),
                    "granted_by": granted_by or "",
                    "token_fingerprint": token_fingerprint(token)[:16],
                    "reason": "operator standing grant: read-write" if granted_by else "session created read-only",
                }
            )
        except AuditUnavailable:
            return problem(503, "The audit log cannot be written; no session was issued.")
        self._metrics.sessions_created.labels(mode, "token").inc()
        return web.json_response(
            {"session_id": session.session_id, "token": token, "expires_at": rfc3339(session.expires_at)},
            status=201,
            dumps=lambda obj: json.dumps(obj, separators=(",", ":")),
        )

    async def revoke(self, request: web.Request) -> web.Response:
        """Revoke an agent, a session or a token on every replica (SPEC §2)."""
        if (refusal := self._operator(request)) is not None:
            return refusal
        try:
            body: Any = await request.json(loads=jsonrpc.loads)
        except (ValueError, UnicodeDecodeError):
            return problem(400, "The body must be a JSON object.")
        if not isinstance(body, dict) or set(body) != {"kind", "id"}:
            return problem(400, 'The body must be {"kind": "agent" | "session" | "token", "id": "..."}.')
        kind, ident = body["kind"], body["id"]
        if kind not in KINDS or not isinstance(ident, str) or not 0 < len(ident) <= 512:
            return problem(400, "kind must be agent, session or token, and id a non-empty string.")
        if kind == "token" and ident.startswith(TOKEN_PREFIX):
            ident = token_fingerprint(ident)[:16]  # revocations (and the audit) name tokens by fingerprint only
        # A session is revoked only if its record exists (one that fails verification counts:
        # revoking it is safe); checked as the revocation is announced, not in a read before it.
        record = SessionManager.session_key(ident) if kind == "session" else None
        if not await self._revocations.revoke(kind, ident, if_present=record):
            return problem(
                404,
                f"No live session {ident!r} (unknown, or already expired); nothing was revoked. "
                "GET /v1/sessions (or the console) lists the live ones.",
            )
        self._metrics.revocations.labels(kind).inc()
        try:
            await self._checker.audit_event(
                {
                    "event": "revocation",
                    "action": f"revoke.{kind}",
                    "protocol": "api",
                    "kind": kind,
                    "revoked": ident,
                    "agent_id": ident if kind == "agent" else "",
                    "session_id": ident if kind == "session" else "",
                    "granted_by": "operator",
                    "reason": f"operator revoked {kind} {ident}",
                }
            )
        except AuditUnavailable:
            return problem(503, "The revocation is in force, but the audit log cannot be written.")
        return web.json_response({"kind": kind, "id": ident, "revoked_at": rfc3339(time.time())}, status=201)
