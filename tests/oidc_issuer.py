"""A real local OIDC issuer for tests: discovery, JWKS and an RFC 8693 token endpoint.

Wicket's tests talk to it over real HTTP on 127.0.0.1, so the verifier's discovery,
caching and refresh paths run exactly as they would against Keycloak or Okta.

Use the ``oidc_issuer`` fixture (``from tests import oidc_issuer as issuer_module;
oidc_issuer = issuer_module.oidc_issuer``) or ``async with OidcIssuer() as issuer:``.

Endpoints (``issuer.url`` is the ``iss`` of every token it signs):

- ``GET  /.well-known/openid-configuration``: issuer, jwks_uri, token_endpoint, ...
  (counted in ``issuer.discovery_fetches``).
- ``GET  /jwks``: the public keys, RSA (RS256), EC P-256 (ES256) and Ed25519 (EdDSA), each
  with a ``kid`` (counted in ``issuer.jwks_fetches``).
- ``POST /token``: RFC 8693 token exchange only. ``client_secret_basic`` with
  ``issuer.client_id`` / ``issuer.client_secret``; form fields ``grant_type`` =
  ``urn:ietf:params:oauth:grant-type:token-exchange``, ``subject_token`` (a JWT this issuer
  signed, not expired), ``subject_token_type`` (``...:token-type:access_token`` or
  ``...:token-type:jwt``), ``audience`` or ``resource`` (required), ``scope`` (optional; must
  be a subset of the subject token's scope, else 400 ``invalid_scope``; absent = the
  subject's scope). Answers ``{"access_token", "issued_token_type":
  "urn:ietf:params:oauth:token-type:access_token", "token_type": "Bearer", "expires_in",
  "scope"}``; the access token is an RS256 JWT with ``iss``, ``sub`` (the subject's),
  ``aud`` (the requested audience), ``scope``, ``client_id``, ``act: {"sub": client_id}``,
  ``iat``, ``exp``, ``jti``. Errors are RFC 6749 §5.2 JSON (``invalid_client`` 401,
  ``invalid_request``/``invalid_grant``/``invalid_scope``/``unsupported_grant_type`` 400).
  Every request, good or bad, is appended to ``issuer.exchanges`` as an ``Exchange``.
  Set ``issuer.fail_exchange = (status, error)`` to make the endpoint answer that error.

Helpers:

- ``issuer.mint(sub=, aud=, scope=, ttl=, alg=, kid=, extra_claims=, headers=)``: an agent's
  token. ``kid`` naming a key signs with that key; naming no key signs with the current key
  of ``alg`` but puts the given ``kid`` in the header (for unknown-kid tests). A ``None``
  value in ``extra_claims`` removes that claim (e.g. ``{"sub": None}``).
- ``issuer.claims(...)``: the claims ``mint`` would sign, for hand-forged tokens.
- ``issuer.rotate(alg="RS256") -> kid``: publish a new current key for ``alg``; old keys
  stay published.
- ``issuer.kid(alg)``, ``issuer.private_pem(alg)``, ``issuer.public_pem(alg)``,
  ``issuer.public_key(alg)``: the current key of ``alg``, for attack tests.
- ``issuer.decode(token, audience=None)``: verify a token this issuer signed and return
  its claims (for asserting what an exchanged token holds).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ALGORITHMS = ("RS256", "ES256", "EdDSA")

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private: PrivateKey

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if self.alg == "RS256":
            data = RSAAlgorithm.to_jwk(public, as_dict=True)
        elif self.alg == "ES256":
            data = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            data = OKPAlgorithm.to_jwk(public, as_dict=True)
        return {**data, "kid": self.kid, "alg": self.alg, "use": "sig"}


@dataclass(frozen=True)
class Exchange:
    """One request to ``POST /token``: what was asked and what was answered."""

    form: dict[str, str]
    client_id: str | None
    status: int
    error: str | None = None
    access_token: str | None = None
    claims: dict[str, Any] = field(default_factory=dict)


def _new_key(alg: str) -> SigningKey:
    private: PrivateKey
    if alg == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"the test issuer signs with {', '.join(ALGORITHMS)}, not {alg}")
    return SigningKey(kid=f"{alg.lower()}-{secrets.token_hex(4)}", alg=alg, private=private)


class OidcIssuer:
    """An aiohttp OIDC issuer on 127.0.0.1 with a random port; see the module docstring."""

    def __init__(
        self,
        *,
        client_id: str = "wicket-sidecar",
        client_secret: str = "wicket-sidecar-secret",
        path: str = "",
        default_audience: str = "wicket",
        exchange_ttl: int = 300,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.default_audience = default_audience
        self.exchange_ttl = exchange_ttl
        self._path = path.rstrip("/")
        self._keys: list[SigningKey] = [_new_key(alg) for alg in ALGORITHMS]
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        self.exchanges: list[Exchange] = []
        self.fail_exchange: tuple[int, str] | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(f"{self._path}/.well-known/openid-configuration", self._discovery)
        app.router.add_get(f"{self._path}/jwks", self._jwks)
        app.router.add_post(f"{self._path}/token", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> OidcIssuer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- addresses ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The issuer identifier (``iss``), also the base of every endpoint."""
        return f"http://127.0.0.1:{self.port}{self._path}"

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/jwks"

    @property
    def token_endpoint(self) -> str:
        return f"{self.url}/token"

    @property
    def discovery_url(self) -> str:
        return f"{self.url}/.well-known/openid-configuration"

    # -- keys ---------------------------------------------------------------------------

    def _current(self, alg: str) -> SigningKey:
        for key in reversed(self._keys):
            if key.alg == alg:
                return key
        raise ValueError(f"no {alg} key")

    def rotate(self, alg: str = "RS256") -> str:
        """Publish a new current key for ``alg`` (old keys stay in the JWKS); returns its kid."""
        key = _new_key(alg)
        self._keys.append(key)
        return key.kid

    def kid(self, alg: str = "RS256") -> str:
        return self._current(alg).kid

    def public_key(self, alg: str = "RS256") -> Any:
        return self._current(alg).private.public_key()

    def private_pem(self, alg: str = "RS256") -> bytes:
        return self._current(alg).private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def public_pem(self, alg: str = "RS256") -> bytes:
        return self.public_key(alg).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.jwk() for key in self._keys]}

    # -- tokens -------------------------------------------------------------------------

    def claims(
        self,
        *,
        sub: str = "agent-1",
        aud: str | list[str] | None = None,
        scope: str | None = "tools:read",
        ttl: float = 300,
        extra_claims: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "sub": sub,
            "aud": self.default_audience if aud is None else aud,
            "iat": now,
            "nbf": now,
            "exp": int(now + ttl),
            "jti": "jti-" + secrets.token_hex(8),
        }
        if scope is not None:
            claims["scope"] = scope
        for name, value in (extra_claims or {}).items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def mint(
        self,
        *,
        sub: str = "agent-1",
        aud: str | list[str] | None = None,
        scope: str | None = "tools:read",
        ttl: float = 300,
        alg: str = "RS256",
        kid: str | None = None,
        extra_claims: Mapping[str, Any] | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """An agent's access token signed by this issuer (see the module docstring)."""
        key = next((k for k in self._keys if k.kid == kid), None) or self._current(alg)
        claims = self.claims(sub=sub, aud=aud, scope=scope, ttl=ttl, extra_claims=extra_claims)
        header = {"kid": kid or key.kid, "typ": "JWT", **(headers or {})}
        return jwt.encode(claims, key.private, algorithm=key.alg, headers=header)

    def decode(self, token: str, audience: str | None = None) -> dict[str, Any]:
        """Verify a token this issuer signed; raises ``jwt.InvalidTokenError`` otherwise."""
        kid = jwt.get_unverified_header(token).get("kid")
        key = next((k for k in self._keys if k.kid == kid), None)
        if key is None:
            raise jwt.InvalidTokenError("unknown kid")
        return jwt.decode(
            token,
            key.private.public_key(),
            algorithms=[key.alg],
            issuer=self.url,
            audience=audience,
            options={"verify_aud": audience is not None, "require": ["exp", "iss", "sub"]},
        )

    # -- handlers -----------------------------------------------------------------------

    async def _discovery(self, request: web.Request) -> web.Response:
        self.discovery_fetches += 1
        return web.json_response(
            {
                "issuer": self.url,
                "jwks_uri": self.jwks_url,
                "token_endpoint": self.token_endpoint,
                "authorization_endpoint": f"{self.url}/authorize",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": list(ALGORITHMS),
                "grant_types_supported": [TOKEN_EXCHANGE],
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        return web.json_response(self.jwks())

    def _client(self, request: web.Request) -> str | None:
        """The authenticated client id from ``client_secret_basic``, else ``None``."""
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            client_id, sep, secret = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        ok = sep and hmac.compare_digest(client_id, self.client_id) and hmac.compare_digest(secret, self.client_secret)
        return client_id if ok else None

    async def _token(self, request: web.Request) -> web.Response:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        client_id = self._client(request)

        def error(status: int, code: str, description: str) -> web.Response:
            self.exchanges.append(Exchange(form=form, client_id=client_id, status=status, error=code))
            headers = {"WWW-Authenticate": 'Basic realm="oidc-issuer"'} if status == 401 else None
            return web.json_response({"error": code, "error_description": description}, status=status, headers=headers)

        if self.fail_exchange is not None:
            return error(*self.fail_exchange, "configured failure")
        if client_id is None:
            return error(401, "invalid_client", "client authentication failed")
        if form.get("grant_type") != TOKEN_EXCHANGE:
            return error(400, "unsupported_grant_type", "only token exchange is supported")
        subject_token = form.get("subject_token")
        if not subject_token or form.get("subject_token_type") not in (ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE):
            return error(400, "invalid_request", "subject_token and a supported subject_token_type are required")
        audience = form.get("audience") or form.get("resource")
        if not audience:
            return error(400, "invalid_request", "audience or resource is required")
        try:
            subject = self.decode(subject_token)
        except jwt.InvalidTokenError:
            return error(400, "invalid_grant", "the subject token is invalid or expired")
        granted = set(str(subject.get("scope", "")).split())
        requested = form["scope"].split() if "scope" in form else sorted(granted)
        if not set(requested) <= granted:
            return error(400, "invalid_scope", "the requested scope exceeds the subject token's scope")
        now = int(time.time())
        claims = {
            "iss": self.url,
            "sub": subject["sub"],
            "aud": audience,
            "scope": " ".join(requested),
            "client_id": client_id,
            "act": {"sub": client_id},
            "iat": now,
            "exp": now + self.exchange_ttl,
            "jti": "xch-" + secrets.token_hex(8),
        }
        key = self._current("RS256")
        token = jwt.encode(claims, key.private, algorithm="RS256", headers={"kid": key.kid, "typ": "at+jwt"})
        self.exchanges.append(Exchange(form=form, client_id=client_id, status=200, access_token=token, claims=claims))
        return web.json_response(
            {
                "access_token": token,
                "issued_token_type": ACCESS_TOKEN_TYPE,
                "token_type": "Bearer",
                "expires_in": self.exchange_ttl,
                "scope": claims["scope"],
            },
            headers={"Cache-Control": "no-store"},
        )


@pytest.fixture
async def oidc_issuer() -> AsyncIterator[OidcIssuer]:
    async with OidcIssuer() as issuer:
        yield issuer
