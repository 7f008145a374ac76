"""The embedded default store: a dict in this process, nothing to install or run."""

from __future__ import annotations

import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from proxy.core.action import Activity
from proxy.state.base import Taken

HISTORY = 20
MAX_SESSIONS = 100_000
WINDOW_CAP = 10_000  # per-session bound on remembered calls; beyond it the oldest are forgotten


class MemoryStore:
    """In-process key-value store with lazy expiry.

    State lives only as long as the process, which is what a single sidecar with the
    embedded defaults wants. Expired keys are dropped when read and swept periodically on
    writes, so a long-running process does not accumulate dead sessions.
    """

    _SWEEP_EVERY = 1024

    def __init__(self) -> None:
        self._data: dict[str, tuple[bytes, float | None]] = {}
        self._writes = 0
        self._activity: OrderedDict[str, _Activity] = OrderedDict()
        self._revoked: set[tuple[str, str]] = set()
        self._limits: dict[tuple[str, str], deque[float]] = {}
        self._revocation_listeners: list[Callable[[str, str], None]] = []
        self._indexes: dict[str, dict[str, float]] = {}

    async def get(self, key: str, *, cached: bool = False) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and expires <= time.monotonic():
            del self._data[key]
            return None
        return value

    async def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self._data[key] = (value, None if ttl is None else time.monotonic() + ttl)
        self._writes += 1
        if self._writes % self._SWEEP_EVERY == 0:
            self._sweep()

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    async def note_call(self, session_id: str, action_key: str, effect: int, now: float, window: float) -> Activity:
        state = self._activity.get(session_id)
        if state is None:
            state = self._activity[session_id] = _Activity()
            if len(self._activity) > MAX_SESSIONS:
                self._activity.popitem(last=False)  # the least recently active session goes first
        else:
            self._activity.move_to_end(session_id)
        recent, counts, minute = state.recent, state.window_counts, state.minute
        horizon = now - window
        while recent and (recent[0][0] <= horizon or len(recent) >= WINDOW_CAP):
            counts[recent.popleft()[1]] -= 1
        while minute and (minute[0] <= now - 60.0 or len(minute) >= WINDOW_CAP):
            minute.popleft()
        before = Activity(
            calls=state.calls,
            denials=state.denials,
            writes=state.writes,
            window_calls=len(recent),
            minute_calls=len(minute),
            window_by_effect=(counts[0], counts[1], counts[2], counts[3]),
            repeat_denials=state.denied[action_key],
            history=tuple(state.history),
        )
        state.calls += 1
        recent.append((now, effect))
        counts[effect] += 1
        minute.append(now)
        return before

    async def note_verdict(self, session_id: str, action_key: str, entry: str, denied: bool, wrote: bool) -> None:
        state = self._activity.get(session_id)
        if state is None:
            return
        state.history.append(entry)
        if denied:
            state.denials += 1
            state.denied[action_key] += 1
        if wrote:
            state.writes += 1

    async def take(self, session_id: str, name: str, limit: int, window: float, now: float) -> Taken:
        hits = self._limits.setdefault((session_id, name), deque())
        while hits and hits[0] <= now - window:
            hits.popleft()
        if len(hits) >= limit:
            return Taken(False, max(hits[len(hits) - limit] + window - now, 0.0))
        hits.append(now)
        return Taken(True)

    async def revoke(self, kind: str, ident: str) -> None:
        self._revoked.add((kind, ident))
        await self.announce(kind, ident)

    async def announce(self, kind: str, ident: str, *, if_present: str | None = None) -> bool:
        if if_present is not None and await self.get(if_present) is None:
            return False
        for listener in self._revocation_listeners:
            listener(kind, ident)
        return True

    async def revocations(self) -> list[tuple[str, str]]:
        return sorted(self._revoked)

    async def subscribe_revocations(self, callback: Callable[[str, str], None]) -> None:
        self._revocation_listeners.append(callback)

    async def compare_and_set(self, key: str, expected: bytes | None, value: bytes, ttl: float | None = None) -> bool:
        # No await between the read and the write: atomic within this event loop.
        if await self.get(key) != expected:
            return False
        await self.put(key, value, ttl)
        return True

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [await self.get(key) for key in keys]

    async def index_add(self, index: str, member: str, score: float, limit: int) -> None:
        entries = self._indexes.setdefault(index, {})
        entries[member] = score
        while len(entries) > max(limit, 0):
            del entries[min(entries, key=entries.__getitem__)]

    async def index_members(self, index: str, limit: int) -> list[str]:
        entries = self._indexes.get(index, {})
        return sorted(entries, key=entries.__getitem__, reverse=True)[: max(limit, 0)]

    async def activity_counts(self, session_ids: Sequence[str]) -> list[tuple[int, int, int]]:
        out: list[tuple[int, int, int]] = []
        for session_id in session_ids:
            state = self._activity.get(session_id)
            out.append((0, 0, 0) if state is None else (state.calls, state.denials, state.writes))
        return out

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._data.clear()
        self._activity.clear()
        self._limits.clear()
        self._indexes.clear()

    def _sweep(self) -> None:
        now = time.monotonic()
        dead = [k for k, (_, exp) in self._data.items() if exp is not None and exp <= now]
        for key in dead:
            del self._data[key]


@dataclass
class _Activity:
    calls: int = 0
    denials: int = 0
    writes: int = 0
    recent: deque[tuple[float, int]] = field(default_factory=deque)  # (time, effect) inside the window
    window_counts: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    minute: deque[float] = field(default_factory=deque)
    denied: Counter[str] = field(default_factory=Counter)
    history: deque[str] = field(default_factory=lambda: deque(maxlen=HISTORY))
