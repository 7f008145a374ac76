"""End to end: the real mcp SDK client, through Wicket, to a real MCP server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.demo.server import DemoUpstream
from tests.conftest import MODES, RunningWicket, WicketFactory, mcp_client

STRICT_POLICY = """
version: 1
anonymous: {enabled: false}
"""


def decision_of(result: Any) -> dict[str, Any]:
    assert result.is_error, result
    assert result.meta is not None and "wicket/decision" in result.meta, result
    return dict(result.meta["wicket/decision"])


@pytest.mark.parametrize("mode", MODES)
async def test_read_passes_and_destructive_is_denied_before_upstream(
    mode: str, upstream: DemoUpstream, wicket: RunningWicket
) -> None:
    async with mcp_client(wicket.url, mode=mode) as client:
        tools = await client.list_tools()
        assert {t.name for t in tools.tools} >= {"get_weather", "drop_table"}
        ok = await client.call_tool("get_weather", {"city": "Oslo"})
        assert not ok.is_error
        assert ok.content[0].text == "It is sunny in Oslo."

        denied = await client.call_tool("drop_table", {"table": "users"})
        record = decision_of(denied)
    assert record["decision"] == "deny"
    assert record["effect"] == "destructive"
    assert record["tier"] == "fast"
    assert record["decision_id"].startswith("dec_")
    assert "read-only" in record["reason"]
    assert "drop_table" in denied.content[0].text
    assert upstream.ledger.names() == ["get_weather"], "the denied call must never reach the upstream"


@pytest.mark.parametrize("mode", MODES)
async def test_read_write_session_every_effect(mode: str, upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    """Operator grants read-write: reads and writes pass; without Deep Guard a destructive call waits for a
    human's approval of exactly that call and an admin call fails closed."""
    running = await make_wicket(upstream.url, STRICT_POLICY)
    grant = await running.create_session("builder", mode="read-write", intent="tidy the notes")
    async with mcp_client(running.url, token=grant["token"], mode=mode) as client:
        read = await client.call_tool("list_notes", {})
        write = await client.call_tool("create_note", {"title": "t", "text": "x"})
        unknown = await client.call_tool("frobnicate", {"target": "x"})
        destructive = decision_of(await client.call_tool("delete_note", {"title": "t"}))
        admin = decision_of(await client.call_tool("grant_role", {"user": "u", "role": "root"}))
    assert not read.is_error and not write.is_error and not unknown.is_error
    assert destructive["effect"] == "destructive" and destructive["tier"] == "deep"
    assert destructive["decision"] == "approval_required" and "Deep Guard is not configured" in destructive["reason"]
    assert admin["effect"] == "admin" and admin["decision"] == "deny" and "Deep Guard unavailable" in admin["reason"]
    assert upstream.ledger.names() == ["list_notes", "create_note", "frobnicate"]


async def test_strict_policy_refuses_anonymous_with_401(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    import aiohttp

    running = await make_wicket(upstream.url, STRICT_POLICY)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            running.url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
            headers={"Accept": "application/json, text/event-stream"},
        ) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            body = await response.json()
    assert body["error"]["code"] == -32053
    assert upstream.ledger.names() == []


async def test_session_scope_ceiling(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, STRICT_POLICY)
    grant = await running.create_session("reader", scope=["get_*"])
    async with mcp_client(running.url, token=grant["token"], mode="2026-07-28") as client:
        assert not (await client.call_tool("get_weather", {"city": "Rome"})).is_error
        record = decision_of(await client.call_tool("list_notes", {}))
    assert "scope ceiling" in record["reason"]
    assert upstream.ledger.names() == ["get_weather"]


async def test_capabilities_and_blocklist(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    policy = """
version: 1
anonymous: {enabled: true}
defaults: {capabilities: ["get_*", "list_*"]}
blocklist: ["list_notes"]
"""
    running = await make_wicket(upstream.url, policy)
    async with mcp_client(running.url, mode="legacy") as client:
        assert not (await client.call_tool("get_weather", {"city": "Rome"})).is_error
        blocked = decision_of(await client.call_tool("list_notes", {}))
        not_granted = decision_of(await client.call_tool("search_notes", {"query": "x"}))
    assert "blocklisted" in blocked["reason"]
    assert "not granted" in not_granted["reason"]
    assert upstream.ledger.names() == ["get_weather"]


async def test_policy_override_and_trusted_annotations(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    """Overrides come first; a trusted upstream's readOnlyHint may lower a tier."""
    policy = f"""
version: 1
anonymous: {{enabled: true}}
tools:
  send_message: {{effect: read}}
upstreams:
  - url: "{upstream.url}"
    trusted: true
"""
    running = await make_wicket(upstream.url, policy)
    async with mcp_client(running.url) as client:
        await client.list_tools()  # Wicket learns get_weather's readOnlyHint here
        assert not (await client.call_tool("send_message", {"to": "a", "text": "b"})).is_error
        assert not (await client.call_tool("get_weather", {"city": "Rome"})).is_error
    assert upstream.ledger.names() == ["send_message", "get_weather"]


async def test_long_running_call_is_not_cut_off(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, read_timeout=30.0)
    async with mcp_client(running.url) as client:
        result = await client.call_tool("search_notes", {"query": "Wicket", "delay_seconds": 1.5})
    assert not result.is_error
    assert upstream.ledger.names() == ["search_notes"]


async def test_concurrent_clients_each_get_their_own_session(upstream: DemoUpstream, wicket: RunningWicket) -> None:
    async def one(i: int) -> str:
        async with mcp_client(wicket.url) as client:
            result = await client.call_tool("get_weather", {"city": f"c{i}"})
            return str(result.content[0].text)

    texts = await asyncio.gather(*(one(i) for i in range(8)))
    assert sorted(texts) == sorted(f"It is sunny in c{i}." for i in range(8))
    sessions = {e["session_id"] for e in wicket.audit_events() if e.get("action") == "tools/call:get_weather"}
    assert len(sessions) == 8


@pytest.mark.parametrize("mode", MODES)
async def test_server_to_client_sampling_round_trip(mode: str, upstream: DemoUpstream, wicket: RunningWicket) -> None:
    """Legacy: the upstream's sampling request rides the POST's SSE stream and the client's reply
    is POSTed back through Wicket. 2026-07-28: an input_required result and a retry."""
    from mcp.types import CreateMessageResult, TextContent

    prompts: list[str] = []

    async def sampling(context: Any, params: Any) -> CreateMessageResult:
        prompts.append(params.messages[0].content.text)
        return CreateMessageResult(role="assistant", content=TextContent(type="text", text="All quiet."), model="t")

    async with mcp_client(wicket.url, mode=mode, sampling_callback=sampling) as client:
        result = await client.call_tool("get_summary", {})
    assert not result.is_error, result
    assert result.content[0].text == "All quiet."
    assert prompts and prompts[0].startswith("Summarise:")
    assert upstream.ledger.names() == ["get_summary"]
