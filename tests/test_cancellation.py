"""A client that goes away cancels its request: Wicket notices at once, closes the upstream request
(how a 2026-07-28 client cancels) and, on the session generation, sends ``notifications/cancelled``.

The upstream is a real MCP server (the SDK's MCPServer under uvicorn) whose slow tool records whether it
finished or was cancelled, and whose own connection table shows which requests are still in flight.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest
from mcp.server.mcpserver import MCPServer

from proxy.demo.server import DemoUpstream, Ledger
from tests.conftest import MODES, RunningWicket, WicketFactory, mcp_client
from tests.test_http_defences import META, modern_headers
from tests.waiting import eventually

POLICY = """
version: 1
anonymous: {enabled: true, scope: ["*"]}
defaults: {capabilities: ["*"]}
tools:
  slow: {effect: read}
"""
TOOL_SECONDS = 8.0  # what the abandoned call would take


def build_slow_server() -> tuple[MCPServer, Ledger]:
    ledger = Ledger()
    server = MCPServer("slow")

    @server.tool()
    async def slow(seconds: float) -> str:
        """Sleeps, recording whether it finished or was cancelled."""
        ledger.record("started")
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            ledger.record("cancelled")
            raise
        ledger.record("finished")
        return "done"

    return server, ledger


@pytest.fixture
async def slow_upstream() -> AsyncIterator[DemoUpstream]:
    server = DemoUpstream(server=build_slow_server())
    await server.start()
    yield server
    await server.stop()


def posts_in_flight(upstream: DemoUpstream) -> int:
    """The upstream's own view: connections with a POST whose response has not ended."""
    count = 0
    for connection in upstream._uvicorn.server_state.connections:
        cycle = getattr(connection, "cycle", None)
        if cycle is not None and not cycle.response_complete and cycle.scope.get("method") == "POST":
            count += 1
    return count


def outcome_of(running: RunningWicket) -> dict[str, Any]:
    [outcome] = [
        e for e in running.audit_events() if e.get("event") == "outcome" and e.get("action") == "tools/call:slow"
    ]
    return outcome


async def abandoned_call(slow_upstream: DemoUpstream) -> None:
    """Wait until the tool runs, then for its end: it must have been cancelled, never finished."""
    await eventually(lambda: slow_upstream.ledger.names()[-1:] in (["cancelled"], ["finished"]), "the tool ended")
    assert slow_upstream.ledger.names() == ["started", "cancelled"]
    await eventually(lambda: posts_in_flight(slow_upstream) == 0, "the upstream has no request in flight")


@pytest.mark.parametrize("mode", MODES)
async def test_a_cancelled_sdk_call_cancels_the_upstream_call(
    mode: str, slow_upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(slow_upstream.url, POLICY)
    async with mcp_client(running.url, mode=mode) as client:
        with anyio.move_on_after(1.5) as scope:  # the client gives up long before the tool would finish
            await client.call_tool("slow", {"seconds": TOOL_SECONDS})
        assert scope.cancelled_caught
        await abandoned_call(slow_upstream)
    await eventually(lambda: any(e.get("event") == "outcome" for e in running.audit_events()), "the outcome audit")
    assert outcome_of(running)["status"] == "error"


async def legacy_session(http: aiohttp.ClientSession, url: str) -> str:
    """A session-generation MCP session opened by hand (initialize, initialized)."""
    initialize = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
    }
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    async with http.post(url, json=initialize, headers=headers) as response:
        assert response.status == 200, await response.text()
        session_id = response.headers["Mcp-Session-Id"]
        await response.read()
    headers.update({"Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-11-25"})
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    async with http.post(url, json=initialized, headers=headers) as response:
        assert response.status == 202
    return session_id


@pytest.mark.parametrize("generation", ["session", "2026-07-28"])
async def test_closing_the_connection_is_enough(
    generation: str, slow_upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    """A raw client that only drops its connection: no notification of its own, Wicket does the rest."""
    running = await make_wicket(slow_upstream.url, POLICY)
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "slow", "arguments": {"seconds": 8}}}
    async with aiohttp.ClientSession() as http:
        if generation == "session":
            session_id = await legacy_session(http, running.url)
            headers = {
                "Content-Type": "application/json",
                "Accept": "application/json, text/event-stream",
                "Mcp-Session-Id": session_id,
                "MCP-Protocol-Version": "2025-11-25",
            }
        else:
            call["params"]["_meta"] = META  # type: ignore[index]
            headers = modern_headers("tools/call", "slow")

        async def post() -> None:
            async with http.post(running.url, data=json.dumps(call), headers=headers) as response:
                await response.read()

        request = asyncio.create_task(post())
        await eventually(lambda: slow_upstream.ledger.names() == ["started"], "the tool started")
        request.cancel()  # drops the connection, whether the answer has started or not
        with pytest.raises(asyncio.CancelledError):
            await request
        await abandoned_call(slow_upstream)
    outcome = outcome_of(running)
    assert outcome["status"] == "error" and "client disconnected" in outcome["detail"]
    disconnects = running.wicket.metrics.registry.get_sample_value(
        "wicket_client_disconnects_total", {"protocol": "mcp"}
    )
    assert disconnects == 1


def streams_open(upstream: DemoUpstream) -> int:
    """The upstream's own view: GET streams it is still serving."""
    count = 0
    for connection in upstream._uvicorn.server_state.connections:
        cycle = getattr(connection, "cycle", None)
        if cycle is not None and not cycle.response_complete and cycle.scope.get("method") == "GET":
            count += 1
    return count


async def test_a_silent_stream_is_closed_after_the_idle_timeout(
    slow_upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(slow_upstream.url, POLICY, stream_idle_timeout=0.5)
    async with aiohttp.ClientSession() as http:
        session_id = await legacy_session(http, running.url)
        headers = {"Accept": "text/event-stream", "Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-11-25"}
        async with http.get(running.url, headers=headers) as stream:
            assert stream.status == 200
            await eventually(lambda: streams_open(slow_upstream) == 1, "the upstream serves the stream")
            await stream.content.read()  # ends: the upstream said nothing for longer than the idle timeout
    await eventually(lambda: streams_open(slow_upstream) == 0, "the upstream stream is closed")


async def test_a_stream_whose_client_left_is_closed_upstream(
    slow_upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(slow_upstream.url, POLICY)
    async with aiohttp.ClientSession() as http:
        session_id = await legacy_session(http, running.url)
        headers = {"Accept": "text/event-stream", "Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-11-25"}
        async with http.get(running.url, headers=headers) as stream:
            assert stream.status == 200
            await eventually(lambda: streams_open(slow_upstream) == 1, "the upstream serves the stream")
            stream.close()
        await eventually(lambda: streams_open(slow_upstream) == 0, "the upstream stream is closed")
    disconnects = running.wicket.metrics.registry.get_sample_value(
        "wicket_client_disconnects_total", {"protocol": "mcp"}
    )
    assert disconnects == 1
