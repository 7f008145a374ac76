"""Browser clients: headless Chromium on a web page calls Wicket across origins.

The page is served from ``http://app.example:PORT`` (Chromium maps the name to 127.0.0.1), an origin
the operator allowed with ``--allowed-origin``; the same page from ``http://evil.example:PORT`` is
refused. The upstream answers with ``Access-Control-Allow-Origin: *`` on purpose: Wicket must replace
it, never pass it through. The upstream's ledger proves what ran.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.demo.server import DemoUpstream
from tests.browser import chromium_page
from tests.conftest import WicketFactory, serve

PAGE = "<!doctype html><title>browser MCP client</title>"
RESOLVE = ("--host-resolver-rules=MAP app.example 127.0.0.1, MAP evil.example 127.0.0.1",)
ACCEPT = "application/json, text/event-stream"
# What a browser MCP client does: initialize, read the session id from the answer, call a tool.
CLIENT_SCRIPT = """
async (url) => {
  const headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                   "MCP-Protocol-Version": "2025-11-25"};
  const init = {jsonrpc: "2.0", id: 1, method: "initialize",
    params: {protocolVersion: "2025-11-25", capabilities: {}, clientInfo: {name: "browser", version: "1"}}};
  try {
    const first = await fetch(url, {method: "POST", headers, body: JSON.stringify(init)});
    const sid = first.headers.get("Mcp-Session-Id");
    const initText = await first.text();
    const session = {...headers, "Mcp-Session-Id": sid};
    await fetch(url, {method: "POST", headers: session,
      body: JSON.stringify({jsonrpc: "2.0", method: "notifications/initialized"})});
    const call = {jsonrpc: "2.0", id: 2, method: "tools/call",
      params: {name: "get_weather", arguments: {city: "Oslo"}}};
    const second = await fetch(url, {method: "POST", headers: session, body: JSON.stringify(call)});
    return {ok: true, sid, status: second.status, init: initText, call: await second.text()};
  } catch (error) {
    return {ok: false, error: String(error)};
  }
}
"""


@pytest.fixture
async def page_server() -> AsyncIterator[int]:
    """Serves the page the browser client runs in; the port is shared by both host names."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    async with serve(app) as base:
        yield int(base.rsplit(":", 1)[1])


@pytest.fixture
async def star_upstream() -> AsyncIterator[DemoUpstream]:
    """The demo server behind a layer that adds a wildcard CORS header to every answer, as some servers do."""
    server = DemoUpstream()

    async def add_star(scope: Any, receive: Any, send: Any) -> None:
        async def send_with_star(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"access-control-allow-origin", b"*")]
            await send(message)

        await inner(scope, receive, send_with_star)

    inner = server._uvicorn.config.app
    server._uvicorn.config.app = add_star
    await server.start()
    yield server
    await server.stop()


def data(text: str) -> dict[str, Any]:
    """The JSON-RPC message in a JSON or SSE answer body."""
    payload = text.split("data: ", 1)[1].split("\n", 1)[0] if text.startswith(("event:", "data:", "id:")) else text
    return dict(json.loads(payload))


async def test_a_browser_on_an_allowed_origin_connects_and_calls(
    page_server: int, star_upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    origin = f"http://app.example:{page_server}"
    running = await make_wicket(star_upstream.url, allowed_origins=[origin])
    async with chromium_page(RESOLVE) as browser:
        await browser.page.goto(origin + "/")
        outcome = await browser.page.evaluate(CLIENT_SCRIPT, running.url)
    assert outcome["ok"], outcome
    assert outcome["sid"]  # the browser could read Mcp-Session-Id: it is exposed
    assert data(outcome["init"])["result"]["serverInfo"]["name"] == "wicket-demo"
    assert outcome["status"] == 200 and "sunny in Oslo" in outcome["call"]
    assert star_upstream.ledger.names() == ["get_weather"]


async def test_a_refused_origin_gets_nothing_and_runs_nothing(
    page_server: int, star_upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(star_upstream.url, allowed_origins=[f"http://app.example:{page_server}"])
    async with chromium_page(RESOLVE) as browser:
        await browser.page.goto(f"http://evil.example:{page_server}/")
        outcome = await browser.page.evaluate(CLIENT_SCRIPT, running.url)
    assert not outcome["ok"] and "Failed to fetch" in outcome["error"]
    assert star_upstream.ledger.names() == []


async def test_preflight_and_headers_on_the_wire(star_upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    origin = "https://agents.example.com"
    running = await make_wicket(star_upstream.url, allowed_origins=[origin])
    asked = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    async with aiohttp.ClientSession() as http:
        async with http.options(
            running.url, headers={**asked, "Access-Control-Request-Headers": "content-type, mcp-session-id, x-trace"}
        ) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == origin
            assert "POST" in response.headers["Access-Control-Allow-Methods"]
            assert "x-trace" in response.headers["Access-Control-Allow-Headers"]
            assert "Mcp-Session-Id" in response.headers["Access-Control-Expose-Headers"]
        async with http.options(running.url, headers={**asked, "Origin": "https://evil.example.com"}) as response:
            assert response.status == 403 and "Access-Control-Allow-Origin" not in response.headers
        initialize = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        }
        async with http.post(running.url, json=initialize, headers={"Accept": ACCEPT, "Origin": origin}) as response:
            assert response.status == 200
            # The upstream's "*" is replaced by the one origin asking, with the headers a client must read.
            assert response.headers.getall("Access-Control-Allow-Origin") == [origin]
            assert "Mcp-Session-Id" in response.headers["Access-Control-Expose-Headers"]
            assert "Origin" in response.headers["Vary"]
        # No browser: none of the upstream's CORS headers reach the client either.
        async with http.post(running.url, json=initialize, headers={"Accept": ACCEPT}) as response:
            assert response.status == 200
            assert not [name for name in response.headers if name.lower().startswith("access-control-")]
