"""stdio MCP servers behind Wicket: one child per MCP session, through the upstream bridge.

Everything is real: Wicket on real ports, the mcp SDK client, and ``tests/stdio_server.py``
spawned as a child process by the bridge. A child's own answers (its pid, its per-process
counter and ledger) and its stderr prove which process ran what.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import mcp_types as types
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mcp.shared.exceptions import MCPError

from proxy.app import Wicket
from proxy.cli import build_parser, resolve_upstream
from proxy.core.policy import parse_policy_text
from proxy.core.sessions import Session
from proxy.settings import Settings
from proxy.upstreams.stdio import CHILD_ENVIRONMENT, StdioChannel, stdio_label
from tests.conftest import (
    ADMIN_TOKEN,
    MODES,
    ROOT,
    SESSION_KEY,
    RunningWicket,
    WicketFactory,
    mcp_client,
    spawn_logged,
)
from tests.redis_support import RedisServer
from tests.waiting import eventually

COMMAND = [sys.executable, str(ROOT / "tests" / "stdio_server.py")]
POLICY = """
version: 1
anonymous: {enabled: true, scope: ["*"]}
sessions: {ttl_seconds: 3600, max_ttl_seconds: 86400, default_scope: ["*"]}
defaults: {capabilities: ["*"]}
tools:
  exit_now: {effect: read}
"""
RAW_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}


async def stdio_wicket(make_wicket: WicketFactory, **overrides: Any) -> RunningWicket:
    return await make_wicket("", POLICY, upstream_command=COMMAND, upstream_transport="stdio", **overrides)


def text(result: types.CallToolResult) -> str:
    content = result.content[0]
    assert isinstance(content, types.TextContent)
    return content.text


def pid_in(answer: str) -> int:
    match = re.search(r"pid=(\d+)", answer)
    assert match, answer
    return int(match.group(1))


def reaped(pid: int) -> bool:
    """Our own children must be gone entirely: not running and not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def not_running(pid: int) -> bool:
    """A grandchild is reaped by whoever adopts it; a zombie no longer runs."""
    if reaped(pid):
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True


def exits(running: RunningWicket | Wicket, reason: str) -> float:
    wicket = running.wicket if isinstance(running, RunningWicket) else running
    value = wicket.metrics.registry.get_sample_value("wicket_upstream_child_exits_total", {"reason": reason})
    return value or 0.0


async def raw_call(
    http: aiohttp.ClientSession, url: str, message: dict[str, Any], sid: str | None = None
) -> tuple[int, str | None, list[dict[str, Any]]]:
    """POST one JSON-RPC message to Wicket; (status, Mcp-Session-Id, every JSON message in the answer)."""
    headers = dict(RAW_HEADERS, **({"Mcp-Session-Id": sid} if sid else {}))
    async with http.post(url, json=message, headers=headers) as response:
        body = await response.text()
        if response.content_type == "text/event-stream":
            messages = [json.loads(line[5:]) for line in body.splitlines() if line.startswith("data:")]
        else:
            messages = [json.loads(body)] if body else []
        return response.status, response.headers.get("Mcp-Session-Id"), messages


async def raw_session(http: aiohttp.ClientSession, url: str) -> str:
    status, sid, messages = await raw_call(http, url, INITIALIZE)
    assert status == 200 and sid, messages
    notified = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert (await raw_call(http, url, notified, sid))[0] == 202
    return sid


async def raw_tool(http: aiohttp.ClientSession, url: str, sid: str, name: str, **arguments: Any) -> Any:
    message = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    status, _, messages = await raw_call(http, url, message, sid)
    assert status == 200, messages
    return messages[-1]["result"]


# -- one process per MCP session ---------------------------------------------------------


async def test_concurrent_clients_get_their_own_process(make_wicket: WicketFactory) -> None:
    running = await stdio_wicket(make_wicket)
    opened = asyncio.Event()
    waiting = 0

    async def agent(name: str) -> tuple[list[str], list[str], types.CallToolResult]:
        nonlocal waiting
        async with mcp_client(running.url, mode="legacy") as client:
            first = text(await client.call_tool("get_counter", {}))
            waiting += 1
            if waiting == 2:
                opened.set()
            await opened.wait()  # both sessions are open at the same time
            assert running.wicket.bridge is not None and running.wicket.bridge.live_channels == 2
            second = text(await client.call_tool("get_counter", {}))
            denied = await client.call_tool("drop_table", {"table": name})
            ledger = (await client.call_tool("get_ledger", {})).structured_content
            assert isinstance(ledger, dict)
            return [first, second], list(ledger["result"]), denied

    (answers_a, ledger_a, denied_a), (answers_b, ledger_b, denied_b) = await asyncio.gather(
        agent("users"), agent("orders")
    )
    pid_a, pid_b = pid_in(answers_a[0]), pid_in(answers_b[0])
    assert pid_a != pid_b and pid_a != os.getpid()
    assert answers_a == [f"pid={pid_a} count=1", f"pid={pid_a} count=2"]
    assert answers_b == [f"pid={pid_b} count=1", f"pid={pid_b} count=2"]
    for denied in (denied_a, denied_b):
        assert denied.is_error and "drop_table' was denied" in text(denied)
    # Each child's own ledger: its two counter calls, and never the refused drop_table.
    assert ledger_a == ledger_b == ["get_counter", "get_counter"]
    # Leaving the client sends DELETE: the session's child is ended and reaped.
    await eventually(lambda: reaped(pid_a) and reaped(pid_b), "both children are reaped")
    await eventually(lambda: running.wicket.bridge is not None and running.wicket.bridge.live_channels == 0, "no child")
    assert exits(running, "closed") == 2


async def test_the_upstream_label_names_the_whole_command(make_wicket: WicketFactory) -> None:
    running = await stdio_wicket(make_wicket)
    async with mcp_client(running.url, mode="legacy") as client:
        await client.call_tool("get_counter", {})
    decisions = [
        e
        for e in running.audit_events()
        if e.get("event") == "decision" and e.get("action") == "tools/call:get_counter"
    ]
    assert decisions, running.audit_events()
    label = decisions[0]["upstream"]
    assert re.fullmatch(r"http://stdio/" + re.escape(Path(sys.executable).name) + r"-[0-9a-f]{12}", label), label
    assert label == stdio_label(COMMAND) != stdio_label([*COMMAND, "--describe", "other"])
    assert stdio_label(COMMAND) == stdio_label(list(COMMAND)), "the digest is stable"
    info = {"upstream": label, "transport": "stdio"}
    assert running.wicket.metrics.registry.get_sample_value("wicket_upstream_info", info) == 1
    assert stdio_label(COMMAND, "files-v2") == "http://stdio/files-v2"
    with pytest.raises(ValueError):
        stdio_label(COMMAND, "a/b")


async def test_two_servers_of_one_program_on_one_redis_keep_their_own_pins_trust_and_aud(
    make_wicket: WicketFactory, redis_server: RedisServer
) -> None:
    """Two sidecars run different versions of the same program on one Redis: each pins its own
    definitions (neither sees the other's as a changed tool), a ``trusted:`` entry trusts only
    the server it names, and their credentials' ``aud`` differ."""
    key = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    older, newer = [*COMMAND, "--describe", "Counts calls (v1)."], [*COMMAND, "--describe", "Counts calls (v2)."]
    policy = (
        POLICY
        + f"""
upstreams:
  - url: "{stdio_label(older)}"
    trusted: true
"""
    )
    common = {"store": redis_server.url, "environ": {"WICKET_SIGNING_KEY": key.decode()}, "upstream_transport": "stdio"}
    first = await make_wicket("", policy, upstream_command=older, **common)
    second = await make_wicket("", policy, upstream_command=newer, **common)
    assert first.wicket.settings.upstream != second.wicket.settings.upstream
    answers = []
    for running in (first, second):
        async with mcp_client(running.url, mode="legacy") as client:
            listed = {tool.name: tool for tool in (await client.list_tools()).tools}
            answers.append(
                (listed, await client.call_tool("get_counter", {}), await client.call_tool("recall", {"topic": "x"}))
            )
    for (listed, counter, _), version in zip(answers, ("v1", "v2"), strict=True):
        assert listed["get_counter"].description == f"Counts calls ({version}).", "each sees its own, unblocked"
        assert not counter.is_error, counter
    assert not answers[0][2].is_error, "the trusted server's readOnlyHint makes recall a read"
    assert answers[1][2].is_error and "approval" in text(answers[1][2]), "the other server is not trusted"
    pins = [await r.wicket.toolpins.states(r.wicket.settings.upstream) for r in (first, second)]
    assert {p["upstream"] for p in pins[0]} == {first.wicket.settings.upstream}
    assert {p["upstream"] for p in pins[1]} == {second.wicket.settings.upstream}
    assert all(p["status"] == "pinned" for p in pins[0] + pins[1])
    assert not [e for r in (first, second) for e in r.audit_events() if e.get("event") == "tool_changed"]
    audiences = []
    for running in (first, second):
        session = Session("ses_aud", "aud-agent", ("*",), "read-only", time.time(), time.time() + 60)
        issued = await running.wicket.credentials.issue_for_request(
            session, upstream=running.wicket.settings.upstream, method="tools/list", inbound_token=None
        )
        payload = issued.headers["Authorization"].split()[1].split(".")[1]
        audiences.append(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["aud"])
    assert audiences == [first.wicket.settings.upstream, second.wicket.settings.upstream]


async def test_stderr_goes_to_the_log_with_the_child_pid(
    make_wicket: WicketFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wicket.stdio")
    running = await stdio_wicket(make_wicket)
    async with mcp_client(running.url, mode="legacy") as client:
        pid = pid_in(text(await client.call_tool("get_counter", {})))
    lines = [r.getMessage() for r in caplog.records if r.name == "wicket.stdio"]
    assert f"[pid {pid}] stdio-test-server: ready (pid {pid})" in lines
    assert f"[pid {pid}] stdio-test-server: ran get_counter" in lines


async def test_the_child_sees_only_the_allowlist_and_what_the_operator_passes(
    make_wicket: WicketFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment as the child itself reports it: no model key, cloud credential or Wicket
    secret, only the allowlist and the variable named with ``--stdio-env``."""
    monkeypatch.setenv("WICKET_ADMIN_TOKEN", "operator-secret-in-the-environment")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-not-for-third-parties")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-third-parties-either")
    monkeypatch.setenv("STDIO_TEST_PASSED", "yes")
    monkeypatch.setenv("LC_TIME", "C")
    running = await stdio_wicket(make_wicket, stdio_env=["STDIO_TEST_PASSED", "WICKET_ADMIN_TOKEN"])
    async with mcp_client(running.url, mode="legacy") as client:
        result = await client.call_tool("get_environment", {})
    seen = set(json.loads(text(result)))
    assert {"PATH", "HOME", "STDIO_TEST_PASSED", "LC_TIME"} <= seen, seen
    assert not seen & {"ANTHROPIC_API_KEY", "AWS_SECRET_ACCESS_KEY", "WICKET_ADMIN_TOKEN"}, seen
    assert seen <= CHILD_ENVIRONMENT | {"STDIO_TEST_PASSED", "LC_TIME", "LC_CTYPE"}, "nothing beyond the allowlist"


KNOCK = """
import json, socket, sys
body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}).encode()
head = (
    "POST /mcp HTTP/1.1\\r\\nHost: wicket-upstream\\r\\nContent-Type: application/json\\r\\n"
    "Accept: application/json, text/event-stream\\r\\nConnection: close\\r\\n"
    f"Content-Length: {len(body)}\\r\\n\\r\\n"
)
with socket.socket(socket.AF_UNIX) as s:
    s.connect(sys.argv[1])
    s.sendall(head.encode() + body)
    print(s.recv(65536).decode().splitlines()[0])
"""


async def test_the_bridge_serves_only_wicket_itself(make_wicket: WicketFactory) -> None:
    """Another process of the same user (here: root, past the 0700 directory) reaching the
    bridge's socket is refused before anything is spawned."""
    running = await stdio_wicket(make_wicket)
    bridge = running.wicket.bridge
    assert bridge is not None
    knock = [sys.executable, "-c", KNOCK, bridge.socket_path]
    done = await asyncio.to_thread(subprocess.run, knock, capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "HTTP/1.1 403 Forbidden", done.stderr
    assert bridge.live_channels == 0 and exits(running, "closed") == 0
    async with mcp_client(running.url, mode="legacy") as client:  # Wicket itself still gets through
        assert text(await client.call_tool("get_counter", {})).endswith("count=1")


# -- the 2026-07-28 generation: a fresh child per request -----------------------------------


async def test_stateless_requests_each_get_a_fresh_process(
    make_wicket: WicketFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wicket.stdio")
    running = await stdio_wicket(make_wicket)
    async with mcp_client(running.url, mode="2026-07-28") as client:
        first = text(await client.call_tool("get_counter", {}))
        second = text(await client.call_tool("get_counter", {}))
        denied = await client.call_tool("drop_table", {"table": "users"})
    assert first.endswith("count=1") and second.endswith("count=1")
    assert pid_in(first) != pid_in(second)
    assert denied.is_error and "drop_table' was denied" in text(denied)
    await eventually(lambda: reaped(pid_in(first)) and reaped(pid_in(second)), "each request's child is reaped")
    # Every child's stderr is relayed: none of them ever ran the refused call.
    ran = [r.getMessage() for r in caplog.records if r.name == "wicket.stdio" and " ran " in r.getMessage()]
    assert ran and all(line.endswith("ran get_counter") for line in ran), ran


@pytest.mark.parametrize("mode", MODES)
async def test_server_requests_reach_the_client_and_its_answer_the_child(make_wicket: WicketFactory, mode: str) -> None:
    """Legacy: ``elicitation/create`` rides the call's stream and the answer POST returns to the
    same child. 2026-07-28: ``input_required`` comes back and the retry, carrying the child's
    sealed requestState, is routed to the child that minted it (any other child refuses it)."""
    running = await stdio_wicket(make_wicket)
    asked: list[str] = []

    async def answer(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"colour": "teal"})

    async with mcp_client(running.url, mode=mode, elicitation_callback=answer) as client:
        result = await client.call_tool("get_colour", {})
        counter = text(await client.call_tool("get_counter", {}))
    assert asked == ["Which colour?"]
    assert text(result) == f"pid={pid_in(text(result))} colour=teal"
    if mode == "legacy":
        assert pid_in(counter) == pid_in(text(result))  # one session, one child
    else:
        assert pid_in(counter) != pid_in(text(result))


@pytest.mark.parametrize("mode", MODES)
async def test_progress_reaches_the_request_that_asked(make_wicket: WicketFactory, mode: str) -> None:
    running = await stdio_wicket(make_wicket)
    seen: list[tuple[float, float | None, str | None]] = []

    async def progress(value: float, total: float | None, message: str | None) -> None:
        seen.append((value, total, message))

    async with mcp_client(running.url, mode=mode) as client:
        result = await client.call_tool("get_progress", {"steps": 3}, progress_callback=progress)
    assert text(result).endswith(" done")
    assert seen == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]


# -- crashes, the cap, idleness ------------------------------------------------------------


async def test_a_crash_fails_the_call_and_the_next_session_gets_a_new_child(
    make_wicket: WicketFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="wicket.bridge")
    running = await stdio_wicket(make_wicket)
    async with mcp_client(running.url, mode="legacy") as client:
        first = pid_in(text(await client.call_tool("get_counter", {})))
        with pytest.raises(MCPError) as crashed:
            await client.call_tool("exit_now", {"code": 3})
        assert crashed.value.error.code == -32051
        assert crashed.value.error.message == "The stdio MCP server exited with code 3."
        with pytest.raises(MCPError) as dropped:
            await client.call_tool("get_counter", {})
        assert dropped.value.error.code == -32001  # the session is gone: the client must re-initialize
        assert dropped.value.error.message == (
            "Session not found: the stdio MCP server exited with code 3. Start a new MCP session."
        )
    assert reaped(first)
    async with mcp_client(running.url, mode="legacy") as client:
        replaced = text(await client.call_tool("get_counter", {}))
    assert pid_in(replaced) != first and replaced.endswith("count=1")
    assert exits(running, "crashed") == 1
    assert any("ended: the stdio MCP server exited with code 3" in r.getMessage() for r in caplog.records)


async def test_a_message_nested_too_deep_ends_the_channel_with_a_clear_error(make_wicket: WicketFactory) -> None:
    """A stdio server that answers with JSON nested past what Wicket reads is stopped: the pending
    call fails with -32051 and a reason, the proxy never answers 500."""
    running = await stdio_wicket(make_wicket)
    async with mcp_client(running.url, mode="legacy") as client:
        with pytest.raises(MCPError) as stopped:
            await client.call_tool("get_deep", {"depth": 100})
    assert stopped.value.error.code == -32051
    assert "nested deeper than 64 levels" in stopped.value.error.message


async def test_a_crash_during_a_stateless_request_says_what_to_do(make_wicket: WicketFactory) -> None:
    running = await stdio_wicket(make_wicket)
    async with mcp_client(running.url, mode="2026-07-28") as client:
        with pytest.raises(MCPError) as crashed:
            await client.call_tool("exit_now", {"code": 4})
    message = crashed.value.error.message
    assert crashed.value.error.code == -32051
    assert "exited with code 4 before answering" in message and "session-based (legacy) mode" in message


async def test_the_channel_cap_answers_503(make_wicket: WicketFactory) -> None:
    running = await stdio_wicket(make_wicket, max_upstream_children=1)
    bridge = running.wicket.bridge
    assert bridge is not None
    async with aiohttp.ClientSession() as http:
        sid = await raw_session(http, running.url)
        status, _, messages = await raw_call(http, running.url, INITIALIZE)
        assert status == 503
        assert "limit of 1 concurrent upstream MCP sessions" in messages[0]["error"]["message"]
        modern = {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "tools/list",
            "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}},
        }
        headers = dict(RAW_HEADERS, **{"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/list"})
        async with http.post(running.url, json=modern, headers=headers) as response:
            assert response.status == 503
        # The session that holds the slot still works, and closing it frees the slot.
        assert "count=1" in (await raw_tool(http, running.url, sid, "get_counter"))["content"][0]["text"]
        async with http.delete(running.url, headers={"Mcp-Session-Id": sid}) as response:
            assert response.status == 200
        await eventually(lambda: bridge.live_channels == 0, "the slot is free")
        status, _, _ = await raw_call(http, running.url, INITIALIZE)
        assert status == 200


async def test_one_standalone_stream_per_session(make_wicket: WicketFactory) -> None:
    running = await stdio_wicket(make_wicket)
    headers = {"Accept": "text/event-stream"}
    async with aiohttp.ClientSession() as http:
        sid = await raw_session(http, running.url)
        async with http.get(running.url, headers=dict(headers, **{"Mcp-Session-Id": sid})) as stream:
            assert stream.status == 200 and stream.content_type == "text/event-stream"
            async with http.get(running.url, headers=dict(headers, **{"Mcp-Session-Id": sid})) as second:
                assert second.status == 409
                assert "one standalone SSE stream" in (await second.json())["error"]["message"]
            async with http.delete(running.url, headers={"Mcp-Session-Id": sid}) as deleted:
                assert deleted.status == 200
            assert await stream.content.read() == b""  # closing the session ends its stream


async def test_an_idle_session_is_closed(make_wicket: WicketFactory) -> None:
    running = await stdio_wicket(make_wicket, upstream_idle_seconds=0.5)
    bridge = running.wicket.bridge
    assert bridge is not None
    async with aiohttp.ClientSession() as http:
        sid = await raw_session(http, running.url)
        pid = pid_in((await raw_tool(http, running.url, sid, "get_counter"))["content"][0]["text"])
        await eventually(lambda: bridge.live_channels == 0 and reaped(pid), "the idle child is closed")
        status, _, messages = await raw_call(
            http, running.url, {"jsonrpc": "2.0", "id": 9, "method": "tools/list"}, sid
        )
    assert status == 404 and messages[0]["error"]["code"] == -32001
    assert exits(running, "idle") == 1


# -- shutdown --------------------------------------------------------------------------------


async def test_shutdown_ends_every_child_and_its_children(tmp_path: Path) -> None:
    settings = Settings(
        upstream="",
        upstream_command=COMMAND,
        upstream_transport="stdio",
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        audit_log=str(tmp_path / "audit.jsonl"),
        session_key=SESSION_KEY,
        admin_token=ADMIN_TOKEN,
        environ={},
    )
    wicket = Wicket(settings, parse_policy_text(POLICY, "test-policy.yaml"))
    await wicket.start()
    stopped = False
    try:
        assert wicket.bridge is not None
        socket_dir = Path(wicket.bridge.socket_path).parent
        assert socket_dir.stat().st_mode & 0o777 == 0o700
        url = f"http://127.0.0.1:{wicket.data_port}/mcp"
        async with aiohttp.ClientSession() as http:
            sids = [await raw_session(http, url), await raw_session(http, url)]
            children = [pid_in((await raw_tool(http, url, sid, "get_counter"))["content"][0]["text"]) for sid in sids]
            grandchild = int((await raw_tool(http, url, sids[0], "get_helper_pid"))["structuredContent"]["result"])
        assert len(set(children)) == 2 and not reaped(grandchild)
        await wicket.stop()
        stopped = True
    finally:
        if not stopped:
            await wicket.stop()
    assert all(reaped(pid) for pid in children), children
    await eventually(lambda: not_running(grandchild), "the grandchild is gone")
    assert not socket_dir.exists()


STUBBORN = """
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print('{"jsonrpc": "2.0", "method": "notifications/stubborn"}', flush=True)
while True:
    time.sleep(1)
"""


async def test_a_child_that_ignores_eof_and_sigterm_is_killed() -> None:
    channel = await StdioChannel.spawn(
        [sys.executable, "-c", STUBBORN],
        env=dict(os.environ),
        max_message_bytes=1 << 20,
        stdin_grace=0.2,
        term_grace=0.2,
    )
    first = await anext(aiter(channel))  # SIGTERM is ignored from here on
    assert first.message["method"] == "notifications/stubborn"
    await channel.close()
    assert channel.returncode == -signal.SIGKILL and reaped(channel.pid)
    assert not channel.alive


# -- the command line ------------------------------------------------------------------------


def test_run_takes_a_command_after_the_double_dash(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    args = parser.parse_args(["run", "--max-children", "4"])
    args.upstream_command = ["python", "server.py", "--flag"]
    assert resolve_upstream(args) == ("", "stdio", ["python", "server.py", "--flag"])
    args = parser.parse_args(["run", "--upstream", "http://127.0.0.1:3001/mcp"])
    args.upstream_command = []
    assert resolve_upstream(args) == ("http://127.0.0.1:3001/mcp", "streamable-http", None)
    for argv, command, problem in (
        (["run"], [], "needs --upstream URL"),
        (["run", "--upstream", "http://h/mcp"], ["python"], "not both"),
        (["run", "--upstream", "http://h/mcp", "--upstream-transport", "stdio"], [], "goes with -- CMD"),
    ):
        args = parser.parse_args(argv)
        args.upstream_command = command
        with pytest.raises(SystemExit) as exited:
            resolve_upstream(args)
        assert exited.value.code == 2 and problem in capsys.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_wicket_run_command_exits_cleanly_and_leaves_no_child(tmp_path: Path, sig: signal.Signals) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    log_path = tmp_path / "wicket.log"
    argv = [
        sys.executable, "-m", "proxy", "run", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
        "--policy", str(policy), "--audit-log", str(tmp_path / "audit.jsonl"), "--",
        sys.executable, "tests/stdio_server.py",
    ]  # fmt: skip
    proc = spawn_logged(argv, log_path)
    try:
        ports: list[int] = []

        def listening() -> bool:
            assert proc.poll() is None, log_path.read_text()
            found = re.search(r"listening: data \S+ \(port (\d+)\), admin \S+ \(port (\d+)\)", log_path.read_text())
            if found:
                ports.extend(int(p) for p in found.groups())
            return found is not None

        await eventually(listening, "wicket listens", deadline=30)
        name = stdio_label([sys.executable, "tests/stdio_server.py"])
        label = f"upstream {name} (stdio: {sys.executable}, one process per"
        assert label in log_path.read_text()
        url = f"http://127.0.0.1:{ports[0]}/mcp"
        async with aiohttp.ClientSession() as http:
            sid = await raw_session(http, url)
            child = pid_in((await raw_tool(http, url, sid, "get_counter"))["content"][0]["text"])
            grandchild = int((await raw_tool(http, url, sid, "get_helper_pid"))["structuredContent"]["result"])
        assert not reaped(child) and not reaped(grandchild)
        proc.send_signal(sig)
        assert await asyncio.to_thread(proc.wait, 30) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert reaped(child), log_path.read_text()
    await eventually(lambda: not_running(grandchild), "the grandchild is gone")
    assert "shutting down" in log_path.read_text()


async def test_the_policy_names_what_a_stdio_server_gets(
    make_wicket: WicketFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STDIO_TEST_FROM_POLICY", "yes")
    monkeypatch.setenv("STDIO_TEST_NOT_NAMED", "no")
    policy = (
        POLICY
        + f"""
upstreams:
  - url: "{stdio_label(COMMAND, "envtest")}"
    env: [STDIO_TEST_FROM_POLICY]
"""
    )
    running = await make_wicket(
        "", policy, upstream_command=COMMAND, upstream_transport="stdio", upstream_name="envtest"
    )
    async with mcp_client(running.url, mode="legacy") as client:
        seen = set(json.loads(text(await client.call_tool("get_environment", {}))))
    assert "STDIO_TEST_FROM_POLICY" in seen and "STDIO_TEST_NOT_NAMED" not in seen, seen
