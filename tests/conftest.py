"""Shared fixtures: a real demo MCP server upstream and real Wicket instances on real ports."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from proxy.app import Wicket
from proxy.cli import event_loop_factory
from proxy.core.policy import Policy, load_policy, parse_policy_text
from proxy.demo.server import DemoUpstream, free_port
from proxy.settings import Settings

pytest_plugins = ("tests.redis_support",)  # redis_url (fails under WICKET_REQUIRE_REDIS=1), own servers


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    """Async tests run on the loop ``wicket run`` uses by default: uvloop where it is installed.
    ``WICKET_TEST_EVENT_LOOP=asyncio`` runs them on asyncio's own loop instead (``--event-loop asyncio``)."""
    if os.environ.get("WICKET_TEST_EVENT_LOOP", "uvloop") == "asyncio":
        return {"asyncio": asyncio.new_event_loop}
    factory = event_loop_factory("auto")
    return {"uvloop": factory} if factory is not None else {"asyncio": asyncio.new_event_loop}


ROOT = Path(__file__).resolve().parent.parent
DEMO_POLICY = ROOT / "policies" / "demo.yaml"
ADMIN_TOKEN = "test-operator-token-0123456789abcdef"
SESSION_KEY = b"test-session-key-0123456789abcdef"


@pytest.fixture
async def upstream() -> AsyncIterator[DemoUpstream]:
    server = DemoUpstream()
    await server.start()
    yield server
    await server.stop()


def spawn_logged(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """A child process (``wicket run`` ...) in the repository root, its output in ``log_path``, with no
    WICKET_ or ANTHROPIC_ variable of the developer's environment to change what it does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WICKET_", "ANTHROPIC_"))}
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """An aiohttp app on a free loopback port for the length of the block; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def relay_to(url: str, request: web.Request, cookie: tuple[str, str] | None = None) -> web.StreamResponse:
    """What a plain HTTP hop in front of an MCP server does: the request on to ``url``, the answer
    back as it streams (and, like a sticky load balancer, a ``cookie`` set on it)."""
    headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
        http.request(request.method, url, headers=headers, data=await request.read()) as answer,
    ):
        relayed = {k: v for k, v in answer.headers.items() if k.lower() in ("content-type", "mcp-session-id")}
        response = web.StreamResponse(status=answer.status, headers=relayed)
        if cookie is not None:
            response.set_cookie(*cookie, path="/")
        await response.prepare(request)
        async for chunk in answer.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


ECHO_TOOLS = [{"name": "get_weather", "inputSchema": {"type": "object"}}]


@pytest.fixture
async def echo_upstream() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """A plain HTTP server that records the headers it receives (to see what Wicket forwards).

    It answers ``initialize`` and ``tools/list`` (one tool, ``get_weather``) as an MCP server
    would, so Wicket can learn the tool, and every other request with a successful tool result."""
    seen: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        if request.method != "POST":
            return web.Response(status=200)
        body = await request.json()
        if "id" not in body:
            return web.Response(status=202)
        result: dict[str, Any] = {"content": [{"type": "text", "text": "ok"}], "isError": False}
        if body.get("method") == "initialize":
            result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {"name": "echo"}}
        elif body.get("method") == "tools/list":
            result = {"tools": ECHO_TOOLS}
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": result})

    app = web.Application()
    app.router.add_route("*", "/mcp", handle)
    async with serve(app) as base:
        yield base + "/mcp", seen


@dataclass
class RunningWicket:
    wicket: Wicket
    audit_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.wicket.data_port}/mcp"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.wicket.admin_port}"

    def audit_events(self) -> list[dict[str, Any]]:
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines() if line]

    async def create_session(self, agent_id: str, **fields: Any) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{self.admin_url}/v1/sessions",
                json={"agent_id": agent_id, **fields},
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            ) as response,
        ):
            assert response.status == 201, await response.text()
            return dict(await response.json())


WicketFactory = Callable[..., Awaitable[RunningWicket]]


async def admin(
    running: RunningWicket, method: str, path: str, body: Any = None, token: str = ADMIN_TOKEN
) -> tuple[int, Any]:
    """One call to the admin port (the operator token unless ``token`` says otherwise): status, JSON or None."""
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method, running.admin_url + path, json=body, headers={"Authorization": f"Bearer {token}"}
        ) as response,
    ):
        text = await response.text()
        return response.status, json.loads(text) if text else None


@pytest.fixture
async def make_wicket(tmp_path: Path) -> AsyncIterator[WicketFactory]:
    started: list[Wicket] = []

    async def factory(upstream_url: str, policy: Policy | str | None = None, **overrides: Any) -> RunningWicket:
        if policy is None:
            policy = load_policy([DEMO_POLICY])
        elif isinstance(policy, str):
            policy = parse_policy_text(policy, "test-policy.yaml")
        audit_path = Path(overrides.pop("audit_log", tmp_path / f"audit-{len(started)}.jsonl"))
        settings = Settings(
            upstream=upstream_url,
            listen="127.0.0.1:0",
            admin_listen="127.0.0.1:0",
            audit_log=str(audit_path),
            session_key=SESSION_KEY,
            admin_token=ADMIN_TOKEN,
            environ=overrides.pop("environ", {}),
            **overrides,
        )
        wicket = Wicket(settings, policy)
        await wicket.start()
        started.append(wicket)
        return RunningWicket(wicket, audit_path)

    yield factory
    for wicket in started:
        await wicket.stop()


@pytest.fixture
async def wicket(upstream: DemoUpstream, make_wicket: WicketFactory) -> RunningWicket:
    """Wicket with the demo policy (anonymous, read-only) in front of the demo server."""
    return await make_wicket(upstream.url)


@asynccontextmanager
async def mcp_client(
    url: str, *, token: str | None = None, mode: str = "legacy", headers: dict[str, str] | None = None, **kwargs: Any
) -> AsyncIterator[Any]:
    """The real mcp SDK client, optionally presenting a Wicket runtime token (and extra HTTP headers)."""
    sent = dict(headers or {})
    if token:
        sent["Authorization"] = f"Bearer {token}"
    async with create_mcp_http_client(headers=sent or None) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode, **kwargs) as client:
            yield client


MODES = ["legacy", "2026-07-28"]
