"""The guardian pipeline end to end: the real mcp SDK client, Wicket, the demo MCP server, and
Deep Guard through the real anthropic SDK against a local fake Messages API."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.demo.server import DemoUpstream, free_port
from tests import fake_anthropic as fake_module
from tests.conftest import RunningWicket, WicketFactory, mcp_client
from tests.fake_anthropic import API_KEY, FakeAnthropic

fake_anthropic = fake_module.fake_anthropic
STRICT = "version: 1\n"


def record_of(result: Any) -> dict[str, Any]:
    assert result.is_error, result
    return dict(result.meta["wicket/decision"])


async def with_deep(upstream: DemoUpstream, make_wicket: WicketFactory, fake: FakeAnthropic) -> RunningWicket:
    env = {"ANTHROPIC_API_KEY": API_KEY, "ANTHROPIC_BASE_URL": fake.url, "WICKET_DEEP_MODEL": "claude-test"}
    return await make_wicket(upstream.url, STRICT, environ=env)


async def test_deep_allows_a_destructive_call_in_a_read_write_session(
    upstream: DemoUpstream, make_wicket: WicketFactory, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.reply(verdict="allow", confidence=0.93, reasoning="Deleting the draft matches the cleanup intent.")
    # Data protection would refuse a password in a destructive call outright; auditing it instead lets
    # this test see that Deep's prompt still never carries the value.
    env = {"ANTHROPIC_API_KEY": API_KEY, "ANTHROPIC_BASE_URL": fake_anthropic.url, "WICKET_DEEP_MODEL": "claude-test"}
    policy = STRICT + "data_protection:\n  secrets: {arguments: audit}\n"
    running = await make_wicket(upstream.url, policy, environ=env)
    grant = await running.create_session("cleaner", mode="read-write", intent="remove stale draft notes")
    async with mcp_client(running.url, token=grant["token"]) as client:
        result = await client.call_tool("delete_note", {"title": "draft", "password": "hunter2-secret"})
    assert not result.is_error
    assert upstream.ledger.names() == ["delete_note"]
    sent = fake_anthropic.requests[-1]
    assert "remove stale draft notes" in sent.user_text
    assert "hunter2-secret" not in sent.user_text
    decision = next(e for e in running.audit_events() if e.get("action") == "tools/call:delete_note")
    assert decision["tier"] == "deep" and decision["decision"] == "allow" and decision["confidence"] == 0.93


async def test_deep_denies_and_the_upstream_never_runs_it(
    upstream: DemoUpstream, make_wicket: WicketFactory, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.reply(verdict="deny", confidence=0.97, reasoning="Dropping a table is not part of the intent.")
    running = await with_deep(upstream, make_wicket, fake_anthropic)
    grant = await running.create_session("reporter", mode="read-write", intent="write the weekly report")
    async with mcp_client(running.url, token=grant["token"], mode="2026-07-28") as client:
        record = record_of(await client.call_tool("drop_table", {"table": "users"}))
    assert record["decision"] == "deny" and record["tier"] == "deep" and record["confidence"] == 0.97
    assert "not part of the intent" in record["reason"]
    assert upstream.ledger.names() == []


@pytest.mark.parametrize("failure", ["500", "malformed", "down"])
async def test_deep_unreachable_fails_closed(
    failure: str, upstream: DemoUpstream, make_wicket: WicketFactory, fake_anthropic: FakeAnthropic
) -> None:
    running = await with_deep(upstream, make_wicket, fake_anthropic)
    if failure == "500":
        fake_anthropic.fail(500)
    elif failure == "malformed":
        fake_anthropic.reply_malformed("text_only")
    else:
        await fake_anthropic.stop()
    grant = await running.create_session("admin-bot", mode="read-write", intent="rotate roles")
    async with mcp_client(running.url, token=grant["token"]) as client:
        record = record_of(await client.call_tool("grant_role", {"user": "u", "role": "root"}))
        write = await client.call_tool("create_note", {"title": "t", "text": "x"})
    assert record["decision"] == "deny" and record["tier"] == "deep" and record["effect"] == "admin"
    assert "Deep Guard unavailable" in record["reason"] and "fail closed" in record["reason"]
    assert not write.is_error, "mutating actions never need Deep"
    assert upstream.ledger.names() == ["create_note"]


async def test_sql_argument_makes_a_read_tool_destructive(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, STRICT)
    grant = await running.create_session("analyst", mode="read-write")
    async with mcp_client(running.url, token=grant["token"]) as client:
        ok = await client.call_tool("run_query", {"sql": "SELECT 'drop table' AS x FROM notes"})
        record = record_of(await client.call_tool("run_query", {"sql": "select 1; dR/**/Op  TABLE users"}))
    assert not ok.is_error
    # Without Deep Guard a destructive call waits for a human to approve exactly this call.
    assert record["effect"] == "destructive" and record["decision"] == "approval_required"
    assert "Argument findings: sql" in record["reason"]
    assert upstream.ledger.names() == ["run_query"]


async def test_write_burst_escalates_the_effect(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    """After 5 calls, a write ratio of 80% or more raises the next action one tier (SPEC §8)."""
    running = await make_wicket(upstream.url, STRICT)
    grant = await running.create_session("spammer", mode="read-write")
    async with mcp_client(running.url, token=grant["token"]) as client:
        for i in range(5):
            assert not (await client.call_tool("send_message", {"to": f"u{i}", "text": "hi"})).is_error
        record = record_of(await client.call_tool("send_message", {"to": "u5", "text": "hi"}))
    assert record["effect"] == "destructive" and record["escalated_from"] == "mutating"
    assert "anomaly escalation: write ratio 100% over 5 calls" in record["reason"]
    assert upstream.ledger.names() == ["send_message"] * 5
    event = [e for e in running.audit_events() if e["event"] == "decision"][-1]
    assert event["escalated_from"] == "mutating"


async def test_guardian_service_down_spot_falls_back_and_deep_fails_closed(
    upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    env = {"WICKET_GUARDIAN_KEY": "k" * 40}
    running = await make_wicket(
        upstream.url, STRICT, environ=env, guardian_url=f"http://127.0.0.1:{free_port()}", guardian_client_id="t"
    )
    grant = await running.create_session("worker", mode="read-write")
    async with mcp_client(running.url, token=grant["token"]) as client:
        write = await client.call_tool("create_note", {"title": "t", "text": "x"})
        record = record_of(await client.call_tool("delete_note", {"title": "t"}))
    assert not write.is_error
    assert record["tier"] == "spot" and "fail closed" in record["reason"]
    assert upstream.ledger.names() == ["create_note"]
