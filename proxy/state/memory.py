"""The embedded default store: a dict in this process, nothing to install or run."""

from __future__ import annotations

import time


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

    async def get(self, key: str) -> bytes | None:
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

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._data.clear()

    def _sweep(self) -> None:
        now = time.monotonic()
        dead = [k for k, (_, exp) in self._data.items() if exp is not None and exp <= now]
        for key in dead:
            del self._data[key]
