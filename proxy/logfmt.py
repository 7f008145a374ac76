"""Log formats: the human one, and ``--log-format json`` (one JSON object per line).

A JSON line has ``time`` (RFC 3339, UTC), ``level``, ``logger`` and ``message``; ``trace_id`` and
``span_id`` when the record was written inside a traced request; ``decision_id`` (and any other
field in :data:`CONTEXT_FIELDS`) when the caller passed it with ``extra=``; ``exception`` for a
traceback. Wicket's messages never carry arguments or credentials, so neither do these lines.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from proxy import tracing

CONTEXT_FIELDS = ("decision_id", "session_id", "agent_id", "approval_id")
FORMATS = ("text", "json")
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, Any] = {
            "time": f"{seconds}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        ids = tracing.current_ids()
        if ids is not None:
            out["trace_id"], out["span_id"] = ids
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure(level: str, log_format: str = "text") -> None:
    """Wicket's logging on stderr: ``level`` (debug, info, warning, error) in ``log_format``."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    for noisy in ("uvicorn", "uvicorn.error", "mcp", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
