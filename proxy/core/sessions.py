"""Sessions: who is acting, under which immutable ceiling, in which mode.

Every record Wicket keeps in the store is HMAC-signed over its key and its canonical
JSON, so a record edited inside the store, or copied under another key, is detected on
the next read instead of silently widening what an agent may do.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any, Literal

from proxy.core.patterns import GlobSet
from proxy.state.base import Store

Mode = Literal["read-only", "read-write"]
MODES: tuple[Mode, ...] = ("read-only", "read-write")
TOKEN_PREFIX = "wkt_"
SESSION_INDEX = "wicket:index:sessions"
SESSION_INDEX_LIMIT = 500
"""Sessions are listed for operators from a bounded index of the most recently created ones."""


class SessionIntegrityError(Exception):
    """A stored record failed its HMAC check: it was altered or moved inside the store."""


@dataclass(frozen=True)
class Session:
    """One agent's session. ``scope`` is the ceiling fixed at creation and never widened."""

    session_id: str
    agent_id: str
    scope: tuple[str, ...]
    mode: Mode
    created_at: float
    expires_at: float
    intent: str | None = None
    origin: str = "token"  # "token" | "anonymous" | "delegated" (a credential another Wicket minted)
    granted_by: str | None = None  # who granted read-write, for the audit trail

    @cached_property
    def scope_globs(self) -> GlobSet:
        return GlobSet(self.scope)

    @property
    def read_only(self) -> bool:
        return self.mode == "read-only"

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    def public(self) -> dict[str, Any]:
        """The record as shown to operators (never includes the token)."""
        return asdict(self)


def token_fingerprint(token: str) -> str:
    """A stable, non-reversible id for a token: safe for logs, audit and store keys."""
    return hashlib.sha256(token.encode()).hexdigest()


class RecordSigner:
    """Signs and verifies store records: HMAC-SHA256 over ``key`` + canonical JSON."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the session key must be at least 16 bytes")
        self._key = key

    def _mac(self, store_key: str, body: bytes) -> str:
        return hmac.new(self._key, store_key.encode() + b"\x00" + body, hashlib.sha256).hexdigest()

    def encode(self, store_key: str, record: dict[str, Any]) -> bytes:
        body = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
        return json.dumps({"r": record, "sig": self._mac(store_key, body)}, separators=(",", ":")).encode()

    def decode(self, store_key: str, raw: bytes) -> dict[str, Any]:
        try:
            envelope = json.loads(raw)
            record = envelope["r"]
            sig = envelope["sig"]
        except (ValueError, KeyError, TypeError) as exc:
            raise SessionIntegrityError(f"record {store_key!r} is not a signed Wicket record") from exc
        body = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
        if not isinstance(sig, str) or not hmac.compare_digest(sig, self._mac(store_key, body)):
            raise SessionIntegrityError(f"record {store_key!r} failed its HMAC integrity check")
        return record


@dataclass(frozen=True, slots=True)
class McpBinding:
    """Which Wicket session and agent own an upstream ``Mcp-Session-Id``."""

    session_id: str
    agent_id: str


@functools.lru_cache(maxsize=1024)
def anonymous_session_id(agent_id: str) -> str:
    """The id of an agent's anonymous session: derived, so every replica and request finds the same one
    (a pure function of the agent id, remembered for the few agents that call without a credential)."""
    return "ses_anon_" + hashlib.sha256(agent_id.encode()).hexdigest()[:16]


class SessionManager:
    """Creates and loads sessions, tokens and MCP-session bindings through a Store."""

    _VERIFIED_MAX = 10_000

    def __init__(self, store: Store, signer: RecordSigner, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._signer = signer
        self._clock = clock
        # store key -> (raw bytes last verified, what they decoded to). A record is only
        # re-verified when the store hands back different bytes, so a tampered record is
        # still caught on the next read while an unchanged one costs a bytes comparison.
        self._verified: dict[str, tuple[bytes, Any]] = {}
        self._token_sessions: dict[str, str] = {}

    async def _load(self, key: str, build: Callable[[dict[str, Any]], Any]) -> Any:
        """Read ``key`` from the store and verify it, or ``None`` when it is absent.

        Every record read here expires with its session, which ``get`` checks, so the store may
        serve it from its cache of records (``cached=True``)."""
        raw = await self._store.get(key, cached=True)
        if raw is None:
            self._verified.pop(key, None)
            return None
        cached = self._verified.get(key)
        if cached is not None and (cached[0] is raw or cached[0] == raw):
            return cached[1]
        value = build(self._signer.decode(key, raw))
        if len(self._verified) >= self._VERIFIED_MAX:
            self._verified.clear()
        self._verified[key] = (raw, value)
        return value

    # -- sessions -------------------------------------------------------------------

    async def create(
        self,
        agent_id: str,
        *,
        scope: Sequence[str],
        mode: Mode = "read-only",
        ttl_seconds: float,
        intent: str | None = None,
        origin: str = "token",
        granted_by: str | None = None,
        session_id: str | None = None,
    ) -> Session:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        now = self._clock()
        session = Session(
            session_id=session_id or "ses_" + secrets.token_hex(12),
            agent_id=agent_id,
            scope=tuple(scope),
            mode=mode,
            created_at=now,
            expires_at=now + ttl_seconds,
            intent=intent,
            origin=origin,
            granted_by=granted_by,
        )
        key = self.session_key(session.session_id)
        await self._store.put(key, self._signer.encode(key, session.public()), ttl=ttl_seconds)
        await self._store.index_add(SESSION_INDEX, session.session_id, now, SESSION_INDEX_LIMIT)
        return session

    async def issue_token(self, session: Session) -> str:
        """Bind a fresh opaque runtime token to ``session``; only its hash is stored."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        key = self._token_key(token_fingerprint(token))
        ttl = max(session.expires_at - self._clock(), 1.0)
        await self._store.put(key, self._signer.encode(key, {"session_id": session.session_id}), ttl=ttl)
        return token

    async def get(self, session_id: str) -> Session | None:
        """Load and verify a session; ``None`` if unknown or expired."""
        key = self.session_key(session_id)
        session: Session | None = await self._load(key, lambda r: Session(**{**r, "scope": tuple(r["scope"])}))
        if session is None:
            return None
        if session.session_id != session_id:
            raise SessionIntegrityError(f"record {key!r} names another session")
        return None if session.expired(self._clock()) else session

    async def recent(self, limit: int = SESSION_INDEX_LIMIT) -> list[Session]:
        """Live sessions, newest first, from the bounded index (expired and unverifiable ones left out)."""
        ids = await self._store.index_members(SESSION_INDEX, limit)
        raws = await self._store.get_many([self.session_key(s) for s in ids])
        now = self._clock()
        out: list[Session] = []
        for session_id, raw in zip(ids, raws, strict=True):
            if raw is None:
                continue
            try:
                record = self._signer.decode(self.session_key(session_id), raw)
                session = Session(**{**record, "scope": tuple(record["scope"])})
            except (SessionIntegrityError, KeyError, TypeError):
                continue
            if session.session_id == session_id and not session.expired(now):
                out.append(session)
        return out

    async def inspect(self, session_id: str) -> tuple[dict[str, Any] | None, bool]:
        """The stored record and whether its HMAC verifies, for accountability; (None, False) if absent.

        Unlike ``get`` a tampered record is returned (marked invalid) instead of raising, so an
        operator can see what was changed.
        """
        key = self.session_key(session_id)
        raw = await self._store.get(key)
        if raw is None:
            return None, False
        try:
            record = self._signer.decode(key, raw)
        except SessionIntegrityError:
            try:
                envelope = json.loads(raw)
                shown = envelope.get("r") if isinstance(envelope, dict) else None
            except ValueError:
                shown = None
            return (shown if isinstance(shown, dict) else {}), False
        return record, record.get("session_id") == session_id

    async def by_token(self, token: str, *, fingerprint: str | None = None) -> Session | None:
        """The token's session. A token is bound to one session for life, so once its index
        record has been verified the binding is remembered here and the store is asked only for
        the session record itself (one round trip per call on a shared store, not two).
        Revoking a token is checked separately, per request, against the revocation list.
        ``fingerprint``: ``token_fingerprint(token)``, when the caller has already worked it out."""
        key = self._token_key(token_fingerprint(token) if fingerprint is None else fingerprint)
        session_id = self._token_sessions.get(key)
        if session_id is None:
            session_id = await self._load(key, lambda r: r["session_id"])
            if session_id is None:
                return None
            if len(self._token_sessions) >= self._VERIFIED_MAX:
                self._token_sessions.clear()
            self._token_sessions[key] = session_id
        session = await self.get(session_id)
        if session is None:
            self._token_sessions.pop(key, None)
        return session

    async def anonymous(self, agent_id: str, scope: Sequence[str], ttl_seconds: float) -> Session:
        """The per-agent default session for callers without a credential.

        It is always read-only; its id is derived from the agent so every stateless
        request from that agent lands in the same session.
        """
        session_id = anonymous_session_id(agent_id)
        existing = await self.get(session_id)
        if existing is not None:
            return existing
        return await self.create(
            agent_id, scope=scope, mode="read-only", ttl_seconds=ttl_seconds, origin="anonymous", session_id=session_id
        )

    # -- MCP session bindings -----------------------------------------------------------

    async def bind_mcp(self, mcp_session_id: str, session: Session) -> None:
        key = self._binding_key(mcp_session_id)
        record = {"session_id": session.session_id, "agent_id": session.agent_id}
        ttl = max(session.expires_at - self._clock(), 1.0)
        await self._store.put(key, self._signer.encode(key, record), ttl=ttl)

    async def mcp_binding(self, mcp_session_id: str) -> McpBinding | None:
        return await self._load(
            self._binding_key(mcp_session_id),
            lambda r: McpBinding(session_id=r["session_id"], agent_id=r["agent_id"]),
        )

    async def unbind_mcp(self, mcp_session_id: str) -> None:
        await self._store.delete(self._binding_key(mcp_session_id))

    # -- keys -------------------------------------------------------------------------

    @staticmethod
    def session_key(session_id: str) -> str:
        """The store key of a session's record (revoking a session checks that it exists)."""
        return f"wicket:{{{session_id}}}:session"

    @staticmethod
    def _token_key(fingerprint: str) -> str:
        """Where a token's session binding is stored: named by the token's fingerprint, never the token."""
        return f"wicket:token:{fingerprint}"

    @staticmethod
    def _binding_key(mcp_session_id: str) -> str:
        return f"wicket:mcp:{hashlib.sha256(mcp_session_id.encode()).hexdigest()}"
