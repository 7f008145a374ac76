"""The performance floor: a bare aiohttp pass-through reverse proxy with no checks at all.

Wicket's cost is only meaningful next to the cost of *any* Python/aiohttp proxy hop: the extra
socket pair, HTTP parsing on both sides and a copy of the body. This proxy does exactly that and
nothing else, so ``Wicket - floor`` is what Wicket's own work (identity, policy, audit) costs.

Run: ``python bench/floor.py --listen 127.0.0.1:8090 --upstream http://127.0.0.1:8081 [--event-loop uvloop]``

The floor runs on asyncio's own event loop unless told otherwise: a bare aiohttp proxy as anyone
would write it. ``wicket run`` runs on uvloop where it is installed (``--event-loop``), so
``Wicket - floor`` includes what the faster loop saves; ``bench/run.py --floor-loop uvloop`` puts the
floor on uvloop too, to show Wicket's own work on equal loops.

``--essentials AUDIT_LOG`` adds, with Wicket's own code, only the per-call work issue 19 says must
not be given up, and nothing else: the request read as JSON-RPC, a decision record sealed into the
hash chain and written *before* the forward, a credential minted and signed (Ed25519) for this one
call, the answer read as JSON, and an outcome record written after the answer is sent. No checker,
session, policy, screen, metric or header check. ``essentials - floor`` is then the least any
design that keeps those promises costs on this stack: the part of Wicket's own work that no
optimisation of the rest can remove.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

# RFC 9110 §7.6.1 hop-by-hop headers, plus the framing headers aiohttp recomputes itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
    }
)

CLIENT_KEY: web.AppKey[aiohttp.ClientSession] = web.AppKey("client", aiohttp.ClientSession)
UPSTREAM_KEY: web.AppKey[str] = web.AppKey("upstream", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def end_to_end(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """Headers minus hop-by-hop ones and those named in ``Connection``: they describe one hop only."""
    named = {t.strip().lower() for t in headers.get("Connection", "").split(",") if t.strip()}
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP and k.lower() not in named)


async def forward(request: web.Request) -> web.StreamResponse:
    """Forward one request verbatim and relay the answer; streamed when it is SSE or unsized."""
    client = request.app[CLIENT_KEY]
    body = await request.read()
    url = request.app[UPSTREAM_KEY] + request.rel_url.raw_path_qs
    try:
        async with client.request(
            request.method, url, headers=end_to_end(request.headers), data=body or None, allow_redirects=False
        ) as upstream:
            headers = end_to_end(upstream.headers)
            streamed = upstream.content_type == "text/event-stream" or upstream.content_length is None
            if not streamed:
                return web.Response(status=upstream.status, headers=headers, body=await upstream.read())
            response = web.StreamResponse(status=upstream.status, headers=headers)
            response.enable_chunked_encoding()
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
    except aiohttp.ClientError as exc:
        return web.Response(status=502, text=f"floor: upstream failed: {exc}\n")


async def _client_ctx(app: web.Application) -> AsyncIterator[None]:
    """One pooled client session for the proxy's lifetime, like a real proxy keeps its pool warm."""
    # Idle upstream connections are dropped after 4 s, before uvicorn's (and Node's) 5 s server-side
    # keep-alive closes them: reusing one the server is closing at that moment yields a spurious 502.
    connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=4)
    app[CLIENT_KEY] = aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
    )
    yield
    await app[CLIENT_KEY].close()


def essentials(audit_log: str, upstream: str) -> Handler:
    """The handler of ``--essentials``: the floor's forward plus the work no Wicket may drop (see the
    module docstring), done with Wicket's own modules. Imported here: the plain floor loads none of them."""
    from proxy.adapters import jsonrpc
    from proxy.adapters.relay import deliver
    from proxy.audit.sink import FileAuditSink
    from proxy.core.action import arguments_sha256, new_decision_id
    from proxy.credentials.keys import KeyRing, b64url

    sink = FileAuditSink(audit_log, fsync="interval")
    keys = KeyRing.generate()
    audience = upstream.rstrip("/") + "/mcp"

    async def forward_essentials(request: web.Request) -> web.StreamResponse:
        client = request.app[CLIENT_KEY]
        body = await request.read()
        message = jsonrpc.loads(body)
        method = message["method"]
        params = message.get("params") or {}
        name = params.get("name", method)
        digest = arguments_sha256(params.get("arguments") or {})
        decision_id = new_decision_id()
        label = f"{method}:{name}"
        base = {"decision_id": decision_id, "agent_id": "anonymous", "session_id": "ses_essentials"}
        base |= {"protocol": "mcp", "action": label, "effect": "read"}
        decided = {"event": "decision", **base, "upstream": audience, "decision": "allow", "tier": "fast"}
        decided |= {"reason": f"Allowed: '{name}' is a read action.", "confidence": 1.0, "arguments_sha256": digest}
        await sink.append(decided)  # audited before it is forwarded
        now = int(time.time())
        jti = b64url(os.urandom(16))
        claims = {"iss": "wicket", "sub": "anonymous", "aud": audience, "scope": "*", "method": method}
        claims |= {"args_sha256": digest, "sid": "ses_essentials", "jti": jti, "iat": now, "nbf": now}
        claims |= {"exp": now + 60, "tool": name}
        headers = end_to_end(request.headers)
        headers["Authorization"] = "Bearer " + keys.sign(claims)
        started = time.perf_counter()
        url = request.app[UPSTREAM_KEY] + request.rel_url.raw_path_qs
        async with client.request(request.method, url, headers=headers, data=body, allow_redirects=False) as upstream:
            payload = await upstream.read()
            jsonrpc.loads(payload)  # the answer is read before it is relayed
            response = web.Response(status=upstream.status, headers=end_to_end(upstream.headers), body=payload)
        await deliver(request, response)
        outcome = {"event": "outcome", **base, "status": "success", "credential_mode": "minted", "credential_id": jti}
        outcome["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
        await sink.append(outcome)
        return response

    return forward_essentials


def build_app(upstream: str, audit_log: str | None = None) -> web.Application:
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app[UPSTREAM_KEY] = upstream.rstrip("/")
    app.cleanup_ctx.append(_client_ctx)
    handler = forward if audit_log is None else essentials(audit_log, upstream)
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


async def serve(host: str, port: int, upstream: str, audit_log: str | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then close cleanly so the bench sees a prompt exit."""
    runner = web.AppRunner(build_app(upstream, audit_log), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    print(f"floor proxy at http://{host}:{port} -> {upstream}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description="Bare aiohttp pass-through reverse proxy (the benchmark floor).")
    parser.add_argument("--listen", default="127.0.0.1:8090", metavar="HOST:PORT")
    parser.add_argument("--upstream", required=True, metavar="URL", help="scheme://host:port; paths are kept as is")
    parser.add_argument(
        "--essentials",
        metavar="AUDIT_LOG",
        help="also do, with Wicket's code, the per-call work no Wicket may drop (JSON-RPC tool calls only)",
    )
    parser.add_argument(
        "--event-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="asyncio's own loop (the floor as issue 19 defines it; default) or uvloop (what wicket run uses)",
    )
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    factory = None
    if args.event_loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(host or "127.0.0.1", int(port), args.upstream, args.essentials))


if __name__ == "__main__":
    main()
