"""Upstream answers are screened exactly as clients parse them (ids, SSE line endings, content types,
JSON lines), and an answer Wicket cannot screen never reaches the client.

The upstream here is hostile on purpose: a scripted HTTP server answering ``tools/list`` with a tool the
policy blocklists (``run_shell``). Whatever form the answer takes, the client must not see that tool.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from mcp.shared.dispatcher import coerce_request_id

from tests.conftest import WicketFactory, serve
from tests.test_http_defences import META, modern_headers

POLICY = """
version: 1
anonymous: {enabled: true, scope: ["*"]}
defaults: {capabilities: ["*"]}
blocklist: ["*shell*"]
"""
TOOLS = [
    {"name": "get_weather", "inputSchema": {"type": "object"}},
    {"name": "run_shell", "inputSchema": {"type": "object"}},
]
LIST_TOOLS = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": META}})


def tools_answer(answer_id: Any = 1) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": answer_id, "result": {"tools": TOOLS}}).encode()


@dataclass
class Scripted:
    """What the upstream answers next: content types and the body, as chunks (a stream) or whole."""

    url: str = ""
    content_types: list[str] = field(default_factory=lambda: ["application/json"])
    chunks: list[bytes] = field(default_factory=list)
    stream: bool = False
    gate: asyncio.Event | None = None  # the upstream waits here after the first chunk
    catalog: bool = False  # answer Wicket's own tool listing (stateless, TOOLS) instead of the script


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    script = Scripted()

    async def handle(request: web.Request) -> web.StreamResponse:
        sent = json.loads(await request.read())
        method = sent.get("method") if isinstance(sent, dict) else None
        if script.catalog and method in ("initialize", "tools/list"):
            if method == "initialize":
                answer = {"jsonrpc": "2.0", "id": sent["id"], "error": {"code": -32601, "message": "stateless"}}
                return web.json_response(answer)
            return web.Response(body=tools_answer(sent["id"]), content_type="application/json")
        headers = [("Content-Type", value) for value in script.content_types]
        if not script.stream:
            response = web.Response(body=b"".join(script.chunks))
            response.headers.popall("Content-Type", None)
            for name, value in headers:
                response.headers.add(name, value)
            return response
        stream = web.StreamResponse()
        stream.headers.popall("Content-Type", None)
        for name, value in headers:
            stream.headers.add(name, value)
        stream.enable_chunked_encoding()
        await stream.prepare(request)
        for index, chunk in enumerate(script.chunks):
            await stream.write(chunk)
            if index == 0 and script.gate is not None:
                await asyncio.wait_for(script.gate.wait(), 10)
        await stream.write_eof()
        return stream

    app = web.Application()
    app.router.add_post("/mcp", handle)
    async with serve(app) as base:
        script.url = base + "/mcp"
        yield script


async def list_tools(url: str) -> tuple[int, str, bytes]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=LIST_TOOLS, headers=modern_headers("tools/list")) as response,
    ):
        return response.status, response.headers.get("Content-Type", ""), await response.read()


def sse(data: bytes, ending: bytes = b"\n") -> bytes:
    return b"event: message" + ending + b"data: " + data + ending + ending


@pytest.mark.parametrize("answer_id", ["1", " 1", "01", 1.0, "1e0", 2])
@pytest.mark.parametrize("kind", ["json", "sse"])
async def test_a_response_under_any_spelling_of_the_id_is_screened(
    answer_id: Any, kind: str, scripted: Scripted, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(scripted.url, POLICY)
    if kind == "sse":
        scripted.content_types, scripted.chunks = ["text/event-stream"], [sse(tools_answer(answer_id))]
    else:
        scripted.chunks = [tools_answer(answer_id)]
    status, _, body = await list_tools(running.url)
    assert status == 200
    assert b"get_weather" in body and b"run_shell" not in body
    if isinstance(answer_id, str) and answer_id.strip().isdigit():
        assert coerce_request_id(answer_id) == 1  # the Python SDK would take it as the answer to request 1


@pytest.mark.parametrize(
    "raw",
    [
        sse(tools_answer(), b"\r"),  # CR alone ends lines
        sse(tools_answer(), b"\r\n"),
        b"\xef\xbb\xbf" + sse(tools_answer()),  # a byte order mark clients skip
        b"event: message\ndata\ndata: " + tools_answer() + b"\n\n",  # "data" without a colon
        b'data: {"jsonrpc":"2.0","id":1,\r\ndata: "result":{"tools":' + json.dumps(TOOLS).encode() + b"}}\n\r",
    ],
    ids=["cr", "crlf", "bom", "bare-data", "mixed"],
)
async def test_sse_is_read_with_the_whatwg_line_rules(
    raw: bytes, scripted: Scripted, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(scripted.url, POLICY)
    scripted.content_types, scripted.chunks, scripted.stream = ["text/event-stream"], [raw[:7], raw[7:]], True
    status, _, body = await list_tools(running.url)
    assert status == 200 and b"get_weather" in body and b"run_shell" not in body


@pytest.mark.parametrize(
    ("content_types", "kind"),
    [
        (["Application/JSON; charset=utf-8"], "json"),
        (["application/json;profile=x"], "json"),
        (["text/event-stream; charset=utf-8"], "sse"),
        (["TEXT/EVENT-STREAM"], "sse"),
        (["text/plain"], "json"),  # no client reads it as JSON-RPC, but it is screened all the same
        ([], "json"),
    ],
)
async def test_content_types_as_clients_read_them_are_screened(
    content_types: list[str], kind: str, scripted: Scripted, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(scripted.url, POLICY)
    scripted.content_types = content_types
    scripted.chunks = [sse(tools_answer()) if kind == "sse" else tools_answer()]
    status, _, body = await list_tools(running.url)
    assert status == 200 and b"get_weather" in body and b"run_shell" not in body


@pytest.mark.parametrize(
    "content_types", [["application/json, text/event-stream"], ["application/json", "text/event-stream"]]
)
async def test_a_content_type_clients_disagree_on_is_not_relayed(
    content_types: list[str], scripted: Scripted, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(scripted.url, POLICY)
    scripted.content_types, scripted.chunks = content_types, [tools_answer()]
    status, _, body = await list_tools(running.url)
    assert status == 502 and b"run_shell" not in body
    assert json.loads(body)["error"]["code"] == -32603


@pytest.mark.parametrize("kind", ["json", "sse"])
async def test_an_answer_that_is_not_json_is_replaced_by_an_error(
    kind: str, scripted: Scripted, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(scripted.url, POLICY)
    garbage = b'{"jsonrpc":"2.0","id":1,"result":{"tools":' + json.dumps(TOOLS).encode() + b"}} trailing"
    if kind == "sse":
        scripted.content_types, scripted.chunks = ["text/event-stream"], [sse(garbage)]
    else:
        scripted.chunks = [garbage]
    status, _, body = await list_tools(running.url)
    assert status == 200 and b"run_shell" not in body
    message = json.loads(body.split(b"data: ", 1)[1] if kind == "sse" else body)
    assert message["id"] == 1 and message["error"]["code"] == -32603


async def test_an_event_over_the_limit_ends_the_stream_with_an_error(
    scripted: Scripted, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(scripted.url, POLICY, max_message_bytes=4096)
    padded = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "result": {"tools": TOOLS, "pad": "x" * 8000}}, separators=(",", ":")
    ).encode()
    notice = sse(b'{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"hi"}}')
    scripted.content_types, scripted.stream = ["text/event-stream"], True
    scripted.chunks = [notice, *(sse(padded)[i : i + 1000] for i in range(0, len(sse(padded)), 1000))]
    status, _, body = await list_tools(running.url)
    assert status == 200 and b"run_shell" not in body
    assert body.startswith(notice)  # what came before the oversized event was relayed as it was
    error = json.loads(body[len(notice) :].split(b"data: ", 1)[1])
    assert error["id"] == 1 and error["error"]["code"] == -32603 and "exceeds 4096 bytes" in error["error"]["message"]


async def test_json_lines_are_relayed_one_by_one_and_each_is_screened(
    scripted: Scripted, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(scripted.url, POLICY)
    first = b'{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"listening"}}\n'
    scripted.stream, scripted.gate = True, asyncio.Event()
    scripted.chunks = [first, tools_answer() + b"\n"]
    async with (
        aiohttp.ClientSession() as http,
        http.post(running.url, data=LIST_TOOLS, headers=modern_headers("tools/list")) as response,
    ):
        # The upstream holds its second line until the client has the first: a buffering relay would hang here.
        assert await asyncio.wait_for(response.content.readline(), 10) == first
        scripted.gate.set()
        second = await response.content.readline()
        assert await response.content.read() == b""
    assert json.loads(second)["result"]["tools"] == [TOOLS[0]]


async def test_a_json_line_over_the_limit_ends_the_stream(scripted: Scripted, make_wicket: WicketFactory) -> None:
    running = await make_wicket(scripted.url, POLICY, max_message_bytes=2048)
    first = b'{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"x"}}\n'
    big = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": TOOLS, "pad": "y" * 4000}}).encode() + b"\n"
    scripted.stream, scripted.chunks = True, [first, big[:1500], big[1500:]]
    status, _, body = await list_tools(running.url)
    assert status == 200 and b"run_shell" not in body
    lines = body.splitlines()
    assert lines[0] == first.strip() and json.loads(lines[1])["error"]["code"] == -32603


CALL = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "get_weather", "arguments": {"city": "Oslo"}, "_meta": META},
    }
)
FAILED = {"content": [{"type": "text", "text": "no"}], "isError": True}


@pytest.mark.parametrize(
    ("answer", "status", "detail"),
    [
        ({"id": 1, "result": {"content": [], "isError": False}}, "success", None),
        ({"id": 1, "result": FAILED}, "tool_error", None),
        ({"id": "1", "result": FAILED}, "tool_error", None),  # the id as clients match it
        ({"id": 1, "result": {**FAILED, "isError": "true"}}, "success", None),
        ({"id": 1, "error": {"code": -32601, "message": "no"}}, "error", "JSON-RPC error -32601"),
        ({"id": 1, "error": "broken"}, "error", "JSON-RPC error"),
        ({"id": 1, "error": {"code": -1}, "result": FAILED}, "error", "JSON-RPC error -1"),
        ({"id": 2, "result": FAILED}, "success", None),  # another request's answer
        ({"id": 1, "method": None, "result": FAILED}, "success", None),  # "method": null answers nothing
        ({"id": 1, "result": "not an object"}, "success", None),
        ([{"id": 1, "result": FAILED}], "tool_error", None),  # a batch
    ],
)
async def test_the_outcome_audit_reads_the_answer_as_clients_do(
    answer: Any, status: str, detail: str | None, scripted: Scripted, make_wicket: WicketFactory
) -> None:
    scripted.catalog = True
    running = await make_wicket(scripted.url, POLICY)
    if isinstance(answer, dict):
        answer = {"jsonrpc": "2.0", **answer}
    else:
        answer = [{"jsonrpc": "2.0", **item} for item in answer]
    scripted.chunks = [json.dumps(answer).encode()]
    async with (
        aiohttp.ClientSession() as http,
        http.post(running.url, data=CALL, headers=modern_headers("tools/call", "get_weather")) as response,
    ):
        assert response.status == 200
        await response.read()
    outcome = [e for e in running.audit_events() if e["event"] == "outcome"][-1]
    assert (outcome["status"], outcome.get("detail")) == (status, detail)
