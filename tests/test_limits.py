"""No limit ends a check silently: through the real proxy, in front of real upstreams.

A statement past the characters the analysis reads, or after thousands of other values, is
refused and never executed (the upstream's ledger proves it); JSON nested deeper than Wicket
reads, in a request or in an upstream's answer, gets a clear JSON-RPC error instead of a 500.
Long but harmless arguments still pass.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp.types import ToolAnnotations

from proxy.adapters.jsonrpc import MAX_DEPTH, NestingTooDeep, loads
from proxy.core.arguments import MAX_SCAN
from proxy.demo.server import DemoUpstream, Ledger
from tests.conftest import RunningWicket, WicketFactory, mcp_client, serve
from tests.test_http_defences import call, modern_headers, post


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def deep_json(depth: int) -> str:
    """JSON text nested ``depth`` levels (built as text: past ~1000 levels Python cannot dump it)."""
    return "[" * depth + "1" + "]" * depth


def with_deep(message: dict[str, Any], depth: int) -> str:
    """``message`` as JSON text with its ``"__deep__"`` value nested ``depth`` levels."""
    return json.dumps(message).replace('"__deep__"', deep_json(depth))


def record_of(result: Any) -> dict[str, Any]:
    assert result.is_error, result
    return dict(result.meta["wicket/decision"])


# --------------------------------------------------------------------------- the JSON reader


def test_loads_measures_depth_exactly() -> None:
    assert loads(json.dumps(nested(MAX_DEPTH))) == nested(MAX_DEPTH)
    for depth in (MAX_DEPTH + 1, 5_000, 200_000):  # the last is past Python's recursion limit
        with pytest.raises(NestingTooDeep):
            loads(deep_json(depth))
    assert loads(deep_json(MAX_DEPTH).encode()) == json.loads(deep_json(MAX_DEPTH))
    # Brackets inside strings (escaped quotes, backslashes, unbalanced runs) neither hide nor fake depth.
    tricky = {"a": "]]]}}}" * 50, "b": '\\"]]]' * 50, "c": "[[[{{{" * 50, "d": "\\\\"}
    assert loads(json.dumps(tricky)) == tricky
    with pytest.raises(NestingTooDeep):
        loads(json.dumps({"pad": "]" * 200, "deep": nested(MAX_DEPTH + 1), "end": '\\"]]'}))
    wide = {"tools": [{"inputSchema": {"properties": {f"p{i}": {"type": "string"}}}} for i in range(500)]}
    assert loads(json.dumps(wide).encode()) == wide  # many brackets, shallow: parsed as is


# --------------------------------------------------------------------------- requests


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100_000])
async def test_deeply_nested_request_is_400_invalid_request(
    depth: int, upstream: DemoUpstream, wicket: RunningWicket
) -> None:
    body = with_deep(call("get_weather", {"city": "Oslo", "extra": "__deep__"}), depth)
    status, _, answer = await post(wicket.url, body, modern_headers(name="get_weather"))
    assert status == 400, answer
    assert answer["error"]["code"] == -32600 and "nests deeper" in answer["error"]["message"]
    assert upstream.ledger.calls == []


async def test_nesting_within_the_limit_is_forwarded(upstream: DemoUpstream, wicket: RunningWicket) -> None:
    extra = nested(MAX_DEPTH - 4)
    body = json.dumps(call("search_notes", {"query": "groceries", "extra": extra}))
    status, _, answer = await post(wicket.url, body, modern_headers(name="search_notes"))
    assert status == 200 and answer["result"]["isError"] is False, answer
    assert upstream.ledger.names() == ["search_notes"]


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 5_000])  # the admin port's body limit is small
async def test_deeply_nested_check_api_body_is_400(depth: int, wicket: RunningWicket) -> None:
    grant = await wicket.create_session("deep")
    body = with_deep({"tool_name": "get_weather", "arguments": {"x": "__deep__"}}, depth)
    headers = {"Authorization": f"Bearer {grant['token']}", "Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(wicket.admin_url + "/v1/check", data=body, headers=headers) as response,
    ):
        assert response.status == 400
        assert "JSON object" in (await response.json())["error"]


# --------------------------------------------------------------------------- arguments past a bound


PADDINGS = {
    "whitespace": " " * (MAX_SCAN + 10) + "DROP TABLE notes",
    "comment": "SELECT 1 /* " + "x" * MAX_SCAN + " */; DROP TABLE notes",
    "literal": "SELECT '" + "y" * MAX_SCAN + "'; DELETE FROM notes",
}


@pytest.mark.parametrize("padding", list(PADDINGS))
async def test_statement_after_64_kib_of_padding_is_refused(
    padding: str, upstream: DemoUpstream, wicket: RunningWicket
) -> None:
    async with mcp_client(wicket.url) as client:
        record = record_of(await client.call_tool("run_query", {"sql": PADDINGS[padding]}))
    assert record["decision"] != "allow" and record["effect"] == "destructive", record
    assert "Argument findings: sql" in record["reason"]
    assert upstream.ledger.calls == []


async def test_statement_after_thousands_of_values_is_refused(upstream: DemoUpstream, wicket: RunningWicket) -> None:
    rows = {f"r{i}": {"id": i, "tags": ["a", "b"]} for i in range(3000)}  # 12,000 values before it
    async with mcp_client(wicket.url) as client:
        record = record_of(await client.call_tool("run_query", {"params": rows, "sql": "DROP TABLE notes"}))
        flood = {f"r{i}": [1, 2, 3, 4] for i in range(5000)}  # more values than the walk visits
        flooded = record_of(await client.call_tool("run_query", {"params": flood, "sql": "SELECT 1"}))
    assert record["effect"] == "destructive" and record["decision"] != "allow", record
    assert flooded["effect"] == "destructive" and "too many to analyse" in flooded["reason"], flooded
    assert upstream.ledger.calls == []


async def test_long_but_harmless_arguments_pass(upstream: DemoUpstream, wicket: RunningWicket) -> None:
    prose = "Buy milk, eggs and bread; call the plumber about the sink. " * 5_000  # ~300 KB
    sql = "SELECT title FROM notes WHERE " + " OR ".join(f"title = 'note {i}'" for i in range(1500))
    async with mcp_client(wicket.url) as client:
        searched = await client.call_tool("search_notes", {"query": prose})
        queried = await client.call_tool("run_query", {"sql": sql})
    assert not searched.is_error and not queried.is_error
    assert upstream.ledger.calls == [("search_notes", {"query": prose}), ("run_query", {"sql": sql})]


# --------------------------------------------------------------------------- upstream answers


def deep_server() -> tuple[MCPServer, Ledger]:
    """A real MCP server whose tool answers with structured content nested ``depth`` levels."""
    server, ledger = MCPServer("deep-answers"), Ledger()

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def get_tree(depth: int) -> dict[str, Any]:
        """Return a tree of the given depth."""
        ledger.record("get_tree", depth=depth)
        return {"tree": nested(depth)}

    return server, ledger


@pytest.fixture(params=[False, True], ids=["sse", "json"])
async def deep_upstream(request: pytest.FixtureRequest) -> AsyncIterator[DemoUpstream]:
    server = DemoUpstream(server=deep_server(), json_response=request.param)
    await server.start()
    yield server
    await server.stop()


async def test_deeply_nested_upstream_answer_is_32603(deep_upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(deep_upstream.url)
    async with mcp_client(running.url) as client:
        shallow = await client.call_tool("get_tree", {"depth": 10})
        with pytest.raises(MCPError) as refused:
            await client.call_tool("get_tree", {"depth": MAX_DEPTH + 5})
    assert not shallow.is_error
    assert refused.value.error.code == -32603 and "nests deeper" in refused.value.error.message
    assert deep_upstream.ledger.names() == ["get_tree", "get_tree"]  # it ran; its answer was withheld


@pytest.mark.parametrize("deep_answer", ["tools/call", "tools/list"])
@pytest.mark.parametrize("content_type", ["application/json", "text/event-stream"])
async def test_answer_past_the_recursion_limit_is_an_error_not_500(
    content_type: str, deep_answer: str, make_wicket: WicketFactory
) -> None:
    """A hostile upstream answers with JSON nested 100,000 levels deep (Python's parser gives up):
    the agent's call, or the tool list Wicket asks for itself before it."""
    executed: list[str] = []
    deep = with_deep({"jsonrpc": "2.0", "id": 1, "result": {"content": [], "x": "__deep__"}}, 100_000)

    async def answer(request: web.Request) -> web.Response:
        message = await request.json()
        method, request_id = message.get("method"), message.get("id")
        if request_id is None:
            return web.Response(status=202)
        if method == "initialize":
            result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {"name": "deep"}}
        elif method != deep_answer and method == "tools/list":
            tool = {"name": "get_weather", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": True}}
            result = {"tools": [tool]}
        else:
            executed.append(method)
            text = deep.replace('"id": 1', f'"id": {json.dumps(request_id)}', 1)
            if content_type == "application/json":
                return web.Response(text=text, content_type=content_type)
            return web.Response(text=f"event: message\ndata: {text}\n\n", content_type=content_type)
        reply = {"jsonrpc": "2.0", "id": request_id, "result": result}
        return web.json_response(reply, headers={"Mcp-Session-Id": "deep-1"})

    async def end(request: web.Request) -> web.Response:
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/mcp", answer)
    app.router.add_delete("/mcp", end)
    async with serve(app) as base:
        running = await make_wicket(base + "/mcp")
        status, _, body = await post(
            running.url, json.dumps(call("get_weather", {"city": "x"})), modern_headers(name="get_weather")
        )
    if deep_answer == "tools/list":  # Wicket could not learn the tool: the call is refused, never forwarded
        assert status == 502 and body["id"] == 1 and body["error"]["code"] == -32051, body
        assert executed == ["tools/list"]
        return
    assert status == 200, body
    if content_type == "text/event-stream":
        assert isinstance(body, str)
        body = json.loads(body.split("data: ", 1)[1])
    assert body["id"] == 1 and body["error"]["code"] == -32603, body
    assert executed == ["tools/call"]


async def test_deeply_nested_a2a_request_is_400_invalid_request(make_wicket: WicketFactory) -> None:
    from proxy.demo.a2a_agent import JSONRPC_PATH, DemoA2AAgent
    from tests.test_a2a import POLICY, base_of, token_for

    agent = DemoA2AAgent()
    await agent.start()
    try:
        running = await make_wicket("", POLICY, a2a_upstream=agent.base)
        token = await token_for(running, "planner")
        message = {"messageId": "m-1", "role": "ROLE_USER", "parts": [{"text": "hi"}], "metadata": "__deep__"}
        body = with_deep({"jsonrpc": "2.0", "id": 7, "method": "SendMessage", "params": {"message": message}}, 5_000)
        headers = {"Authorization": f"Bearer {token}", "A2A-Version": "1.0", "Content-Type": "application/json"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(base_of(running) + JSONRPC_PATH, data=body, headers=headers) as response,
        ):
            assert response.status == 400
            assert (await response.json())["error"]["code"] == -32600
        assert agent.ledger.requests == []
    finally:
        await agent.stop()


@pytest.mark.parametrize(
    "raw",
    [
        b'{"jsonrpc": "2.0", "id": 123456789012345678901234567890, "method": "ping"}',  # past 64 bits
        b'{"x": -9223372036854775809, "y": 9223372036854775807}',
        b'{"n": NaN, "i": Infinity, "big": 1e400}',
        '{"lone": "\udc00"}',
        b'\xef\xbb\xbf{"bom": true}',
        '{"utf16": 1}'.encode("utf-16"),
        b'{"k": "first", "k": "last"}',
        b'{"f": [0.1, 1e-320, 2.2250738585072014e-308, -0.0, 1E2, 0.30000000000000004]}',
        b'{"text": "caf\\u00e9 \\ud83d\\ude00 \xc3\xa9"}',
    ],
)
def test_the_one_json_reader_reads_exactly_as_python_s_json_does(raw: bytes | str) -> None:
    """The fast path (orjson) may only answer where it reads alike; everything else is json's."""
    assert repr(loads(raw)) == repr(json.loads(raw))


@pytest.mark.parametrize(
    "raw",
    [
        b'{"n": 1234567890123456789}',  # 19 digits, fits 64 bits: json's int either way
        b'{"n": 123456789012345678, "m": 1.2345678901234567890e3}',  # 18 in a row; 19 after a dot
        b'{"n": 18446744073709551616}',  # 2**64
        b'{"s": "a 30-digit string 123456789012345678901234567890 stays a string"}',
        '{"n": 12345678901234567890, "arabic": "١٢٣"}'.encode(),
    ],
)
def test_long_digit_runs_are_read_as_json_reads_them(raw: bytes) -> None:
    """Text with 19 or more ASCII digits in a row skips orjson (it turns an integer past 64 bits
    into a float); the value is json's wherever the run is."""
    value = loads(raw)
    assert repr(value) == repr(json.loads(raw))
    assert all(type(v) is type(w) for v, w in zip(value.values(), json.loads(raw).values(), strict=True))


@pytest.mark.parametrize("raw", [b'{"a":', b'{"a": 1} trailing', b"\xff\xfe\xfd", b"", b"{'single': 1}"])
def test_the_one_json_reader_refuses_what_json_refuses(raw: bytes) -> None:
    with pytest.raises(ValueError):
        json.loads(raw)
    with pytest.raises(ValueError):
        loads(raw)
