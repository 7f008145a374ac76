"""Transport defences: every bad request gets the specified answer and nothing reaches upstream."""

from __future__ import annotations

import asyncio
import functools
import gzip
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from mcp.shared.exceptions import MCPError
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.adapters.http_guard import OriginPolicy, forward_headers
from proxy.adapters.mcp import _check_lengths, _intent, _shape
from proxy.adapters.relay import Refusal
from proxy.core.policy import load_policy
from proxy.demo.server import DemoUpstream, free_port
from tests.conftest import DEMO_POLICY, ECHO_TOOLS, RunningWicket, WicketFactory, mcp_client, relay_to, serve

ACCEPT = "application/json, text/event-stream"
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


def call(name: str, arguments: dict[str, Any], request_id: int = 1) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments, "_meta": META},
    }


def modern_headers(method: str = "tools/call", name: str | None = None) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "Accept": ACCEPT,
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": method,
    }
    if name is not None:
        headers["Mcp-Name"] = name
    return headers


async def post(url: str, body: bytes | str, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as response:
        text = await response.text()
        try:
            payload = json.loads(text) if text else None
        except ValueError:
            payload = text
        return response.status, dict(response.headers), payload


async def test_modern_call_passes(upstream: DemoUpstream, wicket: RunningWicket) -> None:
    status, _, body = await post(
        wicket.url, json.dumps(call("get_weather", {"city": "Oslo"})), modern_headers(name="get_weather")
    )
    assert status == 200, body
    assert body["result"]["isError"] is False
    assert upstream.ledger.names() == ["get_weather"]


async def test_malformed_json_is_400_parse_error(upstream: DemoUpstream, wicket: RunningWicket) -> None:
    status, _, body = await post(wicket.url, b'{"jsonrpc": "2.0", "id": 1, "method": ', modern_headers())
    assert status == 400
    assert body["error"]["code"] == -32700
    assert body["id"] is None


async def test_oversized_body_is_413(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, max_body_bytes=2048)
    big = json.dumps(call("get_weather", {"city": "x" * 4096}))
    status, _, body = await post(running.url, big, modern_headers(name="get_weather"))
    assert status == 413
    assert body["error"]["code"] == -32600
    assert upstream.ledger.names() == []


async def test_hostile_origin_and_host_are_403(upstream: DemoUpstream, wicket: RunningWicket) -> None:
    body = json.dumps(call("get_weather", {"city": "Oslo"}))
    status, _, payload = await post(
        wicket.url, body, {**modern_headers(name="get_weather"), "Origin": "https://evil.example"}
    )
    assert status == 403
    assert "Origin" in payload["error"]["message"]
    status, _, payload = await post(wicket.url, body, {**modern_headers(name="get_weather"), "Host": "evil.example"})
    assert status == 403
    assert "Host" in payload["error"]["message"]
    status, _, _ = await post(
        wicket.url, body, {**modern_headers(name="get_weather"), "Origin": "http://localhost:3000"}
    )
    assert status == 200
    assert upstream.ledger.names() == ["get_weather"]


async def test_wrong_content_type_is_415(upstream: DemoUpstream, wicket: RunningWicket) -> None:
    headers = {**modern_headers(name="get_weather"), "Content-Type": "text/plain"}
    status, _, _ = await post(wicket.url, json.dumps(call("get_weather", {"city": "Oslo"})), headers)
    assert status == 415
    assert upstream.ledger.names() == []


async def test_json_content_type_with_parameters_or_odd_case_is_read_as_json(
    upstream: DemoUpstream, wicket: RunningWicket
) -> None:
    """Only the exact ``application/json`` skips parsing the header; any other spelling is parsed as before."""
    for content_type in ("application/json; charset=utf-8", "Application/JSON", "application/json"):
        headers = {**modern_headers(name="get_weather"), "Content-Type": content_type}
        status, _, body = await post(wicket.url, json.dumps(call("get_weather", {"city": "Oslo"})), headers)
        assert status == 200, (content_type, body)
    for content_type in ("application/jsonx", "application/json-seq", "text/json"):
        headers = {**modern_headers(name="get_weather"), "Content-Type": content_type}
        status, _, _ = await post(wicket.url, json.dumps(call("get_weather", {"city": "Oslo"})), headers)
        assert status == 415, content_type
    assert upstream.ledger.names() == ["get_weather"] * 3


async def test_batch_cannot_smuggle_a_call(upstream: DemoUpstream, wicket: RunningWicket) -> None:
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": META}},
        call("drop_table", {"table": "users"}, request_id=2),
    ]
    status, _, body = await post(wicket.url, json.dumps(batch), modern_headers(method="tools/list"))
    assert status == 400
    assert body["error"]["code"] == -32600
    assert "Batch" in body["error"]["message"]
    assert upstream.ledger.names() == []


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        (modern_headers(name="get_weather"), "Mcp-Name header 'get_weather'"),
        (modern_headers(method="tools/list", name="drop_table"), "Mcp-Method header 'tools/list'"),
        (modern_headers(name=None), "Mcp-Name header is required"),
    ],
)
async def test_header_body_mismatch_is_400_32020(
    upstream: DemoUpstream, wicket: RunningWicket, headers: dict[str, str], fragment: str
) -> None:
    status, _, body = await post(wicket.url, json.dumps(call("drop_table", {"table": "users"})), headers)
    assert status == 400
    assert body["error"]["code"] == -32020
    assert fragment in body["error"]["message"]
    assert upstream.ledger.names() == []
    assert not [e for e in wicket.audit_events() if e["event"] == "decision"], "nothing was decided"


async def test_unreachable_upstream_is_502(make_wicket: WicketFactory) -> None:
    running = await make_wicket(f"http://127.0.0.1:{free_port()}/mcp")
    status, _, body = await post(
        running.url, json.dumps(call("get_weather", {"city": "Oslo"})), modern_headers(name="get_weather")
    )
    assert status == 502
    assert body["error"]["code"] == -32051
    assert body["id"] == 1
    assert "unreachable" in body["error"]["message"]
    # Wicket cannot learn the tool's definition from an unreachable upstream: refused, and audited.
    decisions = [e for e in running.audit_events() if e["event"] == "decision"]
    assert decisions and decisions[-1]["decision"] == "deny" and "unreachable" in decisions[-1]["reason"]


async def test_unknown_mcp_session_is_404(upstream: DemoUpstream, wicket: RunningWicket) -> None:
    headers = {"Content-Type": "application/json", "Accept": ACCEPT, "Mcp-Session-Id": "not-a-session"}
    body = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "get_weather", "arguments": {}}}
    status, _, payload = await post(wicket.url, json.dumps(body), headers)
    assert status == 404
    assert payload["error"]["code"] == -32001
    assert upstream.ledger.names() == []


async def test_hop_by_hop_and_credentials_are_not_forwarded(
    echo_upstream: tuple[str, list[dict[str, str]]], make_wicket: WicketFactory
) -> None:
    url, seen = echo_upstream
    running = await make_wicket(url)
    headers = {
        **modern_headers(name="get_weather"),
        "Connection": "keep-alive, X-Secret-Hop",
        "X-Secret-Hop": "1",
        "Keep-Alive": "timeout=5",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "X-End-To-End": "kept",
    }
    status, _, body = await post(running.url, json.dumps(call("get_weather", {"city": "Oslo"})), headers)
    assert status == 200, body
    forwarded = {k.lower(): v for k, v in seen[-1].items()}
    assert forwarded["x-end-to-end"] == "kept"
    assert forwarded["mcp-name"] == "get_weather"
    for dropped in ("x-secret-hop", "keep-alive", "proxy-authorization", "origin"):
        assert dropped not in forwarded, dropped
    # The only Authorization upstream is the credential Wicket minted for this one call.
    assert forwarded["authorization"].startswith("Bearer ey")


async def test_agent_token_is_never_forwarded(
    echo_upstream: tuple[str, list[dict[str, str]]], make_wicket: WicketFactory
) -> None:
    """MCP forbids token passthrough: upstream sees a credential scoped to this call, verifiable
    through Wicket's JWKS, and never the agent's own token."""
    url, seen = echo_upstream
    running = await make_wicket(url, "version: 1\n")
    grant = await running.create_session("agent-1")
    headers = {**modern_headers(name="get_weather"), "Authorization": f"Bearer {grant['token']}"}
    status, _, _ = await post(running.url, json.dumps(call("get_weather", {"city": "Oslo"})), headers)
    assert status == 200
    forwarded = {k.lower(): v for k, v in seen[-1].items()}
    assert grant["token"] not in json.dumps(seen)
    token = forwarded["authorization"].removeprefix("Bearer ")
    async with aiohttp.ClientSession() as http, http.get(running.url.replace("/mcp", "/.well-known/jwks.json")) as r:
        jwks = await r.json()
    key = jwt.PyJWK(jwks["keys"][0])
    claims = jwt.decode(token, key.key, algorithms=[key.algorithm_name], audience=url)
    assert claims["sub"] == "agent-1" and claims["tool"] == "get_weather" and claims["sid"] == grant["session_id"]
    assert claims["exp"] - claims["iat"] == 60
    assert claims["args_sha256"] == hashlib.sha256(b'{"city":"Oslo"}').hexdigest()
    outcome = [e for e in running.audit_events() if e["event"] == "outcome"][-1]
    assert outcome["credential_mode"] == "minted" and outcome["credential_id"] == claims["jti"]
    assert token not in running.audit_path.read_text()


async def test_large_body_under_the_limit_arrives_whole(upstream: DemoUpstream, wicket: RunningWicket) -> None:
    """A body that crosses the network in many chunks is read whole, checked and forwarded intact."""
    text = "x" * 1_500_000
    body = {
        "jsonrpc": "2.0",
        "id": 5,
        "method": "tools/call",
        "params": {"name": "search_notes", "arguments": {"query": text}, "_meta": META},
    }
    status, _, payload = await post(wicket.url, json.dumps(body), modern_headers(name="search_notes"))
    assert status == 200, payload
    assert payload["result"]["isError"] is False
    assert upstream.ledger.calls == [("search_notes", {"query": text})]


async def test_large_upstream_json_response_is_relayed_whole(upstream: DemoUpstream, wicket: RunningWicket) -> None:
    city = "y" * 1_500_000
    status, headers, payload = await post(
        wicket.url, json.dumps(call("get_weather", {"city": city})), modern_headers(name="get_weather")
    )
    assert status == 200 and headers["Content-Type"].startswith("application/json"), payload
    assert payload["result"]["content"][0]["text"] == f"It is sunny in {city}."


def test_forwarded_headers_lose_hop_by_hop_connection_named_and_dropped_ones_only() -> None:
    incoming = CIMultiDictProxy(
        CIMultiDict(
            [
                ("Host", "wicket:8080"),
                ("Connection", "keep-alive, X-Hop"),
                ("x-hop", "one hop only"),
                ("Accept", "application/json"),
                ("TRANSFER-ENCODING", "chunked"),
                ("Authorization", "Bearer the-agent's-own"),
                ("X-Trace", "a"),
                ("Keep-Alive", "timeout=5"),
                ("x-trace", "b"),
                ("Mcp-Name", "get_weather"),
            ]
        )
    )
    forwarded = forward_headers(incoming, frozenset({"authorization"}))
    assert list(forwarded.items()) == [
        ("Accept", "application/json"),
        ("X-Trace", "a"),
        ("x-trace", "b"),
        ("Mcp-Name", "get_weather"),
    ]
    assert "Connection" in incoming and "x-hop" in incoming  # the original is left as it was


def test_a_remembered_host_never_lets_another_through() -> None:
    """OriginPolicy remembers Host values it served, as sent; every other value is still judged."""
    policy = OriginPolicy(["wicket.example"])
    for _ in range(2):  # the second round answers the served ones from the memo
        assert policy.host_problem("localhost:8080") is None
        assert policy.host_problem("WICKET.example") is None
        refused = "Host 'evil.example' is not served here (add it with --allowed-host)"
        assert policy.host_problem("evil.example") == refused
        assert policy.host_problem("localhost.evil.example:8080") is not None
        assert policy.host_problem(None) == "the request has no Host header"
        assert policy.host_problem("") == "the request has no Host header"
    for port in range(1000):  # many served variants: the memo stays bounded
        assert policy.host_problem(f"localhost:{port}") is None
    assert len(policy._served) <= 256
    assert policy.host_problem("evil.example") is not None


class _Dict(dict):  # type: ignore[type-arg]
    """A dict subclass: JSON never gives one, but the envelope checks must read it as a dict."""


class _Str(str):
    pass


def test_envelope_checks_read_subclasses_like_the_types_json_gives() -> None:
    """_shape, _intent and _check_lengths test ``type(x) is dict/str`` first; isinstance decides the rest."""
    message = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "get_weather"}}
    shaped = _shape(message)
    assert _shape(_Dict(message)) == shaped
    assert _shape({**message, "method": _Str("tools/call")}) == shaped
    assert _shape({**message, "params": _Dict(message["params"])}) == shaped
    for bad, problem in (
        ([message], "expected one JSON-RPC 2.0 object"),
        ({**message, "method": 5}, "method must be a string"),
        ({**message, "params": ["x"]}, "params must be an object"),
    ):
        with pytest.raises(Refusal) as refused:
            _shape(bad)
        assert problem in refused.value.message
    intents = (
        ({"wicket/intent": "tidy up"}, "tidy up"),
        (_Dict({"intent": _Str("tidy up")}), "tidy up"),
        ({"wicket/intent": "  ", "intent": "the fallback"}, "the fallback"),
        ({"intent": 5, "x": 1}, None),
        (None, None),
        (["intent"], None),
    )
    for meta, intent in intents:
        assert _intent({"_meta": meta}) == intent
    _check_lengths("tools/call", "get_weather", _Str("x" * 256))
    with pytest.raises(Refusal):
        _check_lengths("tools/call", "get_weather", _Str("x" * 257))
    with pytest.raises(Refusal):
        _check_lengths("resources/read", "u" * 8193, 1)
    _check_lengths("resources/read", "u" * 8192, 1)


async def test_a_cookie_an_upstream_sets_rides_on_no_other_agents_request(
    upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    """Wicket keeps no cookie jar: a sticky-session cookie a load balancer sets on one agent's
    answer reaches that agent (whose own client may send it back) and is never added by Wicket to
    another agent's request, nor to the requests Wicket makes itself (tools/list)."""
    seen: list[tuple[str, str | None]] = []  # (the minted credential's subject, the Cookie header received)

    async def balance(request: web.Request) -> web.StreamResponse:
        """A sticky-session load balancer before the real demo server: every answer sets a cookie
        naming the agent it went to (the subject of the credential Wicket minted for the request)."""
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        subject = jwt.decode(token, options={"verify_signature": False})["sub"] if token else "nobody"
        seen.append((subject, request.headers.get("Cookie")))
        return await relay_to(upstream.url, request, cookie=("AWSALB", f"{subject}.{len(seen)}"))

    app = web.Application()
    app.router.add_route("*", "/mcp", balance)
    async with serve(app) as base:
        # A host name, not an address: a cookie jar keeps cookies for names only.
        running = await make_wicket(base.replace("127.0.0.1", "localhost") + "/mcp")
        agent_a = await running.create_session("agent-a")
        agent_b = await running.create_session("agent-b")
        for grant in (agent_a, agent_b, agent_a):
            async with mcp_client(running.url, token=grant["token"]) as client:
                result = await client.call_tool("get_weather", {"city": "Oslo"})
                assert not result.is_error
    subjects = [subject for subject, _ in seen]
    assert "agent-a" in subjects and "agent-b" in subjects
    assert seen[subjects.index("agent-b")][1] is None  # agent-b's first request: no cookie of agent-a's
    for subject, cookie in seen:
        for pair in (cookie or "").split(";"):
            if pair.strip():
                name, _, value = pair.strip().partition("=")
                assert name == "AWSALB" and value.startswith(f"{subject}."), (subject, cookie)


Hop = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def behind(hop: Hop, make_wicket: WicketFactory) -> AsyncIterator[RunningWicket]:
    """A Wicket whose upstream is ``hop``, an HTTP hop serving /mcp (before an MCP server), for the block."""
    app = web.Application()
    app.router.add_route("*", "/mcp", hop)
    async with serve(app) as base:
        yield await make_wicket(base + "/mcp")


async def one_call_through(hop: Hop, make_wicket: WicketFactory) -> tuple[RunningWicket, int, dict[str, str], Any]:
    """One ``get_weather`` call through Wicket and ``hop``: the Wicket, the answer's status, headers and JSON."""
    async with behind(hop, make_wicket) as running:
        status, headers, body = await post(
            running.url, json.dumps(call("get_weather", {"city": "Oslo"})), modern_headers(name="get_weather")
        )
    return running, status, headers, body


@pytest.mark.parametrize("elsewhere", [True, False], ids=["another-server", "same-server"])
async def test_an_upstream_redirect_is_neither_followed_nor_relayed(
    upstream: DemoUpstream, make_wicket: WicketFactory, elsewhere: bool
) -> None:
    """An upstream that answers a tool call with 307 does not get the call re-sent where it points
    (the real demo server, here, which would run it), and the agent is not sent around Wicket: it
    gets a JSON-RPC error naming the redirect, and the outcome is audited as an error."""

    async def moved(request: web.Request) -> web.StreamResponse:
        message = json.loads(await request.read() or b"{}")
        if message.get("method") == "tools/call":
            target = upstream.url if elsewhere else str(request.url.with_path("/mcp/").with_query("key=secret"))
            raise web.HTTPTemporaryRedirect(target)
        return await relay_to(upstream.url, request)

    running, status, headers, body = await one_call_through(moved, make_wicket)
    assert upstream.ledger.names() == [], "the redirect was not followed: the demo server ran nothing"
    assert status == 502 and "Location" not in headers
    message = body["error"]["message"]
    assert "HTTP 307" in message and "does not follow or relay redirects" in message
    if elsewhere:
        assert f"another server, http://127.0.0.1:{upstream.port}" in message
    else:
        assert "redirect to /mcp/" in message and "secret" not in message
    outcome = [e for e in running.audit_events() if e["event"] == "outcome"][-1]
    assert outcome["status"] == "error" and "HTTP 307" in outcome["detail"]
    async with aiohttp.ClientSession() as http, http.get(f"{running.admin_url}/metrics") as response:
        assert 'wicket_upstream_errors_total{kind="redirect",protocol="mcp"} 1.0' in await response.text()


async def gzip_hop(url: str, request: web.Request, *, always: bool, seen: list[tuple[str, str, str]]) -> web.Response:
    """A compressing hop before an MCP server (a CDN, a gateway): it gzips the answer when the request
    allows gzip (no Accept-Encoding allows anything), or, misconfigured (``always``), every tools/call
    answer. Records (JSON-RPC method, Accept-Encoding, Content-Type of the answer) per request."""
    offered = request.headers.get("Accept-Encoding")
    body = await request.read()
    headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
        http.request(request.method, url, headers=headers, data=body) as answer,
    ):
        payload = await answer.read()
        kept = {k: v for k, v in answer.headers.items() if k.lower() in ("content-type", "mcp-session-id")}
    method = str(json.loads(body).get("method")) if body else request.method
    seen.append((method, offered or "", kept.get("Content-Type", "")))
    if (always and method == "tools/call") or (not always and (offered is None or "gzip" in offered)):
        payload, kept["Content-Encoding"] = gzip.compress(payload), "gzip"
    return web.Response(status=answer.status, body=payload, headers=kept)


async def test_upstream_answers_are_asked_for_uncompressed(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    """Wicket screens what it relays, so it asks every upstream for ``identity``: a hop that
    compresses when allowed (RFC 9110: a request without Accept-Encoding allows any coding) answers
    plainly, and the SDK client's calls work through it."""
    seen: list[tuple[str, str, str]] = []
    hop = functools.partial(gzip_hop, upstream.url, always=False, seen=seen)
    async with behind(hop, make_wicket) as running, mcp_client(running.url) as client:
        result = await client.call_tool("get_weather", {"city": "Oslo"})
    assert not result.is_error and "Oslo" in str(result.content)
    assert "tools/call" in [method for method, _, _ in seen]
    assert all(offered == "identity" for _, offered, _ in seen), seen


async def test_a_compressed_answer_is_never_relayed(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    """An upstream that compresses although asked not to: its answer (an SSE stream, which clients
    decode and Wicket's screen could not read) is replaced by an error, never relayed."""
    seen: list[tuple[str, str, str]] = []
    hop = functools.partial(gzip_hop, upstream.url, always=True, seen=seen)
    async with behind(hop, make_wicket) as running, mcp_client(running.url) as client:
        with pytest.raises(MCPError, match="Content-Encoding: gzip") as refused:
            await client.call_tool("get_weather", {"city": "Oslo"})
    assert "Oslo" not in str(refused.value)
    answered = [content_type for method, _, content_type in seen if method == "tools/call"]
    assert answered == ["text/event-stream"], seen  # the upstream's (compressed) answer was an SSE stream
    outcome = [e for e in running.audit_events() if e["event"] == "outcome"][-1]
    assert outcome["status"] == "error" and "Content-Encoding: gzip" in outcome["detail"]


async def test_an_upstream_challenge_is_an_error_for_the_operator_never_relayed(
    upstream: DemoUpstream, make_wicket: WicketFactory, tmp_path: Path
) -> None:
    """A gateway before the real demo server wants its own key for tool calls and answers others
    401 with a challenge naming some authorization server. That concerns the credential Wicket
    presented, which the agent cannot fix: the agent gets an error that says so (no challenge, so
    its client starts no OAuth flow toward that server), and nothing ran. Once the policy gives
    Wicket the gateway's key as this upstream's credential, the call passes."""

    async def gateway(request: web.Request) -> web.StreamResponse:
        message = json.loads(await request.read() or b"{}")
        if message.get("method") == "tools/call" and request.headers.get("X-Gateway-Key") != "gw-key-0123456789":
            challenge = (
                'Bearer resource_metadata="https://login.elsewhere.example/.well-known/oauth-protected-resource"'
            )
            error = {"jsonrpc": "2.0", "id": message.get("id"), "error": {"code": -32001, "message": "unauthorized"}}
            return web.json_response(error, status=401, headers={"WWW-Authenticate": challenge})
        return await relay_to(upstream.url, request)

    app = web.Application()
    app.router.add_route("*", "/mcp", gateway)
    async with serve(app) as base:
        running = await make_wicket(base + "/mcp")
        async with mcp_client(running.url) as client:
            with pytest.raises(MCPError, match="refused the credential Wicket presented") as refused:
                await client.call_tool("get_weather", {"city": "Oslo"})
        assert "elsewhere.example" not in str(refused.value)
        assert upstream.ledger.names() == []
        outcome = [e for e in running.audit_events() if e["event"] == "outcome"][-1]
        assert outcome["status"] == "error" and outcome["credential_mode"] == "minted"

        keyed = tmp_path / "gateway-key.yaml"
        keyed.write_text(
            f'version: 1\nupstreams:\n  - url: "{base}/mcp"\n'
            "    credentials: {mode: static, value_env: GATEWAY_KEY, header: X-Gateway-Key}\n"
        )
        policy = load_policy([DEMO_POLICY, keyed])
        running = await make_wicket(base + "/mcp", policy, environ={"GATEWAY_KEY": "gw-key-0123456789"})
        async with mcp_client(running.url) as client:
            result = await client.call_tool("get_weather", {"city": "Oslo"})
    assert not result.is_error and upstream.ledger.names() == ["get_weather"]


def _http_answer(body: bytes, extra: bytes = b"") -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + extra
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


# What a broken upstream (or a hop before it) may send for a tools/call, past what aiohttp reads.
MALFORMED = {
    "header-too-long": _http_answer(b'{"jsonrpc":"2.0","id":1,"result":{}}', b"X-Big: " + b"a" * 20_000 + b"\r\n"),
    "body-cut-short": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
    b'{"jsonrpc":"2.0","id":1,"result":',
    "broken-chunking": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\n{}\r\n0\r\n\r\n",
}
INITIALIZED = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {"name": "raw"}}


def _content_length(head: bytes) -> int:
    lines = head.lower().split(b"\r\n")
    return int(next((line.split(b":")[1] for line in lines if line.startswith(b"content-length:")), b"0"))


@asynccontextmanager
async def raw_mcp_server(call_answer: bytes) -> AsyncIterator[str]:
    """An MCP server over raw HTTP/1.1 (so its bytes are exactly these): it initializes, lists
    get_weather, and answers a tools/call with ``call_answer``. Yields its /mcp URL."""

    async def serve_raw(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                message = json.loads(await reader.readexactly(_content_length(head)) or b"{}")
                method = message.get("method")
                if method == "tools/call":
                    writer.write(call_answer)
                    await writer.drain()
                    break  # and hang up: an answer cut short ends there
                else:
                    listed = {"tools/list": {"tools": ECHO_TOOLS}, "initialize": INITIALIZED}
                    reply = {"jsonrpc": "2.0", "id": message.get("id"), "result": listed.get(str(method), {})}
                    writer.write(_http_answer(json.dumps(reply).encode()))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve_raw, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/mcp"
    finally:
        server.close()


@pytest.mark.parametrize("answer", sorted(MALFORMED))
async def test_an_unreadable_upstream_answer_is_an_error_and_its_outcome_is_audited(
    make_wicket: WicketFactory, answer: str
) -> None:
    """An answer aiohttp cannot read as HTTP used to escape as a bare 500 with no outcome record:
    now the client gets a JSON-RPC error for its request and the outcome is audited as an error."""
    async with raw_mcp_server(MALFORMED[answer]) as url:
        running = await make_wicket(url)
        status, _, body = await post(
            running.url, json.dumps(call("get_weather", {"city": "Oslo"})), modern_headers(name="get_weather")
        )
    assert status == 502 and body["id"] == 1, (status, body)
    assert "not readable HTTP" in body["error"]["message"]
    outcome = [e for e in running.audit_events() if e["event"] == "outcome"][-1]
    assert outcome["status"] == "error" and outcome["detail"].startswith("upstream protocol"), outcome


async def test_a_moved_server_says_so_when_wicket_lists_its_tools(
    upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    """The first thing a moved server redirects is Wicket's own tool listing: the agent's call is
    refused with the redirect named (and what to do), and nothing reached the demo server."""

    async def moved(request: web.Request) -> web.StreamResponse:
        raise web.HTTPPermanentRedirect(upstream.url)

    _, status, _, body = await one_call_through(moved, make_wicket)
    assert upstream.ledger.names() == []
    assert status == 502, body
    assert f"HTTP 308 (a redirect to another server, http://127.0.0.1:{upstream.port})" in body["error"]["message"]
    assert "point Wicket at the upstream's final URL" in body["error"]["message"]


async def test_a_header_as_long_as_clients_read_is_relayed(make_wicket: WicketFactory) -> None:
    """The SDK clients read header blocks up to 16 KiB (h11, Node): an upstream answer with a 12 KB
    header (a long Content-Security-Policy, say) passes through Wicket as it would reach them directly."""
    result = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"long header, fine"}]}}'
    policy = b"Content-Security-Policy: default-src 'self'; " + b"a" * 12_000 + b"\r\n"
    async with raw_mcp_server(_http_answer(result, policy)) as url:
        running = await make_wicket(url)
        data = json.dumps(call("get_weather", {"city": "Oslo"}))
        async with (
            aiohttp.ClientSession(max_line_size=16_384, max_field_size=16_384) as http,  # reads as h11 does
            http.post(running.url, data=data, headers=modern_headers(name="get_weather")) as response,
        ):
            status, csp, body = response.status, response.headers["Content-Security-Policy"], await response.json()
    assert status == 200 and body["result"]["content"][0]["text"] == "long header, fine", (status, body)
    assert len(csp) > 12_000


async def test_a_request_header_as_long_as_servers_read_is_accepted(
    upstream: DemoUpstream, wicket: RunningWicket
) -> None:
    """MCP servers' HTTP stacks (uvicorn's h11, Node) read header blocks up to 16 KiB, so a client
    sending a 10 KB header (a large token, tracing baggage) works directly: it works through Wicket too."""
    async with mcp_client(wicket.url, headers={"X-Baggage": "b" * 10_000}) as client:
        result = await client.call_tool("get_weather", {"city": "Oslo"})
    assert not result.is_error and upstream.ledger.names() == ["get_weather"]
