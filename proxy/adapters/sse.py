"""Incremental splitters for streamed upstream answers: Server-Sent Events and JSON lines.

The proxy relays upstream streams message by message: each complete event (or JSON line)
comes back as its original bytes, forwarded untouched unless Wicket must answer it itself,
together with the payload a client would parse, so the JSON-RPC messages inside can be
checked before the client sees them. Both splitters hold at most one unfinished message;
at one larger than the limit they stop, return what came before it and set ``problem``, and
the relay ends the stream with an error (inspection is never switched off while bytes keep
flowing).

``SseScanner`` reads the stream as the WHATWG event-stream rules say a client does: a line
ends at CR, LF or CRLF, a blank line dispatches the event, a UTF-8 byte order mark at the
start of the stream is ignored, ``data`` fields (with or without a colon) are joined by LF.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

_LINE_END = re.compile(rb"\r\n|\n|\r")
_BOM = b"\xef\xbb\xbf"
DEFAULT_MAX_EVENT_BYTES = 16 * 1024 * 1024


class SseEvent(NamedTuple):
    raw: bytes
    """The event's bytes as the upstream sent them, up to and including the blank line."""
    data: str | None
    """Its ``data`` lines joined by LF, as a client decodes them; None when it has no data field."""
    type: str
    """Its ``event`` field, ``message`` when absent (what clients dispatch JSON-RPC on)."""


class SseScanner:
    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._buffer = bytearray()  # the unfinished event's bytes
        self._max = max_event_bytes
        self._line_start = 0  # where the current (unfinished) line starts in the buffer
        self._data: list[bytes] | None = None
        self._type: bytes = b""
        self._skip_lf = False  # the last chunk ended in CR: an LF now is the rest of that line ending
        self._at_start = True  # a BOM is ignored at the very start of the stream only
        self.problem: str | None = None  # set when an event exceeds the limit; nothing more is returned

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Add bytes; return every event they complete, in order (none once ``problem`` is set)."""
        if not chunk or self.problem is not None:
            return []
        buffer = self._buffer
        position = len(buffer)
        buffer += chunk
        if self._skip_lf:
            self._skip_lf = False
            if buffer[position : position + 1] == b"\n":
                position += 1
                self._line_start = position
        if self._at_start:
            if len(buffer) < 3 and _BOM.startswith(bytes(buffer)):
                return []  # a BOM may still be arriving
            self._at_start = False
            if buffer.startswith(_BOM):
                position = self._line_start = 3
        out: list[SseEvent] = []
        event_start = 0
        while (match := _LINE_END.search(buffer, position)) is not None:
            end = match.end()
            if end == len(buffer) and match.start() == end - 1 and buffer[end - 1] == 0x0D:
                self._skip_lf = True  # CR ends the line now; an LF in the next chunk belongs to it
            line = buffer[self._line_start : match.start()]
            position = self._line_start = end
            if line:
                self._field(line)
                continue
            # A blank line dispatches the event.
            if end - event_start > self._max:
                break
            data = None if self._data is None else b"\n".join(self._data).decode("utf-8", errors="replace")
            kind = self._type.decode("utf-8", errors="replace") if self._type else "message"
            out.append(SseEvent(bytes(buffer[event_start:end]), data, kind))
            event_start = end
            self._data, self._type = None, b""
        if event_start:
            del buffer[:event_start]
            self._line_start -= event_start
        if len(buffer) > self._max:
            self.problem = f"an upstream SSE event exceeds {self._max} bytes"
        return out

    def _field(self, line: bytearray) -> None:
        if line[0] == 0x3A:  # ":" starts a comment (keep-alive)
            return
        name, colon, value = bytes(line).partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            if self._data is None:
                self._data = [value]
            else:
                self._data.append(value)
        elif name == b"event":
            self._type = value

    def rest(self) -> SseEvent | None:
        """The unfinished event when the stream ends (clients discard it; Wicket screens it anyway)."""
        if not self._buffer:
            return None
        if self._line_start < len(self._buffer):
            self._field(self._buffer[self._line_start :])  # the last line had no line ending
        data = None if self._data is None else b"\n".join(self._data).decode("utf-8", errors="replace")
        event = SseEvent(bytes(self._buffer), data, self._type.decode("utf-8", errors="replace") or "message")
        self._buffer.clear()
        self._line_start, self._data, self._type = 0, None, b""
        return event


class JsonLines:
    """A JSON body that streams: one JSON-RPC message per line (newline-delimited JSON).

    The first line decides: a whole JSON value makes the body JSON lines, each later line
    handed back as it completes; anything else makes it one document (pretty-printed, say),
    gathered whole up to ``max_document_bytes`` and handed back by ``rest`` at the end. Only
    the first line is parsed here (``is_json``), so the splitter stays linear.
    """

    def __init__(self, is_json: Callable[[bytes], bool], max_line_bytes: int, max_document_bytes: int) -> None:
        self._is_json = is_json
        self._buffer = bytearray()
        self._max_line = max_line_bytes
        self._max_document = max_document_bytes
        self._scanned = 0
        self.lines: bool | None = None  # None until the first line tells
        self.problem: str | None = None  # set when a line exceeds the limit; nothing more is returned

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add bytes; return each complete line, its line ending included (blank lines too)."""
        if self.problem is not None:
            return []
        buffer = self._buffer
        buffer += chunk
        out: list[bytes] = []
        start = 0
        while self.lines is not False and (newline := buffer.find(b"\n", self._scanned)) >= 0:
            if newline - start >= self._max_line:
                self.problem = f"an upstream JSON message exceeds {self._max_line} bytes"
                return out
            line = bytes(buffer[start : newline + 1])
            self._scanned = newline + 1
            if self.lines is None and line.strip():
                self.lines = self._is_json(line)
                if not self.lines:
                    break  # one document with line breaks in it: read it whole
            out.append(line)
            start = self._scanned
        if start:
            del buffer[:start]
            self._scanned -= start
        limit = self._max_line if self.lines else self._max_document
        if len(buffer) > limit:
            self.problem = f"an upstream JSON message exceeds {limit} bytes"
        return out

    def rest(self) -> bytes:
        """What is left when the body ends: the whole document, or a last line without a newline."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        self._scanned = 0
        return rest


def event_bytes(data: bytes) -> bytes:
    """One SSE ``message`` event carrying ``data`` (a single-line JSON document)."""
    return b"event: message\ndata: " + data + b"\n\n"
