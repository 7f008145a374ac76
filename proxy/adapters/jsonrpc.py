"""JSON-RPC messages that Wicket answers itself (denials, refusals, protocol errors), and the
one JSON reader for bodies and messages that cross Wicket.

Built with jsonrpcserver's response types so Wicket's own answers follow the JSON-RPC 2.0
response shape exactly; proxied traffic is never re-validated through it.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

import orjson
from jsonrpcserver.response import ErrorResponse, SuccessResponse, serialize_error, serialize_success
from jsonrpcserver.sentinels import NODATA

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
SESSION_NOT_FOUND = -32001
HEADER_MISMATCH = -32020
DENIED = -32050  # SPEC §4: Wicket refused the action
UPSTREAM_UNAVAILABLE = -32051
UPSTREAM_TIMEOUT = -32052
UNAUTHORIZED = -32053
STORE_UNAVAILABLE = -32054
OVER_LIMIT = -32055  # the agent holds as many requests, sessions or streams as the policy allows


INTERNAL_ERROR = -32603

MAX_DEPTH: Final = 64
"""Nesting levels of arrays and objects accepted in a JSON message. No MCP or A2A message
comes near it, and every later walk (screening, audit, pinning) can then rely on it."""

_ESCAPE: Final = re.compile(rb"\\.", re.S)
_LONG_DIGITS: Final = 19
"""Digits in a row from which an integer may not fit 64 bits (2**63 has 19)."""
_DIGIT_RUN: Final = b"0" * _LONG_DIGITS
_DIGITS_AS_ZERO: Final = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))
"""``translate`` table: every ASCII digit becomes ``0``, every other byte a space."""
_BRACKETS: Final = bytes.maketrans(b"[]{}", b"()()")
_NOT_SKELETON: Final = bytes(b for b in range(256) if b not in b'[]{}"')


class NestingTooDeep(ValueError):
    """Valid JSON, but nested deeper than :data:`MAX_DEPTH` (or than Python can parse)."""

    def __init__(self) -> None:
        super().__init__(f"JSON nested deeper than {MAX_DEPTH} levels")


def loads(raw: bytes | str) -> Any:
    """Parse JSON, refusing nesting deeper than ``MAX_DEPTH`` with :class:`NestingTooDeep`
    (a ValueError): never a RecursionError, and never a tree too deep for later walks.

    The value is always exactly what ``json.loads`` makes of ``raw`` (Python's own reader, lenient
    as the Python SDK is). orjson reads it about five times faster where it reads it alike: it
    refuses what json alone accepts (NaN, a lone surrogate, a BOM, UTF-16, a number beyond a
    double), which then goes to json, but it turns an integer past 64 bits into a float, so text
    with 19 digits in a row goes to json directly (found with one ``translate`` and a substring
    search: a regular expression stepped through every byte at several times the cost, twice per
    call). The depth check costs two counts, and only a
    message with more than ``MAX_DEPTH`` brackets also has its bracket skeleton measured."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    try:
        if _DIGIT_RUN in data.translate(_DIGITS_AS_ZERO):
            raise orjson.JSONDecodeError("an integer may not fit 64 bits", "", 0)
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            value = json.loads(raw)
        except RecursionError:
            raise NestingTooDeep() from None
    if data.count(b"[") + data.count(b"{") > MAX_DEPTH and _deeper_than(data, MAX_DEPTH):
        raise NestingTooDeep()
    return value


def _deeper_than(data: bytes, limit: int) -> bool:
    """Whether valid JSON ``data`` nests deeper than ``limit``. Its skeleton (escapes dropped,
    then everything but brackets and quotes, then the strings) is cut one innermost level per
    ``replace`` pass: C-speed steps, at most ``limit`` passes, no Python loop over the bytes."""
    if b"\\" in data:
        data = _ESCAPE.sub(b"", data)
    skeleton = data.translate(None, _NOT_SKELETON).replace(b'""', b"")
    if b'"' in skeleton:
        skeleton = b"".join(skeleton.split(b'"')[::2])
    skeleton = skeleton.translate(_BRACKETS)
    for _ in range(limit):
        skeleton = skeleton.replace(b"()", b"")
        if not skeleton:
            return False
    return True


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def error_body(code: int, message: str, data: Any = NODATA, request_id: Any = None) -> bytes:
    return dumps(serialize_error(ErrorResponse(code, message, data, request_id)))


def result_body(result: Any, request_id: Any) -> bytes:
    return dumps(serialize_success(SuccessResponse(result, request_id)))


INVALID_PARAMS = -32602

# What JavaScript's Number() accepts from a string, after trimming (the TypeScript SDK matches
# response ids with Number(id)); anything else is NaN there and matches nothing.
_JS_NUMBER = re.compile(
    r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?Infinity|0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+"
)
_JS_SPACE = (
    " \t\n\v\f\r\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000\ufeff"
)


def _js_number(value: Any) -> float | None:
    if isinstance(value, str):
        text = value.strip(_JS_SPACE)
        if not text:
            return 0.0
        if _JS_NUMBER.fullmatch(text) is None:
            return None
        if text[:2].lower() in ("0x", "0o", "0b"):
            return float(int(text, 0))
        return float(text)
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        return None if number != number else number
    return None


def _python_id(value: Any) -> Any:
    """The Python SDK's correlation key: an integral string or float is the integer."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def same_id(answer_id: Any, request_id: Any) -> bool:
    """Would any MCP SDK take a message with ``answer_id`` as the answer to ``request_id``?

    The Python SDK compares ids after turning integral strings into integers, the TypeScript
    SDK after ``Number()``: to a client ``"1"``, ``" 1"``, ``"01"``, ``1.0`` and ``1`` are
    one id, so screening must treat them as one too.
    """
    if answer_id is None or request_id is None or isinstance(answer_id, bool) or isinstance(request_id, bool):
        return False
    if answer_id == request_id or _python_id(answer_id) == _python_id(request_id):
        return True
    number = _js_number(answer_id)
    return number is not None and number == _js_number(request_id)
