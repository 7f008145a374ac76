"""Sessions (hijack, tampering, expiry), the admin port, metrics and the audit trail, end to end."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from proxy.audit.chain import verify_file
from proxy.core.sessions import RecordSigner, SessionManager, anonymous_session_id, token_fingerprint
from proxy.demo.server import DemoUpstream
from proxy.state.memory import MemoryStore
from tests.conftest import ADMIN_TOKEN, RunningWicket, WicketFactory, mcp_client

ACCEPT = "application/json, text/event-stream"
STRICT = "version: 1\n"


async def initialize(url: str, token: str | None) -> str:
    headers = {"Content-Type": "application/json", "Accept": ACCEPT}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    async with aiohttp.ClientSession() as http, http.post(url, json=body, headers=headers) as response:
        assert response.status == 200, await response.text()
        await response.read()
        return response.headers["Mcp-Session-Id"]


async def call_in_session(url: str, mcp_session_id: str, token: str | None, name: str) -> tuple[int, Any]:
    headers = {
        "Content-Type": "application/json",
        "Accept": ACCEPT,
        "Mcp-Session-Id": mcp_session_id,
        "MCP-Protocol-Version": "2025-11-25",
    }
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": name, "arguments": {"city": "x"}}}
    async with aiohttp.ClientSession() as http, http.post(url, json=body, headers=headers) as response:
        text = await response.text()
        return response.status, json.loads(text) if response.content_type == "application/json" else text


async def test_session_hijack_is_denied_and_audited(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, STRICT)
    alice = await running.create_session("alice")
    mallory = await running.create_session("mallory")
    mcp_session_id = await initialize(running.url, alice["token"])

    status, body = await call_in_session(running.url, mcp_session_id, mallory["token"], "get_weather")
    assert status == 403
    assert body["error"]["code"] == -32050
    record = body["error"]["data"]
    assert record["decision"] == "deny" and "another agent" in record["reason"]

    # Another token of the same agent is a different session: refused as well.
    alice2 = await running.create_session("alice")
    status, _ = await call_in_session(running.url, mcp_session_id, alice2["token"], "get_weather")
    assert status == 403
    status, _ = await call_in_session(running.url, mcp_session_id, None, "get_weather")
    assert status == 401  # the strict policy admits no anonymous caller at all
    assert upstream.ledger.names() == []

    status, body = await call_in_session(running.url, mcp_session_id, alice["token"], "get_weather")
    assert status == 200
    assert upstream.ledger.names() == ["get_weather"]
    hijacks = [e for e in running.audit_events() if e["event"] == "decision" and e["decision"] == "deny"]
    assert {e["agent_id"] for e in hijacks} == {"mallory", "alice"}
    assert all(e["session_id"] == alice["session_id"] for e in hijacks)


async def test_anonymous_cannot_use_an_agents_mcp_session(upstream: DemoUpstream, wicket: RunningWicket) -> None:
    grant = await wicket.create_session("alice")
    mcp_session_id = await initialize(wicket.url, grant["token"])
    status, body = await call_in_session(wicket.url, mcp_session_id, None, "get_weather")
    assert status == 403
    assert body["error"]["data"]["decision"] == "deny"
    assert upstream.ledger.names() == []


async def test_tampered_session_record_is_denied(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, STRICT)
    grant = await running.create_session("alice", mode="read-only")
    store = running.wicket.store
    key = f"wicket:{{{grant['session_id']}}}:session"
    raw = await store.get(key)
    assert raw is not None
    envelope = json.loads(raw)
    envelope["r"]["mode"] = "read-write"  # an attacker with store access widens the session
    await store.put(key, json.dumps(envelope).encode())

    headers = {
        "Content-Type": "application/json",
        "Accept": ACCEPT,
        "Authorization": f"Bearer {grant['token']}",
    }
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "create_note", "arguments": {}}}
    async with aiohttp.ClientSession() as http, http.post(running.url, json=body, headers=headers) as response:
        assert response.status == 403
        payload = await response.json()
    assert "integrity" in payload["error"]["message"]
    assert [e["event"] for e in running.audit_events()][-1] == "integrity"
    assert upstream.ledger.names() == []
    metrics = await scrape(running)
    assert "wicket_session_integrity_failures_total 1.0" in metrics


async def test_anonymous_session_record_signed_with_another_key_is_an_audited_refusal(
    upstream: DemoUpstream, wicket: RunningWicket
) -> None:
    """The per-agent anonymous session failing its HMAC (a record another deployment's key signed)
    is refused with 403 and an integrity audit event, like a token's session, not a 500."""
    key = SessionManager.session_key(anonymous_session_id("anonymous"))
    record = {
        "session_id": anonymous_session_id("anonymous"),
        "agent_id": "anonymous",
        "scope": ["*"],
        "mode": "read-write",
        "created_at": 0.0,
        "expires_at": 4e9,
        "intent": None,
        "origin": "anonymous",
        "granted_by": None,
    }
    await wicket.wicket.store.put(key, RecordSigner(b"another-deployment-key!").encode(key, record))
    headers = {"Content-Type": "application/json", "Accept": ACCEPT, "MCP-Protocol-Version": "2025-11-25"}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "get_weather", "arguments": {}}}
    async with aiohttp.ClientSession() as http, http.post(wicket.url, json=body, headers=headers) as response:
        assert response.status == 403
        payload = await response.json()
    assert "integrity" in payload["error"]["message"]
    assert [e["event"] for e in wicket.audit_events()][-1] == "integrity"
    assert upstream.ledger.names() == []
    assert "wicket_session_integrity_failures_total 1.0" in await scrape(wicket)


async def scrape(running: RunningWicket) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{running.admin_url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return await response.text()


async def test_metrics_can_be_scraped(upstream: DemoUpstream, wicket: RunningWicket) -> None:
    async with mcp_client(wicket.url) as client:
        await client.call_tool("get_weather", {"city": "Oslo"})
        await client.call_tool("drop_table", {"table": "users"})
    text = await scrape(wicket)
    assert 'wicket_decisions_total{decision="allow",effect="read",mode="enforce",protocol="mcp",tier="fast"}' in text
    assert (
        'wicket_decisions_total{decision="deny",effect="destructive",mode="enforce",protocol="mcp",tier="fast"} 1.0'
        in text
    )
    assert "wicket_check_duration_seconds_bucket" in text
    assert "wicket_upstream_duration_seconds_count" in text


async def test_health_and_readiness(wicket: RunningWicket) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{wicket.admin_url}/healthz") as response:
            assert response.status == 200
        async with http.get(f"{wicket.admin_url}/readyz") as response:
            assert response.status == 200
            assert (await response.json())["checks"] == {"audit": "ok", "store": "ok", "upstream": "ok"}


async def test_control_api_needs_the_operator_token(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, STRICT)
    agent = await running.create_session("alice")
    url = f"{running.admin_url}/v1/sessions"
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": f"Bearer {agent['token']}"}, {"Authorization": "Bearer nope"}):
            async with http.post(url, json={"agent_id": "alice", "mode": "read-write"}, headers=headers) as response:
                assert response.status == 401
        bad = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        for payload in ({"agent_id": ""}, {"agent_id": "a", "mode": "god"}, {"agent_id": "a", "colour": "red"}):
            async with http.post(url, json=payload, headers=bad) as response:
                assert response.status == 400, payload


async def test_read_write_grant_is_audited_and_chain_verifies(upstream: DemoUpstream, wicket: RunningWicket) -> None:
    grant = await wicket.create_session("ops-bot", mode="read-write", intent="rotate notes")
    async with mcp_client(wicket.url, token=grant["token"]) as client:
        await client.call_tool("create_note", {"title": "t", "text": "secret-value-123"})
    events = wicket.audit_events()
    session_events = [e for e in events if e["event"] == "session"]
    assert session_events[-1]["mode"] == "read-write" and session_events[-1]["granted_by"] == "operator"
    decision = next(e for e in events if e.get("action") == "tools/call:create_note" and e["event"] == "decision")
    outcome = next(e for e in events if e.get("decision_id") == decision["decision_id"] and e["event"] == "outcome")
    assert decision["seq"] < outcome["seq"]
    assert outcome["status"] == "success"
    for field in ("seq", "ts", "agent_id", "session_id", "protocol", "effect", "decision", "tier", "reason"):
        assert field in decision
    raw = wicket.audit_path.read_text()
    assert grant["token"] not in raw and "wkt_" not in raw
    assert "secret-value-123" not in raw
    result = verify_file(wicket.audit_path)
    assert result.ok and result.count == len(events)


async def test_get_stream_and_delete_follow_the_binding(upstream: DemoUpstream, wicket: RunningWicket) -> None:
    grant = await wicket.create_session("alice")
    mcp_session_id = await initialize(wicket.url, grant["token"])
    headers = {
        "Accept": "text/event-stream",
        "Mcp-Session-Id": mcp_session_id,
        "MCP-Protocol-Version": "2025-11-25",
        "Authorization": f"Bearer {grant['token']}",
    }
    async with aiohttp.ClientSession() as http:
        # The standalone GET stream opens for the owner (headers arrive before any event) ...
        async with http.get(wicket.url, headers=headers) as response:
            assert response.status == 200
            assert response.content_type == "text/event-stream"
        # ... and not for anyone else.
        async with http.get(wicket.url, headers={**headers, "Authorization": "Bearer wkt_forged"}) as response:
            assert response.status == 401
        async with http.delete(wicket.url, headers=headers) as response:
            assert response.status == 200
    status, body = await call_in_session(wicket.url, mcp_session_id, grant["token"], "get_weather")
    assert status == 404
    assert body["error"]["code"] == -32001
    assert upstream.ledger.names() == []


async def test_a_token_finds_its_session_alike_with_or_without_its_fingerprint() -> None:
    """The identity resolver hands by_token the fingerprint it already worked out: the same record is read."""
    sessions = SessionManager(MemoryStore(), RecordSigner(b"k" * 32))
    session = await sessions.create("agent", scope=("*",), mode="read-write", ttl_seconds=60)
    token = await sessions.issue_token(session)
    for _ in range(2):  # the second round uses the verified binding
        assert await sessions.by_token(token) == session
        assert await sessions.by_token(token, fingerprint=token_fingerprint(token)) == session
    other = await sessions.issue_token(await sessions.create("other", scope=("*",), ttl_seconds=60))
    assert await sessions.by_token(token, fingerprint=token_fingerprint(other)) != session
    assert await sessions.by_token("wkt_unknown", fingerprint=token_fingerprint("wkt_unknown")) is None
