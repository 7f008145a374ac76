"""The official MCP conformance suite, run directly against a real MCP server and then through Wicket.

Wicket must be transparent to a conforming client and server: every scenario that passes
against the server directly must pass through Wicket too. The suite runs once per wire
generation (2025-11-25 sessions, 2026-07-28 stateless). Counts are printed (`pytest -rA`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.core.policy import load_policy
from tests.conformance.suite import SUITE_PACKAGE, SuiteRun, package_version, run_suite
from tests.conformance.target_server import TargetServer
from tests.conftest import WicketFactory

POLICY = Path(__file__).resolve().parent / "conformance" / "policy.yaml"
SPEC_VERSIONS = ["2025-11-25", "2026-07-28"]


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    server = TargetServer()
    await server.start()
    yield server
    await server.stop()


def proxy_differences(direct: SuiteRun, proxied: SuiteRun) -> dict[tuple[str, str, str], str]:
    """Checks whose worst status is SUCCESS directly and anything else (or absent) through Wicket."""
    found: dict[tuple[str, str, str], str] = {}
    for name, scenario in direct.scenarios.items():
        through = proxied.scenarios.get(name)
        through_checks = through.worst() if through is not None else {}
        for check_id, check in scenario.worst().items():
            if check.status != "SUCCESS":
                continue
            seen = through_checks.get(check_id)
            if seen is None or seen.status != "SUCCESS":
                detail = "missing" if seen is None else f"{seen.status}: {seen.message}"
                found[(direct.spec_version, name, check_id)] = detail
    return found


def report(direct: SuiteRun, proxied: SuiteRun) -> str:
    total = len(direct.scenarios)
    lines = [
        f"MCP conformance ({SUITE_PACKAGE} {package_version(SUITE_PACKAGE)}, --spec-version {direct.spec_version}): "
        f"direct {len(direct.passed)}/{total} scenarios passed, "
        f"through Wicket {len(proxied.passed)}/{len(proxied.scenarios)}"
    ]
    for name in sorted(set(direct.scenarios) - direct.passed):
        failed = [c for c in direct.scenarios[name].checks if c.status == "FAILURE"]
        why = failed[0].message if failed else "no successful check"
        lines.append(f"  fails directly too: {name} ({why[:160]})")
    return "\n".join(lines)


@pytest.mark.parametrize("spec_version", SPEC_VERSIONS)
async def test_conformance_suite_passes_through_wicket(
    spec_version: str, target: TargetServer, make_wicket: WicketFactory, tmp_path: Path
) -> None:
    direct = await run_suite(target.url, spec_version, tmp_path / "direct")
    wicket = await make_wicket(target.url, load_policy([POLICY]))
    proxied = await run_suite(wicket.url, spec_version, tmp_path / "wicket")
    print(report(direct, proxied))
    for key, detail in sorted(proxy_differences(direct, proxied).items()):
        print(f"  PROXY-INDUCED: {key[1]} / {key[2]}: {detail[:240]}")

    assert direct.passed, f"no scenario passed against the target directly; see {direct.log}"
    assert set(proxied.scenarios) == set(direct.scenarios)
    induced = sorted(direct.passed - proxied.passed)
    details = {name: [c for c in proxied.scenarios[name].checks if c.status == "FAILURE"] for name in induced}
    assert not induced, f"scenarios that pass directly but fail through Wicket: {details}"

    # Stricter than the scenario count: no single check may get worse through Wicket, even
    # inside a scenario that fails directly (warnings count too).
    differences = proxy_differences(direct, proxied)
    assert not differences, f"checks that succeed directly but not through Wicket: {differences}"

    # The second run really went through Wicket: its tool calls were decided and audited.
    allowed = {e["action"] for e in wicket.audit_events() if e["event"] == "decision" and e["decision"] == "allow"}
    assert "tools/call:test_simple_text" in allowed
