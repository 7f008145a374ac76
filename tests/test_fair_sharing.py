"""Fair sharing of one sidecar: per-agent limits on requests, MCP sessions and streams; streams that
can never starve another agent's read; bounded names and ids; slow clients cut off.

A real demo MCP server is the upstream; its own connection table shows what it is serving, and its
ledger what ran.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from proxy.demo.server import DemoUpstream
from tests.conftest import RunningWicket, WicketFactory, mcp_client
from tests.test_cancellation import legacy_session, posts_in_flight, streams_open
from tests.waiting import eventually

POLICY = """
version: 1
anonymous: {enabled: false}
defaults: {capabilities: ["*"]}
"""
ACCEPT = "application/json, text/event-stream"


def limits(**values: int) -> str:
    return POLICY + "limits: {" + ", ".join(f"{key}: {value}" for key, value in values.items()) + "}\n"


async def open_stream(http: aiohttp.ClientSession, url: str, token: str) -> aiohttp.ClientResponse:
    """A session-generation MCP session with its GET stream open; the caller closes the response."""
    http.headers["Authorization"] = f"Bearer {token}"
    session_id = await legacy_session(http, url)
    headers = {"Accept": "text/event-stream", "Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-11-25"}
    return await http.get(url, headers=headers)


async def test_an_agent_with_100_streams_does_not_delay_another_agents_read(
    upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(upstream.url, limits(max_sessions_per_agent=200, max_streams_per_agent=200))
    hoarder = (await running.create_session("hoarder"))["token"]
    reader = (await running.create_session("reader"))["token"]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        streams = [await open_stream(http, running.url, hoarder) for _ in range(100)]
        try:
            assert [s.status for s in streams] == [200] * 100
            await eventually(lambda: streams_open(upstream) == 100, "the upstream serves all 100 streams")
            # Wicket's pool for calls holds 100 connections: were streams drawn from it, this read would wait forever.
            async with asyncio.timeout(60), mcp_client(running.url, token=reader) as client:
                result = await client.call_tool("get_weather", {"city": "Oslo"})
            assert not result.is_error and streams_open(upstream) == 100
        finally:
            for stream in streams:
                stream.close()
    assert upstream.ledger.names() == ["get_weather"]


async def refusal_of(response: aiohttp.ClientResponse) -> dict[str, Any]:
    assert response.status == 429, await response.text()
    assert response.headers["Retry-After"] == "1"
    return dict((await response.json())["error"])


async def test_streams_past_the_agents_limit_are_refused(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, limits(max_streams_per_agent=3))
    token = (await running.create_session("streamer"))["token"]
    other = (await running.create_session("other"))["token"]
    async with aiohttp.ClientSession() as http:
        streams = [await open_stream(http, running.url, token) for _ in range(4)]
        try:
            assert [s.status for s in streams[:3]] == [200] * 3
            error = await refusal_of(streams[3])
            assert error["code"] == -32055 and "3 streams" in error["message"]
            async with aiohttp.ClientSession() as second:
                own = await open_stream(second, running.url, other)  # another agent's limit is its own
                assert own.status == 200
                own.close()
            streams[0].close()
            await eventually(lambda: streams_open(upstream) <= 2, "the closed stream ended upstream")
            again = await open_stream(http, running.url, token)
            assert again.status == 200
            streams.append(again)
        finally:
            for stream in streams:
                stream.close()


async def test_sessions_past_the_agents_limit_are_refused(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, limits(max_sessions_per_agent=2))
    token = (await running.create_session("opener"))["token"]
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    headers = {"Accept": ACCEPT, "Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        first = await legacy_session_with(http, running, token)
        await legacy_session_with(http, running, token)
        async with http.post(running.url, json=initialize, headers=headers) as response:
            error = await refusal_of(response)
            assert error["code"] == -32055 and "2 MCP sessions" in error["message"]
        ended = {**headers, "Mcp-Session-Id": first, "MCP-Protocol-Version": "2025-11-25"}
        async with http.delete(running.url, headers=ended) as response:
            assert response.status == 200
        await legacy_session_with(http, running, token)  # room again


async def legacy_session_with(http: aiohttp.ClientSession, running: RunningWicket, token: str) -> str:
    http.headers["Authorization"] = f"Bearer {token}"
    return await legacy_session(http, running.url)


async def test_requests_past_the_agents_limit_are_refused(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, limits(max_requests_per_agent=2))
    token = (await running.create_session("busy"))["token"]
    async with mcp_client(running.url, token=token) as client:
        slow = [
            asyncio.create_task(client.call_tool("search_notes", {"query": "x", "delay_seconds": 30})) for _ in "ab"
        ]
        await eventually(lambda: posts_in_flight(upstream) == 2, "two calls in flight upstream")
        with pytest.raises(Exception) as refused:
            await client.call_tool("get_weather", {"city": "Oslo"})
        assert "-32055" in str(refused.value) or "Too many upstream requests" in str(refused.value)
        for task in slow:
            task.cancel()
    assert "get_weather" not in upstream.ledger.names()


@pytest.mark.parametrize(
    ("field", "value"),
    [("name", "t" * 129), ("id", "i" * 257), ("method", "x/" + "y" * 200), ("uri", "file:///" + "a" * 9000)],
)
async def test_overlong_names_uris_and_ids_are_32602(
    field: str, value: str, upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(upstream.url)  # the demo policy: anonymous, read-only
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "get_weather"}}
    if field == "uri":
        message.update(method="resources/read", params={"uri": value})
    elif field == "method":
        message["method"] = value
    elif field == "id":
        message["id"] = value
    else:
        message["params"]["name"] = value
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            running.url, data=json.dumps(message), headers={"Accept": ACCEPT, "Content-Type": "application/json"}
        ) as response,
    ):
        body = await response.json()
    assert response.status == 400 and body["error"]["code"] == -32602, body
    assert upstream.ledger.names() == []


async def test_a_body_that_trickles_in_is_cut_off_with_408(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, request_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", running.wicket.data_port)
    try:
        writer.write(
            b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Accept: application/json, text/event-stream\r\nContent-Length: 100\r\n\r\n{"jsonrpc":'
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 30)  # the rest of the body never comes
    finally:
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 408")
    assert upstream.ledger.names() == []


async def test_headers_that_trickle_in_are_cut_off_with_408(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, request_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", running.wicket.data_port)
    try:
        writer.write(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl")  # and nothing more
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 30)
        assert await asyncio.wait_for(reader.read(), 30) is not None  # then the connection is closed
    finally:
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 408")
    assert upstream.ledger.names() == []


async def test_a_second_request_that_trickles_in_on_a_kept_alive_connection_is_cut_off(
    upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(upstream.url, request_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", running.wicket.data_port)
    try:
        writer.write(b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        assert (await asyncio.wait_for(reader.readline(), 30)).startswith(b"HTTP/1.1 200")
        writer.write(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")  # the next request never completes
        await writer.drain()
        # read() returns only at EOF: Wicket closes the connection (else the wait fails the test).
        await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    assert upstream.ledger.names() == []
