"""The container image: hadolint-clean, and its entrypoint run exactly as the image runs it.

No container runtime is needed: the final stage's ENV, WORKDIR, ENTRYPOINT, CMD and
HEALTHCHECK are read from the Dockerfile and run here, with only the ports moved to free
ones and the declared volume mapped to a temporary directory.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from proxy.audit.chain import verify_file
from proxy.demo.server import free_port
from tests.conftest import ROOT, mcp_client

DOCKERFILE = ROOT / "Dockerfile"
BIN = Path(sys.executable).parent
VOLUME = "/var/lib/wicket"


@dataclass
class Stage:
    name: str
    parent: str
    env: dict[str, str] = field(default_factory=dict)
    instructions: dict[str, str] = field(default_factory=dict)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n(\s*#.*\n)*", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def stages() -> dict[str, Stage]:
    found: dict[str, Stage] = {}
    current: Stage | None = None
    for keyword, rest in instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            image, _, name = rest.partition(" AS ")
            current = found[name.strip()] = Stage(name.strip(), image.strip())
            continue
        assert current is not None
        if keyword == "ENV":
            current.env.update(dict(word.split("=", 1) for word in shlex.split(rest)))
        else:
            current.instructions[keyword] = rest
    return found


def effective(name: str) -> Stage:
    """A stage with what it inherits from the stages it is built FROM."""
    all_stages = stages()
    chain = [all_stages[name]]
    while chain[-1].parent in all_stages:
        chain.append(all_stages[chain[-1].parent])
    merged = Stage(name, chain[-1].parent)
    for stage in reversed(chain):
        merged.env.update(stage.env)
        merged.instructions.update(stage.instructions)
    return merged


def final_stage() -> Stage:
    return effective(list(stages())[-1])


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [str(BIN / "hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_image_is_pinned_non_root_and_keeps_state_in_its_volume() -> None:
    names = set(stages())
    for stage in stages().values():
        if stage.parent not in names:
            assert re.fullmatch(r"[a-z0-9./-]+:[\w.-]+@sha256:[0-9a-f]{64}", stage.parent), stage.parent
    for name in ("runtime", "stdio"):
        image = effective(name)
        assert image.instructions["USER"] == "10001:10001"
        assert json.loads(image.instructions["VOLUME"]) == [VOLUME]
        for key in ("HOME", "TMPDIR", "WICKET_AUDIT_LOG"):
            assert image.env[key].startswith(VOLUME), key
        assert image.env["WICKET_HEALTH_LISTEN"] == "0.0.0.0:9091"
    assert final_stage().name == "runtime", "docker build . gives the sidecar, not the stdio variant"
    assert json.loads(final_stage().instructions["CMD"]) != ["--help"]


def image_command(stage: Stage, volume: Path, app: Path) -> tuple[list[str], dict[str, str], dict[str, int]]:
    """The image's command line and environment for this machine: ports moved to free ones, the volume mapped."""
    ports = {"data": free_port(), "admin": free_port(), "demo": free_port(), "health": free_port()}
    argv = json.loads(stage.instructions["ENTRYPOINT"]) + json.loads(stage.instructions["CMD"])
    assert argv[:2] == ["wicket", "demo"] and argv[argv.index("--listen") + 1] == "0.0.0.0:8080"
    argv[0] = str(BIN / "wicket")
    argv[argv.index("--listen") + 1] = f"127.0.0.1:{ports['data']}"
    argv += ["--admin-listen", f"127.0.0.1:{ports['admin']}", "--demo-port", str(ports["demo"])]
    env = {k: v.replace(VOLUME, str(volume)) for k, v in stage.env.items()}
    env["WICKET_HEALTH_LISTEN"] = f"127.0.0.1:{ports['health']}"
    env["PATH"] = f"{BIN}:/usr/bin:/bin"
    assert stage.instructions["WORKDIR"] == "/app"
    app.mkdir()  # WORKDIR /app; the default policies come from the package itself (proxy/data)
    return argv, env, ports


async def test_default_command_serves_the_demo_with_health_listener_and_volume(tmp_path: Path) -> None:
    stage = final_stage()
    volume, app = tmp_path / "volume", tmp_path / "app"
    volume.mkdir()
    argv, env, ports = image_command(stage, volume, app)
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=app, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    health = f"http://127.0.0.1:{ports['health']}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                try:
                    async with http.get(health + "/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert process.returncode is None, "the image's command exited"
                await asyncio.sleep(0.05)
            async with http.get(health + "/readyz") as response:
                assert (await response.json())["checks"] == {"audit": "ok", "store": "ok", "upstream": "ok"}
            async with http.get(health + "/v1/approvals") as response:
                assert response.status == 404, "the control API is not on the health listener"

        # The image's HEALTHCHECK command, against the health listener.
        healthcheck = stage.instructions["HEALTHCHECK"]
        check_argv = json.loads(healthcheck[healthcheck.index("CMD ") + 4 :])
        assert "127.0.0.1:9091/healthz" in check_argv[-1]
        check_argv[-1] = check_argv[-1].replace("127.0.0.1:9091", f"127.0.0.1:{ports['health']}")
        check = await asyncio.create_subprocess_exec(*check_argv, env=env)
        assert await check.wait() == 0

        async with mcp_client(f"http://127.0.0.1:{ports['data']}/mcp") as client:
            read = await client.call_tool("get_weather", {"city": "Oslo"})
            drop = await client.call_tool("drop_table", {"table": "users"})
        assert not read.is_error and drop.is_error
    finally:
        process.send_signal(signal.SIGTERM)
        output = (await asyncio.wait_for(process.communicate(), 20))[0].decode()
    assert process.returncode == 0, output
    assert "Wicket demo is running" in output

    # Everything the process wrote is in the volume: the hash-chained audit log, nothing in the workdir.
    audit = volume / "audit.jsonl"
    decisions = [json.loads(line) for line in audit.read_text().splitlines()]
    calls = [
        (d["action"], d["decision"]) for d in decisions if d["event"] == "decision" and "tools/call" in d["action"]
    ]
    assert calls[-2:] == [("tools/call:get_weather", "allow"), ("tools/call:drop_table", "deny")]
    assert verify_file(str(audit)).ok
    assert list(app.iterdir()) == [], "nothing is written to the working directory: state lives on the volume"


def test_run_without_an_upstream_says_what_it_needs(tmp_path: Path) -> None:
    stage = final_stage()
    env = {k: v.replace(VOLUME, str(tmp_path)) for k, v in stage.env.items()} | {"PATH": f"{BIN}:/usr/bin:/bin"}
    result = subprocess.run([str(BIN / "wicket"), "run"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("wicket: wicket run needs --upstream URL, -- CMD ARG... to run a stdio MCP server")


async def test_stdio_server_under_the_image_environment_keeps_everything_in_the_volume() -> None:
    """`wicket run -- CMD` as the stdio image runs it: the bridge's private socket directory and the
    child's HOME and TMPDIR (npm and uv caches) are in the volume, so a read-only root is enough."""
    stage = effective("stdio")
    volume = Path(tempfile.mkdtemp(prefix="wkt-vol-"))  # short, like /var/lib/wicket: Unix socket paths are bounded
    try:
        env = {k: v.replace(VOLUME, str(volume)) for k, v in stage.env.items()} | {"PATH": f"{BIN}:/usr/bin:/bin"}
        data, admin, health = free_port(), free_port(), free_port()
        env["WICKET_HEALTH_LISTEN"] = f"127.0.0.1:{health}"
        process = await asyncio.create_subprocess_exec(
            *(str(BIN / "wicket"), "run", "--listen", f"127.0.0.1:{data}", "--admin-listen", f"127.0.0.1:{admin}"),
            *("--policy", "policies/demo.yaml", "--", sys.executable, str(ROOT / "tests" / "stdio_server.py")),
            env=env,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(300):
                    try:
                        async with http.get(f"http://127.0.0.1:{health}/readyz") as response:
                            if response.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        pass
                    assert process.returncode is None, "wicket run exited"
                    await asyncio.sleep(0.05)
            sockets = [name for name in entries(volume) if not name.startswith("audit.jsonl")]
            assert len(sockets) == 1 and sockets[0].startswith("wicket-upstream-"), entries(volume)
            async with mcp_client(f"http://127.0.0.1:{data}/mcp") as client:
                result = await client.call_tool("get_environment", {})
            assert {"HOME", "TMPDIR"} <= set(json.loads(result.content[0].text)), "the child's caches go to the volume"
        finally:
            process.send_signal(signal.SIGTERM)
            output = (await asyncio.wait_for(process.communicate(), 20))[0].decode()
        assert process.returncode == 0, output
        assert "audit.jsonl" in entries(volume)
        assert [n for n in entries(volume) if not n.startswith("audit.jsonl")] == [], "the socket directory is removed"
    finally:
        shutil.rmtree(volume)
