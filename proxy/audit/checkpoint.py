"""Signed checkpoints of the audit chain head, as transparency logs keep signed tree heads.

The hash chain alone shows a record altered, removed, inserted or reordered anywhere before the
last one, but not records cut from the end, nor a log rewritten from some record on with every
later hash recomputed: both still verify. A checkpoint is Wicket's signed statement "the chain
whose first record hashes to ``log_id`` had record ``seq`` with hash ``head``, ending at byte
``size`` of the file, at time ``ts``". Holding one, a shorter file, or a different record at
``seq`` (which a re-hashed prefix gives, since each hash commits to all before it), is proof of
tampering that nobody without the signing key can paper over.

:class:`CheckpointingSink` wraps a :class:`~proxy.audit.sink.FileAuditSink`. A background task
signs a checkpoint at a chain's first record, then every ``every`` records and every ``interval``
seconds while records arrive (never on a call's path: an append only compares two integers), once
the records it covers are fsynced; each goes to ``<log>.checkpoints`` (one JSON line each) and to the state store. On
start it compares the file with the last checkpoint of both copies; a file behind it puts the
sink on *hold*: the checker refuses everything but reads until an operator acknowledges
(``POST /v1/audit/acknowledge``, ``wicket audit acknowledge``), which is audited and signs a
new checkpoint from the file as it is. ``wicket audit verify`` checks every checkpoint.

A checkpoint is a compact JWS (EdDSA, or ES256 with an EC key) by the key in
``WICKET_SIGNING_KEY``, the one that signs minted credentials, so the JWKS at
``/.well-known/jwks.json`` or the public PEM verify it. Each line also carries the public JWK,
which lets a log be checked without any key (proving consistency, not authorship).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import jwt

from proxy.audit.chain import GENESIS, AuditCorrupt, HashChain, canonical, now_rfc3339
from proxy.audit.sink import AuditUnavailable, FileAuditSink, Publish, first_record_hash, line_ending_at
from proxy.state.base import Store, StoreUnavailable

log = logging.getLogger(__name__)

SUFFIX = ".checkpoints"
VERSION = 1
ALGORITHMS = ["EdDSA", "ES256"]
_CLAIMS = ("v", "log_id", "seq", "head", "size", "ts", "closed", "acknowledged", "kid")
_MAX_LINE = 64 * 1024


class CheckpointKeys(Protocol):
    """What signs checkpoints: ``proxy.credentials.KeyRing`` is one."""

    @property
    def kid(self) -> str: ...

    ephemeral: bool

    def sign(self, claims: Mapping[str, Any]) -> str: ...

    def jwks(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Checkpoint:
    """One signed chain position. ``log_id`` is the hash of the chain's first record (GENESIS while empty);
    ``closed`` marks the last checkpoint of a file rotated away; ``acknowledged`` the operator's reason
    when it was signed to accept a file that had fallen behind."""

    log_id: str
    seq: int
    head: str
    size: int
    ts: str
    kid: str
    jws: str
    jwk: dict[str, Any] = field(default_factory=dict)
    closed: bool = False
    acknowledged: str | None = None

    def claims(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "log_id": self.log_id,
            "seq": self.seq,
            "head": self.head,
            "size": self.size,
            "ts": self.ts,
            "closed": self.closed,
            "acknowledged": self.acknowledged,
            "kid": self.kid,
        }

    def line(self) -> bytes:
        return canonical({**self.claims(), "jwk": self.jwk, "jws": self.jws}) + b"\n"

    def describe(self) -> str:
        return f"seq {self.seq}, head {self.head[:16]}…, signed {self.ts} by key {self.kid[:12]}"

    def view(self) -> dict[str, Any]:
        return {**self.claims(), "jws": self.jws}


def sign_checkpoint(
    keys: CheckpointKeys,
    *,
    log_id: str,
    seq: int,
    head: str,
    size: int,
    closed: bool = False,
    acknowledged: str | None = None,
) -> Checkpoint:
    jwk = dict(keys.jwks()["keys"][0])
    draft = Checkpoint(log_id, seq, head, size, now_rfc3339(), keys.kid, "", jwk, closed, acknowledged)
    return Checkpoint(**{**draft.__dict__, "jws": keys.sign(draft.claims())})


def parse_checkpoint(raw: bytes) -> Checkpoint:
    """A checkpoint line's fields (the signature is checked by :func:`signature_problem`); ValueError if malformed."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ValueError("not JSON") from None
    if not isinstance(body, dict) or body.get("v") != VERSION:
        raise ValueError("not a version 1 checkpoint")
    try:
        cp = Checkpoint(
            log_id=body["log_id"],
            seq=body["seq"],
            head=body["head"],
            size=body["size"],
            ts=body["ts"],
            kid=body["kid"],
            jws=body["jws"],
            jwk=body.get("jwk") or {},
            closed=body["closed"],
            acknowledged=body.get("acknowledged"),
        )
    except KeyError as exc:
        raise ValueError(f"{exc.args[0]} is missing") from None
    if (
        type(cp.seq) is not int
        or type(cp.size) is not int
        or cp.seq < 0
        or cp.size < 0
        or not all(isinstance(v, str) for v in (cp.log_id, cp.head, cp.ts, cp.kid, cp.jws))
        or not isinstance(cp.jwk, dict)
        or not isinstance(cp.closed, bool)
    ):
        raise ValueError("a field has the wrong type")
    return cp


def public_keys(jwks: Mapping[str, Any]) -> dict[str, Any]:
    """kid -> public key for every usable key of a JWKS document."""
    out: dict[str, Any] = {}
    for item in jwks.get("keys") or []:
        try:
            out[str(item["kid"])] = jwt.PyJWK(dict(item)).key
        except (KeyError, jwt.PyJWKError, TypeError, ValueError):
            continue
    return out


def signature_problem(cp: Checkpoint, keys: Mapping[str, Any] | None) -> str | None:
    """Why the checkpoint's signature does not hold, or None. ``keys`` (kid -> public key) are the
    keys to trust; None trusts the JWK the line carries (consistency without authorship)."""
    if keys is None:
        try:
            key = jwt.PyJWK(dict(cp.jwk)).key
        except (jwt.PyJWKError, TypeError, ValueError, KeyError):
            return "it carries no usable public key"
    else:
        key = keys.get(cp.kid)
        if key is None:
            return f"it is signed by key {cp.kid[:16]}, which is not one of the trusted keys"
    try:
        payload = jwt.decode(cp.jws, key=key, algorithms=ALGORITHMS, options={"verify_aud": False})
        header = jwt.get_unverified_header(cp.jws)
    except jwt.PyJWTError:
        return "its signature does not verify"
    if header.get("kid") != cp.kid or {k: payload.get(k) for k in _CLAIMS} != cp.claims():
        return "its signed contents differ from the line"
    return None


# -- reading a log file ---------------------------------------------------------------------------------


def position_problem(fd: int, cp: Checkpoint, log_id: str | None = None) -> str | None:
    """Why the file open on ``fd`` is not a continuation of what ``cp`` signed, or None.

    O(1): reads the first record (which chain this is) and the record ending at byte ``cp.size``.
    That record must be seq ``cp.seq`` with hash ``cp.head``; since each hash commits to every
    record before it, a changed prefix cannot keep it."""
    size = os.fstat(fd).st_size
    if log_id is None:
        log_id = first_record_hash(fd)
    where = f"the checkpoint of {cp.describe()}"
    if cp.log_id != log_id:
        if cp.closed:
            return None  # the chain it covers was rotated away; this file is a newer one
        if log_id == GENESIS:
            return f"the log is empty, but {where} covers {cp.seq} records: the file was emptied or replaced"
        return f"the log holds another chain than the one {where} covers: the file was replaced"
    if cp.seq == 0:
        return None
    if size < cp.size:
        return (
            f"the log ends at byte {size}, before {where} (byte {cp.size}): records were cut from the end "
            "(or removed and the rest re-hashed)"
        )
    try:
        chain = HashChain.resume_from_line(line_ending_at(fd, cp.size))
    except (AuditCorrupt, OSError) as exc:
        return f"no record ends where {where} says record {cp.seq} ends ({exc}): the log was rewritten"
    if chain.seq != cp.seq or chain.head != cp.head:
        return (
            f"record {chain.seq} (hash {chain.head[:16]}…) is where {where} has record {cp.seq}: the log was rewritten"
        )
    return None


def _last_line(fd: int) -> bytes | None:
    """The last newline-terminated line of the checkpoints file (a torn last write is skipped)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    end = size
    if os.pread(fd, 1, size - 1) != b"\n":
        start = max(0, size - _MAX_LINE)
        tail = os.pread(fd, size - start, start)
        cut = tail.rfind(b"\n")
        if cut < 0:
            return None
        end = start + cut + 1
    return line_ending_at(fd, end)


def iter_checkpoints(path: Path) -> Iterator[tuple[int, Checkpoint | str]]:
    """(line number, checkpoint or why the line is not one) for every line; a torn last line is skipped."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                return
            try:
                yield number, parse_checkpoint(raw)
            except ValueError as exc:
                yield number, f"not a checkpoint ({exc})"


# -- the sink -----------------------------------------------------------------------------------------


def store_key(path: Path) -> str:
    """Where this host's log keeps its checkpoint in the shared store: by host name and absolute path."""
    ident = f"{socket.gethostname()}\0{path.resolve()}"
    return "wicket:audit:checkpoint:" + hashlib.sha256(ident.encode("utf-8", "surrogateescape")).hexdigest()[:24]


def _append(path: Path, line: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointingSink:
    """A FileAuditSink whose chain head is signed periodically, and checked against on start."""

    append: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
    """The inner sink's ``append`` itself: the inner write sets ``_due`` when a checkpoint is due
    (:meth:`FileAuditSink.notify_at`), so a record costs no coroutine layer here."""

    def __init__(
        self,
        inner: FileAuditSink,
        keys: CheckpointKeys,
        *,
        store: Store | None = None,
        every: int = 1000,
        interval: float = 5.0,
        on_checkpoint: Callable[[], None] | None = None,
    ) -> None:
        if every < 1 or not interval > 0:
            raise ValueError("checkpoints need every >= 1 record and a positive interval")
        self.inner = inner
        self._keys = keys
        self._store = store
        self._every = every
        self._interval = interval
        self._on_checkpoint = on_checkpoint
        self.checkpoints_path = Path(str(inner.path) + SUFFIX)
        self._store_key = store_key(inner.path)
        self._last: Checkpoint | None = None
        self._covered = 0  # seq of the current chain's last checkpoint (set by _cover)
        self._log_id: str | None = None
        self.hold: str | None = None
        """Why only reads are allowed (the file fell behind its last checkpoint): set by :meth:`start`,
        lifted by :meth:`acknowledge`. An attribute, not a property: the checker reads it per decision."""
        self.checkpoint_problem: str | None = None
        self._due = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.append = inner.append
        self._cover(0)

    # -- AuditSink ----------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self.inner.path

    @property
    def healthy(self) -> bool:
        return self.inner.healthy

    @property
    def problem(self) -> str | None:
        return self.inner.problem

    @property
    def head(self) -> str:
        return self.inner.head

    @property
    def count(self) -> int:
        return self.inner.count

    @property
    def last(self) -> Checkpoint | None:
        return self._last

    def _cover(self, seq: int) -> None:
        """Record that the current chain's checkpoints cover it through ``seq``: the next is due
        (``_due`` set by each write) once ``every`` more records are written, or at the first
        record of a chain none covers yet, so a new log is never without a checkpoint for
        ``interval`` seconds (``wicket audit verify`` calls a log without any broken)."""
        self._covered = seq
        self.inner.notify_at(seq + self._every if seq else 1, self._due)

    def publish_to(self, publish: Publish) -> None:
        self.inner.publish_to(publish)

    async def reopen(self) -> None:
        """Rotation: a closing checkpoint for the chain being rotated away, then a new chain."""
        if self.hold is None:
            await self._checkpoint_logged(closed=True)
        await self.inner.reopen()
        self._log_id = self.inner.log_id
        self._cover(0)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if self.hold is None and self.inner.healthy and self.inner.count > self._covered:
                await self._checkpoint_logged()
        await self.inner.close()

    # -- start and acknowledgement ------------------------------------------------------------------

    async def start(self) -> str | None:
        """Compare the file with its last checkpoint (the checkpoints file and the store's copy),
        start signing, and return why the log is on hold (None: it continues what was signed)."""
        problem = await self._resume_problem()
        self.hold = problem
        if problem is not None:
            log.error("audit log on hold (only reads are allowed until an operator acknowledges): %s", problem)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())
        return problem

    async def acknowledge(self, reason: str) -> Checkpoint | None:
        """Lift the hold (the caller has audited it) and sign the file as it is now, so a restart
        starts from here; the older checkpoints keep showing what was lost."""
        self.hold = None
        return await self.checkpoint(acknowledged=reason)

    async def _resume_problem(self) -> str | None:
        try:
            from_file = await asyncio.to_thread(self._last_in_file)
        except (OSError, ValueError, AuditCorrupt) as exc:
            return f"the checkpoints file {self.checkpoints_path} is unreadable ({exc})"
        from_store: Checkpoint | str | None = None
        if self._store is not None:
            try:
                raw = await self._store.get(self._store_key)
            except StoreUnavailable as exc:
                log.warning("the stored audit checkpoint could not be read (%s); using the file alone", exc)
                raw = None
            if raw is not None:
                try:
                    from_store = parse_checkpoint(raw)
                except ValueError as exc:
                    from_store = f"not a checkpoint ({exc})"
        trusted = self._trusted_keys()
        candidates: list[Checkpoint] = []
        for source, found in ((str(self.checkpoints_path), from_file), ("the state store", from_store)):
            if isinstance(found, str):
                return f"the last checkpoint in {source} is unusable: {found}"
            if found is None:
                continue
            why = signature_problem(found, trusted)
            if why is not None:
                return f"the last checkpoint in {source} ({found.describe()}) is not valid: {why}"
            candidates.append(found)
        if not candidates:
            return None
        latest = max(candidates, key=lambda c: (c.ts, c.seq))
        same = [c for c in candidates if c.log_id == latest.log_id]
        latest = max(same, key=lambda c: c.seq)
        problem = await asyncio.to_thread(self._position, latest)
        if problem is None:
            self._last = latest
            if latest.log_id == self._log_id:
                self._cover(latest.seq)
        return problem

    def _trusted_keys(self) -> dict[str, Any] | None:
        if self._keys.ephemeral:
            # A key made for this process cannot vouch for what an earlier one signed; the checkpoints'
            # own keys still show whether the file continues them.
            log.warning("no WICKET_SIGNING_KEY: audit checkpoints are checked for consistency, not authorship")
            return None
        return public_keys(self._keys.jwks())

    def _last_in_file(self) -> Checkpoint | str | None:
        try:
            fd = os.open(self.checkpoints_path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return None
        try:
            raw = _last_line(fd)
        finally:
            os.close(fd)
        if raw is None:
            return None
        try:
            return parse_checkpoint(raw)
        except ValueError as exc:
            return f"not a checkpoint ({exc})"

    def _position(self, cp: Checkpoint) -> str | None:
        try:
            fd = os.open(self.inner.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            return f"the log cannot be read to compare it with its last checkpoint ({exc.strerror or exc})"
        try:
            self._log_id = self.inner.log_id
            return position_problem(fd, cp, self._log_id)
        except (AuditCorrupt, OSError) as exc:
            return f"the log cannot be compared with its last checkpoint ({exc})"
        finally:
            os.close(fd)

    # -- signing ------------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self._interval):
                    await self._due.wait()
            except TimeoutError:
                pass
            self._due.clear()
            if self.hold is None and self.inner.count > self._covered:
                try:
                    await self._checkpoint_logged()
                except Exception:  # never let one bad checkpoint end the signing for good
                    log.exception("an audit checkpoint failed unexpectedly")

    async def _checkpoint_logged(self, *, closed: bool = False) -> None:
        try:
            await self.checkpoint(closed=closed)
        except (AuditUnavailable, AuditCorrupt, OSError) as exc:
            problem = f"no audit checkpoint could be signed: {exc}"
            if self.checkpoint_problem != problem:
                log.error("%s", problem)
            self.checkpoint_problem = problem

    async def checkpoint(self, *, closed: bool = False, acknowledged: str | None = None) -> Checkpoint:
        """Sign the current durable head now, append it to the checkpoints file and store it."""
        async with self._lock:
            log_id, seq, head, size = await self.inner.durable_position()
            cp = sign_checkpoint(
                self._keys,
                log_id=log_id,
                seq=seq,
                head=head,
                size=size,
                closed=closed,
                acknowledged=acknowledged,
            )
            line = cp.line()
            await asyncio.to_thread(_append, self.checkpoints_path, line)
            self._last, self._log_id = cp, log_id
            self._cover(seq)
            self.checkpoint_problem = None
            if self._store is not None:
                try:
                    await self._store.put(self._store_key, line)
                except StoreUnavailable as exc:
                    self.checkpoint_problem = f"the audit checkpoint was not stored ({exc}); the file has it"
                    log.warning("%s", self.checkpoint_problem)
            if self._on_checkpoint is not None:
                self._on_checkpoint()
            return cp


# -- verifying a file (wicket audit verify) ----------------------------------------------------------


@dataclass
class CheckpointReport:
    """What the checkpoints say about one log file: ``problems`` fail verification, ``notes`` inform."""

    checked: int = 0
    last: Checkpoint | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_against_checkpoints(
    log_path: Path, checkpoints_path: Path, keys: Mapping[str, Any] | None
) -> CheckpointReport:
    """Every checkpoint of ``checkpoints_path`` must be validly signed (by ``keys``, or by the key it
    carries when None), and each one of this file's chain must match the file. A file whose chain
    no checkpoint covers, while the last checkpoint covers another chain that was not rotated
    away, was replaced or emptied."""
    report = CheckpointReport()
    if not checkpoints_path.is_file():
        report.problems.append(
            f"there are no checkpoints at {checkpoints_path}: records cut from the end of the log, or a log "
            "rewritten and re-hashed, could not be detected (--chain-only verifies the chain alone)"
        )
        return report
    fd = os.open(log_path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        try:
            log_id = first_record_hash(fd)
        except AuditCorrupt as exc:
            report.problems.append(f"the log's first record names no chain ({exc})")
            return report
        latest: Checkpoint | None = None
        acknowledged: list[tuple[int, Checkpoint]] = []
        broken: list[tuple[int, str]] = []
        for number, item in iter_checkpoints(checkpoints_path):
            where = f"{checkpoints_path}:{number}"
            if isinstance(item, str):
                report.problems.append(f"{where}: {item}")
                continue
            why = signature_problem(item, keys)
            if why is not None:
                report.problems.append(f"{where}: the checkpoint of {item.describe()} is not valid: {why}")
                continue
            latest = item
            if item.log_id != log_id:
                continue
            report.checked += 1
            report.last = item
            if item.acknowledged is not None:
                acknowledged.append((number, item))
            problem = position_problem(fd, item, log_id)
            if problem is not None:
                broken.append((number, problem))
        for number, problem in broken:
            later = [f"line {n} ({cp.ts})" for n, cp in acknowledged if n > number]
            suffix = f" [acknowledged by an operator: {later[0]}]" if later else ""
            report.problems.append(f"{checkpoints_path}:{number}: {problem}{suffix}")
        if report.checked == 0 and latest is not None:
            problem = position_problem(fd, latest, log_id)
            if problem is not None:
                report.problems.append(f"{checkpoints_path} (last line): {problem}")
            else:
                report.notes.append("no checkpoint covers this chain yet (it began after the last rotation)")
    finally:
        os.close(fd)
    if keys is None and report.checked:
        kids = {report.last.kid} if report.last is not None else set()
        report.notes.append(
            f"signatures checked against the key the checkpoints carry ({', '.join(k[:16] for k in kids)}); "
            "pass --key or --jwks to prove they are Wicket's"
        )
    return report
