"""The operator's tool-pin API (``/v1/tools``) and ``wicket tools``, against a real running Wicket.

Pins are made the real way: the mcp SDK client lists tools through Wicket from a real MCPServer
whose definitions the test rewrites (tests/test_tool_pinning_e2e.py has the server).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proxy.cli import main
from proxy.core.toolpins import definition_sha256
from proxy.demo.server import DemoUpstream
from tests.conftest import ADMIN_TOKEN, RunningWicket, WicketFactory, admin, mcp_client
from tests.redis_support import RedisServer
from tests.test_tool_pinning_e2e import POISON, POLICY, RugPullServer, events

SLASHED = "docs/get_page"


@pytest.fixture
async def served() -> AsyncIterator[tuple[RugPullServer, DemoUpstream]]:
    server = RugPullServer()
    server.define(SLASHED, "Fetch one documentation page.")
    upstream = DemoUpstream(server=(server.server, server.ledger))
    await upstream.start()
    yield server, upstream
    await upstream.stop()


async def pin_then_change(running: RunningWicket, server: RugPullServer) -> None:
    """List once (pins everything), rewrite two tools (one poisoned), list again (flags them)."""
    async with mcp_client(running.url) as client:
        await client.list_tools()
        server.define("get_definition", "Look up a word (v2).")
        server.define(SLASHED, "Fetch a page. " + POISON)
        await client.list_tools()


async def test_list_shows_pins_and_what_awaits_review(
    served: tuple[RugPullServer, DemoUpstream], make_wicket: WicketFactory
) -> None:
    server, upstream = served
    running = await make_wicket(upstream.url, POLICY)
    await pin_then_change(running, server)

    status, body = await admin(running, "GET", "/v1/tools")
    assert status == 200
    tools = {t["name"]: t for t in body["tools"]}
    assert set(tools) == {"get_definition", "list_words", SLASHED}
    assert tools["list_words"]["status"] == "pinned" and tools["list_words"]["pending"] is None
    changed = tools["get_definition"]
    assert changed["status"] == "changed" and changed["blocked"] is True
    assert changed["pending"]["description"] == "Look up a word (v2)." and changed["pending_sha256"]
    assert changed["definition"]["description"] == "Look up a word in the dictionary."
    assert changed["sha256"] == definition_sha256(changed["definition"])
    assert changed["pending_sha256"] == definition_sha256(changed["pending"])
    assert tools[SLASHED]["status"] == "poisoned"
    assert {"exfiltration", "concealment"} <= {f["category"] for f in tools[SLASHED]["findings"]}
    assert all(t["upstream"] == upstream.url for t in tools.values())

    status, body = await admin(running, "GET", "/v1/tools?status=pending")
    assert status == 200 and {t["name"] for t in body["tools"]} == {"get_definition", SLASHED}
    status, body = await admin(running, "GET", f"/v1/tools?upstream={upstream.url}")
    assert status == 200 and len(body["tools"]) == 3
    status, body = await admin(running, "GET", "/v1/tools?upstream=http://elsewhere/mcp")
    assert status == 200 and body["tools"] == []
    assert (await admin(running, "GET", "/v1/tools?status=bogus"))[0] == 400
    assert (await admin(running, "GET", "/v1/tools", token=""))[0] == 401


async def test_approve_validates_and_answers_like_the_other_operator_calls(
    served: tuple[RugPullServer, DemoUpstream], make_wicket: WicketFactory
) -> None:
    server, upstream = served
    running = await make_wicket(upstream.url, POLICY)
    await pin_then_change(running, server)
    path = "/v1/tools/get_definition/approve"

    assert (await admin(running, "POST", "/v1/tools/unknown_tool/approve"))[0] == 404
    status, body = await admin(running, "POST", "/v1/tools/list_words/approve")
    assert status == 409 and "not waiting for approval" in body["error"]
    for bad in ({"approver": ""}, {"approver": "a\nb"}, {"who": "x"}, {"upstream": 5}, ["alice"]):
        assert (await admin(running, "POST", path, bad))[0] == 400, bad
    status, body = await admin(running, "POST", path, {"sha256": "0" * 12})
    assert status == 409 and "review the new definition" in body["error"]
    status, body = await admin(running, "POST", path, {"upstream": "http://elsewhere/mcp"})
    assert status == 404
    assert events(running, "tool_approved") == []

    _, listing = await admin(running, "GET", "/v1/tools?status=pending")
    pending = next(t["pending_sha256"] for t in listing["tools"] if t["name"] == "get_definition")
    # The configured upstream, however it is spelled, and the hash the operator reviewed.
    spelled = upstream.url.replace("http://", "HTTP://") + "/"
    status, body = await admin(running, "POST", path, {"upstream": spelled, "sha256": pending[:16]})
    assert status == 200, body
    assert body["tool"]["status"] == "approved" and body["tool"]["approved_by"].startswith("operator:")
    (approved,) = events(running, "tool_approved")
    assert approved["approver"] == body["tool"]["approved_by"] and approved["sha256"] == pending
    assert (await admin(running, "POST", path))[0] == 409


async def test_the_control_api_answers_503_while_the_store_is_down(
    served: tuple[RugPullServer, DemoUpstream], make_wicket: WicketFactory, redis_server: RedisServer
) -> None:
    server, upstream = served
    key = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    running = await make_wicket(
        upstream.url, POLICY, store=redis_server.url, environ={"WICKET_SIGNING_KEY": key.decode()}
    )
    await pin_then_change(running, server)
    redis_server.kill()
    status, body = await admin(running, "GET", "/v1/tools")
    assert status == 503 and "state store is unavailable" in body["error"]
    assert (await admin(running, "POST", "/v1/tools/get_definition/approve"))[0] == 503


async def test_cli_lists_and_approves(
    served: tuple[RugPullServer, DemoUpstream],
    make_wicket: WicketFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, upstream = served
    running = await make_wicket(upstream.url, POLICY)
    grant = await running.create_session("cli-agent")
    monkeypatch.setenv("WICKET_ADMIN_TOKEN", grant["token"])  # an agent's token is no operator credential
    url = ["--admin-url", running.admin_url]
    assert await asyncio.to_thread(main, ["tools", "list", *url]) == 1
    assert "Operator credential required" in capsys.readouterr().err

    monkeypatch.setenv("WICKET_ADMIN_TOKEN", ADMIN_TOKEN)
    assert await asyncio.to_thread(main, ["tools", "list", *url]) == 0
    assert capsys.readouterr().out.strip() == "no tools awaiting approval"
    await pin_then_change(running, server)

    assert await asyncio.to_thread(main, ["tools", "list", *url]) == 0
    table = capsys.readouterr().out.splitlines()
    headers = ["NAME", "STATUS", "BLOCKED", "EFFECT", "PINNED", "PENDING", "CHANGED", "UPSTREAM", "FINDINGS"]
    assert table[0].split() == headers
    rows = {line.split()[0]: line for line in table[1:]}
    assert set(rows) == {"get_definition", SLASHED}
    assert rows[SLASHED].split()[1:3] == ["poisoned", "yes"] and "exfiltration" in rows[SLASHED]
    assert rows["get_definition"].split()[1:3] == ["changed", "yes"]
    assert await asyncio.to_thread(main, ["tools", "list", "--all", *url]) == 0
    assert "list_words" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["tools", "list", "--json", "--upstream", upstream.url, *url]) == 0
    records = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in records} == {"get_definition", SLASHED}

    argv = ["tools", "approve", SLASHED, "--approver", "dana", "--upstream", upstream.url, *url]
    assert await asyncio.to_thread(main, argv) == 0
    assert capsys.readouterr().out.startswith(f"approved {SLASHED}: sha256 ")
    assert await asyncio.to_thread(main, ["tools", "approve", "get_definition", "--sha256", "ffffffff", *url]) == 1
    assert "review the new definition" in capsys.readouterr().err
    assert await asyncio.to_thread(main, ["tools", "approve", "get_definition", *url]) == 0
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["tools", "approve", "get_definition", *url]) == 1
    assert "not waiting for approval" in capsys.readouterr().err
    assert await asyncio.to_thread(main, ["tools", "approve", "nope", *url]) == 1
    assert "HTTP 404" in capsys.readouterr().err
    assert await asyncio.to_thread(main, ["tools", "list", *url]) == 0
    assert capsys.readouterr().out.strip() == "no tools awaiting approval"
    approvers = [e["approver"] for e in events(running, "tool_approved")]
    assert len(approvers) == 2 and approvers[0].startswith("dana (operator:") and approvers[1].startswith("operator:")

    async with mcp_client(running.url) as client:
        listed = {tool.name for tool in (await client.list_tools()).tools}
        assert listed == {"get_definition", "list_words", SLASHED}
        assert not (await client.call_tool(SLASHED, {"word": "intro"})).is_error
    assert server.ledger.names() == [SLASHED]
