"""The README's approval walkthrough, run exactly as written against the real binary.

The shell blocks of "Approvals and elevation" are taken from README.md in order and run in one
bash, from a scratch directory that holds a link to this checkout's .venv. Only the ports are
moved to free ones (8080, 8081 and 9090 may be taken on this machine); between the blocks the
harness prints a marker, so each step's output can be checked against what the README says.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
from pathlib import Path

from proxy.audit.chain import verify_file
from proxy.demo.server import free_port
from tests.conftest import ROOT

TRANSCRIPT = Path(os.environ.get("WICKET_WALKTHROUGH_TRANSCRIPT", "/tmp/wicket-readme-walkthrough.txt"))


def walkthrough_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Approvals and elevation\n") : readme.index("**Destructive calls**")]
    blocks = re.findall(r"^( *)```sh\n(.*?)^\1```", section, flags=re.MULTILINE | re.DOTALL)
    return [textwrap.dedent(body) for _, body in blocks]


def test_the_readme_walkthrough_works_when_pasted(tmp_path: Path) -> None:
    blocks = walkthrough_blocks()
    assert len(blocks) == 5, "setup, then steps 1 to 4"
    ports = {"8080": free_port(), "8081": free_port(), "9090": free_port()}
    script = ["trap 'kill $(jobs -p) 2>/dev/null' EXIT"]  # the harness: never leave a process behind
    for number, block in enumerate(blocks):
        for default, port in ports.items():
            block = block.replace(f"127.0.0.1:{default}", f"127.0.0.1:{port}").replace(
                f"--port {default}", f"--port {port}"
            )
        script += [f"echo '### step {number}'", block]
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WICKET_", "ANTHROPIC_"))}
    env["WICKET_ADMIN_URL"] = f"http://127.0.0.1:{ports['9090']}"  # the CLI's default admin URL, moved too
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    TRANSCRIPT.write_text(f"$ (README walkthrough)\n{done.stdout}\n--- stderr ---\n{done.stderr}")
    steps = dict(re.findall(r"^### step (\d)\n(.*?)(?=^### step |\Z)", done.stdout, flags=re.MULTILINE | re.DOTALL))
    assert sorted(steps) == ["0", "1", "2", "3", "4"], done.stdout + done.stderr

    # 1. The write waits for approval, with the id and what to do.
    asked = json.loads(steps["1"].strip().splitlines()[-1])["result"]
    record = asked["_meta"]["wicket/decision"]
    assert asked["isError"] is True and record["decision"] == "approval_required"
    approval_id = record["approval_id"]
    assert f"wicket approvals approve {approval_id}" in record["reason"] and "retry the same call" in record["reason"]
    # 2. The operator sees it, with the agent's reason and the arguments, and approves it.
    listing = steps["2"].splitlines()
    assert listing[0].split() == [
        "ID",
        "STATUS",
        "AGENT",
        "ACTIONS",
        "EFFECT",
        "BINDING",
        "EXPIRES",
        "REASON",
        "ARGUMENTS",
    ]
    assert listing[1].startswith(approval_id) and "save the minutes" in listing[1]
    assert '{"title":"minutes","text":"we met"}' in listing[1]
    assert f"approved {approval_id}: tools/call:create_note elevated" in steps["2"]
    assert "the agent can retry its call now." in steps["2"]
    # 3. The retry, through the mcp SDK with the Bearer token, runs.
    assert steps["3"].strip() == "isError: False - created minutes"
    # 4. Neither flagged nor escalated, and the trail verifies.
    assert "notes-bot {'calls': 2, 'denials': 0, 'writes': 0, 'flagged': False}" in steps["4"]
    assert re.search(r"^ok: \d+ records, head [0-9a-f]{64}$", steps["4"], flags=re.MULTILINE), steps["4"]

    audit = tmp_path / "wicket-audit.jsonl"
    assert verify_file(str(audit)).ok
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    calls = [e for e in events if e["event"] == "decision" and e["action"] == "tools/call:create_note"]
    assert [e["decision"] for e in calls] == ["approval_required", "allow"]
    assert all("escalated_from" not in e for e in events)
    outcomes = [e for e in events if e["event"] == "outcome" and e["action"] == "tools/call:create_note"]
    assert [e["status"] for e in outcomes] == ["success"], "the upstream ran the note exactly once"


def test_the_docs_stand_on_their_own() -> None:
    """README, docs/ and the policy reference name no sections of a contract the reader does not have."""
    documents = [ROOT / "README.md", ROOT / "policies" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    dangling = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in documents
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"SPEC\s*§|SPEC section", line)
    ]
    assert dangling == []
