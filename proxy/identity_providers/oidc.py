"""Agents' OIDC JWTs (SPEC §3 step 2) and the RFC 9728 metadata that points clients at the IdP.

Operators already run an identity provider; Wicket accepts its access tokens instead of
inventing an identity silo. The verifier is deliberately narrow, because every check it
skips is a well-known JWT attack:

- only an explicit allowlist of asymmetric algorithms (never ``none``, never ``HS*``), and
  the key is chosen by ``kid`` and must be of the type the header's ``alg`` needs, so a
  token cannot make an RSA public key act as an HMAC secret;
- keys come only from the configured (or discovered) JWKS, never from ``jku``/``x5u``/``jwk``
  headers; symmetric (``oct``) and encryption keys in the JWKS are ignored;
- ``iss`` exact, ``aud`` must contain our audience, ``exp``/``nbf``/``iat`` with a leeway;
- an unknown ``kid`` refetches the JWKS at most once per ``refresh_interval``, so a flood
  of forged kids cannot hammer the IdP.

Error messages name the failed check, never the token.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
from aiohttp import web

from proxy.core.identity import IdentityError
from proxy.identity_providers.jwks import KEY_TYPES, FetchError, JwksKeys, Key, KeyUnavailable

log = logging.getLogger(__name__)

AGENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}")
"""Wicket's agent-id rule (matched with ``fullmatch``: a trailing newline is not an id)."""
RESERVED_AGENTS = frozenset({"anonymous"})
MAX_TOKEN_CHARS = 16 * 1024
MAX_SCOPES = 256
MAX_TOKEN_ID_CHARS = 256
VERIFIED_CACHE_MAX = 4096  # verified tokens remembered until they expire (saves a signature check per request)
VERIFIED_CACHE_TOKEN_CHARS = 8 * 1024

# PyJWT >= 2.10 type-checks sub and jti; older versions leave it to us (the agent claim check).
_CLAIM_TYPE_ERRORS: tuple[type[Exception], ...] = tuple(
    getattr(jwt.exceptions, name)
    for name in ("InvalidSubjectError", "InvalidJTIError")
    if hasattr(jwt.exceptions, name)
)

WELL_KNOWN_RESOURCE = "/.well-known/oauth-protected-resource"


@dataclass(frozen=True)
class OidcIdentity:
    """A verified agent: who, with which scopes, until when, and a stable id for its token."""

    agent_id: str
    scopes: tuple[str, ...]
    expires_at: float
    token_id: str  # the jti, or "sha256:<hex>" of the token when it has none
    issuer: str = ""
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


class OidcError(Exception):
    """A token was rejected (401), or the IdP's keys could not be fetched (503)."""

    status: int = 401

    def __init__(self, message: str, *, status: int = 401) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class OidcVerifier:
    """Verifies agents' access tokens from one OIDC issuer against its JWKS."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks_url: str | None = None,
        agent_claim: str = "sub",
        algorithms: Sequence[str] = ("RS256", "ES256", "EdDSA"),
        leeway: float = 30.0,
        scope_claims: Sequence[str] = ("scope", "scp"),
        http: aiohttp.ClientSession | None = None,
        jwks_ttl: float = 300.0,
        refresh_interval: float = 10.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not issuer or not audience or not agent_claim:
            raise ValueError("an OIDC verifier needs an issuer, an audience and an agent claim")
        refused = [alg for alg in algorithms if alg not in KEY_TYPES]
        if refused or not algorithms:
            raise ValueError(
                f"OIDC algorithms must be chosen from {', '.join(KEY_TYPES)} (never 'none' or HS*); got {refused}"
            )
        self.issuer = issuer
        self.audience = audience
        self.agent_claim = agent_claim
        self._algorithms = frozenset(algorithms)
        self._leeway = leeway
        self._scope_claims = tuple(scope_claims)
        self._jwks_url = jwks_url
        self._clock = clock
        self._verified: dict[str, OidcIdentity] = {}
        self._keyset = JwksKeys(
            self._discover,
            name=f"OIDC issuer {issuer}",
            http=http,
            ttl=jwks_ttl,
            refresh_interval=refresh_interval,
            timeout=timeout,
            clock=clock,
            on_change=self._verified.clear,
        )

    # -- verification -------------------------------------------------------------------

    async def verify(self, token: str) -> OidcIdentity:
        """The agent a token names, or ``OidcError`` saying which check failed."""
        cached = self._verified.get(token)
        if cached is not None:
            if self._clock() < cached.expires_at + self._leeway:
                return cached
            del self._verified[token]
        if not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
            raise OidcError("The bearer token is not a well-formed JWT.")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise OidcError("The bearer token is not a well-formed JWT.") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise OidcError("The token's signing algorithm is not accepted.")
        if "crit" in header:
            raise OidcError("The token has critical header parameters Wicket does not understand.")
        if kid is not None and not isinstance(kid, str):
            raise OidcError("The token's key id (kid) is malformed.")
        key = await self._key_for(kid, alg)
        claims = self._decode(token, key, alg)
        identity = OidcIdentity(
            agent_id=self._agent_id(claims),
            scopes=self._scopes(claims),
            expires_at=float(claims["exp"]),
            token_id=self._token_id(token, claims),
            issuer=self.issuer,
            claims=claims,
        )
        if len(token) <= VERIFIED_CACHE_TOKEN_CHARS:
            if len(self._verified) >= VERIFIED_CACHE_MAX:
                self._verified.clear()
            self._verified[token] = identity
        return identity

    async def identify(self, token: str) -> OidcIdentity:
        """``verify`` for ``IdentityResolver``: a rejection becomes an ``IdentityError``."""
        try:
            return await self.verify(token)
        except OidcError as exc:
            raise IdentityError(exc.status, exc.message) from None

    def _decode(self, token: str, key: Key, alg: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                issuer=self.issuer,
                audience=self.audience,
                # Times are checked below against our own clock, with messages of our own.
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": ["exp", "iss", "aud"],
                },
            )
        except jwt.InvalidSignatureError:
            raise OidcError("The token's signature does not verify.") from None
        except jwt.MissingRequiredClaimError as exc:
            raise OidcError(f"The token lacks the required '{exc.claim}' claim.") from None
        except jwt.InvalidIssuerError:
            raise OidcError("The token was not issued by the configured OIDC issuer.") from None
        except jwt.InvalidAudienceError:
            raise OidcError("The token's audience does not include this resource.") from None
        except _CLAIM_TYPE_ERRORS:
            raise OidcError("The token's sub or jti claim is not a string.") from None
        except jwt.PyJWTError:
            raise OidcError("The token is malformed or its signature does not verify.") from None
        now = self._clock()
        exp, nbf, iat = claims["exp"], claims.get("nbf"), claims.get("iat")
        if not _number(exp) or (nbf is not None and not _number(nbf)) or (iat is not None and not _number(iat)):
            raise OidcError("The token's exp, nbf or iat claim is not a number.")
        if now >= exp + self._leeway:
            raise OidcError("The token has expired.")
        if nbf is not None and nbf > now + self._leeway:
            raise OidcError("The token is not valid yet (nbf).")
        if iat is not None and iat > now + self._leeway:
            raise OidcError("The token claims to be issued in the future (iat).")
        return claims

    def _agent_id(self, claims: Mapping[str, Any]) -> str:
        value = claims.get(self.agent_claim)
        if value is None:
            raise OidcError(f"The token lacks the '{self.agent_claim}' claim that names the agent.")
        if not isinstance(value, str) or not AGENT_ID.fullmatch(value):
            raise OidcError(
                f"The token's '{self.agent_claim}' claim is not a valid agent id (1-128 of [A-Za-z0-9._:@/-])."
            )
        if value.casefold() in RESERVED_AGENTS:
            raise OidcError(f"The token's '{self.agent_claim}' claim names a reserved agent.")
        return value

    def _scopes(self, claims: Mapping[str, Any]) -> tuple[str, ...]:
        """Scopes from the first present scope claim: a space-separated string or a list of strings."""
        for name in self._scope_claims:
            raw = claims.get(name)
            if raw is None:
                continue
            if isinstance(raw, str):
                items = raw.split()
            elif isinstance(raw, list) and all(isinstance(item, str) for item in raw):
                items = [part for item in raw for part in item.split()]
            else:
                raise OidcError(f"The token's '{name}' claim is neither a string nor a list of strings.")
            if len(items) > MAX_SCOPES:
                raise OidcError(f"The token carries more than {MAX_SCOPES} scopes.")
            return tuple(dict.fromkeys(items))
        return ()

    @staticmethod
    def _token_id(token: str, claims: Mapping[str, Any]) -> str:
        jti = claims.get("jti")
        if isinstance(jti, str) and 0 < len(jti) <= MAX_TOKEN_ID_CHARS:
            return jti
        return "sha256:" + hashlib.sha256(token.encode()).hexdigest()

    # -- keys ---------------------------------------------------------------------------

    async def _key_for(self, kid: str | None, alg: str) -> Key:
        try:
            return await self._keyset.key_for(kid, alg)
        except KeyUnavailable as exc:
            raise OidcError(exc.message, status=exc.status) from None

    async def _discover(self) -> str:
        """``jwks_uri`` from ``{issuer}/.well-known/openid-configuration`` (OIDC Discovery §4)."""
        if self._jwks_url:
            return self._jwks_url
        document = await self._keyset.get_json(self.issuer.rstrip("/") + "/.well-known/openid-configuration")
        if document.get("issuer") != self.issuer:
            raise FetchError("the discovery document names a different issuer")
        jwks_uri = document.get("jwks_uri")
        schemes = ("https",) if urlsplit(self.issuer).scheme == "https" else ("https", "http")
        if not isinstance(jwks_uri, str) or urlsplit(jwks_uri).scheme not in schemes:
            raise FetchError("the discovery document has no usable jwks_uri")
        self._jwks_url = jwks_uri
        return jwks_uri

    async def warm(self) -> bool:
        """Fetch the keys now (at start-up) so the first agent does not wait; never raises."""
        return await self._keyset.warm()

    async def close(self) -> None:
        await self._keyset.close()


# -- RFC 9728: OAuth 2.0 protected resource metadata ------------------------------------


def protected_resource_metadata(resource: str, issuer: str, scopes: Sequence[str] = ()) -> dict[str, Any]:
    """The RFC 9728 §2 document that tells an OAuth-capable MCP client where to get a token."""
    metadata: dict[str, Any] = {
        "resource": resource,
        "authorization_servers": [issuer],
        "bearer_methods_supported": ["header"],
    }
    if scopes:
        metadata["scopes_supported"] = list(scopes)
    return metadata


def resource_metadata_path(resource_url: str) -> str:
    """RFC 9728 §3.1: the well-known path inserted before the resource's own path."""
    return WELL_KNOWN_RESOURCE + urlsplit(resource_url).path.rstrip("/")


def resource_metadata_url(resource_url: str) -> str:
    """Where ``resource_url``'s metadata lives: ``https://h/mcp`` -> ``https://h/.well-known/oauth-protected-resource/mcp``."""
    parts = urlsplit(resource_url)
    return f"{parts.scheme}://{parts.netloc}{resource_metadata_path(resource_url)}"


def _quoted(value: str) -> str:
    """An RFC 9110 quoted-string; control characters are dropped, quotes and backslashes escaped."""
    cleaned = "".join(ch for ch in value if 0x20 <= ord(ch) < 0x7F)
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


def www_authenticate(resource_metadata_url: str, error: str | None = None, error_description: str | None = None) -> str:
    """``Bearer resource_metadata="..."`` (RFC 9728 §5.1), with RFC 6750 ``error`` when a token was rejected."""
    params = [f"resource_metadata={_quoted(resource_metadata_url)}"]
    if error:
        params.append(f"error={_quoted(error)}")
        if error_description:
            # RFC 6750 §3: error_description excludes '"' and '\\'.
            description = error_description.replace('"', "'").replace("\\", "/")
            params.append(f"error_description={_quoted(description)}")
    return "Bearer " + ", ".join(params)


def oauth_routes(
    resource_url: str | None, issuer: str, scopes: Sequence[str] = (), *, resource_path: str = "/mcp"
) -> list[web.RouteDef]:
    """``GET /.well-known/oauth-protected-resource`` and its path-suffixed form (RFC 9728 §3.1).

    Both serve the same document, whose ``resource`` is the MCP endpoint: clients that
    follow ``WWW-Authenticate`` and clients that probe the well-known paths (as the MCP
    authorization spec tells them to) get the same answer. With ``resource_url=None`` the
    resource is this request's own origin plus ``resource_path`` (a sidecar reached as
    ``localhost`` and a Service reached by its DNS name each see their own URL).
    """
    headers = {"Access-Control-Allow-Origin": "*"}
    static: bytes | None = None
    if resource_url is not None:
        static = json.dumps(protected_resource_metadata(resource_url, issuer, scopes)).encode()
        headers["Cache-Control"] = "public, max-age=3600"
        resource_path = urlsplit(resource_url).path

    async def metadata(request: web.Request) -> web.Response:
        body = static
        if body is None:
            resource = f"{request.scheme}://{request.host}{resource_path}"
            body = json.dumps(protected_resource_metadata(resource, issuer, scopes)).encode()
        return web.Response(body=body, content_type="application/json", headers=headers)

    suffixed = WELL_KNOWN_RESOURCE + resource_path.rstrip("/")
    return [web.get(path, metadata, allow_head=True) for path in dict.fromkeys((WELL_KNOWN_RESOURCE, suffixed))]
