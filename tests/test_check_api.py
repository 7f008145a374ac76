"""The REST check API (check, execute, report) for agents that do not go through MCP.

The agent authenticates with its own runtime token and acts only in its own session; the
same checker and audit log as the proxy decide and record everything (protocol ``api``).
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from proxy.demo.server import DemoUpstream
from tests.conftest import ADMIN_TOKEN, RunningWicket, WicketFactory, mcp_client

STRICT = "version: 1\n"


async def call(running: RunningWicket, path: str, body: Any, token: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as http,
        http.post(running.admin_url + path, json=body, headers=headers) as response,
    ):
        text = await response.text()
        return response.status, json.loads(text) if text else None


async def check(running: RunningWicket, token: str | None, tool: str, **fields: Any) -> tuple[int, Any]:
    return await call(running, "/v1/check", {"tool_name": tool, **fields}, token)


async def report(running: RunningWicket, token: str | None, decision_id: str, **fields: Any) -> tuple[int, Any]:
    return await call(running, "/v1/report", {"decision_id": decision_id, "status": "success", **fields}, token)


async def test_check_execute_report(wicket_strict: RunningWicket) -> None:
    running = wicket_strict
    grant = await running.create_session("sdk-agent", scope=["get_*", "list_*", "create_*"])
    status, record = await check(running, grant["token"], "get_invoice", arguments={"id": 7})
    assert status == 200
    assert record["decision"] == "allow" and record["effect"] == "read" and record["tier"] == "fast"
    assert set(record) == {"decision", "decision_id", "effect", "tier", "reason", "confidence"}
    status, reported = await report(running, grant["token"], record["decision_id"], duration_ms=12.5, detail="ok")
    assert status == 200 and reported["decision_id"] == record["decision_id"] and reported["status"] == "success"
    # One outcome per decision: a second report for it is refused.
    assert (await report(running, grant["token"], record["decision_id"]))[0] == 404

    events = running.audit_events()
    decision = next(e for e in events if e.get("decision_id") == record["decision_id"] and e["event"] == "decision")
    assert decision["protocol"] == "api" and decision["action"] == "tools/call:get_invoice"
    assert decision["session_id"] == grant["session_id"] and decision["agent_id"] == "sdk-agent"
    assert "arguments_sha256" in decision
    outcome = next(e for e in events if e["event"] == "outcome")
    assert outcome["decision_id"] == record["decision_id"] and outcome["status"] == "success"
    assert outcome["duration_ms"] == 12.5 and outcome["protocol"] == "api" and outcome["detail"] == "ok"

    # The scope ceiling and the policy hold here exactly as on the proxy.
    status, outside = await check(running, grant["token"], "drop_table")
    assert status == 200 and outside["decision"] == "deny" and "scope ceiling" in outside["reason"]
    assert (await report(running, grant["token"], outside["decision_id"]))[0] == 404, "nothing to report"


async def test_check_api_write_needs_approval_and_input_summary_is_the_reason(wicket_strict: RunningWicket) -> None:
    running = wicket_strict
    grant = await running.create_session("sdk-writer")
    summary = "create the invoice for order 42"
    status, record = await check(running, grant["token"], "create_invoice", input_summary=summary)
    assert status == 200 and record["decision"] == "approval_required"
    approval_id = record["approval_id"]
    assert f"wicket approvals approve {approval_id}" in record["reason"]
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{running.admin_url}/v1/approvals/{approval_id}", headers=headers) as response:
            shown = await response.json()
        assert shown["reason"] == summary and shown["actions"] == ["tools/call:create_invoice"]
        async with http.post(f"{running.admin_url}/v1/approvals/{approval_id}/approve", headers=headers) as response:
            assert response.status == 200
    status, allowed = await check(running, grant["token"], "create_invoice", input_summary=summary)
    assert allowed["decision"] == "allow" and allowed["effect"] == "mutating"
    status, _ = await report(running, grant["token"], allowed["decision_id"], status="tool_error", detail="bad id")
    assert status == 200
    assert [e["status"] for e in running.audit_events() if e["event"] == "outcome"] == ["tool_error"]


async def test_a_session_reports_only_its_own_decisions(wicket_strict: RunningWicket) -> None:
    running = wicket_strict
    alice = await running.create_session("alice")
    mallory = await running.create_session("mallory")
    _, record = await check(running, alice["token"], "get_weather")
    assert record["decision"] == "allow"
    status, body = await report(running, mallory["token"], record["decision_id"])
    assert status == 404 and "this session" in body["error"]
    alice2 = await running.create_session("alice")  # the same agent, another session: still not its decision
    assert (await report(running, alice2["token"], record["decision_id"]))[0] == 404
    assert (await report(running, alice["token"], record["decision_id"]))[0] == 200
    assert [e["session_id"] for e in running.audit_events() if e["event"] == "outcome"] == [alice["session_id"]]


async def test_check_api_credentials(upstream: DemoUpstream, wicket: RunningWicket) -> None:
    """Only an agent's own credential works: no token, the operator's token, or a revoked token get 401."""
    grant = await wicket.create_session("sdk-agent")
    assert (await check(wicket, None, "get_weather"))[0] == 401, "anonymous callers have no session to check in"
    assert (await check(wicket, ADMIN_TOKEN, "get_weather"))[0] == 401
    assert (await check(wicket, "wkt_not-a-real-token", "get_weather"))[0] == 401
    assert (await report(wicket, ADMIN_TOKEN, "dec_00"))[0] == 401
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{wicket.admin_url}/v1/revocations", json={"kind": "token", "id": grant["token"]}, headers=headers
        ) as response,
    ):
        assert response.status == 201
    status, body = await check(wicket, grant["token"], "get_weather")
    assert status == 401 and "revoked" in body["error"]
    # The agent's token works for exactly /v1/check and /v1/report, nothing else on the admin port.
    agent = {"Authorization": f"Bearer {(await wicket.create_session('other'))['token']}"}
    async with aiohttp.ClientSession() as http:
        for method, path in [
            ("GET", "/v1/approvals"),
            ("GET", "/v1/sessions"),
            ("GET", "/v1/events"),
            ("POST", "/v1/sessions"),
            ("POST", "/v1/revocations"),
            ("POST", "/v1/approvals/apr_x/approve"),
            ("POST", "/v1/approvals/apr_x/deny"),
        ]:
            async with http.request(method, wicket.admin_url + path, json={}, headers=agent) as response:
                assert response.status == 401, (method, path)
    assert upstream.ledger.names() == []


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/v1/check", {"tool_name": ""}, "tool_name"),
        ("/v1/check", {"tool_name": "x", "arguments": [1]}, "arguments"),
        ("/v1/check", {"tool_name": "x", "input_summary": 5}, "input_summary"),
        ("/v1/check", {"tool_name": "x", "surprise": 1}, "Unknown field"),
        ("/v1/check", ["tool_name"], "JSON object"),
        ("/v1/report", {"decision_id": "nope", "status": "success"}, "decision_id"),
        ("/v1/report", {"decision_id": "dec_ab", "status": "fine"}, "status must be one of"),
        ("/v1/report", {"decision_id": "dec_ab", "status": "error", "duration_ms": -1}, "duration_ms"),
    ],
)
async def test_bad_bodies_are_400(path: str, body: Any, fragment: str, wicket_strict: RunningWicket) -> None:
    grant = await wicket_strict.create_session("sloppy")
    status, answer = await call(wicket_strict, path, body, grant["token"])
    assert status == 400 and fragment in answer["error"]


async def test_check_and_proxy_share_one_elevation(upstream: DemoUpstream, wicket_strict: RunningWicket) -> None:
    """An approval asked for through the check API covers the same tool over MCP (one action label)."""
    running = wicket_strict
    grant = await running.create_session("hybrid")
    _, record = await check(running, grant["token"], "create_note", arguments={"title": "t", "text": "x"})
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{running.admin_url}/v1/approvals/{record['approval_id']}/approve", headers=headers) as response,
    ):
        assert response.status == 200
    async with mcp_client(running.url, token=grant["token"]) as client:
        assert not (await client.call_tool("create_note", {"title": "t", "text": "x"})).is_error
    assert upstream.ledger.names() == ["create_note"]


@pytest.fixture
async def wicket_strict(upstream: DemoUpstream, make_wicket: WicketFactory) -> RunningWicket:
    return await make_wicket(upstream.url, STRICT)
