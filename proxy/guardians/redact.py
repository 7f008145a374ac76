"""Secret redaction for anything Wicket sends off-box (today: Deep Guard's prompt).

Agents pass credentials in tool arguments all the time: passwords under a ``password``
key, API keys pasted into a command line, tokens inside URLs. None of that may reach an
LLM provider, so arguments are copied with secret-looking keys blanked and credential-
shaped substrings cut out of every string, wherever they sit. It errs on the side of
redacting: a judge loses little from a missing hash, a leaked key costs a rotation.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

REDACTED = "[REDACTED]"
TRUNCATED = "[TRUNCATED]"

# Keys, after camelCase/kebab/dots are normalised to snake_case ("x-api-key" -> "x_api_key").
_SECRET_WORD = re.compile(
    r"(?:^|_)(?:auth|session|sessions|token|tokens|secret|secrets|passwd|pwd|cookie|cookies|credential|credentials)"
    r"(?:_|$)"
)
_SECRET_PART = re.compile(
    r"password|passphrase|passwd|api_?key|access_?key|private_?key|secret_?key|client_?secret|signing_?key"
    r"|access_?token|refresh_?token|auth_?token|id_?token|session_?token|authorization|credential|cookie"
)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NON_ALNUM = re.compile(r"[^A-Za-z0-9]+")
_SEPARATORS = re.compile(r"[_\-/+]")


def is_secret_key(key: str) -> bool:
    """Whether a mapping key names a secret (``apiKey``, ``x-api-key``, ``DB_PASSWORD``; not ``author``)."""
    snake = _NON_ALNUM.sub("_", _CAMEL.sub("_", key)).strip("_").lower()
    return bool(_SECRET_WORD.search(snake) or _SECRET_PART.search(snake))


def _sub(pattern: str, replacement: str | Callable[[re.Match[str]], str], flags: int = 0) -> Callable[[str], str]:
    compiled = re.compile(pattern, flags)
    return lambda text: compiled.sub(replacement, text)


def _entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def _opaque_run(match: re.Match[str]) -> str:
    """A long base64/url-safe run is redacted only if it looks random, not like a path or identifier."""
    run = match.group(0)
    has_lower = any(c.islower() for c in run)
    has_upper = any(c.isupper() for c in run)
    if not any(c.isdigit() for c in run) or not (has_lower or has_upper):
        return run
    if max(len(part) for part in _SEPARATORS.split(run)) < 12:
        return run  # snake_case identifiers, kebab slugs, paths: short words between separators
    if ("/" in run or "+" in run) and not (has_lower and has_upper):
        return run
    return REDACTED if _entropy(run.rstrip("=")) >= 3.5 else run


def _bearer(match: re.Match[str]) -> str:
    token = match.group(2)
    looks_random = len(token) >= 16 or any(c.isdigit() for c in token) or any(c in "-._~+/=" for c in token)
    return f"{match.group(1)} {REDACTED}" if looks_random and len(token) >= 8 else match.group(0)


def _basic(match: re.Match[str]) -> str:
    """``Basic`` is also an English word: only redact what looks like base64 credentials."""
    token = match.group(2)
    mixed_case = any(c.isupper() for c in token[1:]) and any(c.islower() for c in token)
    looks_encoded = "=" in token or "/" in token or "+" in token or any(c.isdigit() for c in token) or mixed_case
    return f"{match.group(1)} {REDACTED}" if looks_encoded else match.group(0)


# Order matters: whole blocks and prefixed keys first, the generic entropy rules last.
_STRING_RULES: tuple[Callable[[str], str], ...] = (
    _sub(
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----|\Z)",
        REDACTED,
        re.DOTALL,
    ),
    _sub(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s/@:?#]*):[^\s/?#]*@", rf"\1:{REDACTED}@"),
    _sub(r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*", REDACTED),
    _sub(r"\bsk-(?:ant-)?[A-Za-z0-9_\-]{16,}", REDACTED),
    _sub(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", REDACTED),
    _sub(r"\bgh[pousr]_[A-Za-z0-9]{20,}\b|\bgithub_pat_[A-Za-z0-9_]{20,}", REDACTED),
    _sub(r"\bxox[abposr]-[A-Za-z0-9-]{10,}", REDACTED),
    _sub(r"\bwkt_[A-Za-z0-9_\-]{8,}", REDACTED),
    _sub(r"(?i)\b(bearer)\s+([A-Za-z0-9\-._~+/]+=*)", _bearer),
    _sub(r"\b(Basic)\s+([A-Za-z0-9+/]{8,}={0,2})(?![A-Za-z0-9+/=])", _basic),
    _sub(r"(?<![A-Za-z0-9])(?:0x)?[0-9a-fA-F]{32,}(?![A-Za-z0-9])", REDACTED),
    _sub(r"(?<![A-Za-z0-9+/_\-])[A-Za-z0-9+/_\-]{32,}={0,2}", _opaque_run),
)

_PRE_CUT = 65536  # never run the regexes over more than this; the tail is cut off anyway


def redact_string(text: str) -> str:
    """``text`` with every credential-shaped substring replaced by ``[REDACTED]``."""
    for rule in _STRING_RULES:
        text = rule(text)
    return text


def redact(value: Any, *, max_depth: int = 8, max_string: int = 2000, max_items: int = 200) -> Any:
    """A redacted deep copy of JSON-like ``value``: safe to put in a prompt or a log.

    Values under secret-looking keys become ``[REDACTED]``; credential-shaped substrings are
    cut out of every string; strings longer than ``max_string`` are truncated with a marker;
    containers nested deeper than ``max_depth`` levels, and items past ``max_items``, are
    replaced by ``[TRUNCATED]``. Non-JSON values are rendered with ``str()`` first.
    """
    return _walk(value, 1, max_depth, max_string, max_items)


def _walk(value: Any, depth: int, max_depth: int, max_string: int, max_items: int) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return _string(value, max_string)
    if isinstance(value, bytes | bytearray):
        return f"[{len(value)} bytes]"
    if isinstance(value, Mapping):
        if depth > max_depth:
            return TRUNCATED
        out: dict[str, Any] = {}
        for index, (key, item) in enumerate(value.items()):
            if index >= max_items:
                out[TRUNCATED] = f"{len(value) - max_items} more keys"
                break
            name = _string(str(key), max_string)
            secret = is_secret_key(str(key)) and item is not None and not isinstance(item, bool)
            out[name] = REDACTED if secret else _walk(item, depth + 1, max_depth, max_string, max_items)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        if depth > max_depth:
            return TRUNCATED
        items = list(value)
        copied = [_walk(item, depth + 1, max_depth, max_string, max_items) for item in items[:max_items]]
        if len(items) > max_items:
            copied.append(f"{TRUNCATED} {len(items) - max_items} more items")
        return copied
    return _string(str(value), max_string)


def _string(text: str, max_string: int) -> str:
    # Redact before truncating so a secret straddling the cut is still recognised whole.
    if len(text) > _PRE_CUT:
        # A secret straddling the pre-cut might not be recognised; drop that tail outright.
        head = redact_string(text[: _PRE_CUT - 1024])
    else:
        head = redact_string(text)
    if len(text) <= _PRE_CUT and len(head) <= max_string:
        return head
    return f"{head[:max_string]}...{TRUNCATED} ({len(text)} chars)"
