"""Audit sinks: where sealed audit events are written (a file, or stdout).

Durability, chosen with ``--audit-fsync``:

- ``interval`` (default): every event is written to the operating system before the call it records is
  forwarded, so it survives a crash of the Wicket process. It is fsynced to disk within ``fsync_interval``
  (1 s by default) of being written, so a power loss or kernel crash can lose at most about the last second
  of events.
- ``always``: every event is fsynced to disk before the call it records is forwarded, so nothing that was
  acted on can be lost. This is slower: each call waits for a disk flush (concurrent calls share one flush).
- ``never``: Wicket never fsyncs and the operating system writes the data back when it chooses. Events
  survive a crash of the Wicket process but not a power loss.

The sink fails closed. If an event cannot be written (disk full, I/O error, the log file removed or
read-only), ``append`` raises :class:`AuditUnavailable`, the sink reports itself unhealthy (``/readyz``) and
the caller refuses anything that is not a read. A partly written line is truncated away so the chain on
disk stays valid, and every later ``append`` retries, so the sink recovers by itself once the disk is
writable again. The same holds while fsync fails. When an existing log is opened, the chain continues from
its last line, read by seeking back from the end of the file. If that line is not a valid sealed record (a
torn write, garbage, an edited record) the sink refuses to write: it never starts a new chain on top of a
damaged one. Run ``wicket audit verify FILE``, repair or move the file, then restart Wicket or call
:meth:`FileAuditSink.reopen`.

``reopen`` re-opens the path and continues the chain from whatever file is now there (an empty file starts
a new chain). That is what logrotate-style rotation needs: move the file away, then signal Wicket
(typically with SIGHUP) to reopen.

Event contents are never logged, because they can hold summaries of sensitive arguments.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

from proxy.audit.chain import GENESIS, AuditCorrupt, HashChain

__all__ = [
    "AuditSink",
    "AuditUnavailable",
    "FileAuditSink",
    "FsyncPolicy",
    "StdoutAuditSink",
    "first_record_hash",
    "line_ending_at",
    "open_sink",
]

log = logging.getLogger(__name__)

FsyncPolicy = Literal["always", "interval", "never"]
Publish = Callable[[Mapping[str, Any]], None]
"""Hands a written event to the live feed (``EventFeed.publish``): returns at once, never raises."""
_FSYNC_POLICIES: frozenset[str] = frozenset({"always", "interval", "never"})
_OPEN_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
_TAIL_CHUNK = 8192
_MAX_LINE = 16 * 1024 * 1024  # a longer "last line" is not one we wrote: stop reading and call it corrupt


class AuditUnavailable(Exception):
    """An event could not be written; the action it records must not be allowed unless it is a read."""


class AuditSink(Protocol):
    """What the checker and the admin API need from an audit log."""

    @property
    def healthy(self) -> bool:
        """True while events can be written (and, for files, fsynced)."""
        ...

    @property
    def problem(self) -> str | None:
        """Why the sink is not healthy, as a sentence for ``/readyz``; None when healthy."""
        ...

    @property
    def hold(self) -> str | None:
        """Why only reads are allowed although events can be written (the log fell behind its last
        signed checkpoint and no operator has acknowledged it yet); None normally."""
        ...

    @property
    def head(self) -> str:
        """Hash of the last record written (GENESIS for an empty log)."""
        ...

    @property
    def count(self) -> int:
        """Number of records in the chain, which is the seq of the last record."""
        ...

    async def append(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Seal and write one event; returns the sealed event or raises AuditUnavailable."""
        ...

    def publish_to(self, publish: Publish) -> None:
        """Hand every event to ``publish`` once its append has succeeded (one publisher per sink)."""
        ...

    async def reopen(self) -> None:
        """Re-open the destination (log rotation)."""
        ...

    async def close(self) -> None:
        """Flush what is pending and release the destination."""
        ...


def _oserror_text(exc: OSError) -> str:
    """E.g. ``No space left on device (ENOSPC)``: readable and greppable, never event contents."""
    code = errno.errorcode.get(exc.errno or 0)
    text = exc.strerror or str(exc)
    return f"{text} ({code})" if code else text


def _encode_problem(exc: Exception) -> AuditUnavailable:
    # A caller bug (a value json cannot encode, a reserved key); the sink itself stays healthy.
    return AuditUnavailable(f"the audit event cannot be encoded as JSON ({exc})")


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    parts: list[bytes] = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            raise OSError(errno.EIO, "the audit log shrank while its last record was being read")
        parts.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


def line_ending_at(fd: int, end: int) -> bytes:
    """The whole line that ends (with its newline) at byte ``end``, read by seeking back.

    Raises AuditCorrupt when byte ``end - 1`` is not a newline or the line is implausibly long."""
    if _pread_exact(fd, 1, end - 1) != b"\n":
        raise AuditCorrupt("the file ends in the middle of a record (a write was interrupted)")
    buf = b""
    pos = end
    while pos > 0:
        start = max(0, pos - _TAIL_CHUNK)
        buf = _pread_exact(fd, pos - start, start) + buf
        pos = start
        cut = buf.rfind(b"\n", 0, len(buf) - 1)
        if cut >= 0:
            return buf[cut + 1 :]
        if len(buf) > _MAX_LINE:
            raise AuditCorrupt("the last record is implausibly long (garbage)")
    return buf


def first_record_hash(fd: int) -> str:
    """The ``hash`` of the file's first record, which names its chain (GENESIS for an empty file)."""
    buf = b""
    offset = 0
    while b"\n" not in buf:
        chunk = os.pread(fd, _TAIL_CHUNK, offset)
        if not chunk:
            break
        buf += chunk
        offset += len(chunk)
        if len(buf) > _MAX_LINE:
            raise AuditCorrupt("the first record is implausibly long (garbage)")
    if not buf:
        return GENESIS
    line, newline, _ = buf.partition(b"\n")
    if not newline:
        raise AuditCorrupt("the first record is not terminated by a newline")
    return HashChain.resume_from_line(line + b"\n").head


def _resume(fd: int) -> tuple[HashChain, bool]:
    """The chain continuing the file open on ``fd``, and whether it is a regular file.

    Reads only the last line, seeking back from the end. Raises AuditCorrupt for a damaged tail.
    """
    info = os.fstat(fd)
    regular = stat.S_ISREG(info.st_mode)
    size = info.st_size
    if not regular or size == 0:  # a device or pipe cannot be resumed from; an empty file starts a chain
        return HashChain(), regular
    return HashChain.resume_from_line(line_ending_at(fd, size)), regular


def _fsync_dup(fd: int) -> None:
    """fsync a private duplicate and close it: the sink may close or swap its own fd meanwhile."""
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileAuditSink:
    """An append-only JSON Lines file holding one hash chain.

    The file is opened in the constructor, so ``healthy`` and ``problem`` are meaningful straight away; if
    it cannot be opened yet (say its directory is missing) every ``append`` tries again. ``append`` is
    meant for the proxy's hot path: the write itself is one ``os.write`` on an ``O_APPEND`` descriptor, done
    on the event loop; only fsync runs in a thread.
    """

    def __init__(self, path: str | Path, *, fsync: FsyncPolicy = "interval", fsync_interval: float = 1.0) -> None:
        if fsync not in _FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of always, interval, never, not {fsync!r}")
        if not fsync_interval > 0:
            raise ValueError("fsync_interval must be a positive number of seconds")
        self._path = Path(path)
        self._policy: FsyncPolicy = fsync
        self._interval = float(fsync_interval)
        self._fd: int | None = None
        self._regular = True
        self._chain = HashChain()
        self._closed = False
        self._corrupt: str | None = None  # the tail is damaged: needs an operator, no automatic retry
        self._open_problem: str | None = None
        self._write_problem: str | None = None
        self._sync_problem: str | None = None
        self._torn = 0  # bytes of a partial line at the end of the file that are still to be truncated
        self._written = 0  # lines written so far; a line's number is its fsync "generation"
        self._synced = 0  # every line up to this generation is known to be on disk
        self._size = 0  # bytes of the file through the last record written (checkpoints name it)
        self._log_id = GENESIS  # the hash of the chain's first record: which chain this file holds
        self._sync_lock = asyncio.Lock()  # one fsync (or reopen) at a time
        self._sync_task: asyncio.Task[None] | None = None  # the interval fsync task while writes come
        self._notify: asyncio.Event | None = None  # set once the chain reaches _notify_seq (see notify_at)
        self._publish: Publish | None = None
        self._notify_seq = 0
        self._open()

    # -- state --------------------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The path events are appended to."""
        return self._path

    @property
    def healthy(self) -> bool:
        return self.problem is None

    @property
    def problem(self) -> str | None:
        if self._closed:
            return "the audit log is closed"
        return self._corrupt or self._open_problem or self._write_problem or self._sync_problem

    @property
    def head(self) -> str:
        return self._chain.head

    @property
    def count(self) -> int:
        return self._chain.seq

    # -- opening ------------------------------------------------------------------------------------------

    def _open(self) -> None:
        """Open the path and continue its chain; on failure record why and leave ``_fd`` unset."""
        try:
            fd = os.open(self._path, _OPEN_FLAGS, 0o600)
        except OSError as exc:
            self._set_open_problem(f"cannot open the audit log {self._path}: {_oserror_text(exc)}")
            return
        try:
            chain, regular = _resume(fd)
        except AuditCorrupt as exc:
            os.close(fd)
            self._corrupt = (
                f"the audit log {self._path} ends with a corrupt record: {exc}. Nothing more will be written to it; "
                f"run `wicket audit verify {self._path}`, then repair or move the file and restart Wicket"
            )
            log.error("%s", self._corrupt)
            return
        except OSError as exc:
            os.close(fd)
            self._set_open_problem(f"cannot read the end of the audit log {self._path}: {_oserror_text(exc)}")
            return
        try:
            log_id = first_record_hash(fd) if regular and chain.seq else GENESIS
        except (AuditCorrupt, OSError) as exc:
            os.close(fd)
            self._corrupt = f"the audit log {self._path} starts with a corrupt record: {exc}"
            log.error("%s", self._corrupt)
            return
        self._fd, self._chain, self._regular, self._log_id = fd, chain, regular, log_id
        self._size = os.fstat(fd).st_size if regular else 0
        if self._open_problem is not None:
            log.warning("the audit log %s is open again", self._path)
        self._open_problem = None

    def _set_open_problem(self, problem: str) -> None:
        if self._open_problem is None:
            log.error("%s", problem)
        self._open_problem = problem

    async def reopen(self) -> None:
        """Re-open the path (after log rotation) and continue the chain from the file now there.

        The old descriptor is fsynced (unless the policy is ``never``) and closed. An empty or new file starts
        a new chain; an existing one is resumed, or refused if its last line is corrupt. Also the way to
        clear a corrupt-tail state after the operator repaired the file.
        """
        if self._closed:
            raise AuditUnavailable("the audit log is closed")
        async with self._sync_lock:
            old_fd, old_written = self._fd, self._written
            if old_fd is not None and self._torn:
                self._repair_torn(old_fd)
            self._fd = None
            self._chain = HashChain()
            self._log_id = GENESIS
            self._corrupt = self._open_problem = self._write_problem = self._sync_problem = None
            self._torn = 0
            self._open()  # no await between closing the old chain and opening the new one
            if old_fd is not None:
                try:
                    if self._policy != "never" and self._synced < old_written:
                        await asyncio.to_thread(_fsync_dup, os.dup(old_fd))
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        log.error("could not fsync the rotated audit log: %s", _oserror_text(exc))
                finally:
                    os.close(old_fd)
            self._synced = max(self._synced, old_written)

    # -- writing ------------------------------------------------------------------------------------------

    async def append(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Seal ``fields`` as the next event, write it, and return the sealed event.

        Raises AuditUnavailable if the event is not written (or, with ``always``, not fsynced). Concurrent
        calls are safe: sealing, writing and advancing the chain happen with no ``await`` in between.
        One method, not a coroutine around a writer: it runs twice per tool call.
        """
        if self._sync_problem is not None and self._policy != "never" and not self._closed:
            # fsync has been failing: do not write more until it works again (fail closed).
            await self._sync_through(self._written)
        # From here until the chain has advanced nothing awaits, so appends never interleave.
        fd = self._fd
        if fd is None or self._closed or self._corrupt is not None or self._torn:
            fd = self._writable_fd()
        try:
            event, line = self._chain.next(fields)
        except (TypeError, ValueError) as exc:
            raise _encode_problem(exc) from None
        written, size = 0, len(line)
        try:
            written = os.write(fd, line)
            while written < size:  # a short write (rare): the rest of the line
                n = os.write(fd, memoryview(line)[written:])
                if n <= 0:
                    raise OSError(errno.EIO, "the write made no progress")
                written += n
        except OSError as exc:
            problem = f"cannot write to the audit log {self._path}: {_oserror_text(exc)}"
            if self._write_problem is None:
                log.error("%s", problem)
            self._write_problem = problem
            if written:
                self._torn = written
                self._repair_torn(fd)
            raise AuditUnavailable(problem) from exc
        self._chain.advance(event)
        self._written += 1
        self._size += size
        seq = event["seq"]
        if seq == 1:
            self._log_id = event["hash"]
        if self._notify is not None and seq >= self._notify_seq:
            self._notify.set()
        if self._write_problem is not None:
            log.warning("the audit log %s is writable again", self._path)
            self._write_problem = None
        if self._policy == "always":
            await self._sync_through(self._written)  # read before any await: this line's generation
        elif self._policy == "interval" and self._sync_task is None:
            self._sync_task = asyncio.get_running_loop().create_task(self._sync_loop())
        if self._publish is not None:
            self._publish(event)
        return event

    def publish_to(self, publish: Publish) -> None:
        """Hand every event to ``publish`` (the live feed) once its append has succeeded: called by
        the append itself, so publishing adds no coroutine layer per record."""
        self._publish = publish

    def _writable_fd(self) -> int:
        """The descriptor to write to when the plain case does not hold: closed, corrupt, not open
        yet (open it now) or a torn line to truncate first; raises AuditUnavailable if none."""
        if self._closed:
            raise AuditUnavailable("the audit log is closed")
        if self._corrupt is not None:
            raise AuditUnavailable(self._corrupt)
        if self._fd is None:
            self._open()
            if self._corrupt is not None:
                raise AuditUnavailable(self._corrupt)
            if self._fd is None:
                raise AuditUnavailable(self._open_problem)
        fd = self._fd
        if self._torn and not self._repair_torn(fd):
            raise AuditUnavailable(self._write_problem)
        return fd

    def _repair_torn(self, fd: int) -> bool:
        """Truncate away a partly written line so the file again ends with a whole record."""
        if not self._regular:
            self._corrupt = (
                f"a partial record was written to {self._path}, which is not a regular file, so it cannot be "
                "removed; nothing more will be written to it"
            )
            return False
        try:
            size = os.fstat(fd).st_size
            os.ftruncate(fd, size - self._torn)
        except OSError as exc:
            self._write_problem = (
                f"a partial record could not be removed from the audit log {self._path}: {_oserror_text(exc)}"
            )
            return False
        self._torn = 0
        return True

    # -- fsync --------------------------------------------------------------------------------------------

    async def _sync_through(self, generation: int) -> None:
        """Make sure every line up to ``generation`` is on disk; concurrent callers share one fsync."""
        async with self._sync_lock:
            if self._synced >= generation:
                return
            fd = self._fd
            if fd is None:
                raise AuditUnavailable(self.problem or "the audit log is not open")
            target = self._written
            try:
                await asyncio.to_thread(_fsync_dup, os.dup(fd))
            except OSError as exc:
                if exc.errno == errno.EINVAL and not self._regular:
                    pass  # a device or pipe: there is nothing to flush
                else:
                    problem = f"cannot fsync the audit log {self._path}: {_oserror_text(exc)}"
                    if self._sync_problem is None:
                        log.error("%s", problem)
                    self._sync_problem = problem
                    raise AuditUnavailable(problem) from exc
            self._synced = max(self._synced, target)
            if self._sync_problem is not None:
                log.warning("the audit log %s can be fsynced again", self._path)
                self._sync_problem = None

    def notify_at(self, seq: int, event: asyncio.Event) -> None:
        """Set ``event`` after each write from record ``seq`` of the chain on (the next checkpoint is due).

        The write checks it itself, so a CheckpointingSink does not wrap every append in a coroutine
        of its own; one more integer comparison per record, none when nobody asked."""
        self._notify, self._notify_seq = event, seq

    @property
    def log_id(self) -> str:
        """The hash of the chain's first record (GENESIS while it has none)."""
        return self._log_id

    @property
    def hold(self) -> str | None:
        return None

    async def durable_position(self) -> tuple[str, int, str, int]:
        """(log id, seq, head, byte size) of the last record, once it is fsynced whatever the policy:
        a signed checkpoint must never name a record that a power loss could still take back."""
        position = self._log_id, self._chain.seq, self._chain.head, self._size
        written = self._written
        if self._fd is None:
            raise AuditUnavailable(self.problem or "the audit log is not open")
        if self._regular and self._synced < written:
            await self._sync_through(written)
        return position

    async def _sync_loop(self) -> None:
        """The ``interval`` policy: fsync at most every ``fsync_interval`` seconds, and only after writes.

        Started by a write when none is running; it fsyncs ``fsync_interval`` after it, again while
        more writes came during that round, then ends: a write costs no call while one is pending.
        """
        try:
            while True:
                await asyncio.sleep(self._interval)
                written = self._written
                try:
                    await self._sync_through(written)
                except AuditUnavailable:
                    pass  # recorded in _sync_problem; appends now fail closed until an fsync succeeds
                if self._written == written:
                    return  # no write during this round: the next one starts the task again
        finally:
            self._sync_task = None  # ended, failed or cancelled (close): a later write starts a new one

    async def close(self) -> None:
        """Stop the fsync task, fsync what is pending (unless ``never``) and close the file."""
        if self._closed:
            return
        self._closed = True
        task, self._sync_task = self._sync_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._fd is None:
            return
        try:
            if self._policy != "never":
                await self._sync_through(self._written)
        except AuditUnavailable:
            pass  # already logged
        finally:
            async with self._sync_lock:
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None


class StdoutAuditSink:
    """Writes the chain to standard output, one line per event, flushed at once (for container log collectors).

    The chain starts afresh each time Wicket starts. Keep other output off stdout when using this sink.
    A write to a full pipe blocks; a failed write is reported like a file write error.
    """

    def __init__(self) -> None:
        self._chain = HashChain()
        self._problem: str | None = None
        self._closed = False
        self._publish: Publish | None = None

    @property
    def healthy(self) -> bool:
        return self.problem is None

    @property
    def problem(self) -> str | None:
        return "the audit log is closed" if self._closed else self._problem

    @property
    def hold(self) -> str | None:
        return None

    @property
    def head(self) -> str:
        return self._chain.head

    @property
    def count(self) -> int:
        return self._chain.seq

    async def append(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Seal and print one event; raises AuditUnavailable if stdout cannot be written."""
        if self._closed:
            raise AuditUnavailable("the audit log is closed")
        try:
            event, line = self._chain.next(fields)
        except (TypeError, ValueError) as exc:
            raise _encode_problem(exc) from None
        try:
            self._emit(event, line)
        except (OSError, ValueError) as exc:  # ValueError: stdout was closed
            text = _oserror_text(exc) if isinstance(exc, OSError) else str(exc)
            problem = f"cannot write the audit log to stdout: {text}"
            if self._problem is None:
                log.error("%s", problem)
            self._problem = problem
            raise AuditUnavailable(problem) from exc
        self._chain.advance(event)
        self._problem = None
        if self._publish is not None:
            self._publish(event)
        return event

    def publish_to(self, publish: Publish) -> None:
        """Hand every event to ``publish`` (the live feed) once it is written."""
        self._publish = publish

    def _emit(self, event: dict[str, Any], line: bytes) -> None:
        out = getattr(sys.stdout, "buffer", None)  # looked up each time: tests and tools swap sys.stdout
        if out is not None:
            out.write(line)
            out.flush()
        else:
            sys.stdout.write(line.decode("utf-8"))
            sys.stdout.flush()

    async def reopen(self) -> None:
        """Nothing to re-open: stdout stays where it is."""

    async def close(self) -> None:
        """Flush stdout (it is not closed; it is not ours)."""
        if self._closed:
            return
        self._closed = True
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass


class MemoryAuditSink(StdoutAuditSink):
    """The chain kept in this process (``wicket policy test``/``explain``): sealed exactly as it is
    written elsewhere, with the events in ``events`` instead of on a stream."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []

    def _emit(self, event: dict[str, Any], line: bytes) -> None:
        self.events.append(event)

    async def close(self) -> None:
        self._closed = True


def open_sink(target: str, *, fsync: FsyncPolicy = "interval", fsync_interval: float = 1.0) -> AuditSink:
    """``-`` means stdout (fsync does not apply); anything else is a file path."""
    if target == "-":
        if fsync not in _FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of always, interval, never, not {fsync!r}")
        return StdoutAuditSink()
    return FileAuditSink(target, fsync=fsync, fsync_interval=fsync_interval)
