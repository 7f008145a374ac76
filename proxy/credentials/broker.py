"""The credential one forwarded call carries upstream, derived per call from policy.

The agent's own token never travels upstream (the MCP spec forbids token passthrough)
unless the operator opts in with ``mode: passthrough``. Whatever the mode, only a
credential's id and fingerprint leave this module for logs and audit, never its value.

Scope rule (minted and exchange): the policy's ``scope`` for the upstream/tool is the grant;
the session ceiling is a set of tool-name globs. A grant entry is kept exactly when the
session's ceiling admits the tool being called; a call the ceiling excludes gets no scope.
Protocol housekeeping (``initialize``, ``tools/list``, notifications: no tool) keeps the
upstream's grant, since the ceiling says nothing about it. An empty grant still mints, with
``scope: ""``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt

from proxy.core.action import Action
from proxy.core.policy import CredentialSettings, Policy, normalise_url
from proxy.core.sessions import TOKEN_PREFIX, Session
from proxy.credentials.delegation import Link, act_claim, sign_link
from proxy.credentials.exchange import CredentialError, TokenExchanger
from proxy.credentials.keys import HS256_MIN_SECRET_BYTES, KeyRing, b64url, sign_hs256

log = logging.getLogger(__name__)

_FILE_RECHECK_SECONDS = 1.0
_LINK_REUSE_SHARE = 10
"""A session's first-hop delegation link is reused while that shortens a credential's life by at most 1/10."""
_LINK_CACHE_MAX = 4096
"""Sessions whose last first-hop link is kept for reuse; beyond it the oldest is forgotten (and re-signed)."""
_PLAN_CACHE_MAX = 1024
"""Minted-credential plans kept (one per upstream, tool and session ceiling); beyond it the oldest is forgotten."""

_MintPlan = tuple[str, str, int, str, "_StaticSecret | None"]
"""What a minted credential takes from the policy alone, worked out once per (upstream, tool, session
ceiling) by :meth:`CredentialBroker._plan`: (aud, scope, ttl, the delegation link's aud, the HS256
secret or None for Wicket's signing key)."""


_Source = tuple[str | None, str | None]
"""Where a secret is read from: (``value_env``, ``value_file``), one of them None."""


class CredentialConfigError(ValueError):
    """The policy's credentials cannot be served (a missing secret, no exchanger): refuse to start."""


@dataclass(frozen=True)
class IssuedCredential:
    """What one forwarded call carries. ``headers`` hold the secret and are kept out of ``repr``."""

    mode: str
    headers: dict[str, str] = field(repr=False)
    credential_id: str | None
    fingerprint: str | None
    """First 16 hex digits of SHA-256 of the credential value: correlates, never reveals."""

    def audit(self) -> dict[str, str]:
        """The fields an outcome audit event records about the credential."""
        fields = {"credential_mode": self.mode}
        if self.credential_id is not None:
            fields["credential_id"] = self.credential_id
        if self.fingerprint is not None:
            fields["credential_fingerprint"] = self.fingerprint
        return fields


def fingerprint(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def narrow_scope(grant: Sequence[str], session: Session, tool: str | None) -> tuple[str, ...]:
    """The module docstring's scope rule: the grant, or nothing when the ceiling excludes ``tool``."""
    if tool is not None and not session.scope_globs.matches(tool):
        return ()
    return tuple(dict.fromkeys(grant))


def _bearer(token: str | None) -> str | None:
    """The bare token, whether given as ``<token>`` or as a ``Bearer <token>`` header value."""
    if token is None:
        return None
    scheme, sep, rest = token.strip().partition(" ")
    token = rest.strip() if sep and scheme.lower() == "bearer" else token.strip()
    return token or None


def _jwt_id(token: str) -> str | None:
    """The ``jti`` of a JWT-shaped token (unverified: only used as an audit id), else ``None``."""
    try:
        jti = jwt.decode(token, options={"verify_signature": False}).get("jti")
    except jwt.PyJWTError:
        return None
    return jti if isinstance(jti, str) and jti else None


def _looks_like_jwt(token: str) -> bool:
    try:
        jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return False
    return token.count(".") == 2


def _where(url: str | None, tool_key: str | None) -> str:
    upstream = f"upstream {url}" if url else "upstreams without credentials"
    return upstream if tool_key is None else f"tools[{tool_key!r}] at {upstream}"


def passthrough_warnings(policy: Policy) -> list[str]:
    """One start-up warning per place the policy forwards the agent's own token upstream."""
    warnings: dict[str, None] = {}
    for url, tool_key, settings in policy.credential_variants():
        if settings.mode == "passthrough":
            message = (
                f"credentials mode 'passthrough' for {_where(url, tool_key)}: the agent's own Authorization "
                "header is forwarded upstream (the MCP spec forbids token passthrough); every use is audited"
            )
            warnings[message] = None
    return list(warnings)


class _StaticSecret:
    """A secret from the environment, or from a file re-read when it changes (mounted secrets rotate):
    a ``static`` credential, or the key of ``minted`` credentials with ``alg: HS256`` (``min_bytes``)."""

    def __init__(
        self,
        settings: CredentialSettings,
        env: Mapping[str, str],
        clock: Callable[[], float],
        *,
        kind: str = "static credential",
        min_bytes: int = 1,
    ) -> None:
        self._path = settings.value_file
        self._clock = clock
        self._checked = 0.0
        self._stamp: tuple[int, int] | None = None
        self._kind, self._min_bytes = kind, min_bytes
        if settings.value_env is not None:
            self.source = f"environment variable {settings.value_env}"
            self._value = self._valid(env.get(settings.value_env, ""))
        else:
            assert self._path is not None  # the policy guarantees exactly one source
            self.source = f"file {self._path}"
            self._value = self._valid(self._read())
        self._checked = clock()

    def _valid(self, value: str) -> str:
        value = value.strip()
        if not value:
            raise CredentialConfigError(f"{self._kind}: {self.source} is not set or empty")
        if any(ch in value for ch in "\r\n\x00"):
            raise CredentialConfigError(f"{self._kind}: {self.source} holds a line break or NUL")
        if len(value.encode()) < self._min_bytes:
            raise CredentialConfigError(
                f"{self._kind}: {self.source} holds fewer than {self._min_bytes} bytes; use a random secret "
                f"of at least {self._min_bytes} bytes (e.g. the output of `openssl rand -hex 32`)"
            )
        return value

    def _read(self) -> str:
        assert self._path is not None
        try:
            stat = os.stat(self._path)
            with open(self._path, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc.__class__.__name__
            raise CredentialConfigError(f"{self._kind}: cannot read {self.source}: {detail}") from None
        self._stamp = (stat.st_mtime_ns, stat.st_size)
        return text

    def value(self) -> str:
        if self._path is None or self._clock() - self._checked < _FILE_RECHECK_SECONDS:
            return self._value
        self._checked = self._clock()
        try:
            stat = os.stat(self._path)
            if (stat.st_mtime_ns, stat.st_size) != self._stamp:
                self._value = self._valid(self._read())
                log.info("%s: %s changed; using the new secret", self._kind, self.source)
        except (OSError, CredentialConfigError) as exc:
            log.warning("%s: keeping the last good secret: %s", self._kind, exc)
        return self._value


def _refuse_shared_secrets(
    hs256: Mapping[_Source, _StaticSecret],
    uses: Iterable[tuple[str, _Source]],
    statics: Mapping[_Source, _StaticSecret],
    client_secrets: Mapping[str, str],
    own: Mapping[str, str | bytes | None],
) -> None:
    """No secret leaves Wicket for someone it does not belong to. An HS256 secret (``uses``: each
    upstream and the source of its secret) is one upstream's alone: the same value for two
    upstreams, or also sent somewhere as a static credential or client secret, would let another
    party mint what that upstream accepts. And none may be one of Wicket's ``own`` secrets (its
    operator token, its session key): sent upstream, that would hand Wicket itself over. Compared
    by value, whatever variable or file holds it."""
    owner: dict[str, str] = {}  # an HS256 secret -> its one upstream
    for url, source in uses:
        secret = hs256[source]
        if owner.setdefault(secret.value(), url) != url:
            raise CredentialConfigError(
                f"credentials alg 'HS256': upstreams {owner[secret.value()]} and {url} have the same secret "
                f"({secret.source}), and either could then mint credentials the other accepts; give every "
                "upstream its own secret"
            )
    sent = [(f"static credential ({s.source})", s.value()) for s in statics.values()]
    sent += [(f"exchange client secret ({name})", value) for name, value in client_secrets.items()]
    for where, value in sent:
        if value in owner:
            raise CredentialConfigError(
                f"credentials alg 'HS256': the secret of upstream {owner[value]} is also sent upstream ({where}); "
                "whoever receives it could mint credentials that upstream accepts"
            )
    mine = {value.encode() if isinstance(value, str) else value: name for name, value in own.items() if value}
    for where, value in [*((f"HS256 secret ({s.source})", s.value()) for s in hs256.values()), *sent]:
        name = mine.get(value.encode())
        if name is not None:
            raise CredentialConfigError(
                f"the {where} is Wicket's own {name}: it would leave Wicket with the calls; use a secret of its own"
            )


class CredentialBroker:
    """Derives the upstream credential of each forwarded call from the policy's ``credentials``."""

    def __init__(
        self,
        policy: Policy,
        keys: KeyRing,
        *,
        issuer: str,
        env: Mapping[str, str],
        exchange: TokenExchanger | None,
        clock: Callable[[], float] = time.time,
        agent_name: str | None = None,
        own_secrets: Mapping[str, str | bytes | None] | None = None,
    ) -> None:
        """``own_secrets``: Wicket's own secrets by name (its operator token, session key): no
        credential secret may equal one of them, since it would be sent upstream."""
        self._policy = policy
        self._keys = keys
        self._issuer = issuer
        self._agent_name = agent_name
        """The agent behind this Wicket as delegation links name it (default: the upstream's URL)."""
        self._exchange = exchange
        self._clock = clock
        self._statics: dict[_Source, _StaticSecret] = {}
        self._client_secrets: dict[str, str] = {}
        self._links: dict[str, tuple[tuple[str, str, tuple[str, ...], str], Link]] = {}
        """Per session: the last first-hop link and what it was signed for (sub, aud, scope, kid)."""
        self._plans: dict[tuple[str, str | None, tuple[str, ...]], _MintPlan] = {}
        """Per (upstream, tool, session ceiling) in ``minted`` mode: :data:`_MintPlan`, until the policy changes."""
        self._hs256: dict[_Source, _StaticSecret] = {}
        hs256_uses: list[tuple[str, _Source]] = []  # (upstream, its secret's source)

        def load(
            into: dict[_Source, _StaticSecret],
            settings: CredentialSettings,
            where: str,
            **options: Any,
        ) -> _Source:
            source = (settings.value_env, settings.value_file)
            if source not in into:
                try:
                    into[source] = _StaticSecret(settings, env, clock, **options)
                except CredentialConfigError as exc:
                    raise CredentialConfigError(f"{exc} (needed by {where})") from None
            return source

        # Read every secret now, so a missing one stops start-up instead of failing calls later.
        for url, tool_key, settings in policy.credential_variants():
            if settings.mode == "minted" and settings.alg == "HS256":
                if url is None:
                    # Whoever holds the secret can mint what the upstreams sharing it accept.
                    raise CredentialConfigError(
                        f"credentials alg 'HS256' for {_where(url, tool_key)}: an HS256 secret must belong to one "
                        "upstream; list the upstream under upstreams with credentials of its own"
                    )
                where = _where(url, tool_key)
                kind = "HS256 credential secret"
                hs256_uses.append(
                    (url, load(self._hs256, settings, where, kind=kind, min_bytes=HS256_MIN_SECRET_BYTES))
                )
            elif settings.mode == "static":
                load(self._statics, settings, _where(url, tool_key))
            elif settings.mode == "exchange":
                if exchange is None:
                    raise CredentialConfigError(
                        f"credentials mode 'exchange' for {_where(url, tool_key)} needs a token exchanger"
                    )
                name = settings.client_secret_env
                assert name is not None  # the policy guarantees it
                if not env.get(name, "").strip():
                    raise CredentialConfigError(
                        f"exchange credential: environment variable {name} (client_secret_env) is not set "
                        f"(needed by {_where(url, tool_key)})"
                    )
                self._client_secrets[name] = env[name].strip()
        _refuse_shared_secrets(self._hs256, hs256_uses, self._statics, self._client_secrets, own_secrets or {})

    def use_policy(self, policy: Policy) -> None:
        """A reload (credentials sections cannot change without a restart; delegation limits can)."""
        self._policy = policy
        self._plans = {}  # worked out from the previous policy

    async def issue(self, action: Action, session: Session, *, inbound_token: str | None) -> IssuedCredential:
        """The credential for forwarding ``action``; raises :class:`CredentialError` (fail closed)."""
        tool = action.name if action.is_tool_call else None
        plan = self._plans.get((action.upstream, tool, session.scope))
        if plan is not None:  # minted, as worked out for an earlier call of this upstream, tool and ceiling
            return self._mint(action, session, plan, tool)
        settings = self._policy.credentials_for(action.upstream, tool)
        if settings.mode == "minted":
            return self._mint(action, session, self._plan(action.upstream, tool, session, settings), tool)
        if settings.mode == "static":
            return self._static(settings)
        if settings.mode == "exchange":
            return await self._exchanged(action, session, settings, tool, _bearer(inbound_token))
        if settings.mode == "passthrough":
            return self._passthrough(_bearer(inbound_token))
        raise CredentialError(f"unknown credentials mode {settings.mode!r}")

    async def issue_for_request(
        self, session: Session, *, upstream: str, method: str, inbound_token: str | None, protocol: str = "mcp"
    ) -> IssuedCredential:
        """For a forward that carries no checked Action: a notification, a reply to the server, an
        SSE ``GET`` or a session ``DELETE`` (``method`` is the JSON-RPC method or the HTTP method)."""
        action = Action(
            protocol=protocol,
            method=method,
            name=method,
            arguments={},
            agent_id=session.agent_id,
            session_id=session.session_id,
            upstream=upstream,
        )
        return await self.issue(action, session, inbound_token=inbound_token)

    def _plan(self, upstream: str, tool: str | None, session: Session, settings: CredentialSettings) -> _MintPlan:
        """Work out and remember what ``_mint`` takes from the policy for this upstream, tool and ceiling."""
        aud = normalise_url(upstream)
        secret = None
        if settings.alg == "HS256":
            secret = self._hs256.get((settings.value_env, settings.value_file))
            if secret is None:  # start-up refuses such a policy: fail closed all the same
                raise CredentialError("no HS256 secret was loaded at start-up for this upstream")
        plan = (
            aud,
            " ".join(narrow_scope(settings.scope, session, tool)),
            max(5, min(settings.ttl_seconds, 3600)),
            self._agent_name or aud,
            secret,
        )
        plans = self._plans
        if len(plans) >= _PLAN_CACHE_MAX:
            del plans[next(iter(plans))]
        plans[(upstream, tool, session.scope)] = plan
        return plan

    def _mint(self, action: Action, session: Session, plan: _MintPlan, tool: str | None) -> IssuedCredential:
        aud, scope, ttl, link_aud, secret = plan
        now = int(self._clock())
        exp = min(now + ttl, int(session.expires_at))
        if exp <= now:
            raise CredentialError("the session has expired: no credential is minted for it")
        jti = b64url(os.urandom(16))  # secrets.token_urlsafe(16)
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "sub": action.agent_id,
            "aud": aud,
            "scope": scope,
            "method": action.method,
            "args_sha256": action.arguments_sha256,
            "sid": session.session_id,
            "jti": jti,
            "iat": now,
            "nbf": now,
            "exp": exp,
        }
        if tool is not None:
            claims["tool"] = tool
        if action.is_tool_call:
            self._extend_chain(claims, action, session, link_aud, now)
        token = self._keys.sign(claims) if secret is None else sign_hs256(secret.value().encode(), claims)
        return IssuedCredential("minted", {"Authorization": f"Bearer {token}"}, jti, fingerprint(token))

    def _extend_chain(self, claims: dict[str, Any], action: Action, session: Session, aud: str, now: int) -> None:
        """Add the delegation chain: the links the caller presented plus one for this hop (RFC 8693 ``act`` too).

        ``aud`` is whom this hop delegates to: the agent name, else the upstream's normalised URL."""
        chain = action.delegation
        previous = chain.raw if chain is not None else ()
        if chain is not None and len(previous) != chain.depth:
            raise CredentialError("the caller's delegation links are not available to extend the chain")
        if len(previous) + 1 > self._policy.delegation_max_hops:
            raise CredentialError(f"the delegation chain would exceed {self._policy.delegation_max_hops} hops")
        if chain is None:
            link = self._first_link(action.agent_id, aud, session, claims["exp"], now)
        else:
            link = sign_link(
                self._keys.sign,
                issuer=self._issuer,
                sub=action.agent_id,
                aud=aud,
                scope=session.scope,
                exp=min(claims["exp"], chain.expires_at),
                previous=previous[-1],
                now=now,
            )
        claims["exp"] = link.exp
        claims["delegation"] = [*previous, link.raw]
        if chain is not None:
            # RFC 8693: the subject is who the work is for; act names who acts, the most recent outermost.
            claims["sub"] = chain.origin
            claims["act"] = act_claim(chain.agents[1:])

    def _first_link(self, sub: str, aud: str, session: Session, exp: int, now: int) -> Link:
        """The link for a hop that starts a chain: the session's previous one while it is still fresh.

        Such a link depends only on who delegates to whom with which scope, so a later call of the
        session may carry the same one, and its credential then expires with the link (never later,
        so a link never outlives a credential that carries it). It is reused only while that costs
        the credential at most a tenth of its life: one Ed25519 signature saved per call.
        """
        key = (sub, aud, session.scope, self._keys.kid)
        cached = self._links.get(session.session_id)
        if cached is not None and cached[0] == key and 0 <= exp - cached[1].exp <= (exp - now) // _LINK_REUSE_SHARE:
            return cached[1]
        link = sign_link(
            self._keys.sign, issuer=self._issuer, sub=sub, aud=aud, scope=session.scope, exp=exp, previous=None, now=now
        )
        links = self._links
        links.pop(session.session_id, None)
        links[session.session_id] = (key, link)
        # Oldest first: forget expired links, and the oldest beyond the bound.
        while links:
            oldest = next(iter(links))
            if len(links) <= _LINK_CACHE_MAX and links[oldest][1].exp > now:
                break
            del links[oldest]
        return link

    def _static(self, settings: CredentialSettings) -> IssuedCredential:
        static = self._statics.get((settings.value_env, settings.value_file))
        if static is None:  # only for an upstream the policy does not list while every listed one has credentials
            raise CredentialError("no static secret was loaded at start-up for this upstream: list it under upstreams")
        secret = static.value()
        value = secret
        if settings.header.lower() == "authorization" and " " not in secret:
            value = f"Bearer {secret}"
        return IssuedCredential("static", {settings.header: value}, f"static:{settings.header}", fingerprint(secret))

    async def _exchanged(
        self,
        action: Action,
        session: Session,
        settings: CredentialSettings,
        tool: str | None,
        inbound: str | None,
    ) -> IssuedCredential:
        if inbound is None:
            raise CredentialError("exchange mode needs the agent's inbound JWT, and this caller presented no token")
        if inbound.startswith(TOKEN_PREFIX) or not _looks_like_jwt(inbound):
            raise CredentialError(
                "exchange mode needs the agent's inbound JWT from the identity provider; this caller presented "
                "a Wicket runtime token or another opaque token, which cannot be exchanged"
            )
        scope = narrow_scope(settings.scope, session, tool)
        if settings.scope and not scope:
            raise CredentialError(f"the session's scope ceiling excludes {tool!r}: there is no scope to request")
        client_secret = self._client_secrets.get(settings.client_secret_env or "")
        if self._exchange is None or client_secret is None or not settings.token_endpoint or not settings.client_id:
            raise CredentialError(
                "token exchange for this upstream was not prepared at start-up: list it under upstreams"
            )
        issued = await self._exchange.exchange(
            inbound,
            token_endpoint=settings.token_endpoint,
            client_id=settings.client_id,
            client_secret=client_secret,
            audience=settings.audience or normalise_url(action.upstream),
            scope=scope,
            subject_token_type=settings.subject_token_type,
        )
        token = issued.access_token
        print_ = fingerprint(token)
        return IssuedCredential(
            "exchange", {"Authorization": f"Bearer {token}"}, _jwt_id(token) or f"sha256:{print_}", print_
        )

    def _passthrough(self, inbound: str | None) -> IssuedCredential:
        if inbound is None:
            return IssuedCredential("passthrough", {}, None, None)
        if inbound.startswith(TOKEN_PREFIX):
            # A runtime token is Wicket's own credential: forwarded, it would let the upstream act as the agent here.
            raise CredentialError("passthrough refused: the caller's token is a Wicket runtime token")
        print_ = fingerprint(inbound)
        return IssuedCredential(
            "passthrough", {"Authorization": f"Bearer {inbound}"}, _jwt_id(inbound) or f"sha256:{print_}", print_
        )
