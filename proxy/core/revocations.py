"""Revoked agents, sessions and tokens, held in memory so the check costs a set lookup.

The store persists revocations and fans them out (pub/sub on Redis); each replica keeps
this list current from that feed plus a periodic full resync for missed messages.
"""

from __future__ import annotations

from collections.abc import Iterable

KINDS = ("agent", "session", "token")


class RevocationList:
    def __init__(self) -> None:
        self._items: dict[str, set[str]] = {kind: set() for kind in KINDS}

    def add(self, kind: str, ident: str) -> None:
        if kind in self._items:
            self._items[kind].add(ident)

    def replace(self, items: Iterable[tuple[str, str]]) -> None:
        fresh: dict[str, set[str]] = {kind: set() for kind in KINDS}
        for kind, ident in items:
            if kind in fresh:
                fresh[kind].add(ident)
        self._items = fresh

    def reason(self, agent_id: str, session_id: str | None, token_id: str | None) -> str | None:
        """Why this caller is refused, or None."""
        if agent_id in self._items["agent"]:
            return f"agent '{agent_id}' has been revoked"
        if session_id is not None and session_id in self._items["session"]:
            return "this session has been revoked"
        if token_id is not None and token_id in self._items["token"]:
            return "this token has been revoked"
        return None

    def __len__(self) -> int:
        return sum(len(v) for v in self._items.values())
