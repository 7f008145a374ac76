"""What Wicket adds to an A2A call: the same SendMessage (JSON-RPC 1.0) and GetTask, sent one
after another to the a2a-sdk demo agent directly and through Wicket (memory store, audit log in
a temporary directory, minted credentials, Spot in process, no Deep).

Run: ``python bench/a2a_overhead.py --calls 300``. Prints median and p95 latency per path and the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from proxy.app import Wicket
from proxy.core.policy import parse_policy_text
from proxy.demo.a2a_agent import JSONRPC_PATH, DemoA2AAgent
from proxy.settings import Settings

POLICY = "version: 1\n"
ADMIN = "bench-operator-token-0123456789abcdef"


async def timed(http: aiohttp.ClientSession, url: str, body: dict[str, object], headers: dict[str, str]) -> float:
    started = time.perf_counter()
    async with http.post(url, json=body, headers=headers) as response:
        payload = await response.json()
    elapsed = time.perf_counter() - started
    assert "result" in payload, payload
    return elapsed


async def series(http: aiohttp.ClientSession, base: str, headers: dict[str, str], calls: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"SendMessage": [], "GetTask": []}
    for i in range(calls):
        message = {"messageId": f"b{i}", "role": "ROLE_USER", "parts": [{"text": f"bench {i}"}]}
        send = {"jsonrpc": "2.0", "id": i, "method": "SendMessage", "params": {"message": message}}
        started = time.perf_counter()
        async with http.post(base + JSONRPC_PATH, json=send, headers=headers) as response:
            task_id = (await response.json())["result"]["task"]["id"]
        out["SendMessage"].append(time.perf_counter() - started)
        get = {"jsonrpc": "2.0", "id": i, "method": "GetTask", "params": {"id": task_id}}
        out["GetTask"].append(await timed(http, base + JSONRPC_PATH, get, headers))
    return out


def summary(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.95) - 1] * 1000


async def main(calls: int) -> None:
    agent = DemoA2AAgent()
    await agent.start()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            upstream="",
            a2a_upstream=agent.base,
            listen="127.0.0.1:0",
            admin_listen="127.0.0.1:0",
            audit_log=str(Path(tmp) / "audit.jsonl"),
            admin_token=ADMIN,
        )
        wicket = Wicket(settings, parse_policy_text(POLICY))
        await wicket.start()
        try:
            async with aiohttp.ClientSession() as http:
                admin = f"http://127.0.0.1:{wicket.admin_port}/v1/sessions"
                body = {"agent_id": "bench", "mode": "read-write"}
                async with http.post(admin, json=body, headers={"Authorization": f"Bearer {ADMIN}"}) as response:
                    token = (await response.json())["token"]
                headers = {"A2A-Version": "1.0"}
                await series(http, agent.base, headers, 20)  # warm-up
                direct = await series(http, agent.base, headers, calls)
                through = await series(
                    http, f"http://127.0.0.1:{wicket.data_port}", {**headers, "Authorization": f"Bearer {token}"}, calls
                )
        finally:
            await wicket.stop()
            await agent.stop()
    for method in direct:
        d50, d95 = summary(direct[method])
        w50, w95 = summary(through[method])
        print(
            f"{method:12s} direct p50 {d50:6.2f} ms p95 {d95:6.2f} ms | through Wicket p50 {w50:6.2f} ms "
            f"p95 {w95:6.2f} ms | added p50 {w50 - d50:5.2f} ms"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=300)
    asyncio.run(main(parser.parse_args().calls))
