"""Accountability for one session: is the audit chain intact, and are this session's events in it?

``GET /v1/sessions/{id}/accountability`` runs this over the audit file (in a thread: it reads
the whole log). It verifies the chain with :func:`proxy.audit.chain.verify_lines`, finds the
session's events on the way, and compares the file with what this Wicket remembers writing,
which catches records removed from the end (the one change the chain alone cannot show).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from proxy.audit.chain import verify_lines


@dataclass
class SessionAudit:
    """What the file says about one session. ``verified_count``/``verified_head`` describe the valid prefix."""

    chain_valid: bool
    verified_count: int
    verified_head: str
    session_events: int
    session_chain_valid: bool
    problems: list[str] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    """The session's latest decisions (at most MAX_CALLS): action, verdict and the delegation chain behind it."""
    calls_omitted: int = 0
    """Earlier decisions of the session not listed in ``calls`` (never silently dropped)."""


MAX_CALLS = 200
_CALL_FIELDS = ("seq", "ts", "decision_id", "action", "effect", "decision", "tier", "delegation")


def _record_of(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def _hash_of(line: bytes) -> Any:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return record.get("hash") if isinstance(record, dict) else None


def inspect_session(path: str | Path, session_id: str, *, written_count: int, written_head: str) -> SessionAudit:
    """Verify the log at ``path`` and this session's place in it.

    ``written_count``/``written_head`` are the sink's own chain position taken just before the
    call: records beyond it may still be arriving (a last line without its newline is one
    being written, and is ignored), records short of it were removed.
    """
    needle = json.dumps(session_id).encode()
    session_lines: list[int] = []
    calls: deque[dict[str, Any]] = deque(maxlen=MAX_CALLS)
    decisions = 0
    seen = 0
    head_at_written: Any = None

    def tap(handle: IO[bytes]) -> Iterator[bytes]:
        nonlocal seen, head_at_written, decisions
        for number, line in enumerate(handle, start=1):
            if number > written_count and not line.endswith(b"\n"):
                return  # appended after we looked, and not complete yet
            seen = number
            record = _record_of(line) if needle in line else None
            if record is not None and record.get("session_id") == session_id:
                session_lines.append(number)
                if record.get("event") == "decision":
                    decisions += 1
                    calls.append({k: record[k] for k in _CALL_FIELDS if k in record})
            if number == written_count:
                head_at_written = _hash_of(line)
            yield line

    problems: list[str] = []
    try:
        with open(path, "rb") as handle:
            lines = tap(handle)
            result = verify_lines(lines)
            for _ in lines:  # keep counting the session's events past a break
                pass
    except FileNotFoundError:
        return SessionAudit(False, 0, "", 0, False, [f"the audit log {path} does not exist"])
    if not result.ok and result.reason:
        problems.append(result.reason)
    truncated = seen < written_count
    if truncated:
        problems.append(
            f"the log holds {seen} records but this Wicket wrote {written_count}: records were removed from the end"
        )
    elif written_count and head_at_written != written_head:
        problems.append(f"record {written_count} is not the one this Wicket wrote there (the log was rewritten)")
    broken_at = result.broken_at if not result.ok else None
    session_valid = not truncated and (broken_at is None or all(n < broken_at for n in session_lines))
    if written_count and head_at_written != written_head and not truncated:
        session_valid = False
    return SessionAudit(
        result.ok,
        result.count,
        result.head,
        len(session_lines),
        session_valid,
        problems,
        calls=list(calls),
        calls_omitted=decisions - len(calls),
    )
