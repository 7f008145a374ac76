"""The wicket command line: policy check, audit verify and sessions create."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from proxy.cli import main
from tests.conftest import ADMIN_TOKEN, ROOT, RunningWicket


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


async def test_audit_verify_cli(wicket: RunningWicket, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(3):
        await wicket.create_session(f"agent-{i}")
    path = wicket.audit_path
    assert main(["audit", "verify", str(path)]) == 1, "no checkpoint signed yet: the tail is unprotected"
    assert "no checkpoints" in capsys.readouterr().out
    assert main(["audit", "verify", "--chain-only", str(path)]) == 0
    assert capsys.readouterr().out.startswith("ok: 3 records, head ")
    assert wicket.wicket.checkpoints is not None
    await wicket.wicket.checkpoints.checkpoint()
    assert main(["audit", "verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: 3 records, head ") and "checkpoints: 1 verified" in out

    lines = path.read_text().splitlines()
    event = json.loads(lines[1])
    event["agent_id"] = "someone-else"
    lines[1] = json.dumps(event, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")
    assert main(["audit", "verify", str(path)]) == 1
    assert "line 2" in capsys.readouterr().out


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
