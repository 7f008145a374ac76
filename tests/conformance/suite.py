"""Running the pinned npm test assets (the MCP conformance suite, server-everything) from pytest.

`make test` installs them from `tests/conformance/package-lock.json`; a missing Node.js or
missing packages fail the test with the fix, never skip it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.demo.server import free_port

CONFORMANCE_DIR = Path(__file__).resolve().parent
NODE_MODULES = CONFORMANCE_DIR / "node_modules"
SHIM = CONFORMANCE_DIR / "node20-shim" / "register.mjs"
INSTALL_HINT = "run `make test` (or `npm ci` in tests/conformance) to install the pinned npm packages"
SUITE_PACKAGE = "@modelcontextprotocol/conformance"
EVERYTHING_PACKAGE = "@modelcontextprotocol/server-everything"

# Worst first: a check that reports several times counts with its worst status.
_SEVERITY = {"FAILURE": 3, "WARNING": 2, "SUCCESS": 1, "INFO": 0, "SKIPPED": 0}


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"Node.js is not installed: the MCP conformance tests need Node.js 20+ and npm; {INSTALL_HINT}.")
    return node


def node_major(node: str) -> int:
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    return int(version.lstrip("v").split(".")[0])


def node_env(node: str) -> dict[str, str]:
    """The environment for the suite: on Node < 22 the fs.globSync shim is preloaded (see node20-shim/README.md)."""
    env = dict(os.environ)
    if node_major(node) < 22:
        env["NODE_OPTIONS"] = f"{env.get('NODE_OPTIONS', '')} --import={SHIM.as_uri()}".strip()
    return env


def package_file(package: str, *parts: str) -> Path:
    path = NODE_MODULES.joinpath(*package.split("/"), *parts)
    if not path.exists():
        pytest.fail(f"{package} is not installed ({path} is missing): {INSTALL_HINT}.")
    return path


def package_version(package: str) -> str:
    return str(json.loads(package_file(package, "package.json").read_text())["version"])


@dataclass(frozen=True)
class Check:
    id: str
    status: str
    message: str


@dataclass(frozen=True)
class Scenario:
    """One scenario's checks, as the suite wrote them to ``<out>/server-<name>-<timestamp>/checks.json``."""

    name: str
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        """The suite's own rule (its tier report): no failed check and at least one successful one."""
        statuses = {c.status for c in self.checks}
        return "FAILURE" not in statuses and "SUCCESS" in statuses

    def worst(self) -> dict[str, Check]:
        """Each check id with the worst status it reported."""
        worst: dict[str, Check] = {}
        for check in self.checks:
            seen = worst.get(check.id)
            if seen is None or _SEVERITY.get(check.status, 3) > _SEVERITY.get(seen.status, 3):
                worst[check.id] = check
        return worst


@dataclass(frozen=True)
class SuiteRun:
    url: str
    spec_version: str
    scenarios: dict[str, Scenario]
    log: Path

    @property
    def passed(self) -> set[str]:
        return {name for name, scenario in self.scenarios.items() if scenario.passed}


async def run_suite(url: str, spec_version: str, out_dir: Path, *, limit_seconds: float = 600.0) -> SuiteRun:
    """``conformance server --url URL --suite all --spec-version V``, results parsed per scenario.

    The suite exits non-zero whenever any scenario fails, so its exit code says nothing
    here; what counts is that it ran to the end and wrote every scenario's checks.
    """
    node = node_binary()
    command, log = _suite_command(node, url, spec_version, out_dir)
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=sink, stderr=subprocess.STDOUT, env=node_env(node)
        )
        try:
            await asyncio.wait_for(process.wait(), limit_seconds)
        except TimeoutError:
            process.kill()
            await process.wait()
            pytest.fail(f"the conformance suite did not finish within {limit_seconds:g}s against {url}; see {log}")
    output = log.read_text(errors="replace")
    if "=== SUMMARY ===" not in output:
        pytest.fail(f"the conformance suite stopped early (exit {process.returncode}) against {url}:\n{output[-3000:]}")
    return SuiteRun(url, spec_version, parse_results(out_dir), log)


def _suite_command(node: str, url: str, spec_version: str, out_dir: Path) -> tuple[list[str], Path]:
    cli = package_file(SUITE_PACKAGE, "dist", "index.js")
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [node, str(cli), "server", "--url", url, "--suite", "all", "--spec-version", spec_version]
    return [*command, "--output-dir", str(out_dir)], out_dir / "conformance.log"


def parse_results(out_dir: Path) -> dict[str, Scenario]:
    scenarios: dict[str, Scenario] = {}
    for path in sorted(out_dir.glob("server-*/checks.json")):
        name = re.sub(r"-\d{4}-\d{2}-\d{2}T[\d-]+Z$", "", path.parent.name).removeprefix("server-")
        raw = json.loads(path.read_text())
        checks = tuple(Check(str(c["id"]), str(c["status"]), str(c.get("errorMessage") or "")) for c in raw)
        scenarios[name] = Scenario(name, checks)
    return scenarios


@asynccontextmanager
async def server_everything(log: Path) -> AsyncIterator[str]:
    """server-everything over Streamable HTTP on an ephemeral port (``PORT``); yields its ``/mcp`` URL
    and ends the process (terminate, then kill) whatever happens."""
    entry = package_file(EVERYTHING_PACKAGE, "dist", "index.js")
    port = free_port()
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            node_binary(), str(entry), "streamableHttp", env={**os.environ, "PORT": str(port)}, stdout=sink, stderr=sink
        )
    try:
        await _wait_for_port(port, process, log)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _wait_for_port(port: int, process: asyncio.subprocess.Process, log: Path) -> None:
    for _ in range(600):  # up to ~30 s: a cold Node start on a busy 2-core machine
        if process.returncode is not None:
            pytest.fail(f"server-everything exited with {process.returncode}:\n{_tail(log)}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    pytest.fail(f"server-everything did not listen on port {port}:\n{_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]
