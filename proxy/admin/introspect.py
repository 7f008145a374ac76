"""``POST /v1/introspect``: RFC 7662 token introspection for the partners this Wicket federates with.

A partner's Wicket asks, on first use of a credential (or delegation link) this Wicket issued,
whether it is still active, and caches the answer for a few seconds: revoking an agent, a
session's token or a link's ``jti`` here stops the partner's agent there within that time.

Callers authenticate with HTTP Basic and a per-partner client credential from policy
(``introspection.clients``), never the operator token and never an agent's token. The answer is
``{"active": false, "wicket_reason": ...}`` for anything not signed by this Wicket, expired or
revoked; otherwise ``active: true`` with the token's ``iss``, ``sub``, ``aud``, ``exp``, ``jti`` and
``scope`` (RFC 7662 §2.2).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

import jwt
from aiohttp import web

from proxy.admin.api import problem
from proxy.core.revocations import RevocationList
from proxy.credentials.keys import KeyRing
from proxy.identity_providers.jwks import KeyUnavailable, parse_jwks, select_key

MAX_TOKEN_CHARS = 48 * 1024
_ALGORITHMS = ("EdDSA", "ES256")


class IntrospectionApi:
    def __init__(
        self,
        *,
        clients: Callable[[], tuple[tuple[str, str], ...]],
        environ: Mapping[str, str],
        keys: KeyRing,
        issuer: str,
        revocations: RevocationList,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clients = clients
        self._environ = environ
        self._keys = keys
        self._issuer = issuer
        self._revocations = revocations
        self._clock = clock

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/introspect", self.introspect)]

    async def introspect(self, request: web.Request) -> web.Response:
        client = self._client(request.headers.get("Authorization", ""))
        if client is None:
            return problem(
                401,
                "Introspection needs a partner client credential (HTTP Basic, policy introspection.clients).",
                challenge='Basic realm="wicket-introspection"',
            )
        token = await _token_of(request)
        if token is None:
            return problem(400, 'The body must carry the token: token=... (form) or {"token": "..."}.')
        answer = self.inspect(token)
        return web.json_response(answer, headers={"Cache-Control": "no-store"})

    def _client(self, authorization: str) -> str | None:
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            client_id, sep, secret = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if not sep:
            return None
        for known, env in self._clients():
            expected = self._environ.get(env, "")
            if expected and hmac.compare_digest(known.encode(), client_id.encode()):
                return known if hmac.compare_digest(expected.encode(), secret.encode()) else None
        return None

    def inspect(self, token: str) -> dict[str, Any]:
        """The RFC 7662 answer for ``token``: active only if this Wicket signed it and nothing revoked it."""
        claims, why = self._verified(token)
        if claims is None:
            return {"active": False, "wicket_reason": why}
        agents = [claims.get("sub"), claims.get("aud")]
        link_ids = [claims.get("jti")]
        chain = claims.get("delegation")
        if isinstance(chain, list):
            for raw in chain:
                try:
                    link = jwt.decode(raw, options={"verify_signature": False})
                except (jwt.PyJWTError, TypeError):
                    continue  # the receiving side verifies every link itself
                agents += [link.get("sub"), link.get("aud")]
                link_ids.append(link.get("jti"))
        revoked = self._revocations.reason_for_chain(
            [a for a in agents if isinstance(a, str)], [j for j in link_ids if isinstance(j, str)]
        )
        if revoked is not None:
            return {"active": False, "wicket_reason": revoked}
        answer: dict[str, Any] = {"active": True, "token_type": "Bearer"}
        for name in ("iss", "sub", "aud", "exp", "iat", "jti", "scope"):
            if name in claims:
                answer[name] = claims[name]
        return answer

    def _verified(self, token: str) -> tuple[dict[str, Any] | None, str]:
        if not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
            return None, "not a token this Wicket issued"
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None, "not a token this Wicket issued"
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in _ALGORITHMS:
            return None, "not a token this Wicket issued"
        try:
            key = select_key(parse_jwks(self._keys.jwks()), kid if isinstance(kid, str) else None, alg)
        except KeyUnavailable:
            key = None
        if key is None:
            return None, "not signed by a key this Wicket publishes"
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key.key, algorithms=[alg], issuer=self._issuer, options={"verify_aud": False, "require": ["exp"]}
            )
        except jwt.ExpiredSignatureError:
            return None, "expired"
        except jwt.PyJWTError:
            return None, "not a token this Wicket issued"
        return claims, ""


async def _token_of(request: web.Request) -> str | None:
    raw = await request.read()
    if len(raw) > MAX_TOKEN_CHARS + 1024:
        return None
    if request.content_type == "application/json":
        try:
            body = json.loads(raw)
        except ValueError:
            return None
        token = body.get("token") if isinstance(body, dict) else None
    else:
        token = (parse_qs(raw.decode("utf-8", "replace")).get("token") or [None])[0]
    return token if isinstance(token, str) and token else None
