"""``python bench/staged_wicket.py STAGES_FILE run ...``: ``wicket run ...`` with its stages timed.

cProfile times every function and inflates small, often-called ones several times over, so its
figures are shares at best. This times a handful of Wicket's stages only (the checker, the
credential, the two audit records, the answer screen...), in CPU time of the thread that runs
them, each coroutine step by itself: time spent in other requests' tasks between two steps is
not counted, so a stage's figure is its own CPU per call, nested stages included. Each timed
stage adds two clock reads per step (about a microsecond); the figures are otherwise real.

SIGUSR1 starts from zero, SIGUSR2 writes ``{stage: [ns, calls]}`` as JSON to STAGES_FILE
(``bench/hotspots.py --stages`` drives it).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import runpy
import signal
import sys
import time
from collections.abc import Callable, Generator
from typing import Any

# (module, attribute path): the stages timed, outermost first. A stage missing from the profiled
# checkout (an older commit) is skipped, so before/after tables can be made with --checkout.
STAGES: tuple[tuple[str, str], ...] = (
    ("proxy.adapters.mcp", "McpProxy._post"),
    ("proxy.adapters.mcp", "McpProxy._post_message"),
    ("proxy.adapters.mcp", "McpProxy._session"),
    ("proxy.adapters.mcp", "McpProxy._forward"),
    ("proxy.adapters.mcp", "McpProxy._credential"),
    ("proxy.adapters.mcp", "McpProxy._relay"),
    ("proxy.adapters.mcp", "McpProxy._screen_body"),
    ("proxy.adapters.mcp", "parse_body"),
    ("proxy.adapters.mcp", "read_body"),
    ("proxy.adapters.mcp", "resolve_caller"),
    ("proxy.adapters.mcp", "forward_headers"),
    ("proxy.adapters.mcp", "send_upstream"),
    ("proxy.core.checker", "Checker.check"),
    ("proxy.core.checker", "Checker._check_call"),
    ("proxy.core.checker", "Checker._record"),
    ("proxy.core.checker", "Checker.outcome"),
    ("proxy.credentials.broker", "CredentialBroker._mint"),
    ("proxy.credentials.keys", "KeyRing.sign"),
    ("proxy.audit.sink", "FileAuditSink.append"),
    ("proxy.audit.chain", "HashChain.next"),
    ("proxy.state.redis", "RedisStore.note_call"),
    ("proxy.state.redis", "RedisStore.note_verdict"),
    ("proxy.state.memory", "MemoryStore.note_call"),
    ("proxy.state.memory", "MemoryStore.note_verdict"),
)

_clock = time.thread_time_ns
_spent: dict[str, list[int]] = {}  # stage -> [ns, calls]


class _Stepped:
    """Awaits a coroutine, adding the CPU time of each of its steps (not the waits) to ``tally``."""

    __slots__ = ("coro", "tally")

    def __init__(self, coro: Any, tally: list[int]) -> None:
        self.coro, self.tally = coro, tally

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, tally = self.coro, self.tally
        tally[1] += 1
        value: Any = None
        error: BaseException | None = None
        while True:
            started = _clock()
            try:
                step = coro.send(value) if error is None else coro.throw(error)
            except StopIteration as done:
                tally[0] += _clock() - started
                return done.value
            except BaseException:
                tally[0] += _clock() - started
                raise
            tally[0] += _clock() - started
            try:
                value, error = (yield step), None
            except BaseException as exc:  # a cancellation, say: handed to the coroutine as it would be
                value, error = None, exc


def _timed(fn: Callable[..., Any], tally: list[int]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def stepped(*args: Any, **kwargs: Any) -> Any:
            return await _Stepped(fn(*args, **kwargs), tally)

        return stepped

    @functools.wraps(fn)
    def plain(*args: Any, **kwargs: Any) -> Any:
        started = _clock()
        tally[1] += 1
        try:
            return fn(*args, **kwargs)
        finally:
            tally[0] += _clock() - started

    return plain


def install() -> None:
    """Wrap every stage the checkout has, where its callers look it up (module or class attribute)."""
    for module_name, path in STAGES:
        owner: Any = importlib.import_module(module_name)
        *parents, name = path.split(".")
        try:
            for parent in parents:
                owner = getattr(owner, parent)
            fn = getattr(owner, name)
        except AttributeError:
            continue
        setattr(owner, name, _timed(fn, _spent.setdefault(path, [0, 0])))


def _reset(_signum: int, _frame: object) -> None:
    for tally in _spent.values():
        tally[0] = tally[1] = 0


def _dump(stages_file: str) -> Callable[[int, object], None]:
    def dump(_signum: int, _frame: object) -> None:
        with open(stages_file, "w", encoding="utf-8") as out:
            json.dump(_spent, out)

    return dump


def main() -> None:
    stages_file = sys.argv[1]
    sys.argv = ["wicket", *sys.argv[2:]]
    install()
    signal.signal(signal.SIGUSR1, _reset)
    signal.signal(signal.SIGUSR2, _dump(stages_file))
    runpy.run_module("proxy", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
