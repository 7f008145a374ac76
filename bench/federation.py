"""Federation revocation: how long a partner keeps accepting a credential its issuer has revoked.

Two Wicket deployments in this process, P (the issuer, in front of a recording upstream) and Q
(the partner, trusting P with introspection). Each iteration: an agent call through P mints a
credential for P's upstream (captured there); presenting it to Q passes (Q asks P's
``/v1/introspect`` and caches the answer); then ``t0``, ``POST /v1/revocations {"kind": "token",
"id": <the credential's jti>}`` at P, and Q is polled back to back with that credential until its
first 401. The time is bounded by Q's ``cache_seconds`` (default 5 s): the figure shows where
inside that bound a revocation lands, and that it always does.

Run: ``.venv/bin/python bench/federation.py [--iterations 10] [--cache-seconds 5]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.app import Wicket
from proxy.core.policy import parse_policy_text
from proxy.settings import Settings

ADMIN = "bench-operator-token-0123456789abcdef"
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


async def recording_upstream(tokens: list[str]) -> tuple[web.AppRunner, str]:
    tool = {
        "name": "get_report",
        "description": "Read a report.",
        "inputSchema": {"type": "object", "properties": {"topic": {"type": "string"}}},
        "annotations": {"readOnlyHint": True},
    }

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        if "id" not in body:
            return web.Response(status=202)  # a notification
        if body.get("method") == "tools/list":
            result: dict[str, Any] = {"tools": [tool], "resultType": "complete"}
        else:
            tokens.append(request.headers.get("Authorization", "").removeprefix("Bearer "))
            result = {"content": [{"type": "text", "text": "ok"}], "isError": False, "resultType": "complete"}
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": result})

    app = web.Application()
    app.router.add_post("/mcp", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/mcp"


def key_file(directory: Path, name: str) -> str:
    path = directory / f"{name}.pem"
    path.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(path)


async def call(http: aiohttp.ClientSession, url: str, token: str) -> int:
    params = {"name": "get_report", "arguments": {"topic": "t"}, "_meta": META}
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": "get_report",
    }
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    async with http.post(url, json=body, headers=headers) as response:
        await response.read()
        return response.status


async def main(iterations: int, cache_seconds: float) -> dict[str, Any]:
    secret = secrets.token_hex(16)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        p_tokens: list[str] = []
        q_tokens: list[str] = []
        p_runner, p_upstream = await recording_upstream(p_tokens)
        q_runner, q_upstream = await recording_upstream(q_tokens)
        base = {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0", "admin_token": ADMIN, "session_key": b"k" * 32}
        p_policy = (
            "version: 1\nanonymous: {enabled: false}\nintrospection: {clients: [{id: q, secret_env: Q_SECRET}]}\n"
        )
        p = Wicket(
            Settings(
                upstream=p_upstream,
                audit_log=str(directory / "p.jsonl"),
                credential_issuer="wicket-p",
                agent_name="agent-x",
                environ={"WICKET_SIGNING_KEY": key_file(directory, "p"), "Q_SECRET": secret},
                **base,
            ),
            parse_policy_text(p_policy),
        )
        await p.start()
        q_policy = (
            "version: 1\nanonymous: {enabled: false}\ntrust:\n  - issuer: wicket-p\n"
            f"    jwks_url: http://127.0.0.1:{p.data_port}/.well-known/jwks.json\n"
            f"    introspection: {{url: 'http://127.0.0.1:{p.admin_port}/v1/introspect', client_id: q, "
            f"client_secret_env: P_SECRET, cache_seconds: {cache_seconds}}}\n"
        )
        q = Wicket(
            Settings(
                upstream=q_upstream,
                audit_log=str(directory / "q.jsonl"),
                credential_issuer="wicket-q",
                environ={"WICKET_SIGNING_KEY": key_file(directory, "q"), "P_SECRET": secret},
                **base,
            ),
            parse_policy_text(q_policy),
        )
        await q.start()
        times: list[float] = []
        operator = {"Authorization": f"Bearer {ADMIN}"}
        try:
            async with aiohttp.ClientSession() as http:
                async with http.post(
                    f"http://127.0.0.1:{p.admin_port}/v1/sessions", json={"agent_id": "planner"}, headers=operator
                ) as response:
                    token = (await response.json())["token"]
                p_url, q_url = f"http://127.0.0.1:{p.data_port}/mcp", f"http://127.0.0.1:{q.data_port}/mcp"
                for _ in range(iterations):
                    status = await call(http, p_url, token)
                    assert status == 200, f"the call through P answered {status}"
                    credential = p_tokens[-1]
                    assert await call(http, q_url, credential) == 200, "the partner admits the fresh credential"
                    jti = jwt.decode(credential, options={"verify_signature": False})["jti"]
                    t0 = time.perf_counter()
                    async with http.post(
                        f"http://127.0.0.1:{p.admin_port}/v1/revocations",
                        json={"kind": "token", "id": jti},
                        headers=operator,
                    ) as response:
                        assert response.status == 201
                    while await call(http, q_url, credential) != 401:
                        if time.perf_counter() - t0 > cache_seconds + 10:
                            raise RuntimeError("the partner never refused the revoked credential")
                    times.append(time.perf_counter() - t0)
        finally:
            await q.stop()
            await p.stop()
            await p_runner.cleanup()
            await q_runner.cleanup()
    ms = sorted(t * 1000 for t in times)
    return {
        "iterations": iterations,
        "cache_seconds": cache_seconds,
        "p50_ms": round(statistics.median(ms), 1),
        "max_ms": round(ms[-1], 1),
        "min_ms": round(ms[0], 1),
        "cpus": os.cpu_count(),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--cache-seconds", type=float, default=5.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.iterations, args.cache_seconds)), indent=2))
