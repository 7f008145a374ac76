"""Knowing a tool before its first call (proxy/adapters/tool_catalog.py).

A fresh Wicket, a client that never lists: the tool's annotations still decide its effect,
because Wicket lists the upstream's tools itself and pins them in the store, where another
replica finds them. A name the upstream does not list never reaches it. Everything is real:
the stdio test server (its per-process ledger proves what ran), the mcp SDK client, Redis.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import RunningWicket, WicketFactory, mcp_client
from tests.redis_support import RedisServer
from tests.test_stdio_upstream import COMMAND, POLICY
from tests.test_tool_pinning_e2e import events, metric, refusal_of


async def stdio(make_wicket: WicketFactory, **overrides: Any) -> RunningWicket:
    return await make_wicket("", POLICY, upstream_command=COMMAND, upstream_transport="stdio", **overrides)


async def ledger(client: Any) -> list[str]:
    """What the session's own server process ran (tests/stdio_server.py ``get_ledger``)."""
    result = await client.call_tool("get_ledger", {})
    assert not result.is_error, result
    return list(result.structured_content["result"])


def lists(running: RunningWicket, outcome: str = "ok") -> float:
    return metric(running, "wicket_tool_catalog_lists_total", outcome=outcome)


async def test_a_destructive_tool_is_destructive_on_its_first_call_without_a_list(make_wicket: WicketFactory) -> None:
    """``tidy_up`` has no keyword in its name; only its ``destructiveHint`` makes it destructive."""
    running = await stdio(make_wicket)
    async with mcp_client(running.url, mode="legacy") as client:
        decision = refusal_of(await client.call_tool("tidy_up", {"path": "/srv"}))
        assert decision["effect"] == "destructive", decision
        assert decision["decision"] != "allow"
        assert await ledger(client) == [], "tidy_up never ran"
    assert lists(running) == 1
    pinned = {e["tool"]: e for e in events(running, "tool_pinned")}
    assert "tidy_up" in pinned and pinned["tidy_up"]["agent_id"] == "wicket"


async def test_a_tool_the_upstream_does_not_list_is_refused(make_wicket: WicketFactory) -> None:
    running = await stdio(make_wicket, store="memory")
    async with mcp_client(running.url, mode="legacy") as client:
        first = refusal_of(await client.call_tool("wipe_everything_quietly", {}))
        second = refusal_of(await client.call_tool("another_invented_name", {}))
        assert await ledger(client) == []
    assert "does not list a tool named 'wipe_everything_quietly'" in first["reason"]
    assert first["decision"] == second["decision"] == "deny"
    assert lists(running) == 1, "invented names do not make Wicket list again and again"


async def test_a_second_replica_knows_the_definitions_from_the_store(
    make_wicket: WicketFactory, redis_server: RedisServer
) -> None:
    key = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    shared = {"store": redis_server.url, "environ": {"WICKET_SIGNING_KEY": key.decode()}}
    first = await stdio(make_wicket, **shared)
    async with mcp_client(first.url, mode="legacy") as client:
        await client.list_tools()
    second = await stdio(make_wicket, **shared)
    async with mcp_client(second.url, mode="2026-07-28") as client:
        decision = refusal_of(await client.call_tool("tidy_up", {"path": "/srv"}))
    assert decision["effect"] == "destructive", decision
    assert lists(second) == 0 and lists(first) == 0, "the relayed list pinned them; the replica read the store"
    assert not events(second, "tool_pinned")
