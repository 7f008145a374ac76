"""Upstream credentials: minted JWTs verified by a real upstream through Wicket's JWKS, keys and
rotation, static secrets, passthrough, and RFC 8693 exchange against a real local issuer.

The upstream here is a real MCP server (uvicorn, real port) behind the small verifying
middleware an operator would put in front of their own server: it is also the reference for
how upstreams verify minted credentials.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import jwt
import pytest
import uvicorn
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from mcp.shared.exceptions import MCPError

from proxy.core.action import Action, Delegation
from proxy.core.policy import Policy, PolicyError, load_policy, normalise_url, parse_policy_text
from proxy.core.sessions import Session
from proxy.credentials import (
    JWKS_PATH,
    CredentialBroker,
    CredentialConfigError,
    CredentialError,
    IssuedCredential,
    KeyRing,
    SigningKeyError,
    TokenExchanger,
    arguments_sha256,
    fingerprint,
    jwk_thumbprint,
    jwks_handler,
    narrow_scope,
    passthrough_warnings,
)
from proxy.credentials import broker as broker_module
from proxy.credentials.delegation import sign_link
from proxy.credentials.keys import b64url
from proxy.demo.server import Ledger, build_demo_server, free_port
from tests import oidc_issuer as issuer_module
from tests.conftest import ADMIN_TOKEN, DEMO_POLICY, SESSION_KEY, WicketFactory, mcp_client
from tests.oidc_issuer import JWT_TOKEN_TYPE, TOKEN_EXCHANGE, OidcIssuer

oidc_issuer = issuer_module.oidc_issuer

NOTES = "http://127.0.0.1:3001/mcp"


def _policy(body: str) -> Policy:
    return parse_policy_text("version: 1\n" + body, "test-policy.yaml")


def _session(scope: tuple[str, ...] = ("*",), agent: str = "billing-bot", ttl: float = 3600) -> Session:
    now = time.time()
    return Session(
        session_id="ses_test", agent_id=agent, scope=scope, mode="read-write", created_at=now, expires_at=now + ttl
    )


def _call(tool: str, arguments: dict[str, Any] | None = None, upstream: str = NOTES) -> Action:
    return Action(
        protocol="mcp",
        method="tools/call",
        name=tool,
        arguments=arguments or {},
        agent_id="billing-bot",
        session_id="ses_test",
        upstream=upstream,
        is_tool_call=True,
    )


def _claims(credential: IssuedCredential) -> dict[str, Any]:
    token = credential.headers["Authorization"].removeprefix("Bearer ")
    return dict(jwt.decode(token, options={"verify_signature": False}))


def _broker(policy: Policy | None = None, keys: KeyRing | None = None, **kwargs: Any) -> CredentialBroker:
    options: dict[str, Any] = {"issuer": "https://wicket.test", "env": {}, "exchange": None, **kwargs}
    return CredentialBroker(policy or Policy(), keys or KeyRing.generate(), **options)


# --------------------------------------------------------------------------- the verifying upstream


class Refused(Exception):
    pass


class VerifyingMiddleware:
    """What an upstream does with a minted credential (pure ASGI, in front of any MCP server).

    1. Fetch Wicket's JWKS; re-fetch when a ``kid`` is unknown (rotation).
    2. Verify the JWT: only EdDSA/ES256 with the key the ``kid`` names, ``aud`` == this
       server's canonical URI, ``iss`` == the Wicket it trusts, ``exp``/``nbf``.
    3. Bind it to the request: ``method``, and for ``tools/call`` the ``tool`` and
       ``args_sha256`` (SHA-256 of the canonical JSON of ``params.arguments``).
    4. Refuse a ``jti`` seen before (kept until the credential's ``exp``).
    """

    def __init__(self, app: Any, *, audience: str, issuer: str, jwks_url: str) -> None:
        self.app = app
        self.audience = audience
        self.issuer = issuer
        self.jwks_url = jwks_url
        self.keys: dict[str, jwt.PyJWK] = {}
        self.jwks_fetches = 0
        self.seen_jti: dict[str, float] = {}
        self.accepted: list[dict[str, Any]] = []
        self.refusals: list[str] = []
        self.request_headers: list[dict[str, str]] = []
        self.hs256_secret: bytes | None = None
        """Set: this upstream takes HS256 credentials signed with this secret (and nothing else)."""

    async def _key(self, kid: Any) -> jwt.PyJWK:
        if not isinstance(kid, str):
            raise Refused("no kid")
        if kid not in self.keys:
            async with aiohttp.ClientSession() as http, http.get(self.jwks_url) as response:
                document = await response.json()
            self.jwks_fetches += 1
            self.keys = {k["kid"]: jwt.PyJWK(k) for k in document["keys"]}
        if kid not in self.keys:
            raise Refused("unknown kid")
        return self.keys[kid]

    async def verify(self, headers: dict[str, str], http_method: str, body: bytes) -> dict[str, Any]:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Refused("no bearer credential")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Refused("malformed credential") from None
        if self.hs256_secret is not None:
            if header.get("alg") != "HS256":
                raise Refused("unexpected algorithm")
            secret, algorithm = self.hs256_secret, "HS256"
        else:
            key = await self._key(header.get("kid"))
            if header.get("alg") != key.algorithm_name or key.algorithm_name not in ("EdDSA", "ES256"):
                raise Refused("unexpected algorithm")
            secret, algorithm = key.key, key.algorithm_name
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                secret,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "method", "args_sha256"]},
            )
        except jwt.ExpiredSignatureError:
            raise Refused("expired") from None
        except jwt.InvalidAudienceError:
            raise Refused("wrong audience") from None
        except jwt.PyJWTError as exc:
            raise Refused(f"invalid credential: {exc}") from None
        message = json.loads(body) if body else {}
        method = message.get("method", http_method)
        if claims["method"] != method:
            raise Refused("minted for another method")
        if method == "tools/call":
            params = message.get("params") or {}
            if claims.get("tool") != params.get("name"):
                raise Refused("minted for another tool")
            canonical = json.dumps(
                params.get("arguments") or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
            )
            if hashlib.sha256(canonical.encode()).hexdigest() != claims["args_sha256"]:
                raise Refused("minted for other arguments")
        now = time.time()
        self.seen_jti = {jti: exp for jti, exp in self.seen_jti.items() if exp > now}
        if claims["jti"] in self.seen_jti:
            raise Refused("jti reused")
        self.seen_jti[claims["jti"]] = claims["exp"]
        return claims

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        self.request_headers.append(headers)
        try:
            claims = await self.verify(headers, scope["method"], body)
        except Refused as exc:
            self.refusals.append(str(exc))
            payload = json.dumps({"error": "invalid_token", "error_description": str(exc)}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"www-authenticate", b'Bearer error="invalid_token"'),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": payload})
            return
        self.accepted.append(claims)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return dict(await receive())

        await self.app(scope, replay, send)


@dataclass
class VerifiedUpstream:
    url: str
    issuer: str
    keys: KeyRing
    ledger: Ledger
    verifier: VerifyingMiddleware

    async def post(self, credential: IssuedCredential, message: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        headers = {"Accept": "application/json, text/event-stream", **credential.headers}
        async with aiohttp.ClientSession() as http, http.post(self.url, json=message, headers=headers) as response:
            return response.status, dict(await response.json(content_type=None))

    async def call(
        self, credential: IssuedCredential, tool: str, arguments: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
        return await self.post(credential, message)


@pytest.fixture
async def verified_upstream() -> AsyncIterator[VerifiedUpstream]:
    keys = KeyRing.generate()
    jwks_app = web.Application()
    jwks_app.router.add_get(JWKS_PATH, jwks_handler(keys))
    runner = web.AppRunner(jwks_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    issuer = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

    server, ledger = build_demo_server()
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    verifier = VerifyingMiddleware(
        server.streamable_http_app(json_response=True, stateless_http=True),
        audience=normalise_url(url),
        issuer=issuer,
        jwks_url=issuer + JWKS_PATH,
    )
    uv = uvicorn.Server(uvicorn.Config(verifier, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(uv.serve())
    while not uv.started:
        assert not task.done(), "the verifying upstream failed to start"
        await asyncio.sleep(0.01)
    yield VerifiedUpstream(url=url, issuer=issuer, keys=keys, ledger=ledger, verifier=verifier)
    uv.should_exit = True
    await task
    await runner.cleanup()


def _upstream_broker(up: VerifiedUpstream, **kwargs: Any) -> CredentialBroker:
    policy = _policy(f'upstreams:\n  - url: "{up.url}"\n    credentials: {{scope: ["weather:read"]}}\n')
    return CredentialBroker(policy, up.keys, issuer=up.issuer, env={}, exchange=None, **kwargs)


async def test_upstream_accepts_a_minted_credential(verified_upstream: VerifiedUpstream) -> None:
    up = verified_upstream
    session = _session()
    credential = await _upstream_broker(up).issue(
        _call("get_weather", {"city": "Oslo"}, up.url), session, inbound_token=None
    )
    status, body = await up.call(credential, "get_weather", {"city": "Oslo"})
    assert status == 200, body
    assert body["result"]["content"][0]["text"] == "It is sunny in Oslo."
    assert up.ledger.calls == [("get_weather", {"city": "Oslo"})]
    claims = up.verifier.accepted[0]
    assert claims["iss"] == up.issuer
    assert claims["sub"] == "billing-bot"
    assert claims["aud"] == normalise_url(up.url)
    assert claims["tool"] == "get_weather" and claims["method"] == "tools/call"
    assert claims["scope"] == "weather:read"
    assert claims["sid"] == session.session_id
    assert claims["exp"] - claims["iat"] == 60 and claims["nbf"] == claims["iat"]
    assert claims["jti"] == credential.credential_id
    assert claims["args_sha256"] == arguments_sha256({"city": "Oslo"})
    # The upstream saw Wicket's credential and nothing else that authenticates.
    assert up.verifier.request_headers[-1]["authorization"] == credential.headers["Authorization"]


async def test_upstream_accepts_housekeeping_credentials(verified_upstream: VerifiedUpstream) -> None:
    up = verified_upstream
    broker = _upstream_broker(up)
    credential = await broker.issue_for_request(_session(), upstream=up.url, method="tools/list", inbound_token=None)
    status, body = await up.post(credential, {"jsonrpc": "2.0", "id": 7, "method": "tools/list"})
    assert status == 200, body
    assert any(tool["name"] == "get_weather" for tool in body["result"]["tools"])
    assert "tool" not in up.verifier.accepted[0]


async def test_upstream_refuses_a_wrong_audience(verified_upstream: VerifiedUpstream) -> None:
    up = verified_upstream
    other = up.url.replace("/mcp", "/other-mcp")
    credential = await _upstream_broker(up).issue(
        _call("get_weather", {"city": "Oslo"}, other), _session(), inbound_token=None
    )
    status, body = await up.call(credential, "get_weather", {"city": "Oslo"})
    assert (status, body["error_description"]) == (401, "wrong audience")
    assert up.ledger.calls == []


async def test_upstream_refuses_an_expired_credential(verified_upstream: VerifiedUpstream) -> None:
    up = verified_upstream
    broker = _upstream_broker(up, clock=lambda: time.time() - 120)  # minted two minutes ago, 60 s ttl
    credential = await broker.issue(_call("get_weather", {"city": "Oslo"}, up.url), _session(), inbound_token=None)
    status, body = await up.call(credential, "get_weather", {"city": "Oslo"})
    assert (status, body["error_description"]) == (401, "expired")
    assert up.ledger.calls == []


@pytest.mark.parametrize(
    ("tool", "arguments", "reason"),
    [
        ("get_weather", {"city": "Paris"}, "minted for other arguments"),
        ("get_weather", {"city": "Oslo", "extra": 1}, "minted for other arguments"),
        ("create_note", {"title": "x", "text": "y"}, "minted for another tool"),
    ],
)
async def test_upstream_refuses_a_credential_replayed_with_another_call(
    verified_upstream: VerifiedUpstream, tool: str, arguments: dict[str, Any], reason: str
) -> None:
    up = verified_upstream
    credential = await _upstream_broker(up).issue(
        _call("get_weather", {"city": "Oslo"}, up.url), _session(), inbound_token=None
    )
    status, body = await up.call(credential, tool, arguments)
    assert (status, body["error_description"]) == (401, reason)
    assert up.ledger.calls == []


async def test_upstream_refuses_a_reused_jti(verified_upstream: VerifiedUpstream) -> None:
    up = verified_upstream
    credential = await _upstream_broker(up).issue(
        _call("get_weather", {"city": "Oslo"}, up.url), _session(), inbound_token=None
    )
    assert (await up.call(credential, "get_weather", {"city": "Oslo"}))[0] == 200
    status, body = await up.call(credential, "get_weather", {"city": "Oslo"})
    assert (status, body["error_description"]) == (401, "jti reused")
    assert up.ledger.names() == ["get_weather"]


async def test_upstream_follows_a_key_rotation_through_the_jwks(verified_upstream: VerifiedUpstream) -> None:
    up = verified_upstream
    broker = _upstream_broker(up)
    session = _session()
    before = await broker.issue(_call("get_weather", {"city": "Oslo"}, up.url), session, inbound_token=None)
    assert (await up.call(before, "get_weather", {"city": "Oslo"}))[0] == 200
    old_kid = up.keys.kid
    in_flight = await broker.issue(_call("get_weather", {"city": "Rome"}, up.url), session, inbound_token=None)
    new_kid = up.keys.rotate(ed25519.Ed25519PrivateKey.generate())
    after = await broker.issue(_call("get_weather", {"city": "Lima"}, up.url), session, inbound_token=None)
    assert jwt.get_unverified_header(after.headers["Authorization"][7:])["kid"] == new_kid != old_kid
    assert (await up.call(after, "get_weather", {"city": "Lima"}))[0] == 200  # unknown kid: JWKS re-fetched
    assert (await up.call(in_flight, "get_weather", {"city": "Rome"}))[0] == 200  # the old key is still published
    assert up.verifier.jwks_fetches == 2
    assert up.ledger.names() == ["get_weather"] * 3


# --------------------------------------------------------------------------- minted claims and scope


def test_scope_rule_keeps_the_grant_only_for_tools_inside_the_ceiling() -> None:
    session = _session(scope=("get_*", "list_*"))
    assert narrow_scope(["notes:read", "notes:read", "notes:list"], session, "get_note") == ("notes:read", "notes:list")
    assert narrow_scope(["notes:read"], session, "delete_note") == ()
    assert narrow_scope(["notes:read"], session, None) == ("notes:read",)  # housekeeping keeps the upstream grant
    assert narrow_scope([], session, "get_note") == ()


async def test_minted_scope_is_the_tool_grant_within_the_session_ceiling() -> None:
    policy = _policy(
        f"""
upstreams:
  - url: "{NOTES}/"
    credentials: {{mode: minted, ttl_seconds: 30, scope: ["notes:read", "notes:write"]}}
tools:
  export_notes:
    credentials: {{scope: ["notes:export"], ttl_seconds: 5}}
  "list_*":
    credentials: {{scope: []}}
"""
    )
    broker = _broker(policy)
    wide = _session(scope=("*",))
    narrow = _session(scope=("get_*", "list_*"))
    assert _claims(await broker.issue(_call("get_note"), wide, inbound_token=None))["scope"] == "notes:read notes:write"
    exported = _claims(await broker.issue(_call("export_notes"), wide, inbound_token=None))
    assert exported["scope"] == "notes:export"
    assert exported["exp"] - exported["iat"] == 5
    # The ceiling excludes export_notes: the credential carries no scope at all.
    assert _claims(await broker.issue(_call("export_notes"), narrow, inbound_token=None))["scope"] == ""
    # An empty grant still mints, with an empty scope.
    listed = _claims(await broker.issue(_call("list_notes"), narrow, inbound_token=None))
    assert listed["scope"] == "" and listed["exp"] - listed["iat"] == 30
    assert listed["aud"] == NOTES  # canonical: no trailing slash


async def test_minted_defaults_and_session_expiry_cap() -> None:
    broker = _broker()
    claims = _claims(
        await broker.issue(_call("get_note", upstream="HTTP://Notes.Example:80/mcp/"), _session(), inbound_token=None)
    )
    assert claims["aud"] == "http://notes.example/mcp"
    assert claims["exp"] - claims["iat"] == 60 and claims["scope"] == ""
    short = _session(ttl=10)
    capped = _claims(await broker.issue(_call("get_note"), short, inbound_token=None))
    assert capped["exp"] <= short.expires_at
    with pytest.raises(CredentialError, match="session has expired"):
        await broker.issue(_call("get_note"), _session(ttl=-5), inbound_token=None)


async def test_a_remembered_mint_plan_signs_the_bytes_the_documented_rules_give(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # aud, scope and lifetime are worked out once per (upstream, tool, session ceiling); a call served from that
    # plan must carry, byte for byte, the token PyJWT makes of the claims the rules give, in their order.
    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    keys = KeyRing(key)
    clock = [1_900_000_000.5]
    grant = ["notes:read", "notes:read", "notes:write"]
    policy = _policy(
        f'upstreams:\n  - url: "{NOTES}"\n    credentials: {{ttl_seconds: 30, scope: {json.dumps(grant)}}}\n'
    )
    broker = _broker(policy, keys=keys, clock=lambda: clock[0])
    monkeypatch.setattr(broker_module, "os", SimpleNamespace(urandom=lambda n: bytes(range(256 - n, 256))))
    jti = base64.urlsafe_b64encode(bytes(range(240, 256))).rstrip(b"=").decode()  # secrets.token_urlsafe(16)'s form
    upstream = "HTTP://127.0.0.1:3001/mcp/"  # the audience is its canonical form
    base = Session(
        session_id="ses_p", agent_id="billing-bot", scope=("get_*",), mode="read-write", created_at=0, expires_at=0
    )
    for lifetime in (3600, 20.9):  # the second caps the credential at the session's end
        session = dataclasses.replace(base, expires_at=clock[0] + lifetime)
        for tool in ("get_note", "delete_note", None):  # inside the ceiling, outside it, housekeeping
            action = _call(tool, {"id": 7}, upstream=upstream) if tool is not None else None
            tokens = []
            for _ in range(2):  # the first works the plan out, the second is served from it
                if action is None:
                    issued = await broker.issue_for_request(
                        session, upstream=upstream, method="tools/list", inbound_token=None
                    )
                else:
                    issued = await broker.issue(action, session, inbound_token=None)
                tokens.append(issued.headers["Authorization"].removeprefix("Bearer "))
            assert tokens[0] == tokens[1]
            now = int(clock[0])
            expected: dict[str, Any] = {
                "iss": "https://wicket.test",
                "sub": "billing-bot",
                "aud": NOTES,
                "scope": " ".join(narrow_scope(grant, session, tool)),
                "method": "tools/call" if tool is not None else "tools/list",
                "args_sha256": arguments_sha256({"id": 7} if tool is not None else {}),
                "sid": "ses_p",
                "jti": jti,
                "iat": now,
                "nbf": now,
                "exp": min(now + 30, int(session.expires_at)),
            }
            if tool is not None:
                expected["tool"] = tool
                expected["delegation"] = _claims(issued)["delegation"]
            assert tokens[0] == jwt.encode(expected, key, algorithm="EdDSA", headers={"kid": keys.kid, "typ": "JWT"})
    assert len(broker._plans) == 3  # one per tool and housekeeping: the session's expiry is no part of a plan
    # A reload works plans out afresh, and the plans kept are bounded (the oldest is forgotten).
    session = dataclasses.replace(base, expires_at=clock[0] + 99)
    broker.use_policy(_policy(f'upstreams:\n  - url: "{NOTES}"\n    credentials: {{scope: ["notes:all"]}}\n'))
    assert _claims(await broker.issue(_call("get_note", upstream=upstream), session, inbound_token=None))["scope"] == (
        "notes:all"
    )
    monkeypatch.setattr(broker_module, "_PLAN_CACHE_MAX", 2)
    for tool in ("get_a", "get_b", "get_c"):
        await broker.issue(_call(tool), session, inbound_token=None)
    assert [key[1] for key in broker._plans] == ["get_b", "get_c"]


def test_b64url_is_unpadded_urlsafe_base64() -> None:
    # keys.b64url stands for base64.urlsafe_b64encode(...).rstrip(b"=") and, over os.urandom, secrets.token_urlsafe.
    for data in [bytes(range(256)), b"\xfb\xff\xfe", *(os.urandom(n) for n in range(70))]:
        assert b64url(data) == base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


async def test_a_first_hop_link_is_reused_briefly_and_never_outlives_its_credential(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [float(int(time.time()))]
    keys = KeyRing.generate()
    broker = _broker(keys=keys, clock=lambda: clock[0])

    def session(sid: str = "ses_test") -> Session:
        return Session(
            session_id=sid,
            agent_id="billing-bot",
            scope=("*",),
            mode="read-write",
            created_at=0,
            expires_at=clock[0] + 3600,
        )

    async def mint(sid: str = "ses_test", action: Action | None = None) -> tuple[dict[str, Any], str]:
        claims = _claims(await broker.issue(action or _call("get_note"), session(sid), inbound_token=None))
        return claims, claims["delegation"][-1]

    def link_exp(raw: str) -> int:
        return int(jwt.decode(raw, options={"verify_signature": False})["exp"])

    first, link = await mint()
    assert first["exp"] == link_exp(link) == first["iat"] + 60
    clock[0] += 6  # a tenth of the 60 s lifetime: the same link, the credential expires with it
    second, again = await mint()
    assert again == link and second["jti"] != first["jti"]
    assert second["exp"] == link_exp(link) == second["iat"] + 54
    clock[0] += 1  # reusing it now would cost more than a tenth: a new link, a full lifetime
    third, fresh = await mint()
    assert fresh != link and third["exp"] == link_exp(fresh) == third["iat"] + 60
    # Never shared across sessions or across a key rotation.
    assert (await mint("ses_other"))[1] != fresh
    keys.rotate(ed25519.Ed25519PrivateKey.generate())
    assert (await mint())[1] != fresh
    # A call that extends a caller's chain always signs its own link.
    upstream_link = sign_link(
        keys.sign,
        issuer="https://a.test",
        sub="planner",
        aud="billing-bot",
        scope=["*"],
        exp=int(clock[0]) + 300,
        previous=None,
        now=int(clock[0]),
    )
    chain = Delegation(
        "planner", ("planner", "billing-bot"), (upstream_link.jti,), ("*",), upstream_link.exp, (upstream_link.raw,)
    )
    delegated = dataclasses.replace(_call("get_note"), delegation=chain)
    assert (await mint(action=delegated))[1] != (await mint(action=delegated))[1]
    # Bounded: expired links are forgotten, and the oldest beyond the bound.
    monkeypatch.setattr(broker_module, "_LINK_CACHE_MAX", 2)
    for sid in ("ses_1", "ses_2", "ses_3"):
        await mint(sid)
    assert list(broker._links) == ["ses_2", "ses_3"]
    clock[0] += 61
    await mint("ses_4")
    assert list(broker._links) == ["ses_4"]


def test_arguments_digest_is_canonical_json() -> None:
    expected = hashlib.sha256('{"a":[1,2],"b":"é","c":{"x":null}}'.encode()).hexdigest()
    assert arguments_sha256({"c": {"x": None}, "b": "é", "a": [1, 2]}) == expected
    assert arguments_sha256({}) == hashlib.sha256(b"{}").hexdigest()
    # A faster encoder is taken where it writes the same bytes; whatever the values, the digest is the
    # documented one, which upstreams recompute.
    from datetime import UTC, datetime

    for value in (1e-5, 0.1, 2**70, float("nan"), "\u2028 😀 \x00", datetime(2026, 1, 1, tzinfo=UTC), (1, "2")):
        arguments = {"v": value, "nested": {"list": [value, {"z": value}]}, "é": 1}
        documented = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        assert arguments_sha256(arguments) == hashlib.sha256(documented.encode()).hexdigest(), value


async def test_an_action_digests_its_arguments_once_and_the_credential_binds_to_that_digest() -> None:
    action = _call("get_note", {"id": 7, "tags": ["a"]})
    assert action.arguments_sha256 == arguments_sha256(action.arguments)
    credential = await _broker().issue(action, _session(), inbound_token=None)
    assert _claims(credential)["args_sha256"] == action.arguments_sha256
    other = dataclasses.replace(action, arguments={"id": 8})  # a new Action digests its own arguments
    assert other.arguments_sha256 == arguments_sha256({"id": 8}) != action.arguments_sha256
    assert other == dataclasses.replace(action, arguments={"id": 8})  # the cached digest is not compared
    assert "sha256" not in repr(action)


async def test_minted_credential_never_carries_the_agents_token() -> None:
    agent_token = "wkt_agent-secret-token"
    credential = await _broker().issue(_call("get_note"), _session(), inbound_token=agent_token)
    assert credential.mode == "minted"
    assert all(agent_token not in value for value in credential.headers.values())
    assert credential.fingerprint == fingerprint(credential.headers["Authorization"][7:])
    assert credential.fingerprint not in credential.headers["Authorization"]
    assert "Bearer" not in repr(credential)
    assert credential.audit() == {
        "credential_mode": "minted",
        "credential_id": credential.credential_id,
        "credential_fingerprint": credential.fingerprint,
    }


# --------------------------------------------------------------------------- keys, JWKS, rotation


def test_kid_is_the_rfc7638_thumbprint() -> None:
    # RFC 8037 appendix A.3: the thumbprint of the RFC 8037 A.2 Ed25519 public key.
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert jwk_thumbprint(jwk) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    keys = KeyRing(ed25519.Ed25519PrivateKey.from_private_bytes(seed))
    assert keys.kid == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_jwks_publishes_only_public_keys_with_kid_alg_use() -> None:
    keys = KeyRing.generate()
    (published,) = keys.jwks()["keys"]
    assert published.keys() == {"kty", "crv", "x", "kid", "alg", "use"}
    assert (published["kty"], published["crv"], published["alg"], published["use"]) == (
        "OKP",
        "Ed25519",
        "EdDSA",
        "sig",
    )
    assert published["kid"] == keys.kid == jwk_thumbprint(published)
    token = keys.sign({"sub": "a"})
    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "kid": keys.kid, "typ": "JWT"}
    assert jwt.decode(token, jwt.PyJWK(published).key, algorithms=["EdDSA"]) == {"sub": "a"}


def test_signing_is_byte_for_byte_what_pyjwt_makes_and_verifies_after_rotation() -> None:
    # The per-call signer skips PyJWT; an Ed25519 signature is deterministic, so the tokens must be equal.
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    keys = KeyRing(key)
    claims = {"sub": "agent é", "scope": "a\nb \u2028", "iat": 1, "exp": 9_999_999_999, "n": 1.5, "z": None}
    expected = jwt.encode(dict(claims), key, algorithm="EdDSA", headers={"kid": keys.kid, "typ": "JWT"})
    assert keys.sign(claims) == expected
    # ES256 signatures are randomised: same header and payload, a raw R || S signature PyJWT verifies.
    ec_key = ec.generate_private_key(ec.SECP256R1())
    keys.rotate(ec_key)
    token = keys.sign(claims)
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": keys.kid, "typ": "JWT"}
    assert jwt.decode(token, ec_key.public_key(), algorithms=["ES256"]) == claims
    assert len(token.split(".")[2]) == 86  # 64 bytes, base64url without padding


def test_signed_claims_are_pyjwts_bytes_whatever_the_values() -> None:
    # The payload takes orjson where it writes json.dumps' bytes; anything else must fall back unchanged.
    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    keys = KeyRing(key)
    values = [0, -1, 2**63 - 1, 2**70, 1.5, 1e-5, 1e300, float("nan"), True, None, ""]
    values += ['a"b\\c/\x00\x1f\x7f', "é", "\u2028", "\U0001f600"]
    values += [[1, "x", None], {"sub": "agent-b", "act": {"sub": "agent-a"}}, ("t", 1)]
    for value in values:
        claims = {"z": 1, "iss": "https://w.test", "v": value, "delegation": ["l1.l2.l3"], "a": {"n": value}}
        expected = jwt.encode(dict(claims), key, algorithm="EdDSA", headers={"kid": keys.kid, "typ": "JWT"})
        assert keys.sign(claims) == expected, value


def _pem(key: Any) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def test_es256_key_from_the_environment() -> None:
    keys = KeyRing.from_env({"WICKET_SIGNING_KEY": _pem(ec.generate_private_key(ec.SECP256R1()))})
    (published,) = keys.jwks()["keys"]
    assert (published["kty"], published["crv"], published["alg"]) == ("EC", "P-256", "ES256")
    assert published["kid"] == jwk_thumbprint(published) and not keys.ephemeral
    token = keys.sign({"sub": "a"})
    assert jwt.decode(token, jwt.PyJWK(published).key, algorithms=["ES256"]) == {"sub": "a"}


def test_signing_key_from_a_file_and_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "signing.pem"
    key = ed25519.Ed25519PrivateKey.generate()
    path.write_text(_pem(key))
    assert KeyRing.from_env({"WICKET_SIGNING_KEY": str(path)}).kid == KeyRing(key).kid
    with pytest.raises(SigningKeyError, match=r"cannot read key file .*missing\.pem"):
        KeyRing.from_env({"WICKET_SIGNING_KEY": str(tmp_path / "missing.pem")})
    garbage = "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"
    with pytest.raises(SigningKeyError) as info:
        KeyRing.from_env({"WICKET_SIGNING_KEY": garbage})
    assert "bm90IGEga2V5" not in str(info.value) and "not a PEM key" in str(info.value)
    rsa_key = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with pytest.raises(SigningKeyError, match="Ed25519 or EC P-256"):
        KeyRing.from_env({"WICKET_SIGNING_KEY": rsa_key})


def test_embedded_default_is_an_ephemeral_key_and_logs_no_material(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="proxy.credentials.keys"):
        keys = KeyRing.from_env({})
    assert keys.ephemeral and keys.alg == "EdDSA"
    assert "ephemeral" in caplog.text and keys.kid in caplog.text
    assert "PRIVATE" not in caplog.text and keys.jwks()["keys"][0]["x"] not in caplog.text


def test_rotation_keeps_the_old_key_until_its_last_credential_expired() -> None:
    now = [1_000_000.0]
    keys = KeyRing.generate(max_ttl=60, clock=lambda: now[0])
    old = keys.kid
    new = keys.rotate(ed25519.Ed25519PrivateKey.generate())
    assert jwt.get_unverified_header(keys.sign({}))["kid"] == new
    assert [k["kid"] for k in keys.jwks()["keys"]] == [new, old]
    now[0] += 59
    assert [k["kid"] for k in keys.jwks()["keys"]] == [new, old]
    now[0] += 1
    assert [k["kid"] for k in keys.jwks()["keys"]] == [new]
    assert keys.rotate(ec.generate_private_key(ec.SECP256R1())) != new and keys.alg == "ES256"


def test_previous_key_from_the_environment_stays_published() -> None:
    now = [0.0]
    previous = ed25519.Ed25519PrivateKey.generate()
    env = {
        "WICKET_SIGNING_KEY": _pem(ec.generate_private_key(ec.SECP256R1())),
        "WICKET_SIGNING_KEY_PREVIOUS": _pem(previous),
    }
    keys = KeyRing.from_env(env, max_ttl=60, clock=lambda: now[0])
    assert [k["kid"] for k in keys.jwks()["keys"]] == [keys.kid, KeyRing(previous).kid]
    now[0] = 61
    assert [k["kid"] for k in keys.jwks()["keys"]] == [keys.kid]


async def test_jwks_handler_serves_the_current_set() -> None:
    keys = KeyRing.generate()
    app = web.Application()
    app.router.add_get(JWKS_PATH, jwks_handler(keys))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{JWKS_PATH}") as response:
            assert response.status == 200
            assert "max-age" in response.headers["Cache-Control"]
            assert await response.json() == keys.jwks()
    finally:
        await runner.cleanup()


# --------------------------------------------------------------------------- minted with HS256

HS256_SECRET = "hs256-notes-" + "7f3a" * 8  # 44 bytes
OTHER_SECRET = "hs256-other-" + "c0de" * 8


def _hs256_policy(source: str = "value_env: NOTES_HS256", url: str = NOTES) -> Policy:
    return _policy(
        f'upstreams:\n  - url: "{url}"\n    credentials: {{alg: HS256, {source}, scope: ["weather:read"]}}\n'
    )


async def test_an_upstream_sharing_a_secret_verifies_hs256_credentials_through_wicket(
    verified_upstream: VerifiedUpstream, make_wicket: WicketFactory, tmp_path: Path
) -> None:
    """The real SDK client through Wicket to an upstream that verifies HS256 with its secret:
    every forward (listing the tools, the call) carries a credential signed with that secret and
    bound to the call; a Wicket holding another secret gets nothing run; the secret is in no
    audit record."""
    up = verified_upstream
    up.verifier.hs256_secret = HS256_SECRET.encode()
    layer = tmp_path / "hs256.yaml"
    layer.write_text(
        f'version: 1\nupstreams:\n  - url: "{up.url}"\n'
        "    credentials: {alg: HS256, value_env: NOTES_HS256, scope: [weather:read]}\n"
    )
    policy = load_policy([DEMO_POLICY, layer])
    running = await make_wicket(up.url, policy, environ={"NOTES_HS256": HS256_SECRET}, credential_issuer=up.issuer)
    async with mcp_client(running.url) as client:
        result = await client.call_tool("get_weather", {"city": "Oslo"})
    assert not result.is_error and up.ledger.calls == [("get_weather", {"city": "Oslo"})]
    assert up.verifier.refusals == []
    call = next(c for c in up.verifier.accepted if c["method"] == "tools/call")
    assert call["tool"] == "get_weather" and call["aud"] == normalise_url(up.url) and call["scope"] == "weather:read"
    assert call["args_sha256"] == arguments_sha256({"city": "Oslo"})
    tokens = [h["authorization"].removeprefix("Bearer ") for h in up.verifier.request_headers]
    assert tokens and all(jwt.get_unverified_header(t) == {"alg": "HS256", "typ": "JWT"} for t in tokens)
    (outcome,) = [
        e for e in running.audit_events() if e.get("action") == "tools/call:get_weather" and e["event"] == "outcome"
    ]
    assert outcome["credential_mode"] == "minted" and outcome["credential_id"] == call["jti"]
    assert HS256_SECRET not in running.audit_path.read_text()

    wrong = await make_wicket(up.url, policy, environ={"NOTES_HS256": OTHER_SECRET}, credential_issuer=up.issuer)
    async with mcp_client(wrong.url, mode="2026-07-28") as client:  # stateless: the call is the first request
        with pytest.raises(MCPError, match="HTTP 401"):  # (Wicket lists the upstream's tools first: refused there)
            await client.call_tool("get_weather", {"city": "Bergen"})
    assert up.ledger.calls == [("get_weather", {"city": "Oslo"})], "nothing ran with a credential of another secret"
    assert any(r.startswith("invalid credential") for r in up.verifier.refusals)


async def test_an_hs256_upstream_refuses_what_wicket_signs_with_its_key(verified_upstream: VerifiedUpstream) -> None:
    up = verified_upstream
    up.verifier.hs256_secret = HS256_SECRET.encode()
    credential = await _upstream_broker(up).issue(
        _call("get_weather", {"city": "Oslo"}, up.url), _session(), inbound_token=None
    )
    status, _ = await up.call(credential, "get_weather", {"city": "Oslo"})
    assert status == 401 and up.verifier.refusals == ["unexpected algorithm"] and up.ledger.calls == []


async def test_an_hs256_token_is_pyjwts_bytes_and_only_its_secret_verifies_it() -> None:
    broker = _broker(_hs256_policy(), env={"NOTES_HS256": HS256_SECRET})
    credential = await broker.issue(_call("get_note", {"id": "n1"}), _session(), inbound_token=None)
    token = credential.headers["Authorization"].removeprefix("Bearer ")
    claims = jwt.decode(token, HS256_SECRET, algorithms=["HS256"], audience=normalise_url(NOTES))
    assert token == jwt.encode(claims, HS256_SECRET, algorithm="HS256")
    assert claims["tool"] == "get_note" and claims["args_sha256"] == arguments_sha256({"id": "n1"})
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, OTHER_SECRET, algorithms=["HS256"], audience=normalise_url(NOTES))
    assert credential.fingerprint == fingerprint(token)
    assert HS256_SECRET not in repr(credential) and HS256_SECRET not in json.dumps(credential.audit())


async def test_an_hs256_secret_from_a_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "notes-hs256"
    path.write_text(HS256_SECRET + "\n")
    now = [time.time()]
    broker = _broker(_hs256_policy(f'value_file: "{path}"'), clock=lambda: now[0])

    def token(credential: IssuedCredential) -> str:
        return credential.headers["Authorization"].removeprefix("Bearer ")

    first = token(await broker.issue(_call("x"), _session(), inbound_token=None))
    jwt.decode(first, HS256_SECRET, algorithms=["HS256"], audience=normalise_url(NOTES), leeway=10)
    path.write_text(OTHER_SECRET + "\n")
    now[0] += 2
    second = token(await broker.issue(_call("x"), _session(), inbound_token=None))
    jwt.decode(second, OTHER_SECRET, algorithms=["HS256"], audience=normalise_url(NOTES), leeway=10)
    path.write_text("too-short\n")  # a bad new secret keeps the last good one
    now[0] += 2
    third = token(await broker.issue(_call("x"), _session(), inbound_token=None))
    jwt.decode(third, OTHER_SECRET, algorithms=["HS256"], audience=normalise_url(NOTES), leeway=10)


def test_hs256_secrets_are_checked_at_start() -> None:
    with pytest.raises(CredentialConfigError, match="NOTES_HS256 is not set or empty"):
        _broker(_hs256_policy(), env={})
    with pytest.raises(CredentialConfigError, match="fewer than 32 bytes"):
        _broker(_hs256_policy(), env={"NOTES_HS256": "short-secret"})
    other = "http://127.0.0.1:3002/mcp"
    shared = _policy(
        f'upstreams:\n  - url: "{NOTES}"\n    credentials: {{alg: HS256, value_env: K}}\n'
        f'  - url: "{other}"\n    credentials: {{alg: HS256, value_env: K}}\n'
    )
    with pytest.raises(CredentialConfigError, match="have the same secret"):
        _broker(shared, env={"K": HS256_SECRET})
    copied = _policy(
        f'upstreams:\n  - url: "{NOTES}"\n    credentials: {{alg: HS256, value_env: K1}}\n'
        f'  - url: "{other}"\n    credentials: {{alg: HS256, value_env: K2}}\n'
    )
    with pytest.raises(CredentialConfigError, match="have the same secret"):
        _broker(copied, env={"K1": HS256_SECRET, "K2": HS256_SECRET})
    _broker(copied, env={"K1": HS256_SECRET, "K2": OTHER_SECRET})  # one secret each: fine
    handed_out = _policy(
        f'upstreams:\n  - url: "{NOTES}"\n    credentials: {{alg: HS256, value_env: K1}}\n'
        f'  - url: "{other}"\n    credentials: {{mode: static, value_env: K2}}\n'
    )
    with pytest.raises(CredentialConfigError, match="is also sent upstream"):
        _broker(handed_out, env={"K1": HS256_SECRET, "K2": HS256_SECRET})
    # A tool block's HS256 reaches every upstream without credentials of its own: refused.
    everywhere = _policy("tools:\n  get_note:\n    credentials: {alg: HS256, value_env: K}\n")
    with pytest.raises(CredentialConfigError, match="must belong to one upstream"):
        _broker(everywhere, env={"K": HS256_SECRET})


@pytest.mark.parametrize(
    ("credentials", "problem"),
    [
        ("{alg: HS256}", "alg 'HS256' needs exactly one of value_env or value_file"),
        ("{alg: HS256, value_env: A, value_file: /b}", "(both are given)"),
        ("{value_env: A}", "value_env applies to mode 'minted' only with alg 'HS256'"),
        ("{alg: RS256}", "alg"),
    ],
)
def test_hs256_policy_mistakes_are_named(credentials: str, problem: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(problem)):
        _policy(f'upstreams:\n  - url: "{NOTES}"\n    credentials: {credentials}\n')


# --------------------------------------------------------------------------- static


def _static_policy(source: str, header: str | None = None) -> Policy:
    extra = f", header: {header}" if header else ""
    return _policy(f'upstreams:\n  - url: "{NOTES}"\n    credentials: {{mode: static, {source}{extra}}}\n')


async def test_static_secret_from_the_environment() -> None:
    broker = _broker(_static_policy("value_env: NOTES_API_KEY", "X-Api-Key"), env={"NOTES_API_KEY": "s3cret-value"})
    credential = await broker.issue(_call("get_note"), _session(), inbound_token="wkt_agent")
    assert credential.mode == "static"
    assert credential.headers == {"X-Api-Key": "s3cret-value"}
    assert credential.credential_id == "static:X-Api-Key"
    assert credential.fingerprint == hashlib.sha256(b"s3cret-value").hexdigest()[:16] != "s3cret-value"
    assert "s3cret" not in repr(credential) and "s3cret" not in json.dumps(credential.audit())


async def test_static_secret_in_authorization_gets_a_scheme() -> None:
    bare = _broker(_static_policy("value_env: K"), env={"K": "abc123"})
    assert (await bare.issue(_call("x"), _session(), inbound_token=None)).headers == {"Authorization": "Bearer abc123"}
    schemed = _broker(_static_policy("value_env: K"), env={"K": "Basic dXNlcjpwdw=="})
    assert (await schemed.issue(_call("x"), _session(), inbound_token=None)).headers == {
        "Authorization": "Basic dXNlcjpwdw=="
    }


async def test_static_secret_from_a_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "notes-secret"
    path.write_text("first-secret\n")
    now = [100.0]
    broker = _broker(_static_policy(f'value_file: "{path}"', "X-Api-Key"), clock=lambda: now[0])
    assert (await broker.issue(_call("x"), _session(), inbound_token=None)).headers == {"X-Api-Key": "first-secret"}
    path.write_text("second-secret-longer\n")
    now[0] += 2
    credential = await broker.issue(_call("x"), _session(), inbound_token=None)
    assert credential.headers == {"X-Api-Key": "second-secret-longer"}
    assert credential.fingerprint == fingerprint("second-secret-longer")
    path.unlink()  # a vanished file keeps the last good secret
    now[0] += 2
    assert (await broker.issue(_call("x"), _session(), inbound_token=None)).headers == {
        "X-Api-Key": "second-secret-longer"
    }


def test_missing_static_secret_fails_at_start_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(CredentialConfigError, match="environment variable NOTES_API_KEY is not set or empty"):
        _broker(_static_policy("value_env: NOTES_API_KEY"), env={})
    missing = tmp_path / "nope"
    with pytest.raises(CredentialConfigError, match=f"cannot read file {missing}: No such file"):
        _broker(_static_policy(f'value_file: "{missing}"'))
    with pytest.raises(CredentialConfigError, match="line break"):
        _broker(_static_policy("value_env: K"), env={"K": "a\nInjected: yes"})


async def test_no_credential_secret_may_be_one_of_wickets_own(make_wicket: WicketFactory) -> None:
    """A static secret, an HS256 secret or an exchange client secret equal to Wicket's operator
    token or session key would send Wicket itself upstream: start-up refuses, whatever the name."""
    own = {"WICKET_ADMIN_TOKEN": ADMIN_TOKEN, "WICKET_SESSION_KEY": SESSION_KEY}
    with pytest.raises(CredentialConfigError, match="is Wicket's own WICKET_ADMIN_TOKEN"):
        _broker(_static_policy("value_env: NOTES_KEY"), env={"NOTES_KEY": ADMIN_TOKEN}, own_secrets=own)
    with pytest.raises(CredentialConfigError, match=r"HS256 secret .* is Wicket's own WICKET_SESSION_KEY"):
        _broker(_hs256_policy(), env={"NOTES_HS256": SESSION_KEY.decode()}, own_secrets=own)
    _broker(_static_policy("value_env: NOTES_KEY"), env={"NOTES_KEY": "notes-key-0123"}, own_secrets=own)
    with pytest.raises(SystemExit, match="is Wicket's own WICKET_ADMIN_TOKEN"):
        await make_wicket(
            NOTES, _static_policy("value_env: WICKET_ADMIN_TOKEN"), environ={"WICKET_ADMIN_TOKEN": ADMIN_TOKEN}
        )


# --------------------------------------------------------------------------- passthrough


async def test_passthrough_is_marked_and_warned_about() -> None:
    policy = _policy(
        f'upstreams:\n  - url: "{NOTES}"\ntools:\n  legacy_tool:\n    credentials: {{mode: passthrough}}\n'
    )
    broker = _broker(policy)
    agent_jwt = jwt.encode({"sub": "agent", "jti": "agent-jti-1"}, "k" * 32, algorithm="HS256")
    credential = await broker.issue(_call("legacy_tool"), _session(), inbound_token=f"Bearer {agent_jwt}")
    assert credential.mode == "passthrough"
    assert credential.headers == {"Authorization": f"Bearer {agent_jwt}"}
    assert (credential.credential_id, credential.fingerprint) == ("agent-jti-1", fingerprint(agent_jwt))
    opaque = await broker.issue(_call("legacy_tool"), _session(), inbound_token="opaque-token")
    assert opaque.credential_id == f"sha256:{fingerprint('opaque-token')}"
    assert (await broker.issue(_call("legacy_tool"), _session(), inbound_token=None)).headers == {}
    with pytest.raises(CredentialError, match="Wicket runtime token"):
        await broker.issue(_call("legacy_tool"), _session(), inbound_token="wkt_runtime")
    # Other tools stay minted; the agent's token goes nowhere else.
    assert (await broker.issue(_call("get_note"), _session(), inbound_token=agent_jwt)).mode == "minted"
    (warning,) = passthrough_warnings(policy)
    assert "'legacy_tool'" in warning and "passthrough" in warning
    assert passthrough_warnings(Policy()) == []


# --------------------------------------------------------------------------- exchange


def _exchange_policy(issuer: OidcIssuer, *, extra: str = "") -> Policy:
    return _policy(
        f"""
upstreams:
  - url: "{NOTES}"
    credentials:
      mode: exchange
      token_endpoint: "{issuer.token_endpoint}"
      client_id: {issuer.client_id}
      client_secret_env: WICKET_EXCHANGE_SECRET
      scope: ["notes:read", "notes:write"]{extra}
tools:
  export_notes:
    credentials: {{scope: ["notes:export"], audience: "https://export.example"}}
"""
    )


@pytest.fixture
async def exchanger() -> AsyncIterator[Callable[..., TokenExchanger]]:
    made: list[TokenExchanger] = []

    def make(**kwargs: Any) -> TokenExchanger:
        made.append(TokenExchanger(**kwargs))
        return made[-1]

    yield make
    for item in made:
        await item.close()


ExchangerFactory = Callable[..., TokenExchanger]


async def test_exchange_end_to_end_with_the_local_issuer(oidc_issuer: OidcIssuer, exchanger: ExchangerFactory) -> None:
    now = [time.time()]
    xchg = exchanger(clock=lambda: now[0])
    env = {"WICKET_EXCHANGE_SECRET": oidc_issuer.client_secret}
    broker = _broker(_exchange_policy(oidc_issuer), env=env, exchange=xchg)
    agent = oidc_issuer.mint(sub="billing-agent", scope="notes:read notes:write notes:export openid")
    session = _session(scope=("get_*", "export_*"))

    credential = await broker.issue(_call("get_note", {"id": 1}), session, inbound_token=agent)
    assert credential.mode == "exchange"
    token = credential.headers["Authorization"].removeprefix("Bearer ")
    assert token != agent
    claims = oidc_issuer.decode(token, audience=NOTES)
    assert (claims["sub"], claims["scope"], claims["act"]) == (
        "billing-agent",
        "notes:read notes:write",
        {"sub": "wicket-sidecar"},
    )
    assert credential.credential_id == claims["jti"] and credential.fingerprint == fingerprint(token)
    (sent,) = oidc_issuer.exchanges
    assert sent.client_id == oidc_issuer.client_id and sent.status == 200
    assert sent.form["grant_type"] == TOKEN_EXCHANGE and sent.form["subject_token_type"] == JWT_TOKEN_TYPE
    assert (sent.form["subject_token"], sent.form["audience"], sent.form["scope"]) == (
        agent,
        NOTES,
        "notes:read notes:write",
    )

    # Cached per (subject, audience, scope) until 30 s before expires_in (300 s here).
    again = await broker.issue(_call("get_note", {"id": 2}), session, inbound_token=f"Bearer {agent}")
    assert again.headers == credential.headers and len(oidc_issuer.exchanges) == 1
    exported = await broker.issue(_call("export_notes"), session, inbound_token=agent)
    export_claims = oidc_issuer.decode(exported.headers["Authorization"][7:], audience="https://export.example")
    assert export_claims["scope"] == "notes:export" and len(oidc_issuer.exchanges) == 2
    now[0] += 300 - 30
    await broker.issue(_call("get_note", {"id": 3}), session, inbound_token=agent)
    assert len(oidc_issuer.exchanges) == 3

    # The ceiling excludes delete_notes: nothing is requested at all.
    with pytest.raises(CredentialError, match="scope ceiling excludes 'delete_notes'"):
        await broker.issue(_call("delete_notes"), session, inbound_token=agent)
    assert len(oidc_issuer.exchanges) == 3


async def test_concurrent_exchanges_share_one_request(oidc_issuer: OidcIssuer, exchanger: ExchangerFactory) -> None:
    xchg = exchanger()
    broker = _broker(
        _exchange_policy(oidc_issuer), env={"WICKET_EXCHANGE_SECRET": oidc_issuer.client_secret}, exchange=xchg
    )
    agent = oidc_issuer.mint(scope="notes:read notes:write")
    results = await asyncio.gather(
        *(broker.issue(_call("get_note"), _session(), inbound_token=agent) for _ in range(5))
    )
    assert len({r.headers["Authorization"] for r in results}) == 1
    assert len(oidc_issuer.exchanges) == 1 and xchg.requests == 1


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        ("bad_secret", "HTTP 401: invalid_client"),
        ("fail", "HTTP 503: temporarily_unavailable"),
        ("wide_scope", "HTTP 400: invalid_scope"),
        ("unreachable", "failed: Client"),
    ],
)
async def test_exchange_failures_fail_the_call_closed(
    oidc_issuer: OidcIssuer, exchanger: ExchangerFactory, setup: str, match: str
) -> None:
    secret = "wrong" if setup == "bad_secret" else oidc_issuer.client_secret
    policy = _exchange_policy(oidc_issuer)
    if setup == "unreachable":
        dead = f"http://127.0.0.1:{free_port()}/token"
        policy = _policy(
            f'upstreams:\n  - url: "{NOTES}"\n    credentials: {{mode: exchange, token_endpoint: "{dead}", '
            "client_id: c, client_secret_env: WICKET_EXCHANGE_SECRET}\n"
        )
    if setup == "fail":
        oidc_issuer.fail_exchange = (503, "temporarily_unavailable")
    agent = oidc_issuer.mint(scope="notes:read" if setup == "wide_scope" else "notes:read notes:write")
    broker = _broker(policy, env={"WICKET_EXCHANGE_SECRET": secret}, exchange=exchanger())
    with pytest.raises(CredentialError, match=match) as info:
        await broker.issue(_call("get_note"), _session(), inbound_token=agent)
    assert agent not in info.value.reason and secret not in info.value.reason


async def test_exchange_needs_the_agents_inbound_jwt(oidc_issuer: OidcIssuer, exchanger: ExchangerFactory) -> None:
    broker = _broker(
        _exchange_policy(oidc_issuer), env={"WICKET_EXCHANGE_SECRET": oidc_issuer.client_secret}, exchange=exchanger()
    )
    with pytest.raises(CredentialError, match="presented no token"):
        await broker.issue(_call("get_note"), _session(), inbound_token=None)
    with pytest.raises(CredentialError, match="Wicket runtime token"):
        await broker.issue(_call("get_note"), _session(), inbound_token="wkt_abc.def.ghi")
    with pytest.raises(CredentialError, match="cannot be exchanged"):
        await broker.issue(_call("get_note"), _session(), inbound_token="opaque")
    assert oidc_issuer.exchanges == []


async def test_exchange_with_the_access_token_subject_type(
    oidc_issuer: OidcIssuer, exchanger: ExchangerFactory
) -> None:
    policy = _exchange_policy(oidc_issuer, extra="\n      subject_token_type: access_token")
    broker = _broker(policy, env={"WICKET_EXCHANGE_SECRET": oidc_issuer.client_secret}, exchange=exchanger())
    await broker.issue(_call("get_note"), _session(), inbound_token=oidc_issuer.mint(scope="notes:read notes:write"))
    assert oidc_issuer.exchanges[0].form["subject_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert oidc_issuer.exchanges[0].client_id == oidc_issuer.client_id  # client_secret_basic accepted


def test_exchange_configuration_is_checked_at_start(oidc_issuer: OidcIssuer) -> None:
    policy = _exchange_policy(oidc_issuer)
    with pytest.raises(CredentialConfigError, match="needs a token exchanger"):
        _broker(policy, env={"WICKET_EXCHANGE_SECRET": "x"})
    with pytest.raises(CredentialConfigError, match="WICKET_EXCHANGE_SECRET \\(client_secret_env\\) is not set"):
        _broker(policy, env={}, exchange=TokenExchanger())


async def test_no_mode_but_passthrough_forwards_the_agents_token(
    oidc_issuer: OidcIssuer, exchanger: ExchangerFactory
) -> None:
    agent = oidc_issuer.mint(scope="notes:read notes:write")
    env = {"WICKET_EXCHANGE_SECRET": oidc_issuer.client_secret, "K": "static-secret"}
    brokers: list[CredentialBroker] = [
        _broker(env=env),
        _broker(_static_policy("value_env: K"), env=env),
        _broker(_exchange_policy(oidc_issuer), env=env, exchange=exchanger()),
    ]
    for broker in brokers:
        credential = await broker.issue(_call("get_note"), _session(), inbound_token=agent)
        assert credential.mode != "passthrough"
        assert all(agent not in value for value in credential.headers.values())


async def test_unlisted_upstream_without_a_prepared_secret_fails_closed() -> None:
    policy = _policy(
        f'upstreams:\n  - url: "{NOTES}"\n    credentials: {{mode: static, value_env: A}}\n'
        "tools:\n  t:\n    credentials: {mode: static, header: X-K}\n"
    )
    broker = _broker(policy, env={"A": "secret-a"})
    assert (await broker.issue(_call("t"), _session(), inbound_token=None)).headers == {"X-K": "secret-a"}
    with pytest.raises(CredentialError, match="list it under upstreams"):
        await broker.issue(_call("t", upstream="http://unlisted.example/mcp"), _session(), inbound_token=None)
