"""The stream splitters see the same messages a client does, and give back the same bytes, whichever way
the stream is chunked."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from proxy.adapters.sse import JsonLines, SseScanner

EVENTS = [
    b'event: message\r\ndata: {"id":1}\r\n\r\n',
    b'data: {"a":\ndata: 2}\n\n',
    b": keep-alive comment\n\n",
    b'id: 7\ndata: {"id":2,"result":{}}\n\n',
    b'data: {"id":3}\r\r',  # CR alone ends a line (WHATWG)
    b'data:{"id":4}\n\r',  # LF then CR: a blank line
    b'data: {"id":\rdata\rdata: 5}\r\n\n',  # "data" with no colon is an empty data line
    b"event: other\ndata: x\n\n",
]
TAIL = b"data: unfinished"
STREAM = b"".join(EVENTS) + TAIL
EXPECTED = ['{"id":1}', '{"a":\n2}', None, '{"id":2,"result":{}}', '{"id":3}', '{"id":4}', '{"id":\n\n5}', "x"]


def pieces_of(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(stream)})
    return [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]


@given(st.lists(st.integers(min_value=1, max_value=len(STREAM)), max_size=20))
def test_any_chunking_yields_the_same_events_and_bytes(cuts: list[int]) -> None:
    scanner = SseScanner()
    events = [event for piece in pieces_of(STREAM, cuts) for event in scanner.feed(piece)]
    assert [event.data for event in events] == EXPECTED
    assert [event.type for event in events][-2:] == ["message", "other"]
    assert b"".join(event.raw for event in events) == b"".join(EVENTS)
    rest = scanner.rest()
    assert rest is not None and rest.raw == TAIL and rest.data == "unfinished"


@given(st.lists(st.integers(min_value=1, max_value=40), max_size=10))
def test_crlf_split_across_chunks_is_one_line_ending(cuts: list[int]) -> None:
    stream = b'data: {"id":1}\r\r\ndata: {"id":2}\r\n\r\n'
    scanner = SseScanner()
    events = [event for piece in pieces_of(stream, cuts) for event in scanner.feed(piece)]
    # CR CR dispatches at once; the LF that follows belongs to the CR before it, so it is no second blank line.
    assert [event.data for event in events] == ['{"id":1}', '{"id":2}']
    rest = scanner.rest()
    assert rest is None or rest.data is None  # at most the LF of a CRLF split at the very end
    assert b"".join(event.raw for event in events) + (rest.raw if rest else b"") == stream


def test_a_byte_order_mark_at_the_start_is_ignored_as_clients_do() -> None:
    scanner = SseScanner()
    assert scanner.feed(b"\xef\xbb") == []
    events = scanner.feed(b'\xbfdata: {"id":1}\n\n')
    assert [event.data for event in events] == ['{"id":1}']
    assert events[0].raw == b'\xef\xbb\xbfdata: {"id":1}\n\n'


def test_large_event_in_small_chunks() -> None:
    payload = "x" * 200_000
    raw = f"data: {payload}\n\n".encode()
    scanner = SseScanner()
    seen = [event.data for i in range(0, len(raw), 1000) for event in scanner.feed(raw[i : i + 1000])]
    assert seen == [payload]


def test_an_event_over_the_limit_ends_the_stream_instead_of_turning_inspection_off() -> None:
    scanner = SseScanner(max_event_bytes=100)
    events = scanner.feed(b"data: ok\n\ndata: " + b"y" * 200 + b"\n\ndata: later\n\n")
    assert [e.data for e in events] == ["ok"] and scanner.problem == "an upstream SSE event exceeds 100 bytes"
    assert scanner.feed(b"data: more\n\n") == []
    unfinished = SseScanner(max_event_bytes=100)
    assert unfinished.feed(b"data: " + b"y" * 200) == [] and unfinished.problem is not None


def is_json(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


@given(st.lists(st.integers(min_value=1, max_value=80), max_size=10))
def test_json_lines_are_split_message_by_message(cuts: list[int]) -> None:
    stream = b'{"jsonrpc":"2.0","method":"a"}\n\n{"jsonrpc":"2.0","method":"b"}\r\n{"id":1,"result":{}}'
    lines = JsonLines(is_json, 1000, 1000)
    out = [line for piece in pieces_of(stream, cuts) for line in lines.feed(piece)]
    assert lines.lines is True
    assert [json.loads(line) for line in out if line.strip()] == [
        {"jsonrpc": "2.0", "method": "a"},
        {"jsonrpc": "2.0", "method": "b"},
    ]
    assert b"".join(out) + lines.rest() == stream


def test_a_pretty_printed_document_is_read_whole() -> None:
    document = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": []}}, indent=2).encode()
    lines = JsonLines(is_json, 1000, 1000)
    assert lines.feed(document[:20]) == []
    assert lines.feed(document[20:]) == []
    assert lines.lines is False
    assert json.loads(lines.rest()) == json.loads(document)


def test_json_limits_end_the_stream() -> None:
    lines = JsonLines(is_json, 50, 1000)
    assert lines.feed(b'{"a":1}\n{"b":"' + b"z" * 100 + b'"}\n') == [b'{"a":1}\n']
    assert lines.problem is not None and lines.feed(b'{"c":1}\n') == []
    unfinished = JsonLines(is_json, 50, 1000)
    unfinished.feed(b'{"a":1}\n{"b":"' + b"z" * 100)
    assert unfinished.problem is not None
    document = JsonLines(is_json, 50, 100)
    assert document.feed(b"{\n" + b" " * 200) == [] and document.problem is not None
