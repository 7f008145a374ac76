"""The one interface Wicket's middle layer uses for shared state.

Keeping it to a handful of byte-oriented calls lets the in-memory default and a
networked backend (Redis) be swapped without the checker or sessions noticing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from proxy.core.action import Activity


class StoreUnavailable(Exception):
    """The backing store could not be reached; callers fail closed."""


@dataclass(frozen=True, slots=True)
class Taken:
    """What one ``take`` decided: truthy when the hit was within the limit (and counted);
    when refused, ``retry_after`` is the seconds until the oldest hit leaves the window."""

    allowed: bool
    retry_after: float = 0.0

    def __bool__(self) -> bool:
        return self.allowed


class Store(Protocol):
    """Async key-value storage with per-key expiry."""

    async def get(self, key: str, *, cached: bool = False) -> bytes | None:
        """The value of ``key``. ``cached``: the caller checks the record's own expiry, so a store may
        serve it from a process-local copy it drops whenever the key changes (Redis: ``_ReadCache``);
        a value can then outlive its TTL until Redis expires the key."""

    async def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value``; ``ttl`` is seconds until the key disappears (``None``: never)."""

    async def delete(self, key: str) -> None: ...

    async def note_call(self, session_id: str, action_key: str, effect: int, now: float, window: float) -> Activity:
        """Count one call atomically and return the session's activity *before* it.

        ``effect`` is the Effect's integer value; ``window`` the Spot window in seconds.
        This is the one store round trip on the hot path of a tool call.
        """

    async def note_verdict(self, session_id: str, action_key: str, entry: str, denied: bool, wrote: bool) -> None:
        """Record the verdict: the history entry, the denial counters when ``denied``, and the write
        counter when ``wrote`` (a write the agent made on its own: an approval request, or a call a
        human approved, is not one)."""

    async def take(self, session_id: str, name: str, limit: int, window: float, now: float) -> Taken:
        """One hit on the sliding-window limit ``name`` of ``session_id`` (a session, or any other
        counter scope such as an agent): within ``limit`` hits per ``window`` seconds it is counted
        and the result is truthy; else nothing is counted and it says when to retry. Atomic
        across replicas (the one rate-limit mechanism: sampling guard and policy ``limits``)."""

    async def revoke(self, kind: str, ident: str) -> None:
        """Persist a revocation and announce it to every replica (``subscribe_revocations``)."""

    async def announce(self, kind: str, ident: str, *, if_present: str | None = None) -> bool:
        """Announce a revocation without persisting it: replicas enforce it at once, while the
        signed list and the persisted set (``revoke``) are written behind it. With ``if_present``,
        only if that key exists, checked and announced in one step; says whether it announced."""

    async def revocations(self) -> list[tuple[str, str]]:
        """Every persisted revocation, for start-up and the periodic resync."""

    async def subscribe_revocations(self, callback: Callable[[str, str], None]) -> None:
        """Call ``callback(kind, ident)`` for each revocation announced from now on, until closed;
        persisted ones may come again (a feed that reconnects delivers what it may have missed)."""

    async def compare_and_set(self, key: str, expected: bytes | None, value: bytes, ttl: float | None = None) -> bool:
        """Atomically store ``value`` if ``key`` holds exactly ``expected`` (``None``: if it is absent).

        True if written. Of several replicas racing to change one record, exactly one wins
        (an approval decided twice at once, a shared elevation updated concurrently).
        """

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """``get`` for several keys at once, in order (operator listings, never the hot path)."""

    async def index_add(self, index: str, member: str, score: float, limit: int) -> None:
        """Put ``member`` in the bounded index ``index`` at ``score``; only the ``limit`` highest stay."""

    async def index_members(self, index: str, limit: int) -> list[str]:
        """Up to ``limit`` members of ``index``, highest score (newest) first."""

    async def activity_counts(self, session_ids: Sequence[str]) -> list[tuple[int, int, int]]:
        """(calls, denials, writes) of each session as ``note_call`` counted them; counts nothing itself."""

    async def ping(self) -> None:
        """Raise StoreUnavailable when the store cannot serve requests (for /readyz)."""

    async def close(self) -> None: ...
