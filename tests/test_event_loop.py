"""``wicket run --event-loop``: uvloop by default where it is installed, asyncio's loop on request,
and a clear refusal for what cannot be had. Both loops serve real MCP traffic end to end."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest
import uvloop

from proxy.cli import event_loop_factory
from proxy.demo.server import DemoUpstream
from tests.conftest import DEMO_POLICY, ROOT, mcp_client, spawn_logged
from tests.waiting import eventually


def test_auto_and_uvloop_name_uvloop_and_asyncio_names_the_standard_loop() -> None:
    assert event_loop_factory("auto") is uvloop.new_event_loop
    assert event_loop_factory("uvloop") is uvloop.new_event_loop
    assert event_loop_factory("asyncio") is None


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert event_loop_factory("auto") is None
    with pytest.raises(SystemExit, match="uvloop is not installed"):
        event_loop_factory("uvloop")


def test_an_unknown_loop_is_refused_at_start_with_one_line(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "proxy", "run", "--upstream", "http://127.0.0.1:9/mcp"]
    env = {"PATH": "/usr/bin:/bin", "WICKET_EVENT_LOOP": "trio", "WICKET_AUDIT_LOG": str(tmp_path / "audit.jsonl")}
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "wicket: --event-loop (or WICKET_EVENT_LOOP) must be one of auto, uvloop, asyncio, not 'trio'"
    )


@pytest.mark.parametrize(("flag", "named"), [(None, "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio")])
async def test_each_loop_decides_and_forwards_real_mcp_calls(
    flag: str | None, named: str, upstream: DemoUpstream, tmp_path: Path
) -> None:
    log_path = tmp_path / "wicket.log"
    argv = [
        sys.executable, "-m", "proxy", "run", "--upstream", upstream.url, "--policy", str(DEMO_POLICY),
        "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--audit-log", str(tmp_path / "audit.jsonl"),
    ]  # fmt: skip
    if flag is not None:
        argv += ["--event-loop", flag]
    proc = spawn_logged(argv, log_path)
    try:
        found: list[re.Match[str]] = []

        def listening() -> bool:
            assert proc.poll() is None, log_path.read_text()
            match = re.search(r"listening: data \S+ \(port (\d+)\).*, event loop (\w+)", log_path.read_text())
            if match:
                found.append(match)
            return match is not None

        await eventually(listening, "wicket listens", deadline=30)
        assert found[0].group(2) == named
        url = f"http://127.0.0.1:{found[0].group(1)}/mcp"
        async with mcp_client(url) as client:
            weather = await client.call_tool("get_weather", {"city": "Oslo"})
            refused = await client.call_tool("drop_table", {"table": "users"})
        assert not weather.is_error and weather.content[0].text == "It is sunny in Oslo."
        assert refused.is_error
        assert upstream.ledger.names() == ["get_weather"]  # the destructive call never reached the server
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 30) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
