"""The wicket command line: policy check, audit verify and sessions create."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.app import Wicket
from proxy.audit.chain import verify_file
from proxy.cli import _serve_until_signal, main
from proxy.core.policy import load_policy
from proxy.demo.server import DemoUpstream
from proxy.settings import Settings
from tests.conftest import ADMIN_TOKEN, ROOT, SESSION_KEY, RunningWicket, WicketFactory
from tests.waiting import eventually


def test_policy_check_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", str(ROOT / "policies/default.yaml"), str(ROOT / "policies/demo.yaml")]) == 0
    assert "ok: 2 policy file(s) valid" in capsys.readouterr().out


def test_policy_check_reports_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nanonymous:\n  enabeld: true\n")
    assert main(["policy", "check", str(bad)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith(f"{bad}:3: ")
    assert "enabeld" in out[0]


async def test_audit_verify_cli(wicket: RunningWicket, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for i in range(3):
        await wicket.create_session(f"agent-{i}")
    path = wicket.audit_path
    checkpoints = Path(f"{path}.checkpoints")
    # The log's first record is checkpointed as soon as it is written: a new log is never left
    # without a checkpoint for an interval (verify would call it broken meanwhile).
    await eventually(checkpoints.exists, "the first record is checkpointed")
    assert wicket.wicket.checkpoints is not None
    await wicket.wicket.checkpoints.checkpoint()
    assert main(["audit", "verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: 3 records, head ") and "verified, the last at seq 3" in out

    # Without its checkpoints a log's tail is unprotected: verify says so and fails; the chain alone verifies.
    os.replace(checkpoints, tmp_path / "aside")
    assert main(["audit", "verify", str(path)]) == 1
    assert "no checkpoints" in capsys.readouterr().out
    assert main(["audit", "verify", "--chain-only", str(path)]) == 0
    assert capsys.readouterr().out.startswith("ok: 3 records, head ")
    os.replace(tmp_path / "aside", checkpoints)

    lines = path.read_text().splitlines()
    event = json.loads(lines[1])
    event["agent_id"] = "someone-else"
    lines[1] = json.dumps(event, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")
    assert main(["audit", "verify", str(path)]) == 1
    assert "line 2" in capsys.readouterr().out


def test_output_into_a_closed_pipe_ends_quietly() -> None:
    """``wicket audit verify log | head -1``: the reader leaves early, and the command stops as
    Unix tools do (exit 141, 128 + SIGPIPE) instead of printing a traceback."""
    argv = [sys.executable, "-m", "proxy", "policy", "check", str(ROOT / "policies/demo.yaml")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the command has written anything: its first write finds no reader
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


async def test_sessions_create_cli(
    wicket: RunningWicket, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WICKET_ADMIN_TOKEN", ADMIN_TOKEN)
    argv = ["sessions", "create", "--agent", "cli-bot", "--scope", "get_*", "--intent", "weather"]
    code = await asyncio.to_thread(main, [*argv, "--admin-url", wicket.admin_url])
    assert code == 0
    created = json.loads(capsys.readouterr().out)
    assert created["token"].startswith("wkt_") and created["session_id"].startswith("ses_")
    session = await wicket.wicket.sessions.by_token(created["token"])
    assert session is not None and session.scope == ("get_*",) and session.mode == "read-only"
    assert session.intent == "weather"

    monkeypatch.setenv("WICKET_ADMIN_TOKEN", "wrong")
    code = await asyncio.to_thread(main, [*argv, "--admin-url", wicket.admin_url])
    assert code == 1
    assert "Operator credential required" in capsys.readouterr().err


# -- errors a person can act on ----------------------------------------------------------------------


@pytest.mark.parametrize("variable", ["WICKET_SESSION_KEY", "WICKET_ADMIN_TOKEN"])
def test_a_short_secret_is_refused_at_start_with_one_line(variable: str, tmp_path: Path) -> None:
    env = {**os.environ, "WICKET_SESSION_KEY": "k" * 32, "WICKET_ADMIN_TOKEN": "t" * 32, variable: "short"}
    argv = [sys.executable, "-m", "proxy", "run", "--upstream", "http://127.0.0.1:9/mcp"]
    argv += ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--audit-log", str(tmp_path / "a.jsonl")]
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"wicket: {variable} must be at least 16 bytes (got 5); generate one with: openssl rand -hex 32"
    ]
    assert not (tmp_path / "a.jsonl").exists()


async def test_revoking_an_unknown_session_fails_clearly(
    wicket: RunningWicket, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WICKET_ADMIN_TOKEN", ADMIN_TOKEN)
    code = await asyncio.to_thread(main, ["revoke", "session", "ses_nosuch", "--admin-url", wicket.admin_url])
    assert code == 1
    err = capsys.readouterr().err
    assert "No live session 'ses_nosuch'" in err and "nothing was revoked" in err and "HTTP 404" in err
    assert all(e["event"] != "revocation" for e in wicket.audit_events())
    live = await wicket.create_session("bot")
    code = await asyncio.to_thread(main, ["revoke", "session", live["session_id"], "--admin-url", wicket.admin_url])
    assert code == 0 and json.loads(capsys.readouterr().out)["id"] == live["session_id"]


async def test_audit_verify_defaults_to_the_configured_log(
    wicket: RunningWicket, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    await wicket.create_session("agent")
    monkeypatch.setenv("WICKET_AUDIT_LOG", str(wicket.audit_path))
    assert main(["audit", "verify", "--chain-only"]) == 0
    assert capsys.readouterr().out.startswith("ok: 1 records, head ")
    monkeypatch.delenv("WICKET_AUDIT_LOG")
    monkeypatch.chdir(tmp_path)  # where `wicket run` writes by default: ./wicket-audit.jsonl
    assert main(["audit", "verify"]) == 2
    assert "no audit log at ./wicket-audit.jsonl" in capsys.readouterr().err


async def test_approvals_list_json_shows_the_full_records(
    upstream: DemoUpstream,
    make_wicket: WicketFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.conftest import DEMO_POLICY, mcp_client

    # Data protection would refuse the password in a write outright; audited, the approver's
    # redacted view of it can be checked.
    policy = DEMO_POLICY.read_text() + "\ndata_protection:\n  secrets: {arguments: audit}\n"
    wicket = await make_wicket(upstream.url, policy)
    monkeypatch.setenv("WICKET_ADMIN_TOKEN", ADMIN_TOKEN)
    grant = await wicket.create_session("notes-bot")
    async with mcp_client(wicket.url, token=grant["token"]) as client:
        await client.call_tool("create_note", {"title": "t", "text": "x", "password": "hunter2hunter2"})
    code = await asyncio.to_thread(main, ["approvals", "list", "--json", "--admin-url", wicket.admin_url])
    assert code == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["arguments"] == {"title": "t", "text": "x", "password": "[REDACTED]"}
    assert record["binding"] == "tool" and record["status"] == "pending" and "read-only" in record["why"]
    code = await asyncio.to_thread(main, ["approvals", "list", "--admin-url", wicket.admin_url])
    table = capsys.readouterr().out
    assert code == 0 and record["approval_id"] in table and '"password":"[REDACTED]"' in table
    assert "hunter2" not in table


async def test_sighup_work_finishes_before_shutdown_and_a_failed_rotation_still_reloads_the_policy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # SIGHUP rotates the audit log, then reloads the policy, in a task of its own. A SIGTERM that
    # comes meanwhile must wait for it (closing the log under a reopen cuts the rotation short and
    # audits the reload into a closed log), and a rotation that fails must not skip the reload.
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("version: 1\n")
    audit = tmp_path / "audit.jsonl"
    settings = Settings(
        upstream="http://127.0.0.1:9/mcp",
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        audit_log=str(audit),
        session_key=SESSION_KEY,
        admin_token=ADMIN_TOKEN,
        policy_files=[str(policy_file)],
        environ={},
    )
    wicket = Wicket(settings, load_policy([str(policy_file)]))
    reopening, release = asyncio.Event(), asyncio.Event()

    async def slow_failing_reopen() -> None:
        reopening.set()
        await release.wait()
        raise OSError("the rotated log's directory is gone")

    wicket.audit.reopen = slow_failing_reopen  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    served = asyncio.create_task(_serve_until_signal(wicket))
    try:
        await eventually(lambda: wicket.data_port != 0 or served.done(), "Wicket listens")
        assert not served.done()
        os.kill(os.getpid(), signal.SIGHUP)
        async with asyncio.timeout(10):
            await reopening.wait()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.3)
        assert not served.done(), "shutdown did not wait for the SIGHUP's rotation under way"
        release.set()
        async with asyncio.timeout(20):
            await served
    finally:
        release.set()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if not served.done():
            served.cancel()
            await asyncio.gather(served, return_exceptions=True)
            await wicket.stop()
    assert "SIGHUP: could not reopen the audit log: the rotated log's directory is gone" in caplog.text
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    reloads = [e for e in events if e.get("event") == "policy_reload"]
    assert len(reloads) == 1 and reloads[0]["status"] == "applied", "the failed rotation skipped the reload"
    assert verify_file(audit).ok
