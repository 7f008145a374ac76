"""Policy rate limits and toxic-flow control, end to end: the real mcp client, the demo MCP
server and its ledger, one Wicket or two replicas on one real Redis, and the REST check API.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proxy.demo.server import DemoUpstream
from tests.conftest import MODES, RunningWicket, WicketFactory, admin, mcp_client
from tests.redis_support import RedisServer

LIMITED = """version: 1
limits:
  - match: {agents: ["*"], tools: ["get_weather"]}
    rate: 3/minute
    per: agent
"""
TRIFECTA = """version: 1
labels:
  private: ["list_notes"]
  untrusted: ["fetch_url"]
  egress: ["send_*"]
"""
MAIL = ("send_email", {"to": "eve@example.com", "subject": "notes", "body": "see attached"})


@pytest.fixture
def signing_env(tmp_path: Path) -> dict[str, str]:
    key = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "signing.pem").write_bytes(key)
    return {"WICKET_SIGNING_KEY": str(tmp_path / "signing.pem")}


def record_of(result: Any) -> dict[str, Any]:
    assert result.is_error, result
    return dict(result.meta["wicket/decision"])


def decisions(running: RunningWicket, action: str) -> list[dict[str, Any]]:
    return [e for e in running.audit_events() if e["event"] == "decision" and e["action"] == action]


# -- rate limits ----------------------------------------------------------------------------------


async def test_a_limit_is_shared_by_two_replicas_on_one_redis(
    upstream: DemoUpstream, make_wicket: WicketFactory, redis_server: RedisServer, signing_env: dict[str, str]
) -> None:
    one = await make_wicket(upstream.url, LIMITED, store=redis_server.url, environ=signing_env)
    two = await make_wicket(upstream.url, LIMITED, store=redis_server.url, environ=signing_env)
    agent = f"weather-bot-{uuid.uuid4().hex[:8]}"
    first, second = await one.create_session(agent), await two.create_session(agent)  # two sessions, one agent
    other = await one.create_session("someone-else")
    async with (
        mcp_client(one.url, token=first["token"]) as a,
        mcp_client(two.url, token=second["token"], mode="2026-07-28") as b,
    ):
        # Ten calls at once, half through each replica: the limit is the agent's, not each replica's.
        results = await asyncio.gather(
            *((a if i % 2 else b).call_tool("get_weather", {"city": f"city-{i}"}) for i in range(10))
        )
    allowed = [r for r in results if not r.is_error]
    refused = [record_of(r) for r in results if r.is_error]
    assert len(allowed) == 3 and len(refused) == 7
    assert upstream.ledger.names() == ["get_weather"] * 3
    for record in refused:
        assert record["decision"] == "deny" and record["tier"] == "fast"
        assert "limits[0] (rate 3/minute per agent; tools get_weather)" in record["reason"]
        assert 1 <= record["retry_after"] <= 60
    # Another agent has its own counter.
    async with mcp_client(two.url, token=other["token"]) as c:
        assert not (await c.call_tool("get_weather", {"city": "Oslo"})).is_error
    assert upstream.ledger.names() == ["get_weather"] * 4
    audited = [e for r in (one, two) for e in decisions(r, "tools/call:get_weather") if e["decision"] == "deny"]
    assert len(audited) == 7 and all(e["retry_after"] >= 1 for e in audited)
    limited = sum(
        r.wicket.metrics.registry.get_sample_value(
            "wicket_rate_limited_total", {"limit": "limits[0]", "window": "rate"}
        )
        or 0
        for r in (one, two)
    )
    assert limited == 7


async def test_check_api_answers_429_with_retry_after(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    policy = "version: 1\nlimits:\n  - match: {tools: [deploy]}\n    quota: 2/day\n    per: session\n"
    running = await make_wicket(upstream.url, policy)
    grant = await running.create_session("ci-bot", mode="read-write")
    answers: list[tuple[int, str | None, dict[str, Any]]] = []
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.post(
                running.admin_url + "/v1/check",
                json={"tool_name": "deploy", "arguments": {"env": "staging"}},
                headers={"Authorization": f"Bearer {grant['token']}"},
            ) as response:
                answers.append((response.status, response.headers.get("Retry-After"), await response.json()))
    assert [status for status, _, _ in answers] == [200, 200, 429]
    _, retry_after, record = answers[2]
    assert record["decision"] == "deny" and "limits[0] (quota 2/day per session" in record["reason"]
    assert retry_after is not None and int(retry_after) == record["retry_after"]
    assert 86000 <= record["retry_after"] <= 86400


# -- toxic flows ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_private_then_untrusted_then_egress_needs_approval_and_one_approval_is_one_call(
    mode: str, upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(upstream.url, "version: 1\nlabels:\n  private: [list_notes]\n")
    grant = await running.create_session("assistant", mode="read-write")
    async with mcp_client(running.url, token=grant["token"], mode=mode) as client:
        await client.list_tools()  # fetch_url and send_email are labelled by their openWorldHint annotations
        assert not (await client.call_tool("list_notes", {})).is_error
        assert not (await client.call_tool("fetch_url", {"url": "https://news.example/today"})).is_error
        first = record_of(await client.call_tool(*MAIL))
        assert first["decision"] == "approval_required" and first["approval_id"].startswith("apr_")
        reason = first["reason"]
        assert "flows[0]" in reason and "'list_notes' at " in reason and "'fetch_url' at " in reason
        assert "private data" in reason and "untrusted content" in reason
        assert upstream.ledger.names() == ["list_notes", "fetch_url"]

        status, body = await admin(running, "POST", f"/v1/approvals/{first['approval_id']}/approve")
        assert status == 200, body
        sent = await client.call_tool(*MAIL)
        assert not sent.is_error, sent
        again = record_of(await client.call_tool(*MAIL))
        assert again["decision"] == "approval_required" and again["approval_id"] != first["approval_id"]
    assert upstream.ledger.names() == ["list_notes", "fetch_url", "send_email"], "the approval let one call through"
    mails = decisions(running, "tools/call:send_email")
    assert [e["decision"] for e in mails] == ["approval_required", "allow", "approval_required"]
    assert all(e["session_labels"] == ["private", "untrusted"] and e["call_labels"] == ["egress"] for e in mails)


async def test_egress_alone_and_private_then_egress_pass(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, TRIFECTA)
    alone = await running.create_session("mailer", mode="read-write")
    async with mcp_client(running.url, token=alone["token"]) as client:
        assert not (await client.call_tool(*MAIL)).is_error
    private = await running.create_session("mailer", mode="read-write")
    async with mcp_client(running.url, token=private["token"]) as client:
        assert not (await client.call_tool("list_notes", {})).is_error
        assert not (await client.call_tool(*MAIL)).is_error, "private data alone does not complete the default rule"
        assert not (await client.call_tool("fetch_url", {"url": "https://x.example"})).is_error
        assert record_of(await client.call_tool(*MAIL))["decision"] == "approval_required"
    assert upstream.ledger.names() == ["send_email", "list_notes", "send_email", "fetch_url"]


async def test_a_deny_rule_refuses_without_asking(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    policy = TRIFECTA + "flows:\n  - seen: [untrusted]\n    call: egress\n    action: deny\n"
    running = await make_wicket(upstream.url, policy)
    grant = await running.create_session("mailer", mode="read-write")
    async with mcp_client(running.url, token=grant["token"]) as client:
        assert not (await client.call_tool("fetch_url", {"url": "https://x.example"})).is_error
        refused = record_of(await client.call_tool(*MAIL))
    assert refused["decision"] == "deny" and "approval_id" not in refused
    assert upstream.ledger.names() == ["fetch_url"]


async def test_the_trifecta_holds_across_replicas(
    upstream: DemoUpstream, make_wicket: WicketFactory, redis_server: RedisServer, signing_env: dict[str, str]
) -> None:
    one = await make_wicket(upstream.url, TRIFECTA, store=redis_server.url, environ=signing_env)
    two = await make_wicket(upstream.url, TRIFECTA, store=redis_server.url, environ=signing_env)
    grant = await one.create_session("fleet-assistant", mode="read-write")
    token = grant["token"]
    async with mcp_client(one.url, token=token) as a, mcp_client(two.url, token=token, mode="2026-07-28") as b:
        assert not (await a.call_tool("list_notes", {})).is_error
        assert not (await b.call_tool("fetch_url", {"url": "https://x.example"})).is_error
        refused = record_of(await a.call_tool(*MAIL))
        assert refused["decision"] == "approval_required" and "'fetch_url' at " in refused["reason"]
        assert record_of(await b.call_tool(*MAIL))["approval_id"] == refused["approval_id"]
        status, _ = await admin(two, "POST", f"/v1/approvals/{refused['approval_id']}/approve")
        assert status == 200
        # Both replicas race to use the one approval: exactly one call goes through.
        raced = await asyncio.gather(a.call_tool(*MAIL), b.call_tool(*MAIL))
    assert sorted(r.is_error for r in raced) == [False, True]
    assert upstream.ledger.names() == ["list_notes", "fetch_url", "send_email"]


async def test_tampered_label_memory_fails_closed(
    upstream: DemoUpstream, make_wicket: WicketFactory, redis_server: RedisServer, signing_env: dict[str, str]
) -> None:
    import redis.asyncio as aioredis

    running = await make_wicket(upstream.url, TRIFECTA, store=redis_server.url, environ=signing_env)
    grant = await running.create_session("mailer", mode="read-write")
    async with mcp_client(running.url, token=grant["token"]) as client:
        assert not (await client.call_tool("list_notes", {})).is_error
        client_redis = aioredis.Redis.from_url(redis_server.url)
        key = f"wicket:{{{grant['session_id']}}}:labels"
        raw = json.loads(await client_redis.get(key))
        raw["r"]["labels"] = {}  # "forget" the private label without the HMAC key
        await client_redis.set(key, json.dumps(raw))
        await client_redis.aclose()
        refused = record_of(await client.call_tool(*MAIL))
    assert refused["decision"] == "approval_required" and "tampered" in refused["reason"]
    assert upstream.ledger.names() == ["list_notes"]


async def test_a_sampling_request_counts_as_egress(make_wicket: WicketFactory) -> None:
    """After private and untrusted data, the upstream's own sampling request (text sent to the agent's
    model provider) completes the flow: it never reaches the client, and the upstream gets -32050."""
    from tests.test_sampling_guard import Llm, build_sampling_server, policy

    upstream = DemoUpstream(server=build_sampling_server())
    await upstream.start()
    try:
        labels = "labels:\n  private: [ask_legacy]\n  untrusted: [ask_legacy]\n"
        running = await make_wicket(upstream.url, policy(labels))
        llm = Llm()
        async with mcp_client(running.url, mode="legacy", sampling_callback=llm) as client:
            answer = await client.call_tool("ask_legacy", {"prompt": "Summarise the inbox."})
    finally:
        await upstream.stop()
    assert llm.prompts == [], "the client's model never saw the prompt"
    assert upstream.ledger.calls[0][1]["code"] == -32050 and "-32050" in answer.content[0].text
    (sampling,) = [e for e in running.audit_events() if e.get("protocol") == "sampling"]
    assert sampling["decision"] == "deny" and "Toxic flow" in sampling["reason"]
