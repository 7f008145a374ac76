"""An installed Wicket runs from any directory: a wheel built from this repository, installed
into a fresh virtual environment, finds its bundled default policies and still honours --policy."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from proxy.demo.server import DemoUpstream, free_port
from tests.conftest import ADMIN_TOKEN, ROOT, mcp_client

TEST_TOOLS = ("pytest", "ruff", "playwright", "hypothesis", "jsonschema")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the wheel; its dependencies come from this test environment."""
    base = tmp_path_factory.mktemp("install")
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    # A copy, so the build leaves nothing behind in the work tree (symlinks become their files).
    shutil.copytree(ROOT / "proxy", src / "proxy", ignore=shutil.ignore_patterns("__pycache__"))
    dist = base / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "-q", "-w", str(dist), str(src)], check=True, capture_output=True)
    (wheel,) = dist.glob("wicket-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert {"proxy/data/default.yaml", "proxy/data/demo.yaml", "proxy/core/policy_schema.json"} <= names
    # `pip install wicket` pulls in no test tool: each is only behind the `test` extra.
    required = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    for tool in TEST_TOOLS:
        assert all('extra == "test"' in line for line in required if line.split()[1].startswith(tool)), tool
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = venv.glob("lib/python*/site-packages")
    # The wheel's own files come first; the dependencies are this environment's (no network, no copy).
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [*pip, "--python", str(venv / "bin" / "python"), "install", "--no-deps", "-q", str(wheel)],
        check=True,
        capture_output=True,
    )
    return venv


@asynccontextmanager
async def wicket_process(venv: Path, cwd: Path, *argv: str) -> AsyncIterator[tuple[str, str]]:
    """The installed ``wicket`` run from ``cwd``; yields its data and admin URLs once /readyz says ready."""
    data, admin = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WICKET_")}
    env["WICKET_ADMIN_TOKEN"] = ADMIN_TOKEN
    process = await asyncio.create_subprocess_exec(
        str(venv / "bin" / "wicket"),
        *argv,
        "--listen",
        f"127.0.0.1:{data}",
        "--admin-listen",
        f"127.0.0.1:{admin}",
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    admin_url = f"http://127.0.0.1:{admin}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                if process.returncode is not None:
                    output = await process.stdout.read() if process.stdout else b""
                    pytest.fail(f"wicket exited with {process.returncode}: {output.decode()}")
                try:
                    async with http.get(f"{admin_url}/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
            else:
                pytest.fail("wicket did not become ready")
        yield f"http://127.0.0.1:{data}/mcp", admin_url
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()


async def test_the_installed_wheel_runs_from_any_directory(installed: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = [str(installed / "bin" / "python"), "-c", "import proxy; print(proxy.__file__)"]
    found = await asyncio.to_thread(subprocess.run, probe, cwd=elsewhere, capture_output=True, text=True, check=True)
    assert found.stdout.startswith(str(installed)), found.stdout

    # `wicket demo`: the bundled demo policy admits anonymous callers, read-only.
    async with wicket_process(installed, elsewhere, "demo", "--demo-port", str(free_port())) as (url, _):
        async with mcp_client(url) as client:
            read = await client.call_tool("get_weather", {"city": "Oslo"})
            refused = await client.call_tool("drop_table", {"table": "users"})
        assert not read.is_error and refused.is_error
    assert (elsewhere / "wicket-audit.jsonl").is_file(), "the audit log goes to the working directory"

    upstream = DemoUpstream("127.0.0.1", free_port())
    await upstream.start()
    try:
        # `wicket run --upstream`: the bundled default policy, which admits no anonymous caller.
        async with wicket_process(installed, elsewhere, "run", "--upstream", upstream.url) as (url, admin):
            async with aiohttp.ClientSession() as http:
                async with http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}) as response:
                    assert response.status == 401
                headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
                async with http.post(f"{admin}/v1/sessions", json={"agent_id": "bot"}, headers=headers) as response:
                    token = (await response.json())["token"]
            async with mcp_client(url, token=token) as client:
                assert not (await client.call_tool("list_notes", {})).is_error
        # --policy is still honoured, relative to the working directory.
        (elsewhere / "mine.yaml").write_text("version: 1\nanonymous: {enabled: true}\n")
        async with wicket_process(installed, elsewhere, "run", "--upstream", upstream.url, "--policy", "mine.yaml") as (
            url,
            _,
        ):
            async with mcp_client(url) as client:
                assert not (await client.call_tool("list_notes", {})).is_error
    finally:
        await upstream.stop()
    assert upstream.ledger.names() == ["list_notes", "list_notes"]
