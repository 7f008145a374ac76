"""Just-in-time elevation with human approval (SPEC §8), end to end.

The real mcp SDK client talks to the demo MCP server through Wicket; an operator decides
through the admin API, the CLI or (in another suite) the console. The demo server's ledger
proves what really ran: a call that was refused never appears in it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proxy.cli import main
from proxy.core.approvals import ApprovalRequest, Elevation, Grant, decided, merge_grants
from proxy.core.policy import ApprovalSettings, PolicyError, WebhookSettings, load_policy, parse_policy_text
from proxy.core.sessions import RecordSigner, SessionManager
from proxy.demo.server import DemoUpstream, free_port
from proxy.state.redis import RedisStore
from tests import fake_anthropic as fake_module
from tests.conftest import ADMIN_TOKEN, MODES, SESSION_KEY, RunningWicket, WicketFactory, admin, mcp_client, serve
from tests.fake_anthropic import API_KEY, FakeAnthropic
from tests.redis_support import RedisServer
from tests.test_policy import assert_agrees_with_reference
from tests.waiting import eventually

fake_anthropic = fake_module.fake_anthropic
STRICT = "version: 1\n"
CREATE = ("create_note", {"title": "minutes", "text": "we met"})
CREATE_LABEL = "tools/call:create_note"


def record_of(result: Any) -> dict[str, Any]:
    assert result.is_error, result
    return dict(result.meta["wicket/decision"])


def approval_events(running: RunningWicket) -> list[dict[str, Any]]:
    return [e for e in running.audit_events() if e["event"] == "approval"]


# -- the whole flow, as an agent and an operator live it ------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_write_needs_approval_then_exactly_that_action_passes(
    mode: str, upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(upstream.url, STRICT)
    grant = await running.create_session("note-taker", intent="keep the meeting minutes")
    async with mcp_client(running.url, token=grant["token"], mode=mode) as client:
        # 1. A write in a read-only session is refused with an approval id and instructions.
        first = record_of(await client.call_tool(*CREATE, meta={"wicket/intent": "save today's minutes"}))
        assert first["decision"] == "approval_required" and first["tier"] == "fast"
        approval_id = first["approval_id"]
        assert approval_id.startswith("apr_")
        assert f"wicket approvals approve {approval_id}" in first["reason"] and "retry" in first["reason"]
        # Retrying before anyone decides reuses the pending request instead of raising another.
        again = record_of(await client.call_tool(*CREATE))
        assert again["approval_id"] == approval_id and again["decision_id"] != first["decision_id"]

        # 2. The agent's own token can neither approve, revoke nor create sessions.
        token = grant["token"]
        assert (await admin(running, "POST", f"/v1/approvals/{approval_id}/approve", token=token))[0] == 401
        assert (await admin(running, "GET", "/v1/approvals", token=token))[0] == 401
        revoke = {"kind": "session", "id": grant["session_id"]}
        assert (await admin(running, "POST", "/v1/revocations", revoke, token=token))[0] == 401
        assert (await admin(running, "POST", "/v1/sessions", {"agent_id": "x"}, token=token))[0] == 401
        assert record_of(await client.call_tool(*CREATE))["approval_id"] == approval_id, "still pending"

        # 3. The operator sees the request, with the agent's stated reason, and approves it.
        status, listed = await admin(running, "GET", "/v1/approvals")
        assert status == 200
        (item,) = [a for a in listed["approvals"] if a["approval_id"] == approval_id]
        assert item["status"] == "pending" and item["actions"] == [CREATE_LABEL] and item["effect"] == "mutating"
        assert item["agent_id"] == "note-taker" and item["session_id"] == grant["session_id"]
        assert item["reason"] == "save today's minutes"
        assert item["decided_by"] is None and item["elevation_expires_at"] is None
        status, approved = await admin(running, "POST", f"/v1/approvals/{approval_id}/approve", {"approver": "alice"})
        assert status == 200, approved
        assert approved["approval"]["status"] == "approved"
        assert approved["approval"]["decided_by"].startswith("alice (operator:")
        assert approved["elevation"]["actions"] == [CREATE_LABEL]
        assert approved["elevation"]["session_id"] == grant["session_id"]
        assert approved["elevation"]["expires_at"] == approved["approval"]["elevation_expires_at"]
        assert upstream.ledger.names() == []

        # 4. The retry passes, and the upstream really ran it.
        retried = await client.call_tool(*CREATE)
        assert not retried.is_error, retried
        assert upstream.ledger.names() == ["create_note"]

        # 5. A different tool still needs its own approval.
        other = record_of(await client.call_tool("send_message", {"to": "bob", "text": "hi"}))
        assert other["decision"] == "approval_required" and other["approval_id"] != approval_id
        assert upstream.ledger.names() == ["create_note"]

    # A decided request cannot be decided again.
    status, body = await admin(running, "POST", f"/v1/approvals/{approval_id}/deny")
    assert status == 409 and "already approved" in body["error"]
    # Every step is audited with the approver's identity, and never with the operator's token.
    steps = [(e["step"], e["approval_id"]) for e in approval_events(running)]
    assert ("requested", approval_id) in steps and ("approved", approval_id) in steps
    assert steps.count(("requested", approval_id)) == 1, "the retries reused the pending request"
    approved_event = next(e for e in approval_events(running) if e["step"] == "approved")
    assert approved_event["approver"].startswith("alice (operator:") and approved_event["approver_name"] == "alice"
    assert approved_event["actions"] == [CREATE_LABEL] and approved_event["session_id"] == grant["session_id"]
    requested_event = next(e for e in approval_events(running) if e["step"] == "requested")
    assert requested_event["intent"] == "save today's minutes"
    decision = next(
        e for e in running.audit_events() if e.get("approval_id") == approval_id and e["event"] == "decision"
    )
    assert decision["decision"] == "approval_required"
    assert ADMIN_TOKEN not in running.audit_path.read_text()
    metrics = (await _metrics(running)).splitlines()
    assert 'wicket_approvals_total{outcome="approved"} 1.0' in metrics
    assert "wicket_elevated_calls_total 1.0" in metrics
    assert "wicket_elevations_active 1.0" in metrics


async def test_elevation_expires_and_the_session_is_read_only_again(
    upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(upstream.url, "version: 1\napprovals: {elevation_seconds: 1}\n")
    grant = await running.create_session("brief-writer")
    async with mcp_client(running.url, token=grant["token"]) as client:
        approval_id = record_of(await client.call_tool(*CREATE))["approval_id"]
        assert (await admin(running, "POST", f"/v1/approvals/{approval_id}/approve"))[0] == 200
        assert not (await client.call_tool(*CREATE)).is_error
        passed = 1

        async def read_only_again() -> bool:
            nonlocal passed
            result = await client.call_tool(*CREATE)
            if not result.is_error:
                passed += 1
                return False
            return record_of(result)["decision"] == "approval_required"

        await eventually(read_only_again, "the one-second elevation to end")
    assert upstream.ledger.names() == ["create_note"] * passed, "the refused call after expiry never ran"
    listed = (await admin(running, "GET", "/v1/sessions"))[1]
    mine = next(s for s in listed["sessions"] if s["session_id"] == grant["session_id"])
    assert mine["elevation"] is None and mine["mode"] == "read-only"


async def test_admin_actions_are_never_elevated(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, STRICT)
    grant = await running.create_session("ops-bot")
    async with mcp_client(running.url, token=grant["token"]) as client:
        record = record_of(await client.call_tool("grant_role", {"user": "eve", "role": "root"}))
    assert record["decision"] == "deny" and record["effect"] == "admin"
    assert "approval_id" not in record and "never elevated" in record["reason"]
    status, listed = await admin(running, "GET", "/v1/approvals?status=all")
    assert status == 200 and listed["approvals"] == []
    assert upstream.ledger.names() == []


async def test_anonymous_sessions_are_never_elevated(upstream: DemoUpstream, wicket: RunningWicket) -> None:
    async with mcp_client(wicket.url) as client:
        record = record_of(await client.call_tool(*CREATE))
    assert record["decision"] == "deny" and "approval_id" not in record
    assert "Anonymous sessions are never elevated" in record["reason"]
    assert (await admin(wicket, "GET", "/v1/approvals?status=all"))[1]["approvals"] == []


async def test_expired_request_cannot_be_approved(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, "version: 1\napprovals: {request_ttl_seconds: 1}\n")
    grant = await running.create_session("slowpoke")
    async with mcp_client(running.url, token=grant["token"]) as client:
        approval_id = record_of(await client.call_tool(*CREATE))["approval_id"]

        async def expired() -> bool:
            _, found = await admin(running, "GET", f"/v1/approvals/{approval_id}")
            return bool(found["status"] == "expired")

        await eventually(expired, "the one-second request to expire")
        status, body = await admin(running, "POST", f"/v1/approvals/{approval_id}/approve", {"approver": "late"})
        assert status == 409 and "expired" in body["error"]
        assert record_of(await client.call_tool(*CREATE))["approval_id"] != approval_id, "a fresh request"
    assert upstream.ledger.names() == []
    expired_event = next(e for e in approval_events(running) if e["step"] == "expired")
    assert expired_event["approval_id"] == approval_id and expired_event["approver_name"] == "late"
    assert all(e["step"] != "approved" for e in approval_events(running))
    assert (await admin(running, "GET", "/v1/approvals"))[1]["approvals"][0]["status"] == "pending"


async def test_deny_keeps_the_call_refused(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, STRICT)
    grant = await running.create_session("pushy")
    async with mcp_client(running.url, token=grant["token"]) as client:
        approval_id = record_of(await client.call_tool(*CREATE))["approval_id"]
        status, body = await admin(running, "POST", f"/v1/approvals/{approval_id}/deny")
        assert status == 200 and body["approval"]["status"] == "denied" and "elevation" not in body
        # The agent's identical retry gets the denial, not a fresh request for the operator to wade through.
        retried = record_of(await client.call_tool(*CREATE))
        assert retried["decision"] == "deny" and "approval_id" not in retried
        assert f"denied approval {approval_id}" in retried["reason"] and "Do not retry" in retried["reason"]
    assert upstream.ledger.names() == []
    assert [e["step"] for e in approval_events(running)] == ["requested", "denied"]
    assert (await admin(running, "POST", "/v1/approvals/apr_nosuch/approve"))[0] == 404
    assert (await admin(running, "GET", "/v1/approvals/apr_nosuch"))[0] == 404
    assert (await admin(running, "POST", f"/v1/approvals/{approval_id}/approve", {"who": "x"}))[0] == 400
    assert (await admin(running, "GET", "/v1/approvals?status=maybe"))[0] == 400
    denied = next(e for e in approval_events(running) if e["step"] == "denied")
    assert denied["approver"].startswith("operator:") and "approver_name" not in denied


async def test_elevation_does_not_skip_deep_guard(
    upstream: DemoUpstream, make_wicket: WicketFactory, fake_anthropic: FakeAnthropic
) -> None:
    """An elevation lifts the read-only rule only: a destructive call still needs Deep Guard's allow,
    and a call Deep Guard refuses is refused outright, without asking a human for a useless approval."""
    env = {"ANTHROPIC_API_KEY": API_KEY, "ANTHROPIC_BASE_URL": fake_anthropic.url, "WICKET_DEEP_MODEL": "claude-test"}
    running = await make_wicket(upstream.url, STRICT, environ=env)
    for title, verdict in (("linked", "deny"), ("old", "allow")):
        fake_anthropic.reply(verdict=verdict, confidence=0.95, reasoning=f"Deep Guard says {verdict}.")
        grant = await running.create_session(f"gardener-{title}", intent="prune the notes")
        async with mcp_client(running.url, token=grant["token"]) as client:
            first = record_of(await client.call_tool("delete_note", {"title": title}))
            if verdict == "deny":
                assert first["decision"] == "deny" and first["tier"] == "deep" and "says deny" in first["reason"]
                assert "approval_id" not in first
                continue
            assert first["decision"] == "approval_required"
            assert (await admin(running, "POST", f"/v1/approvals/{first['approval_id']}/approve"))[0] == 200
            assert not (await client.call_tool("delete_note", {"title": title})).is_error
    assert upstream.ledger.calls == [("delete_note", {"title": "old"})]
    # One review per call; the approved retry reuses Deep's verdict on exactly that call (its short cache).
    assert len(fake_anthropic.requests) == 2
    assert [e["step"] for e in approval_events(running)] == ["requested", "approved"]


async def test_spot_approval_in_a_read_write_session_is_satisfied_by_an_elevation(
    upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    """Spot's approval_required gets an approval id too; once approved, that action passes Spot."""
    policy = "version: 1\nguardian: {spot: {approval_at: 0.05, deny_at: 0.95}}\n"
    running = await make_wicket(upstream.url, policy)
    grant = await running.create_session("cautious", mode="read-write")
    async with mcp_client(running.url, token=grant["token"]) as client:
        record = record_of(await client.call_tool(*CREATE))
        assert record["decision"] == "approval_required" and record["tier"] == "spot"
        assert "Spot Guard needs human approval" in record["reason"]
        status, approved = await admin(running, "POST", f"/v1/approvals/{record['approval_id']}/approve")
        assert status == 200 and approved["elevation"]["actions"] == [CREATE_LABEL]
        assert not (await client.call_tool(*CREATE)).is_error
        other = record_of(await client.call_tool("send_message", {"to": "a", "text": "b"}))
        assert other["decision"] == "approval_required" and other["tier"] == "spot"
    assert upstream.ledger.names() == ["create_note"]
    (allowed,) = [
        e
        for e in running.audit_events()
        if e["event"] == "decision" and e["decision"] == "allow" and e["action"] == CREATE_LABEL
    ]
    assert allowed["tier"] == "spot" and "An operator-approved elevation covers this action." in allowed["reason"]


async def test_nothing_is_elevated_without_an_audit_record(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    # /dev/full fails every write with ENOSPC: the approval cannot be audited, so it does not happen.
    running = await make_wicket(upstream.url, STRICT, audit_log="/dev/full")
    sessions = running.wicket.sessions
    session = await sessions.create("unaudited", scope=["*"], ttl_seconds=600)
    token = await sessions.issue_token(session)
    async with mcp_client(running.url, token=token) as client:
        approval_id = record_of(await client.call_tool(*CREATE))["approval_id"]
        status, body = await admin(running, "POST", f"/v1/approvals/{approval_id}/approve")
        assert status == 503 and "nothing was approved" in body["error"]
        assert (await admin(running, "GET", f"/v1/approvals/{approval_id}"))[1]["status"] == "pending"
        assert record_of(await client.call_tool(*CREATE))["approval_id"] == approval_id
    assert upstream.ledger.names() == []


# -- the webhook ----------------------------------------------------------------------------------


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[Any]]]:
    """A real local HTTP server that records the JSON bodies POSTed to it."""
    received: list[Any] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hooks/wicket", hook)
    async with serve(app) as base:
        yield base + "/hooks/wicket", received


@pytest.mark.parametrize("shape", ["wicket", "slack"])
async def test_webhook_announces_every_new_request(
    shape: str, upstream: DemoUpstream, make_wicket: WicketFactory, receiver: tuple[str, list[Any]]
) -> None:
    url, received = receiver
    policy = f"version: 1\napprovals:\n  webhook: {{url: '{url}', format: {shape}, timeout_seconds: 5}}\n"
    running = await make_wicket(upstream.url, policy)
    grant = await running.create_session("notifier")
    async with mcp_client(running.url, token=grant["token"]) as client:
        intent = {"wicket/intent": "<!channel> ping everyone & more"}
        approval_id = record_of(await client.call_tool(*CREATE, meta=intent))["approval_id"]
        record_of(await client.call_tool(*CREATE))  # reused: no second notification
        record_of(await client.call_tool("send_message", {"to": "a", "text": "b"}))

    async def two_arrived() -> bool:
        return len(received) >= 2

    await eventually(two_arrived, "two webhook deliveries")
    await asyncio.sleep(0.2)
    assert len(received) == 2, "one POST per new request, none for a reused one"
    first = received[0]
    if shape == "wicket":
        assert first["approval_id"] == approval_id and first["status"] == "pending"
        assert first["actions"] == [CREATE_LABEL] and first["agent_id"] == "notifier"
        assert first["reason"] == "<!channel> ping everyone & more"
    else:
        assert set(first) == {"text", "blocks"}
        assert f"wicket approvals approve {approval_id}" in first["text"]
        commands = first["blocks"][1]["text"]["text"]
        assert (
            f"wicket approvals approve {approval_id}" in commands and f"wicket approvals deny {approval_id}" in commands
        )
        details = first["blocks"][0]["text"]["text"]
        assert "&lt;!channel&gt; ping everyone &amp; more" in details and "<!channel>" not in json.dumps(first)
        assert all(block["type"] in ("section", "context") for block in first["blocks"])


async def test_a_failing_webhook_never_changes_the_decision(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    dead = f"http://127.0.0.1:{free_port()}/nobody-listens"
    running = await make_wicket(upstream.url, f"version: 1\napprovals: {{webhook: {{url: '{dead}'}}}}\n")
    grant = await running.create_session("unheard")
    async with mcp_client(running.url, token=grant["token"]) as client:
        record = record_of(await client.call_tool(*CREATE))
    assert record["decision"] == "approval_required" and record["approval_id"].startswith("apr_")

    async def counted() -> bool:
        return "wicket_webhook_failures_total 1.0" in await _metrics(running)

    await eventually(counted, "the failed delivery to be counted")


# -- races and replicas ---------------------------------------------------------------------------


async def test_two_operators_deciding_at_once_one_wins(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, STRICT)
    grant = await running.create_session("contested")
    async with mcp_client(running.url, token=grant["token"]) as client:
        approval_id = record_of(await client.call_tool(*CREATE))["approval_id"]
    results = await asyncio.gather(
        *(
            admin(running, "POST", f"/v1/approvals/{approval_id}/{verb}", {"approver": f"op{i}"})
            for i, verb in enumerate(["approve", "deny"] * 4)
        )
    )
    assert sorted(status for status, _ in results) == [200] + [409] * 7
    decided_events = [e for e in approval_events(running) if e["step"] in ("approved", "denied")]
    assert len(decided_events) == 1


@pytest.fixture
def signing_env(tmp_path: Path) -> dict[str, str]:
    key = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "signing.pem").write_bytes(key)
    return {"WICKET_SIGNING_KEY": str(tmp_path / "signing.pem")}


async def test_redis_replicas_share_requests_and_elevations(
    upstream: DemoUpstream, make_wicket: WicketFactory, redis_server: RedisServer, signing_env: dict[str, str]
) -> None:
    one = await make_wicket(upstream.url, STRICT, store=redis_server.url, environ=signing_env)
    two = await make_wicket(upstream.url, STRICT, store=redis_server.url, environ=signing_env)
    grant = await one.create_session("fleet-bot")
    async with mcp_client(one.url, token=grant["token"], mode="2026-07-28") as client:
        approval_id = record_of(await client.call_tool(*CREATE))["approval_id"]
    async with mcp_client(two.url, token=grant["token"], mode="2026-07-28") as client:
        assert record_of(await client.call_tool(*CREATE))["approval_id"] == approval_id, "the other replica reuses it"
    listed = (await admin(two, "GET", "/v1/approvals"))[1]
    assert [a["approval_id"] for a in listed["approvals"]] == [approval_id]
    # Two operators, one on each replica, decide at the same moment: exactly one wins.
    results = await asyncio.gather(
        admin(one, "POST", f"/v1/approvals/{approval_id}/approve", {"approver": "ann"}),
        admin(two, "POST", f"/v1/approvals/{approval_id}/deny", {"approver": "ben"}),
        admin(two, "POST", f"/v1/approvals/{approval_id}/approve", {"approver": "cat"}),
    )
    assert sorted(status for status, _ in results) == [200, 409, 409]
    winner = next(body for status, body in results if status == 200)["approval"]
    async with mcp_client(two.url, token=grant["token"], mode="2026-07-28") as client:
        result = await client.call_tool(*CREATE)
    if winner["status"] == "approved":
        assert not result.is_error and upstream.ledger.names() == ["create_note"]
    else:
        assert record_of(result)["decision"] == "deny" and upstream.ledger.names() == []
    shown = (await admin(one, "GET", f"/v1/approvals/{approval_id}"))[1]
    assert shown["status"] == winner["status"] and shown["decided_by"] == winner["decided_by"]


async def test_redis_compare_and_set_has_one_winner(redis_server: RedisServer) -> None:
    stores = [RedisStore(redis_server.url) for _ in range(4)]
    try:
        key = "wicket:test:cas"
        assert await stores[0].compare_and_set(key, None, b"v0", ttl=30)
        assert not await stores[1].compare_and_set(key, None, b"other", ttl=30), "absent was expected"
        wins = await asyncio.gather(
            *(s.compare_and_set(key, b"v0", f"v{i + 1}".encode(), 30) for i, s in enumerate(stores))
        )
        assert sorted(wins) == [False, False, False, True]
        assert await stores[0].get(key) == f"v{wins.index(True) + 1}".encode()
        assert await stores[0].compare_and_set(key, await stores[0].get(key), b"short", ttl=0.05)

        async def gone() -> bool:
            return await stores[1].get(key) is None

        await eventually(gone, "the CAS-written key to expire")
        for i in range(5):
            await stores[i % 4].index_add("wicket:test:index", f"m{i}", float(i), 3)
        assert await stores[2].index_members("wicket:test:index", 10) == ["m4", "m3", "m2"]
        assert await stores[3].get_many(["wicket:test:none", key]) == [None, None]
    finally:
        for store in stores:
            await store.close()


async def test_approvals_store_records_are_signed_on_redis(redis_server: RedisServer) -> None:
    """An elevation record edited inside Redis elevates nothing (fail closed)."""
    from proxy.core.approval_store import Approvals

    store = RedisStore(redis_server.url)
    signer = RecordSigner(SESSION_KEY)
    sessions = SessionManager(store, signer)
    events: list[dict[str, Any]] = []

    async def audit(event: dict[str, Any]) -> None:
        events.append(event)

    approvals = Approvals(store, signer, sessions, ApprovalSettings(elevation_seconds=60), audit=audit)
    try:
        session = await sessions.create("tamper-test", scope=["*"], ttl_seconds=600)
        from proxy.core.action import Action, Decision, Effect, Tier, Verdict

        action = Action(
            "mcp", "tools/call", "create_note", {}, "tamper-test", session.session_id, "", is_tool_call=True
        )
        pending = Decision(Verdict.APPROVAL_REQUIRED, Effect.MUTATING, Tier.FAST, "read-only.")
        approval_id = (await approvals.request(action, session, pending)).approval_id
        assert approval_id is not None
        who = {"credential": "operator:abc", "decided_by": "operator:abc"}
        _, elevation = await approvals.approve(approval_id, who)
        assert elevation.active(time.time()) == {CREATE_LABEL}
        assert await approvals.elevated(session.session_id) == {CREATE_LABEL}
        key = f"wicket:{{{session.session_id}}}:elevation"
        raw = await store.get(key)
        assert raw is not None
        forged = raw.replace(b"create_note", b"delete_note")
        await store.put(key, forged, ttl=60)
        assert await approvals.elevated(session.session_id) == frozenset()
        assert [e["step"] for e in events] == ["requested", "approved"]
    finally:
        await store.close()


# -- the CLI --------------------------------------------------------------------------------------


async def test_cli_lists_and_approves(
    upstream: DemoUpstream,
    make_wicket: WicketFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running = await make_wicket(upstream.url, STRICT)
    grant = await running.create_session("cli-agent")
    monkeypatch.setenv("WICKET_ADMIN_TOKEN", ADMIN_TOKEN)
    url = ["--admin-url", running.admin_url]
    async with mcp_client(running.url, token=grant["token"]) as client:
        approval_id = record_of(await client.call_tool(*CREATE, meta={"intent": "file the minutes"}))["approval_id"]
        assert await asyncio.to_thread(main, ["approvals", "list", *url]) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[0].split() == [
            "ID",
            "STATUS",
            "AGENT",
            "ACTIONS",
            "EFFECT",
            "BINDING",
            "EXPIRES",
            "REASON",
            "ARGUMENTS",
        ]
        assert table[1].startswith(approval_id) and "cli-agent" in table[1] and "file the minutes" in table[1]

        argv = ["approvals", "approve", approval_id, "--approver", "dana", *url]
        assert await asyncio.to_thread(main, argv) == 0
        assert f"approved {approval_id}" in capsys.readouterr().out
        assert not (await client.call_tool(*CREATE)).is_error

    assert await asyncio.to_thread(main, ["approvals", "list", *url]) == 0
    assert capsys.readouterr().out.strip() == "no pending approval requests"
    assert await asyncio.to_thread(main, ["approvals", "list", "--all", *url]) == 0
    assert "approved" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["approvals", "deny", approval_id, *url]) == 1
    assert "already approved" in capsys.readouterr().err
    assert await asyncio.to_thread(main, ["approvals", "deny", "apr_unknown", *url]) == 1
    assert "HTTP 404" in capsys.readouterr().err
    monkeypatch.setenv("WICKET_ADMIN_TOKEN", grant["token"])  # an agent's token is no operator credential
    assert await asyncio.to_thread(main, ["approvals", "list", *url]) == 1
    assert "Operator credential required" in capsys.readouterr().err
    assert upstream.ledger.names() == ["create_note"]


# -- policy and pure rules ------------------------------------------------------------------------


def test_policy_approvals_section_defaults_and_values() -> None:
    assert load_policy([]).approvals == ApprovalSettings(elevation_seconds=300, request_ttl_seconds=600, webhook=None)
    policy = parse_policy_text(
        "version: 1\napprovals:\n  elevation_seconds: 60\n  request_ttl_seconds: 120\n"
        "  webhook: {url: 'https://hooks.example.com/T/B/x', format: slack, timeout_seconds: 2}\n"
    )
    assert policy.approvals == ApprovalSettings(
        60, 120, WebhookSettings("https://hooks.example.com/T/B/x", "slack", 2.0)
    )
    hash(policy)


@pytest.mark.parametrize(
    ("body", "line", "fragment"),
    [
        ("approvals:\n  elevation_seconds: 301\n", 3, "approvals.elevation_seconds: 301 is above the maximum of 300"),
        ("approvals:\n  elevation_seconds: 0\n", 3, "approvals.elevation_seconds: 0 is below the minimum of 1"),
        ("approvals:\n  request_ttl_seconds: '600'\n", 3, "approvals.request_ttl_seconds: expected an integer"),
        ("approvals:\n  webhook: {format: slack}\n", 3, "approvals.webhook: missing required key 'url'"),
        ("approvals:\n  webhook:\n    url: ftp://x\n", 4, "approvals.webhook.url: invalid value 'ftp://x'"),
        ("approvals:\n  webhook:\n    url: http://x\n    format: teams\n", 5, "'teams' is not one of: wicket, slack"),
        ("approvals:\n  elevation_secs: 10\n", 3, "unknown key 'approvals.elevation_secs'; did you mean"),
    ],
)
def test_policy_approvals_errors_name_the_line(body: str, line: int, fragment: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy_text("version: 1\n" + body, "p.yaml")
    (issue,) = info.value.issues
    assert issue.line == line and fragment in issue.message, issue


@pytest.mark.parametrize(
    "body",
    [
        "version: 1\napprovals: {}\n",
        "version: 1\napprovals: {elevation_seconds: 300, request_ttl_seconds: 86400}\n",
        "version: 1\napprovals: {elevation_seconds: 300.5}\n",
        "version: 1\napprovals: {webhook: {url: 'https://h/x', timeout_seconds: 0.1}}\n",
        "version: 1\napprovals: {webhook: {url: 'https://h/x', timeout_seconds: 61}}\n",
        "version: 1\napprovals: {webhook: {url: 'http://', format: slack}}\n",
        "version: 1\napprovals: {webhook: {url: 'https://h', extra: 1}}\n",
    ],
)
def test_policy_approvals_interpreter_agrees_with_reference_validator(body: str) -> None:
    assert_agrees_with_reference(body)


def test_policy_approvals_merge_later_file_wins(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("version: 1\napprovals:\n  elevation_seconds: 120\n  webhook: {url: 'http://a/h', format: slack}\n")
    local = tmp_path / "local.yaml"
    local.write_text("version: 1\napprovals:\n  request_ttl_seconds: 30\n  webhook: {url: 'http://b/h'}\n")
    merged = load_policy([base, local]).approvals
    assert merged == ApprovalSettings(120, 30, WebhookSettings("http://b/h", "wicket", 5.0))


def test_decisions_and_grants_follow_the_rules() -> None:
    request = ApprovalRequest("apr_1", "a", "ses_1", (CREATE_LABEL,), "mutating", None, "pending", 100.0, 700.0)
    assert request.current_status(699.9) == "pending" and request.current_status(700.0) == "expired"
    approved = decided(request, approve=True, approver="operator:x", now=200.0, elevation_until=500.0)
    assert approved.status == "approved" and approved.elevation_expires_at == 500.0
    with pytest.raises(Exception, match="already approved"):
        decided(approved, approve=False, approver="operator:y", now=201.0, elevation_until=None)
    with pytest.raises(Exception, match="expired"):
        decided(request, approve=True, approver="operator:x", now=701.0, elevation_until=1000.0)
    running = Elevation(
        "ses_1", (Grant("tools/call:send_message", 250.0, "apr_0"), Grant("tools/call:x", 150.0, "apr_0"))
    )
    merged = merge_grants(running, "ses_1", approved, now=200.0)
    assert merged.active(200.0) == {CREATE_LABEL, "tools/call:send_message"}, "ended grants are dropped"
    assert merged.active(300.0) == {CREATE_LABEL} and merged.active(500.0) == frozenset()
    shorter = decided(request, approve=True, approver="o", now=200.0, elevation_until=300.0)
    assert merge_grants(merged, "ses_1", shorter, now=210.0).expires_at(210.0) == 500.0, "never cut short"


async def _metrics(running: RunningWicket) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{running.admin_url}/metrics") as response:
        return await response.text()


def test_guardian_wire_carries_intent_and_elevation() -> None:
    """A central guardian service sees the agent's stated intent and what is elevated, exactly."""
    from proxy.core.action import Action, Decision, Effect, ReviewContext, Tier, Verdict
    from proxy.core.sessions import Session
    from proxy.guardians.wire import decode_review, encode_review

    action = Action("mcp", "tools/call", "create_note", {}, "a", "ses_1", "http://u/mcp", None, True, None, "why")
    session = Session("ses_1", "a", ("*",), "read-only", 1.0, 2.0)
    prior = Decision(Verdict.ALLOW, Effect.MUTATING, Tier.FAST, "ok")
    context = ReviewContext(elevated=frozenset({CREATE_LABEL, "tools/call:send_message"}))
    review = (action, session, Effect.MUTATING, prior, context)
    decoded = decode_review(json.loads(json.dumps(encode_review(*review))))
    assert decoded == review and decoded[0].intent == "why" and decoded[4].elevated == context.elevated


# -- approvals that can succeed, bound to the call --------------------------------------------------


async def test_destructive_approval_without_deep_runs_the_approved_call_once(
    upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    """With Deep Guard not configured, the human's approval of the exact call stands in for Deep."""
    # A secret in a destructive call's arguments is refused outright by default (data protection);
    # here it is only audited, so the approver's redacted view of it can be checked.
    running = await make_wicket(upstream.url, STRICT + "data_protection:\n  secrets: {arguments: audit}\n")
    grant = await running.create_session("gardener", intent="prune the notes")
    async with mcp_client(running.url, token=grant["token"]) as client:
        asked = record_of(await client.call_tool("delete_note", {"title": "old", "api_key": "sk-live-123456789"}))
        assert asked["decision"] == "approval_required" and asked["effect"] == "destructive"
        approval_id = asked["approval_id"]
        status, shown = await admin(running, "GET", f"/v1/approvals/{approval_id}")
        assert status == 200 and shown["binding"] == "call" and len(shown["arguments_sha256"]) == 64
        # The approver sees the call's arguments with the secret blanked, and why it is pending.
        assert shown["arguments"] == {"title": "old", "api_key": "[REDACTED]"}
        assert "read-only" in shown["why"] and "sk-live" not in json.dumps(shown)
        assert upstream.ledger.calls == []
        status, body = await admin(running, "POST", f"/v1/approvals/{approval_id}/approve", {"approver": "alice"})
        assert status == 200, body
        result = await client.call_tool("delete_note", {"title": "old", "api_key": "sk-live-123456789"})
        assert not result.is_error, result
        # The same tool with other arguments is not covered: the approval was for that call only.
        other = record_of(await client.call_tool("delete_note", {"title": "precious"}))
        assert other["decision"] == "approval_required" and other["approval_id"] != approval_id
    assert upstream.ledger.calls == [("delete_note", {"title": "old"})]  # the ledger keeps the title only
    calls = [e for e in running.audit_events() if e["event"] == "decision" and e["action"] == "tools/call:delete_note"]
    allowed = [e for e in calls if e["decision"] == "allow"]
    assert len(allowed) == 1 and "in place of Deep Guard" in allowed[0]["reason"]
    assert "sk-live" not in running.audit_path.read_text()


async def test_with_deep_configured_but_down_no_approval_is_ever_offered(
    upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    stopped = FakeAnthropic()
    await stopped.start()
    url = stopped.url
    await stopped.stop()  # configured, but nothing answers there any more
    env = {"ANTHROPIC_API_KEY": API_KEY, "ANTHROPIC_BASE_URL": url, "WICKET_DEEP_MODEL": "claude-test"}
    running = await make_wicket(upstream.url, STRICT, environ=env)
    grant = await running.create_session("gardener", intent="prune the notes")
    async with mcp_client(running.url, token=grant["token"]) as client:
        for _ in range(2):  # the call, then the agent's retry: refused both times
            refused = record_of(await client.call_tool("delete_note", {"title": "old"}))
            assert refused["decision"] == "deny" and refused["tier"] == "deep" and "approval_id" not in refused
            assert "Deep Guard unavailable" in refused["reason"] and "fail closed" in refused["reason"]
    assert (await admin(running, "GET", "/v1/approvals?status=all"))[1]["approvals"] == []
    assert approval_events(running) == []
    assert upstream.ledger.calls == []


async def test_call_bound_mutating_approval_by_policy(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, "version: 1\napprovals: {bind: {mutating: call}}\n")
    grant = await running.create_session("notes-bot")
    async with mcp_client(running.url, token=grant["token"]) as client:
        approval_id = record_of(await client.call_tool(*CREATE))["approval_id"]
        assert (await admin(running, "POST", f"/v1/approvals/{approval_id}/approve"))[0] == 200
        changed = record_of(await client.call_tool("create_note", {"title": "minutes", "text": "we did not meet"}))
        assert changed["decision"] == "approval_required" and changed["approval_id"] != approval_id
        assert not (await client.call_tool(*CREATE)).is_error
    assert upstream.ledger.calls == [("create_note", {"title": "minutes"})]
    # Tool-wide (the default for mutating): other arguments pass under the same approval.
    running = await make_wicket(upstream.url, STRICT)
    grant = await running.create_session("notes-bot")
    async with mcp_client(running.url, token=grant["token"]) as client:
        approval_id = record_of(await client.call_tool(*CREATE))["approval_id"]
        assert (await admin(running, "GET", f"/v1/approvals/{approval_id}"))[1]["binding"] == "tool"
        assert (await admin(running, "POST", f"/v1/approvals/{approval_id}/approve"))[0] == 200
        assert not (await client.call_tool("create_note", {"title": "b", "text": "c"})).is_error


async def test_asking_for_approval_is_not_misbehaving(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    """Approval requests are not denials and approved writes are not the agent's own: after a long
    approval back-and-forth the session is neither flagged nor are its next calls escalated."""
    running = await make_wicket(upstream.url, STRICT)
    grant = await running.create_session("notes-bot")
    async with mcp_client(running.url, token=grant["token"]) as client:
        for _ in range(5):
            approval_id = record_of(await client.call_tool(*CREATE))["approval_id"]
        assert (await admin(running, "POST", f"/v1/approvals/{approval_id}/approve"))[0] == 200
        for _ in range(3):
            assert not (await client.call_tool(*CREATE)).is_error
        assert not (await client.call_tool("list_notes", {})).is_error
    decisions = [
        e for e in running.audit_events() if e["event"] == "decision" and e["action"].startswith("tools/call:")
    ]
    assert len(decisions) == 9 and all("escalated_from" not in e for e in decisions)
    assert [e["effect"] for e in decisions[-4:]] == ["mutating", "mutating", "mutating", "read"]
    sessions = (await admin(running, "GET", "/v1/sessions"))[1]["sessions"]
    (shown,) = [s for s in sessions if s["session_id"] == grant["session_id"]]
    assert shown["anomaly"] == {"calls": 9, "denials": 0, "writes": 0, "flagged": False}


async def test_spot_approval_band_on_destructive_is_decided_by_deep(
    upstream: DemoUpstream, make_wicket: WicketFactory, fake_anthropic: FakeAnthropic
) -> None:
    """With Deep configured, Spot's 'needs approval' on a destructive call goes to Deep, with Spot's findings."""
    policy = "version: 1\nguardian: {spot: {approval_at: 0.05, deny_at: 0.95}}\n"
    env = {"ANTHROPIC_API_KEY": API_KEY, "ANTHROPIC_BASE_URL": fake_anthropic.url, "WICKET_DEEP_MODEL": "claude-test"}
    running = await make_wicket(upstream.url, policy, environ=env)
    grant = await running.create_session("gardener", mode="read-write", intent="prune the notes")
    fake_anthropic.reply(verdict="allow", confidence=0.95, reasoning="Pruning an old note fits the intent.")
    async with mcp_client(running.url, token=grant["token"]) as client:
        assert not (await client.call_tool("delete_note", {"title": "old"})).is_error
    (review,) = fake_anthropic.requests
    assert "spot_review" in review.user_text and "Spot Guard needs human approval" in review.user_text
    assert approval_events(running) == [] and upstream.ledger.calls == [("delete_note", {"title": "old"})]


async def test_a_revoked_session_lists_no_elevation(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, STRICT)
    grant = await running.create_session("notes-bot")
    async with mcp_client(running.url, token=grant["token"]) as client:
        approval_id = record_of(await client.call_tool(*CREATE))["approval_id"]
    assert (await admin(running, "POST", f"/v1/approvals/{approval_id}/approve"))[0] == 200

    async def listed() -> dict[str, Any]:
        sessions = (await admin(running, "GET", "/v1/sessions"))[1]["sessions"]
        return next(s for s in sessions if s["session_id"] == grant["session_id"])

    assert (await listed())["elevation"]["actions"] == [CREATE_LABEL]
    assert (await admin(running, "POST", "/v1/revocations", {"kind": "session", "id": grant["session_id"]}))[0] == 201
    shown = await listed()
    assert shown["revoked"] is True and shown["elevation"] is None
