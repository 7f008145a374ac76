"""An incremental Server-Sent Events scanner that never holds more than one event.

The proxy writes every upstream chunk through untouched; the scanner only watches the
same bytes to find JSON-RPC messages (the final response, server-to-client requests).
"""

from __future__ import annotations

import re

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_LINE = re.compile(rb"\r\n|\n|\r")


class SseScanner:
    def __init__(self, max_event_bytes: int = 16 * 1024 * 1024) -> None:
        self._buffer = bytearray()
        self._max = max_event_bytes
        self._scanned = 0  # bytes of the buffer already searched for an event end
        self.overflowed = False

    def feed(self, chunk: bytes) -> list[str]:
        """Add bytes; return the ``data`` payloads of every event completed by them."""
        if self.overflowed:
            return []
        self._buffer += chunk
        out: list[str] = []
        while True:
            # Resume where the last search stopped (less the 3 bytes a split terminator can
            # span), so a large event arriving in many chunks is scanned once, not quadratically.
            match = _EVENT_END.search(self._buffer, max(self._scanned - 3, 0))
            if match is None:
                self._scanned = len(self._buffer)
                break
            raw = bytes(self._buffer[: match.start()])
            del self._buffer[: match.end()]
            self._scanned = 0
            data = self._data_of(raw)
            if data is not None:
                out.append(data)
        if len(self._buffer) > self._max:
            self.overflowed = True  # stop watching; the bytes still flow to the client
            self._buffer.clear()
        return out

    @staticmethod
    def _data_of(raw: bytes) -> str | None:
        lines = [line[5:].removeprefix(b" ") for line in _LINE.split(raw) if line.startswith(b"data:")]
        if not lines:
            return None
        return b"\n".join(lines).decode("utf-8", errors="replace")
