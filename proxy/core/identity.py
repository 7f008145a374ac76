"""Who is calling: SPEC §3, resolved from the ``Authorization`` header value alone.

It takes a plain string, not a request object, so every adapter (MCP, A2A, the check
API) resolves callers the same way.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from proxy.core.action import Delegation
from proxy.core.policy import Policy
from proxy.core.revocations import RevocationList
from proxy.core.sessions import TOKEN_PREFIX, Session, SessionIntegrityError, SessionManager, token_fingerprint

ANONYMOUS = "anonymous"
TOOL_SCOPE_PREFIX = "tool:"


@dataclass(frozen=True, slots=True)
class Caller:
    """A resolved caller. ``session`` is the token's session; anonymous callers get theirs later."""

    agent_id: str
    session: Session | None
    anonymous: bool = False
    token_id: str | None = None  # a fingerprint of the credential, as revocations name it
    inbound_token: str | None = field(default=None, repr=False)
    """The agent's OIDC JWT: only the subject token for exchange-mode credentials, never forwarded or logged."""
    delegation: Delegation | None = None
    """The verified chain of a delegated credential (SPEC §3 step 3)."""


ANONYMOUS_CALLER = Caller(agent_id=ANONYMOUS, session=None, anonymous=True)
"""Every caller without a credential: one frozen value, not a new one per request."""


class ExternalIdentity(Protocol):
    """An agent verified by an external identity provider (SPEC §3 step 2)."""

    @property
    def agent_id(self) -> str: ...
    @property
    def scopes(self) -> tuple[str, ...]: ...
    @property
    def expires_at(self) -> float: ...
    @property
    def token_id(self) -> str: ...


class DelegatedIdentityLike(ExternalIdentity, Protocol):
    @property
    def delegation(self) -> Delegation: ...
    @property
    def mode(self) -> str: ...


class DelegationVerifier(Protocol):
    """Verifies credentials minted by trusted Wicket deployments and their chains (SPEC §3 step 3)."""

    def accepts(self, token: str) -> bool: ...
    async def identify(self, token: str) -> DelegatedIdentityLike: ...


class TokenVerifier(Protocol):
    """Verifies a bearer JWT; raises ``IdentityError`` (401, or 503 when the IdP is unreachable)."""

    async def identify(self, token: str) -> ExternalIdentity: ...


def scope_ceiling(scopes: Sequence[str], default: Sequence[str]) -> tuple[str, ...]:
    """A token's ``tool:<glob>`` scopes are its session's ceiling; a token with none gets ``default``.

    Other scopes (``openid``, ``profile``, an API's own) say nothing about MCP tools and are ignored.
    """
    globs = tuple(s[len(TOOL_SCOPE_PREFIX) :] for s in scopes if s.startswith(TOOL_SCOPE_PREFIX))
    globs = tuple(g for g in globs if g)
    return globs or tuple(default)


class IdentityError(Exception):
    """The caller cannot be admitted. ``status`` is the HTTP status an adapter should use."""

    def __init__(self, status: int, reason: str, *, integrity: bool = False, audited: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.integrity = integrity
        self.audited = audited
        """Worth an audit record of its own (a refused delegation chain), not only a 401."""


class IdentityResolver:
    """Steps 1, 2 and 4 of SPEC §3; federation plugs in ahead of anonymous later."""

    def __init__(
        self,
        sessions: SessionManager,
        policy: Policy,
        *,
        oidc: TokenVerifier | None = None,
        revocations: RevocationList | None = None,
        clock: Callable[[], float] = time.time,
        federation: DelegationVerifier | None = None,
    ) -> None:
        self._sessions = sessions
        self._policy = policy
        self.revocations = revocations if revocations is not None else RevocationList()
        self._oidc = oidc
        self._federation = federation
        self._clock = clock

    def use_policy(self, policy: Policy) -> None:
        self._policy = policy

    async def resolve(self, authorization: str | None) -> Caller:
        if not authorization:
            if self._policy.anonymous_enabled:
                return ANONYMOUS_CALLER
            raise IdentityError(401, "Authentication required: present a Wicket runtime token (Bearer wkt_...).")
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise IdentityError(401, "Unsupported Authorization header: use 'Bearer <token>'.")
        if not credential.startswith(TOKEN_PREFIX):
            oidc_issuer = getattr(self._oidc, "issuer", None)
            if self._federation is not None and self._federation.accepts(credential):
                if oidc_issuer is None or _issuer_of(credential) != oidc_issuer:
                    return await self._delegated_caller(self._federation, credential)
            if self._oidc is None:
                raise IdentityError(
                    401, "Bearer token is not a Wicket runtime token, and no OIDC issuer is configured to verify it."
                )
            return await self._oidc_caller(self._oidc, credential)
        fingerprint = token_fingerprint(credential)  # once: the store key and the revocation id
        try:
            session = await self._sessions.by_token(credential, fingerprint=fingerprint)
        except SessionIntegrityError as exc:
            raise IdentityError(403, f"Session denied: {exc}.", integrity=True) from exc
        if session is None:
            raise IdentityError(401, "Runtime token is unknown, expired or revoked.")
        return Caller(agent_id=session.agent_id, session=session, token_id=fingerprint[:16])

    def admit(self, caller: Caller, session: Session) -> None:
        """Refuse a revoked agent, session or token (a set lookup: no I/O on the hot path)."""
        reason = self.revocations.reason(caller.agent_id, session.session_id, caller.token_id)
        if reason is None and caller.delegation is not None:
            reason = self.revocations.reason_for_chain(caller.delegation.agents, caller.delegation.link_ids)
        if reason is not None:
            raise IdentityError(401, f"Access revoked: {reason}.")

    async def _oidc_caller(self, oidc: TokenVerifier, token: str) -> Caller:
        """SPEC §3 step 2: one read-only session per verified token, expiring with it.

        The session id is derived from the agent, the token's id and its ceiling, so every
        request carrying the same token lands in the same session (and its activity counts).
        """
        identity = await oidc.identify(token)
        policy = self._policy
        scope = scope_ceiling(identity.scopes, policy.default_scope.patterns)
        digest = hashlib.sha256("\0".join((identity.agent_id, identity.token_id, *scope)).encode()).hexdigest()
        session_id = "ses_oidc_" + digest[:32]
        try:
            session = await self._sessions.get(session_id)
        except SessionIntegrityError as exc:
            raise IdentityError(403, f"Session denied: {exc}.", integrity=True) from exc
        if session is None:
            ttl = min(max(identity.expires_at - self._clock(), 1.0), policy.session_max_ttl_seconds)
            session = await self._sessions.create(
                identity.agent_id, scope=scope, mode="read-only", ttl_seconds=ttl, session_id=session_id
            )
        return Caller(agent_id=identity.agent_id, session=session, token_id=identity.token_id, inbound_token=token)

    async def _delegated_caller(self, federation: DelegationVerifier, token: str) -> Caller:
        """SPEC §3 step 3: one session per delegated credential, its ceiling the chain's narrowest scope."""
        identity = await federation.identify(token)
        chain = identity.delegation
        digest = hashlib.sha256("\0".join((identity.agent_id, identity.token_id, *identity.scopes)).encode())
        session_id = "ses_dlg_" + digest.hexdigest()[:32]
        try:
            session = await self._sessions.get(session_id)
        except SessionIntegrityError as exc:
            raise IdentityError(403, f"Session denied: {exc}.", integrity=True) from exc
        if session is None:
            ttl = min(max(identity.expires_at - self._clock(), 1.0), self._policy.session_max_ttl_seconds)
            session = await self._sessions.create(
                identity.agent_id,
                scope=identity.scopes,
                mode=identity.mode,  # type: ignore[arg-type]
                ttl_seconds=ttl,
                session_id=session_id,
                origin="delegated",
            )
        return Caller(agent_id=identity.agent_id, session=session, token_id=identity.token_id, delegation=chain)

    async def session_for(self, caller: Caller, *, fresh: bool = False) -> Session:
        """The session a request runs in: the token's, else an anonymous one.

        ``fresh`` gives an anonymous caller a session of its own (a legacy MCP session
        maps to one Wicket session); otherwise it shares the per-agent default session. A
        default session whose record fails its HMAC is an ``IdentityError`` (403, integrity).
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
        try:
            return await self._sessions.anonymous(
                caller.agent_id, scope=policy.anonymous_scope.patterns, ttl_seconds=policy.session_ttl_seconds
            )
        except SessionIntegrityError as exc:
            raise IdentityError(403, f"Session denied: {exc}.", integrity=True) from exc


def _issuer_of(token: str) -> str | None:
    """A JWT's ``iss``, read without verifying (only to route it to the verifier that checks it)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    return issuer if isinstance(issuer, str) else None
