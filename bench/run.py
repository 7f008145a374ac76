"""Direct vs bare pass-through vs Wicket, for Wicket's Fast-only and Fast+Spot paths, in one run.

Starts the demo MCP server, the floor proxy (``bench/floor.py``) and Wicket as subprocesses on
127.0.0.1, then drives two workloads through each with an aiohttp load generator in this process:

* ``read``: ``tools/call get_weather`` as an anonymous caller. Wicket routes a read through Fast
  Guard only.
* ``write``: ``tools/call create_note`` in a read-write Wicket session created on the admin API.
  Wicket routes a mutating call through Fast Guard and then Spot Guard (the in-process risk engine).

Every phase is interleaved across the six targets (2 workloads x direct, floor, Wicket) so machine
noise hits them alike. With ``--stores memory,redis`` a second Wicket runs on a Redis of its own
(a ``redis-server`` subprocess) next to the memory-store one: eight targets, and the Redis
backend's cost per decision is reported against the memory backend's, measured in the same run.
See ``bench/README.md`` for how to read the output.

Run: ``.venv/bin/python bench/run.py [--calls 600] [--concurrency 32] [--json FILE] [--sse] [--stores memory,redis]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import importlib.util
import itertools
import json
import math
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
MODERN = "2026-07-28"
LEGACY = "2025-11-25"
MAX_FAILURES = 20  # stop a phase early once this many calls failed: the numbers are invalid anyway
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Keep every byte of traffic on loopback: no LLM tier, no shared store, no proxies from the env.
SCRUBBED_ENV = ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "REDIS_URL", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
# Anomaly escalation (SPEC section 8) raises the effect of a session whose write ratio is >= 80%
# once it has made ``min_calls`` calls; the write workload is 100% writes, so its sessions would
# turn destructive (and be denied: no Deep Guard here) after 5 calls. The bench policy raises
# ``min_calls`` to the schema's maximum, and the write target never makes more calls than that in
# one Wicket session: it moves to a fresh session between phases, never inside one.
SESSION_CALLS = 1000
BENCH_POLICY = f"""\
# Written by bench/run.py. Layered on policies/demo.yaml for the benchmark only.
version: 1
guardian:
  anomaly: {{min_calls: {SESSION_CALLS}}}
"""

# With --hs256: the upstream's credentials are minted with HMAC-SHA256 and a secret it shares.
HS256_ENV = "WICKET_BENCH_HS256"
HS256_POLICY = 'upstreams:\n  - url: "{url}"\n    credentials: {{alg: HS256, value_env: ' + HS256_ENV + "}}\n"


@dataclass(frozen=True)
class Workload:
    """One kind of tool call, and the Wicket guardian path it takes."""

    name: str
    path: str
    tool: str
    arguments: dict[str, Any]


READ = Workload("read", "Fast only", "get_weather", {"city": "Oslo"})
WRITE = Workload("write", "Fast + Spot", "create_note", {"title": "bench", "text": "Written by the Wicket benchmark."})
WORKLOADS = (READ, WRITE)

# State stores a Wicket target can run on. Each store gets its own Wicket process, named here:
# the name is the target's name in the tables and the process's name in the CPU accounting.
STORES = ("memory", "redis")
WICKET_PROC = {"memory": "wicket", "redis": "wicket-redis"}
AUDIT_FILE = {"memory": "audit.jsonl", "redis": "audit-redis.jsonl"}
REDIS_PROC = "redis"
# --essentials: the floor plus only the per-call work issue 19 keeps (bench/floor.py --essentials).
ESSENTIALS = "essentials"
ESSENTIALS_AUDIT = "audit-essentials.jsonl"


class BenchError(RuntimeError):
    """The run cannot produce valid numbers (a process died, a call failed, a deadline passed)."""


# --------------------------------------------------------------------------------------------
# Subprocesses


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    """A child process with its log file, so a failure can show why it died."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(f"    {line}" for line in text[-lines:]) or "    (empty log)"

    def check_alive(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise BenchError(f"{self.name} exited with code {code}; its log ends with:\n{self.log_tail()}")


def spawn(
    name: str, argv: Sequence[str], workdir: Path, extra_env: dict[str, str] | None = None, cwd: Path = ROOT
) -> Proc:
    """Start a child in its own session so a terminal Ctrl-C reaches only us; we stop it in order.

    ``cwd`` is also where ``python -m proxy`` finds the package (another checkout, for a profile)."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra_env or {})
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Proc(name, popen, log)


def stop_all(procs: Sequence[Proc], grace: float = 5.0) -> None:
    """SIGTERM everyone, give them ``grace`` seconds together, then SIGKILL whoever is left."""
    for p in procs:
        if p.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.popen.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                p.popen.kill()
            p.popen.wait(timeout=5)


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process from /proc/PID/stat (fields 14 and 15, clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()  # comm may hold spaces; fields[0] is field 3
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_signing_key(path: Path) -> None:
    """A fresh Ed25519 private key as PKCS#8 PEM, for ``WICKET_SIGNING_KEY`` (a shared store requires one)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.touch(mode=0o600)
    path.write_bytes(pem)


def redis_server_argv(binary: str, port: int, workdir: Path) -> list[str]:
    """A throwaway Redis on loopback: no persistence, its files (if any) in the temp dir."""
    return [
        binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
        "--dir", str(workdir), "--logfile", "",
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# The MCP client


class CallFailed(Exception):
    """One tool call did not come back as a successful CallToolResult."""


@dataclass
class SessionGrant:
    """Issues read-write Wicket sessions on the admin API (``POST /v1/sessions``)."""

    admin_url: str
    admin_token: str
    issued: int = 0

    async def issue(self, http: aiohttp.ClientSession) -> str:
        body = {"agent_id": "bench", "mode": "read-write", "ttl_seconds": 3600}
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        async with http.post(f"{self.admin_url}/v1/sessions", json=body, headers=headers) as resp:
            raw = await resp.read()
            if resp.status != 201:
                raise BenchError(f"POST /v1/sessions: HTTP {resp.status}: {raw[:300]!r}")
        token = json.loads(raw).get("token")
        if not isinstance(token, str) or not token.startswith("wkt_"):
            raise BenchError(f"POST /v1/sessions: no wkt_ token in {raw[:300]!r}")
        self.issued += 1
        return token


@dataclass
class Target:
    """One thing to measure: a workload, a URL, a pooled client session, and the process that serves it."""

    name: str  # direct | floor | essentials | wicket | wicket-redis
    workload: Workload
    url: str
    proxy: str | None  # name of the proxy process in front of the upstream, if any
    sse: bool
    grant: SessionGrant | None = None  # set for Wicket's write target: calls carry a read-write session
    session: aiohttp.ClientSession | None = None
    mcp_session_id: str | None = None
    bearer: str | None = None
    session_calls: int = 0  # calls sent with the current bearer token

    @property
    def label(self) -> str:
        return f"{self.workload.name}/{self.name}"

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self.bearer:
            h["Authorization"] = f"Bearer {self.bearer}"
        if self.sse:  # legacy generation: session-bound, answered as an SSE stream
            h["MCP-Protocol-Version"] = LEGACY
            if self.mcp_session_id:
                h["Mcp-Session-Id"] = self.mcp_session_id
        else:
            h.update({"MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": self.workload.tool})
        return h

    def body(self, call_id: int) -> bytes:
        params: dict[str, Any] = {"name": self.workload.tool, "arguments": self.workload.arguments}
        if not self.sse:
            params["_meta"] = {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
            }
        return json.dumps({"jsonrpc": "2.0", "id": call_id, "method": "tools/call", "params": params}).encode()

    async def open(self, concurrency: int) -> None:
        """Keep-alive pool sized to the concurrency, so no phase pays for new connections."""
        if self.session is None:
            self.session = aiohttp.ClientSession(
                # Below uvicorn's 5 s keep-alive: we never reuse a connection the server is closing.
                connector=aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=4),
                timeout=aiohttp.ClientTimeout(total=10),
                trust_env=False,
            )
        await self.reserve(0)
        if self.sse and self.mcp_session_id is None:
            await self._initialize()

    async def reserve(self, calls: int) -> None:
        """Make sure the next ``calls`` calls fit in the current Wicket session, else start a new one.

        Called between phases only, outside any timed section or CPU snapshot.
        """
        if self.grant is None:
            return
        if calls > SESSION_CALLS:
            raise BenchError(f"{self.label}: a phase of {calls} calls does not fit in one session ({SESSION_CALLS})")
        if self.bearer is None or self.session_calls + calls > SESSION_CALLS:
            assert self.session is not None
            self.bearer = await self.grant.issue(self.session)
            self.session_calls = 0
            self.mcp_session_id = None
            if self.sse:  # a legacy MCP session belongs to the Wicket session that opened it
                await self._initialize()

    async def _initialize(self) -> None:
        """Legacy handshake: initialize, then notifications/initialized, on one MCP session."""
        assert self.session is not None
        init = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": LEGACY,
                "capabilities": {},
                "clientInfo": {"name": "wicket-bench", "version": "0"},
            },
        }
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self.bearer:
            headers["Authorization"] = f"Bearer {self.bearer}"
        async with self.session.post(self.url, json=init, headers=headers) as resp:
            raw = await resp.read()
            if resp.status != 200 or "Mcp-Session-Id" not in resp.headers:
                raise CallFailed(f"initialize: HTTP {resp.status}: {raw[:300]!r}")
            self.mcp_session_id = resp.headers["Mcp-Session-Id"]
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        async with self.session.post(self.url, json=note, headers=self.headers()) as resp:
            await resp.read()
            if resp.status not in (200, 202):
                raise CallFailed(f"notifications/initialized: HTTP {resp.status}")

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def call(self, call_id: int) -> float:
        """One tool call; returns its latency in seconds, or raises CallFailed."""
        assert self.session is not None
        body, headers = self.body(call_id), self.headers()
        self.session_calls += 1
        t0 = time.perf_counter()
        try:
            async with self.session.post(self.url, data=body, headers=headers) as resp:
                raw = await resp.read()
                status, ctype = resp.status, resp.content_type
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise CallFailed(f"{type(exc).__name__}: {exc}") from None
        elapsed = time.perf_counter() - t0
        check_result(status, ctype, raw, call_id)  # outside the timed section: same cost for every target
        return elapsed


def check_result(status: int, ctype: str, raw: bytes, call_id: int) -> None:
    """Accept only HTTP 200 carrying our id's CallToolResult with ``isError: false``."""
    if status != 200:
        raise CallFailed(f"HTTP {status}: {raw[:300]!r}")
    if ctype == "text/event-stream":
        messages = [
            json.loads(line[5:]) for line in raw.decode().splitlines() if line.startswith("data:") and line[5:].strip()
        ]
    else:
        messages = [json.loads(raw)]
    for msg in messages:
        if isinstance(msg, dict) and msg.get("id") == call_id:
            result = msg.get("result")
            if isinstance(result, dict) and result.get("isError") is False and result.get("content"):
                return
            raise CallFailed(f"not a successful result: {json.dumps(msg)[:300]}")
    raise CallFailed(f"no response with id {call_id} in {raw[:300]!r}")


# --------------------------------------------------------------------------------------------
# Phases


@dataclass
class Failures:
    count: int = 0
    samples: list[str] = field(default_factory=list)

    def add(self, reason: str) -> None:
        self.count += 1
        if len(self.samples) < 3:
            self.samples.append(reason)


@dataclass
class Stats:
    """Everything measured for one target, summed over the interleaved rounds."""

    lat_c1: list[float] = field(default_factory=list)
    lat_cn: list[float] = field(default_factory=list)
    tput_calls: int = 0
    tput_seconds: float = 0.0
    cpu_cn: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds in c=N phases
    cpu_c1: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds in c=1 phases
    c1_calls: int = 0
    failures: Failures = field(default_factory=Failures)
    warmup_calls: int = 0
    warmup_failures: Failures = field(default_factory=Failures)  # tolerated when rare, but reported


class Bench:
    """Drives the phases; owns the call-id counter and the pid table used for CPU accounting."""

    def __init__(self, targets: list[Target], pids: dict[str, int], concurrency: int) -> None:
        self.targets = targets
        self.pids = pids
        self.concurrency = concurrency
        self.ids = itertools.count(1)
        self.stats = {t.label: Stats() for t in targets}

    def _cpu(self) -> dict[str, float]:
        snap = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        snap["client"] = own_cpu_seconds()
        return snap

    @staticmethod
    def _add_cpu(into: dict[str, float], before: dict[str, float], after: dict[str, float]) -> None:
        for k in before:
            into[k] = into.get(k, 0.0) + after[k] - before[k]

    async def _run(self, target: Target, calls: int, concurrency: int, failures: Failures) -> list[float]:
        """``calls`` calls spread over ``concurrency`` workers on one keep-alive session."""
        remaining = calls
        latencies: list[float] = []

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0 and failures.count < MAX_FAILURES:
                remaining -= 1
                try:
                    latencies.append(await target.call(next(self.ids)))
                except CallFailed as exc:
                    failures.add(str(exc))

        await asyncio.gather(*(worker() for _ in range(min(concurrency, calls))))
        return latencies

    def _raise_on_failures(self, target: Target, failures: Failures, phase: str) -> None:
        if failures.count:
            self.stats[target.label].failures = failures
            samples = "\n".join(f"    {s}" for s in failures.samples)
            raise BenchError(f"{target.label}: {failures.count}+ failed calls in {phase}; first ones:\n{samples}")

    async def _warm(self, target: Target, calls: int, concurrency: int) -> None:
        """Unmeasured calls. A rare failure here is tolerated and reported, not fatal.

        A proxy whose upstream pool outlives the upstream's keep-alive (uvicorn closes idle
        connections after 5 s) can lose a race after a target sat idle while the others were
        measured. That is a robustness finding, not a cost; the re-warm absorbs it so the measured
        phase that follows runs on a pool that was just used end to end.
        """
        stats = self.stats[target.label]
        await target.reserve(calls)
        await self._run(target, calls, concurrency, stats.warmup_failures)
        stats.warmup_calls += calls
        if stats.warmup_failures.count > max(2, stats.warmup_calls // 20):
            self._raise_on_failures(target, stats.warmup_failures, "warm-up")

    async def warm_up(self, calls: int) -> None:
        for target in self.targets:
            await self._warm(target, calls, 1)
            await self._warm(target, calls * 2, self.concurrency)

    async def latency_round(self, target: Target, calls: int) -> None:
        stats, failures = self.stats[target.label], Failures()
        await target.reserve(2 * self.concurrency + calls)  # re-warm and measured calls share a session
        await self._warm(target, 2 * self.concurrency, self.concurrency)
        before = self._cpu()
        stats.lat_c1 += await self._run(target, calls, 1, failures)
        self._add_cpu(stats.cpu_c1, before, self._cpu())
        stats.c1_calls += calls
        self._raise_on_failures(target, failures, "the c=1 latency phase")

    async def throughput_round(self, target: Target, calls: int) -> None:
        stats, failures = self.stats[target.label], Failures()
        await target.reserve(2 * self.concurrency + calls)
        await self._warm(target, 2 * self.concurrency, self.concurrency)
        before = self._cpu()
        t0 = time.perf_counter()
        stats.lat_cn += await self._run(target, calls, self.concurrency, failures)
        stats.tput_seconds += time.perf_counter() - t0
        self._add_cpu(stats.cpu_cn, before, self._cpu())
        stats.tput_calls += calls
        self._raise_on_failures(target, failures, f"the c={self.concurrency} throughput phase")

    async def measure(self, calls: int, tput_calls: int, rounds: int) -> None:
        """Round-robin: each round runs c=1 for every target, then c=N; the order rotates per round."""
        for r in range(rounds):
            order = self.targets[r % len(self.targets) :] + self.targets[: r % len(self.targets)]
            n1 = calls // rounds + (1 if r < calls % rounds else 0)
            nn = tput_calls // rounds + (1 if r < tput_calls % rounds else 0)
            for target in order:
                await self.latency_round(target, n1)
            for target in order:
                await self.throughput_round(target, nn)


# --------------------------------------------------------------------------------------------
# Readiness


async def wait_until(what: str, procs: Sequence[Proc], probe: Callable[[], Any], deadline: float) -> None:
    """Retry ``probe`` until it succeeds; fail fast if a process dies, slow if nothing answers."""
    last = "never probed"
    while True:
        for p in procs:
            p.check_alive()
        try:
            await probe()
            return
        except (aiohttp.ClientError, OSError, CallFailed, TimeoutError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            logs = "\n".join(f"  {p.name}:\n{p.log_tail(15)}" for p in procs)
            raise BenchError(f"{what} not ready in time (last error: {last})\n{logs}")
        await asyncio.sleep(0.2)


async def probe_call(target: Target, concurrency: int) -> None:
    """Ready means a real, validated tool call passes, not just an open port."""
    await target.open(concurrency)
    await target.call(0)


async def probe_redis(port: int) -> None:
    """PING over RESP; ready means +PONG."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 2)
    try:
        writer.write(b"PING\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 2)
        if line.strip() != b"+PONG":
            raise CallFailed(f"redis answered {line[:100]!r} to PING")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def probe_readyz(url: str) -> None:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2), trust_env=False) as s,
        s.get(url) as resp,
    ):
        if resp.status != 200:
            raise CallFailed(f"/readyz answered {resp.status}")


# --------------------------------------------------------------------------------------------
# Report


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: an observed value, no interpolation."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None and b > 0 else None


def sub(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def target_figures(s: Stats, proxy: str | None) -> dict[str, Any]:
    cn, c1 = max(s.tput_calls, 1), max(s.c1_calls, 1)
    return {
        "p50_ms": percentile(s.lat_c1, 50) * 1e3,
        "p99_ms": percentile(s.lat_c1, 99) * 1e3,
        "p50_ms_cN": percentile(s.lat_cn, 50) * 1e3,
        "p99_ms_cN": percentile(s.lat_cn, 99) * 1e3,
        "calls_c1": s.c1_calls,
        "calls_cN": s.tput_calls,
        "calls_per_s": s.tput_calls / s.tput_seconds,
        "proxy_cpu_us_per_call": s.cpu_cn[proxy] / cn * 1e6 if proxy else None,
        "proxy_cpu_us_per_call_c1": s.cpu_c1[proxy] / c1 * 1e6 if proxy else None,
        "upstream_cpu_us_per_call": s.cpu_cn["upstream"] / cn * 1e6,
        "client_cpu_us_per_call": s.cpu_cn["client"] / cn * 1e6,
        # The Redis server's CPU during this target's phases (only with --stores ...,redis). For the
        # targets that do not use Redis it is the server's idle cost (its cron), spread over their calls.
        "store_cpu_us_per_call": s.cpu_cn[REDIS_PROC] / cn * 1e6 if REDIS_PROC in s.cpu_cn else None,
        "store_cpu_us_per_call_c1": s.cpu_c1[REDIS_PROC] / c1 * 1e6 if REDIS_PROC in s.cpu_c1 else None,
        "warmup_calls": s.warmup_calls,
        "warmup_failures": s.warmup_failures.count,
        "warmup_failure_samples": s.warmup_failures.samples,
    }


def workload_ratios(out: dict[str, Any]) -> dict[str, Any]:
    """Wicket (and the floor, when measured) against the direct call of the same workload."""
    d, f, w = out["direct"], out.get("floor"), out["wicket"]
    ratios: dict[str, Any] = {}
    for q in ("p50", "p99"):
        w_add = w[f"{q}_ms"] - d[f"{q}_ms"]
        f_add = f[f"{q}_ms"] - d[f"{q}_ms"] if f else None
        ratios[f"wicket_added_{q}_ms"] = w_add
        ratios[f"wicket_{q}_vs_direct"] = div(w[f"{q}_ms"], d[f"{q}_ms"])
        ratios[f"floor_added_{q}_ms"] = f_add
        ratios[f"wicket_added_over_floor_added_{q}"] = div(w_add, f_add)
        ratios[f"wicket_own_{q}_ms"] = sub(w_add, f_add)
    ratios["wicket_throughput_vs_direct"] = div(w["calls_per_s"], d["calls_per_s"])
    ratios["wicket_throughput_vs_floor"] = div(w["calls_per_s"], f["calls_per_s"]) if f else None
    ratios["floor_throughput_vs_direct"] = div(f["calls_per_s"], d["calls_per_s"]) if f else None
    ratios["wicket_cpu_us_per_call"] = w["proxy_cpu_us_per_call"]
    ratios["wicket_cpu_vs_floor_cpu"] = div(w["proxy_cpu_us_per_call"], f["proxy_cpu_us_per_call"]) if f else None
    ratios["wicket_own_cpu_us_per_call"] = sub(w["proxy_cpu_us_per_call"], f["proxy_cpu_us_per_call"]) if f else None
    return ratios


def store_ratios(out: dict[str, Any]) -> dict[str, Any]:
    """Wicket on Redis against Wicket on the memory store (and both against direct), same workload, same run."""
    d, m, r = out["direct"], out[WICKET_PROC["memory"]], out[WICKET_PROC["redis"]]
    ratios: dict[str, Any] = {}
    for q in ("p50", "p99"):
        ratios[f"memory_added_{q}_ms"] = m[f"{q}_ms"] - d[f"{q}_ms"]
        ratios[f"redis_added_{q}_ms"] = r[f"{q}_ms"] - d[f"{q}_ms"]
        ratios[f"memory_{q}_vs_direct"] = div(m[f"{q}_ms"], d[f"{q}_ms"])
        ratios[f"redis_{q}_vs_direct"] = div(r[f"{q}_ms"], d[f"{q}_ms"])
        ratios[f"redis_minus_memory_{q}_ms"] = r[f"{q}_ms"] - m[f"{q}_ms"]
        ratios[f"redis_{q}_vs_memory"] = div(r[f"{q}_ms"], m[f"{q}_ms"])
    ratios["redis_minus_memory_p50_ms_cN"] = r["p50_ms_cN"] - m["p50_ms_cN"]
    ratios["redis_throughput_vs_memory"] = div(r["calls_per_s"], m["calls_per_s"])
    ratios["redis_throughput_vs_direct"] = div(r["calls_per_s"], d["calls_per_s"])
    ratios["memory_throughput_vs_direct"] = div(m["calls_per_s"], d["calls_per_s"])
    for suffix in ("", "_c1"):
        wm, wr = m[f"proxy_cpu_us_per_call{suffix}"], r[f"proxy_cpu_us_per_call{suffix}"]
        ratios[f"wicket_cpu_memory_us_per_call{suffix}"] = wm
        ratios[f"wicket_cpu_redis_us_per_call{suffix}"] = wr
        ratios[f"wicket_cpu_redis_minus_memory_us{suffix}"] = sub(wr, wm)
        ratios[f"wicket_cpu_redis_vs_memory{suffix}"] = div(wr, wm)
        ratios[f"redis_server_cpu_us_per_call{suffix}"] = r[f"store_cpu_us_per_call{suffix}"]
        # Redis's background CPU while the memory-store Wicket was measured: what is not due to the calls.
        ratios[f"redis_server_idle_cpu_us_per_call{suffix}"] = m[f"store_cpu_us_per_call{suffix}"]
        # Everything the Redis backend costs on top of the memory backend: Wicket's extra CPU plus all of
        # the server's (its idle share included, so this errs on the high side).
        extra = sub(wr, wm)
        server = r[f"store_cpu_us_per_call{suffix}"]
        ratios[f"total_cpu_redis_minus_memory_us{suffix}"] = extra + server if extra is not None and server else extra
    return ratios


def summarise(bench: Bench, targets: list[Target]) -> dict[str, Any]:
    workloads: dict[str, Any] = {}
    for wl in WORKLOADS:
        out = {t.name: target_figures(bench.stats[t.label], t.proxy) for t in targets if t.workload is wl}
        workloads[wl.name] = {"path": wl.path, "tool": wl.tool, "targets": out, "ratios": workload_ratios(out)}
        if WICKET_PROC["redis"] in out:
            workloads[wl.name]["redis_vs_memory"] = store_ratios(out)
    r, w = workloads["read"]["ratios"], workloads["write"]["ratios"]
    rt, wt = workloads["read"]["targets"], workloads["write"]["targets"]
    spot = {  # what the write (Fast + Spot) path costs on top of the read (Fast only) path
        "added_p50_ms": w["wicket_added_p50_ms"] - r["wicket_added_p50_ms"],
        "added_p99_ms": w["wicket_added_p99_ms"] - r["wicket_added_p99_ms"],
        "wicket_cpu_us_per_call": sub(wt["wicket"]["proxy_cpu_us_per_call"], rt["wicket"]["proxy_cpu_us_per_call"]),
        "wicket_cpu_us_per_call_c1": sub(
            wt["wicket"]["proxy_cpu_us_per_call_c1"], rt["wicket"]["proxy_cpu_us_per_call_c1"]
        ),
        "floor_cpu_us_per_call": (
            sub(wt["floor"]["proxy_cpu_us_per_call"], rt["floor"]["proxy_cpu_us_per_call"])
            if "floor" in wt and "floor" in rt
            else None
        ),
    }
    wr = WICKET_PROC["redis"]
    if wr in wt and wr in rt:  # the same on the Redis store; its write path reads a token and a session record
        rs, ws = workloads["read"]["redis_vs_memory"], workloads["write"]["redis_vs_memory"]
        spot["redis"] = {
            "added_p50_ms": ws["redis_added_p50_ms"] - rs["redis_added_p50_ms"],
            "added_p99_ms": ws["redis_added_p99_ms"] - rs["redis_added_p99_ms"],
            "wicket_cpu_us_per_call": sub(wt[wr]["proxy_cpu_us_per_call"], rt[wr]["proxy_cpu_us_per_call"]),
            "wicket_cpu_us_per_call_c1": sub(wt[wr]["proxy_cpu_us_per_call_c1"], rt[wr]["proxy_cpu_us_per_call_c1"]),
            "redis_server_cpu_us_per_call": sub(wt[wr]["store_cpu_us_per_call"], rt[wr]["store_cpu_us_per_call"]),
        }
    return {"workloads": workloads, "spot_over_fast": spot}


def fmt(value: float | None, spec: str = ".2f", suffix: str = "", prefix: str = "") -> str:
    return "n/a" if value is None else f"{prefix}{value:{spec}}{suffix}"


def render(summary: dict[str, Any], concurrency: int) -> str:
    wls = summary["workloads"]
    cols = [
        ("p50 c=1 ms", "p50_ms", ".3f"),
        ("p99 c=1 ms", "p99_ms", ".3f"),
        (f"p50 c={concurrency} ms", "p50_ms_cN", ".2f"),
        (f"calls/s c={concurrency}", "calls_per_s", ".0f"),
        ("proxy CPU µs/call", "proxy_cpu_us_per_call", ".0f"),
        ("upstream CPU µs/call", "upstream_cpu_us_per_call", ".0f"),
        ("client CPU µs/call", "client_cpu_us_per_call", ".0f"),
    ]
    if any("redis_vs_memory" in wl for wl in wls.values()):
        cols.append(("Redis CPU µs/call", "store_cpu_us_per_call", ".0f"))
    lines = ["| path (tool) | target | " + " | ".join(c[0] for c in cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for wl in wls.values():
        for name, t in wl["targets"].items():
            figures = " | ".join(fmt(t[k], s) for _, k, s in cols)
            lines.append(f"| {wl['path']} ({wl['tool']}) | {name} | {figures} |")

    def row(label: str, cell: Callable[[dict[str, Any], str], str]) -> str:
        return f"| {label} | " + " | ".join(cell(wl["ratios"], q) for wl in wls.values() for q in ("p50", "p99")) + " |"

    lines += [
        "",
        "| ratio | " + " | ".join(f"{wl['path']} {q}" for wl in wls.values() for q in ("p50", "p99")) + " |",
        "|---" * (1 + 2 * len(wls)) + "|",
        row(
            "Wicket added latency vs direct",
            lambda r, q: (
                f"{fmt(r[f'wicket_added_{q}_ms'], '+.3f', ' ms')} ({fmt(r[f'wicket_{q}_vs_direct'], prefix='x')})"
            ),
        ),
        row("floor added latency vs direct", lambda r, q: fmt(r[f"floor_added_{q}_ms"], "+.3f", " ms")),
        row("Wicket added / floor added", lambda r, q: fmt(r[f"wicket_added_over_floor_added_{q}"], prefix="x")),
        row("Wicket's own work (Wicket added - floor added)", lambda r, q: fmt(r[f"wicket_own_{q}_ms"], "+.3f", " ms")),
        "",
    ]
    for wl in wls.values():
        r, t = wl["ratios"], wl["targets"]
        floor_cpu = t["floor"]["proxy_cpu_us_per_call"] if "floor" in t else None
        lines += [
            f"- {wl['path']} ({wl['tool']}): Wicket throughput (c={concurrency}) "
            f"{fmt(r['wicket_throughput_vs_direct'], '.0%')} of direct, {fmt(r['wicket_throughput_vs_floor'], '.0%')} "
            f"of floor (floor: {fmt(r['floor_throughput_vs_direct'], '.0%')} of direct); Wicket CPU "
            f"{fmt(r['wicket_cpu_us_per_call'], '.0f', ' µs/call')}, {fmt(r['wicket_cpu_vs_floor_cpu'], prefix='x')} "
            f"the floor's {fmt(floor_cpu, '.0f', ' µs')} ({fmt(r['wicket_own_cpu_us_per_call'], '+.0f', ' µs')} "
            "of Wicket's own work)",
        ]
    s = summary["spot_over_fast"]
    lines.append(
        f"- Spot path over Fast path (Wicket-write added minus Wicket-read added): p50 "
        f"{fmt(s['added_p50_ms'], '+.3f', ' ms')}, p99 {fmt(s['added_p99_ms'], '+.3f', ' ms')}; Wicket CPU "
        f"{fmt(s['wicket_cpu_us_per_call'], '+.0f', ' µs/call')} at c={concurrency} "
        f"({fmt(s['wicket_cpu_us_per_call_c1'], '+.0f')} at c=1; the floor's own write-minus-read: "
        f"{fmt(s['floor_cpu_us_per_call'], '+.0f', ' µs')})"
    )
    if "redis" in s:
        sr = s["redis"]
        lines.append(
            f"- Spot path over Fast path on the Redis store: p50 {fmt(sr['added_p50_ms'], '+.3f', ' ms')}, "
            f"p99 {fmt(sr['added_p99_ms'], '+.3f', ' ms')}; Wicket CPU "
            f"{fmt(sr['wicket_cpu_us_per_call'], '+.0f', ' µs/call')} at c={concurrency} "
            f"({fmt(sr['wicket_cpu_us_per_call_c1'], '+.0f')} at c=1); Redis server CPU "
            f"{fmt(sr['redis_server_cpu_us_per_call'], '+.0f', ' µs/call')}"
        )
    if any("redis_vs_memory" in wl for wl in wls.values()):
        lines += ["", render_stores(wls, concurrency)]
    return "\n".join(lines)


# Issue 19's goals: Wicket's own CPU per call (its CPU minus the floor's, same run), its added latency
# over the floor, and the Redis store's cost over the memory store.
OWN_CPU_GOAL_US = {"read": 150.0, "write": 200.0}
# The floor's CPU per call on the machine issue 19 was measured on (c=1, c=32): its µs goals are these
# ratios of Wicket's CPU to the floor's there (read: "about x1.4 at C=1 and x2.1 at C=32").
ISSUE_FLOOR_CPU_US = {"c1": 375.0, "cN": 133.0}
ADDED_P50_GOAL_MS = 0.25
REDIS_CPU_GOAL_US = 100.0
REDIS_P50_GOAL_MS = 0.3
REDIS_THROUGHPUT_GOAL = 0.85


def goals(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal with its figure from this run and whether it holds (None: not measured in this run)."""
    out: list[dict[str, Any]] = []

    def goal(name: str, value: float | None, limit: float, unit: str, at_most: bool = True, note: str = "") -> None:
        holds = None if value is None else (value <= limit if at_most else value >= limit)
        out.append({"goal": name, "value": value, "limit": limit, "unit": unit, "at_most": at_most, "holds": holds,
                    "note": note})  # fmt: skip

    for key, wl in summary["workloads"].items():
        t, path = wl["targets"], wl["path"]
        if "floor" not in t:
            continue
        w, f = t["wicket"], t["floor"]
        for suffix, label in (("_c1", "c=1"), ("", f"c={summary.get('concurrency', 'N')}")):
            own = sub(w[f"proxy_cpu_us_per_call{suffix}"], f[f"proxy_cpu_us_per_call{suffix}"])
            ratio = div(w[f"proxy_cpu_us_per_call{suffix}"], f[f"proxy_cpu_us_per_call{suffix}"])
            floor_cpu = f[f"proxy_cpu_us_per_call{suffix}"]
            goal(f"{path}: Wicket's own CPU per call, {label}", own, OWN_CPU_GOAL_US[key], "µs",
                 note=f"Wicket x{fmt(ratio)} the floor's {fmt(floor_cpu, '.0f')} µs")  # fmt: skip
            issue_floor = ISSUE_FLOOR_CPU_US["c1" if suffix else "cN"]
            goal(f"{path}: Wicket's CPU / the floor's, {label}", ratio, 1 + OWN_CPU_GOAL_US[key] / issue_floor, "x",
                 note="the same goal as a ratio")  # fmt: skip
        goal(f"{path}: added p50 latency over the floor, c=1", w["p50_ms"] - f["p50_ms"], ADDED_P50_GOAL_MS, "ms")
        r = wl.get("redis_vs_memory")
        if r is not None:
            goal(f"{path}: Redis - memory, Wicket CPU per call, c={summary.get('concurrency', 'N')}",
                 r["wicket_cpu_redis_minus_memory_us"], REDIS_CPU_GOAL_US, "µs",
                 note=f"c=1: {fmt(r['wicket_cpu_redis_minus_memory_us_c1'], '+.0f')} µs")  # fmt: skip
            goal(f"{path}: Redis - memory, p50 c=1", r["redis_minus_memory_p50_ms"], REDIS_P50_GOAL_MS, "ms")
            goal(f"{path}: throughput Redis / memory", r["redis_throughput_vs_memory"], REDIS_THROUGHPUT_GOAL, "",
                 at_most=False)  # fmt: skip
    return out


def render_goals(rows: list[dict[str, Any]]) -> str:
    lines = ["| goal | this run | target | holds |", "|---|---|---|---|"]
    for g in rows:
        value, limit = _goal_value(g, g["value"]), _goal_limit(g)
        op = "≤" if g["at_most"] else "≥"
        holds = {True: "yes", False: "**no**", None: "n/a"}[g["holds"]]
        note = f" ({g['note']})" if g["note"] else ""
        lines.append(f"| {g['goal']} | {value}{note} | {op} {limit} | {holds} |")
    counted = [g for g in rows if g["unit"] != "x"]
    held = sum(g["holds"] is True for g in counted)
    lines.append(f"\n{held} of {len(counted)} goals hold in this run.")
    ratios = [g for g in rows if g["unit"] == "x"]
    if ratios:
        lines.append(
            f"The CPU goals as ratios to the floor (x rows; issue 19's own equivalents, on a machine whose floor "
            f"costs {ISSUE_FLOOR_CPU_US['c1']:.0f} µs at c=1 and {ISSUE_FLOOR_CPU_US['cN']:.0f} µs at c=32, so they "
            f"carry over to one whose floor costs more or less): {sum(g['holds'] is True for g in ratios)} of "
            f"{len(ratios)} hold."
        )
    return "\n".join(lines)


def repeated(goal_rows: Sequence[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each goal over several runs: every run's figure, their median, whether the median holds and
    in how many runs the goal held. A machine's neighbours move one run's figures by more than
    some goals' margins; the median of a few runs does not flip with one of them."""
    out = []
    for rows in zip(*goal_rows, strict=True):
        first = rows[0]
        values = [g["value"] for g in rows]
        measured = [v for v in values if v is not None]
        middle = statistics.median(measured) if measured else None
        holds = None
        if middle is not None:
            holds = middle <= first["limit"] if first["at_most"] else middle >= first["limit"]
        held = sum(g["holds"] is True for g in rows)
        out.append({**first, "values": values, "value": middle, "holds": holds, "held_in": held, "note": ""})
    return out


def render_repeated(rows: Sequence[dict[str, Any]], runs: int) -> str:
    """The table of :func:`repeated`'s rows."""
    head = " | ".join(f"run {n + 1}" for n in range(runs))
    lines = [f"| goal | {head} | median | target | median holds | held in |", "|---" * (runs + 5) + "|"]
    for g in rows:
        shown = [_goal_value(g, v) for v in g["values"]]
        op = "≤" if g["at_most"] else "≥"
        holds = {True: "yes", False: "**no**", None: "n/a"}[g["holds"]]
        lines.append(
            f"| {g['goal']} | {' | '.join(shown)} | {_goal_value(g, g['value'])} | {op} {_goal_limit(g)} | {holds} "
            f"| {g['held_in']} of {runs} |"
        )
    counted = [g for g in rows if g["unit"] != "x"]
    ratios = [g for g in rows if g["unit"] == "x"]
    summary = f"\nBy the median of {runs} runs, {sum(g['holds'] is True for g in counted)} of {len(counted)} goals hold"
    if ratios:
        summary += f"; the CPU goals as ratios to the floor: {sum(g['holds'] is True for g in ratios)} of {len(ratios)}"
    lines.append(summary + ".")
    return "\n".join(lines)


def _goal_value(goal: dict[str, Any], value: float | None) -> str:
    unit = goal["unit"]
    if unit == "x":
        return fmt(value, ".2f", prefix="x")
    if unit == "µs":
        return fmt(value, "+.0f", " µs")
    if unit == "ms":
        return fmt(value, "+.3f", " ms")
    return fmt(value, ".0%")


def _goal_limit(goal: dict[str, Any]) -> str:
    unit, limit = goal["unit"], goal["limit"]
    return {"x": f"x{limit:.2f}", "µs": f"{limit:.0f} µs", "ms": f"{limit:.2f} ms"}.get(unit, f"{limit:.0%}")


def render_essentials(summary: dict[str, Any], concurrency: int) -> str:
    """What the work no Wicket may drop costs (``--essentials``), next to Wicket's own CPU and the goal:
    the goal's room for everything else (identity, policy, guardians, screening, metrics)."""
    lines = [
        "The part no optimisation can remove (--essentials: the floor plus the request read, a decision record "
        "before the forward, an Ed25519 credential for the call, the answer read, an outcome record):",
        "",
        "| path, CPU per call over the floor | essentials | Wicket | Wicket - essentials | goal | room left by "
        "the essentials |",
        "|---|---|---|---|---|---|",
    ]
    for key, wl in summary["workloads"].items():
        t = wl["targets"]
        if "floor" not in t or ESSENTIALS not in t:
            continue
        for suffix, label in (("_c1", "c=1"), ("", f"c={concurrency}")):
            floor_cpu = t["floor"][f"proxy_cpu_us_per_call{suffix}"]
            essentials = sub(t[ESSENTIALS][f"proxy_cpu_us_per_call{suffix}"], floor_cpu)
            own = sub(t["wicket"][f"proxy_cpu_us_per_call{suffix}"], floor_cpu)
            room = sub(OWN_CPU_GOAL_US[key], essentials)
            lines.append(
                f"| {wl['path']}, {label} | {fmt(essentials, '+.0f', ' µs')} | {fmt(own, '+.0f', ' µs')} | "
                f"{fmt(sub(own, essentials), '+.0f', ' µs')} | {OWN_CPU_GOAL_US[key]:.0f} µs | "
                f"{fmt(room, '.0f', ' µs')} |"
            )
        p50 = sub(t[ESSENTIALS]["p50_ms"], t["floor"]["p50_ms"])
        lines.append(
            f"| {wl['path']}, added p50 c=1 | {fmt(p50, '+.3f', ' ms')} | "
            f"{fmt(sub(t['wicket']['p50_ms'], t['floor']['p50_ms']), '+.3f', ' ms')} | | {ADDED_P50_GOAL_MS:.2f} ms | "
            f"{fmt(sub(ADDED_P50_GOAL_MS, p50), '.3f', ' ms')} |"
        )
    return "\n".join(lines)


def render_stores(wls: dict[str, Any], concurrency: int) -> str:
    """Wicket(redis) against Wicket(memory), per workload."""
    paths = [wl for wl in wls.values() if "redis_vs_memory" in wl]
    n = concurrency

    def ms_vs(added: str, ratio: str) -> Callable[[dict[str, Any]], str]:
        return lambda r: f"{fmt(r[added], '+.3f', ' ms')} ({fmt(r[ratio], prefix='x')})"

    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("Wicket(memory) added p50 vs direct", ms_vs("memory_added_p50_ms", "memory_p50_vs_direct")),
        ("Wicket(redis) added p50 vs direct", ms_vs("redis_added_p50_ms", "redis_p50_vs_direct")),
        ("Wicket(memory) added p99 vs direct", ms_vs("memory_added_p99_ms", "memory_p99_vs_direct")),
        ("Wicket(redis) added p99 vs direct", ms_vs("redis_added_p99_ms", "redis_p99_vs_direct")),
        ("**redis - memory, p50 c=1**", ms_vs("redis_minus_memory_p50_ms", "redis_p50_vs_memory")),
        ("**redis - memory, p99 c=1**", ms_vs("redis_minus_memory_p99_ms", "redis_p99_vs_memory")),
        (f"redis - memory, p50 c={n}", lambda r: fmt(r["redis_minus_memory_p50_ms_cN"], "+.2f", " ms")),
        (
            f"**throughput c={n}: redis / memory**",
            lambda r: (
                f"{fmt(r['redis_throughput_vs_memory'], '.0%')} (of direct: redis "
                f"{fmt(r['redis_throughput_vs_direct'], '.0%')}, memory {fmt(r['memory_throughput_vs_direct'], '.0%')})"
            ),
        ),
        (
            f"Wicket CPU µs/call c={n}: memory → redis",
            lambda r: (
                f"{fmt(r['wicket_cpu_memory_us_per_call'], '.0f')} → {fmt(r['wicket_cpu_redis_us_per_call'], '.0f')} "
                f"(x{fmt(r['wicket_cpu_redis_vs_memory'])})"
            ),
        ),
        (
            f"**Wicket CPU redis - memory, c={n}** (c=1)",
            lambda r: (
                f"{fmt(r['wicket_cpu_redis_minus_memory_us'], '+.0f', ' µs')} "
                f"({fmt(r['wicket_cpu_redis_minus_memory_us_c1'], '+.0f', ' µs')})"
            ),
        ),
        (
            f"**Redis server CPU µs/call, c={n}** (c=1)",
            lambda r: (
                f"{fmt(r['redis_server_cpu_us_per_call'], '.0f')} ({fmt(r['redis_server_cpu_us_per_call_c1'], '.0f')})"
            ),
        ),
        (
            f"Redis server CPU while Wicket(memory) ran, c={n} (c=1)",
            lambda r: (
                f"{fmt(r['redis_server_idle_cpu_us_per_call'], '.0f')} "
                f"({fmt(r['redis_server_idle_cpu_us_per_call_c1'], '.0f')})"
            ),
        ),
        (
            f"Redis backend's total extra CPU (Wicket + server), c={n}",
            lambda r: fmt(r["total_cpu_redis_minus_memory_us"], "+.0f", " µs/call"),
        ),
    ]
    lines = [
        "| Wicket(redis) vs Wicket(memory) | " + " | ".join(f"{wl['path']} ({wl['tool']})" for wl in paths) + " |",
        "|---" * (1 + len(paths)) + "|",
    ]
    lines += [f"| {label} | " + " | ".join(cell(wl["redis_vs_memory"]) for wl in paths) + " |" for label, cell in rows]
    return "\n".join(lines)


def audit_summary(audit: Path) -> dict[str, Any]:
    """Count Wicket's audit records; every tool-call decision must be an allow by the expected tier."""
    records, decisions, escalations, spot_reasons = 0, Counter[str](), 0, Counter[str]()
    if audit.exists():
        with audit.open() as f:
            for line in f:
                records += 1
                event = json.loads(line)
                if event.get("event") != "decision":
                    continue
                decisions[f"{event.get('action')} {event.get('tier')} {event.get('decision')}"] += 1
                escalations += "escalated_from" in event
                if event.get("tier") == "spot":
                    risk = str(event.get("reason", "")).partition(";")[0]
                    spot_reasons[risk] += 1
    return {
        "records": records,
        "decisions": dict(decisions),
        "escalations": escalations,
        "spot_verdicts": dict(spot_reasons),
    }


def check_audit(summary: dict[str, Any]) -> str | None:
    """Why the audit log shows the run did not measure what it claims, or None."""
    wrong = {
        key: n
        for key, n in summary["decisions"].items()
        if not key.endswith(" allow")
        or (READ.tool in key and " fast " not in key)
        or (WRITE.tool in key and " spot " not in key)
    }
    if wrong:
        return f"unexpected decisions in Wicket's audit log: {wrong}"
    if summary["escalations"]:
        return f"{summary['escalations']} decisions were raised by anomaly escalation"
    if not any(WRITE.tool in key for key in summary["decisions"]):
        return f"no {WRITE.tool} decision in Wicket's audit log"
    return None


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "aiohttp": aiohttp.__version__,
    }


# --------------------------------------------------------------------------------------------
# Main


async def run_bench(args: argparse.Namespace, workdir: Path, procs: list[Proc]) -> dict[str, Any]:
    py = sys.executable
    deadline = time.monotonic() + args.startup_timeout
    up, fl = free_port(), free_port()
    bench_policy = workdir / "bench-policy.yaml"
    policy_text = BENCH_POLICY
    wicket_env = {"WICKET_ADMIN_TOKEN": secrets.token_urlsafe(32)}
    if args.hs256:  # minted credentials signed with a secret the upstream shares (it verifies none here)
        policy_text += HS256_POLICY.format(url=f"http://{HOST}:{up}/mcp")
        wicket_env[HS256_ENV] = secrets.token_hex(32)
    bench_policy.write_text(policy_text)
    upstream_argv = [py, "-m", "proxy.demo.server", "--host", HOST, "--port", str(up)]
    if not args.sse:
        upstream_argv.append("--json-response")
    procs.append(spawn("upstream", upstream_argv, workdir))
    floor_argv = [py, str(ROOT / "bench" / "floor.py"), "--upstream", f"http://{HOST}:{up}"]
    procs.append(spawn("floor", [*floor_argv, "--listen", f"{HOST}:{fl}", "--event-loop", args.floor_loop], workdir))
    es = free_port() if args.essentials else 0
    if args.essentials:  # on Wicket's loop: essentials - Wicket is then Wicket's logic alone
        essentials_argv = [*floor_argv, "--listen", f"{HOST}:{es}", "--essentials", str(workdir / ESSENTIALS_AUDIT)]
        essentials_argv += ["--event-loop", args.wicket_loop]
        procs.append(spawn(ESSENTIALS, essentials_argv, workdir))
    admin_token = wicket_env["WICKET_ADMIN_TOKEN"]
    store_url = {"memory": "memory"}
    if "redis" in args.stores:
        # A Redis of our own (its CPU is measured, and nothing else touches it), and the keys a shared
        # store requires. Both Wickets get the same keys so that they differ only in the store.
        rp = free_port()
        procs.append(spawn(REDIS_PROC, redis_server_argv(args.redis_server, rp, workdir), workdir))
        await wait_until("redis-server", [procs[-1]], functools.partial(probe_redis, rp), deadline)
        store_url["redis"] = f"redis://{HOST}:{rp}/0"
        signing_key = workdir / "signing-key.pem"
        write_signing_key(signing_key)
        wicket_env |= {"WICKET_SESSION_KEY": secrets.token_hex(32), "WICKET_SIGNING_KEY": str(signing_key)}
    ports: dict[str, tuple[int, int]] = {}  # wicket process -> (data port, admin port)
    grants: dict[str, SessionGrant] = {}
    for store in args.stores:
        name, wk, adm = WICKET_PROC[store], free_port(), free_port()
        wicket_argv = [
            py, "-m", "proxy", "run",
            "--upstream", f"http://{HOST}:{up}/mcp",
            "--policy", str(ROOT / "policies" / "demo.yaml"),
            "--policy", str(bench_policy),
            "--listen", f"{HOST}:{wk}",
            "--admin-listen", f"{HOST}:{adm}",
            "--store", store_url[store],
            "--audit-log", str(workdir / AUDIT_FILE[store]),
            "--event-loop", args.wicket_loop,
            *args.wicket_arg,
        ]  # fmt: skip
        procs.append(spawn(name, wicket_argv, workdir, wicket_env))
        ports[name] = (wk, adm)
        grants[name] = SessionGrant(f"http://{HOST}:{adm}", admin_token)
    by_name = {p.name: p for p in procs}

    targets: list[Target] = []
    for wl in WORKLOADS:
        targets.append(Target("direct", wl, f"http://{HOST}:{up}/mcp", None, args.sse))
        if wl is READ or not args.no_write_floor:
            targets.append(Target("floor", wl, f"http://{HOST}:{fl}/mcp", "floor", args.sse))
        if args.essentials:
            targets.append(Target(ESSENTIALS, wl, f"http://{HOST}:{es}/mcp", ESSENTIALS, args.sse))
        for name, (wk, _) in ports.items():
            grant = grants[name] if wl is WRITE else None
            targets.append(Target(name, wl, f"http://{HOST}:{wk}/mcp", name, args.sse, grant=grant))
    try:
        for name, (_, adm) in ports.items():
            probe = functools.partial(probe_readyz, f"http://{HOST}:{adm}/readyz")
            await wait_until(f"{name} /readyz", [by_name[name]], probe, deadline)
        for t in targets:
            proc = by_name[t.proxy or "upstream"]
            await wait_until(t.label, [proc], functools.partial(probe_call, t, args.concurrency), deadline)
        print(
            f"all {len(targets)} targets answer; warming up ({args.warmup} + {2 * args.warmup} calls each)", flush=True
        )

        bench = Bench(targets, {p.name: p.pid for p in procs}, args.concurrency)
        await bench.warm_up(args.warmup)
        t0 = time.perf_counter()
        await bench.measure(args.calls, args.throughput_calls, args.rounds)
        measured = time.perf_counter() - t0
        for p in procs:
            p.check_alive()
    finally:
        for t in targets:
            await t.close()

    return {
        "machine": machine(),
        "config": {
            "calls": args.calls,
            "throughput_calls": args.throughput_calls,
            "concurrency": args.concurrency,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "transport": ("legacy 2025-11-25 session, SSE responses" if args.sse else f"{MODERN} stateless, JSON")
            + ("; credentials minted with HS256" if args.hs256 else ""),
            "wicket_args": args.wicket_arg,
            "event_loops": {"wicket": args.wicket_loop, "essentials": args.wicket_loop, "floor": args.floor_loop},
            "stores": list(args.stores),
            "bench_policy": policy_text,
            "write_sessions": grants[WICKET_PROC["memory"]].issued,
            "write_sessions_by_wicket": {name: g.issued for name, g in grants.items()},
            "measured_seconds": measured,
        },
        **summarise(bench, targets),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark: direct vs bare pass-through proxy vs Wicket, for a read (Fast Guard only) "
        "and a write (Fast + Spot Guard)."
    )
    p.add_argument("--calls", type=int, default=600, help="sequential calls per target at c=1 (default 600)")
    p.add_argument("--concurrency", type=int, default=32, help="workers in the throughput phase (default 32)")
    p.add_argument(
        "--throughput-calls", type=int, default=2400, help="calls per target in the throughput phase (default 2400)"
    )
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds the calls are split into (default 4)")
    p.add_argument("--warmup", type=int, default=100, help="warm-up calls per target at c=1 (default 100; 2x at c=N)")
    p.add_argument("--no-write-floor", action="store_true", help="skip the floor for the write workload (faster)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--sse", action="store_true", help="legacy MCP session with SSE responses instead of JSON")
    p.add_argument(
        "--hs256",
        action="store_true",
        help="Wicket mints its upstream credentials with HS256 (credentials.alg) instead of its Ed25519 key",
    )
    p.add_argument(
        "--essentials",
        action="store_true",
        help="also measure the floor plus only the per-call work no Wicket may drop (audit records before and "
        "after, an Ed25519 credential, both JSON parses): the least Wicket's own CPU can be on this machine",
    )
    p.add_argument(
        "--wicket-arg", action="append", default=[], metavar="ARG", help="extra `wicket run` argument (repeatable)"
    )
    p.add_argument(
        "--event-loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="Wicket's event loop (wicket run --event-loop; the essentials run on the same one); default auto: "
        "uvloop where installed, as wicket run does",
    )
    p.add_argument(
        "--floor-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the floor's event loop: asyncio's own (default; the bare aiohttp proxy issue 19 measures against) or "
        "uvloop, to compare Wicket's own work on equal loops",
    )
    p.add_argument(
        "--stores",
        default="memory",
        help="state stores to run a Wicket on, comma-separated: memory (default) or memory,redis (a second Wicket "
        "on a redis-server subprocess, compared with the memory one)",
    )
    p.add_argument("--redis-server", default="redis-server", help="redis-server binary for --stores ...,redis")
    p.add_argument("--keep", action="store_true", help="keep the temp dir with logs and audit log")
    p.add_argument("--startup-timeout", type=float, default=60.0, help="seconds for all targets to become ready")
    p.add_argument("--max-seconds", type=float, default=300.0, help="hard limit for each run (default 300)")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure N times afresh (every process restarted) and end with each goal's median over the runs and "
        "how many runs it held in (default 1)",
    )
    args = p.parse_args(argv)
    stores = tuple(x.strip() for x in args.stores.split(",") if x.strip())
    if "memory" not in stores or not set(stores) <= set(STORES) or len(set(stores)) != len(stores):
        p.error("--stores is 'memory' or 'memory,redis' (the memory-store Wicket is the baseline)")
    args.stores = stores
    args.wicket_loop = args.event_loop
    if args.event_loop == "auto":
        args.wicket_loop = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    if "redis" in stores and shutil.which(args.redis_server) is None:
        p.error(f"--stores ...,redis needs a redis-server binary: {args.redis_server!r} not found")
    if args.essentials and args.sse:
        p.error("--essentials measures the stateless JSON transport only: drop --sse")
    if min(args.calls, args.throughput_calls, args.concurrency, args.rounds, args.repeat) < 1 or args.warmup < 0:
        p.error("--calls, --throughput-calls, --concurrency, --rounds and --repeat must be positive")
    if args.rounds > min(args.calls, args.throughput_calls):
        p.error("--rounds cannot exceed --calls or --throughput-calls")
    # Each phase of the write workload (with its re-warm) must fit in one Wicket session.
    phase = 2 * args.concurrency + math.ceil(max(args.calls, args.throughput_calls) / args.rounds)
    if phase > SESSION_CALLS or 2 * args.warmup > SESSION_CALLS:
        p.error(
            f"a write phase would make {max(phase, 2 * args.warmup)} calls in one Wicket session (at most "
            f"{SESSION_CALLS}, the anomaly min_calls of the bench policy): raise --rounds or lower the call counts"
        )
    return args


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops the children


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    results: list[dict[str, Any]] = []
    for n in range(args.repeat):
        if args.repeat > 1:
            print(f"\n=== run {n + 1} of {args.repeat} ===", flush=True)
        result = run_once(args)
        if result is None:
            return 1
        results.append(result)
    out = results[0]
    if args.repeat > 1:
        over = repeated([r["goals"] for r in results])
        print(f"\nGoals over {args.repeat} runs (each run measured afresh, every process restarted):\n")
        print(render_repeated(over, args.repeat))
        out = {"runs": results, "goals_over_runs": over}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0


def run_once(args: argparse.Namespace) -> dict[str, Any] | None:
    """One whole measurement, printed as it ends; None (the reason printed) for an invalid run."""
    procs: list[Proc] = []
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="wicket-bench-"))
    failure: str | None = None
    audits: dict[str, dict[str, Any]] = {}
    try:
        result = asyncio.run(asyncio.wait_for(run_bench(args, workdir, procs), args.max_seconds))
    except BenchError as exc:
        failure = str(exc)
    except TimeoutError:
        failure = f"still running after --max-seconds {args.max_seconds}"
    finally:
        stop_all(procs)
        if failure is None:  # read once the Wickets have exited and flushed
            audits = {WICKET_PROC[store]: audit_summary(workdir / AUDIT_FILE[store]) for store in args.stores}
            failure = next((f"{n}: {why}" for n, a in audits.items() if (why := check_audit(a)) is not None), None)
        if failure is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if failure is not None:
        print(f"bench: INVALID RUN: {failure}\n(logs and audit log kept in {workdir})", file=sys.stderr)
        return None
    result["audit"] = audits[WICKET_PROC["memory"]]
    if WICKET_PROC["redis"] in audits:
        result["audit_redis"] = audits[WICKET_PROC["redis"]]
    if args.keep:
        print(f"logs and audit log kept in {workdir}")
    m, c = result["machine"], result["config"]
    print(
        f"\n{m['date']}  nproc={m['nproc']}  python {m['python']}  {m['cpu']}\n"
        f"transport: {c['transport']};  c=1: {c['calls']} calls/target;  c={c['concurrency']}: "
        f"{c['throughput_calls']} calls/target;  {c['rounds']} interleaved rounds;  stores: {', '.join(c['stores'])}\n"
        f"event loops: Wicket {c['event_loops']['wicket']}, floor {c['event_loops']['floor']}"
        + (f", essentials {c['event_loops']['essentials']}" if args.essentials else "")
    )
    for name, audit in audits.items():
        decisions = ", ".join(f"{k}: {n}" for k, n in sorted(audit["decisions"].items()))
        spot = ", ".join(f"{k} ({n})" for k, n in audit["spot_verdicts"].items())
        print(
            f"{'Wicket' if name == WICKET_PROC['memory'] else name} audit: {audit['records']} records; decisions: "
            f"{decisions}; {c['write_sessions_by_wicket'][name]} read-write sessions\nSpot verdicts: {spot}"
        )
    print()
    print(render(result, args.concurrency))
    result["goals"] = goals({**result, "concurrency": args.concurrency})
    print("\nGoals (issue 19; own CPU = Wicket's CPU per call minus the floor's, same run):\n")
    print(render_goals(result["goals"]))
    if args.essentials:
        print("\n" + render_essentials(result, args.concurrency))
    for wl in result["workloads"].values():
        for name, t in wl["targets"].items():
            if t["warmup_failures"]:
                print(
                    f"\nWARNING: {wl['tool']} via {name}: {t['warmup_failures']} of {t['warmup_calls']} unmeasured "
                    "warm-up calls failed (tolerated; measured calls all succeeded). First ones:\n"
                    + "\n".join(f"    {x}" for x in t["warmup_failure_samples"])
                )
    print(f"\nmeasured in {c['measured_seconds']:.1f} s, {time.perf_counter() - started:.1f} s in all")
    return result


if __name__ == "__main__":
    sys.exit(main())
