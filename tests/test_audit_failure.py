"""Fail closed: when the audit log cannot be written, only reads pass and /readyz says why."""

from __future__ import annotations

import aiohttp

from proxy.demo.server import DemoUpstream
from tests.conftest import WicketFactory, mcp_client


async def test_unwritable_audit_log_denies_all_but_reads(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    # /dev/full accepts the open and fails every write with ENOSPC: a real full disk.
    running = await make_wicket(upstream.url, "version: 1\n", audit_log="/dev/full")
    async with aiohttp.ClientSession() as http:
        # The operator API refuses to issue a session it cannot audit.
        async with http.post(
            f"{running.admin_url}/v1/sessions",
            json={"agent_id": "writer", "mode": "read-write"},
            headers={"Authorization": "Bearer test-operator-token-0123456789abcdef"},
        ) as response:
            assert response.status == 503
    # A session that exists already (issued before the disk filled up) keeps working for reads only.
    sessions = running.wicket.sessions
    session = await sessions.create("writer", scope=["*"], mode="read-write", ttl_seconds=60)
    token = await sessions.issue_token(session)
    async with mcp_client(running.url, token=token, mode="2026-07-28") as client:
        read = await client.call_tool("get_weather", {"city": "Oslo"})
        write = await client.call_tool("create_note", {"title": "t", "text": "x"})
    assert not read.is_error
    assert write.is_error
    record = write.meta["wicket/decision"]
    assert record["decision"] == "deny" and "audit log cannot be written" in record["reason"]
    assert upstream.ledger.names() == ["get_weather"]

    async with aiohttp.ClientSession() as http, http.get(f"{running.admin_url}/readyz") as response:
        assert response.status == 503
        checks = (await response.json())["checks"]
    assert checks["audit"].startswith("failing") and "No space left" in checks["audit"]
    async with aiohttp.ClientSession() as http, http.get(f"{running.admin_url}/metrics") as response:
        text = await response.text()
    assert "wicket_audit_healthy 0.0" in text
