"""The SSE splitter sees the same events, and gives back the same bytes, whichever way the stream is chunked."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.adapters.sse import SseScanner

EVENTS = [
    b'event: message\r\ndata: {"id":1}\r\n\r\n',
    b'data: {"a":\ndata: 2}\n\n',
    b": keep-alive comment\n\n",
    b'id: 7\ndata: {"id":2,"result":{}}\n\n',
]
TAIL = b"data: unfinished"
STREAM = b"".join(EVENTS) + TAIL
EXPECTED = ['{"id":1}', '{"a":\n2}', None, '{"id":2,"result":{}}']


@given(st.lists(st.integers(min_value=1, max_value=len(STREAM)), max_size=20))
def test_any_chunking_yields_the_same_events_and_bytes(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    pieces = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    scanner = SseScanner()
    events = [event for piece in pieces for event in scanner.feed(piece)]
    assert [data for _, data in events] == EXPECTED
    assert [raw for raw, _ in events] == EVENTS
    assert scanner.rest() == TAIL


def test_large_event_in_small_chunks() -> None:
    payload = "x" * 200_000
    raw = f"data: {payload}\n\n".encode()
    scanner = SseScanner()
    seen = [data for i in range(0, len(raw), 1000) for _, data in scanner.feed(raw[i : i + 1000])]
    assert seen == [payload]


def test_oversized_event_stops_inspection_but_every_byte_still_flows() -> None:
    scanner = SseScanner(max_event_bytes=100)
    first = b"data: " + b"y" * 200
    out = scanner.feed(first)
    assert scanner.overflowed
    assert out == [(first, None)]
    assert scanner.feed(b"\n\ndata: z\n\n") == [(b"\n\ndata: z\n\n", None)]
    assert scanner.rest() == b""
