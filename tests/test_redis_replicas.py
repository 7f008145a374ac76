"""Two Wicket processes sharing one Redis: sessions, revocations and store faults across replicas."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mcp.shared.exceptions import MCPError
from mcp.types import CreateMessageResult, TextContent

from proxy.demo.server import DemoUpstream, free_port
from tests.conftest import ADMIN_TOKEN, ROOT, RunningWicket, WicketFactory, mcp_client
from tests.redis_support import RedisServer

ADMIN = "replica-operator-token-0123456789"
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


class Replica:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, admin: int) -> None:
        self.proc, self.port, self.admin = proc, port, admin

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin}"


def spawn(upstream: str, store: str, env: dict[str, str], tmp: Path) -> Replica:
    port, admin = free_port(), free_port()
    argv = [
        sys.executable, "-m", "proxy", "run", "--upstream", upstream, "--store", store,
        "--policy", str(ROOT / "policies/default.yaml"), "--listen", f"127.0.0.1:{port}",
        "--admin-listen", f"127.0.0.1:{admin}", "--audit-log", str(tmp / f"audit-{port}.jsonl"),
    ]  # fmt: skip
    log = open(tmp / f"wicket-{port}.log", "wb")
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return Replica(proc, port, admin)


async def ready(replica: Replica, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < end:
            if replica.proc.poll() is not None:
                raise AssertionError(f"wicket exited with {replica.proc.returncode}")
            try:
                async with http.get(f"{replica.admin_url}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("wicket did not become ready")


@pytest.fixture
def shared_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    key = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "signing.pem").write_bytes(key)
    env = {
        **os.environ,
        "WICKET_SESSION_KEY": "replica-session-key-0123456789abcdef",
        "WICKET_SIGNING_KEY": str(tmp_path / "signing.pem"),
        "WICKET_ADMIN_TOKEN": ADMIN,
    }
    env.pop("ANTHROPIC_API_KEY", None)
    yield env


@pytest.fixture
async def replicas(
    upstream: DemoUpstream,
    redis_url: str,
    shared_env: dict[str, str],
    tmp_path: Path,
) -> AsyncIterator[tuple[Replica, Replica]]:
    pair = (spawn(upstream.url, redis_url, shared_env, tmp_path), spawn(upstream.url, redis_url, shared_env, tmp_path))
    try:
        await asyncio.gather(*(ready(r) for r in pair))
        yield pair
    finally:
        for replica in pair:
            replica.proc.terminate()
        for replica in pair:
            try:
                replica.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                replica.proc.kill()


async def create_session(replica: Replica, agent: str) -> dict[str, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{replica.admin_url}/v1/sessions",
            json={"agent_id": agent},
            headers={"Authorization": f"Bearer {ADMIN}"},
        ) as response,
    ):
        assert response.status == 201, await response.text()
        return dict(await response.json())


async def call(replica: Replica, token: str) -> int:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "get_weather", "arguments": {"city": "Oslo"}, "_meta": META},
    }
    headers = {
        "Accept": "application/json, text/event-stream",
        "Authorization": f"Bearer {token}",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": "get_weather",
    }
    async with aiohttp.ClientSession() as http, http.post(replica.url, json=body, headers=headers) as response:
        return response.status


async def test_a_session_made_on_one_replica_works_on_the_other_and_revocation_spreads(
    replicas: tuple[Replica, Replica], upstream: DemoUpstream
) -> None:
    a, b = replicas
    agent = f"agent-{uuid.uuid4().hex[:8]}"
    grant = await create_session(a, agent)
    assert await call(b, grant["token"]) == 200
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{a.admin_url}/v1/revocations",
            json={"kind": "session", "id": grant["session_id"]},
            headers={"Authorization": f"Bearer {ADMIN}"},
        ) as response,
    ):
        assert response.status == 201
    ran = len(upstream.ledger.calls)
    assert await call(a, grant["token"]) == 401, "the revoking replica enforces it before it answers 201"
    # Pub/sub carries it to the other replica; poll briefly (the bench measures how fast).
    for _ in range(50):
        if await call(b, grant["token"]) == 401:
            break
        await asyncio.sleep(0.05)
    assert await call(b, grant["token"]) == 401
    assert await call(a, grant["token"]) == 401
    assert len(upstream.ledger.calls) == ran, "refused calls never reach the upstream"
    # Each replica says how the revocation came into force there, and when.
    a_metrics, b_metrics = await metrics(a), await metrics(b)
    assert 'wicket_revocations_in_force_total{via="local"} 1.0' in a_metrics
    assert 'wicket_revocations_in_force_total{via="feed"} 1.0' in b_metrics
    assert "wicket_revocation_in_force_timestamp_seconds 0.0" not in b_metrics


async def metrics(replica: Replica) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{replica.admin_url}/metrics") as response:
        assert response.status == 200
        return await response.text()


async def test_the_sampling_rate_limit_holds_across_both_replicas(
    replicas: tuple[Replica, Replica], upstream: DemoUpstream
) -> None:
    """One session's sampling budget (10 per 5 minutes) is counted in Redis, not per replica."""
    a, b = replicas
    grant = await create_session(a, f"agent-{uuid.uuid4().hex[:8]}")
    prompts: list[str] = []

    async def llm(context: Any, params: Any) -> CreateMessageResult:
        prompts.append(params.messages[0].content.text)
        return CreateMessageResult(role="assistant", content=TextContent(type="text", text="ok"), model="stub")

    for replica, calls in ((a, 6), (b, 4)):
        async with mcp_client(replica.url, token=grant["token"], mode="2026-07-28", sampling_callback=llm) as client:
            for _ in range(calls):
                assert not (await client.call_tool("get_summary", {})).is_error
    async with mcp_client(a.url, token=grant["token"], mode="2026-07-28", sampling_callback=llm) as client:
        with pytest.raises(MCPError) as refused:
            await client.call_tool("get_summary", {})
    assert refused.value.error.code == -32050
    assert "rate limit" in refused.value.error.message
    assert len(prompts) == 10
    assert upstream.ledger.names().count("get_summary") == 10


async def test_shared_store_without_keys_refuses_to_start(redis_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("WICKET_SESSION_KEY", "WICKET_SIGNING_KEY")}
    replica = spawn("http://127.0.0.1:9/mcp", redis_url, env, tmp_path)
    assert replica.proc.wait(timeout=30) != 0
    log = (tmp_path / f"wicket-{replica.port}.log").read_text()
    assert "WICKET_SESSION_KEY" in log and "WICKET_SIGNING_KEY" in log


async def test_redis_killed_mid_run_fails_closed_then_recovers(
    upstream: DemoUpstream,
    make_wicket: WicketFactory,
    redis_server: RedisServer,
) -> None:
    signing = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    running = await make_wicket(
        upstream.url, "version: 1\n", store=redis_server.url, environ={"WICKET_SIGNING_KEY": signing.decode()}
    )
    grant = await running.create_session("kill-test")
    assert await call_running(running, grant["token"]) == 200

    redis_server.kill()
    assert await call_running(running, grant["token"]) == 503
    async with aiohttp.ClientSession() as http, http.get(f"{running.admin_url}/readyz") as response:
        assert response.status == 503
        assert "Redis unavailable" in (await response.json())["checks"]["store"]
    assert len(upstream.ledger.calls) == 1, "nothing is forwarded while the store is down"

    redis_server.start()  # an empty Redis: the old session is gone, a new one works
    grant = await running.create_session("kill-test")
    assert await call_running(running, grant["token"]) == 200
    async with aiohttp.ClientSession() as http, http.get(f"{running.admin_url}/readyz") as response:
        assert response.status == 200


async def call_running(running: RunningWicket, token: str) -> int:
    replica = Replica(None, running.wicket.data_port, running.wicket.admin_port)  # type: ignore[arg-type]
    return await call(replica, token)


async def test_control_api_answers_503_while_redis_is_down(
    upstream: DemoUpstream, make_wicket: WicketFactory, redis_server: RedisServer
) -> None:
    signing = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    running = await make_wicket(
        upstream.url, "version: 1\n", store=redis_server.url, environ={"WICKET_SIGNING_KEY": signing.decode()}
    )
    redis_server.kill()
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession() as http:
        for path, payload in (("/v1/sessions", {"agent_id": "a"}), ("/v1/revocations", {"kind": "agent", "id": "a"})):
            async with http.post(f"{running.admin_url}{path}", json=payload, headers=headers) as response:
                assert response.status == 503, path
                assert "state store is unavailable" in (await response.json())["error"]
