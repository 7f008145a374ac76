"""Signed checkpoints of the audit chain: the attacks the chain alone cannot show, against the real
proxy, real files and the real CLI. Cutting records from the end, or deleting one and re-hashing the
rest, fails `wicket audit verify` naming the checkpoint, and a restart on such a file refuses all but
reads until an operator acknowledges it. Normal restarts and rotation stay clean."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proxy.audit.chain import GENESIS, canonical, seal, verify_file
from proxy.audit.checkpoint import SUFFIX, CheckpointingSink, iter_checkpoints
from proxy.audit.sink import FileAuditSink
from proxy.cli import main
from proxy.credentials import KeyRing
from proxy.demo.server import DemoUpstream
from tests.conftest import ADMIN_TOKEN, RunningWicket, WicketFactory, admin, mcp_client
from tests.redis_support import RedisServer

POLICY = "version: 1\n"


@pytest.fixture
def signing_key(tmp_path: Path) -> Path:
    pem = tmp_path / "signing.pem"
    pem.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return pem


def public_pem(private: Path, out: Path) -> Path:
    key = serialization.load_pem_private_key(private.read_bytes(), password=None)
    out.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return out


async def start(
    make_wicket: WicketFactory, upstream: DemoUpstream, audit: Path, key: Path, **extra: Any
) -> RunningWicket:
    return await make_wicket(
        upstream.url,
        POLICY,
        audit_log=str(audit),
        environ={"WICKET_SIGNING_KEY": str(key)},
        audit_checkpoint_every=4,
        audit_checkpoint_seconds=30.0,
        **extra,
    )


async def some_calls(running: RunningWicket, n: int = 3) -> str:
    """``n`` reads and writes through the real SDK; returns the read-write session's token."""
    grant = await running.create_session("ops-bot", mode="read-write")
    async with mcp_client(running.url, token=grant["token"]) as client:
        for i in range(n):
            assert not (await client.call_tool("get_weather", {"city": f"c{i}"})).is_error
            assert not (await client.call_tool("create_note", {"title": f"t{i}", "text": "x"})).is_error
    return str(grant["token"])


def verify(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = main(["audit", "verify", str(path), *extra])
    return code, capsys.readouterr().out


def checkpoint_lines(audit: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(str(audit) + SUFFIX).read_text().splitlines()]


async def write_allowed(running: RunningWicket, token: str) -> tuple[bool, str]:
    async with mcp_client(running.url, token=token) as client:
        result = await client.call_tool("create_note", {"title": "after", "text": "y"})
        read = await client.call_tool("get_weather", {"city": "Oslo"})
    assert not read.is_error, "reads are always allowed"
    return not result.is_error, str(result.content[0].text)  # type: ignore[union-attr]


# -- signing -------------------------------------------------------------------------------------------


async def test_checkpoints_are_signed_every_n_records_and_on_stop_and_verify_with_the_public_key(
    upstream: DemoUpstream,
    make_wicket: WicketFactory,
    signing_key: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    audit = tmp_path / "audit.jsonl"
    running = await start(make_wicket, upstream, audit, signing_key)
    await some_calls(running, 4)
    status, jwks = await admin(running, "GET", "/.well-known/jwks.json")
    assert status == 200
    status, view = await admin(running, "GET", "/v1/audit/checkpoint")
    assert status == 200 and view["held"] is False and view["last_checkpoint"]["seq"] >= 4
    await running.wicket.stop()
    lines = checkpoint_lines(audit)
    result = verify_file(audit)
    assert lines[-1]["seq"] == result.count and lines[-1]["head"] == result.head, "the last one covers the end"
    assert all(line["log_id"] == json.loads(audit.read_text().splitlines()[0])["hash"] for line in lines)
    assert len(lines) >= 3, "every 4 records, not only at the end"
    assert "jws" in lines[0] and lines[0]["kid"] == jwks["keys"][0]["kid"]

    code, out = verify(audit, capsys, "--key", str(public_pem(signing_key, tmp_path / "pub.pem")))
    assert code == 0, out
    assert f"checkpoints: {len(lines)} verified" in out
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    assert verify(audit, capsys, "--jwks", str(tmp_path / "jwks.json"))[0] == 0
    code, out = verify(audit, capsys)  # no key at all: consistency only, and it says so
    assert code == 0 and "pass --key or --jwks" in out
    other = tmp_path / "other.pem"
    other.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    code, out = verify(audit, capsys, "--key", str(other))
    assert code == 1 and "not one of the trusted keys" in out


async def test_a_forged_checkpoint_line_does_not_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = KeyRing.generate()
    sink = CheckpointingSink(FileAuditSink(tmp_path / "a.jsonl"), keys, every=1000, interval=30.0)
    assert await sink.start() is None
    for i in range(3):
        await sink.append({"event": "x", "i": i})
    await sink.checkpoint()
    await sink.close()
    path = Path(str(tmp_path / "a.jsonl") + SUFFIX)
    line = json.loads(path.read_text())  # noqa: ASYNC240 - a test's own small file
    line["seq"] = 2  # claims a shorter log than was signed
    path.write_bytes(canonical(line) + b"\n")  # noqa: ASYNC240
    code, out = verify(tmp_path / "a.jsonl", capsys)
    assert code == 1 and "signed contents differ" in out


# -- the attacks -------------------------------------------------------------------------------------------


async def test_trimming_the_tail_fails_verify_and_a_restart_holds_writes_until_acknowledged(
    upstream: DemoUpstream,
    make_wicket: WicketFactory,
    signing_key: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    audit = tmp_path / "audit.jsonl"
    first = await start(make_wicket, upstream, audit, signing_key)
    await some_calls(first, 3)
    await first.wicket.stop()
    last = checkpoint_lines(audit)[-1]
    lines = audit.read_bytes().splitlines(keepends=True)
    audit.write_bytes(b"".join(lines[:-5]))  # the attacker cuts the last five records
    assert verify_file(audit).ok, "the chain alone cannot see it"

    code, out = verify(audit, capsys)
    assert code == 1
    assert f"{audit}{SUFFIX}:" in out and f"seq {last['seq']}" in out and "cut from the end" in out

    second = await start(make_wicket, upstream, audit, signing_key)
    _, view = await admin(second, "GET", "/v1/audit/checkpoint")
    assert view["held"] is True and "cut from the end" in view["hold_reason"]
    held = [e for e in second.audit_events() if e["event"] == "integrity" and e["protocol"] == "audit"]
    assert len(held) == 1 and f"seq {last['seq']}" in held[0]["reason"]
    grant = await second.create_session("ops-bot", mode="read-write")
    ran = upstream.ledger.names().count("create_note")
    allowed, text = await write_allowed(second, grant["token"])
    assert not allowed and "wicket audit acknowledge" in text
    assert upstream.ledger.names().count("create_note") == ran, "the held write never reached the upstream"
    assert upstream.ledger.names()[-1] == "get_weather"

    # The operator acknowledges through the CLI: audited, and writes flow again.
    monkeypatch.setenv("WICKET_ADMIN_TOKEN", ADMIN_TOKEN)
    argv = ["audit", "acknowledge", "--admin-url", second.admin_url, "--approver", "alice", "--note", "drill"]
    code = await asyncio.to_thread(main, argv)  # the CLI blocks; Wicket runs on this loop
    out = capsys.readouterr().out
    assert code == 0 and '"held": false' in out
    ack = [e for e in second.audit_events() if e["event"] == "audit_acknowledged"]
    assert len(ack) == 1 and ack[0]["note"] == "drill" and "alice" in ack[0]["decided_by"]
    assert "cut from the end" in ack[0]["reason"]
    allowed, _ = await write_allowed(second, grant["token"])
    assert allowed and upstream.ledger.names().count("create_note") == ran + 1
    assert (await admin(second, "POST", "/v1/audit/acknowledge", {}))[0] == 409, "nothing left to acknowledge"
    await second.wicket.stop()

    # A restart after the acknowledgement resumes cleanly; verify still shows what was lost.
    third = await start(make_wicket, upstream, audit, signing_key)
    assert (await admin(third, "GET", "/v1/audit/checkpoint"))[1]["held"] is False
    code, out = verify(audit, capsys)
    assert code == 1 and "acknowledged by an operator" in out


async def test_deleting_a_record_and_rehashing_the_rest_is_detected(
    upstream: DemoUpstream,
    make_wicket: WicketFactory,
    signing_key: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    audit = tmp_path / "audit.jsonl"
    first = await start(make_wicket, upstream, audit, signing_key)
    await some_calls(first, 3)
    await first.wicket.stop()
    original = audit.read_bytes()
    records = [json.loads(line) for line in original.decode().splitlines()]
    signed = Path(str(audit) + SUFFIX).read_bytes()  # noqa: ASYNC240
    last_signed = checkpoint_lines(audit)[-1]["seq"]

    def reseal(kept: list[dict[str, Any]]) -> None:
        prev, out_lines = GENESIS, []
        for seq, record in enumerate(kept, start=1):
            fields = {k: v for k, v in record.items() if k not in ("seq", "ts", "prev", "hash")}
            sealed = seal(fields, seq=seq, prev=prev, ts=record["ts"])
            out_lines.append(canonical(sealed) + b"\n")
            prev = sealed["hash"]
        audit.write_bytes(b"".join(out_lines))
        assert verify_file(audit).ok, "a re-hashed chain verifies on its own"

    # One decision deleted, everything after it re-hashed.
    victim = next(i for i, r in enumerate(records) if r.get("action") == "tools/call:create_note")
    reseal(records[:victim] + records[victim + 1 :])
    code, out = verify(audit, capsys)
    assert code == 1 and "re-hashed" in out
    second = await start(make_wicket, upstream, audit, signing_key)
    _, view = await admin(second, "GET", "/v1/audit/checkpoint")
    assert view["held"] is True and f"seq {last_signed}" in view["hold_reason"]
    await second.wicket.stop()

    # A record edited to the same length (who did it) and everything re-hashed: the file keeps its size.
    Path(str(audit) + SUFFIX).write_bytes(signed)  # noqa: ASYNC240
    edited = [dict(r) for r in records]
    assert edited[victim]["agent_id"] == "ops-bot"
    edited[victim]["agent_id"] = "bad-bot"
    reseal(edited)
    assert len(audit.read_bytes()) == len(original)
    code, out = verify(audit, capsys)
    assert code == 1 and "the log was rewritten" in out
    third = await start(make_wicket, upstream, audit, signing_key)
    _, view = await admin(third, "GET", "/v1/audit/checkpoint")
    assert view["held"] is True and "rewritten" in view["hold_reason"]


async def test_emptying_the_log_and_deleting_the_checkpoints_file_is_caught_by_the_store_copy(
    upstream: DemoUpstream,
    make_wicket: WicketFactory,
    signing_key: Path,
    tmp_path: Path,
    redis_server: RedisServer,
) -> None:
    audit = tmp_path / "audit.jsonl"
    first = await start(make_wicket, upstream, audit, signing_key, store=redis_server.url)
    await some_calls(first, 2)
    await first.wicket.stop()
    audit.write_bytes(b"")
    Path(str(audit) + SUFFIX).unlink()  # noqa: ASYNC240
    second = await start(make_wicket, upstream, audit, signing_key, store=redis_server.url)
    _, view = await admin(second, "GET", "/v1/audit/checkpoint")
    assert view["held"] is True and "emptied" in view["hold_reason"] and "state store" not in view["hold_reason"]


# -- legitimate cases ------------------------------------------------------------------------------------


async def test_a_normal_restart_and_a_rotation_resume_cleanly(
    upstream: DemoUpstream,
    make_wicket: WicketFactory,
    signing_key: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    audit = tmp_path / "audit.jsonl"
    first = await start(make_wicket, upstream, audit, signing_key)
    await some_calls(first, 2)
    await first.wicket.stop()
    second = await start(make_wicket, upstream, audit, signing_key)
    assert (await admin(second, "GET", "/v1/audit/checkpoint"))[1]["held"] is False
    token = await some_calls(second, 1)
    assert (await write_allowed(second, token))[0]
    # Rotation: move the file away, then reopen (what SIGHUP does).
    rotated = tmp_path / "audit.jsonl.1"
    audit.rename(rotated)
    await second.wicket.audit.reopen()
    await some_calls(second, 1)
    await second.wicket.stop()
    closing = [c for _, c in iter_checkpoints(Path(str(audit) + SUFFIX)) if not isinstance(c, str) and c.closed]
    assert len(closing) == 1
    assert verify(audit, capsys)[0] == 0
    code, out = verify(rotated, capsys, "--checkpoints", str(audit) + SUFFIX)
    assert code == 0, out
    third = await start(make_wicket, upstream, audit, signing_key)
    assert (await admin(third, "GET", "/v1/audit/checkpoint"))[1]["held"] is False
    assert [e for e in third.audit_events() if e["event"] == "integrity"] == []


async def test_a_log_whose_directory_is_gone_holds_instead_of_crashing_the_start(tmp_path: Path) -> None:
    keys = KeyRing.generate()
    logs = tmp_path / "logs"
    logs.mkdir()
    sink = CheckpointingSink(FileAuditSink(logs / "a.jsonl"), keys, every=1000, interval=30.0)
    assert await sink.start() is None
    await sink.append({"event": "x"})
    await sink.close()
    checkpoints = (logs / "a.jsonl.checkpoints").read_bytes()
    for child in logs.iterdir():
        child.unlink()
    logs.rmdir()
    logs.mkdir()
    (logs / "a.jsonl.checkpoints").write_bytes(checkpoints)
    (logs / "a.jsonl").symlink_to(tmp_path / "gone" / "a.jsonl")  # the log cannot even be created
    again = CheckpointingSink(FileAuditSink(logs / "a.jsonl"), keys, every=1000, interval=30.0)
    held = await again.start()
    assert held is not None and "cannot be read" in held
    await again.close()


async def test_a_checkpoint_is_due_every_n_records_of_the_current_chain_across_a_rotation(tmp_path: Path) -> None:
    # The file sink's write itself signals "due" (the checkpointing layer adds no coroutine per
    # record): at the first record of a chain no checkpoint covers yet (so a new log is never
    # without one for an interval), then once `every` records follow the last checkpoint,
    # counted afresh for a rotated log.
    from tests.waiting import eventually

    keys = KeyRing.generate()
    path = tmp_path / "a.jsonl"
    sink = CheckpointingSink(FileAuditSink(path, fsync="never"), keys, every=3, interval=3600.0)
    assert await sink.start() is None

    async def append_until_due(tag: str, records: int) -> None:
        for n in range(1, records + 1):
            assert not sink._due.is_set(), f"due after {n - 1} records"
            await sink.append({"event": tag, "n": n})  # never suspends with fsync=never
        assert sink._due.is_set(), f"due after {records} records"

    try:
        await append_until_due("x", 1)
        await eventually(lambda: sink.last is not None and sink.last.seq == 1, "record 1 is checkpointed")
        await append_until_due("x", 3)
        await eventually(lambda: sink.last is not None and sink.last.seq == 4, "record 4 is checkpointed")
        path.rename(tmp_path / "a.1.jsonl")
        await sink.reopen()  # no new record since 4: a closing checkpoint of it, then a new chain from seq 1
        closing = sink.last
        assert closing is not None and closing.closed and closing.seq == 4
        await append_until_due("y", 1)
        await eventually(lambda: sink.last is not closing, "record 1 of the new chain is checkpointed")
        assert sink.last is not None and sink.last.seq == 1 and sink.last.log_id == sink.inner.log_id != closing.log_id
        await append_until_due("y", 3)
        await eventually(lambda: sink.last is not None and sink.last.seq == 4, "record 4 of the new chain")
    finally:
        await sink.close()


@pytest.mark.parametrize("yields", [0, 1, 2])
async def test_close_ends_when_it_comes_just_as_a_checkpoint_falls_due(tmp_path: Path, yields: int) -> None:
    # Shutdown (or a test's teardown) right after the write that made a checkpoint due: the signing
    # task is woken and cancelled in the same moment. On Python 3.11, asyncio.wait_for swallowed
    # such a cancellation, the task went on waiting for the next interval and close() never returned.
    keys = KeyRing.generate()
    sink = CheckpointingSink(FileAuditSink(tmp_path / "a.jsonl", fsync="never"), keys, every=1, interval=3600.0)
    assert await sink.start() is None
    await sink.append({"event": "x"})  # never suspends with fsync=never; makes a checkpoint due
    assert sink._due.is_set()
    for _ in range(yields):
        await asyncio.sleep(0)
    async with asyncio.timeout(10):
        await sink.close()
    # close() signs what the background task did not: the log ends covered.
    assert sink.last is not None and sink.last.seq == 1
    assert [cp.seq for _, cp in iter_checkpoints(tmp_path / ("a.jsonl" + SUFFIX)) if not isinstance(cp, str)][-1] == 1
