"""JSON-RPC messages that Wicket answers itself (denials, refusals, protocol errors).

Built with jsonrpcserver's response types so Wicket's own answers follow the JSON-RPC 2.0
response shape exactly; proxied traffic is never re-validated through it.
"""

from __future__ import annotations

import json
from typing import Any

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


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def error_body(code: int, message: str, data: Any = NODATA, request_id: Any = None) -> bytes:
    return dumps(serialize_error(ErrorResponse(code, message, data, request_id)))


def result_body(result: Any, request_id: Any) -> bytes:
    return dumps(serialize_success(SuccessResponse(result, request_id)))
