"""Credentials minted by other Wicket deployments, and the delegation chains they carry.

SPEC §3 step 3. An agent that received a Wicket-minted credential (because some agent asked it
for work through that Wicket) presents it as its bearer token when it calls onward. This
Wicket accepts it only from an issuer the policy trusts (``trust:``; its own issuer always),
verifies the credential and every link of its chain (``credentials/delegation.py``), applies
the trust entry's limits (which agents it may present, which scopes they may ever use here,
whatever the token says), and, for partners with ``introspection``, asks the issuer on first use
whether the token is still active, caching the answer for ``cache_seconds``. Any failure refuses
the caller with a reason that names the link and the rule.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt

from proxy.core.action import Delegation
from proxy.core.identity import IdentityError
from proxy.core.policy import Policy, TrustEntry
from proxy.core.revocations import RevocationList
from proxy.credentials.delegation import ChainError, Link, describe, narrowed, verify_chain
from proxy.credentials.keys import KeyRing
from proxy.httpio import client_session, read_limited
from proxy.identity_providers.jwks import FetchError, JwksKeys, Key, KeyUnavailable, parse_jwks, select_key

log = logging.getLogger(__name__)

MAX_TOKEN_CHARS = 96 * 1024
_ALGORITHMS = ("EdDSA", "ES256")
_INTROSPECTION_MAX_BYTES = 64 * 1024
_CACHE_MAX = 4096


@dataclass(frozen=True)
class DelegatedIdentity:
    """The caller a delegated credential names: the agent the last link went to."""

    agent_id: str
    scopes: tuple[str, ...]
    """The session ceiling: the chain's narrowest scope, cut to what the issuer's trust entry allows."""
    expires_at: float
    token_id: str
    delegation: Delegation
    mode: str
    issuer: str


class _Issuer:
    """One trusted issuer: where its keys come from, and its trust entry (None for this Wicket itself)."""

    def __init__(self, name: str, entry: TrustEntry | None, keys: JwksKeys | KeyRing | list[Key]) -> None:
        self.name = name
        self.entry = entry
        self._keys = keys

    async def key_for(self, kid: str | None, alg: str) -> Any:
        if isinstance(self._keys, JwksKeys):
            return (await self._keys.key_for(kid, alg)).key
        keys = parse_jwks(self._keys.jwks()) if isinstance(self._keys, KeyRing) else self._keys
        key = select_key(keys, kid, alg)
        if key is None:
            raise KeyUnavailable(f"the signing key (kid) is not one {self.name} publishes")
        return key.key

    async def close(self) -> None:
        if isinstance(self._keys, JwksKeys):
            await self._keys.close()


class Federation:
    """Verifies credentials (and their chains) minted by this Wicket or the issuers ``trust:`` lists."""

    def __init__(
        self,
        policy: Policy,
        *,
        own_issuer: str,
        own_keys: KeyRing,
        revocations: RevocationList,
        environ: Mapping[str, str] = os.environ,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._policy = policy
        self._revocations = revocations
        self._environ = environ
        self._clock = clock
        self._http: aiohttp.ClientSession | None = None
        self._introspected: dict[str, tuple[bool, str, float]] = {}  # jti -> (active, why, until)
        self._issuers: dict[str, _Issuer] = {own_issuer: _Issuer(own_issuer, None, own_keys)}
        for entry in policy.trust:
            if entry.jwks_url:
                url = entry.jwks_url

                async def locate(url: str = url) -> str:
                    return url

                keys: JwksKeys | list[Key] = JwksKeys(locate, name=f"trusted issuer {entry.issuer}", clock=clock)
            else:
                assert entry.jwks_file is not None  # the policy guarantees one of the two
                keys = _keys_from_file(entry.jwks_file, entry.issuer)
            if entry.introspection is not None and not environ.get(entry.introspection.client_secret_env):
                raise ValueError(
                    f"trust entry {entry.issuer}: introspection.client_secret_env "
                    f"{entry.introspection.client_secret_env} is not set"
                )
            self._issuers[entry.issuer] = _Issuer(entry.issuer, entry, keys)

    def use_policy(self, policy: Policy) -> None:
        self._policy = policy

    def accepts(self, token: str) -> bool:
        """Whether ``token`` names an issuer this Wicket trusts (read unverified, to route it)."""
        try:
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError:
            return False
        return isinstance(issuer, str) and issuer in self._issuers

    async def identify(self, token: str) -> DelegatedIdentity:
        """The caller a delegated credential names; ``IdentityError`` names the failed link and rule."""
        try:
            return await self._identify(token)
        except ChainError as exc:
            raise IdentityError(401, f"Delegated credential refused: {exc}.", audited=True) from None
        except KeyUnavailable as exc:
            raise IdentityError(exc.status, f"Delegated credential refused: {exc.message}", audited=True) from None

    async def _identify(self, token: str) -> DelegatedIdentity:
        if len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
            raise ChainError(0, "format", "the bearer token is not a well-formed credential")
        claims = await self._verified_credential(token)
        raw_links = claims.get("delegation")
        keys = await self._link_keys(raw_links)
        links = verify_chain(
            raw_links,
            lambda issuer, kid, alg: _lookup(keys, issuer, kid, alg),
            now=self._clock(),
            max_hops=self._policy.delegation_max_hops,
        )
        last = links[-1]
        if claims["iss"] != last.iss or claims.get("jti") is None:
            raise ChainError(
                len(links), "issuer", "the credential was not minted by the Wicket that made its last link"
            )
        scope = self._trusted_scope(links)
        self._check_revoked(links, claims)
        entry = self._issuers[claims["iss"]].entry
        if entry is not None and entry.introspection is not None:
            await self._introspect(token, claims, entry)
        chain = describe(links)
        chain = Delegation(chain.origin, chain.agents, chain.link_ids, scope, chain.expires_at, raw=tuple(raw_links))
        return DelegatedIdentity(
            agent_id=last.aud,
            scopes=scope,
            expires_at=float(min(claims["exp"], chain.expires_at)),
            token_id=str(claims["jti"]),
            delegation=chain,
            mode=entry.mode if entry is not None else "read-only",
            issuer=claims["iss"],
        )

    async def _verified_credential(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise ChainError(0, "format", "the bearer token is not a readable JWT") from None
        alg, kid, issuer = header.get("alg"), header.get("kid"), unverified.get("iss")
        if alg not in _ALGORITHMS or "crit" in header:
            raise ChainError(0, "format", "the credential must be signed with EdDSA or ES256")
        found = self._issuers.get(issuer) if isinstance(issuer, str) else None
        if found is None:
            raise ChainError(0, "issuer", "the credential's issuer is not trusted here (policy trust:)")
        key = await found.key_for(kid if isinstance(kid, str) else None, alg)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                options={"require": ["iss", "exp", "jti"], "verify_aud": False},
                leeway=5,
            )
        except jwt.ExpiredSignatureError:
            raise ChainError(0, "expiry", "the credential has expired") from None
        except jwt.InvalidSignatureError:
            raise ChainError(
                0, "signature", f"the credential's signature does not verify with {issuer}'s key"
            ) from None
        except jwt.PyJWTError as exc:
            raise ChainError(0, "format", f"the credential is invalid: {exc}") from None
        if not isinstance(claims.get("delegation"), list):
            raise ChainError(0, "format", "the credential carries no delegation chain")
        return claims

    async def _link_keys(self, raw_links: Any) -> dict[tuple[str, str | None, str], Any]:
        """Every key the chain's links name, fetched before the (synchronous) verification."""
        keys: dict[tuple[str, str | None, str], Any] = {}
        if not isinstance(raw_links, list):
            return keys
        for index, raw in enumerate(raw_links[: self._policy.delegation_max_hops], start=1):
            try:
                header = jwt.get_unverified_header(raw)
                issuer = jwt.decode(raw, options={"verify_signature": False}).get("iss")
            except (jwt.PyJWTError, TypeError, AttributeError):
                continue  # verify_chain reports the malformed link
            alg, kid = header.get("alg"), header.get("kid")
            kid = kid if isinstance(kid, str) else None
            found = self._issuers.get(issuer) if isinstance(issuer, str) else None
            if found is None or alg not in _ALGORITHMS or (issuer, kid, alg) in keys:
                continue
            try:
                keys[(issuer, kid, alg)] = await found.key_for(kid, alg)
            except KeyUnavailable as exc:
                if exc.status == 503:
                    raise
                raise ChainError(index, "signature", f"signed with a key {issuer} does not publish") from None
        return keys

    def _trusted_scope(self, links: tuple[Link, ...]) -> tuple[str, ...]:
        """The chain's narrowest scope, cut by every partner's trust entry along it; agents checked too."""
        scope = links[-1].scope
        for index, link in enumerate(links, start=1):
            entry = self._issuers[link.iss].entry
            if entry is None:
                continue
            if entry.agents is not None and not entry.agents.matches(link.aud):
                raise ChainError(index, "trust", f"{link.iss} may not present agent '{link.aud}' (trust agents)")
            if entry.scopes is not None:
                scope = narrowed(scope, entry.scopes)
        return narrowed(scope, self._policy.default_scope.patterns)

    def _check_revoked(self, links: tuple[Link, ...], claims: Mapping[str, Any]) -> None:
        revoked = self._revocations.reason_for_chain(
            agents=[links[0].sub, *(link.aud for link in links)],
            link_ids=[*(link.jti for link in links), str(claims["jti"])],
        )
        if revoked is not None:
            raise ChainError(0, "revoked", revoked)

    async def _introspect(self, token: str, claims: Mapping[str, Any], entry: TrustEntry) -> None:
        """RFC 7662 at the partner, cached per token for ``cache_seconds``: a revocation there lands here."""
        spec = entry.introspection
        assert spec is not None
        jti, now = str(claims["jti"]), self._clock()
        cached = self._introspected.get(jti)
        if cached is None or cached[2] <= now:
            active, why = await self._ask_issuer(token, entry)
            if len(self._introspected) >= _CACHE_MAX:
                self._introspected.clear()
            cached = self._introspected[jti] = (active, why, now + spec.cache_seconds)
        if not cached[0]:
            raise ChainError(0, "introspection", f"{entry.issuer} reports the credential inactive ({cached[1]})")

    async def _ask_issuer(self, token: str, entry: TrustEntry) -> tuple[bool, str]:
        spec = entry.introspection
        assert spec is not None
        secret = self._environ.get(spec.client_secret_env, "")
        basic = base64.b64encode(f"{spec.client_id}:{secret}".encode()).decode()
        if self._http is None:
            self._http = client_session()
        try:
            async with self._http.post(
                spec.url,
                data={"token": token, "token_type_hint": "access_token"},
                headers={"Authorization": f"Basic {basic}", "Accept": "application/json"},
                timeout=aiohttp.ClientTimeout(total=5),
                allow_redirects=False,  # the token is for this endpoint only, never re-posted elsewhere
            ) as response:
                body = await read_limited(response.content, _INTROSPECTION_MAX_BYTES)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("introspection at %s failed: %s", entry.issuer, exc.__class__.__name__)
            raise KeyUnavailable(f"{entry.issuer}'s introspection endpoint is unreachable", status=503) from None
        if status != 200 or body is None:
            raise KeyUnavailable(f"{entry.issuer}'s introspection endpoint answered HTTP {status}", status=503)
        try:
            answer = json.loads(body)
        except ValueError:
            raise KeyUnavailable(f"{entry.issuer}'s introspection endpoint did not answer JSON", status=503) from None
        active = isinstance(answer, dict) and answer.get("active") is True
        why = str(answer.get("wicket_reason", "inactive")) if isinstance(answer, dict) else "malformed answer"
        return active, why

    async def warm(self) -> None:
        for issuer in self._issuers.values():
            if isinstance(issuer._keys, JwksKeys):
                await issuer._keys.warm()

    async def close(self) -> None:
        for issuer in self._issuers.values():
            await issuer.close()
        if self._http is not None:
            await self._http.close()
            self._http = None


def _lookup(keys: Mapping[tuple[str, str | None, str], Any], issuer: str, kid: str | None, alg: str) -> Any:
    return keys.get((issuer, kid, alg))


def _keys_from_file(path: str, issuer: str) -> list[Key]:
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        keys = parse_jwks(document) if isinstance(document, dict) else []
    except (OSError, ValueError, FetchError) as exc:
        raise ValueError(f"trust entry {issuer}: cannot read jwks_file {path}: {exc}") from None
    if not keys:
        raise ValueError(f"trust entry {issuer}: jwks_file {path} holds no usable signature keys")
    return keys
