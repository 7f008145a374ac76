"""The operator console (``/console`` on the admin port), end to end in headless Chromium.

A real Wicket sits in front of the demo upstream; agents are the real mcp SDK client; the operator
is Chromium (tests/browser.py) clicking the page. The upstream's ledger proves what really ran.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp.shared.exceptions import MCPError
from playwright.async_api import Locator, Page, expect

from proxy.adapters import jsonrpc
from proxy.demo.server import DemoUpstream
from tests.browser import Browser, chromium_page, require_chromium
from tests.conftest import ADMIN_TOKEN, RunningWicket, WicketFactory, mcp_client
from tests.test_tool_pinning_e2e import RugPullServer

STRICT = "version: 1\n"  # token sessions only, read-only until an operator approves
XSS = '<img src=x onerror="window.__pwned=1">'


def decision_of(result: Any) -> dict[str, Any]:
    """The SPEC §4 record Wicket put on a refused call."""
    meta = result.meta or {}
    record = meta.get("wicket/decision")
    assert isinstance(record, dict), f"not a Wicket refusal: {result!r}"
    return record


async def sign_in(page: Page, running: RunningWicket, token: str = ADMIN_TOKEN, approver: str = "") -> None:
    await page.goto(f"{running.admin_url}/console")
    await page.get_by_test_id("token-input").fill(token)
    if approver:
        await page.get_by_test_id("approver-input").fill(approver)
    await page.get_by_test_id("token-submit").click()


async def open_console(page: Page, running: RunningWicket, approver: str = "") -> None:
    """Sign in and wait until the live feed is connected (so no event can be missed)."""
    await sign_in(page, running, approver=approver)
    await expect(page.get_by_test_id("console-main")).to_be_visible()
    await expect(page.get_by_test_id("stream-status")).to_have_attribute("data-state", "live")


def approval_row(page: Page, approval_id: str) -> Locator:
    return page.locator(f'[data-testid="approval-row"][data-approval-id="{approval_id}"]')


def session_row(page: Page, session_id: str) -> Locator:
    return page.locator(f'[data-testid="session-row"][data-session-id="{session_id}"]')


def feed_row(page: Page, decision_id: str) -> Locator:
    return page.locator(f'[data-testid="feed-row"][data-decision-id="{decision_id}"][data-event="decision"]')


async def raw_call_status(running: RunningWicket, token: str, name: str = "get_weather") -> int:
    """One stateless (2026-07-28) tools/call; the HTTP status tells a revoked token (401) apart."""
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    params = {"name": name, "arguments": {"city": "Oslo"}, "_meta": meta}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    headers = {
        "Accept": "application/json, text/event-stream",
        "Authorization": f"Bearer {token}",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": name,
    }
    async with aiohttp.ClientSession() as http, http.post(running.url, json=body, headers=headers) as response:
        await response.read()
        return response.status


def assert_clean(browser: Browser) -> None:
    """No script error and no CSP violation: the page ran entirely inside its own policy."""
    assert browser.page_errors == []
    assert not [m for m in browser.console if "Content Security Policy" in m], browser.console


def test_a_missing_chromium_fails_with_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y --no-install-recommends chromium"):
        require_chromium(tmp_path / "chromium")


async def test_console_is_a_strict_shell_without_data(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, STRICT)
    grant = await running.create_session("alice")
    async with aiohttp.ClientSession() as http:
        pages = []
        for _ in range(2):
            async with http.get(f"{running.admin_url}/console") as response:
                assert response.status == 200
                assert response.content_type == "text/html"
                pages.append((response.headers, await response.text()))
    nonces = []
    for headers, html in pages:
        csp = headers["Content-Security-Policy"]
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "*" not in csp
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
        nonce = re.search(r"script-src 'nonce-([A-Za-z0-9_-]+)'", csp)
        assert nonce is not None, csp
        nonces.append(nonce.group(1))
        assert html.count(f'nonce="{nonce.group(1)}"') == 2  # the one <style> and the one <script>
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["Cache-Control"] == "no-store"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert not re.search(r"""(src|href)\s*=|<link|@import|url\(""", html), "no external assets"
        assert grant["session_id"] not in html and ADMIN_TOKEN not in html, "the shell carries no data"
    assert nonces[0] != nonces[1], "a fresh nonce per response"


async def test_a_wrong_token_shows_an_error_and_opens_nothing(
    upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(upstream.url, STRICT)
    await running.create_session("alice")
    async with chromium_page() as browser:
        page = browser.page
        await page.goto(f"{running.admin_url}/console")
        await expect(page.get_by_test_id("console-main")).to_be_hidden()
        await sign_in(page, running, token="not-the-operator-token")
        error = page.get_by_test_id("auth-error")
        await expect(error).to_be_visible()
        await expect(error).to_contain_text("refused")
        await expect(page.get_by_test_id("console-main")).to_be_hidden()
        assert await page.get_by_test_id("session-row").count() == 0
        assert await page.evaluate("sessionStorage.length") == 0, "a refused token is not kept"

        await sign_in(page, running)  # the right one opens it, and the error goes away
        await expect(page.get_by_test_id("console-main")).to_be_visible()
        await expect(page.get_by_test_id("auth-error")).to_be_hidden()
        assert_clean(browser)


async def test_the_feed_shows_an_agents_decisions_as_they_happen(
    upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(upstream.url, STRICT)
    grant = await running.create_session("alice")
    async with chromium_page() as browser:
        page = browser.page
        await open_console(page, running)
        await expect(session_row(page, grant["session_id"]).get_by_test_id("session-mode")).to_have_text("read-only")

        async with mcp_client(running.url, token=grant["token"]) as agent:
            assert not (await agent.call_tool("get_weather", {"city": "Oslo"})).is_error
            refused = await agent.call_tool("drop_table", {"table": "users"})
        assert refused.is_error
        denial = decision_of(refused)

        allowed = [
            e
            for e in running.audit_events()
            if e.get("action") == "tools/call:get_weather" and e["event"] == "decision"
        ]
        assert len(allowed) == 1
        allow_row = feed_row(page, allowed[0]["decision_id"])
        await expect(allow_row).to_have_attribute("data-decision", "allow")
        await expect(allow_row.get_by_test_id("feed-action")).to_have_text("tools/call:get_weather")
        await expect(allow_row.get_by_test_id("feed-agent")).to_have_text("alice")
        deny_row = feed_row(page, denial["decision_id"])
        await expect(deny_row).to_have_attribute("data-decision", denial["decision"])
        await expect(deny_row.get_by_test_id("feed-action")).to_have_text("tools/call:drop_table")

        shown = await page.get_by_test_id("feed-row").evaluate_all("rows => rows.map(r => r.dataset.decisionId)")
        assert shown.index(denial["decision_id"]) < shown.index(allowed[0]["decision_id"]), "newest first"
        assert upstream.ledger.names() == ["get_weather"]
        assert_clean(browser)


@pytest.fixture
async def xss_upstream() -> AsyncIterator[DemoUpstream]:
    """A server that lists a tool whose very name is markup (Wicket refuses names a server does not list)."""
    server = RugPullServer()
    server.define(XSS, "A tool with a hostile name.")
    upstream = DemoUpstream(server=(server.server, server.ledger))
    await upstream.start()
    yield upstream
    await upstream.stop()


async def test_agent_supplied_text_is_shown_as_text(xss_upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(xss_upstream.url, STRICT)
    grant = await running.create_session("alice")
    async with chromium_page() as browser:
        page = browser.page
        await open_console(page, running)
        async with mcp_client(running.url, token=grant["token"]) as agent:
            # A tool name and a stated reason are both the agent's own text, shown to the operator.
            refused = await agent.call_tool(XSS, {"target": "x"}, meta={"wicket/intent": XSS})
        record = decision_of(refused)
        assert record["decision"] == "approval_required"

        row = approval_row(page, record["approval_id"])
        await expect(row.get_by_test_id("approval-actions")).to_have_text(f"tools/call:{XSS}")
        await expect(row.get_by_test_id("approval-reason")).to_have_text(XSS)
        await expect(feed_row(page, record["decision_id"]).get_by_test_id("feed-action")).to_have_text(
            f"tools/call:{XSS}"
        )
        assert await page.locator("img").count() == 0, "no element was parsed out of agent text"
        assert await page.evaluate("window.__pwned") is None
        assert xss_upstream.ledger.names() == []
        assert_clean(browser)


async def test_approve_in_the_console_and_the_agents_retry_passes(
    upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(upstream.url, STRICT)
    grant = await running.create_session("alice", intent="keep the notes tidy")
    async with chromium_page() as browser:
        page = browser.page
        await open_console(page, running, approver="ops-dana")
        async with mcp_client(running.url, token=grant["token"]) as agent:
            note = {"title": "plan", "text": "ship it"}
            refused = await agent.call_tool("create_note", note, meta={"wicket/intent": "file the release plan"})
            assert refused.is_error
            record = decision_of(refused)
            assert record["decision"] == "approval_required" and record["approval_id"].startswith("apr_")
            assert upstream.ledger.names() == [], "the refused write never reached the upstream"

            row = approval_row(page, record["approval_id"])
            await expect(row.get_by_test_id("approval-agent")).to_have_text("alice")
            await expect(row.get_by_test_id("approval-session")).to_have_text(grant["session_id"])
            await expect(row.get_by_test_id("approval-actions")).to_have_text("tools/call:create_note")
            await expect(row.get_by_test_id("approval-reason")).to_have_text("file the release plan")
            await expect(row.get_by_test_id("approval-effect")).to_have_text("mutating")
            await expect(row.get_by_test_id("approval-expiry")).to_have_text(re.compile(r"^\d+m \d\ds$"))

            await row.get_by_test_id("approve-button").click()
            await expect(page.get_by_test_id("notice")).to_contain_text(f"Approved {record['approval_id']}")
            await expect(row).to_have_count(0)
            elevation = session_row(page, grant["session_id"]).get_by_test_id("session-elevation")
            await expect(elevation).to_contain_text("tools/call:create_note")

            retry = await agent.call_tool("create_note", note)
            assert not retry.is_error, retry
            assert upstream.ledger.names() == ["create_note"], "the approved retry really ran"

            other = await agent.call_tool("send_message", {"to": "bob", "text": "hi"})
            assert other.is_error and decision_of(other)["decision"] == "approval_required"
        assert upstream.ledger.names() == ["create_note"]
        approved = [e for e in running.audit_events() if e["event"] == "approval" and "approve" in e.get("action", "")]
        assert approved and "ops-dana" in str(approved[-1])
        assert_clean(browser)


async def test_deny_in_the_console_keeps_the_write_refused(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, STRICT)
    grant = await running.create_session("alice")
    async with chromium_page() as browser:
        page = browser.page
        await open_console(page, running)
        async with mcp_client(running.url, token=grant["token"]) as agent:
            record = decision_of(await agent.call_tool("create_note", {"title": "a", "text": "b"}))
            row = approval_row(page, record["approval_id"])
            await row.get_by_test_id("deny-button").click()
            await expect(page.get_by_test_id("notice")).to_contain_text(f"Denied {record['approval_id']}")
            await expect(row).to_have_count(0)
            retry = decision_of(await agent.call_tool("create_note", {"title": "a", "text": "b"}))
            assert retry["decision"] == "deny" and f"denied approval {record['approval_id']}" in retry["reason"]
        assert upstream.ledger.names() == []
        assert_clean(browser)


async def test_revoke_in_the_console_ends_the_agents_session(
    upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(upstream.url, STRICT)
    alice = await running.create_session("alice")
    bob = await running.create_session("bob")
    async with chromium_page() as browser, mcp_client(running.url, token=alice["token"]) as agent:
        page = browser.page
        await open_console(page, running)
        assert not (await agent.call_tool("get_weather", {"city": "Oslo"})).is_error
        row = session_row(page, alice["session_id"])
        revoke = row.get_by_test_id("revoke-button")

        browser.accept_dialogs = False  # the operator changes their mind: nothing is revoked
        async with page.expect_event("dialog") as asked:
            await revoke.click()
        assert alice["session_id"] in (await asked.value).message
        assert await raw_call_status(running, alice["token"]) == 200

        browser.accept_dialogs = True
        async with page.expect_event("dialog"):
            await revoke.click()
        await expect(page.get_by_test_id("notice")).to_contain_text(f"Revoked session {alice['session_id']}")
        await expect(row).to_have_attribute("data-revoked", "true")
        await expect(revoke).to_be_disabled()
        with pytest.raises(MCPError, match="revoked") as refused:  # the SDK's view of Wicket's 401
            await agent.call_tool("get_weather", {"city": "Rome"})
        assert refused.value.code == jsonrpc.UNAUTHORIZED
        assert await raw_call_status(running, alice["token"]) == 401
        assert await raw_call_status(running, bob["token"]) == 200, "only that session is revoked"
        assert upstream.ledger.names() == ["get_weather", "get_weather", "get_weather"]
        revocations = [e for e in running.audit_events() if e["event"] == "revocation"]
        assert [e["revoked"] for e in revocations] == [alice["session_id"]]
        assert_clean(browser)


SCREENSHOT = Path(__file__).resolve().parent / "artifacts" / "console-400px.png"


async def test_pending_approvals_show_id_arguments_and_why_and_the_console_fits_400px(
    upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    """Each pending request shows its id, the redacted arguments, what they bind and why it is pending
    (an anomaly escalation with its figures); a revoked session shows no elevation; at 400 px wide
    nothing needs a sideways scroll, and the operator can still approve. The test saves a screenshot
    of the narrow console to tests/artifacts/console-400px.png."""
    # Data protection would refuse the key in a write outright; audited, its redacted view can be checked.
    running = await make_wicket(upstream.url, STRICT + "data_protection:\n  secrets: {arguments: audit}\n")
    gardener = await running.create_session("gardener", scope=["create_note", "list_notes"])
    bob = await running.create_session("bob")
    note = {"title": "minutes", "text": "we met", "api_key": "sk-live-0123456789abcdef"}
    async with chromium_page() as browser:
        page = browser.page
        await page.set_viewport_size({"width": 400, "height": 1400})
        await open_console(page, running, approver="ops-dana")
        async with mcp_client(running.url, token=bob["token"]) as agent:
            bob_id = decision_of(await agent.call_tool("create_note", {"title": "b", "text": "c"}))["approval_id"]
            await approval_row(page, bob_id).get_by_test_id("approve-button").click()
            await expect(page.get_by_test_id("notice")).to_contain_text(f"Approved {bob_id}")
        bob_elevation = session_row(page, bob["session_id"]).get_by_test_id("session-elevation")
        await expect(bob_elevation).to_contain_text("tools/call:create_note")
        browser.accept_dialogs = True
        async with page.expect_event("dialog"):
            await session_row(page, bob["session_id"]).get_by_test_id("revoke-button").click()
        await expect(session_row(page, bob["session_id"])).to_have_attribute("data-revoked", "true")
        await expect(bob_elevation).to_have_text("—")

        async with mcp_client(running.url, token=gardener["token"]) as agent:
            for _ in range(3):  # outside the scope ceiling: three denials
                assert (await agent.call_tool("drop_table", {"table": "t"})).is_error
            for _ in range(2):
                assert not (await agent.call_tool("list_notes", {})).is_error
            # 3 denials in 5 calls: the write is judged one tier up, destructive, and bound to this call.
            asked = decision_of(await agent.call_tool("create_note", note, meta={"wicket/intent": "file minutes"}))
            assert asked["decision"] == "approval_required" and asked["effect"] == "destructive"
            row = approval_row(page, asked["approval_id"])
            await expect(row.get_by_test_id("approval-id")).to_have_text(asked["approval_id"])
            arguments = row.get_by_test_id("approval-arguments")
            await expect(arguments).to_contain_text('"api_key": "[REDACTED]"')
            await expect(arguments).to_contain_text('"title": "minutes"')
            await expect(arguments).not_to_contain_text("sk-live")
            await expect(row.get_by_test_id("approval-binding")).to_have_text("this call only")
            await expect(row.get_by_test_id("approval-escalation")).to_have_text(
                "anomaly escalation: denial rate 60% over 5 calls (threshold 30%)"
            )
            await expect(row.get_by_test_id("approval-why")).to_contain_text(
                "Effect raised from mutating to destructive by anomaly escalation"
            )
            await expect(row.get_by_test_id("approval-reason")).to_have_text("file minutes")
            assert "sk-live" not in await page.content()

            # 400 px: the page is no wider than the window, and each cell names its column.
            width = await page.evaluate("document.documentElement.scrollWidth")
            assert width <= 400, f"the console is {width} px wide in a 400 px window"
            assert await row.get_by_test_id("approval-id").get_attribute("data-label") == "Request"
            await expect(row.get_by_test_id("approve-button")).to_be_in_viewport()
            SCREENSHOT.parent.mkdir(exist_ok=True)
            await page.screenshot(path=str(SCREENSHOT))  # the window: the pending request and the sessions

            await row.get_by_test_id("approve-button").click()
            await expect(page.get_by_test_id("notice")).to_contain_text(f"Approved {asked['approval_id']}")
            changed = decision_of(await agent.call_tool("create_note", {**note, "text": "we never met"}))
            assert changed["decision"] == "approval_required", "the approval covers only the approved arguments"
            assert not (await agent.call_tool("create_note", note)).is_error
        assert upstream.ledger.names().count("create_note") == 1
        assert_clean(browser)
