"""Policy authoring: `wicket policy test`, `explain`, shadow mode, reload, `audit show`/`summary`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proxy.demo.server import DemoUpstream
from tests.conftest import ROOT, RunningWicket, WicketFactory, admin, mcp_client
from tests.redis_support import RedisServer

WICKET = [sys.executable, "-m", "proxy"]


def wicket_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*WICKET, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


# --------------------------------------------------------------------------- policy test


def test_shipped_policies_pass_their_own_tests() -> None:
    done = wicket_cli("policy", "test")
    assert done.returncode == 0, done.stdout + done.stderr
    last = done.stdout.strip().splitlines()[-1]
    passed = int(last.split(" passed")[0])
    assert passed >= 15 and " 0 failed" in last, last
    assert "FAIL" not in done.stdout


def test_a_wrong_expectation_fails_with_its_file_and_line(tmp_path: Path) -> None:
    cases = tmp_path / "wrong_test.yaml"
    cases.write_text(
        f"policies: [{ROOT / 'policies' / 'default.yaml'}]\n"
        "cases:\n"
        "  - name: reads pass\n"
        "    action: {tool: get_invoice}\n"
        "    expect: {decision: allow, effect: read}\n"
        "\n"
        "  - name: wrongly expects a destructive call to pass without Deep\n"
        "    action: {tool: delete_invoice}\n"
        "    session: {agent: billing-bot, mode: read-write}\n"
        "    expect: {decision: allow, tier: spot}\n"
    )
    done = wicket_cli("policy", "test", str(cases))
    assert done.returncode == 1
    assert f"FAIL {cases}:7: wrongly expects a destructive call to pass without Deep:" in done.stdout
    assert "expected decision allow, got deny" in done.stdout and "expected tier spot, got deep" in done.stdout
    assert done.stdout.strip().endswith("1 passed, 1 failed (1 file(s))")

    as_json = json.loads(wicket_cli("policy", "test", str(cases), "--json").stdout)
    assert (as_json["passed"], as_json["failed"]) == (1, 1)
    failing = [c for c in as_json["files"][0]["cases"] if not c["passed"]]
    assert failing[0]["line"] == 7 and failing[0]["got"]["decision"] == "deny"


def test_a_broken_test_file_is_an_error_not_a_pass(tmp_path: Path) -> None:
    cases = tmp_path / "broken_test.yaml"
    cases.write_text(
        f"policies: [{ROOT / 'policies' / 'default.yaml'}]\ncases:\n  - name: typo\n    action: {{tool: x}}\n"
        "    expect: {decison: allow}\n"
    )
    done = wicket_cli("policy", "test", str(cases))
    assert done.returncode == 1
    assert f"ERROR {cases}:3: unknown expect key(s) decison" in done.stdout


def test_the_spec_form_with_cases_and_policy(tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text("cases:\n  - action: {tool: drop_table}\n    expect: {decision: deny, reason: blocklisted}\n")
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nblocklist: ['drop_*']\n")
    done = wicket_cli("policy", "test", "--policy", str(policy), "--cases", str(cases))
    assert done.returncode == 0, done.stdout
    assert "1 passed, 0 failed" in done.stdout


# --------------------------------------------------------------------------- explain


def explain(*args: str) -> str:
    done = wicket_cli("policy", "explain", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_explain_a_keyword_classified_call() -> None:
    out = explain("--policy", "policies/default.yaml", "--tool", "delete_invoice", "--mode", "read-write")
    assert "effect:     destructive, from name keyword 'delete' in 'delete_invoice'" in out
    assert "fast:       allow" in out
    assert "spot:       allow" in out
    assert "deep:       unavailable" in out
    record = json.loads(out.split("decision:   ", 1)[1])
    assert record["decision"] == "deny" and record["tier"] == "deep"


def test_explain_an_annotation_classified_call(tmp_path: Path) -> None:
    policy = tmp_path / "trusting.yaml"
    policy.write_text("version: 1\nupstreams:\n  - url: http://files.internal/mcp\n    trusted: true\n")
    common = ["--policy", str(policy), "--tool", "directory_tree", "--annotations", '{"readOnlyHint": true}']
    trusted = explain(*common, "--upstream", "http://files.internal/mcp")
    assert "effect:     read, from annotation readOnlyHint: true from trusted upstream" in trusted
    untrusted = explain(*common, "--upstream", "http://elsewhere/mcp")
    assert "effect:     mutating" in untrusted and "readOnlyHint: true ignored" in untrusted
    assert '"decision": "approval_required"' in untrusted


def test_explain_an_argument_raised_call() -> None:
    out = explain(
        "--policy",
        "policies/default.yaml",
        "--tool",
        "run_query",
        "--arguments",
        '{"sql": "DROP TABLE t"}',
        "--deep",
        "allow",
    )
    assert "effect:     read, from name keyword 'query'" in out
    assert "arguments:  sql:" in out and "(raises to destructive)" in out
    record = json.loads(out.split("decision:   ", 1)[1])
    assert record["effect"] == "destructive" and record["decision"] == "approval_required"


def test_explain_an_anomaly_escalation() -> None:
    out = explain("--policy", "policies/default.yaml", "--tool", "get_invoice", "--calls", "10", "--denials", "4")
    assert "history:    10 earlier calls: 4 denied (40%)" in out
    assert "anomaly:    raised from read to mutating" in out
    record = json.loads(out.split("decision:   ", 1)[1])
    assert record["escalated_from"] == "read" and record["effect"] == "mutating"
    assert "denial rate 40% over 10 calls" in record["reason"]


def test_explain_from_an_input_file(tmp_path: Path) -> None:
    given = tmp_path / "action.json"
    given.write_text(
        json.dumps({"action": {"tool": "delete_invoice"}, "session": {"mode": "read-write"}, "deep": "allow"})
    )
    out = explain("--policy", "policies/default.yaml", "--input", str(given))
    assert "deep:       allow" in out
    assert '"decision": "allow"' in out


# --------------------------------------------------------------------------- shadow mode

SHADOW = """
version: 1
mode: shadow
anonymous: {enabled: false}
"""


async def test_shadow_mode_forwards_what_enforcing_would_refuse(
    upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(upstream.url, SHADOW)
    grant = await running.create_session("cleaner", mode="read-only")
    async with mcp_client(running.url, token=grant["token"], mode="2026-07-28") as client:
        dropped = await client.call_tool("drop_table", {"table": "users"})
        read = await client.call_tool("get_weather", {"city": "Oslo"})
    assert not dropped.is_error, dropped
    assert not read.is_error
    assert upstream.ledger.names() == ["drop_table", "get_weather"], "shadow mode forwards the would-be refusal"

    decisions = [e for e in running.audit_events() if e["event"] == "decision" and e["action"].startswith("tools/call")]
    would = next(e for e in decisions if e["action"] == "tools/call:drop_table")
    assert would["decision"] == "would_require_approval" and would["mode"] == "shadow"
    assert "time-boxed elevation" in would["reason"]
    assert next(e for e in decisions if e["action"] == "tools/call:get_weather")["decision"] == "allow"
    assert not [e for e in running.audit_events() if e["event"] == "approval"], "shadow mode asks nobody to approve"

    status, _ = await admin(running, "GET", "/v1/approvals")
    async with aiohttp.ClientSession() as http, http.get(running.admin_url + "/metrics") as response:
        metrics = await response.text()
    assert (
        'wicket_decisions_total{decision="would_require_approval",effect="destructive",mode="shadow",'
        'protocol="mcp",tier="fast"} 1.0' in metrics
    )
    status, summary = await admin(running, "GET", "/v1/shadow")
    assert status == 200
    assert summary["would_be_refused"] == 1
    assert summary["top"][0]["action"] == "tools/call:drop_table" and summary["top"][0]["count"] == 1

    done = wicket_cli("audit", "summary", str(running.audit_path))
    assert done.returncode == 0 and "1 of " in done.stdout and "tools/call:drop_table" in done.stdout


async def test_shadow_per_upstream_and_denials(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    policy = f"""
version: 1
anonymous: {{enabled: true, scope: ["*"]}}
blocklist: ["grant_*"]
upstreams:
  - url: {upstream.url}
    mode: shadow
"""
    running = await make_wicket(upstream.url, policy)
    async with mcp_client(running.url, mode="legacy") as client:
        granted = await client.call_tool("grant_role", {"user": "u", "role": "r"})
    assert not granted.is_error
    assert upstream.ledger.names() == ["grant_role"]
    record = next(e for e in running.audit_events() if e.get("action") == "tools/call:grant_role")
    assert record["decision"] == "would_deny" and "blocklisted" in record["reason"]


async def test_shadow_never_relaxes_a_fail_closed_audit(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, SHADOW, audit_log="/dev/full")
    session = await running.wicket.sessions.create("writer", scope=["*"], mode="read-write", ttl_seconds=60)
    token = await running.wicket.sessions.issue_token(session)
    async with mcp_client(running.url, token=token, mode="2026-07-28") as client:
        write = await client.call_tool("create_note", {"title": "t", "text": "x"})
        drop = await client.call_tool("drop_table", {"table": "users"})
    assert write.is_error and drop.is_error
    assert "audit log cannot be written" in write.meta["wicket/decision"]["reason"]
    assert upstream.ledger.names() == []


async def test_shadow_never_relaxes_a_required_guardian(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    # Deep Guard configured but unreachable (nothing listens on its port): destructive calls fail closed.
    from proxy.demo.server import free_port

    env = {"ANTHROPIC_API_KEY": "sk-test", "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{free_port()}"}
    running = await make_wicket(upstream.url, SHADOW, environ=env)
    grant = await running.create_session("writer", mode="read-write")
    async with mcp_client(running.url, token=grant["token"], mode="legacy") as client:
        drop = await client.call_tool("drop_table", {"table": "users"})
    record = drop.meta["wicket/decision"]
    assert record["decision"] == "deny" and "fail closed" in record["reason"]
    assert upstream.ledger.names() == []


async def test_shadow_with_the_store_down_still_refuses(
    upstream: DemoUpstream, make_wicket: WicketFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    key = tmp_path / "signing.pem"
    key.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    running = await make_wicket(upstream.url, SHADOW, store=redis_server.url, environ={"WICKET_SIGNING_KEY": str(key)})
    grant = await running.create_session("cleaner", mode="read-only")
    redis_server.kill()
    async with aiohttp.ClientSession() as http:
        async with http.post(
            running.url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "drop_table", "arguments": {}}},
            headers={
                "Authorization": f"Bearer {grant['token']}",
                "Accept": "application/json, text/event-stream",
                "MCP-Protocol-Version": "2026-07-28",
            },
        ) as response:
            assert response.status >= 500 or "error" in await response.json()
    assert upstream.ledger.names() == []


# --------------------------------------------------------------------------- reload


def write_policy(path: Path, extra: str = "") -> None:
    path.write_text("version: 1\nanonymous: {enabled: true, scope: ['*']}\n" + extra)


async def test_reload_applies_a_valid_policy_without_dropping_calls_in_flight(
    upstream: DemoUpstream, make_wicket: WicketFactory, tmp_path: Path
) -> None:
    policy_file = tmp_path / "live.yaml"
    write_policy(policy_file)
    from proxy.core.policy import load_policy

    running = await make_wicket(upstream.url, load_policy([policy_file]), policy_files=[str(policy_file)])
    async with mcp_client(running.url, mode="legacy") as client:
        slow = asyncio.create_task(client.call_tool("search_notes", {"query": "x", "delay_seconds": 1.0}))
        await asyncio.sleep(0.3)  # the slow read is past the checker and at the upstream
        write_policy(policy_file, "blocklist: ['get_weather', 'search_notes']\n")
        status, body = await admin(running, "POST", "/v1/policy/reload")
        assert status == 200 and body["applied"] is True, body
        in_flight = await slow
        after = await client.call_tool("get_weather", {"city": "Oslo"})
    assert not in_flight.is_error, "a call decided before the reload finishes"
    assert after.is_error and "blocklisted" in after.meta["wicket/decision"]["reason"]
    assert upstream.ledger.names() == ["search_notes"]
    reloads = [e for e in running.audit_events() if e["event"] == "policy_reload"]
    assert [r["status"] for r in reloads] == ["applied"]


async def test_reload_refuses_an_invalid_policy_and_keeps_the_running_one(
    upstream: DemoUpstream, make_wicket: WicketFactory, tmp_path: Path
) -> None:
    policy_file = tmp_path / "live.yaml"
    write_policy(policy_file, "blocklist: ['drop_*']\n")
    from proxy.core.policy import load_policy

    running = await make_wicket(upstream.url, load_policy([policy_file]), policy_files=[str(policy_file)])
    policy_file.write_text("version: 1\nblocklist: 'not-a-list'\n")
    status, body = await admin(running, "POST", "/v1/policy/reload")
    assert status == 422 and body["applied"] is False
    assert body["problems"] and body["problems"][0].startswith(f"{policy_file}:2:")
    status, _ = await admin(running, "POST", "/v1/policy/reload", token="wkt_not-the-operator")
    assert status == 401
    async with mcp_client(running.url, mode="legacy") as client:
        read = await client.call_tool("get_weather", {"city": "Oslo"})
        drop = await client.call_tool("drop_table", {"table": "t"})
    assert not read.is_error, "the running policy (anonymous enabled) stays in force"
    assert drop.is_error and "blocklisted" in drop.meta["wicket/decision"]["reason"]
    reload = next(e for e in running.audit_events() if e["event"] == "policy_reload")
    assert reload["status"] == "refused" and reload["problems"]


def test_sighup_reloads_the_policy_of_a_running_process(tmp_path: Path) -> None:
    from proxy.demo.server import free_port

    policy_file = tmp_path / "live.yaml"
    write_policy(policy_file)
    audit = tmp_path / "audit.jsonl"
    admin_port = free_port()
    env = {**os.environ, "WICKET_ADMIN_TOKEN": "t" * 32}
    process = subprocess.Popen(
        [*WICKET, "run", "--upstream", "http://127.0.0.1:9/mcp", "--policy", str(policy_file), "--listen",
         f"127.0.0.1:{free_port()}", "--admin-listen", f"127.0.0.1:{admin_port}", "--audit-log", str(audit)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        _wait_for(lambda: audit.exists() or process.poll() is not None)
        _wait_for(lambda: _ready(admin_port) or process.poll() is not None)
        assert process.poll() is None
        write_policy(policy_file, "mode: shadow\n")
        process.send_signal(signal.SIGHUP)
        _wait_for(lambda: any('"policy_reload"' in line for line in audit.read_text().splitlines()))
        reload = next(json.loads(line) for line in audit.read_text().splitlines() if '"policy_reload"' in line)
        assert reload["status"] == "applied" and reload["mode"] == "shadow"
    finally:
        process.terminate()
        process.communicate(timeout=20)


def _ready(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
            return True
    except OSError:
        return False


def _wait_for(condition: object, limit: int = 300) -> None:
    import time

    for _ in range(limit):
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in 30 s")


# --------------------------------------------------------------------------- audit show


async def test_audit_show_explains_a_past_decision(wicket: RunningWicket, upstream: DemoUpstream) -> None:
    async with mcp_client(wicket.url, mode="legacy") as client:
        denied = await client.call_tool("drop_table", {"table": "users"})
    decision_id = denied.meta["wicket/decision"]["decision_id"]
    done = wicket_cli("audit", "show", decision_id, "--audit-log", str(wicket.audit_path))
    assert done.returncode == 0, done.stderr
    assert f"decision:   {decision_id}" in done.stdout
    assert "action:     tools/call:drop_table" in done.stdout
    assert "verdict:    deny by the fast tier" in done.stdout
    assert "arguments:  sha256 " in done.stdout and "users" not in done.stdout
    missing = wicket_cli("audit", "show", "dec_000000000000000000000000", "--audit-log", str(wicket.audit_path))
    assert missing.returncode == 1 and "no decision dec_0000" in missing.stderr


@pytest.mark.parametrize("kind", ["shadow", "enforce"])
def test_policy_check_accepts_the_mode_key(tmp_path: Path, kind: str) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(f"version: 1\nmode: {kind}\nupstreams:\n  - url: http://x/mcp\n    mode: enforce\n")
    assert wicket_cli("policy", "check", str(policy)).returncode == 0
    policy.write_text("version: 1\nmode: dry-run\n")
    bad = wicket_cli("policy", "check", str(policy))
    assert bad.returncode == 1 and f"{policy}:2:" in bad.stdout
