"""``tools/list`` shows a session only the tools it may call: blocklisted, ungranted and
out-of-scope tools are absent, and calling one anyway is still refused before the upstream."""

from __future__ import annotations

import pytest

from proxy.demo.server import DemoUpstream
from tests.conftest import MODES, WicketFactory, mcp_client

POLICY = """
version: 1
anonymous: {enabled: false}
defaults: {capabilities: ["get_*", "list_*", "search_*", "create_*"]}
blocklist: ["list_notes"]
"""


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("json_response", [False, True], ids=["sse", "json"])
async def test_hidden_tools_are_absent_and_refused_if_called(
    mode: str, json_response: bool, make_wicket: WicketFactory
) -> None:
    upstream = DemoUpstream(json_response=json_response)
    await upstream.start()
    try:
        running = await make_wicket(upstream.url, POLICY)
        grant = await running.create_session("reader", scope=["get_*", "list_*", "search_*"])
        async with mcp_client(running.url, token=grant["token"], mode=mode) as client:
            listed = {tool.name for tool in (await client.list_tools()).tools}
            # Everything the demo server offers, minus: blocklisted, not granted, outside the scope ceiling.
            assert listed == {"get_weather", "get_summary", "search_notes"}
            refused = await client.call_tool("drop_table", {"table": "notes"})
            blocked = await client.call_tool("list_notes", {})
            outside = await client.call_tool("create_note", {"title": "t", "text": "x"})
    finally:
        await upstream.stop()
    assert refused.is_error and "not granted" in refused.content[0].text
    assert blocked.is_error and "blocklisted" in blocked.content[0].text
    assert outside.is_error and "scope ceiling" in outside.content[0].text
    assert upstream.ledger.names() == []
    hidden = running.wicket.metrics.registry.get_sample_value("wicket_tools_hidden_total")
    assert hidden == 16 - 3  # sixteen demo tools, three listed


async def test_an_unfiltered_list_passes_through_unchanged(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(
        upstream.url,
        POLICY.replace('blocklist: ["list_notes"]', "").replace('["get_*", "list_*", "search_*", "create_*"]', '["*"]'),
    )
    grant = await running.create_session("reader")
    async with mcp_client(running.url, token=grant["token"]) as client:
        listed = [tool.name for tool in (await client.list_tools()).tools]
    assert len(listed) == 16
    assert not running.wicket.metrics.registry.get_sample_value("wicket_tools_hidden_total")
