"""Who is calling: SPEC §3, resolved from the ``Authorization`` header value alone.

It takes a plain string, not a request object, so every adapter (MCP, A2A, the check
API) resolves callers the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.core.policy import Policy
from proxy.core.sessions import TOKEN_PREFIX, Session, SessionIntegrityError, SessionManager

ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Caller:
    """A resolved caller. ``session`` is the token's session; anonymous callers get theirs later."""

    agent_id: str
    session: Session | None
    anonymous: bool = False


class IdentityError(Exception):
    """The caller cannot be admitted. ``status`` is the HTTP status an adapter should use."""

    def __init__(self, status: int, reason: str, *, integrity: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.integrity = integrity


class IdentityResolver:
    """Steps 1 and 4 of SPEC §3; OIDC and federation plug in ahead of anonymous later."""

    def __init__(self, sessions: SessionManager, policy: Policy) -> None:
        self._sessions = sessions
        self._policy = policy

    async def resolve(self, authorization: str | None) -> Caller:
        if not authorization:
            if self._policy.anonymous_enabled:
                return Caller(agent_id=ANONYMOUS, session=None, anonymous=True)
            raise IdentityError(401, "Authentication required: present a Wicket runtime token (Bearer wkt_...).")
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise IdentityError(401, "Unsupported Authorization header: use 'Bearer <token>'.")
        if not credential.startswith(TOKEN_PREFIX):
            raise IdentityError(
                401, "Bearer token is not a Wicket runtime token, and no OIDC issuer is configured to verify it."
            )
        try:
            session = await self._sessions.by_token(credential)
        except SessionIntegrityError as exc:
            raise IdentityError(403, f"Session denied: {exc}.", integrity=True) from exc
        if session is None:
            raise IdentityError(401, "Runtime token is unknown, expired or revoked.")
        return Caller(agent_id=session.agent_id, session=session)

    async def session_for(self, caller: Caller, *, fresh: bool = False) -> Session:
        """The session a request runs in: the token's, else an anonymous one.

        ``fresh`` gives an anonymous caller a session of its own (a legacy MCP session
        maps to one Wicket session); otherwise it shares the per-agent default session.
        """
        if caller.session is not None:
            return caller.session
        policy = self._policy
        if fresh:
            return await self._sessions.create(
                caller.agent_id,
                scope=policy.anonymous_scope.patterns,
                mode="read-only",
                ttl_seconds=policy.session_ttl_seconds,
                origin="anonymous",
            )
        return await self._sessions.anonymous(
            caller.agent_id, scope=policy.anonymous_scope.patterns, ttl_seconds=policy.session_ttl_seconds
        )
