"""The audit hash chain: sealing events and verifying a log (SPEC section 5).

Every event carries ``seq`` (1-based), ``ts`` (RFC 3339 UTC, milliseconds), ``prev`` (the previous
event's ``hash``, or :data:`GENESIS` for the first) and ``hash``: the hex SHA-256 of the canonical JSON
of the event without ``hash``. Canonical JSON is
``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")``, and each
line of the log is the canonical JSON of the full event followed by ``"\\n"``.

Because each record names the hash of the one before it, altering, removing, reordering or inserting a
record breaks the chain at (or right after) that record, and :func:`verify_lines` names the first
broken line. Removing records from the *end* of the log, or rewriting it from some record on and
re-hashing the rest, is not detectable from the file alone: :mod:`proxy.audit.checkpoint` signs the
head periodically so that it is.

This module is pure apart from :func:`verify_file`, which streams a file line by line.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "GENESIS",
    "AuditCorrupt",
    "HashChain",
    "VerifyResult",
    "canonical",
    "fast_json",
    "fast_sorted_json",
    "now_rfc3339",
    "seal",
    "verify_file",
    "verify_lines",
]

GENESIS: str = "0" * 64
"""The ``prev`` of the first record of a log."""

RESERVED: frozenset[str] = frozenset({"seq", "ts", "prev", "hash"})
"""Keys the chain sets itself; callers may not supply them."""

_HEX64 = re.compile(r"[0-9a-f]{64}")


class AuditCorrupt(Exception):
    """A line is not a valid sealed record, so no chain can safely continue from it."""


def canonical(event: Mapping[str, Any]) -> bytes:
    """The exact bytes that are hashed and written: sorted keys, no whitespace, UTF-8 (not ``\\u`` escapes).

    ``allow_nan=False`` keeps every line standard JSON; for any valid input the output is identical to the
    documented form. This runs twice per call, so values orjson is known to write identically (see
    :func:`_orjson_writes_alike`) go through orjson, several times faster; anything else (a float orjson
    writes differently, NaN, an integer beyond 64 bits, a key that is not a string, a subclass) takes the
    documented ``json.dumps`` path, which also raises the errors callers expect.
    """
    fast = fast_sorted_json(event)
    if fast is not None:
        return fast
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def fast_sorted_json(value: Any) -> bytes | None:
    """orjson's bytes for a dict whose ``json.dumps(value, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)`` they equal byte for byte (see :func:`_orjson_writes_alike`), else None:
    the caller then takes its documented ``json.dumps`` path, which also raises what it should."""
    return fast_json(value, orjson.OPT_SORT_KEYS)


def fast_json(value: Any, option: int = 0) -> bytes | None:
    """:func:`fast_sorted_json` with the keys in their order (``option=0``): the bytes of
    ``json.dumps(value, separators=(",", ":"), ensure_ascii=False)``, or None."""
    if type(value) is dict:
        try:
            if _orjson_writes_alike(value):
                return orjson.dumps(value, option=option | orjson.OPT_PASSTHROUGH_SUBCLASS)
        except (orjson.JSONEncodeError, RecursionError):
            pass  # e.g. an integer beyond 64 bits, a lone surrogate, a key that is not exactly a str
    return None


_FLOAT_MAX = sys.float_info.max


def _orjson_writes_alike(value: Any) -> bool:
    """Whether orjson's sorted output of ``value`` is byte for byte ``json.dumps``'s canonical form.

    Exact JSON types only. Strings and integers are written alike (integers beyond 64 bits make
    orjson raise). Floats are too, except NaN and infinities (orjson writes ``null``) and magnitudes
    below 1e-4, which orjson writes positionally (``0.00001``, Python ``1e-05``) or with a one-digit
    exponent (``1e-9``, Python ``1e-09``): anything between 0 and 1e-4 falls back.
    tests/test_audit.py checks the claim.
    Scalars inside a container (all of an audit event's values but a few) are checked inline, so
    a flat event costs one loop over its values and no further call.
    """
    kind = type(value)
    if kind is dict:
        # Keys are orjson's to refuse: without OPT_NON_STR_KEYS it raises for any key that is not
        # a str, and with OPT_PASSTHROUGH_SUBCLASS (fast_json) for a subclass of str too.
        items: Iterable[Any] = value.values()
    elif kind is list or kind is tuple:
        items = value
    elif kind is str or kind is int or kind is bool or kind is float or value is None:
        return _orjson_writes_alike([value])  # a bare scalar (never an event): the one rule below
    else:
        return False
    for item in items:
        kind = type(item)
        if kind is str or kind is int or kind is bool or item is None:
            continue
        if kind is float:
            # abs() spelt out: NaN and the infinities fail every comparison.
            if item == 0.0 or 1e-4 <= item <= _FLOAT_MAX or -_FLOAT_MAX <= item <= -1e-4:
                continue
            return False
        if not _orjson_writes_alike(item):
            return False
    return True


def _digest(event: Mapping[str, Any]) -> str:
    """SHA-256 over the canonical form of ``event`` without its ``hash`` key."""
    body = {k: v for k, v in event.items() if k != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


_second: tuple[int, str] = (-1, "")  # a whole second and its "YYYY-MM-DDTHH:MM:SS" text, replaced whole


def now_rfc3339() -> str:
    """The current UTC time as RFC 3339 with milliseconds, e.g. ``2026-11-22T03:40:00.123Z``.

    Stamped on every audit event, so the date and time of day are formatted once per second.
    """
    global _second
    second, millis = divmod(time.time_ns() // 1_000_000, 1000)
    cached = _second
    if cached[0] != second:
        cached = _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{millis:03d}Z"


def seal(fields: Mapping[str, Any], *, seq: int, prev: str, ts: str) -> dict[str, Any]:
    """Return the full event (``fields`` plus ``seq``, ``ts``, ``prev`` and ``hash``).

    Raises ValueError if ``fields`` tries to set a chain key itself (that would let a caller forge the
    chain), and TypeError/ValueError if a value is not JSON-serialisable.
    """
    clash = RESERVED.intersection(fields)
    if clash:
        raise ValueError(f"audit fields must not set {', '.join(sorted(clash))}: the chain sets them")
    event: dict[str, Any] = {"seq": seq, "ts": ts, **fields, "prev": prev}
    event["hash"] = _digest(event)
    return event


def _check_sealed(obj: Any) -> str | None:
    """Why ``obj`` is not a well-formed sealed record, or None. Never quotes field values."""
    if not isinstance(obj, dict):
        return "not a JSON object"
    seq = obj.get("seq")
    if type(seq) is not int or seq < 1:
        return "seq is missing or not a positive integer"
    for key in ("prev", "hash"):
        value = obj.get(key)
        if not isinstance(value, str) or not _HEX64.fullmatch(value):
            return f"{key} is missing or not a 64-digit hex SHA-256"
    return None


def _body(line: bytes) -> bytes:
    return line[:-1] if line.endswith(b"\n") else line


def _parse(line: bytes) -> Any:
    """Parse one log line (with or without its newline); raises ValueError if it is not JSON."""
    try:
        return json.loads(_body(line).decode("utf-8"))
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _seal_problem(line: bytes, obj: dict[str, Any]) -> str | None:
    """Why a well-formed record's seal is wrong, or None.

    Besides recomputing the hash, the line must be byte-for-byte canonical: that rejects records whose
    JSON was re-encoded or that smuggle a duplicate key (parsers disagree on which duplicate wins).
    """
    try:
        if _digest(obj) != obj["hash"]:
            return "hash mismatch (record was altered)"
        if canonical(obj) != _body(line):
            return "the record is not in canonical form (it was re-encoded or edited)"
    except ValueError:  # e.g. NaN or an out-of-range number, which we never write
        return "the record holds a value that is not valid JSON"
    return None


class HashChain:
    """The running head of a chain: ``seq`` and ``head`` are the seq and hash of the last written record.

    A fresh chain has ``seq == 0`` and ``head == GENESIS``. :meth:`next` seals an event without changing
    the chain; the writer calls :meth:`advance` only once the line is safely written, so a failed write
    never leaves a gap or reuses a hash.
    """

    __slots__ = ("head", "seq")

    def __init__(self, seq: int = 0, head: str = GENESIS) -> None:
        self.seq = seq
        self.head = head

    def __repr__(self) -> str:
        return f"HashChain(seq={self.seq}, head={self.head[:12]}...)"

    def next(self, fields: Mapping[str, Any], *, ts: str | None = None) -> tuple[dict[str, Any], bytes]:
        """The sealed next event and its line bytes (canonical JSON + newline), WITHOUT advancing.

        This runs for every audited call: the values are checked once for the fast encoder
        (:func:`canonical`'s rule), then the event is encoded without ``hash`` for the digest and
        once more with it for the line, which is byte-identical to ``canonical(event) + b"\\n"``.
        """
        if "seq" in fields or "ts" in fields or "prev" in fields or "hash" in fields:
            clash = sorted(RESERVED.intersection(fields))
            raise ValueError(f"audit fields must not set {', '.join(clash)}: the chain sets them")
        event: dict[str, Any] = {
            "seq": self.seq + 1,
            "ts": ts if ts is not None else now_rfc3339(),
            **fields,
            "prev": self.head,
        }
        body = fast_sorted_json(event)
        if body is not None:
            event["hash"] = hashlib.sha256(body).hexdigest()
            return event, orjson.dumps(event, option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE)
        event["hash"] = hashlib.sha256(canonical(event)).hexdigest()
        return event, canonical(event) + b"\n"

    def advance(self, event: Mapping[str, Any]) -> None:
        """Make ``event`` (from :meth:`next`) the head; call only after its line was written."""
        if event.get("seq") != self.seq + 1 or event.get("prev") != self.head:
            raise ValueError("event does not follow the current chain head (was next() called twice?)")
        self.seq = int(event["seq"])
        self.head = str(event["hash"])

    @classmethod
    def resume_from_line(cls, line: bytes) -> HashChain:
        """Continue an existing log from its last line; raise AuditCorrupt if it is not a valid sealed record."""
        try:
            obj = _parse(line)
        except ValueError:
            raise AuditCorrupt("the last record is not valid JSON (truncated or garbage)") from None
        problem = _check_sealed(obj)
        if problem is not None:
            raise AuditCorrupt(f"the last record is malformed: {problem}")
        problem = _seal_problem(line, obj)
        if problem is not None:
            raise AuditCorrupt(f"the last record is not validly sealed: {problem}")
        return cls(obj["seq"], obj["hash"])


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of verifying a log.

    ``count`` and ``head`` describe the valid prefix: all records when ``ok``, otherwise those before
    ``broken_at`` (the 1-based line number of the first broken record). ``reason`` is a sentence for people.
    """

    ok: bool
    count: int
    head: str
    broken_at: int | None = None
    reason: str | None = None


def _check_line(line: bytes, number: int, head: str, seq: int, *, require_newline: bool) -> dict[str, Any] | str:
    """The parsed record if ``line`` correctly follows ``head``, else why not (without quoting contents)."""
    if require_newline and not line.endswith(b"\n"):
        return "the record is not terminated by a newline (a write was interrupted)"
    try:
        obj = _parse(line)
    except ValueError:
        return "not a valid JSON record (truncated or garbage)"
    problem = _check_sealed(obj)
    if problem is not None:
        return f"malformed record: {problem}"
    problem = _seal_problem(line, obj)
    if problem is not None:
        return problem
    if obj["prev"] != head:
        if number == 1:
            return "prev is not the genesis hash (the start of the log is missing)"
        return f"prev does not match the hash of line {number - 1} (a record was removed, inserted or reordered)"
    if obj["seq"] != seq:
        return f"seq is {obj['seq']}, expected {seq} (records were renumbered)"
    return obj


def _verify(lines: Iterable[bytes], *, require_newline: bool) -> VerifyResult:
    count, head = 0, GENESIS
    for number, line in enumerate(lines, start=1):
        checked = _check_line(line, number, head, count + 1, require_newline=require_newline)
        if isinstance(checked, str):
            return VerifyResult(False, count, head, number, f"line {number}: {checked}")
        count, head = count + 1, checked["hash"]
    return VerifyResult(True, count, head)


def verify_lines(lines: Iterable[bytes]) -> VerifyResult:
    """Verify records given one per item (a trailing newline on each is optional); stops at the first break."""
    return _verify(lines, require_newline=False)


def verify_file(path: str | Path) -> VerifyResult:
    """Verify a log file, streaming it. A last line without a newline (a torn write) counts as broken."""
    with open(path, "rb") as handle:
        return _verify(handle, require_newline=True)
