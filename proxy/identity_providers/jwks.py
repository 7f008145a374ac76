"""An issuer's signing keys from its JWKS: fetched, cached, refreshed on an unknown ``kid``.

Shared by the OIDC verifier and the verifier of other Wicket deployments' credentials
(federation), so both follow the same rules: only asymmetric keys of the type an algorithm
needs, never a key a token names by URL, an unknown ``kid`` refetches at most once per
``refresh_interval`` (a flood of forged kids cannot hammer the issuer), and the last good keys
serve while the issuer is unreachable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.httpio import client_session, read_limited

log = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 512 * 1024
MIN_RSA_BITS = 2048
# alg -> (JWK kty, allowed curves or None). Anything not here (none, HS*, ES256K) is refused.
KEY_TYPES: dict[str, tuple[str, frozenset[str] | None]] = {
    **{alg: ("RSA", None) for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class FetchError(Exception):
    """Discovery or the JWKS could not be fetched or made no sense."""


class KeyUnavailable(Exception):
    """No key may verify this token: ``status`` 401 (unknown or unfit key) or 503 (issuer unreachable)."""

    def __init__(self, message: str, *, status: int = 401) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Key:
    kid: str | None
    kty: str
    crv: str | None
    alg: str | None
    key: Any  # a cryptography public key

    def fits(self, alg: str) -> bool:
        """Whether this key may verify ``alg``: the JWK's type, curve and own ``alg`` must agree."""
        kty, curves = KEY_TYPES[alg]
        if self.kty != kty or (curves is not None and self.crv not in curves):
            return False
        return self.alg is None or self.alg == alg


def parse_jwks(document: Mapping[str, Any]) -> list[Key]:
    """The usable signature keys of a JWKS; anything odd is skipped, not trusted."""
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise FetchError("the JWKS has no 'keys' list")
    keys: list[Key] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        kty, kid, alg, crv = entry.get("kty"), entry.get("kid"), entry.get("alg"), entry.get("crv")
        if kty not in ("RSA", "EC", "OKP") or entry.get("use", "sig") != "sig":
            continue  # never 'oct': a symmetric key in a JWKS must not become a verification key
        if (kid is not None and not isinstance(kid, str)) or (alg is not None and alg not in KEY_TYPES):
            continue
        public = {k: v for k, v in entry.items() if k not in _PRIVATE_MEMBERS}
        try:
            key = jwt.PyJWK(public).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
            continue
        keys.append(Key(kid=kid, kty=kty, crv=crv if isinstance(crv, str) else None, alg=alg, key=key))
    return keys


def select_key(keys: list[Key], kid: str | None, alg: str) -> Key | None:
    """The one key of ``keys`` that may verify a token with this ``kid`` and ``alg``; raises when ambiguous."""
    if kid is None:
        fitting = [k for k in keys if k.fits(alg)]
        if len(fitting) > 1:
            raise KeyUnavailable("The token names no key id (kid) and the issuer publishes several keys.")
        return fitting[0] if fitting else None
    named = [k for k in keys if k.kid == kid]
    if not named:
        return None
    for key in named:
        if key.fits(alg):
            return key
    raise KeyUnavailable("The token's algorithm does not match the type of its signing key.")


class JwksKeys:
    """One issuer's key set, fetched from the URL ``locate`` returns (OIDC discovery, or a fixed URL)."""

    def __init__(
        self,
        locate: Callable[[], Awaitable[str]],
        *,
        name: str,
        http: aiohttp.ClientSession | None = None,
        ttl: float = 300.0,
        refresh_interval: float = 10.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._locate = locate
        self.name = name
        self._http = http
        self._own_http = http is None
        self._ttl = ttl
        self._refresh_interval = refresh_interval
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock = clock
        self._on_change = on_change
        self._keys: list[Key] | None = None
        self._fetched_at = -math.inf
        self._refreshed_at = -math.inf  # last unknown-kid refresh
        self._failed_at = -math.inf  # last failed fetch
        self._lock = asyncio.Lock()

    async def key_for(self, kid: str | None, alg: str) -> Key:
        """The one key that may verify this token; an unknown kid refreshes the JWKS once."""
        keys = await self._jwks(refresh=False)
        key = select_key(keys, kid, alg)
        if key is None:
            keys = await self._jwks(refresh=True)
            key = select_key(keys, kid, alg)
        if key is None:
            if kid is None:
                raise KeyUnavailable("The token names no key id (kid) and no single issuer key fits its algorithm.")
            raise KeyUnavailable("The token's signing key (kid) is not published by the issuer.")
        return key

    def _fresh(self, now: float) -> bool:
        return self._keys is not None and now < self._fetched_at + self._ttl

    async def _jwks(self, *, refresh: bool) -> list[Key]:
        """The cached key set: fetched when stale, and on ``refresh`` (an unknown kid) at most once
        per ``refresh_interval``; after a failed fetch, the issuer is left alone for that interval too."""
        if not refresh and self._fresh(self._clock()):
            return self._keys  # type: ignore[return-value]
        async with self._lock:
            now = self._clock()
            if self._keys is not None:
                if not refresh and self._fresh(now):
                    return self._keys  # another request fetched it while we waited
                if refresh and now - self._refreshed_at < self._refresh_interval:
                    return self._keys
            if now - self._failed_at < self._refresh_interval:
                return self._unavailable()
            if refresh:
                self._refreshed_at = now
            try:
                keys = await self._fetch_keys()
            except FetchError as exc:
                log.warning("could not fetch the signing keys of %s: %s", self.name, exc)
                self._failed_at = now
                return self._unavailable()
            if keys != self._keys and self._on_change is not None:
                self._on_change()
            self._keys, self._fetched_at = keys, now
            return keys

    def _unavailable(self) -> list[Key]:
        """The last good keys while the issuer is unreachable, else 503."""
        if self._keys is None:
            raise KeyUnavailable(f"The signing keys of {self.name} are unavailable; try again shortly.", status=503)
        return self._keys

    async def _fetch_keys(self) -> list[Key]:
        keys = parse_jwks(await self.get_json(await self._locate()))
        if not keys:
            raise FetchError("the JWKS holds no usable signature keys")
        return keys

    async def get_json(self, url: str) -> dict[str, Any]:
        """One bounded GET of a JSON object (JWKS, discovery documents); raises FetchError."""
        if self._http is None:
            self._http = client_session()
        try:
            async with self._http.get(url, timeout=self._timeout, headers={"Accept": "application/json"}) as resp:
                if resp.status != 200:
                    raise FetchError(f"{url} answered HTTP {resp.status}")
                body = await read_limited(resp.content, MAX_DOCUMENT_BYTES)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FetchError(f"{url}: {exc.__class__.__name__}") from None
        if body is None:
            raise FetchError(f"{url} answered more than {MAX_DOCUMENT_BYTES} bytes")
        try:
            document = json.loads(body)
        except ValueError:
            raise FetchError(f"{url} did not answer JSON") from None
        if not isinstance(document, dict):
            raise FetchError(f"{url} did not answer a JSON object")
        return document

    async def warm(self) -> bool:
        """Fetch the keys now (at start-up) so the first token does not wait; never raises."""
        try:
            await self._jwks(refresh=False)
        except KeyUnavailable:
            return False
        return True

    async def close(self) -> None:
        if self._own_http and self._http is not None:
            await self._http.close()
        self._http = None
