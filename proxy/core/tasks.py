"""Which Wicket session created each task of an upstream (the MCP Tasks extension).

A task outlives the request that created it, and ``tasks/cancel`` / ``tasks/update`` act on
it later, possibly from another replica. Only the session that created a task may act on it
or read it, so the creating session is recorded, HMAC-signed like sessions and bound to its
store key, when the upstream's answer names a new task; a task Wicket never saw created has
no owner and is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from proxy.core.policy import normalise_url
from proxy.core.sessions import RecordSigner, SessionIntegrityError
from proxy.state.base import Store

TASK_TTL = 7 * 24 * 3600.0
"""Seconds an ownership record is kept (tasks are durable; the upstream expires them sooner)."""
MAX_TASK_ID = 512


def task_id_of(result: Mapping[str, Any]) -> str | None:
    """The id of a task a result creates or reports: ``{"task": {"taskId"}}`` (2025-11-25) or
    ``{"resultType": "task", "taskId"}`` (the 2026-07-28 extension)."""
    task = result.get("task")
    found = task.get("taskId") if isinstance(task, Mapping) else None
    if found is None and result.get("resultType") == "task":
        found = result.get("taskId")
    return found if isinstance(found, str) and 0 < len(found) <= MAX_TASK_ID else None


class TaskOwners:
    """Signed ``task -> session`` records in the shared store."""

    def __init__(self, store: Store, signer: RecordSigner, *, ttl: float = TASK_TTL) -> None:
        self._store = store
        self._signer = signer
        self._ttl = ttl

    @staticmethod
    def _key(upstream: str, task_id: str) -> str:
        digest = hashlib.sha256(f"{normalise_url(upstream)}\n{task_id}".encode("utf-8", "surrogatepass")).hexdigest()
        return f"wicket:task:{digest[:40]}"

    async def record(self, upstream: str, task_id: str, session_id: str) -> None:
        """First writer wins: an upstream naming an existing task again never hands it to another session."""
        key = self._key(upstream, task_id)
        await self._store.compare_and_set(key, None, self._signer.encode(key, {"session_id": session_id}), self._ttl)

    async def owner(self, upstream: str, task_id: str) -> str | None:
        """The creating session, or None when unknown or when the record fails its integrity check."""
        key = self._key(upstream, task_id)
        return self._owner_of(key, await self._store.get(key))

    async def owned(self, upstream: str, task_ids: list[str], session_id: str) -> set[str]:
        """Which of ``task_ids`` ``session_id`` created (one store round trip)."""
        keys = [self._key(upstream, task_id) for task_id in task_ids]
        raws = await self._store.get_many(keys) if keys else []
        return {
            task_id
            for task_id, key, raw in zip(task_ids, keys, raws, strict=True)
            if self._owner_of(key, raw) == session_id
        }

    def _owner_of(self, key: str, raw: bytes | None) -> str | None:
        if raw is None:
            return None
        try:
            body = self._signer.decode(key, raw)
        except SessionIntegrityError:
            return None
        owner = body.get("session_id") if isinstance(body, dict) else None
        return owner if isinstance(owner, str) else None
