"""Waiting in tests for something asynchronous to happen: one helper for every test module."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def eventually(check: Callable[[], bool | Awaitable[bool]], what: str, deadline: float = 20.0) -> None:
    """Poll ``check`` (plain or async) until it holds. The deadline only keeps a broken test from
    hanging: it is generous, and how long the wait took is never asserted (timings are bench/'s)."""
    end = time.monotonic() + deadline
    while True:
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.01)
