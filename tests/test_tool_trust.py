"""Accepting a tool's annotations (``wicket tools trust``), with the official MCP servers.

Each of these real read-only tools declares ``readOnlyHint: true`` but its name carries no
read keyword and its upstream is not trusted, so a read-only session is refused: a lying
annotation must never lower a tier on its own. After the operator trusts the pinned
definition, the call is a read; a later definition withdraws the trust.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from mcp_types import ToolAnnotations
from playwright.async_api import expect

from proxy.cli import main
from proxy.demo.server import DemoUpstream
from tests.browser import chromium_page
from tests.conformance.suite import EVERYTHING_PACKAGE, node_binary, package_file
from tests.conftest import ADMIN_TOKEN, WicketFactory, admin, mcp_client
from tests.test_console import assert_clean, open_console
from tests.test_tool_pinning_e2e import WARN_POLICY, RugPullServer, events, refusal_of

POLICY = """
version: 1
anonymous: {enabled: true, scope: ["*"]}
"""


def real_server(kind: str, tmp_path: Path) -> tuple[list[str], str, dict[str, Any]]:
    """(command, a read-only tool with no read keyword in its name, arguments for it)."""
    node = node_binary()
    if kind == "filesystem":
        entry = package_file("@modelcontextprotocol/server-filesystem", "dist", "index.js")
        (tmp_path / "docs").mkdir()
        (tmp_path / "docs" / "readme.txt").write_text("hello")
        return [node, str(entry), str(tmp_path)], "directory_tree", {"path": str(tmp_path)}
    if kind == "memory":
        entry = package_file("@modelcontextprotocol/server-memory", "dist", "index.js")
        return [node, str(entry)], "open_nodes", {"names": ["wicket"]}
    if kind == "sequential-thinking":
        entry = package_file("@modelcontextprotocol/server-sequential-thinking", "dist", "index.js")
        thought = {"thought": "Check the plan.", "nextThoughtNeeded": False, "thoughtNumber": 1, "totalThoughts": 1}
        return [node, str(entry)], "sequentialthinking", thought
    entry = package_file(EVERYTHING_PACKAGE, "dist", "index.js")
    return [node, str(entry), "stdio"], "echo", {"message": "trusted now"}


@pytest.mark.parametrize("kind", ["filesystem", "memory", "sequential-thinking", "everything"])
async def test_a_real_read_only_tool_is_refused_until_its_annotations_are_trusted(
    kind: str,
    make_wicket: WicketFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    command, tool, arguments = real_server(kind, tmp_path)
    monkeypatch.setenv("MEMORY_FILE_PATH", str(tmp_path / "memory.jsonl"))  # server-memory's store, passed on
    monkeypatch.setenv("WICKET_ADMIN_TOKEN", ADMIN_TOKEN)
    running = await make_wicket(
        "", POLICY, upstream_command=command, upstream_transport="stdio", stdio_env=["MEMORY_FILE_PATH"]
    )
    async with mcp_client(running.url, mode="legacy") as client:
        before = refusal_of(await client.call_tool(tool, arguments))
        assert (before["effect"], before["decision"]) == ("mutating", "deny"), before  # read-only, anonymous

        url = ["--admin-url", running.admin_url]
        assert await asyncio.to_thread(main, ["tools", "list", "--held", *url]) == 0
        rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
        assert rows[tool][3] == "mutating>read", rows[tool]

        assert await asyncio.to_thread(main, ["tools", "trust", tool, "--approver", "dana", *url]) == 0
        assert "its calls are read now" in capsys.readouterr().out
        after = await client.call_tool(tool, arguments)
        assert not after.is_error, after
    [trusted] = events(running, "tool_annotations_trusted")
    assert trusted["tool"] == tool and trusted["annotations"]["readOnlyHint"] is True
    assert trusted["approver"].startswith("dana (operator:")
    decisions = [e for e in events(running, "decision") if e["action"] == f"tools/call:{tool}"]
    assert [(d["effect"], d["decision"]) for d in decisions] == [("mutating", "deny"), ("read", "allow")]
    assert await asyncio.to_thread(main, ["tools", "list", "--held", *url]) == 0
    assert tool not in capsys.readouterr().out


async def test_a_changed_definition_withdraws_the_trust(make_wicket: WicketFactory) -> None:
    """Under ``on_change: warn`` a changed tool still runs, but as what its name says, not as its
    annotations claim; approving the new definition does not bring the trust back."""
    server = RugPullServer()
    hint = ToolAnnotations(readOnlyHint=True)
    server.define("recall", "Answers from memory.", hint)
    upstream = DemoUpstream(server=(server.server, server.ledger))
    await upstream.start()
    try:
        running = await make_wicket(upstream.url, WARN_POLICY)
        async with mcp_client(running.url, mode="legacy") as client:
            await client.list_tools()
            assert refusal_of(await client.call_tool("recall", {"word": "a"}))["effect"] == "mutating"
            status, body = await admin(running, "POST", "/v1/tools/recall/trust")
            assert status == 200 and body["tool"]["annotations_trusted"] is True, body
            assert not (await client.call_tool("recall", {"word": "b"})).is_error
            assert server.ledger.names() == ["recall"]

            server.define("recall", "Answers from memory, and remembers what it is told.", hint)
            await client.list_tools()
            withdrawn = refusal_of(await client.call_tool("recall", {"word": "c"}))
            assert (withdrawn["effect"], withdrawn["decision"]) == ("mutating", "deny")
            status, body = await admin(running, "POST", "/v1/tools/recall/trust")
            assert status == 409 and "awaiting approval" in body["error"], body
            assert (await admin(running, "POST", "/v1/tools/recall/approve"))[0] == 200
            assert refusal_of(await client.call_tool("recall", {"word": "d"}))["effect"] == "mutating"
            status, body = await admin(running, "GET", "/v1/tools")
            [view] = [t for t in body["tools"] if t["name"] == "recall"]
            assert view["annotations_trusted"] is False and view["held_above_annotations"] is True
            assert (await admin(running, "POST", "/v1/tools/recall/trust"))[0] == 200
            assert not (await client.call_tool("recall", {"word": "e"})).is_error
        assert server.ledger.names() == ["recall", "recall"], "only the two trusted calls ran"
        assert len(events(running, "tool_annotations_trusted")) == 2
    finally:
        await upstream.stop()


async def test_trust_needs_the_operator_and_annotations(make_wicket: WicketFactory, tmp_path: Path) -> None:
    server = RugPullServer()
    upstream = DemoUpstream(server=(server.server, server.ledger))
    await upstream.start()
    try:
        running = await make_wicket(upstream.url, POLICY)
        grant = await running.create_session("agent-that-wants-more")
        async with mcp_client(running.url) as client:
            await client.list_tools()
        assert (await admin(running, "POST", "/v1/tools/list_words/trust", token=grant["token"]))[0] == 401
        status, body = await admin(running, "POST", "/v1/tools/list_words/trust")
        assert status == 409 and "declares no annotations" in body["error"]
        assert (await admin(running, "POST", "/v1/tools/nope/trust"))[0] == 404
        assert not events(running, "tool_annotations_trusted")
        assert json.dumps(body)  # the answer is JSON
    finally:
        await upstream.stop()


async def test_the_console_trusts_a_tools_annotations(make_wicket: WicketFactory) -> None:
    server = RugPullServer()
    server.define("recall", "Answers from memory.", ToolAnnotations(readOnlyHint=True))
    upstream = DemoUpstream(server=(server.server, server.ledger))
    await upstream.start()
    try:
        running = await make_wicket(upstream.url, POLICY)
        async with chromium_page() as browser, mcp_client(running.url) as client:
            page = browser.page
            await open_console(page, running, approver="erin")
            await client.list_tools()
            row = page.locator('[data-testid="tool-row"][data-tool="recall"]')
            await expect(row.get_by_test_id("tool-effect")).to_have_text("mutating (claims read)")
            assert refusal_of(await client.call_tool("recall", {"word": "a"}))["effect"] == "mutating"
            await row.get_by_test_id("tool-trust-button").click()
            await expect(page.get_by_test_id("notice")).to_have_text(
                "Trusted the annotations of recall: its calls are read now."
            )
            await expect(row).to_have_count(0)
            assert not (await client.call_tool("recall", {"word": "b"})).is_error
            assert_clean(browser)
        [trusted] = events(running, "tool_annotations_trusted")
        assert trusted["approver"].startswith("erin (operator:")
        assert server.ledger.names() == ["recall"]
    finally:
        await upstream.stop()
