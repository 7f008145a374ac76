"""Revocation propagation between two Wicket replicas sharing one Redis: p50, p99 and max.

Starts a Redis of its own (a ``redis-server`` subprocess on a free port), the demo MCP server and
two Wicket replicas, A and B, on that Redis with the same session key, signing key and operator
token. Then, ``--iterations`` times:

1. create a read-only session on A (``POST /v1/sessions``);
2. check that a ``get_weather`` call with its token passes on B (HTTP 200, a CallToolResult);
3. poll B with that call, back to back on each of ``--pollers`` keep-alive connections; once B
   has accepted a poll on every connection, take ``t0`` and send
   ``POST /v1/revocations {"kind": "session", "id": ...}`` to A, noting when its 201 comes back
   (the polling goes on meanwhile, so the revoke lands at a random point of a poll);
4. stop at B's first HTTP 401, which must say the access was revoked;
5. read on B's (and A's) ``/metrics`` when that replica started enforcing the revocation
   (``wicket_revocation_in_force_timestamp_seconds``, set as the entry enters its in-memory list,
   which every request's admission checks) and that it came by the feed (``..._in_force_total``).

The propagation time, the goal's figure, is when B started enforcing minus ``t0`` (taken just
before the revoke POST is sent; both clocks are this host's wall clock): from then on B refuses
every request it admits. B's first 401 is reported too, as an upper bound: it adds the probe's
own calls (the poll in flight at ``t0`` was usually admitted before the revocation arrived and
must finish first, then the refusing poll makes its round trip), which under load are slower
than the propagation itself. The moment the announcement reached a subscriber of our own on the
revocation channel (B's listener receives the same message) is reported next to it. Everything
is stopped at the end (terminate, then kill), whatever happens. See ``bench/README.md``.

Run: ``.venv/bin/python bench/revocation.py [--iterations 200] [--pollers 1] [--json FILE]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis
from run import (
    HOST,
    MODERN,
    ROOT,
    BenchError,
    CallFailed,
    Proc,
    check_result,
    free_port,
    machine,
    percentile,
    probe_readyz,
    probe_redis,
    redis_server_argv,
    spawn,
    stop_all,
    wait_until,
    write_signing_key,
)

TOOL, ARGUMENTS = "get_weather", {"city": "Oslo"}
CHANNEL = "wicket:revocations"  # RedisStore's revocation set and pub/sub channel, with the default prefix


@dataclass
class Iteration:
    """One revoke and what B did around it; times in seconds from ``t0`` (just before the revoke POST)."""

    revoke_response: float  # the 201 from A arrived
    enforced: float  # B started enforcing the revocation (its own record)
    enforced_a: float  # A started enforcing it (before announcing it)
    refused: float  # B's first 401 arrived (upper bound on the propagation)
    refused_sent: float  # that refused poll was sent
    last_accepted_sent: float  # the last poll B accepted was sent (a lower bound when > 0)
    announced: float | None  # our own subscriber saw the message on the revocation channel
    polls: int  # polls sent to B at or after t0, the refused one included
    accepted_after_response: int  # polls B accepted that were sent after A had answered 201


@dataclass
class Replica:
    name: str
    data: str  # http://host:port/mcp
    admin: str  # http://host:port


ENFORCED_AT = "wicket_revocation_in_force_timestamp_seconds"
ENFORCED_COUNT = "wicket_revocations_in_force_total"


async def enforcement(http: aiohttp.ClientSession, replica: Replica, via: str) -> tuple[float, float]:
    """(when the replica last started enforcing a new revocation, Unix time; how many came ``via``)."""
    async with http.get(f"{replica.admin}/metrics") as resp:
        text = await resp.text()
        if resp.status != 200:
            raise BenchError(f"GET /metrics on {replica.name}: HTTP {resp.status}")
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    try:
        return float(values[ENFORCED_AT]), float(values.get(f'{ENFORCED_COUNT}{{via="{via}"}}', 0.0))
    except KeyError:
        raise BenchError(f"{replica.name} does not report {ENFORCED_AT}: a Wicket older than this bench?") from None


@dataclass
class Poll:
    sent: float  # perf_counter() values
    arrived: float
    status: int


@dataclass
class Poller:
    """Back-to-back calls to B with one token, on each of B's connections; all stop at the first 401.

    The polling starts before the revoke is sent, so the revoke lands at a random point of a poll.
    """

    url: str
    token: str
    connections: int
    armed: asyncio.Event = field(default_factory=asyncio.Event)  # every connection had a call accepted
    refused: asyncio.Event = field(default_factory=asyncio.Event)
    polls: list[Poll] = field(default_factory=list)
    refusal_body: bytes = b""
    error: str | None = None
    _accepting: set[int] = field(default_factory=set)

    async def run(self, session: aiohttp.ClientSession, first_id: int) -> None:
        call_id = first_id
        while not self.refused.is_set() and self.error is None:
            call_id += 1_000_000
            body, headers = call_body(call_id), call_headers(self.token)
            sent = time.perf_counter()
            try:
                async with session.post(self.url, data=body, headers=headers) as resp:
                    raw = await resp.read()
                    status, ctype = resp.status, resp.content_type
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.error = f"poll: {type(exc).__name__}: {exc}"
                self.armed.set()
                return
            self.polls.append(Poll(sent, time.perf_counter(), status))
            if status == 401:
                if not self.refused.is_set():
                    self.refusal_body = raw
                self.refused.set()
                self.armed.set()  # (a refusal before the revoke is caught by the caller)
                return
            try:
                check_result(status, ctype, raw, call_id)
            except CallFailed as exc:
                self.error = f"poll: {exc}"
                self.armed.set()
                return
            self._accepting.add(first_id)
            if len(self._accepting) == self.connections:
                self.armed.set()


def call_body(call_id: int) -> bytes:
    params = {
        "name": TOOL,
        "arguments": ARGUMENTS,
        "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}},
    }
    return json.dumps({"jsonrpc": "2.0", "id": call_id, "method": "tools/call", "params": params}).encode()


def call_headers(token: str | None) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": TOOL,
    }
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


async def one_call(http: aiohttp.ClientSession, url: str, token: str | None, call_id: int) -> None:
    async with http.post(url, data=call_body(call_id), headers=call_headers(token)) as resp:
        raw = await resp.read()
        check_result(resp.status, resp.content_type, raw, call_id)


def client() -> aiohttp.ClientSession:
    """One keep-alive connection."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1, keepalive_timeout=4),
        timeout=aiohttp.ClientTimeout(total=10),
        trust_env=False,
    )


@dataclass
class Load:
    """Background calls (anonymous reads) on both replicas while revocations are measured."""

    calls: int = 0
    failures: list[str] = field(default_factory=list)

    async def run(
        self, http: aiohttp.ClientSession, url: str, ids: Iterator[int], stop: asyncio.Event, every: float = 0.0
    ) -> None:
        """Calls back to back, or (``every`` > 0) one every ``every`` seconds, on a schedule that a
        slow call delays but never makes up for with a burst."""
        due = time.perf_counter()
        while not stop.is_set():
            if every:
                due = max(due + every, time.perf_counter())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, due - time.perf_counter())):
                        await stop.wait()
                if stop.is_set():
                    return
            try:
                await one_call(http, url, None, next(ids))
                self.calls += 1
            except (CallFailed, aiohttp.ClientError, TimeoutError) as exc:
                if len(self.failures) < 5:
                    self.failures.append(str(exc))
                if len(self.failures) >= 5:
                    return


LOAD_WORKER = "load-worker"  # this script's first argument in the load's own process
SCRIPT = Path(__file__).resolve()


def load_worker(argv: Sequence[str]) -> int:
    """``--load`` runs here, in a process of its own: the process that takes ``t0`` and sends the
    revoke is not also busy sending and checking the load's calls, so none of its own lag is
    counted against Wicket.

    ``argv``: REPORT RATE URL... (a connection per URL; RATE: calls per second over all of them,
    0 for back to back). The first call on every connection done, it
    creates REPORT.ready; SIGUSR1 marks the start of the measured part, SIGTERM its end, after
    which the calls between the two, their seconds and any failures are written to REPORT as JSON.
    """
    report, rate, urls = Path(argv[0]), float(argv[1]), list(argv[2:])
    every = len(urls) / rate if rate > 0 else 0.0

    async def serve() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        stop, marks = asyncio.Event(), dict[str, tuple[int, float]]()
        load, ids = Load(), itertools.count(10_000_000)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, lambda: marks.setdefault("start", (load.calls, time.perf_counter())))
        clients = [client() for _ in urls]
        try:
            for http, url in zip(clients, urls, strict=True):
                await one_call(http, url, None, next(ids))
            report.with_suffix(".ready").touch()
            pairs = zip(clients, urls, strict=True)
            loaders = [asyncio.create_task(load.run(http, url, ids, stop, every)) for http, url in pairs]
            await stop.wait()
            end = (load.calls, time.perf_counter())
            await asyncio.gather(*loaders, return_exceptions=True)
        finally:
            for http in clients:
                await http.close()
        calls, began = marks.get("start", end)
        return {"calls": end[0] - calls, "seconds": end[1] - began, "failures": load.failures}

    report.write_text(json.dumps(asyncio.run(serve())))
    return 0


@dataclass
class Announcements:
    """Our own subscriber on the revocation channel: when did each session's announcement arrive?"""

    seen: dict[str, float] = field(default_factory=dict)  # session id -> perf_counter() at arrival
    error: str | None = None

    async def follow(self, client: Redis, ready: asyncio.Event) -> None:
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(CHANNEL)
            ready.set()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None and message.get("type") == "message":
                    now = time.perf_counter()
                    kind, _, ident = message["data"].decode().partition("\0")
                    if kind == "session":
                        self.seen.setdefault(ident, now)
        except Exception as exc:  # report, do not hide: the figure is then missing
            self.error = f"{type(exc).__name__}: {exc}"
            ready.set()
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()


async def measure_once(
    http_a: aiohttp.ClientSession,
    http_b: list[aiohttp.ClientSession],
    http_m: aiohttp.ClientSession,
    a: Replica,
    b: Replica,
    admin_token: str,
    refuse_within: float,
    announcements: Announcements,
    index: int,
) -> Iteration:
    auth = {"Authorization": f"Bearer {admin_token}"}
    body = {"agent_id": "revocation-bench", "mode": "read-only", "ttl_seconds": 600}
    async with http_a.post(f"{a.admin}/v1/sessions", json=body, headers=auth) as resp:
        raw = await resp.read()
        if resp.status != 201:
            raise BenchError(f"POST /v1/sessions on A: HTTP {resp.status}: {raw[:300]!r}")
    created = json.loads(raw)
    session_id, token = created["session_id"], created["token"]
    for i, session in enumerate(http_b):  # the token works on B (and warms every polling connection)
        try:
            await one_call(session, b.data, token, index * 100 + i)
        except CallFailed as exc:
            raise BenchError(f"iteration {index}: a call with A's fresh token failed on B: {exc}") from None

    before_b, before_a = await enforcement(http_m, b, "feed"), await enforcement(http_m, a, "local")
    poller = Poller(b.data, token, len(http_b))
    tasks = [asyncio.create_task(poller.run(s, index * 100 + i)) for i, s in enumerate(http_b)]
    try:
        async with asyncio.timeout(refuse_within):
            await poller.armed.wait()  # B is being polled, and accepts the token, on every connection
        if poller.error is not None or poller.refused.is_set():
            raise BenchError(f"iteration {index}: B did not accept the token before the revoke: {poller.error}")
        t0_wall, t0 = time.time(), time.perf_counter()
        async with http_a.post(
            f"{a.admin}/v1/revocations", json={"kind": "session", "id": session_id}, headers=auth
        ) as r:
            raw = await r.read()
            responded = time.perf_counter() - t0
            if r.status != 201:
                raise BenchError(f"POST /v1/revocations on A: HTTP {r.status}: {raw[:300]!r}")
        try:
            async with asyncio.timeout(refuse_within):
                await asyncio.gather(*tasks)
        except TimeoutError:
            why = f"B still accepts the revoked session after {refuse_within:g} s"
            raise BenchError(f"iteration {index}: {why}") from None
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if poller.error is not None:
        raise BenchError(f"iteration {index}: {poller.error}")
    if b"revoked" not in poller.refusal_body.lower():
        raise BenchError(f"iteration {index}: B's 401 does not say the session was revoked: {poller.refusal_body!r}")
    (b_at, b_count), (a_at, a_count) = await enforcement(http_m, b, "feed"), await enforcement(http_m, a, "local")
    if b_count != before_b[1] + 1 or b_at <= before_b[0]:
        raise BenchError(f"iteration {index}: B did not start enforcing the revocation from the feed")
    if a_count != before_a[1] + 1 or a_at <= before_a[0]:
        raise BenchError(f"iteration {index}: A did not start enforcing the revocation it was asked for")
    first = min((p for p in poller.polls if p.status == 401), key=lambda p: p.arrived)
    accepted = [p for p in poller.polls if p.status == 200]
    announced_at = announcements.seen.get(session_id)
    return Iteration(
        revoke_response=responded,
        enforced=b_at - t0_wall,
        enforced_a=a_at - t0_wall,
        refused=first.arrived - t0,
        refused_sent=first.sent - t0,
        last_accepted_sent=max(p.sent for p in accepted) - t0,
        announced=None if announced_at is None else announced_at - t0,
        polls=sum(p.sent >= t0 for p in poller.polls),
        accepted_after_response=sum(p.sent - t0 > responded for p in accepted),
    )


def distribution(values: Sequence[float]) -> dict[str, float]:
    ms = [v * 1e3 for v in values]
    return {
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms),
        "min_ms": min(ms),
        "mean_ms": sum(ms) / len(ms),
    }


def summarise(runs: list[Iteration]) -> dict[str, Any]:
    announced = [r.announced for r in runs if r.announced is not None]
    return {
        "iterations": len(runs),
        "enforced_from_revoke_sent": distribution([r.enforced for r in runs]),
        "enforced_on_a_from_revoke_sent": distribution([r.enforced_a for r in runs]),
        "enforced_on_b_from_a": distribution([r.enforced - r.enforced_a for r in runs]),
        "refused_from_revoke_sent": distribution([r.refused for r in runs]),
        "refused_from_revoke_response": distribution([r.refused - r.revoke_response for r in runs]),
        "refusing_poll_sent_from_revoke_sent": distribution([r.refused_sent for r in runs]),
        "last_accepted_poll_sent_from_revoke_sent": distribution([r.last_accepted_sent for r in runs]),
        "revoke_round_trip": distribution([r.revoke_response for r in runs]),
        "announced_from_revoke_sent": distribution(announced) if announced else None,
        "announced_seen": len(announced),
        "refusing_poll_round_trip": distribution([r.refused - r.refused_sent for r in runs]),
        "polls_after_revoke_sent_mean": sum(r.polls for r in runs) / len(runs),
        "iterations_refused_before_revoke_response": sum(r.refused < r.revoke_response for r in runs),
        "calls_accepted_after_revoke_response": sum(r.accepted_after_response for r in runs),
    }


REVOCATION_P99_GOAL_MS = 5.0


def render(summary: dict[str, Any]) -> str:
    rows = [
        ("**B enforces it (refuses what it admits from then on), from revoke sent**", "enforced_from_revoke_sent"),
        ("A enforces it (before announcing it), from revoke sent", "enforced_on_a_from_revoke_sent"),
        ("B enforces it, from A enforcing it (the replica-to-replica part)", "enforced_on_b_from_a"),
        ("B's first 401 arrives (adds the probe's own calls), from revoke sent", "refused_from_revoke_sent"),
        ("B refuses, from A's 201 to the revoke", "refused_from_revoke_response"),
        ("B's refusing poll was sent, from revoke sent (< 0: before it)", "refusing_poll_sent_from_revoke_sent"),
        ("A answers the revoke (201), from revoke sent", "revoke_round_trip"),
        ("the announcement reaches a bench subscriber, from revoke sent", "announced_from_revoke_sent"),
        ("round trip of B's refusing poll (resolution)", "refusing_poll_round_trip"),
    ]
    lines = ["| from … to … | p50 ms | p99 ms | max ms | min ms |", "|---|---|---|---|---|"]
    for label, key in rows:
        d = summary[key]
        if d is None:
            lines.append(f"| {label} | n/a | n/a | n/a | n/a |")
        else:
            lines.append(f"| {label} | {d['p50_ms']:.2f} | {d['p99_ms']:.2f} | {d['max_ms']:.2f} | {d['min_ms']:.2f} |")
    lines += [
        "",
        f"- {summary['iterations']} revocations; {summary['polls_after_revoke_sent_mean']:.1f} polls of B sent after "
        "the revoke, on average; B refused before A's 201 arrived in "
        f"{summary['iterations_refused_before_revoke_response']} of them; calls B accepted that were sent after "
        f"A's 201: {summary['calls_accepted_after_revoke_response']}; "
        f"announcements seen by the bench subscriber: {summary['announced_seen']}",
    ]
    p99 = summary["enforced_from_revoke_sent"]["p99_ms"]
    holds = "yes" if p99 < REVOCATION_P99_GOAL_MS else "**no**"
    lines.append(
        f"- goal (issue 19): B refuses within {REVOCATION_P99_GOAL_MS:g} ms p99 of the revoke: "
        f"{p99:.2f} ms, holds: {holds} (B's first 401 to the probe: "
        f"{summary['refused_from_revoke_sent']['p99_ms']:.2f} ms p99)"
    )
    return "\n".join(lines)


async def run(args: argparse.Namespace, workdir: Path, procs: list[Proc]) -> dict[str, Any]:
    py = sys.executable
    deadline = time.monotonic() + args.startup_timeout
    rp, up = free_port(), free_port()
    procs.append(spawn("redis", redis_server_argv(args.redis_server, rp, workdir), workdir))
    await wait_until("redis-server", [procs[-1]], lambda: probe_redis(rp), deadline)
    procs.append(
        spawn(
            "upstream", [py, "-m", "proxy.demo.server", "--host", HOST, "--port", str(up), "--json-response"], workdir
        )
    )
    signing_key = workdir / "signing-key.pem"
    write_signing_key(signing_key)
    admin_token = secrets.token_urlsafe(32)
    env = {
        "WICKET_ADMIN_TOKEN": admin_token,
        "WICKET_SESSION_KEY": secrets.token_hex(32),
        "WICKET_SIGNING_KEY": str(signing_key),
    }
    replicas: list[Replica] = []
    for name in ("a", "b"):
        data, admin = free_port(), free_port()
        argv = [
            py, "-m", "proxy", "run",
            "--upstream", f"http://{HOST}:{up}/mcp",
            "--policy", str(ROOT / "policies" / "demo.yaml"),
            "--listen", f"{HOST}:{data}",
            "--admin-listen", f"{HOST}:{admin}",
            "--store", f"redis://{HOST}:{rp}/0",
            "--audit-log", str(workdir / f"audit-{name}.jsonl"),
        ]  # fmt: skip
        procs.append(spawn(f"wicket-{name}", argv, workdir, env))
        replicas.append(Replica(name, f"http://{HOST}:{data}/mcp", f"http://{HOST}:{admin}"))
    a, b = replicas
    by_name = {p.name: p for p in procs}
    for r in replicas:
        proc = by_name[f"wicket-{r.name}"]
        await wait_until(f"wicket-{r.name} /readyz", [proc], lambda r=r: probe_readyz(f"{r.admin}/readyz"), deadline)

    announcements = Announcements()
    redis = Redis(host=HOST, port=rp)
    ready = asyncio.Event()
    follower = asyncio.create_task(announcements.follow(redis, ready))
    http_a, http_b, http_m = client(), [client() for _ in range(args.pollers)], client()
    runs: list[Iteration] = []
    load_report = workdir / "load.json"
    loader: Proc | None = None
    try:
        await asyncio.wait_for(ready.wait(), 5)
        for i in range(args.warmup):  # unmeasured: connections, caches and both replicas' code paths
            await measure_once(http_a, http_b, http_m, a, b, admin_token, args.timeout, announcements, i)
        if args.load:  # half on each replica: B polls and A revokes while both serve other calls
            urls = [(a, b)[n % 2].data for n in range(args.load)]
            worker = [py, str(SCRIPT), LOAD_WORKER, str(load_report), str(args.load_rate), *urls]
            loader = spawn("load", worker, workdir)
            procs.append(loader)
            ready = load_report.with_suffix(".ready")
            await wait_until("the load", [loader], lambda: _exists(ready), time.monotonic() + args.startup_timeout)
            os.kill(loader.pid, signal.SIGUSR1)
        print(f"replicas A and B ready; {args.iterations} revocations; load: {args.load} connections", flush=True)
        t_start = time.perf_counter()
        for i in range(args.iterations):
            runs.append(
                await measure_once(
                    http_a, http_b, http_m, a, b, admin_token, args.timeout, announcements, args.warmup + i + 1
                )
            )
            for p in procs:
                p.check_alive()
        measured = time.perf_counter() - t_start
        load_rate = 0.0
        if loader is not None:
            loader.popen.terminate()
            await asyncio.to_thread(loader.popen.wait, 30)
            done = json.loads(load_report.read_text())
            if done["failures"]:
                raise BenchError("background load calls failed: " + "; ".join(done["failures"]))
            load_rate = done["calls"] / done["seconds"] if done["seconds"] > 0 else 0.0
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        await redis.aclose()
        await http_a.close()
        await http_m.close()
        for s in http_b:
            await s.close()
    return {
        "machine": machine(),
        "config": {
            "iterations": args.iterations,
            "warmup": args.warmup,
            "pollers": args.pollers,
            "timeout_seconds": args.timeout,
            "poll": f"tools/call {TOOL} with the session's token, {MODERN} stateless, JSON",
            "measured_seconds": measured,
            "announcement_errors": announcements.error,
            "load_connections": args.load,
            "load_rate_target": args.load_rate,
            "load_calls_per_s": load_rate,
        },
        **summarise(runs),
        "samples_ms": [
            {
                "enforced": round(r.enforced * 1e3, 3),
                "enforced_a": round(r.enforced_a * 1e3, 3),
                "refused": round(r.refused * 1e3, 3),
                "revoke_response": round(r.revoke_response * 1e3, 3),
                "last_accepted_sent": round(r.last_accepted_sent * 1e3, 3),
                "announced": None if r.announced is None else round(r.announced * 1e3, 3),
                "polls": r.polls,
            }
            for r in runs
        ],
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Revocation propagation between two Wicket replicas on one Redis.")
    p.add_argument("--iterations", type=int, default=200, help="revocations measured (default 200)")
    p.add_argument("--warmup", type=int, default=5, help="unmeasured revocations first (default 5)")
    p.add_argument("--pollers", type=int, default=1, help="connections polling B back to back (default 1)")
    p.add_argument(
        "--load",
        type=int,
        default=0,
        help="connections sending anonymous reads back to back, half to each replica, while revocations are "
        "measured (default 0: idle replicas)",
    )
    p.add_argument(
        "--load-rate",
        type=float,
        default=0.0,
        help="with --load: the load's calls per second over all its connections, evenly paced (default 0: back "
        "to back, which saturates a small machine); e.g. half the back-to-back rate for a replica at about 50%% CPU",
    )
    p.add_argument("--timeout", type=float, default=15.0, help="seconds B may keep accepting a revoked token")
    p.add_argument("--redis-server", default="redis-server", help="redis-server binary (default: from PATH)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temp dir with the logs and audit logs")
    p.add_argument("--startup-timeout", type=float, default=60.0, help="seconds for everything to become ready")
    p.add_argument("--max-seconds", type=float, default=240.0, help="hard limit for the whole run (default 240)")
    args = p.parse_args(argv)
    if args.load_rate < 0 or (args.load_rate and not args.load):
        p.error("--load-rate needs --load connections to send on, and cannot be negative")
    if args.iterations < 1 or args.pollers < 1 or args.warmup < 0 or args.timeout <= 0 or args.load < 0:
        p.error("--iterations, --pollers and --timeout must be positive, --warmup not negative")
    if shutil.which(args.redis_server) is None:
        p.error(f"redis-server binary {args.redis_server!r} not found")
    return args


async def _exists(path: Path) -> None:
    if not await asyncio.to_thread(path.exists):
        raise OSError(f"{path.name} not there yet")


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops the children


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    procs: list[Proc] = []
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="wicket-revocation-"))
    failure: str | None = None
    try:
        result = asyncio.run(asyncio.wait_for(run(args, workdir, procs), args.max_seconds))
    except BenchError as exc:
        failure = str(exc)
    except TimeoutError:
        failure = f"still running after --max-seconds {args.max_seconds}"
    finally:
        stop_all(procs)
        if failure is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if failure is not None:
        print(f"revocation bench: INVALID RUN: {failure}\n(logs kept in {workdir})", file=sys.stderr)
        return 1
    if args.keep:
        print(f"logs and audit logs kept in {workdir}")
    m, c = result["machine"], result["config"]
    pace = f"paced at {c['load_rate_target']:g} calls/s" if c["load_rate_target"] else "back to back"
    print(
        f"\n{m['date']}  nproc={m['nproc']}  python {m['python']}  {m['cpu']}\n"
        f"{c['iterations']} revocations (after {c['warmup']} unmeasured), {c['pollers']} poller(s) on B; "
        f"poll: {c['poll']}\n"
        f"load: {c['load_connections']} connections of anonymous reads, half on each replica, {pace} "
        f"({c['load_calls_per_s']:.0f} calls/s while measured)\n"
    )
    print(render(result))
    if c["announcement_errors"]:
        print(f"\nWARNING: the bench's own subscriber failed: {c['announcement_errors']}")
    print(f"\nmeasured in {c['measured_seconds']:.1f} s, {time.perf_counter() - started:.1f} s in all")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(load_worker(sys.argv[2:]) if sys.argv[1:2] == [LOAD_WORKER] else main())
