"""Trusted state is signed: a revocation deleted from the store (memory or real Redis) is still
enforced, reported and put back; the signed list itself cannot be edited, deleted or rolled back
unnoticed. (Tool pins have their own tests in tests/test_toolpins.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proxy.core.revocations import SIGNED_KEY, RevocationList, SignedRevocations
from proxy.core.sessions import RecordSigner
from proxy.demo.server import DemoUpstream
from proxy.state.base import Store
from proxy.state.memory import MemoryStore
from proxy.state.redis import RedisStore
from tests.conftest import WicketFactory
from tests.redis_support import RedisServer
from tests.test_revocation import STRICT, call, revoke
from tests.waiting import eventually

SIGNER = RecordSigner(b"revocation-test-key-0123456789ab")


async def forget(store: Store, kind: str, ident: str) -> None:
    """What an attacker with write access to the store does: remove the entry from the plain set."""
    if isinstance(store, MemoryStore):
        store._revoked.discard((kind, ident))
        return
    await store._client.srem(store._revocations_key, f"{kind}\0{ident}")  # type: ignore[union-attr]


async def test_a_clean_list_loads_without_a_problem(store: Store) -> None:
    ledger = SignedRevocations(store, SIGNER)
    await ledger.revoke("agent", "mallory")
    await ledger.revoke("session", "ses_1")
    await ledger.revoke("agent", "mallory")  # twice is once
    loaded = await SignedRevocations(store, SIGNER).load()
    assert loaded.problem is None
    assert loaded.items == {("agent", "mallory"), ("session", "ses_1")}
    assert sorted(await store.revocations()) == [("agent", "mallory"), ("session", "ses_1")]


async def test_a_revocation_is_announced_before_it_is_signed_then_signed_and_persisted() -> None:
    # Replicas act on the first announcement; the signed list and the set are written behind it.
    store = MemoryStore()
    heard: list[tuple[str, str, bool, bool]] = []
    store_view = store._data  # the memory store calls listeners inline: look at what it held then
    await store.subscribe_revocations(
        lambda kind, ident: heard.append((kind, ident, SIGNED_KEY in store_view, (kind, ident) in store._revoked))
    )
    await SignedRevocations(store, SIGNER).revoke("session", "ses_early")
    assert heard[0] == ("session", "ses_early", False, False), "announced before the list was signed"
    assert heard[-1] == ("session", "ses_early", True, True), "announced again once signed and persisted"
    loaded = await SignedRevocations(store, SIGNER).load()
    assert loaded.problem is None and ("session", "ses_early") in loaded.items


async def test_a_revocation_of_a_missing_record_is_neither_announced_nor_written(store: Store) -> None:
    # Revoking a session checks that its record exists in the announcing step itself (one round trip).
    heard: list[tuple[str, str]] = []
    await store.subscribe_revocations(lambda kind, ident: heard.append((kind, ident)))
    in_force = RevocationList()
    ledger = SignedRevocations(store, SIGNER, in_force)
    assert await ledger.revoke("session", "ses_gone", if_present="wicket:{ses_gone}:session") is False
    assert in_force.reason("someone", "ses_gone", None) is None
    assert await store.get(SIGNED_KEY) is None and await store.revocations() == []
    await store.put("wicket:{ses_here}:session", b"record", ttl=60)
    assert await ledger.revoke("session", "ses_here", if_present="wicket:{ses_here}:session") is True
    assert in_force.reason("someone", "ses_here", None) is not None
    assert await store.revocations() == [("session", "ses_here")]
    await eventually(lambda: ("session", "ses_here") in heard, "the announcement arrived")
    assert ("session", "ses_gone") not in heard


async def test_the_revoking_replica_enforces_a_revocation_before_announcing_it() -> None:
    store, in_force = MemoryStore(), RevocationList()
    enforced_when_heard: list[bool] = []
    await store.subscribe_revocations(
        lambda kind, ident: enforced_when_heard.append(in_force.reason("agent", ident, None) is not None)
    )
    await SignedRevocations(store, SIGNER, in_force).revoke("session", "ses_here")
    assert enforced_when_heard and all(enforced_when_heard)


async def test_a_reconnecting_feed_delivers_what_it_missed(redis_server: RedisServer) -> None:
    """Revocations persisted while the feed was not subscribed are delivered once it (re)subscribes,
    not only at the next periodic resync: before the first subscription, and after a lost connection."""
    raw = redis_server.client()
    raw.sadd("wicket:revocations", "agent\0before")  # persisted, never announced
    store = RedisStore(redis_server.url)
    heard: set[tuple[str, str]] = set()
    try:
        await store.subscribe_revocations(lambda kind, ident: heard.add((kind, ident)))
        await eventually(lambda: ("agent", "before") in heard, "the first announcement arrived")
        raw.sadd("wicket:revocations", "agent\0meanwhile")  # missed: nobody announced it
        assert raw.client_kill_filter(_type="pubsub") >= 1  # the feed's connection drops
        await eventually(lambda: ("agent", "meanwhile") in heard, "the second announcement arrived")
        await store.announce("agent", "after")  # and the feed goes on
        await eventually(lambda: ("agent", "after") in heard, "the third announcement arrived")
    finally:
        await store.close()
        raw.close()


async def test_announce_reaches_subscribers_without_persisting(store: Store) -> None:
    heard: list[tuple[str, str]] = []
    arrived = asyncio.Event()

    def listener(kind: str, ident: str) -> None:
        heard.append((kind, ident))
        arrived.set()

    await store.subscribe_revocations(listener)
    for _ in range(50):  # the Redis listener subscribes in the background: announce until it hears
        await store.announce("agent", "eve")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrived.wait(), 0.1)
            break
    assert heard and set(heard) == {("agent", "eve")}
    assert await store.revocations() == [], "announce() persists nothing: revoke() does"


async def test_a_revocation_deleted_from_the_set_is_detected_enforced_and_put_back(store: Store) -> None:
    ledger = SignedRevocations(store, SIGNER)
    await ledger.revoke("agent", "mallory")
    await forget(store, "agent", "mallory")
    assert await store.revocations() == []
    loaded = await SignedRevocations(store, SIGNER).load()  # a fresh replica
    assert loaded.problem is not None and "deleted" in loaded.problem and "agent mallory" in loaded.problem
    assert ("agent", "mallory") in loaded.items
    assert await store.revocations() == [("agent", "mallory")], "the entry is put back"
    assert (await SignedRevocations(store, SIGNER).load()).problem is None, "reported once, then clean"


async def test_the_signed_list_cannot_be_edited_deleted_or_rolled_back(store: Store) -> None:
    ledger = SignedRevocations(store, SIGNER)
    await ledger.revoke("agent", "mallory")
    old = await store.get(SIGNED_KEY)
    await ledger.revoke("token", "abcd")
    # Edited: the entry removed from both the set and the signed list's body.
    raw = await store.get(SIGNED_KEY)
    envelope = json.loads(raw or b"")
    envelope["r"]["items"] = [["token", "abcd"]]
    await store.put(SIGNED_KEY, json.dumps(envelope).encode())
    await forget(store, "agent", "mallory")
    replica = SignedRevocations(store, SIGNER)
    loaded = await replica.load(known=[("agent", "mallory")])
    assert loaded.problem is not None and "integrity" in loaded.problem
    assert ("agent", "mallory") in loaded.items, "what a replica already enforced is kept"
    # Deleted outright, after this replica saw it.
    await store.delete(SIGNED_KEY)
    loaded = await replica.load()
    assert loaded.problem is not None and "deleted" in loaded.problem
    # Rolled back to an older, validly signed version.
    await store.put(SIGNED_KEY, old or b"")
    loaded = await replica.load()
    assert loaded.problem is not None and "went back" in loaded.problem
    # An entry nobody signed (written straight into the set) is enforced and reported.
    await store.revoke("agent", "eve")
    loaded = await replica.load()
    assert ("agent", "eve") in loaded.items and loaded.problem is not None


async def test_a_revocation_deleted_from_the_memory_store_stays_in_force(
    upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(upstream.url, STRICT)
    grant = await running.create_session("alice")
    assert await revoke(running, "agent", "alice") == 201
    store = running.wicket.store
    assert isinstance(store, MemoryStore)
    await forget(store, "agent", "alice")
    assert await running.wicket._sync_revocations()  # the periodic resync
    assert await call(running, grant["token"]) == 401
    integrity = [e for e in running.audit_events() if e["event"] == "integrity"]
    assert len(integrity) == 1 and "deleted" in integrity[0]["reason"]
    assert upstream.ledger.names() == []


async def test_a_revocation_deleted_in_redis_is_still_refused_by_a_new_replica(
    upstream: DemoUpstream, make_wicket: WicketFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    pem = tmp_path / "signing.pem"
    pem.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    environ = {"WICKET_SIGNING_KEY": str(pem)}
    first = await make_wicket(upstream.url, STRICT, store=redis_server.url, environ=environ)
    grant = await first.create_session("alice")
    assert await call(first, grant["token"]) == 200
    assert await revoke(first, "agent", "alice") == 201
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        members = await client.smembers("wicket:revocations")
        assert members == {b"agent\0alice"}
        await client.srem("wicket:revocations", b"agent\0alice")
    finally:
        await client.aclose()
    second = await make_wicket(upstream.url, STRICT, store=redis_server.url, environ=environ)
    assert await call(second, grant["token"]) == 401
    assert await call(first, grant["token"]) == 401
    integrity = [e for e in second.audit_events() if e["event"] == "integrity"]
    assert len(integrity) == 1 and "agent alice" in integrity[0]["reason"]
    assert upstream.ledger.names() == ["get_weather"], "only the call before the revocation ran"
