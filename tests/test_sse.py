"""The SSE scanner sees the same events whichever way the bytes are chunked."""

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
STREAM = b"".join(EVENTS)
EXPECTED = ['{"id":1}', '{"a":\n2}', '{"id":2,"result":{}}']


@given(st.lists(st.integers(min_value=1, max_value=len(STREAM)), max_size=20))
def test_any_chunking_yields_the_same_events(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    pieces = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    scanner = SseScanner()
    seen = [data for piece in pieces for data in scanner.feed(piece)]
    assert seen == EXPECTED


def test_large_event_in_small_chunks() -> None:
    payload = "x" * 200_000
    raw = f"data: {payload}\n\n".encode()
    scanner = SseScanner()
    seen = [data for i in range(0, len(raw), 1000) for data in scanner.feed(raw[i : i + 1000])]
    assert seen == [payload]


def test_oversized_event_stops_watching_but_does_not_raise() -> None:
    scanner = SseScanner(max_event_bytes=100)
    assert scanner.feed(b"data: " + b"y" * 200) == []
    assert scanner.overflowed
    assert scanner.feed(b"\n\ndata: z\n\n") == []
