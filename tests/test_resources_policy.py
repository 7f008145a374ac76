"""What an agent touched: resources/read is audited with its URI and prompts/get with its name, and
the policy's ``resources`` patterns decide which URIs may be read (real mcp SDK client, a real MCP
server whose ledger records every read it served)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError

from proxy.core.guardian import resource_refusal, uri_forms
from proxy.core.policy import parse_policy_text
from proxy.demo.server import DemoUpstream, Ledger
from tests.conftest import MODES, WicketFactory, mcp_client

POLICY = """version: 1
resources:
  allow: ["docs://*", "file:///srv/docs/*"]
  deny: ["*secret*", "file:///srv/docs/private/*"]
"""


def build_server() -> tuple[MCPServer, Ledger]:
    ledger = Ledger()
    server = MCPServer("resources-upstream")

    @server.resource("docs://{name}")
    def doc(name: str) -> str:
        ledger.record("resources/read", uri=f"docs://{name}")
        return f"the {name} document"

    @server.resource("file:///srv/docs/{name}")
    def srv_doc(name: str) -> str:
        ledger.record("resources/read", uri=f"file:///srv/docs/{name}")
        return f"file {name}"

    @server.resource("file:///etc/{name}")
    def etc(name: str) -> str:
        ledger.record("resources/read", uri=f"file:///etc/{name}")
        return "root:x:0:0"

    @server.prompt()
    def review(topic: str) -> str:
        ledger.record("prompts/get", prompt="review")
        return f"Review {topic}."

    return server, ledger


@pytest.fixture
async def upstream() -> AsyncIterator[DemoUpstream]:
    running = DemoUpstream(server=build_server())
    await running.start()
    yield running
    await running.stop()


@pytest.mark.parametrize("mode", MODES)
async def test_reads_and_prompts_are_audited_with_what_they_touched(
    mode: str, upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(upstream.url, POLICY)
    grant = await running.create_session("reader")
    async with mcp_client(running.url, token=grant["token"], mode=mode) as client:
        result = await client.read_resource("docs://handbook")
        assert "the handbook document" in result.contents[0].text  # type: ignore[union-attr]
        prompt = await client.get_prompt("review", {"topic": "q3"})
        assert "Review q3." in prompt.messages[0].content.text  # type: ignore[union-attr]
    assert upstream.ledger.calls == [
        ("resources/read", {"uri": "docs://handbook"}),
        ("prompts/get", {"prompt": "review"}),
    ]
    events = running.audit_events()
    read = [e for e in events if e.get("action") == "resources/read"]
    assert [e["event"] for e in read] == ["decision", "outcome"]
    assert all(e["resource"] == "docs://handbook" for e in read)
    got = [e for e in events if e.get("action") == "prompts/get"]
    assert [e["event"] for e in got] == ["decision", "outcome"] and all(e["prompt"] == "review" for e in got)


@pytest.mark.parametrize(
    "uri",
    [
        "file:///etc/passwd",  # not allowed
        "docs://top-secret",  # denied
        "file:///srv/docs/private/keys",  # denied
        "file:///srv/docs/../../etc/passwd",  # escapes the allowed directory once normalised
        "file:///srv/docs/%2e%2e/%2e%2e/etc/passwd",  # the same, percent-encoded
        "FILE:///etc/passwd",  # scheme case
    ],
)
async def test_a_denied_uri_never_reaches_the_upstream(
    uri: str, upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(upstream.url, POLICY)
    grant = await running.create_session("reader")
    async with mcp_client(running.url, token=grant["token"]) as client:
        with pytest.raises(MCPError) as refused:
            await client.read_resource(uri)
        assert refused.value.error.code == -32050
        assert "resources." in refused.value.error.message
        assert "the handbook document" in (await client.read_resource("docs://handbook")).contents[0].text  # type: ignore[union-attr]
    assert upstream.ledger.calls == [("resources/read", {"uri": "docs://handbook"})], "only the allowed read ran"
    denied = [e for e in running.audit_events() if e.get("resource") == uri]
    assert len(denied) == 1 and denied[0]["decision"] == "deny"


def test_resource_rules_judge_every_form_of_a_uri() -> None:
    policy = parse_policy_text(POLICY, "p.yaml")
    assert resource_refusal(policy, "file:///srv/docs/guide.md") is None
    assert resource_refusal(policy, "file:///srv/docs/a%20b.md") is None
    assert resource_refusal(policy, "file:///srv/docs%2F..%2F..%2Fetc/passwd") is not None
    assert resource_refusal(policy, "docs://x/Secret") is None, "globs are case-sensitive in the path"
    assert resource_refusal(policy, "docs://Secret") is not None, "but a host is not: docs://secret"
    assert resource_refusal(policy, "docs://x/%73ecret") is not None, "an escaped letter is still the letter"
    assert uri_forms("HTTPS://Example.COM/a/./b/../c") == ("HTTPS://Example.COM/a/./b/../c", "https://example.com/a/c")
    assert resource_refusal(parse_policy_text("version: 1\n", "p.yaml"), "file:///etc/passwd") is None
    deny_only = parse_policy_text('version: 1\nresources: {deny: ["file:///etc/*"]}\n', "p.yaml")
    assert resource_refusal(deny_only, "file:///var/x") is None
    assert resource_refusal(deny_only, "file:///var/../etc/shadow") is not None
    nothing = parse_policy_text("version: 1\nresources: {allow: []}\n", "p.yaml")
    assert resource_refusal(nothing, "docs://handbook") is not None


async def test_a_subscription_to_a_denied_uri_is_refused_before_the_upstream(
    upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(upstream.url, POLICY)
    grant = await running.create_session("reader")
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "resources/subscribe",
        "params": {"uri": "file:///etc/shadow", "_meta": meta},
    }
    headers = {
        "Accept": "application/json, text/event-stream",
        "Authorization": f"Bearer {grant['token']}",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "resources/subscribe",
    }
    async with aiohttp.ClientSession() as http, http.post(running.url, json=body, headers=headers) as response:
        answer = await response.json()
    assert answer["error"]["code"] == -32050 and "resources.allow" in answer["error"]["message"]
    assert upstream.ledger.calls == []
    (event,) = [e for e in running.audit_events() if e.get("action") == "resources/subscribe"]
    assert event["resource"] == "file:///etc/shadow" and event["decision"] == "deny"


@pytest.mark.parametrize("mode", MODES)
async def test_resources_the_session_may_never_read_are_not_listed(mode: str, make_wicket: WicketFactory) -> None:
    built = build_server()
    server = built[0]
    everything = DemoUpstream(server=built)
    await everything.start()
    try:
        # Static resources so the upstream lists them.
        listed = {"docs://readme", "file:///etc/passwd", "docs://top-secret"}
        for uri in listed:
            server.resource(uri, name=uri)(lambda: "static")
        running = await make_wicket(everything.url, POLICY)
        grant = await running.create_session("reader")
        async with mcp_client(running.url, token=grant["token"], mode=mode) as client:
            result = await client.list_resources()
        assert {str(r.uri) for r in result.resources} == {"docs://readme"}
        unrestricted = await make_wicket(everything.url, "version: 1\n")
        grant = await unrestricted.create_session("reader")
        async with mcp_client(unrestricted.url, token=grant["token"], mode=mode) as client:
            assert {str(r.uri) for r in (await client.list_resources()).resources} == listed
    finally:
        await everything.stop()
