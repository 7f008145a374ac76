"""Accountability and oversight on the admin port: a session's record and audit trail verified,
the live session list, and the live audit feed the console follows."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.audit.feed import EventFeed, FeedClosed
from proxy.audit.inspect import inspect_session
from proxy.demo.server import DemoUpstream
from tests.conftest import ADMIN_TOKEN, RunningWicket, WicketFactory, mcp_client

STRICT = "version: 1\n"
OPERATOR = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def get(running: RunningWicket, path: str, headers: dict[str, str] = OPERATOR) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(running.admin_url + path, headers=headers) as response:
        return response.status, await response.json()


async def accountability(running: RunningWicket, session_id: str) -> dict[str, Any]:
    status, body = await get(running, f"/v1/sessions/{session_id}/accountability")
    assert status == 200, body
    return dict(body)


async def busy_session(running: RunningWicket, agent: str) -> dict[str, Any]:
    """A session with a few audited calls: reads that pass and a write that needs approval."""
    grant = await running.create_session(agent, intent="file the weekly report")
    async with mcp_client(running.url, token=grant["token"]) as client:
        await client.call_tool("get_weather", {"city": "Oslo"})
        await client.call_tool("create_note", {"title": "t", "text": "x"})
    return grant


async def test_accountability_of_an_intact_session(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, STRICT)
    grant = await busy_session(running, "reporter")
    body = await accountability(running, grant["session_id"])
    session = body["session"]
    assert session["session_id"] == grant["session_id"] and session["agent_id"] == "reporter"
    assert session["mode"] == "read-only" and session["intent"] == "file the weekly report"
    assert session["expires_at"] == grant["expires_at"]
    assert body["hmac_valid"] is True
    audit = body["audit"]
    lines = running.audit_path.read_text().splitlines()
    assert audit["count"] == len(lines) and audit["head"] == json.loads(lines[-1])["hash"]
    mine = [e for e in running.audit_events() if e.get("session_id") == grant["session_id"]]
    assert audit["session_events"] == len(mine) >= 5  # session, decisions, outcome, approval request
    assert audit["session_chain_valid"] is True and audit["chain_valid"] is True and audit["problems"] == []
    assert audit["verifiable"] is True and audit["log"] == str(running.audit_path)

    status, missing = await get(running, "/v1/sessions/ses_nosuch/accountability")
    assert status == 404 and "No session" in missing["error"]
    status, _ = await get(
        running, f"/v1/sessions/{grant['session_id']}/accountability", {"Authorization": "Bearer " + grant["token"]}
    )
    assert status == 401


async def test_tampering_with_the_audit_log_is_reported(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, STRICT)
    early = await busy_session(running, "early")
    late = await busy_session(running, "late")
    lines = running.audit_path.read_bytes().splitlines(keepends=True)
    # Rewrite one of the late session's decisions from approval_required to allow.
    index = next(
        i
        for i, line in enumerate(lines)
        if json.loads(line).get("session_id") == late["session_id"] and b'"approval_required"' in line
    )
    lines[index] = lines[index].replace(b'"approval_required"', b'"allow"', 1)
    running.audit_path.write_bytes(b"".join(lines))

    tampered = (await accountability(running, late["session_id"]))["audit"]
    assert tampered["session_chain_valid"] is False and tampered["chain_valid"] is False
    assert any(f"line {index + 1}" in p and "altered" in p for p in tampered["problems"])
    # Every one of the early session's events comes before the break: they still verify.
    untouched = (await accountability(running, early["session_id"]))["audit"]
    assert untouched["session_chain_valid"] is True and untouched["chain_valid"] is False


async def test_records_removed_from_the_end_are_reported(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, STRICT)
    grant = await busy_session(running, "truncated")
    lines = running.audit_path.read_bytes().splitlines(keepends=True)
    running.audit_path.write_bytes(b"".join(lines[:-2]))  # still a valid chain, just shorter
    audit = (await accountability(running, grant["session_id"]))["audit"]
    assert audit["chain_valid"] is True and audit["session_chain_valid"] is False
    assert any("removed from the end" in p for p in audit["problems"])


async def test_a_tampered_session_record_fails_its_hmac(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, STRICT)
    grant = await running.create_session("climber")
    key = f"wicket:{{{grant['session_id']}}}:session"
    store = running.wicket.store
    raw = await store.get(key)
    assert raw is not None
    await store.put(key, raw.replace(b'"read-only"', b'"read-write"'), ttl=600)
    body = await accountability(running, grant["session_id"])
    assert body["hmac_valid"] is False and body["session"]["mode"] == "read-write"


async def test_stdout_audit_cannot_be_verified_here(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, STRICT, audit_log="-")
    grant = await running.create_session("container-bot")
    audit = (await accountability(running, grant["session_id"]))["audit"]
    assert audit["verifiable"] is False and audit["session_chain_valid"] is None and audit["log"] == "-"
    assert audit["count"] >= 1 and len(audit["head"]) == 64
    assert "stdout" in audit["problems"][0]


def test_inspect_session_ignores_a_line_still_being_written(tmp_path: Path) -> None:
    """Records appended after the sink's position was taken are fine; a half-written one is not a break."""
    from proxy.audit.chain import HashChain

    chain = HashChain()
    out = b""
    for n in range(3):
        event, line = chain.next({"event": "decision", "session_id": "ses_a" if n else "ses_b"})
        chain.advance(event)
        out += line
    path = tmp_path / "audit.jsonl"
    path.write_bytes(out + b'{"seq":4,"session_id":"ses_a"')
    found = inspect_session(path, "ses_a", written_count=2, written_head=json.loads(out.splitlines()[1])["hash"])
    assert found.chain_valid and found.session_chain_valid and found.session_events == 2 and found.problems == []
    found = inspect_session(path, "ses_a", written_count=2, written_head="0" * 64)
    assert not found.session_chain_valid and "rewritten" in found.problems[0]


# -- the session list -----------------------------------------------------------------------------


async def test_sessions_list_shows_mode_elevation_and_anomaly(
    upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(upstream.url, STRICT)
    pushy = await running.create_session("pushy", mode="read-write", scope=["list_*"])
    quiet = await running.create_session("quiet", mode="read-write")
    noisy = await running.create_session("noisy")
    async with mcp_client(running.url, token=pushy["token"]) as client:
        for _ in range(5):  # outside its scope ceiling: five denials
            assert (await client.call_tool("delete_note", {"title": "t"})).is_error
    async with mcp_client(running.url, token=noisy["token"]) as client:
        for _ in range(5):
            result = await client.call_tool("create_note", {"title": "t", "text": "x"})
        approval_id = result.meta["wicket/decision"]["approval_id"]
    async with aiohttp.ClientSession() as http:
        url = f"{running.admin_url}/v1/approvals/{approval_id}/approve"
        async with http.post(url, headers=OPERATOR) as response:
            assert response.status == 200
    status, body = await get(running, "/v1/sessions")
    assert status == 200
    by_id = {s["session_id"]: s for s in body["sessions"]}
    assert list(by_id)[:2] == [noisy["session_id"], quiet["session_id"]], "newest first"
    shown = by_id[noisy["session_id"]]
    assert set(shown) >= {"session_id", "agent_id", "mode", "scope", "created_at", "expires_at", "elevation", "anomaly"}
    assert shown["mode"] == "read-only" and shown["agent_id"] == "noisy" and shown["expires_at"] == noisy["expires_at"]
    assert shown["elevation"]["actions"] == ["tools/call:create_note"] and shown["elevation"]["expires_at"]
    # Asking for approval (five times) is not misbehaving: no denials, no writes held against it.
    assert shown["anomaly"] == {"calls": 5, "denials": 0, "writes": 0, "flagged": False}
    assert by_id[pushy["session_id"]]["anomaly"] == {"calls": 5, "denials": 5, "writes": 5, "flagged": True}
    calm = by_id[quiet["session_id"]]
    assert calm["mode"] == "read-write" and calm["elevation"] is None
    assert calm["anomaly"] == {"calls": 0, "denials": 0, "writes": 0, "flagged": False}
    assert calm["revoked"] is False


# -- the live feed --------------------------------------------------------------------------------


async def test_event_stream_carries_audit_events_live(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, STRICT)
    grant = await running.create_session("watched")
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{running.admin_url}/v1/events", headers={"Authorization": f"Bearer {grant['token']}"}
        ) as denied:
            assert denied.status == 401
        async with http.get(f"{running.admin_url}/v1/events", headers=OPERATOR) as stream:
            assert stream.status == 200 and stream.content_type == "text/event-stream"
            assert await stream.content.readline() == b": connected\n"
            async with mcp_client(running.url, token=grant["token"]) as client:
                await client.call_tool("create_note", {"title": "t", "text": "x"})
            seen: list[dict[str, Any]] = []
            while not any(e["event"] == "decision" and e["action"] == "tools/call:create_note" for e in seen):
                line = await asyncio.wait_for(stream.content.readline(), 10)
                if line.startswith(b"data: "):
                    seen.append(json.loads(line[len(b"data: ") :]))
    kinds = [e["event"] for e in seen]
    assert "approval" in kinds and "decision" in kinds
    assert all(e["seq"] > 1 for e in seen), "only events written after the connection opened"
    assert all(e.get("session_id") in (grant["session_id"], None) or e["event"] != "decision" for e in seen)


async def test_feed_drops_for_a_slow_subscriber_only() -> None:
    dropped: list[int] = []
    feed = EventFeed(queue_size=2, on_drop=lambda: dropped.append(1))
    slow, fast = feed.subscribe(), feed.subscribe()
    for n in range(3):
        feed.publish({"seq": n})
        assert await fast.next(wait=1) == {"seq": n}
    assert len(dropped) == 1 and slow.queue.qsize() == 2
    with slow:
        assert await slow.next(wait=1) == {"seq": 0}
    assert feed.subscribers == 1
    assert await fast.next(wait=0.01) is None, "no event: time for a heartbeat"
    feed.close()
    with pytest.raises(FeedClosed):
        await fast.next(wait=1)
    with pytest.raises(FeedClosed):
        feed.subscribe()


@pytest.mark.parametrize("layers", ["file", "checkpointed file", "stdout"])
async def test_the_feed_gets_each_written_event_once_after_its_append_and_never_a_failed_one(
    tmp_path: Path, layers: str, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    # The wrapped sink publishes at the end of its own append (PublishingSink adds no layer):
    # exactly the events written, in order, and a feed fault never fails the append.
    from proxy.audit.checkpoint import CheckpointingSink
    from proxy.audit.feed import PublishingSink
    from proxy.audit.sink import AuditSink, AuditUnavailable, FileAuditSink, StdoutAuditSink
    from proxy.credentials import KeyRing

    def broken_counter() -> None:
        raise RuntimeError("a metric fault")

    feed = EventFeed(queue_size=3, on_drop=broken_counter)
    inner: AuditSink = StdoutAuditSink() if layers == "stdout" else FileAuditSink(tmp_path / "a.jsonl")
    if layers == "checkpointed file":
        assert isinstance(inner, FileAuditSink)
        inner = CheckpointingSink(inner, KeyRing.generate(), every=2, interval=3600.0)
    sink = PublishingSink(inner, feed)
    with feed.subscribe() as subscription:
        written = [await sink.append({"event": "x", "n": n}) for n in range(3)]
        assert [subscription.queue.get_nowait() for _ in range(3)] == written
        assert [e["seq"] for e in written] == [1, 2, 3]
        with pytest.raises(AuditUnavailable):
            await sink.append({"event": "x", "seq": 9})  # refused before anything is written
        with pytest.raises(AuditUnavailable):
            await sink.append({"event": "x", "n": float("nan")})  # cannot be encoded
        assert subscription.queue.empty(), "nothing published for a failed append"
        for n in range(4):  # the queue overflows and its drop counter raises: the append still succeeds
            assert (await sink.append({"event": "y", "n": n}))["seq"] == 4 + n
        assert subscription.queue.qsize() == 3
    await sink.close()

    full = PublishingSink(FileAuditSink("/dev/full", fsync="always"), feed)
    with feed.subscribe() as subscription:
        with pytest.raises(AuditUnavailable, match="No space left"):
            await full.append({"event": "x"})
        assert subscription.queue.empty()
    await full.close()


async def test_shutdown_ends_open_event_streams(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, STRICT)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{running.admin_url}/v1/events", headers=OPERATOR) as stream:
            assert await stream.content.readline() == b": connected\n"
            stopping = asyncio.create_task(running.wicket.stop())
            rest = await asyncio.wait_for(stream.content.read(), 10)
            assert b"data: " not in rest
            await asyncio.wait_for(stopping, 10)


async def test_idle_event_stream_sends_heartbeats(
    upstream: DemoUpstream, make_wicket: WicketFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("proxy.admin.control.HEARTBEAT_SECONDS", 0.05)  # 15 s in production
    running = await make_wicket(upstream.url, STRICT)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{running.admin_url}/v1/events", headers=OPERATOR) as stream,
    ):
        assert await stream.content.readline() == b": connected\n"
        assert await asyncio.wait_for(stream.content.readline(), 10) == b"\n"
        assert await asyncio.wait_for(stream.content.readline(), 10) == b": heartbeat\n"
