"""RedisStore against real Redis: parity with MemoryStore, atomicity, faults, Cluster, Sentinel, tampering.

Tests on the shared Redis use a unique key prefix and delete only their own keys, so they can
run next to other suites on the same server. Tests that kill Redis or need a Cluster start
their own servers (tests/redis_support.py), which are always killed at teardown.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis
from redis.asyncio.connection import Connection
from redis.crc import key_slot

from proxy.core.action import Activity
from proxy.core.sessions import RecordSigner, SessionIntegrityError, SessionManager
from proxy.state import memory
from proxy.state.base import StoreUnavailable
from proxy.state.memory import MemoryStore
from proxy.state.redis import RedisStore, _Incomplete, _pack, _parse_resp, _split_multi_host
from tests.redis_support import RedisServer, cluster_url, free_port, running_redis
from tests.waiting import eventually

T0 = 1_700_000_000.0  # a realistic wall clock, so float precision is exercised as in production


def unique_prefix() -> str:
    return f"wtest-{uuid.uuid4().hex[:12]}"


def drop_keys(url: str, prefix: str) -> None:
    """Delete this test's keys (and only those) from the shared server."""
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


StoreFactory = Callable[..., RedisStore]


@pytest.fixture
async def make_store(redis_url: str) -> AsyncIterator[StoreFactory]:
    """RedisStores on the shared server, each with its own prefix; their keys are removed afterwards."""
    made: list[RedisStore] = []
    prefixes: list[str] = []

    def factory(**options: object) -> RedisStore:
        options.setdefault("prefix", unique_prefix())
        prefixes.append(str(options["prefix"]))
        store = RedisStore(redis_url, **options)  # type: ignore[arg-type]
        made.append(store)
        return store

    yield factory
    for store in made:
        await store.close()
    for prefix in prefixes:
        drop_keys(redis_url, prefix)


# -- parity with the memory store ---------------------------------------------------------

# ("call", session, action, effect, seconds since T0, window) | ("verdict", session, action, denied[, wrote])
Op = tuple[object, ...]


async def play(store: MemoryStore | RedisStore, ops: list[Op]) -> list[Activity]:
    out: list[Activity] = []
    for op in ops:
        if op[0] == "call":
            _, sid, action, effect, at, window = op
            out.append(await store.note_call(str(sid), str(action), int(effect), T0 + float(at), float(window)))  # type: ignore[arg-type]
        else:
            sid, action, denied = op[1:4]
            wrote = bool(op[4]) if len(op) > 4 else not denied
            entry = f"{action}={'deny' if denied else 'allow'}"
            await store.note_verdict(str(sid), str(action), entry, bool(denied), wrote)
    return out


def scripted_ops() -> list[Op]:
    """Window expiry (including the exact boundary), minute counts, repeat denials, history trimming."""
    ops: list[Op] = [("verdict", "s1", "t:a", True)]  # before any call: recorded nowhere
    at = 0.0
    for i in range(25):  # more verdicts than the history keeps
        effect = i % 4
        ops.append(("call", "s1", f"t:{'ab'[i % 2]}", effect, at, 10.0))
        ops.append(("verdict", "s1", f"t:{'ab'[i % 2]}", i % 3 == 0))
        at += 0.25
    ops += [("call", "s1", "t:a", 0, at, 10.0)] * 3  # three calls at the same instant
    ops.append(("call", "s1", "t:a", 1, 10.0, 10.0))  # the call at exactly t=0 leaves the window (<= horizon)
    ops.append(("call", "s1", "t:a", 2, 30.0, 10.0))  # window empty, minute still full
    ops.append(("call", "s1", "t:b", 3, 60.0, 10.0))  # first calls at exactly now - 60 leave the minute
    ops.append(("call", "s1", "t:b", 0, 95.0, 10.0))
    ops.append(("verdict", "s1", "t:b", True))
    ops.append(("call", "s1", "t:b", 0, 95.5, 10.0))
    # A second session with a window longer than a minute.
    for i, at in enumerate((0.0, 20.0, 40.0, 70.0, 100.0, 130.0, 190.0, 250.0)):
        ops.append(("call", "s2", "t:w", 3 - i % 4, at, 120.0))
        ops.append(("verdict", "s2", "t:w", True))
    return ops


def random_ops(seed: int, count: int = 400) -> list[Op]:
    rng = random.Random(seed)
    windows = {"r1": 5.0, "r2": 10.0, "r3": 90.0}
    at = 0.0
    ops: list[Op] = []
    for _ in range(count):
        at += rng.choice((0.0, 0.0, 0.001, 0.3, 1.0, 4.9, 5.0, 10.0, 30.0, 61.0))
        sid = rng.choice(list(windows))
        action = rng.choice(("t:read", "t:write", "t:drop", "t:grant"))
        if rng.random() < 0.1:
            ops.append(("verdict", sid, action, rng.random() < 0.5))
            continue
        ops.append(("call", sid, action, rng.randrange(4), at, windows[sid]))
        if rng.random() < 0.9:
            ops.append(("verdict", sid, action, rng.random() < 0.4, rng.random() < 0.5))
    return ops


async def test_parity_with_memory_store_scripted(make_store: StoreFactory) -> None:
    ops = scripted_ops()
    expected = await play(MemoryStore(), ops)
    got = await play(make_store(), ops)
    assert got == expected
    # The scenario really reaches the cases it is about.
    assert any(len(a.history) == memory.HISTORY for a in expected)
    assert any(a.repeat_denials >= 3 for a in expected)
    assert any(a.window_calls == 0 and a.minute_calls > 0 for a in expected)
    assert any(a.window_calls > a.minute_calls for a in expected)


@pytest.mark.parametrize("cap", [None, 7])
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_parity_with_memory_store_random(
    make_store: StoreFactory, monkeypatch: pytest.MonkeyPatch, seed: int, cap: int | None
) -> None:
    if cap is not None:  # a small cap on remembered calls, in both stores
        monkeypatch.setattr(memory, "WINDOW_CAP", cap)
    ops = random_ops(seed)
    expected = await play(MemoryStore(), ops)
    got = await play(make_store(**({"window_cap": cap} if cap else {})), ops)
    assert got == expected
    if cap is not None:
        assert max(a.minute_calls for a in expected) == cap - 1


# -- key-value ------------------------------------------------------------------------------


async def test_get_put_delete_and_ttl(make_store: StoreFactory) -> None:
    store = make_store()
    key = f"{store._prefix}:kv:{{ses_1}}:session"
    assert await store.get(key) is None
    await store.put(key, b"\x00binary\xff")
    assert await store.get(key) == b"\x00binary\xff"
    await store.put(key, b"replaced", ttl=60)
    assert await store.get(key) == b"replaced"
    await store.delete(key)
    assert await store.get(key) is None
    await store.delete(key)  # deleting a missing key is fine

    await store.put(key, b"short", ttl=0.5)
    await store.put(key + ":gone", b"expired already", ttl=0)
    assert await store.get(key) == b"short"
    assert await store.get(key + ":gone") is None
    await asyncio.sleep(1.1)
    assert await store.get(key) is None
    await store.ping()


async def test_value_altered_inside_redis_is_returned_altered(make_store: StoreFactory, redis_url: str) -> None:
    """The store hands back what Redis holds; detecting the change is SessionManager's job."""
    store = make_store()
    key = f"{store._prefix}:record"
    await store.put(key, b'{"mode":"read-only"}', ttl=60)
    raw = redis.Redis.from_url(redis_url)
    try:
        raw.set(key, b'{"mode":"read-write"}', keepttl=True)
    finally:
        raw.close()
    assert await store.get(key) == b'{"mode":"read-write"}'


async def test_session_manager_detects_a_record_tampered_in_redis(redis_url: str) -> None:
    store = RedisStore(redis_url)
    sessions = SessionManager(store, RecordSigner(b"k" * 32))
    session = await sessions.create("agent-1", scope=["*"], mode="read-only", ttl_seconds=60)
    key = f"wicket:{{{session.session_id}}}:session"
    raw = redis.Redis.from_url(redis_url)
    try:
        assert await sessions.get(session.session_id) == session
        envelope = json.loads(raw.get(key))
        envelope["r"]["mode"] = "read-write"  # widen the session, keep the old signature
        raw.set(key, json.dumps(envelope).encode(), keepttl=True)
        with pytest.raises(SessionIntegrityError):
            await sessions.get(session.session_id)
    finally:
        raw.delete(key)
        raw.close()
        await store.close()


# -- the read cache --------------------------------------------------------------------------


async def cache_live(store: RedisStore) -> None:
    """Start the store's read cache (the first cached read does) and wait until its feed is up."""
    await store.get("warm-up", cached=True)
    await eventually(lambda: store._cache is not None and store._cache.live, "the read cache is up")


async def reads_eventually(read: Callable[[], Awaitable[bytes | None]], expected: bytes | None) -> None:
    """Redis announces a change just after acknowledging the writer: allow for the delivery."""

    async def arrived() -> bool:
        return await read() == expected

    await eventually(arrived, f"the read returns {expected!r}")


def gets_served(server: RedisServer) -> int:
    client = server.client()
    try:
        return int(client.info("commandstats").get("cmdstat_get", {}).get("calls", 0))
    finally:
        client.close()


async def test_cached_reads_stay_local_until_redis_announces_a_change(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url)
    raw = redis_server.client()
    key = "wicket:{ses_c}:session"
    read = lambda: store.get(key, cached=True)  # noqa: E731
    try:
        await store.put(key, b"v1", ttl=60)
        await cache_live(store)
        assert await read() == b"v1"
        before = gets_served(redis_server)
        assert [await read() for _ in range(20)] == [b"v1"] * 20
        assert gets_served(redis_server) == before  # served from the process
        raw.set(key, b"v2", keepttl=True)  # written by someone else: Redis names the key
        await reads_eventually(read, b"v2")
        raw.delete(key)
        await reads_eventually(read, None)
        raw.set(key, b"v3", px=50)  # expiry is a change too
        await reads_eventually(read, b"v3")
        await reads_eventually(read, None)
        raw.set(key, b"v4")
        await reads_eventually(read, b"v4")
        raw.flushall()
        await reads_eventually(read, None)
        await store.put(key, b"v5")  # our own writes are read back at once, without waiting
        assert await read() == b"v5"
        await store.delete(key)
        assert await read() is None
        assert await store.compare_and_set(key, None, b"v6")
        assert await read() == b"v6"
        # Concurrent misses share one GET, and every reader gets the value.
        raw.set(key, b"v7")
        await reads_eventually(read, b"v7")
        assert await asyncio.gather(*(read() for _ in range(50))) == [b"v7"] * 50
    finally:
        raw.close()
        await store.close()


async def test_the_read_cache_feed_applies_revocation_announcements_as_they_arrive(
    redis_server: RedisServer,
) -> None:
    # The cache's feed connection follows the revocation channel too: an announcement is delivered
    # while its bytes are read, even with the pub/sub listener (the catch-up path) stopped.
    store, announcer = RedisStore(redis_server.url), RedisStore(redis_server.url)
    heard: list[tuple[str, str]] = []
    try:
        await store.subscribe_revocations(lambda kind, ident: heard.append((kind, ident)))
        assert store._listener is not None
        store._listener.cancel()
        await cache_live(store)
        await announcer.announce("agent", "fast")
        await eventually(lambda: ("agent", "fast") in heard, "the feed delivered the announcement")
    finally:
        await store.close()
        await announcer.close()


async def test_read_cache_forgets_everything_when_its_feed_drops(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url)
    raw = redis_server.client()
    key = "wicket:{ses_d}:labels"
    try:
        await store.put(key, b"before")
        await cache_live(store)
        assert await store.get(key, cached=True) == b"before"
        assert store._cache is not None
        raw.client_kill_filter(_type="pubsub")  # the invalidation feed: nothing it missed may be served
        cache = store._cache
        await eventually(lambda: not cache.live, "the read cache noticed its feed dropped")
        raw.set(key, b"after")  # while no feed is up
        assert await store.get(key, cached=True) == b"after"
        await cache_live(store)
        assert await store.get(key, cached=True) == b"after"
        raw.set(key, b"later")
        await reads_eventually(lambda: store.get(key, cached=True), b"later")
    finally:
        raw.close()
        await store.close()


async def test_a_cached_session_tampered_in_redis_is_verified_again(redis_server: RedisServer) -> None:
    """A cached record is never trusted past Redis's announcement of a change: the next read after
    it loads the tampered record and its HMAC check fails."""
    store = RedisStore(redis_server.url)
    sessions = SessionManager(store, RecordSigner(b"k" * 32))
    raw = redis_server.client()
    try:
        session = await sessions.create("agent-1", scope=["*"], mode="read-only", ttl_seconds=60)
        await cache_live(store)
        assert await sessions.get(session.session_id) == session
        key = f"wicket:{{{session.session_id}}}:session"
        envelope = json.loads(raw.get(key))
        envelope["r"]["mode"] = "read-write"
        raw.set(key, json.dumps(envelope).encode(), keepttl=True)

        async def refused() -> bool:
            try:
                assert await sessions.get(session.session_id) == session  # the verified one, until then
            except SessionIntegrityError:
                return True
            return False

        await eventually(refused, "the tampered record is refused")
    finally:
        raw.close()
        await store.close()


async def test_sentinel_and_cluster_stores_read_through() -> None:
    """No read cache where a failover or a slot move could leave its connections on the wrong node."""
    sentinel = RedisStore("redis+sentinel://127.0.0.1:26379/mymaster")
    cluster = RedisStore("redis+cluster://127.0.0.1:7000")
    try:
        assert sentinel._cache is None and cluster._cache is None
    finally:
        await sentinel.close()
        await cluster.close()


# -- atomicity and layout -------------------------------------------------------------------


async def test_200_concurrent_note_calls_are_all_counted(make_store: StoreFactory) -> None:
    store = make_store()
    before = await asyncio.gather(
        *(store.note_call("ses_busy", "t:x", i % 4, T0 + i / 1000, 3600.0) for i in range(200))
    )
    # Each call saw a distinct predecessor count: the scripts ran one at a time, none lost.
    assert sorted(a.calls for a in before) == list(range(200))
    # Writes are counted with the verdict (an approval request or an approved call is not one).
    await asyncio.gather(*(store.note_verdict("ses_busy", "t:x", "t:x=allow", False, i % 4 > 0) for i in range(200)))
    after = await store.note_call("ses_busy", "t:x", 0, T0 + 1.0, 3600.0)
    assert after.calls == 200
    assert after.window_calls == 200
    assert after.window_by_effect == (50, 50, 50, 50)
    assert after.writes == 150

    key = f"{store._prefix}:kv"
    await store.put(key, b"shared")
    values = await asyncio.gather(*(store.get(key) for _ in range(200)))
    assert values == [b"shared"] * 200


async def test_session_keys_share_one_hash_tag_and_expire(make_store: StoreFactory, redis_url: str) -> None:
    store = make_store()
    for sid in ("ses_plain", "ses_{braced}", ""):
        await store.note_call(sid, "t:x", 2, T0, 10.0)
        await store.note_verdict(sid, "t:x", "t:x=deny", True, True)
        again = await store.note_call(sid, "t:x", 0, T0 + 1, 10.0)
        assert (again.calls, again.denials, again.repeat_denials, again.history) == (1, 1, 1, ("t:x=deny",))
    raw = redis.Redis.from_url(redis_url)
    try:
        keys = list(raw.scan_iter(match=f"{store._prefix}:*", count=1000))
        by_tag: dict[int, set[bytes]] = {}
        for key in keys:
            assert 0 < raw.pttl(key) <= memory_day_ms(), key  # abandoned sessions expire
            by_tag.setdefault(key_slot(key), set()).add(key.rsplit(b"}", 1)[0])
        # One slot per session, and every key in that slot carries the same tag.
        assert len(by_tag) == 3
        assert all(len(tags) == 1 for tags in by_tag.values())
    finally:
        raw.close()


def memory_day_ms() -> int:
    return 24 * 3600 * 1000


# -- faults ---------------------------------------------------------------------------------


async def test_redis_killed_mid_run_fails_closed_then_recovers(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, timeout=0.25)
    try:
        await store.put("k", b"v")
        assert (await store.note_call("ses_k", "t:x", 1, T0, 10.0)).calls == 0
        redis_server.kill()
        operations = {
            "get": lambda: store.get("k"),
            "put": lambda: store.put("k", b"w", ttl=5),
            "delete": lambda: store.delete("k"),
            "note_call": lambda: store.note_call("ses_k", "t:x", 1, T0 + 1, 10.0),
            "note_verdict": lambda: store.note_verdict("ses_k", "t:x", "t:x=allow", False, False),
            "ping": store.ping,
        }
        for operation in operations.values():
            with pytest.raises(StoreUnavailable, match=r"^Redis unavailable: "):
                await operation()
        redis_server.start()  # same port, empty (nothing is persisted): reconnect and reload the scripts
        await store.ping()
        assert await store.get("k") is None
        assert (await store.note_call("ses_k", "t:x", 1, T0 + 2, 10.0)).calls == 0
        await store.note_verdict("ses_k", "t:x", "t:x=allow", False, False)
        assert (await store.note_call("ses_k", "t:x", 1, T0 + 3, 10.0)).history == ("t:x=allow",)
    finally:
        await store.close()


async def test_unreachable_redis_raises_store_unavailable() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}", timeout=0.25)
    try:
        with pytest.raises(StoreUnavailable, match=r"^Redis unavailable: "):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.note_call("ses_x", "t:x", 0, T0, 10.0)
    finally:
        await store.close()


async def test_slow_redis_times_out_instead_of_hanging(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, timeout=0.25)
    pauser = redis_server.client()
    try:
        await store.put("k", b"v")
        pauser.execute_command("CLIENT", "PAUSE", "1500", "ALL")
        with pytest.raises(StoreUnavailable, match="Timeout"):
            await store.get("k")
        with pytest.raises(StoreUnavailable):
            await store.note_call("ses_slow", "t:x", 0, T0, 10.0)
        deadline = time.monotonic() + 5
        while True:  # once the pause ends the same store answers again
            try:
                assert await store.get("k") == b"v"
                break
            except StoreUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
    finally:
        pauser.close()
        await store.close()


@pytest.mark.parametrize(
    "words",
    [
        ("GET", "wicket:{ses_a}:session"),
        ("EVALSHA", "a" * 40, "7", "k1", "k2", "1733300000.123", "-0.5", "2", "tools/call:é", "60000", "500"),
        ("PUBLISH", "wicket:revocations", "session\0ses_x"),
        (b"SUBSCRIBE", b"__redis__:invalidate", b"wicket:revocations"),
        ("SET", "k", b"\x00\xff", 5, ""),
        ("ECHO", "ümlaut", "emoji \U0001f600", "tab\tand\r\nnewline"),
    ],
)
def test_the_shared_connection_writes_commands_as_redis_py_does(words: tuple[str | bytes | int, ...]) -> None:
    assert _pack(words) == b"".join(Connection().pack_command(*words))


def test_a_script_call_is_packed_like_any_command() -> None:
    # The part naming the script and the session's keys is packed once per session and reused.
    store = RedisStore("redis://127.0.0.1:1/0")  # nothing connects here
    keys = ("wicket:{ses_p}:act", "wicket:{ses_p}:denied", "wicket:{ses_p}:hist")
    for args in (("tools/call:x", "tools/call:x=allow", "0", "20", "1"), ("é", "", "1", "20", "0")):
        for _ in range(2):
            expected = _pack(("EVALSHA", "f" * 40, "3", *keys, *args))
            assert store._command("EVALSHA", "f" * 40, keys, args) == expected


def test_replies_are_parsed_only_once_complete() -> None:
    reply = b"*5\r\n:1\r\n$3\r\nabc\r\n:-22\r\n$-1\r\n*2\r\n:7\r\n$0\r\n\r\n"
    for cut in range(len(reply)):
        with pytest.raises(_Incomplete):
            _parse_resp(bytearray(reply[:cut]), 0)
    assert _parse_resp(bytearray(reply + b":9\r\n"), 0) == ([1, b"abc", -22, None, [7, b""]], len(reply))


async def test_a_late_reply_is_never_taken_for_the_next_calls(redis_server: RedisServer) -> None:
    """Calls share one connection: the reply a timed-out call never read is skipped, not handed on."""
    store = RedisStore(redis_server.url, timeout=0.25)
    pauser = redis_server.client()
    try:
        assert (await store.note_call("ses_late", "t:x", 0, T0, 10.0)).calls == 0
        pauser.execute_command("CLIENT", "PAUSE", "600", "ALL")
        with pytest.raises(StoreUnavailable, match="Timeout"):
            await store.note_call("ses_late", "t:x", 0, T0 + 1, 10.0)  # Redis may still run it after the pause
        answers: list[Activity] = []

        async def reconnected() -> bool:
            try:
                answers.append(await store.note_call("ses_late", "t:y", 1, T0 + 2, 10.0))
            except StoreUnavailable:
                return False
            return True

        await eventually(reconnected, "the store answers again after the pause")
        activity = answers[0]
        assert activity.calls >= 1 and activity.window_calls == activity.calls
        counted = await asyncio.gather(*(store.note_call("ses_late", "t:z", 2, T0 + 3, 10.0) for _ in range(50)))
        assert sorted(a.calls for a in counted) == list(range(activity.calls + 1, activity.calls + 51))
        assert (await store.activity_counts(["ses_late"]))[0][0] == activity.calls + 51
    finally:
        pauser.close()
        await store.close()


async def test_closed_store_refuses() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}")
    await store.close()
    await store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.get("k")


# -- deployments ------------------------------------------------------------------------------


async def test_cluster_spreads_sessions_and_keeps_each_on_one_slot(redis_cluster: list[RedisServer]) -> None:
    prefix = unique_prefix()
    store = RedisStore(cluster_url(redis_cluster[:2]), prefix=prefix)  # the third node is discovered
    sessions = [f"ses_{i:02d}" for i in range(12)]
    try:
        await store.ping()
        for sid in sessions:
            await store.note_call(sid, "t:x", 1, T0, 10.0)
            await store.note_verdict(sid, "t:x", "t:x=deny", True, True)
            await store.put(f"{prefix}:{{{sid}}}:session", sid.encode(), ttl=60)
        for sid in sessions:
            activity = await store.note_call(sid, "t:x", 0, T0 + 1, 10.0)
            assert (activity.calls, activity.writes, activity.repeat_denials) == (1, 1, 1)
            assert await store.get(f"{prefix}:{{{sid}}}:session") == sid.encode()
        counted = await asyncio.gather(*(store.note_call("ses_00", "t:y", 0, T0 + 2, 10.0) for _ in range(50)))
        assert sorted(a.calls for a in counted) == list(range(2, 52))
        nodes_used = set()
        for sid in sessions:
            holders = []
            for server in redis_cluster:
                client = server.client()
                try:
                    keys = client.keys(f"{prefix}:{{{sid}}}:*")
                finally:
                    client.close()
                if keys:
                    holders.append(server.port)
                    assert len({key_slot(k) for k in keys}) == 1
                    assert len(keys) >= 5  # act, denied, hist, a window, the session record
            assert len(holders) == 1, f"{sid} is spread over {holders}"
            nodes_used.add(holders[0])
        assert len(nodes_used) >= 2
    finally:
        await store.close()


async def test_sentinel_url_reaches_the_master(redis_sentinel: tuple[RedisServer, RedisServer]) -> None:
    master, sentinel = redis_sentinel
    prefix = unique_prefix()
    store = RedisStore(f"redis+sentinel://127.0.0.1:{sentinel.port}/wicketmaster/0", prefix=prefix)
    raw = master.client()
    try:
        await store.put(f"{prefix}:k", b"via sentinel", ttl=60)
        assert raw.get(f"{prefix}:k") == b"via sentinel"
        await store.note_call("ses_s", "t:x", 3, T0, 10.0)
        assert (await store.note_call("ses_s", "t:x", 0, T0 + 1, 10.0)).window_by_effect == (0, 0, 0, 1)
        await store.ping()
    finally:
        raw.close()
        await store.close()


async def test_unix_socket_url(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    with running_redis(tmp_path, extra=("--unixsocket", str(sock), "--unixsocketperm", "700")):
        store = RedisStore(f"unix://{sock}")
        try:
            await store.put("k", b"over a socket")
            assert await store.get("k") == b"over a socket"
        finally:
            await store.close()


async def test_multi_host_urls_are_parsed() -> None:
    nodes, user, password, path = _split_multi_host(
        "redis+sentinel://:s%40cret@10.0.0.1:26380,sentinel-b,[::1]:26381/mymaster/2", default_port=26379
    )
    assert nodes == [("10.0.0.1", 26380), ("sentinel-b", 26379), ("::1", 26381)]
    assert (user, password, path) == (None, "s@cret", "/mymaster/2")
    sentinel = RedisStore("redis+sentinel://app:pw@127.0.0.1:26379/mymaster/2")  # nothing connects yet
    cluster = RedisStore("redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
    try:
        pool = sentinel._client.connection_pool
        assert (pool.connection_kwargs["db"], pool.connection_kwargs["username"]) == (2, "app")
        assert (pool.connection_kwargs["password"], pool.service_name) == ("pw", "mymaster")
        assert [(n.host, n.port) for n in cluster._client.startup_nodes] == [("127.0.0.1", 7000), ("127.0.0.1", 7001)]
    finally:
        await sentinel.close()
        await cluster.close()


@pytest.mark.parametrize(
    "url",
    [
        "memcached://127.0.0.1:11211",
        "redis+sentinel://127.0.0.1:26379",  # no service name
        "redis+sentinel://127.0.0.1:26379/mymaster/zero",
        "redis+cluster://127.0.0.1:7000/3",  # Cluster has only db 0
        "redis+cluster:///",  # no host
        "redis+cluster://127.0.0.1:notaport",
        "redis+cluster://127.0.0.1:7000?ssl=true",
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        RedisStore(url)


# -- sliding-window rate limits -----------------------------------------------------------


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_rate_limit_window(backend: str, make_store: StoreFactory) -> None:
    store = MemoryStore() if backend == "memory" else make_store()
    t0 = 1_000_000.0
    results = [await store.take("ses_rl", "sampling", 3, 300.0, t0 + i) for i in range(5)]
    assert [bool(r) for r in results] == [True, True, True, False, False]
    # Refused at t0+3 and t0+4: a slot frees when the hit at t0 leaves the window at t0+300.
    assert [r.retry_after for r in results[3:]] == [pytest.approx(297.0), pytest.approx(296.0)]
    assert await store.take("ses_other", "sampling", 3, 300.0, t0 + 5), "limits are per session"
    assert await store.take("ses_rl", "sampling", 3, 300.0, t0 + 300.5), "the first hit left the window"
    assert not await store.take("ses_rl", "sampling", 3, 300.0, t0 + 300.6)


async def test_rate_limit_holds_across_replicas(make_store: StoreFactory) -> None:
    """Two stores (two replicas) on one Redis hitting one limit concurrently: exactly `limit` pass."""
    prefix = unique_prefix()
    a, b = make_store(prefix=prefix, max_connections=4), make_store(prefix=prefix, max_connections=4)
    await asyncio.gather(a.ping(), b.ping())  # connect first: the burst below is about the limit, not connects
    now = 2_000_000.0
    outcomes = await asyncio.gather(
        *((a if i % 2 else b).take("ses_shared", "sampling", 10, 300.0, now) for i in range(40))
    )
    assert [bool(o) for o in outcomes].count(True) == 10


async def test_a_verdict_is_sent_without_waiting_and_counted_by_the_next_call(
    make_store: StoreFactory, redis_url: str
) -> None:
    """note_verdict puts no round trip between a decision and its forward (once Redis has its
    script): it returns before the event loop turns once, and Redis still applies it before the
    session's next note_call. After a SCRIPT FLUSH the verdict is resent with its script."""
    store = make_store()
    await store.note_call("ses_nowait", "t:x", 2, T0, 10.0)  # opens the shared connection
    await store.note_verdict("ses_nowait", "t:x", "t:x=allow", False, False)  # the first one loads the script
    turned: list[bool] = []
    asyncio.get_running_loop().call_soon(turned.append, True)
    await store.note_verdict("ses_nowait", "t:x", "t:x=deny", True, True)
    assert turned == []  # no reply was awaited
    again = await store.note_call("ses_nowait", "t:x", 0, T0 + 1, 10.0)
    assert (again.calls, again.denials, again.history) == (1, 1, ("t:x=allow", "t:x=deny"))

    raw = redis.Redis.from_url(redis_url)
    try:
        raw.script_flush()
    finally:
        raw.close()
    await store.note_verdict("ses_nowait", "t:x", "t:x=deny", True, True)  # NOSCRIPT, then resent
    for _ in range(100):
        await asyncio.sleep(0.01)
        later = await store.note_call("ses_nowait", "t:x", 0, T0 + 2, 10.0)
        if later.denials == 2:
            break
    assert later.history[-1] == "t:x=deny" and later.denials == 2
