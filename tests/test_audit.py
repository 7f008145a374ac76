"""The hash-chained audit log: sealing, verification, and the file and stdout sinks (real files, real errors)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import re
import resource
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.audit.chain import (
    GENESIS,
    AuditCorrupt,
    HashChain,
    canonical,
    now_rfc3339,
    seal,
    verify_file,
    verify_lines,
)
from proxy.audit.sink import AuditUnavailable, FileAuditSink, StdoutAuditSink, open_sink

TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def decision(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "event": "decision",
        "agent_id": "agent-1",
        "session_id": "s-1",
        "protocol": "mcp",
        "action": f"tools/call:tool_{n}",
        "effect": "read",
        "decision": "allow",
        "tier": "fast",
        "reason": "policy allows reads",
        "confidence": 1.0,
        **extra,
    }


async def write_log(path: Path, n: int, **kwargs: Any) -> FileAuditSink:
    sink = FileAuditSink(path, **kwargs)
    for i in range(n):
        await sink.append(decision(i))
    await sink.close()
    return sink


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def reseal(line: bytes, **changes: Any) -> bytes:
    """A forger's edit: change fields and recompute this record's own hash."""
    obj = json.loads(line)
    obj.update(changes)
    obj.pop("hash")
    obj["hash"] = hashlib.sha256(canonical(obj)).hexdigest()
    return canonical(obj) + b"\n"


# -- chain --------------------------------------------------------------------------------------------------


def test_canonical_hash_matches_an_independent_computation() -> None:
    fields = {"event": "decision", "agent_id": "agent-ü", "reason": "café ☕ naïve", "confidence": 0.5, "n": [1, 2]}
    event = seal(fields, seq=7, prev="ab" * 32, ts="2026-11-22T03:40:00.123Z")

    body = {**fields, "seq": 7, "ts": "2026-11-22T03:40:00.123Z", "prev": "ab" * 32}
    expected = hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    ).hexdigest()
    assert event["hash"] == expected
    # Pinned, so that any change to the canonical form (and so to every existing log) is deliberate.
    assert expected == "e86e59da37e4ddbd265fb037215f2bfdff32890d5b862e8688218faea2962dc7"
    assert {k: v for k, v in event.items() if k != "hash"} == body

    line = canonical(event)
    assert "café ☕ naïve".encode() in line and b"\\u" not in line
    assert line == json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert b" " not in line.replace("café ☕ naïve".encode(), b"").replace(b"policy allows reads", b"")


def documented_canonical(event: Any) -> bytes:
    """The canonical form as the module docstring defines it, with the standard library only."""
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


TRICKY_VALUES: list[Any] = [
    0.0, -0.0, 1.0, 0.1, 0.5, 1e-4, 9.99e-5, 1e-5, 1.5e-7, 1e-9, 1e-10, 5e-324, 1e15, 1e16, 1.5e17, 1e22,
    1.7976931348623157e308, -2.5e-6, 123456789.123, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), 2**64, -(2**70),
    True, False, None, "", "\x00\x01\x1f\x7f", "\b\f\n\r\t\"\\/", "\u2028\u2029", "é ☕ 😀 \ufeff",
    "<script>&amp;</script>", [], [1, [2, (3, 4)]], {}, {"b": 1, "a": {"é": 1, "z": 2, "😀": 3, "\uffff": 4}},
]  # fmt: skip


def test_canonical_is_byte_for_byte_the_documented_form_on_tricky_values() -> None:
    # canonical() takes a faster encoder for what it writes identically; the bytes must not change.
    for value in TRICKY_VALUES:
        event = {"event": "x", "value": value, "nested": {"list": [value, {"v": value}]}, "é": value}
        assert canonical(event) == documented_canonical(event), value
    # What the documented form refuses, canonical() refuses too, and never writes something else.
    for bad in (float("nan"), float("inf"), -float("inf"), "\ud800"):
        with pytest.raises(ValueError):
            canonical({"value": bad})

    # Keys that are not strings, and subclasses, take the documented path and give its bytes.
    class Text(str):
        pass

    for odd in ({1: "a", 2: "b"}, {"k": Text("v")}, {Text("k"): 1}, {"t": (1, "2")}):
        assert canonical(odd) == documented_canonical(odd)
    with pytest.raises(TypeError):  # mixed key types cannot be sorted: refused, as before
        canonical({1: "a", "b": 2})


def test_orjson_writes_alike_claims_only_bytes_that_match() -> None:
    # The predicate checks scalars inside containers inline (floats too): wherever it says yes,
    # orjson's sorted bytes must be the documented ones, bare or nested, in a list or a dict.
    import orjson

    from proxy.audit.chain import _orjson_writes_alike

    odd = [float("nan"), float("inf"), -float("inf"), 1e-5, -1e-5, -9.99e-5, 5e-324, -5e-324, b"x", {1, 2}]

    class Text(str):
        pass

    # Keys are left to orjson, which refuses any that is not exactly a str (fast_json's options).
    odd_keys = [{1: "a"}, {Text("k"): 1}, {None: 1}]
    for value in [*TRICKY_VALUES, *odd, *odd_keys]:
        for wrapped in (value, [value], (value, 1), {"k": value}, {"k": [value]}, {"a": {"b": value}}):
            if _orjson_writes_alike(wrapped):
                try:
                    fast = orjson.dumps(wrapped, option=orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_SUBCLASS)
                except orjson.JSONEncodeError:
                    continue  # an integer beyond 64 bits: fast_json falls back on the error
                assert fast == documented_canonical(wrapped), wrapped
    # And it says yes to the floats audit events carry (confidence, durations), however nested.
    for value in (0.0, -0.0, 1.0, 0.5, 1e-4, -1e-4, 0.75, -2.5, 123456789.123, 1e300, -1e300):
        assert all(_orjson_writes_alike(w) for w in (value, [value], {"k": value}, {"k": {"j": [value]}})), value
    for value in odd:
        assert not any(_orjson_writes_alike(w) for w in (value, [value], {"k": value}, {"k": {"j": [value]}})), value


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_canonical_matches_the_documented_form_on_generated_events(event: dict[str, Any]) -> None:
    try:
        expected = documented_canonical(event)
    except ValueError:  # a lone surrogate cannot be UTF-8: both must refuse it
        with pytest.raises(ValueError):
            canonical(event)
        return
    assert canonical(event) == expected


def test_fast_encoder_matches_the_documented_form_for_floats_of_every_magnitude() -> None:
    # orjson writes some floats unlike json.dumps (NaN as null, 0.00001 for 1e-05, 1e-9 for 1e-09):
    # the fast encoders must never return those bytes. Every exponent, both signs, random bit patterns.
    import random
    import struct

    from proxy.audit.chain import fast_json, fast_sorted_json

    rng = random.Random(19)
    floats = [m * 10.0**e for e in range(-325, 309) for m in (1.0, 1.5, 2.2250738585072014, 9.999999)]
    floats += [struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(20_000)]
    for x in [*floats, *(-f for f in floats)]:
        event = {"b": x, "a": [x, {"c": x}]}
        try:
            expected = documented_canonical(event)
        except ValueError:  # NaN and the infinities: never written
            assert fast_sorted_json(event) is None and fast_json(event) is None, x
            continue
        fast = fast_sorted_json(event)
        assert fast is None or fast == expected, x
        compact = fast_json(event)
        assert compact is None or compact == json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode(), x
    # Such text inside strings is only text.
    for text in ("null", "one-two", "0.00001", "1e-9", "NaN"):
        event = {"reason": text, "n": None}
        assert fast_sorted_json(event) == documented_canonical(event)


def test_chain_next_seals_exactly_the_documented_form_on_tricky_values() -> None:
    # next() encodes with orjson when it can and falls back otherwise; the line and its hash must be
    # the documented canonical bytes either way, for old and new logs to verify alike.
    chain = HashChain()
    for value in [*TRICKY_VALUES, {"deep": [[{"f": 1e-5}]]}, 2**80]:
        fields = {"event": "x", "value": value, "nested": {"list": [value]}}
        event, line = chain.next(fields, ts="2026-11-22T03:40:00.123Z")
        body = {k: v for k, v in event.items() if k != "hash"}
        assert event["hash"] == hashlib.sha256(documented_canonical(body)).hexdigest(), value
        assert line == documented_canonical(event) + b"\n", value
        chain.advance(event)
    for bad in (float("nan"), "\ud800"):
        with pytest.raises(ValueError):
            chain.next({"value": bad})


def test_timestamps_are_rfc3339_milliseconds_and_follow_the_clock() -> None:
    from datetime import UTC, datetime

    before = datetime.now(UTC).replace(microsecond=0)
    stamps = [now_rfc3339() for _ in range(2000)]
    after = datetime.now(UTC)
    assert all(TS.fullmatch(s) for s in stamps) and stamps == sorted(stamps)
    for s in (stamps[0], stamps[-1]):
        assert before <= datetime.fromisoformat(s.replace("Z", "+00:00")) <= after


def test_seal_refuses_chain_keys_from_the_caller() -> None:
    for key in ("seq", "ts", "prev", "hash"):
        with pytest.raises(ValueError, match=key):
            seal({"event": "decision", key: 1}, seq=1, prev=GENESIS, ts="2026-11-22T03:40:00.123Z")


def test_chain_next_does_not_advance_until_told() -> None:
    chain = HashChain()
    first, line = chain.next(decision(1))
    again, _ = chain.next(decision(1))
    assert (chain.seq, chain.head) == (0, GENESIS)
    assert first["seq"] == again["seq"] == 1 and first["prev"] == GENESIS
    assert line == canonical(first) + b"\n"
    assert TS.fullmatch(first["ts"])
    chain.advance(first)
    assert (chain.seq, chain.head) == (1, first["hash"])
    with pytest.raises(ValueError):
        chain.advance(again)  # already used: would fork the chain
    second, _ = chain.next(decision(2))
    assert second["prev"] == first["hash"] and second["seq"] == 2


def test_resume_from_line_checks_the_seal() -> None:
    event, line = HashChain().next(decision(1))
    resumed = HashChain.resume_from_line(line)
    assert (resumed.seq, resumed.head) == (1, event["hash"])
    assert HashChain.resume_from_line(line.rstrip(b"\n")).head == event["hash"]
    altered = line.replace(b'"allow"', b'"deny"')
    for bad in (b"", b"{not json\n", b"[1,2]\n", altered, b'{"seq":1}\n', line[: len(line) // 2]):
        with pytest.raises(AuditCorrupt):
            HashChain.resume_from_line(bad)


def test_verify_empty() -> None:
    result = verify_lines([])
    assert result.ok and result.count == 0 and result.head == GENESIS and result.broken_at is None


def test_verify_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"")
    result = verify_file(path)
    assert result.ok and result.count == 0 and result.head == GENESIS


# -- tampering ----------------------------------------------------------------------------------------------


def change_field(lines: list[bytes]) -> list[bytes]:
    lines[2] = lines[2].replace(b'"allow"', b'"deny"')
    return lines


def remove_line(lines: list[bytes]) -> list[bytes]:
    del lines[2]
    return lines


def swap_pair(lines: list[bytes]) -> list[bytes]:
    lines[1], lines[2] = lines[2], lines[1]
    return lines


def insert_copy(lines: list[bytes]) -> list[bytes]:
    lines.insert(4, lines[1])
    return lines


def insert_forged(lines: list[bytes]) -> list[bytes]:
    # A well-sealed record that claims to follow line 2: line 3 itself checks out, line 4 no longer does.
    prev = json.loads(lines[1])["hash"]
    lines.insert(2, reseal(lines[2], action="tools/call:forged", prev=prev))
    return lines


def garbage_line(lines: list[bytes]) -> list[bytes]:
    lines[3] = b"\x00\xffnot a record\n"
    return lines


def truncated_line(lines: list[bytes]) -> list[bytes]:
    lines[4] = lines[4][:40] + b"\n"
    return lines


def blank_line(lines: list[bytes]) -> list[bytes]:
    lines.insert(3, b"\n")
    return lines


def altered_and_resealed(lines: list[bytes]) -> list[bytes]:
    lines[2] = reseal(lines[2], decision="deny")
    return lines


def renumbered(lines: list[bytes]) -> list[bytes]:
    # Seal every record again, skipping seq 3: the hashes and prevs all check out, the numbering does not.
    prev = GENESIS
    out = []
    for i, line in enumerate(lines):
        obj = json.loads(line)
        obj.pop("hash")
        obj.update(prev=prev, seq=i + 1 if i < 2 else i + 2)
        obj["hash"] = hashlib.sha256(canonical(obj)).hexdigest()
        prev = obj["hash"]
        out.append(canonical(obj) + b"\n")
    return out


def reencoded(lines: list[bytes]) -> list[bytes]:
    lines[1] = json.dumps(json.loads(lines[1]), sort_keys=True).encode() + b"\n"
    return lines


def duplicate_key(lines: list[bytes]) -> list[bytes]:
    # Parsers disagree on which duplicate wins; only the last is hashed, so a reader might see "deny".
    lines[2] = b'{"decision":"deny",' + lines[2][1:]
    return lines


def torn_tail(lines: list[bytes]) -> list[bytes]:
    lines[-1] = lines[-1][:-1]
    return lines


def missing_start(lines: list[bytes]) -> list[bytes]:
    del lines[0]
    return lines


@pytest.mark.parametrize(
    ("tamper", "line", "words"),
    [
        (change_field, 3, "hash mismatch"),
        (remove_line, 3, "prev does not match the hash of line 2"),
        (swap_pair, 2, "prev does not match the hash of line 1"),
        (insert_copy, 5, "prev does not match the hash of line 4"),
        (insert_forged, 4, "prev does not match the hash of line 3"),
        (garbage_line, 4, "not a valid JSON record"),
        (truncated_line, 5, "not a valid JSON record"),
        (blank_line, 4, "not a valid JSON record"),
        (altered_and_resealed, 4, "prev does not match"),
        (renumbered, 3, "seq is 4, expected 3"),
        (reencoded, 2, "canonical"),
        (duplicate_key, 3, "canonical"),
        (torn_tail, 6, "not terminated by a newline"),
        (missing_start, 1, "genesis"),
    ],
)
async def test_verify_names_the_first_broken_record(
    tmp_path: Path, tamper: Callable[[list[bytes]], list[bytes]], line: int, words: str
) -> None:
    path = tmp_path / "audit.jsonl"
    await write_log(path, 6)
    original = lines_of(path)
    assert verify_file(path).ok

    tampered = tamper(list(original))
    path.write_bytes(b"".join(tampered))
    result = verify_file(path)
    assert not result.ok
    assert result.broken_at == line, result.reason
    assert result.reason is not None and result.reason.startswith(f"line {line}: ") and words in result.reason
    # count and head describe the intact prefix
    assert result.count == line - 1
    assert result.head == (json.loads(tampered[line - 2])["hash"] if line > 1 else GENESIS)


# -- file sink ----------------------------------------------------------------------------------------------


async def test_file_sink_appends_a_verifiable_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path)
    assert sink.healthy and sink.problem is None and sink.count == 0 and sink.head == GENESIS
    events = [await sink.append(decision(i)) for i in range(5)]
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]
    assert events[0]["prev"] == GENESIS
    assert all(b["prev"] == a["hash"] for a, b in itertools.pairwise(events))
    assert all(TS.fullmatch(e["ts"]) for e in events)
    assert sink.count == 5 and sink.head == events[-1]["hash"]

    # the line is in the file as soon as append returns, before any fsync
    assert lines_of(path) == [canonical(e) + b"\n" for e in events]
    result = verify_file(path)
    assert result.ok and result.count == 5 and result.head == sink.head and result.reason is None
    await sink.close()
    assert not sink.healthy and "closed" in (sink.problem or "")
    with pytest.raises(AuditUnavailable):
        await sink.append(decision(9))


async def test_file_sink_resumes_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first = await write_log(path, 3)
    sink = FileAuditSink(path)
    assert sink.healthy and sink.count == 3 and sink.head == first.head
    more = [await sink.append(decision(i)) for i in range(2)]
    await sink.close()
    assert [e["seq"] for e in more] == [4, 5] and more[0]["prev"] == first.head
    result = verify_file(path)
    assert result.ok and result.count == 5 and result.head == more[-1]["hash"]


async def test_resume_after_a_record_longer_than_the_tail_chunk(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path, fsync="never")
    await sink.append(decision(0))
    await sink.append(decision(1, detail="x" * 50_000))
    await sink.close()
    again = FileAuditSink(path)
    assert again.healthy and again.count == 2
    await again.append(decision(2))
    await again.close()
    assert verify_file(path).count == 3


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data + b'{"garbage": true}\n',
        lambda data: data[:-1],  # torn write: no final newline
        lambda data: data[:-20] + b"\n",  # truncated record
        lambda data: data.replace(b'"tools/call:tool_2"', b'"tools/call:tool_X"'),  # altered last record
        lambda data: b"\n".join(data.split(b"\n")[:-1]) + b"\n\n",  # blank line at the end
    ],
    ids=["garbage", "no-final-newline", "truncated", "altered", "blank"],
)
async def test_corrupt_tail_fails_closed(tmp_path: Path, damage: Callable[[bytes], bytes]) -> None:
    path = tmp_path / "audit.jsonl"
    await write_log(path, 3)
    path.write_bytes(damage(path.read_bytes()))
    before = path.read_bytes()

    sink = FileAuditSink(path)
    assert not sink.healthy
    assert sink.problem is not None and "corrupt" in sink.problem and f"wicket audit verify {path}" in sink.problem
    for _ in range(2):
        with pytest.raises(AuditUnavailable, match="corrupt"):
            await sink.append(decision(9))
    await sink.close()
    assert path.read_bytes() == before


async def test_write_failure_on_a_full_disk(caplog: pytest.LogCaptureFixture) -> None:
    sink = FileAuditSink("/dev/full", fsync="always")
    assert sink.healthy
    with pytest.raises(AuditUnavailable, match="No space left"):
        await sink.append(decision(1, reason="secret-argument-summary"))
    assert not sink.healthy
    assert sink.problem is not None and "No space left on device" in sink.problem
    assert sink.count == 0 and sink.head == GENESIS
    with pytest.raises(AuditUnavailable):
        await sink.append(decision(2))  # retried, still failing
    assert "secret-argument-summary" not in caplog.text  # event contents are never logged
    await sink.close()


async def test_reopen_recovers_and_resumes_the_file_now_at_the_path(tmp_path: Path) -> None:
    real = tmp_path / "real.jsonl"
    previous = await write_log(real, 2)
    path = tmp_path / "audit.jsonl"
    path.symlink_to("/dev/full")

    sink = FileAuditSink(path, fsync="always")
    with pytest.raises(AuditUnavailable, match="No space left"):
        await sink.append(decision(1))
    assert not sink.healthy

    path.unlink()
    path.symlink_to(real)
    await sink.reopen()
    assert sink.healthy and sink.count == 2 and sink.head == previous.head
    event = await sink.append(decision(3))
    assert event["seq"] == 3 and event["prev"] == previous.head
    await sink.close()
    result = verify_file(real)
    assert result.ok and result.count == 3


async def test_reopen_after_rotation_starts_a_new_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path)
    await sink.append(decision(1))
    await sink.append(decision(2))
    path.rename(tmp_path / "audit.jsonl.1")  # what logrotate does before signalling
    await sink.append(decision(3))  # still goes to the rotated file
    await sink.reopen()
    assert sink.count == 0 and sink.head == GENESIS
    event = await sink.append(decision(4))
    assert event["seq"] == 1 and event["prev"] == GENESIS
    await sink.close()
    assert verify_file(tmp_path / "audit.jsonl.1").count == 3
    assert verify_file(path).count == 1


@pytest.fixture
def file_size_limit() -> Iterator[Callable[[int], None]]:
    """Lower RLIMIT_FSIZE for real write failures (EFBIG), including partial writes; restored afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def limit(size: int) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))

    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


async def test_partial_write_is_truncated_and_the_sink_recovers_by_itself(
    tmp_path: Path, file_size_limit: Callable[[int], None]
) -> None:
    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path, fsync="never")
    for i in range(10):
        await sink.append(decision(i))
    size = path.stat().st_size
    head = sink.head

    file_size_limit(size + 25)  # the next line only partly fits
    try:
        with pytest.raises(AuditUnavailable, match="File too large"):
            await sink.append(decision(10))
        assert path.stat().st_size == size  # the partial line was truncated away
        assert not sink.healthy and "File too large" in (sink.problem or "")
        assert sink.count == 10 and sink.head == head
        with pytest.raises(AuditUnavailable):
            await sink.append(decision(11))  # still failing: retried, not stuck
    finally:
        file_size_limit(resource.RLIM_INFINITY)

    event = await sink.append(decision(12))
    assert sink.healthy and sink.problem is None
    assert event["seq"] == 11 and event["prev"] == head
    await sink.close()
    result = verify_file(path)
    assert result.ok and result.count == 11


async def test_unopenable_path_recovers_when_it_becomes_writable(tmp_path: Path) -> None:
    path = tmp_path / "later" / "audit.jsonl"
    sink = FileAuditSink(path)
    assert not sink.healthy and "No such file or directory" in (sink.problem or "")
    with pytest.raises(AuditUnavailable, match="No such file"):
        await sink.append(decision(1))
    path.parent.mkdir()
    event = await sink.append(decision(2))
    assert sink.healthy and event["seq"] == 1
    await sink.close()
    assert verify_file(path).count == 1


async def test_unencodable_event_is_refused_without_harming_the_sink(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path)
    await sink.append(decision(1))
    for bad in ({"event": "decision", "blob": b"bytes"}, {"event": "decision", "x": float("nan")}, {"seq": 5}):
        with pytest.raises(AuditUnavailable, match="cannot be encoded"):
            await sink.append(bad)
    assert sink.healthy and sink.count == 1
    await sink.append(decision(2))
    await sink.close()
    assert verify_file(path).count == 2


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
async def test_concurrent_appends_never_interleave(tmp_path: Path, fsync: Any) -> None:
    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path, fsync=fsync, fsync_interval=0.01)
    events = await asyncio.gather(*(sink.append(decision(i, call=i)) for i in range(200)))
    assert sorted(e["seq"] for e in events) == list(range(1, 201))
    assert sink.count == 200
    await sink.close()
    result = verify_file(path)
    assert result.ok and result.count == 200 and result.head == sink.head
    assert len(lines_of(path)) == 200


async def test_interval_fsync_task_runs_and_stops_on_close(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = FileAuditSink(path, fsync="interval", fsync_interval=0.01)
    await sink.append(decision(1))
    await asyncio.sleep(0.1)
    assert sink.healthy
    await sink.close()
    pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert not pending


async def test_interval_fsync_follows_writes_and_rests_without_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A write starts the interval task when none is pending; it fsyncs after the interval, again
    # while writes keep coming, then ends until the next write (no per-write Event or Task call).
    from proxy.audit import sink as sink_module
    from tests.waiting import eventually

    synced: list[int] = []
    real = sink_module._fsync_dup

    def counting(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(sink_module, "_fsync_dup", counting)
    sink = FileAuditSink(tmp_path / "audit.jsonl", fsync="interval", fsync_interval=0.01)
    await sink.append(decision(1))
    task = sink._sync_task
    assert task is not None and not synced, "the line is written now, fsynced later"
    await sink.append(decision(2))
    assert sink._sync_task is task, "one task for writes close together"
    await eventually(lambda: sink._sync_task is None, "the task fsyncs and ends")
    assert len(synced) == 1
    await sink.append(decision(3))
    assert sink._sync_task is not None and sink._sync_task is not task
    await eventually(lambda: len(synced) == 2 and sink._sync_task is None, "the next write is fsynced too")
    await sink.close()
    assert len(synced) == 2, "nothing left to fsync on close"


def test_sink_options_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        FileAuditSink(tmp_path / "a.jsonl", fsync="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        FileAuditSink(tmp_path / "a.jsonl", fsync_interval=0)
    assert isinstance(open_sink("-"), StdoutAuditSink)
    assert isinstance(open_sink(str(tmp_path / "b.jsonl"), fsync="never"), FileAuditSink)


# -- stdout sink --------------------------------------------------------------------------------------------


async def test_stdout_sink_writes_chained_lines(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    sink = open_sink("-")
    first = await sink.append(decision(1, reason="café"))
    second = await sink.append(decision(2))
    await sink.close()
    out = capsysbinary.readouterr().out
    assert out == canonical(first) + b"\n" + canonical(second) + b"\n"
    assert "café".encode() in out
    result = verify_lines(out.splitlines(keepends=True))
    assert result.ok and result.count == 2 and result.head == sink.head == second["hash"]
    assert sink.count == 2


async def test_devices_that_cannot_be_fsynced_are_not_an_error() -> None:
    sink = FileAuditSink("/dev/null", fsync="always")
    event = await sink.append(decision(1))
    assert event["seq"] == 1 and sink.healthy
    await sink.close()
