"""Revocation: an operator revokes an agent, a session or a token, and the next call is refused."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from proxy.cli import main
from proxy.demo.server import DemoUpstream
from tests.conftest import ADMIN_TOKEN, RunningWicket, WicketFactory, mcp_client

STRICT = "version: 1\n"


async def revoke(running: RunningWicket, kind: str, ident: str, token: str = ADMIN_TOKEN) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{running.admin_url}/v1/revocations",
            json={"kind": kind, "id": ident},
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        return response.status


async def call(running: RunningWicket, token: str) -> int:
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    params = {"name": "get_weather", "arguments": {"city": "Oslo"}, "_meta": meta}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    headers = {
        "Accept": "application/json, text/event-stream",
        "Authorization": f"Bearer {token}",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": "get_weather",
    }
    async with aiohttp.ClientSession() as http, http.post(running.url, json=body, headers=headers) as response:
        return response.status


@pytest.mark.parametrize("kind", ["agent", "session", "token"])
async def test_revocation_refuses_the_next_call(kind: str, upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, STRICT)
    grant = await running.create_session("alice")
    other = await running.create_session("bob")
    assert await call(running, grant["token"]) == 200
    ident = {"agent": "alice", "session": grant["session_id"], "token": grant["token"]}[kind]
    assert await revoke(running, kind, ident) == 201
    assert await call(running, grant["token"]) == 401
    assert await call(running, other["token"]) == 200, "only the revoked item is refused"
    assert upstream.ledger.names() == ["get_weather", "get_weather"]
    event = [e for e in running.audit_events() if e["event"] == "revocation"][-1]
    assert event["kind"] == kind
    assert grant["token"] not in running.audit_path.read_text()


async def test_revocation_ends_an_open_mcp_session(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, STRICT)
    grant = await running.create_session("alice")
    async with mcp_client(running.url, token=grant["token"]) as client:
        assert not (await client.call_tool("get_weather", {"city": "Oslo"})).is_error
        assert await revoke(running, "session", grant["session_id"]) == 201
        with pytest.raises(Exception):  # noqa: B017 - the SDK surfaces the 401 as a transport error
            await client.call_tool("get_weather", {"city": "Rome"})
    assert upstream.ledger.names() == ["get_weather"]


async def test_an_agent_cannot_revoke_with_its_own_token(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, STRICT)
    grant = await running.create_session("alice")
    assert await revoke(running, "agent", "bob", token=grant["token"]) == 401
    assert await revoke(running, "planet", "x") == 400


async def test_revoke_cli(
    upstream: DemoUpstream,
    make_wicket: WicketFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running = await make_wicket(upstream.url, STRICT)
    grant = await running.create_session("alice")
    monkeypatch.setenv("WICKET_ADMIN_TOKEN", ADMIN_TOKEN)
    code = await asyncio.to_thread(main, ["revoke", "token", grant["token"], "--admin-url", running.admin_url])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["kind"] == "token" and printed["id"] != grant["token"] and len(printed["id"]) == 16
    assert await call(running, grant["token"]) == 401
