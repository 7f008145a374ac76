"""The shared store: Redis (standalone, Sentinel or Cluster) through redis-py's asyncio client.

A fleet of sidecars shares sessions and per-session activity here. Two rules shape it:

* **Fail closed, fast.** Every operation runs under one deadline (ours: redis-py's socket
  timeouts are off, since they would add a second timer and a task per command) and a bounded
  number of in-flight requests; any Redis error, timeout or exhausted slot raises
  ``StoreUnavailable`` so the caller denies instead of hanging or queueing without bound.
  Lost connections are retried with exponential backoff (that is how the store reconnects
  after Redis comes back); timeouts are never retried, so a slow Redis fails fast and a
  script whose answer was merely late is not run twice.
* **One round trip per decision.** ``note_call`` and ``note_verdict`` are Lua scripts
  (EVALSHA, reloaded on NOSCRIPT) that read and update a session's counters atomically; on a
  standalone Redis the verdict is sent on the shared connection without waiting for it.
  All of a session's keys share the hash tag ``{session_id}``, so each script touches a
  single Cluster slot.

* **Records read once.** ``get(key, cached=True)`` (sessions, label memory) keeps the value
  in the process and Redis says when it changes (``_ReadCache``), so a call reads no record.

Keys given to ``get``/``put``/``delete`` are used verbatim (callers name them, e.g.
``wicket:{ses_...}:session``); ``prefix`` names the activity keys the store itself owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import re
import select
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from proxy.core.action import Activity
from proxy.state.base import StoreUnavailable, Taken
from proxy.state.memory import HISTORY, WINDOW_CAP

log = logging.getLogger(__name__)

T = TypeVar("T")

ACTIVITY_TTL = 24 * 3600.0  # an abandoned session's activity disappears this long after its last call
_MAX_TTL = 365 * 24 * 3600.0
_RETRIES = 2  # reconnect attempts per operation, with exponential backoff
_BACKOFF = ExponentialBackoff(cap=0.1, base=0.01)

# KEYS: 1 act (hash: calls, writes, denials), 2 denied (hash: action key -> denials), 3 hist (list),
#       4..7 one zset per effect (read, mutating, destructive, admin): member = zero-padded call
#       sequence number, score = the caller's clock. Per-effect zsets keep every count an O(log n)
#       ZCOUNT; the sequence number orders calls made at the same instant.
# ARGV: 1 now, 2 window horizon (now - window), 3 minute horizon (now - 60), 4 retention horizon
#       (the older of the two), 5 effect 0..3, 6 action key, 7 TTL in ms, 8 cap on remembered calls
# A zset that held nothing after the retention trim is neither counted nor given a TTL (it does
# not exist, unless it is the one this call adds to): for most sessions three of the four, which
# spares six ZCOUNTs and three PEXPIREs per call.
# Returns the activity *before* this call: calls, denials, writes, window calls, minute calls,
# window calls per effect (4), repeat denials of this action, history (oldest first) as one JSON array
# ('' when empty): one string parses at C speed where twenty would each take a trip through the parser.
NOTE_CALL = """
local cap = tonumber(ARGV[8])
local total = 0
local held = {}
for i = 4, 7 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[4])
  held[i] = redis.call('ZCARD', KEYS[i])
  total = total + held[i]
end
while total > 0 and total >= cap do
  local key, score, member = nil, nil, nil
  for i = 4, 7 do
    local head = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    if head[1] then
      local s = tonumber(head[2])
      if key == nil or s < score or (s == score and head[1] < member) then
        key, score, member = KEYS[i], s, head[1]
      end
    end
  end
  redis.call('ZREM', key, member)
  total = total - 1
end
local window_from, minute_from = '(' .. ARGV[2], '(' .. ARGV[3]
local by_effect, window_calls, minute_calls = {}, 0, 0
for i = 4, 7 do
  local n = 0
  if held[i] > 0 then
    n = redis.call('ZCOUNT', KEYS[i], window_from, '+inf')
    minute_calls = minute_calls + redis.call('ZCOUNT', KEYS[i], minute_from, '+inf')
  end
  by_effect[i - 3] = n
  window_calls = window_calls + n
end
local counts = redis.call('HMGET', KEYS[1], 'calls', 'denials', 'writes')
local calls = tonumber(counts[1]) or 0
local denials = tonumber(counts[2]) or 0
local writes = tonumber(counts[3]) or 0
local repeats = tonumber(redis.call('HGET', KEYS[2], ARGV[6])) or 0
local history = redis.call('LRANGE', KEYS[3], 0, -1)
local effect = tonumber(ARGV[5])
redis.call('HINCRBY', KEYS[1], 'calls', 1)
redis.call('ZADD', KEYS[4 + effect], ARGV[1], string.format('%016d', calls))
for i = 1, 7 do
  if i < 4 or held[i] > 0 or i == 4 + effect then
    redis.call('PEXPIRE', KEYS[i], ARGV[7])
  end
end
local entries = ''
if #history > 0 then
  entries = cjson.encode(history)
end
return {calls, denials, writes, window_calls, minute_calls,
        by_effect[1], by_effect[2], by_effect[3], by_effect[4], repeats, entries}
"""

# KEYS: 1 act, 2 denied, 3 hist.  ARGV: 1 action key, 2 history entry, 3 "1" when denied, 4 history length,
# 5 "1" when the call counts as the agent's own write.
# A session that never called (or whose activity expired) records nothing, like the memory store.
# The keys take the TTL note_call last set on act, so note_verdict needs no window.
TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local used = redis.call('ZCARD', KEYS[1])
if used >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], used - tonumber(ARGV[3]), used - tonumber(ARGV[3]), 'WITHSCORES')
  return {0, oldest[2] or ARGV[2]}
end
local seq = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[1], ARGV[2], seq)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {1, '0'}
"""
"""A sliding-window rate limit in one atomic step: forget hits older than the window (ARGV[1]
is the horizon), refuse at the limit (ARGV[3]) returning the time of the hit whose expiry frees a
slot, else record this hit at ARGV[2]. Members are a per-key sequence (KEYS[2]) so hits at the
same instant stay distinct."""

NOTE_VERDICT = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then
  return 0
end
redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[4]), -1)
if ARGV[3] == '1' then
  redis.call('HINCRBY', KEYS[1], 'denials', 1)
  redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
end
if ARGV[5] == '1' then
  redis.call('HINCRBY', KEYS[1], 'writes', 1)
end
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[2], ttl)
  redis.call('PEXPIRE', KEYS[3], ttl)
end
return 1
"""


COMPARE_AND_SET = """
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current then
    return 0
  end
elseif current ~= ARGV[2] then
  return 0
end
if tonumber(ARGV[4]) > 0 then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[3])
end
return 1
"""
"""KEYS[1] holds exactly ARGV[2] (or is absent when ARGV[1] is '1')? Then set it to ARGV[3] with a TTL of
ARGV[4] ms (0: none) and return 1; else change nothing and return 0. One script, so one winner."""

INDEX_ADD = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[3]) - 1)
return 1
"""
"""Add member ARGV[2] at score ARGV[1] to the sorted set KEYS[1], keeping only the ARGV[3] highest."""

ANNOUNCE_IF_PRESENT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"""
"""Publish ARGV[2] on channel ARGV[1] only if the key KEYS[1] exists; 1 if it did."""


_INVALIDATE_CHANNEL = b"__redis__:invalidate"
_KEYS_KEPT = 10_000  # sessions whose activity key names are kept
_HISTORY = str(HISTORY)
_MISS: Any = object()


class _Pending:
    """A read in flight: its reply is kept only if nothing dropped this marker meanwhile, and
    concurrent readers of the key wait for it instead of each sending a GET of their own."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def wait(self) -> Any:
        return await asyncio.shield(self.future)


class _ReadCache:
    """Values of some keys kept in the process until Redis says they changed.

    Redis server-assisted client-side caching: misses are read on one connection with
    ``CLIENT TRACKING ON REDIRECT`` to a second connection subscribed to ``__redis__:invalidate``,
    on which Redis then names every read key that changes (written by anyone, deleted, expired,
    flushed). That feed is parsed as it arrives (``_Feed.data_received``), and a value is only
    served while the feed is up, fully parsed and has no unread byte waiting in the socket (one
    ``poll``), so a record changed in Redis, a tampered one included, is read afresh (and its HMAC
    checked again) on the next read after Redis announced the change. While the feed is down
    nothing is cached and every read goes to Redis; when it drops, everything is forgotten.
    """

    _MAX = 10_000
    _HEARTBEAT = 1.0  # seconds between PINGs on the feed; an unanswered one drops it

    def __init__(
        self,
        pool: ConnectionPool,
        timeout: float,
        announcements: tuple[bytes, Callable[[bytes], None]] | None = None,
    ) -> None:
        self._pool = pool
        self._timeout = timeout
        # A channel the feed connection follows too, and what hears its messages (in data_received).
        self.announcements = announcements
        self._values: dict[str, Any] = {}
        self._live = False
        self._feed: _Feed | None = None
        self._poll: select.poll | None = None
        self._reader: AbstractConnection | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._down = asyncio.Event()
        self._closed = False

    @property
    def live(self) -> bool:
        return self._live

    def lookup(self, key: str) -> Any:
        """The cached value of ``key``, a ``_Pending`` read to wait for, or ``_MISS`` (also while
        any invalidation may be unread)."""
        if not self._live:
            self.start()
            return _MISS
        feed, poll = self._feed, self._poll
        if feed is None or poll is None or feed.buffer or poll.poll(0):
            return _MISS
        return self._values.get(key, _MISS)

    def start(self) -> None:
        """Open the feed and the tracking connection (in the background), unless under way."""
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._maintain())

    async def fetch(self, key: str) -> Any:
        """Read ``key`` on the tracking connection and keep it unless it changed meanwhile;
        ``_MISS`` when the cache went down meanwhile (the caller reads Redis directly)."""
        marker = _Pending()
        if len(self._values) >= self._MAX:
            self._values.clear()
        self._values[key] = marker
        value: Any = _MISS
        try:
            async with self._lock:
                reader = self._reader
                if reader is None or not self._live:
                    return _MISS
                try:
                    await reader.send_command("GET", key)
                    value = await reader.read_response()
                except (RedisError, OSError):
                    self._drop()  # its state is unknown: never reuse it (it would reconnect untracked)
                    return _MISS
                except BaseException:
                    self._drop()
                    raise
            if self._values.get(key) is marker:
                self._values[key] = value
            return value
        finally:
            if self._values.get(key) is marker:
                del self._values[key]
            marker.future.set_result(value)

    def forget(self, key: str) -> None:
        """This process is writing ``key``: read it afresh (and drop any read in flight)."""
        self._values.pop(key, None)

    def invalidate(self, keys: list[Any] | None) -> None:
        if keys is None:  # FLUSHDB / FLUSHALL
            self._values.clear()
            return
        for key in keys:
            if isinstance(key, bytes):
                self._values.pop(key.decode("utf-8", "replace"), None)

    def _drop(self) -> None:
        """Forget everything and close both connections; ``_maintain`` opens new ones."""
        self._live = False
        self._values.clear()
        self._down.set()
        feed, self._feed, self._poll = self._feed, None, None
        if feed is not None:
            feed.close()
        reader, self._reader = self._reader, None
        if reader is not None:
            task = asyncio.ensure_future(reader.disconnect(nowait=True))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _maintain(self) -> None:
        """Keep the feed and the tracking connection up for the life of the store."""
        backoff = 0.1
        while not self._closed:
            try:
                async with asyncio.timeout(self._timeout + 1.0):
                    await self._open()
                backoff = 0.1
                await self._watch()
            except (RedisError, OSError, TimeoutError, ValueError) as exc:
                log.warning("Redis read cache unavailable (%s); reading every record from Redis", _reason(exc))
            self._drop()
            if not self._closed:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _watch(self) -> None:
        """Return once the feed is dropped or stops answering its heartbeat."""
        down = self._down
        while self._feed is not None and self._feed.alive():
            try:
                async with asyncio.timeout(self._HEARTBEAT):
                    await down.wait()
                return
            except TimeoutError:
                continue

    async def _open(self) -> None:
        self._down = asyncio.Event()
        feed_connection = self._pool.make_connection()
        await feed_connection.connect()
        writer = getattr(feed_connection, "_writer", None)
        if writer is None:
            raise ValueError("this redis-py connection exposes no transport")
        feed = self._feed = _Feed(self, feed_connection, writer.transport)
        client_id = await feed.start()
        reader = self._pool.make_connection()
        await reader.connect()
        self._reader = reader
        await reader.send_command("CLIENT", "TRACKING", "ON", "REDIRECT", client_id)
        await reader.read_response()
        poll = select.poll()
        poll.register(feed.fileno(), select.POLLIN | select.POLLPRI)
        self._poll = poll
        self._values.clear()
        self._live = True

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._drop()


class _Feed(asyncio.Protocol):
    """The invalidation connection, taken over from redis-py after its handshake (AUTH, HELLO,
    TLS): RESP is parsed in ``data_received`` itself, so an announced change is applied before
    any other task runs."""

    def __init__(self, cache: _ReadCache, connection: AbstractConnection, transport: asyncio.BaseTransport) -> None:
        self.buffer = bytearray()
        self._cache = cache
        self._announcements = cache.announcements
        self._connection = connection  # held: redis-py closes the socket when its connection is collected
        self._transport = transport
        self._replies: asyncio.Queue[Any] = asyncio.Queue()
        self._heard = True
        self._lost = False
        transport.set_protocol(self)

    def fileno(self) -> int:
        sock = self._transport.get_extra_info("socket")
        if sock is None:
            raise ValueError("the invalidation connection has no socket")
        return int(sock.fileno())

    async def start(self) -> int:
        """CLIENT ID, then SUBSCRIBE to the invalidation channel (and the announcement channel,
        if any); the id for REDIRECT."""
        self._send(b"CLIENT", b"ID")
        client_id = await self._replies.get()
        channels = [_INVALIDATE_CHANNEL, *([self._announcements[0]] if self._announcements else [])]
        self._send(b"SUBSCRIBE", *channels)
        for _ in channels:
            confirmed = await self._replies.get()
            if not (isinstance(confirmed, list) and confirmed[:1] == [b"subscribe"]):
                raise RedisConnectionError("unexpected reply while subscribing to Redis invalidations")
        if not isinstance(client_id, int):
            raise RedisConnectionError("unexpected reply while subscribing to Redis invalidations")
        return client_id

    def alive(self) -> bool:
        """False once closed, or when the last PING got no answer; sends the next PING."""
        if self._lost or not self._heard:
            return False
        self._heard = False
        self._send(b"PING")
        return True

    def close(self) -> None:
        self._lost = True
        self._transport.close()

    def _send(self, *words: bytes) -> None:
        self._transport.write(_pack(words))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self._heard = True
        self.buffer += data
        position = 0
        try:
            while position < len(self.buffer):
                value, position = _parse_resp(self.buffer, position)
                self._dispatch(value)
        except _Incomplete:
            pass
        except (ValueError, IndexError):
            self._cache._drop()
            return
        del self.buffer[:position]

    def _dispatch(self, value: Any) -> None:
        if isinstance(value, list) and value:
            if value[0] == b"invalidate" and len(value) == 2:  # RESP3 push
                self._cache.invalidate(value[1])
                return
            if value[0] == b"message" and len(value) == 3:
                if value[1] == _INVALIDATE_CHANNEL:
                    self._cache.invalidate(value[2])
                    return
                if self._announcements and value[1] == self._announcements[0]:
                    self._announcements[1](value[2])  # applied before any other task runs
                    return
            if value[0] in (b"pong", b"PONG"):
                return
        if value in (b"PONG", b"pong"):
            return
        if isinstance(value, RedisError):
            self._cache._drop()
            return
        self._replies.put_nowait(value)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._cache._feed is self:
            self._cache._drop()


class _Pipe:
    """One connection the per-call scripts share: requests of all tasks that ran in a loop
    iteration go out in one send, and replies are matched in order as they arrive. redis-py
    takes a pooled connection, a send and a Python-level parse per command, which on the hot
    path cost more than the work Redis does. Never retries: a late reply is discarded, so a
    script whose answer was merely late is not run twice. Each request's deadline is kept by
    the connection itself (``_Link``), not by a timer per request."""

    def __init__(self, pool: ConnectionPool, timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout
        self._link: _Link | None = None
        self._lock = asyncio.Lock()

    async def request(self, command: bytes) -> Any:
        """The reply to one packed command; TimeoutError once the deadline passes (connecting included)."""
        link = self._link
        if link is None or link.lost:
            async with asyncio.timeout(self._timeout):
                link = await self._connect()
        reply = await link.request(command)
        if isinstance(reply, RedisError):
            raise reply
        return reply

    def enqueue(self, command: bytes) -> asyncio.Future[Any] | None:
        """Queue a request on the open connection without waiting for its reply. It goes out with
        the other requests of this loop iteration (one send, off the path of the call that made it:
        that call is by then waiting on its upstream), ahead of every later request on this
        connection, and before the upstream's answer to that call can be read, so before its
        client can make a next call anywhere. None when no connection is open (use ``request``)."""
        link = self._link
        if link is None or link.lost:
            return None
        return link.request(command)

    async def _connect(self) -> _Link:
        async with self._lock:
            if self._link is not None and not self._link.lost:
                return self._link
            connection = self._pool.make_connection()
            await connection.connect()
            self._link = _Link(connection, self._timeout)
            return self._link

    def close(self) -> None:
        if self._link is not None:
            self._link.lose(RedisConnectionError("the store is closed"))


class _Link(asyncio.Protocol):
    """One connection of ``_Pipe``, taken over from redis-py after its handshake (AUTH, HELLO, TLS).

    Replies come in request order, so the oldest unanswered request has the earliest deadline:
    one watchdog timer, armed while replies are owed, fails each request whose deadline passed
    with ``TimeoutError`` (its reply, if it comes, is skipped) and drops the connection once Redis
    has said nothing for a whole deadline (a half-open socket would otherwise hold every later
    call too)."""

    _MAX_WAITING = 10_000  # replies owed on an unanswering connection before it is dropped

    def __init__(self, connection: AbstractConnection, timeout: float) -> None:
        writer = getattr(connection, "_writer", None)
        if writer is None:
            raise RedisConnectionError("this redis-py connection exposes no transport")
        self.lost = False
        self._connection = connection  # held: redis-py closes the socket when it is collected
        self._transport: asyncio.Transport = writer.transport
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._deadlines: deque[float] = deque()  # of the requests in _waiting, in the same order
        self._timeout = timeout
        self._watchdog: asyncio.TimerHandle | None = None
        self._out: list[bytes] = []
        self._buffer = bytearray()
        self._heard = asyncio.get_running_loop().time()
        self._transport.set_protocol(self)

    def request(self, command: bytes) -> asyncio.Future[Any]:
        if len(self._waiting) >= self._MAX_WAITING:
            self.lose(RedisConnectionError("Redis owes too many replies on the shared connection"))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self.lost:
            future.set_exception(RedisConnectionError("Connection closed by server."))
            return future
        now = loop.time()
        if not self._waiting:
            self._heard = now  # silence is counted from the oldest reply owed
        self._waiting.append(future)
        self._deadlines.append(now + self._timeout)
        if self._watchdog is None:
            self._watchdog = loop.call_at(now + self._timeout, self._watch)
        if not self._out:
            loop.call_soon(self.flush)
        self._out.append(command)
        return future

    def flush(self) -> None:
        """Send what this loop iteration asked for (``lose`` already failed it if the connection went)."""
        out, self._out = self._out, []
        if out and not self.lost:
            self._transport.write(b"".join(out))

    def data_received(self, data: bytes) -> None:
        self._heard = asyncio.get_running_loop().time()
        self._buffer += data
        position = 0
        try:
            while position < len(self._buffer):
                value, position = _parse_resp(self._buffer, position)
                if not self._waiting:
                    raise ValueError("a reply nobody asked for")
                future = self._waiting.popleft()
                self._deadlines.popleft()
                if not future.done():  # the reply to a caller whose deadline passed is dropped
                    future.set_result(value)
        except _Incomplete:
            pass
        except (ValueError, IndexError) as exc:
            self.lose(RedisConnectionError(f"unreadable reply from Redis: {exc}"))
            return
        del self._buffer[:position]

    def _watch(self) -> None:
        """Fail the requests whose deadline passed; drop the connection if Redis fell silent."""
        self._watchdog = None
        if self.lost or not self._waiting:
            return
        now = asyncio.get_running_loop().time()
        next_check = self._heard + self._timeout  # when silence drops the connection
        for future, deadline in zip(self._waiting, self._deadlines, strict=True):
            if deadline > now:
                next_check = min(next_check, deadline)
                break
            if not future.done():
                future.set_exception(TimeoutError())
        if now >= self._heard + self._timeout:
            self.lose(RedisConnectionError("no reply from Redis within the deadline; connection dropped"))
            return
        self._watchdog = asyncio.get_running_loop().call_at(next_check, self._watch)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lose(RedisConnectionError("Connection closed by server." if exc is None else str(exc)))

    def lose(self, error: RedisError) -> None:
        """Fail every waiting request; the pipe's next request connects again."""
        self.lost = True
        self._transport.close()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._deadlines.clear()
        waiting, self._waiting = self._waiting, deque()
        for future in waiting:
            if not future.done():
                future.set_exception(error)
        self._out.clear()
        self._buffer.clear()


def _pack(words: Sequence[str | bytes | int]) -> bytes:
    """One RESP command."""
    return b"*%d\r\n" % len(words) + _bulk(words)


def _bulk(words: Sequence[str | bytes | int]) -> bytes:
    """The words of a RESP command, without the array's header. ASCII text only (every per-call
    script's arguments) is formatted as text and encoded once, rather than word by word."""
    text = True
    for word in words:
        if type(word) is not str:
            text = False
            break
    if text:
        command = "".join([f"${len(word)}\r\n{word}\r\n" for word in words])  # type: ignore[arg-type]
        if command.isascii():
            return command.encode()
    parts = []
    for word in words:
        data = word if isinstance(word, bytes) else str(word).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Incomplete(Exception):
    """The reply has not fully arrived yet."""


def _parse_resp(buf: bytearray, pos: int) -> tuple[Any, int]:
    """One RESP2/RESP3 value of ``buf`` at ``pos`` and the position after it."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, line, pos = buf[pos], bytes(buf[pos + 1 : end]), end + 2
    if kind in b"$=!":  # bulk strings
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            raise _Incomplete
        return bytes(buf[pos : pos + size]), pos + size + 2
    if kind in b"*>~%|":  # arrays, pushes, sets, maps, attributes
        count = int(line)
        if count < 0:
            return None, pos
        items: list[Any] = []
        for _ in range(count * 2 if kind in b"%|" else count):
            item, pos = _parse_resp(buf, pos)
            items.append(item)
        return _parse_resp(buf, pos) if kind == ord("|") else (items, pos)
    if kind == ord(":"):
        return int(line), pos
    if kind == ord("_"):
        return None, pos
    if kind == ord("-"):
        return ResponseError(line.decode("utf-8", "replace")), pos
    return line, pos


class _Cluster(RedisCluster):
    """RedisCluster that, like the standalone client here, never re-sends a command after a timeout."""

    ERRORS_ALLOW_RETRY = tuple(e for e in RedisCluster.ERRORS_ALLOW_RETRY if e is not RedisTimeoutError)


class RedisStore:
    """``proxy.state.base.Store`` on Redis.

    ``url`` is one of ``redis://``, ``rediss://``, ``unix://`` (as redis-py reads them),
    ``redis+sentinel://[[user]:pw@]host:port[,host:port]/service_name[/db]`` (the password
    authenticates to the master) or ``redis+cluster://[[user]:pw@]host:port[,host:port]``.
    ``timeout`` is each operation's deadline: waiting for a slot, connecting, reconnect
    retries and the reply together; ``max_connections`` the requests in flight at once (more
    wait for a slot, within the deadline). One second: a quarter of one was seen to fail calls
    on a loaded host while Redis itself was healthy.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 1.0,
        prefix: str = "wicket",
        max_connections: int = 32,
        activity_ttl: float = ACTIVITY_TTL,
        window_cap: int = WINDOW_CAP,
    ) -> None:
        if not timeout > 0:
            raise ValueError("the Redis timeout must be positive")
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError("the Redis key prefix must be non-empty and free of braces (they mark hash tags)")
        if max_connections < 1 or window_cap < 1:
            raise ValueError("max_connections and window_cap must be at least 1")
        self._prefix = prefix
        self._activity_ttl = activity_ttl
        self._cap = window_cap
        self._deadline = timeout
        self._slots = asyncio.Semaphore(max_connections)
        self._sentinel: Sentinel | None = None
        self._client: Redis | RedisCluster = self._connect(url, timeout, max_connections + 8)
        # Sentinel and Cluster read through: after a failover or a slot move the tracking
        # connection could be left on a node that no longer sees the writes.
        self._cache: _ReadCache | None = None
        self._pipe: _Pipe | None = None
        self._verdict_script_known = False  # until one note_verdict has run awaited (loading the script)
        self._keys: dict[str, tuple[str, ...]] = {}  # session id -> its activity keys
        self._heads: dict[tuple[str, str, tuple[str, ...]], bytes] = {}  # see _command
        self._revocations_key = f"{prefix}:revocations"  # a set of "kind\0id", and the channel announcing them
        self._revocation_listeners: list[Callable[[str, str], None]] = []
        if isinstance(self._client, Redis) and self._sentinel is None:
            # The cache's feed also follows the revocation channel: an announcement is enforced as
            # its bytes are read, not one event-loop turn later in the pub/sub listener's task
            # (which stays: it catches up after a reconnect, and delivers again harmlessly).
            announcements = (self._revocations_key.encode(), self._announced)
            self._cache = _ReadCache(self._client.connection_pool, timeout, announcements)
            self._pipe = _Pipe(self._client.connection_pool, timeout)
        self._note_call = self._client.register_script(NOTE_CALL)
        self._note_verdict = self._client.register_script(NOTE_VERDICT)
        self._take = self._client.register_script(TAKE)
        self._compare_and_set = self._client.register_script(COMPARE_AND_SET)
        self._index_add = self._client.register_script(INDEX_ADD)
        self._announce_if_present = self._client.register_script(ANNOUNCE_IF_PRESENT)
        self._listener: asyncio.Task[None] | None = None
        self._closed = False

    def _connect(self, url: str, timeout: float, pool_size: int) -> Redis | RedisCluster:
        """A lazily connecting client for ``url``; nothing touches the network here."""
        # No socket timeout: the operation deadline (``_run``) is the one timeout layer, and
        # cancelling a read there makes redis-py drop that connection, so no late reply is ever
        # taken for another command's. Connecting keeps its own bound (a refused connect fails at once).
        options: dict[str, Any] = {
            "socket_timeout": None,
            "socket_connect_timeout": timeout,
            "retry": Retry(_BACKOFF, _RETRIES, supported_errors=(RedisConnectionError,)),
            "max_connections": pool_size,
        }
        scheme = url.partition("://")[0].lower()
        if scheme in ("redis", "rediss", "unix"):
            return Redis.from_url(url, **options)
        if scheme == "redis+sentinel":
            nodes, username, password, path = _split_multi_host(url, default_port=26379)
            parts = [p for p in path.split("/") if p]
            if not parts or len(parts) > 2:
                raise ValueError(
                    "a Sentinel URL names the service: redis+sentinel://host:port[,host:port]/service[/db]"
                )
            db = _db_number(parts[1]) if len(parts) == 2 else 0
            socket_options = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
            self._sentinel = Sentinel(nodes, sentinel_kwargs=socket_options, **socket_options)
            return self._sentinel.master_for(
                unquote(parts[0]), redis_class=Redis, db=db, username=username, password=password, **options
            )
        if scheme == "redis+cluster":
            nodes, username, password, path = _split_multi_host(url, default_port=6379)
            if path.strip("/") not in ("", "0"):
                raise ValueError("Redis Cluster has only database 0: redis+cluster://host:port[,host:port]")
            return _Cluster(
                startup_nodes=[ClusterNode(host, port) for host, port in nodes],
                username=username,
                password=password,
                **options,
            )
        raise ValueError(
            f"unsupported Redis URL scheme {scheme + '://'!r}: use redis://, rediss://, unix://, "
            "redis+sentinel:// or redis+cluster://"
        )

    # -- key-value ------------------------------------------------------------------------

    async def get(self, key: str, *, cached: bool = False) -> bytes | None:
        cache = self._cache
        if cached and cache is not None and not self._closed:
            value = cache.lookup(key)
            if type(value) is _Pending:
                value = await self._run(value.wait)
            elif value is _MISS and cache.live:
                value = await self._run(lambda: cache.fetch(key))
            if value is not _MISS:
                return value  # type: ignore[no-any-return]
        value = await self._run(lambda: self._client.get(key))
        return value  # type: ignore[no-any-return]

    async def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self._forget(key)
        try:
            if ttl is None:
                await self._run(lambda: self._client.set(key, value))
            elif ttl <= 0:  # already expired, as the memory store would report it
                await self._run(lambda: self._client.delete(key))
            else:
                await self._run(lambda: self._client.set(key, value, px=max(1, math.ceil(ttl * 1000))))
        finally:
            self._forget(key)

    async def delete(self, key: str) -> None:
        self._forget(key)
        try:
            await self._run(lambda: self._client.delete(key))
        finally:
            self._forget(key)

    async def compare_and_set(self, key: str, expected: bytes | None, value: bytes, ttl: float | None = None) -> bool:
        ttl_ms = 0 if ttl is None else max(1, math.ceil(ttl * 1000))
        args = ("1" if expected is None else "0", expected or b"", value, ttl_ms)
        self._forget(key)
        try:
            written = await self._run(lambda: self._compare_and_set(keys=[key], args=args))
        finally:
            self._forget(key)
        return bool(written)

    def _forget(self, key: str) -> None:
        """Our own write: read ``key`` afresh next time, without waiting for Redis to announce it."""
        if self._cache is not None:
            self._cache.forget(key)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        client = self._client
        if isinstance(client, RedisCluster):
            values: list[bytes | None] = await self._run(lambda: client.mget_nonatomic(list(keys)))
        else:
            values = await self._run(lambda: client.mget(list(keys)))
        return list(values)

    async def index_add(self, index: str, member: str, score: float, limit: int) -> None:
        await self._run(lambda: self._index_add(keys=[index], args=(repr(score), member, max(limit, 1))))

    async def index_members(self, index: str, limit: int) -> list[str]:
        if limit < 1:
            return []
        members = await self._run(lambda: self._client.zrevrange(index, 0, limit - 1))
        return [_text(m) for m in members]

    # -- activity -------------------------------------------------------------------------

    async def note_call(self, session_id: str, action_key: str, effect: int, now: float, window: float) -> Activity:
        if effect not in (0, 1, 2, 3):
            raise ValueError(f"effect must be 0..3, not {effect!r}")
        if math.isnan(now) or math.isnan(window):
            raise ValueError("now and window must be numbers")
        window_from, minute_from = now - window, now - 60.0
        ttl = min(max(self._activity_ttl, window, 60.0), _MAX_TTL)
        args = (  # text: the shared connection writes an all-text command in one encode
            repr(now),
            repr(window_from),
            repr(minute_from),
            repr(min(window_from, minute_from)),
            str(effect),
            action_key,
            f"{int(ttl * 1000)}",
            f"{self._cap}",
        )
        reply = await self._run(
            lambda: self._script(self._note_call, self._activity_keys(session_id), args), pooled=self._pipe is None
        )
        calls, denials, writes, window_calls, minute_calls, r, m, d, a, repeats, history = reply
        return Activity(
            calls=int(calls),
            denials=int(denials),
            writes=int(writes),
            window_calls=int(window_calls),
            minute_calls=int(minute_calls),
            window_by_effect=(int(r), int(m), int(d), int(a)),
            repeat_denials=int(repeats),
            history=tuple(orjson.loads(history)) if history else (),
        )

    async def note_verdict(self, session_id: str, action_key: str, entry: str, denied: bool, wrote: bool) -> None:
        keys = self._activity_keys(session_id)[:3]
        args = (action_key, entry, "1" if denied else "0", _HISTORY, "1" if wrote else "0")
        if self._pipe is not None and self._verdict_script_known and not self._closed:
            # Queued on the connection every later note_call of this replica uses, so Redis applies it
            # before the next call of the session is counted, whether or not this call waits for the
            # reply; waiting would only put a round trip between the decision and the forward. If the
            # connection fails meanwhile, the verdict is lost as it would be if awaited, and the
            # session's next note_call, on the same connection, fails closed.
            sent = self._pipe.enqueue(self._command("EVALSHA", self._note_verdict.sha, keys, args))
            if sent is not None:
                sent.add_done_callback(functools.partial(self._verdict_settled, keys, args))
                return
        await self._run(lambda: self._script(self._note_verdict, keys, args))
        self._verdict_script_known = True  # Redis has the script now: later verdicts need not wait

    def _verdict_settled(self, keys: Sequence[str], args: Sequence[str | int], reply: asyncio.Future[Any]) -> None:
        """A verdict sent without waiting: resent with its script when Redis had lost the script (a
        restart or SCRIPT FLUSH; it may then land after a later call's count), logged when not recorded."""
        if reply.cancelled():
            return
        problem = reply.exception() or (reply.result() if isinstance(reply.result(), RedisError) else None)
        if problem is None:
            return
        if isinstance(problem, ResponseError) and str(problem).startswith("NOSCRIPT") and self._pipe is not None:
            again = self._pipe.enqueue(self._command("EVAL", self._note_verdict.script, keys, args))
            if again is not None:
                again.add_done_callback(_verdict_logged)
                return
        _verdict_logged(reply)

    async def take(self, session_id: str, name: str, limit: int, window: float, now: float) -> Taken:
        base = f"{self._prefix}:{{{_hash_tag(session_id)}}}:rl:{name}"
        ttl = max(1, math.ceil(window * 1000))
        args = (repr(now - window), repr(now), limit, ttl)
        allowed, oldest = await self._run(lambda: self._take(keys=[base, f"{base}:seq"], args=args))
        if int(allowed):
            return Taken(True)
        return Taken(False, max(float(oldest) + window - now, 0.0))

    async def activity_counts(self, session_ids: Sequence[str]) -> list[tuple[int, int, int]]:
        if not session_ids:
            return []

        async def counts() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            for session_id in session_ids:
                pipe.hmget(self._activity_keys(session_id)[0], "calls", "denials", "writes")
            return list(await pipe.execute())

        replies = await self._run(counts)
        return [(int(c or 0), int(d or 0), int(w or 0)) for c, d, w in replies]

    async def _script(self, script: Any, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        """A per-call script: on the shared connection (``_Pipe``) where there is one, loading it after NOSCRIPT."""
        pipe = self._pipe
        if pipe is None:
            return await script(keys=keys, args=args)
        try:
            return await pipe.request(self._command("EVALSHA", script.sha, keys, args))
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await pipe.request(_pack(("SCRIPT", "LOAD", script.script)))
        return await pipe.request(self._command("EVALSHA", script.sha, keys, args))

    def _command(self, verb: str, script: str, keys: Sequence[str], args: Sequence[str | int]) -> bytes:
        """``EVALSHA sha`` (or ``EVAL script``) with keys and arguments, packed; the part naming the
        script and the session's keys is packed once per session and script."""
        name = (verb, script, tuple(keys))
        head = self._heads.get(name)
        if head is None:
            head = _bulk((verb, script, f"{len(keys)}", *keys))
            if len(self._heads) >= _KEYS_KEPT:
                self._heads.clear()
            self._heads[name] = head
        return b"*%d\r\n" % (3 + len(keys) + len(args)) + head + _bulk(args)

    def _activity_keys(self, session_id: str) -> tuple[str, ...]:
        """act, denied, hist and the four per-effect windows, all on the session's Cluster slot
        (named once per session: every call of the session needs them twice)."""
        keys = self._keys.get(session_id)
        if keys is None:
            base = f"{self._prefix}:{{{_hash_tag(session_id)}}}"
            keys = (f"{base}:act", f"{base}:denied", f"{base}:hist", *(f"{base}:win:{e}" for e in range(4)))
            if len(self._keys) >= _KEYS_KEPT:
                self._keys.clear()
            self._keys[session_id] = keys
        return keys

    # -- lifecycle ------------------------------------------------------------------------

    async def ping(self) -> None:
        await self._run(self._client.ping)

    async def revoke(self, kind: str, ident: str) -> None:
        member = f"{kind}\0{ident}"
        await self._run(lambda: self._persist_and_announce(member))

    async def announce(self, kind: str, ident: str, *, if_present: str | None = None) -> bool:
        member = f"{kind}\0{ident}"
        if if_present is None:
            await self._run(lambda: self._client.publish(self._revocations_key, member))
            return True
        # One round trip: on a busy replica each await is a turn of its event loop.
        announced = await self._run(
            lambda: self._announce_if_present(keys=[if_present], args=[self._revocations_key, member])
        )
        return bool(announced)

    async def _persist_and_announce(self, member: str) -> None:
        """SADD and PUBLISH in one round trip (a transaction where the client supports one)."""
        if isinstance(self._client, RedisCluster):
            await self._client.sadd(self._revocations_key, member)
            await self._client.publish(self._revocations_key, member)
            return
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.sadd(self._revocations_key, member)
            pipe.publish(self._revocations_key, member)
            await pipe.execute()

    async def revocations(self) -> list[tuple[str, str]]:
        members = await self._run(lambda: self._client.smembers(self._revocations_key))
        return sorted(_revocation(m) for m in members)

    async def subscribe_revocations(self, callback: Callable[[str, str], None]) -> None:
        self._revocation_listeners.append(callback)
        if self._cache is not None:
            self._cache.start()  # its feed carries announcements the moment they arrive
        if self._listener is None and hasattr(self._client, "pubsub"):
            # Cluster clients have no async pub/sub here: replicas there rely on the periodic resync.
            self._listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        """Follow the revocation channel for the life of the store, reconnecting with backoff.

        Once (re)subscribed, the persisted set is delivered too: what was revoked while the feed
        was down is enforced at once, not at the next periodic resync.
        """
        backoff = 0.1
        while not self._closed:
            pubsub = self._client.pubsub()  # type: ignore[union-attr]
            try:
                await pubsub.subscribe(self._revocations_key)
                while not self._closed:
                    message = await pubsub.get_message(timeout=1.0)
                    what = None if message is None else message.get("type")
                    if what == "message":
                        self._deliver(*_revocation(message["data"]))
                    elif what == "subscribe":  # (re)subscribed, by us or by redis-py reconnecting on its own
                        backoff = 0.1
                        for revoked in await self.revocations():
                            self._deliver(*revoked)
            except (RedisError, OSError, TimeoutError, StoreUnavailable) as exc:
                log.warning("revocation feed interrupted (%s); reconnecting", _reason(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    await pubsub.aclose()

    def _announced(self, member: bytes) -> None:
        """A revocation announcement read on the cache's feed connection."""
        if self._revocation_listeners:
            self._deliver(*_revocation(member))

    def _deliver(self, kind: str, ident: str) -> None:
        for listener in self._revocation_listeners:
            try:
                listener(kind, ident)
            except Exception:  # a faulty listener must not end the feed for the others
                log.exception("a revocation listener failed on %s %s", kind, ident)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._cache is not None:
            await self._cache.close()
        if self._pipe is not None:
            self._pipe.close()
        try:
            await self._client.aclose()
            if self._sentinel is not None:
                await self._sentinel.aclose()
        except (RedisError, RedisClusterException, OSError):
            pass  # closing a connection to a Redis that is already gone

    async def _run(self, operation: Callable[[], Awaitable[T]], *, pooled: bool = True) -> T:
        """Run one Redis operation under the deadline and the in-flight bound; errors become
        StoreUnavailable. ``pooled=False``: an operation on the shared connection (``_Pipe``),
        which keeps each request's deadline and bounds what it owes by itself."""
        if self._closed:
            raise StoreUnavailable("Redis unavailable: the store is closed")
        try:
            if not pooled:  # the shared connection (_Pipe) keeps each request's deadline itself
                return await operation()
            async with asyncio.timeout(self._deadline):
                async with self._slots:
                    return await operation()
        except TimeoutError as exc:  # the whole deadline passed (asyncio.timeout)
            raise StoreUnavailable(f"Redis unavailable: Timeout: no answer within {self._deadline:g}s") from exc
        except (RedisError, RedisClusterException, OSError) as exc:
            raise StoreUnavailable(f"Redis unavailable: {_reason(exc)}") from exc


def _verdict_logged(reply: asyncio.Future[Any]) -> None:
    """Say so when Redis did not record a verdict that was sent without waiting."""
    if reply.cancelled():
        return
    problem = reply.exception() or (reply.result() if isinstance(reply.result(), RedisError) else None)
    if problem is not None:
        log.warning("Redis did not record a session's verdict (anomaly history): %s", _reason(problem))


def _hash_tag(session_id: str) -> str:
    """The session id as a Cluster hash tag; ids that cannot be one verbatim are hashed."""
    if session_id and "{" not in session_id and "}" not in session_id:
        return session_id
    return "h" + hashlib.sha256(session_id.encode()).hexdigest()[:32]


def _split_multi_host(url: str, *, default_port: int) -> tuple[list[tuple[str, int]], str | None, str | None, str]:
    """Split ``scheme://[[user]:pw@]host:port[,host:port][/path]`` (urllib rejects several hosts)."""
    rest = url.partition("://")[2]
    if "?" in rest or "#" in rest:
        raise ValueError("query parameters are not supported in Sentinel and Cluster URLs")
    netloc, slash, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        if not item:
            continue
        try:
            parsed = urlsplit("//" + item)
            port = parsed.port or default_port
        except ValueError:
            raise ValueError(f"bad host:port {item!r} in the Redis URL") from None
        if not parsed.hostname:
            raise ValueError(f"bad host:port {item!r} in the Redis URL")
        nodes.append((parsed.hostname, port))
    if not nodes:
        raise ValueError("the Redis URL names no host")
    return nodes, username, password, slash + path


def _db_number(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"the Redis database must be a number, not {text!r}")
    return int(text)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _reason(exc: BaseException) -> str:
    """A one-line reason for operators: the error's kind and its message, trimmed."""
    message = re.sub(r"\s+", " ", str(exc)).strip()
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _revocation(member: bytes | str) -> tuple[str, str]:
    kind, _, ident = _text(member).partition("\0")
    return kind, ident
