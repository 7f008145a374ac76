"""A per-tier circuit breaker: stop waiting on a tier that keeps failing.

After ``failures`` consecutive failures the breaker opens and the tier counts as
unavailable without being called (SPEC §7 then decides: fall back or fail closed). After
``cooldown`` seconds one trial call is let through; its result closes or re-opens it.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    __slots__ = ("_clock", "_failures", "_open_until", "_trial", "cooldown", "threshold")

    def __init__(self, threshold: int = 5, cooldown: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0
        self._trial = False

    @property
    def is_open(self) -> bool:
        return self._failures >= self.threshold and self._clock() < self._open_until

    def allow(self) -> bool:
        """Whether to call the tier now. In the half-open state only one trial goes through."""
        if self._failures < self.threshold:
            return True
        if self._clock() < self._open_until or self._trial:
            return False
        self._trial = True
        return True

    def success(self) -> None:
        self._failures = 0
        self._trial = False

    def failure(self) -> None:
        self._failures += 1
        self._trial = False
        if self._failures >= self.threshold:
            self._open_until = self._clock() + self.cooldown
