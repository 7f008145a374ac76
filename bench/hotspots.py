"""Where Wicket's own CPU goes: one Wicket under cProfile, driven like ``bench/run.py`` drives it.

Starts the demo MCP server and one Wicket (``python -m cProfile -m proxy run``, the bench policy,
the memory or a private Redis store), makes ``--calls`` calls of one workload at ``--concurrency``,
profiling only while those calls run (``bench/profiled_wicket.py``), and prints the top functions by their own time and
by cumulative time, per call. cProfile slows Python code down (roughly x1.5-2 here), so read the
figures as shares, never as Wicket's real cost: ``bench/run.py`` measures that.

``--stages`` times a few of Wicket's stages instead (``bench/staged_wicket.py``: the checker, the
credential, the audit records, the answer screen...) in the CPU time of their own coroutine steps:
real µs per call, about a microsecond of clock reads added per stage.

``--instructions`` counts the machine instructions the process runs per call instead
(``valgrind --tool=callgrind``, switched on only while the measured calls run): unlike any CPU
time on a shared machine the count repeats to within about 0.1%, so a change of 1% shows. It
counts instructions, not cycles (cache misses are not in it): a change that lowers the count
still wants a look in ``bench/run.py``. ``--floor`` and ``--floor --essentials`` count the floor
and the floor plus the essentials (``bench/floor.py``) the same way.

``--checkout DIR`` profiles another checkout's ``proxy`` package with this checkout's interpreter
(for example a ``git worktree`` of an older commit), so "before" and "after" come from one script.

Run: ``.venv/bin/python bench/hotspots.py [--workload read|write] [--store memory|redis] [--calls 4000] [--stages]``
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import os
import pstats
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from run import (
    BENCH_POLICY,
    HOST,
    READ,
    ROOT,
    WRITE,
    BenchError,
    Proc,
    SessionGrant,
    Target,
    cpu_seconds,
    free_port,
    probe_call,
    probe_readyz,
    probe_redis,
    redis_server_argv,
    spawn,
    stop_all,
    wait_until,
    write_signing_key,
)

WORKLOADS = {"read": READ, "write": WRITE}
CALLGRIND = ("valgrind", "--tool=callgrind", "--instr-atstart=no")  # --instructions: counting starts switched off
SESSION_CALLS = 800  # write calls per read-write session, below the bench policy's anomaly min_calls


async def drive(
    args: argparse.Namespace, checkout: Path, workdir: Path, procs: list[Proc], pstats_file: Path
) -> tuple[int, float]:
    """Start everything, make the calls; returns (calls, Wicket CPU seconds while they ran)."""
    py = sys.executable
    env = {"PYTHONPATH": str(checkout), "WICKET_ADMIN_TOKEN": secrets.token_urlsafe(32)}
    deadline = time.monotonic() + (300 if args.instructions else 60)  # start-up under valgrind is slow
    up, wk, adm = free_port(), free_port(), free_port()
    policy = workdir / "bench-policy.yaml"
    policy.write_text(BENCH_POLICY)
    procs.append(
        spawn(
            "upstream",
            [py, "-m", "proxy.demo.server", "--host", HOST, "--port", str(up), "--json-response"],
            workdir,
            env,
            cwd=checkout,
        )
    )
    store = "memory"
    if args.store == "redis":
        rp = free_port()
        procs.append(spawn("redis", redis_server_argv(args.redis_server, rp, workdir), workdir))
        await wait_until("redis-server", [procs[-1]], functools.partial(probe_redis, rp), deadline)
        store = f"redis://{HOST}:{rp}/0"
        key = workdir / "signing-key.pem"
        write_signing_key(key)
        env |= {"WICKET_SESSION_KEY": secrets.token_hex(32), "WICKET_SIGNING_KEY": str(key)}
    launcher = "staged_wicket.py" if args.stages else "profiled_wicket.py"
    # Under callgrind the process itself runs (instrumented only from the measured calls on);
    # otherwise a launcher that profiles or times it between SIGUSR1 and SIGUSR2.
    if args.instructions:
        head = [*CALLGRIND, f"--callgrind-out-file={pstats_file}", py]
        wicket_head = [*head, "-m", "proxy"]
    else:
        head = wicket_head = [py, str(ROOT / "bench" / launcher), str(pstats_file)]
    argv = [
        *wicket_head, "run",
        "--upstream", f"http://{HOST}:{up}/mcp",
        "--policy", str(checkout / "policies" / "demo.yaml"), "--policy", str(policy),
        "--listen", f"{HOST}:{wk}", "--admin-listen", f"{HOST}:{adm}",
        "--store", store, "--audit-log", str(workdir / "audit.jsonl"),
    ]  # fmt: skip
    workload = WORKLOADS[args.workload]
    if args.floor:  # the same profile of the bare pass-through proxy (bench/floor.py), for comparison
        argv = [
            *head,
            str(ROOT / "bench" / "floor.py"),
            "--listen",
            f"{HOST}:{wk}",
            "--upstream",
            f"http://{HOST}:{up}",
        ]
        if args.essentials:
            argv += ["--essentials", str(workdir / "audit-essentials.jsonl")]
        argv += ["--event-loop", args.event_loop or ("uvloop" if args.essentials else "asyncio")]
    elif args.event_loop:
        argv += ["--event-loop", args.event_loop]
    wicket = spawn("floor" if args.floor else "wicket", argv, workdir, env, cwd=checkout)
    procs.append(wicket)
    grant = None
    if workload is WRITE and not args.floor:
        grant = SessionGrant(f"http://{HOST}:{adm}", env["WICKET_ADMIN_TOKEN"])
    target = Target("wicket", workload, f"http://{HOST}:{wk}/mcp", "wicket", False, grant=grant)
    try:
        if not args.floor:
            await wait_until(
                "wicket /readyz", [wicket], functools.partial(probe_readyz, f"http://{HOST}:{adm}/readyz"), deadline
            )
        await wait_until("a first call", [wicket], functools.partial(probe_call, target, args.concurrency), deadline)
        ids = itertools.count(1)

        async def batch(calls: int) -> None:
            queue = iter(range(calls))

            async def worker() -> None:
                for _ in queue:
                    await target.call(next(ids))

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))

        await batch(min(args.calls, 2 * args.concurrency + 100))  # warm-up: caches, pools, pins
        done, cpu = 0, 0.0
        await target.reserve(min(args.calls, SESSION_CALLS - 2 * args.concurrency))
        switch(args, wicket.pid, on=True)  # profile from here: the measured calls only
        while done < args.calls:
            n = min(args.calls - done, SESSION_CALLS - 2 * args.concurrency)
            await target.reserve(n)  # a fresh read-write session between batches, outside the CPU window
            before = cpu_seconds(wicket.pid)
            await batch(n)
            cpu += cpu_seconds(wicket.pid) - before
            done += n
        switch(args, wicket.pid, on=False)  # stop and write the statistics
        return done, cpu
    finally:
        await target.close()


def switch(args: argparse.Namespace, pid: int, *, on: bool) -> None:
    """Start or stop measuring: a signal to the launcher, or callgrind's own control (off also dumps)."""
    if not args.instructions:
        os.kill(pid, signal.SIGUSR1 if on else signal.SIGUSR2)
        return
    commands = [["-i", "on"]] if on else [["-i", "off"], ["-d"]]
    for command in commands:
        done = subprocess.run(["callgrind_control", *command, str(pid)], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise BenchError(f"callgrind_control {' '.join(command)} failed: {done.stderr.strip() or done.stdout}")


def instructions(out_file: Path) -> int:
    """The instructions callgrind counted while switched on, from its dumps (``--callgrind-out-file``
    and the numbered files ``callgrind_control -d`` adds)."""
    counted = 0
    for dump in out_file.parent.glob(out_file.name + "*"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                counted += int(line.split()[1])
    return counted


def report(pstats_file: Path, calls: int, top: int, checkout: Path) -> str:
    """The top functions by own time and by cumulative time, in µs per call (cProfile's clock)."""
    stats = pstats.Stats(str(pstats_file))
    rows = []
    for (path, line, name), (_, ncalls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = path.split("site-packages/")[-1].split("/lib/python3")[-1]
        for prefix in (f"{checkout}/", f"{ROOT}/", f"{Path(sys.prefix)}/"):
            where = where.removeprefix(prefix)
        rows.append((own, cumulative, ncalls, f"{where}:{line}({name})"))
    per_call = 1e6 / calls
    # Deterministic, unlike any time: how many Python and C functions ran per tool call.
    functions = sum(ncalls for _, _, ncalls, _ in rows) / calls
    out = [f"\nFunction calls per tool call (cProfile's count, every function and built-in): {functions:.0f}"]
    for title, key in (("own time", 0), ("cumulative time", 1)):
        out += [
            f"\nTop {top} by {title} (µs of CPU per call under cProfile; a coroutine counts per resumption):\n",
            "| own | cumulative | calls | function |",
            "|---|---|---|---|",
        ]
        ranked = [r for r in sorted(rows, key=lambda r: -r[key]) if key == 0 or "proxy/" in r[3]]
        for own, cumulative, ncalls, label in ranked[:top]:
            out.append(f"| {own * per_call:.1f} | {cumulative * per_call:.1f} | {ncalls / calls:.2f} | `{label}` |")
    return "\n".join(out)


def stages_report(stages_file: Path, calls: int) -> str:
    """Each timed stage's CPU per tool call, nested stages included, slowest first."""
    spent: dict[str, list[int]] = json.loads(stages_file.read_text(encoding="utf-8"))
    out = [
        "\nCPU per tool call by stage (its own coroutine steps, nested stages included):\n",
        "| µs per call | runs per call | stage |",
        "|---|---|---|",
    ]
    for stage, (ns, runs) in sorted(spent.items(), key=lambda item: -item[1][0]):
        if runs:
            out.append(f"| {ns / calls / 1000:.1f} | {runs / calls:.2f} | `{stage}` |")
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Profile one Wicket under cProfile while bench-style calls run through it.")
    p.add_argument(
        "--workload", choices=sorted(WORKLOADS), default="read", help="read (Fast only) or write (Fast + Spot)"
    )
    p.add_argument("--store", choices=("memory", "redis"), default="memory")
    p.add_argument("--calls", type=int, default=0, help="profiled calls (default 4000; 300 with --instructions)")
    p.add_argument("--concurrency", type=int, default=0, help="default 32; 1 with --instructions")
    p.add_argument("--top", type=int, default=25, help="functions listed per table (default 25)")
    p.add_argument("--checkout", default=str(ROOT), help="the checkout whose proxy package is profiled")
    p.add_argument("--redis-server", default="redis-server")
    p.add_argument("--pstats", metavar="FILE", help="keep cProfile's statistics in FILE (for snakeviz, pstats)")
    p.add_argument("--floor", action="store_true", help="profile the floor proxy (bench/floor.py) instead of Wicket")
    p.add_argument("--stages", action="store_true", help="time Wicket's stages (real CPU) instead of cProfile")
    p.add_argument(
        "--instructions",
        action="store_true",
        help="count machine instructions per call under callgrind (repeatable to ~0.1%%) instead of cProfile; "
        "--calls defaults to 300 and --concurrency to 1 (the counts repeat best in sequence)",
    )
    p.add_argument("--essentials", action="store_true", help="with --floor: the floor plus the essentials")
    p.add_argument(
        "--event-loop",
        choices=("uvloop", "asyncio"),
        help="the loop of the profiled process: for Wicket, passed as --event-loop (default: its own default, "
        "uvloop; a checkout older than the option has none); for --floor, asyncio's unless told, and for "
        "--floor --essentials Wicket's default, uvloop, as bench/run.py does",
    )
    args = p.parse_args(argv)
    if args.instructions:
        args.calls = args.calls or 300
        args.concurrency = args.concurrency or 1
        if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
            p.error("--instructions needs valgrind (callgrind and callgrind_control) on PATH")
    args.calls = args.calls or 4000
    args.concurrency = args.concurrency or 32
    if args.essentials and not args.floor:
        p.error("--essentials goes with --floor (Wicket does the essentials and the rest)")
    if sum((args.stages, args.instructions, bool(args.pstats))) > 1:
        p.error("--stages, --instructions and --pstats measure in different ways: choose one")
    if args.stages and args.floor:
        p.error("--stages times Wicket's own stages: not with --floor")
    if args.store == "redis" and shutil.which(args.redis_server) is None:
        p.error(f"--store redis needs a redis-server binary: {args.redis_server!r} not found")
    if args.calls < 1 or args.concurrency < 1 or 2 * args.concurrency >= SESSION_CALLS:
        p.error("--calls must be positive and --concurrency below 400")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="wicket-profile-"))
    pstats_file = (
        Path(args.pstats) if args.pstats else workdir / ("callgrind.out" if args.instructions else "wicket.pstats")
    )
    procs: list[Proc] = []
    try:
        calls, cpu = asyncio.run(drive(args, Path(args.checkout).resolve(), workdir, procs, pstats_file))
    except BenchError as exc:
        print(f"profile: {exc}\n(logs kept in {workdir})", file=sys.stderr)
        stop_all(procs)
        return 1
    if args.instructions:
        stop_all(procs, grace=30)  # valgrind writes its last dump on the way out
        counted = instructions(pstats_file)
        what = ("the floor + essentials" if args.essentials else "the floor") if args.floor else f"{args.store} store"
        print(
            f"{args.workload} workload, {what}, {calls} calls at c={args.concurrency}, checkout {args.checkout}: "
            f"{counted / calls:,.0f} instructions per call (callgrind)"
        )
        shutil.rmtree(workdir, ignore_errors=True)
        return 0 if counted else 1
    for _ in range(100):  # written by Wicket's signal handler, between two of its event-loop steps
        if pstats_file.is_file() and pstats_file.stat().st_size:
            break
        time.sleep(0.1)
    stop_all(procs)
    if not pstats_file.is_file():
        print(f"profile: cProfile wrote no statistics (logs kept in {workdir})", file=sys.stderr)
        return 1
    clock = "with its stages timed" if args.stages else "under cProfile"
    print(
        f"{args.workload} workload, {'the floor' if args.floor else args.store + ' store'}, {calls} calls at "
        f"c={args.concurrency}, checkout {args.checkout}; CPU {clock}: {cpu / calls * 1e6:.0f} µs per call"
    )
    if args.stages:
        print(stages_report(pstats_file, calls))
    else:
        print(report(pstats_file, calls, args.top, Path(args.checkout).resolve()))
    if not args.pstats:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
