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
  (EVALSHA, reloaded on NOSCRIPT) that read and update a session's counters atomically.
  All of a session's keys share the hash tag ``{session_id}``, so each script touches a
  single Cluster slot.

Keys given to ``get``/``put``/``delete`` are used verbatim (callers name them, e.g.
``wicket:{ses_...}:session``); ``prefix`` names the activity keys the store itself owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
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
# Returns the activity *before* this call: calls, denials, writes, window calls, minute calls,
# window calls per effect (4), repeat denials of this action, history (oldest first).
NOTE_CALL = """
local cap = tonumber(ARGV[8])
local total = 0
for i = 4, 7 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[4])
  total = total + redis.call('ZCARD', KEYS[i])
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
  local n = redis.call('ZCOUNT', KEYS[i], window_from, '+inf')
  by_effect[i - 3] = n
  window_calls = window_calls + n
  minute_calls = minute_calls + redis.call('ZCOUNT', KEYS[i], minute_from, '+inf')
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
  redis.call('PEXPIRE', KEYS[i], ARGV[7])
end
return {calls, denials, writes, window_calls, minute_calls,
        by_effect[1], by_effect[2], by_effect[3], by_effect[4], repeats, history}
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
        self._note_call = self._client.register_script(NOTE_CALL)
        self._note_verdict = self._client.register_script(NOTE_VERDICT)
        self._take = self._client.register_script(TAKE)
        self._compare_and_set = self._client.register_script(COMPARE_AND_SET)
        self._index_add = self._client.register_script(INDEX_ADD)
        self._revocations_key = f"{prefix}:revocations"  # a set of "kind\0id", and the channel announcing them
        self._revocation_listeners: list[Callable[[str, str], None]] = []
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

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._run(lambda: self._client.get(key))
        return value

    async def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        if ttl is None:
            await self._run(lambda: self._client.set(key, value))
        elif ttl <= 0:  # already expired, as the memory store would report it
            await self._run(lambda: self._client.delete(key))
        else:
            await self._run(lambda: self._client.set(key, value, px=max(1, math.ceil(ttl * 1000))))

    async def delete(self, key: str) -> None:
        await self._run(lambda: self._client.delete(key))

    async def compare_and_set(self, key: str, expected: bytes | None, value: bytes, ttl: float | None = None) -> bool:
        ttl_ms = 0 if ttl is None else max(1, math.ceil(ttl * 1000))
        args = ("1" if expected is None else "0", expected or b"", value, ttl_ms)
        written = await self._run(lambda: self._compare_and_set(keys=[key], args=args))
        return bool(written)

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
        args = (
            repr(now),
            repr(window_from),
            repr(minute_from),
            repr(min(window_from, minute_from)),
            effect,
            action_key,
            int(ttl * 1000),
            self._cap,
        )
        reply = await self._run(lambda: self._note_call(keys=self._activity_keys(session_id), args=args))
        calls, denials, writes, window_calls, minute_calls, r, m, d, a, repeats, history = reply
        return Activity(
            calls=int(calls),
            denials=int(denials),
            writes=int(writes),
            window_calls=int(window_calls),
            minute_calls=int(minute_calls),
            window_by_effect=(int(r), int(m), int(d), int(a)),
            repeat_denials=int(repeats),
            history=tuple(_text(entry) for entry in history),
        )

    async def note_verdict(self, session_id: str, action_key: str, entry: str, denied: bool, wrote: bool) -> None:
        keys = self._activity_keys(session_id)[:3]
        args = (action_key, entry, "1" if denied else "0", HISTORY, "1" if wrote else "0")
        await self._run(lambda: self._note_verdict(keys=keys, args=args))

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

    def _activity_keys(self, session_id: str) -> list[str]:
        """act, denied, hist and the four per-effect windows, all on the session's Cluster slot."""
        base = f"{self._prefix}:{{{_hash_tag(session_id)}}}"
        return [f"{base}:act", f"{base}:denied", f"{base}:hist", *(f"{base}:win:{e}" for e in range(4))]

    # -- lifecycle ------------------------------------------------------------------------

    async def ping(self) -> None:
        await self._run(self._client.ping)

    async def revoke(self, kind: str, ident: str) -> None:
        member = f"{kind}\0{ident}"
        await self._run(lambda: self._persist_and_announce(member))

    async def announce(self, kind: str, ident: str) -> None:
        member = f"{kind}\0{ident}"
        await self._run(lambda: self._client.publish(self._revocations_key, member))

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
        if self._listener is None and hasattr(self._client, "pubsub"):
            # Cluster clients have no async pub/sub here: replicas there rely on the periodic resync.
            self._listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        """Follow the revocation channel for the life of the store, reconnecting with backoff."""
        backoff = 0.1
        while not self._closed:
            pubsub = self._client.pubsub()  # type: ignore[union-attr]
            try:
                await pubsub.subscribe(self._revocations_key)
                backoff = 0.1
                while not self._closed:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        kind, ident = _revocation(message["data"])
                        for listener in self._revocation_listeners:
                            listener(kind, ident)
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("revocation feed interrupted (%s); reconnecting", _reason(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    await pubsub.aclose()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        try:
            await self._client.aclose()
            if self._sentinel is not None:
                await self._sentinel.aclose()
        except (RedisError, RedisClusterException, OSError):
            pass  # closing a connection to a Redis that is already gone

    async def _run(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis operation under the deadline and the in-flight bound; errors become StoreUnavailable."""
        if self._closed:
            raise StoreUnavailable("Redis unavailable: the store is closed")
        try:
            async with asyncio.timeout(self._deadline):
                async with self._slots:
                    return await operation()
        except TimeoutError as exc:  # the whole deadline passed (asyncio.timeout)
            raise StoreUnavailable(f"Redis unavailable: Timeout: no answer within {self._deadline:g}s") from exc
        except (RedisError, RedisClusterException, OSError) as exc:
            raise StoreUnavailable(f"Redis unavailable: {_reason(exc)}") from exc


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
