"""The MCP Tasks extension through Wicket: every method classified, a task acted on only by the
session that created it, and a task's input requests screened like other server requests.

The upstream is a small HTTP server speaking the 2026-07-28 Tasks extension (flat
``CreateTaskResult``, ``tasks/get`` with ``inputRequests``, ``tasks/update``, ``tasks/cancel``)
whose ledger records every task method it really executed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import RunningWicket, WicketFactory, serve
from tests.test_sampling_guard import DANGEROUS, DENIED

POLICY = """
version: 1
defaults: {capabilities: ["*"]}
tools:
  slow_compute: {effect: read}
"""
TOOLS = [{"name": "slow_compute", "inputSchema": {"type": "object"}}]
HOSTILE = {"messages": [{"role": "user", "content": {"type": "text", "text": DANGEROUS}}], "maxTokens": 9}


@pytest.fixture
async def tasks_upstream() -> AsyncIterator[tuple[str, list[tuple[str, str]]]]:
    ledger: list[tuple[str, str]] = []
    created: dict[str, str] = {}

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.method == "DELETE":
            return web.Response(status=200)
        body = await request.json()
        method, params = body.get("method"), body.get("params") or {}
        if "id" not in body:
            return web.Response(status=202)
        result: dict[str, Any]
        if method == "initialize":
            result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {"name": "t"}}
        elif method == "tools/list":
            result = {"tools": TOOLS, "resultType": "complete"}
        elif method == "tools/call":
            task_id = f"task-{len(created) + 1}"
            created[task_id] = str(params.get("arguments", {}).get("label", ""))
            ledger.append(("create", task_id))
            result = {"resultType": "task", "taskId": task_id, "status": "working", "ttlMs": 60000}
        elif method == "tasks/get":
            task_id = params["taskId"]
            ledger.append(("get", task_id))
            result = {"resultType": "complete", "taskId": task_id, "status": "working"}
            if created.get(task_id) == "ask":
                result["status"] = "input_required"
                result["inputRequests"] = {"q1": {"method": "sampling/createMessage", "params": HOSTILE}}
        elif method == "tasks/list":
            result = {"tasks": [{"taskId": t, "status": "working"} for t in created]}
        elif method in ("tasks/cancel", "tasks/update"):
            ledger.append((method.split("/")[1], params["taskId"]))
            result = {"resultType": "complete"}
        else:
            return web.json_response({"jsonrpc": "2.0", "id": body["id"], "error": {"code": -32601, "message": "?"}})
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": result})

    app = web.Application()
    app.router.add_route("*", "/mcp", handle)
    async with serve(app) as base:
        yield base + "/mcp", ledger


async def rpc(running: RunningWicket, token: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": method,
    }
    if method == "tools/call":
        headers["Mcp-Name"] = params["name"]
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": meta}}
    async with aiohttp.ClientSession() as http, http.post(running.url, json=body, headers=headers) as response:
        return dict(json.loads(await response.text()))


async def test_only_the_creating_session_acts_on_a_task(
    tasks_upstream: tuple[str, list[tuple[str, str]]], make_wicket: WicketFactory
) -> None:
    url, ledger = tasks_upstream
    running = await make_wicket(url, POLICY)
    owner = (await running.create_session("owner", mode="read-write"))["token"]
    other = (await running.create_session("other", mode="read-write"))["token"]
    created = await rpc(running, owner, "tools/call", {"name": "slow_compute", "arguments": {"label": "x"}})
    task_id = created["result"]["taskId"]

    for method, extra in (("tasks/get", {}), ("tasks/cancel", {}), ("tasks/update", {"inputResponses": {}})):
        refused = await rpc(running, other, method, {"taskId": task_id, **extra})
        assert refused["error"]["code"] == DENIED, refused
        assert "was not created by this session" in refused["error"]["message"]
    assert (await rpc(running, other, "tasks/cancel", {"taskId": "task-never-seen"}))["error"]["code"] == DENIED
    assert ledger == [("create", task_id)], "nothing the other session asked reached the upstream"

    assert "result" in await rpc(running, owner, "tasks/update", {"taskId": task_id, "inputResponses": {}})
    assert "result" in await rpc(running, owner, "tasks/cancel", {"taskId": task_id})
    assert ledger == [("create", task_id), ("update", task_id), ("cancel", task_id)]
    effects = {
        e["action"]: e["effect"]
        for e in running.audit_events()
        if e["event"] == "decision" and e["decision"] == "allow"
    }
    assert effects["tasks/update"] == effects["tasks/cancel"] == "mutating"


async def test_tasks_list_shows_a_session_only_its_own_tasks(
    tasks_upstream: tuple[str, list[tuple[str, str]]], make_wicket: WicketFactory
) -> None:
    url, _ = tasks_upstream
    running = await make_wicket(url, POLICY)
    first = (await running.create_session("first"))["token"]
    second = (await running.create_session("second"))["token"]
    mine = (await rpc(running, first, "tools/call", {"name": "slow_compute", "arguments": {}}))["result"]["taskId"]
    theirs = (await rpc(running, second, "tools/call", {"name": "slow_compute", "arguments": {}}))["result"]["taskId"]
    listed = await rpc(running, first, "tasks/list", {})
    assert [t["taskId"] for t in listed["result"]["tasks"]] == [mine], listed
    listed = await rpc(running, second, "tasks/list", {})
    assert [t["taskId"] for t in listed["result"]["tasks"]] == [theirs], listed


async def test_a_read_only_session_reads_its_task_but_cannot_cancel_it(
    tasks_upstream: tuple[str, list[tuple[str, str]]], make_wicket: WicketFactory
) -> None:
    url, ledger = tasks_upstream
    running = await make_wicket(url, POLICY)
    token = (await running.create_session("reader"))["token"]
    task_id = (await rpc(running, token, "tools/call", {"name": "slow_compute", "arguments": {}}))["result"]["taskId"]
    assert (await rpc(running, token, "tasks/get", {"taskId": task_id}))["result"]["status"] == "working"
    refused = await rpc(running, token, "tasks/cancel", {"taskId": task_id})
    assert refused["error"]["code"] == DENIED and refused["error"]["data"]["effect"] == "mutating", refused
    assert ledger == [("create", task_id), ("get", task_id)]


async def test_input_requests_of_a_task_are_screened(
    tasks_upstream: tuple[str, list[tuple[str, str]]], make_wicket: WicketFactory
) -> None:
    url, _ = tasks_upstream
    running = await make_wicket(url, POLICY)
    token = (await running.create_session("asker"))["token"]
    created = await rpc(running, token, "tools/call", {"name": "slow_compute", "arguments": {"label": "ask"}})
    answer = await rpc(running, token, "tasks/get", {"taskId": created["result"]["taskId"]})
    assert answer["error"]["code"] == DENIED, answer
    assert "sampling/createMessage input request 'q1'" in answer["error"]["message"]
    assert DANGEROUS not in json.dumps(answer), "the client never sees the refused prompt"
