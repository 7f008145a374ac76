"""An incremental Server-Sent Events splitter that never holds more than one event.

The proxy relays upstream streams event by event: each complete event comes back as its
original bytes (forwarded untouched unless Wicket must answer it itself) together with
its ``data`` payload, so the JSON-RPC messages inside can be checked before the client
sees them. An event larger than the limit stops the inspection, never the stream.
"""

from __future__ import annotations

import re

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_LINE = re.compile(rb"\r\n|\n|\r")

SseEvent = tuple[bytes, str | None]
"""An event's raw bytes (terminator included) and its joined ``data`` lines, if any."""


class SseScanner:
    def __init__(self, max_event_bytes: int = 16 * 1024 * 1024) -> None:
        self._buffer = bytearray()
        self._max = max_event_bytes
        self._scanned = 0  # bytes of the buffer already searched for an event end
        self.overflowed = False

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Add bytes; return every event they complete, in order.

        After an overflow every chunk comes straight back as one uninspected piece.
        """
        if self.overflowed:
            return [(chunk, None)]
        self._buffer += chunk
        out: list[SseEvent] = []
        consumed = 0
        # Resume where the last search stopped (less the 3 bytes a split terminator can
        # span), so a large event arriving in many chunks is scanned once, not quadratically.
        position = max(self._scanned - 3, 0)
        while (match := _EVENT_END.search(self._buffer, position)) is not None:
            raw = bytes(self._buffer[consumed : match.end()])
            out.append((raw, self._data_of(raw[: match.start() - consumed])))
            consumed = position = match.end()
        if consumed:
            del self._buffer[:consumed]
        self._scanned = len(self._buffer)
        if len(self._buffer) > self._max:
            self.overflowed = True  # stop inspecting; the bytes still flow to the client
            out.append((bytes(self._buffer), None))
            self._buffer.clear()
        return out

    def rest(self) -> bytes:
        """The bytes of an unfinished event when the stream ends (forwarded as they are)."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        self._scanned = 0
        return rest

    @staticmethod
    def _data_of(raw: bytes) -> str | None:
        lines = [line[5:].removeprefix(b" ") for line in _LINE.split(raw) if line.startswith(b"data:")]
        if not lines:
            return None
        return b"\n".join(lines).decode("utf-8", errors="replace")


def event_bytes(data: bytes) -> bytes:
    """One SSE ``message`` event carrying ``data`` (a single-line JSON document)."""
    return b"event: message\ndata: " + data + b"\n\n"
