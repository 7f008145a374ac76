"""What crosses the wire between a sidecar and the central guardian service.

Two halves. The JSON codecs turn a review request (Action, Session, effect, Fast's prior
decision, ReviewContext) and a Decision into plain JSON and back. Decoding is strict:
the service reviews whatever it decodes, so an unknown, missing or mistyped field is an
error rather than a silent default, and every string and list has a bound.

The token half signs each call with a short-lived HS256 JWT over a shared key. The
token carries the SHA-256 of the exact body bytes and a one-time ``jti``, so a captured
token is useless for another body and useless a second time.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import math
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import jwt

from proxy.core.action import Action, Activity, Decision, Delegation, Effect, Finding, ReviewContext, Tier, Verdict
from proxy.core.sessions import MODES, Session

__all__ = [
    "AUDIENCE",
    "KEY_ENV",
    "MIN_KEY_BYTES",
    "WIRE_VERSION",
    "ReplayCacheFull",
    "TokenError",
    "TokenVerifier",
    "body_sha256",
    "check_key",
    "decode_decision",
    "decode_review",
    "dumps",
    "encode_decision",
    "encode_review",
    "guardian_key",
    "loads",
    "sign_request",
]

WIRE_VERSION: Final = 1

# Bounds. The service also caps the whole body (1 MiB); these keep each part sane.
MAX_NAME: Final = 1024  # ids, names, methods, URLs, labels
MAX_TEXT: Final = 16 * 1024  # reasons, intent, finding messages, violations
MAX_ITEMS: Final = 256  # scope, history, findings, violations
MAX_DEPTH: Final = 64  # nesting inside arguments and annotations
MAX_COUNT: Final = 2**53  # activity counters (JSON-safe integers)

_EFFECTS: Final = {e.label: e for e in Effect}
_VERDICTS: Final = {v.value: v for v in Verdict}
_TIERS: Final = {t.value: t for t in Tier}
_ORIGINS: Final = ("token", "anonymous", "delegated")


# --------------------------------------------------------------------------- JSON text


def dumps(payload: Any) -> bytes:
    """Compact, NaN-free JSON bytes: the exact bytes a token's body hash is computed over."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key[:64]!r}")
        out[key] = value
    return out


def loads(raw: bytes | str) -> Any:
    """Parse JSON refusing NaN/Infinity and duplicate keys; deep nesting is a ValueError too."""
    try:
        return json.loads(raw, parse_constant=_no_constant, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


# --------------------------------------------------------------------------- strict reading


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class _Object:
    """One JSON object read field by field; every field named in ``fields`` must be present."""

    def __init__(self, data: Any, where: str, fields: tuple[str, ...]) -> None:
        if not isinstance(data, dict):
            raise ValueError(f"{where} must be an object, got {_kind(data)}")
        unknown = sorted(k for k in data if k not in fields)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(repr(k[:64]) for k in unknown[:5])}")
        missing = [k for k in fields if k not in data]
        if missing:
            raise ValueError(f"{where}: missing field(s) {', '.join(map(repr, missing))}")
        self.data = data
        self.where = where

    def path(self, key: str) -> str:
        return f"{self.where}.{key}"

    def text(self, key: str, limit: int = MAX_NAME) -> str:
        return _str(self.data[key], self.path(key), limit)

    def opt_text(self, key: str, limit: int = MAX_NAME) -> str | None:
        value = self.data[key]
        return None if value is None else _str(value, self.path(key), limit)

    def flag(self, key: str) -> bool:
        value = self.data[key]
        if not isinstance(value, bool):
            raise ValueError(f"{self.path(key)} must be a boolean, got {_kind(value)}")
        return value

    def count(self, key: str) -> int:
        return _count(self.data[key], self.path(key))

    def number(self, key: str, low: float = -math.inf, high: float = math.inf) -> float:
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{self.path(key)} must be a number, got {_kind(value)}")
        number = float(value)
        if not math.isfinite(number) or not low <= number <= high:
            raise ValueError(f"{self.path(key)} must be a finite number in [{low:g}, {high:g}]")
        return number

    def choice(self, key: str, choices: Mapping[str, Any]) -> Any:
        value = self.data[key]
        if not isinstance(value, str) or value not in choices:
            raise ValueError(f"{self.path(key)} must be one of {', '.join(map(repr, choices))}")
        return choices[value]

    def opt_choice(self, key: str, choices: Mapping[str, Any]) -> Any:
        return None if self.data[key] is None else self.choice(key, choices)

    def items(self, key: str, limit: int = MAX_ITEMS) -> list[Any]:
        value = self.data[key]
        if not isinstance(value, list):
            raise ValueError(f"{self.path(key)} must be a list, got {_kind(value)}")
        if len(value) > limit:
            raise ValueError(f"{self.path(key)} has {len(value)} items; at most {limit} are allowed")
        return value

    def strings(self, key: str, limit: int = MAX_NAME) -> tuple[str, ...]:
        where = self.path(key)
        return tuple(_str(item, f"{where}[{i}]", limit) for i, item in enumerate(self.items(key)))

    def json_object(self, key: str, optional: bool = False) -> dict[str, Any] | None:
        value = self.data[key]
        if value is None and optional:
            return None
        if not isinstance(value, dict):
            raise ValueError(f"{self.path(key)} must be an object, got {_kind(value)}")
        _check_json(value, self.path(key), 0)
        return value


def _str(value: Any, where: str, limit: int) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {_kind(value)}")
    if len(value) > limit:
        raise ValueError(f"{where} is {len(value)} characters long; at most {limit} are allowed")
    return value


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where} must be an integer, got {_kind(value)}")
    if not 0 <= value <= MAX_COUNT:
        raise ValueError(f"{where} must be between 0 and {MAX_COUNT}")
    return value


def _check_json(value: Any, where: str, depth: int) -> None:
    """Arguments travel as-is, but only as plain, finite, bounded-depth JSON."""
    if depth > MAX_DEPTH:
        raise ValueError(f"{where} is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} has a non-string key")
            _check_json(item, where, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, where, depth + 1)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} holds a non-finite number")
    elif value is not None and not isinstance(value, str | int | bool):
        raise ValueError(f"{where} holds {_kind(value)}, which is not JSON")


# --------------------------------------------------------------------------- codecs

_ACTION_FIELDS: Final = (
    "protocol",
    "method",
    "name",
    "arguments",
    "agent_id",
    "session_id",
    "upstream",
    "annotations",
    "is_tool_call",
    "fixed_effect",
    "intent",
    "server_initiated",
    "annotations_trusted",
    "resource",
    "prompt",
    "delegation",
)
_DELEGATION_FIELDS: Final = ("origin", "agents", "link_ids", "scope", "expires_at")
_SESSION_FIELDS: Final = (
    "session_id",
    "agent_id",
    "scope",
    "mode",
    "created_at",
    "expires_at",
    "intent",
    "origin",
    "granted_by",
)
_DECISION_FIELDS: Final = (
    "verdict",
    "effect",
    "tier",
    "reason",
    "confidence",
    "decision_id",
    "approval_id",
    "escalated_from",
    "fail_closed",
    "shadow_of",
    "retry_after",
    "forward_arguments",
)
_ACTIVITY_FIELDS: Final = (
    "calls",
    "denials",
    "writes",
    "window_calls",
    "minute_calls",
    "window_by_effect",
    "repeat_denials",
    "history",
)
_FINDING_FIELDS: Final = ("detector", "effect", "message")
_CONTEXT_FIELDS: Final = ("activity", "findings", "violations", "elevated")
_REVIEW_FIELDS: Final = ("version", "action", "session", "effect", "prior", "context")


def _label(effect: Effect | None) -> str | None:
    return None if effect is None else effect.label


def encode_action(action: Action) -> dict[str, Any]:
    return {
        "protocol": action.protocol,
        "method": action.method,
        "name": action.name,
        "arguments": dict(action.arguments),
        "agent_id": action.agent_id,
        "session_id": action.session_id,
        "upstream": action.upstream,
        "annotations": None if action.annotations is None else dict(action.annotations),
        "is_tool_call": action.is_tool_call,
        "fixed_effect": _label(action.fixed_effect),
        "intent": action.intent,
        "server_initiated": action.server_initiated,
        "annotations_trusted": action.annotations_trusted,
        "resource": action.resource,
        "prompt": action.prompt,
        "delegation": _encode_delegation(action.delegation),
    }


def _encode_delegation(chain: Delegation | None) -> dict[str, Any] | None:
    if chain is None:
        return None
    return {
        "origin": chain.origin,
        "agents": list(chain.agents),
        "link_ids": list(chain.link_ids),
        "scope": list(chain.scope),
        "expires_at": chain.expires_at,
    }


def _decode_delegation(data: Any, where: str) -> Delegation | None:
    if data is None:
        return None
    o = _Object(data, where, _DELEGATION_FIELDS)
    expires = o.data["expires_at"]
    if not isinstance(expires, int) or isinstance(expires, bool):
        raise ValueError(f"{where}.expires_at must be an integer")
    return Delegation(
        origin=o.text("origin"),
        agents=o.strings("agents"),
        link_ids=o.strings("link_ids"),
        scope=o.strings("scope"),
        expires_at=expires,
    )


def decode_action(data: Any, where: str = "action") -> Action:
    o = _Object(data, where, _ACTION_FIELDS)
    arguments = o.json_object("arguments")
    assert arguments is not None
    return Action(
        protocol=o.text("protocol"),
        method=o.text("method"),
        name=o.text("name"),
        arguments=arguments,
        agent_id=o.text("agent_id"),
        session_id=o.text("session_id"),
        upstream=o.text("upstream"),
        annotations=o.json_object("annotations", optional=True),
        is_tool_call=o.flag("is_tool_call"),
        fixed_effect=o.opt_choice("fixed_effect", _EFFECTS),
        intent=o.opt_text("intent", MAX_TEXT),
        server_initiated=o.flag("server_initiated"),
        annotations_trusted=o.flag("annotations_trusted"),
        resource=o.opt_text("resource"),
        prompt=o.opt_text("prompt"),
        delegation=_decode_delegation(o.data["delegation"], o.path("delegation")),
    )


def encode_session(session: Session) -> dict[str, Any]:
    return {
        "session_id": session.session_id,
        "agent_id": session.agent_id,
        "scope": list(session.scope),
        "mode": session.mode,
        "created_at": session.created_at,
        "expires_at": session.expires_at,
        "intent": session.intent,
        "origin": session.origin,
        "granted_by": session.granted_by,
    }


def decode_session(data: Any, where: str = "session") -> Session:
    o = _Object(data, where, _SESSION_FIELDS)
    return Session(
        session_id=o.text("session_id"),
        agent_id=o.text("agent_id"),
        scope=o.strings("scope"),
        mode=o.choice("mode", {m: m for m in MODES}),
        created_at=o.number("created_at"),
        expires_at=o.number("expires_at"),
        intent=o.opt_text("intent", MAX_TEXT),
        origin=o.choice("origin", {m: m for m in _ORIGINS}),
        granted_by=o.opt_text("granted_by"),
    )


def encode_decision(decision: Decision) -> dict[str, Any]:
    """Every Decision field, so the sidecar's audit records what the service decided, verbatim."""
    return {
        "verdict": decision.verdict.value,
        "effect": decision.effect.label,
        "tier": decision.tier.value,
        "reason": decision.reason,
        "confidence": decision.confidence,
        "decision_id": decision.decision_id,
        "approval_id": decision.approval_id,
        "escalated_from": _label(decision.escalated_from),
        "fail_closed": decision.fail_closed,
        "shadow_of": decision.shadow_of.value if decision.shadow_of is not None else None,
        "retry_after": decision.retry_after,
        "forward_arguments": dict(decision.forward_arguments) if decision.forward_arguments is not None else None,
    }


def decode_decision(data: Any, where: str = "decision") -> Decision:
    o = _Object(data, where, _DECISION_FIELDS)
    return Decision(
        verdict=o.choice("verdict", _VERDICTS),
        effect=o.choice("effect", _EFFECTS),
        tier=o.choice("tier", _TIERS),
        reason=o.text("reason", MAX_TEXT),
        confidence=o.number("confidence", 0.0, 1.0),
        decision_id=o.text("decision_id"),
        approval_id=o.opt_text("approval_id"),
        escalated_from=o.opt_choice("escalated_from", _EFFECTS),
        fail_closed=o.flag("fail_closed"),
        shadow_of=o.opt_choice("shadow_of", _VERDICTS),
        retry_after=None if o.data["retry_after"] is None else o.number("retry_after", 0.0, 1e9),
        forward_arguments=o.json_object("forward_arguments", optional=True),
    )


def encode_context(context: ReviewContext) -> dict[str, Any]:
    a = context.activity
    return {
        "activity": {
            "calls": a.calls,
            "denials": a.denials,
            "writes": a.writes,
            "window_calls": a.window_calls,
            "minute_calls": a.minute_calls,
            "window_by_effect": list(a.window_by_effect),
            "repeat_denials": a.repeat_denials,
            "history": list(a.history),
        },
        "findings": [
            {"detector": f.detector, "effect": f.effect.label, "message": f.message} for f in context.findings
        ],
        "violations": list(context.violations),
        "elevated": sorted(context.elevated),
    }


def decode_context(data: Any, where: str = "context") -> ReviewContext:
    o = _Object(data, where, _CONTEXT_FIELDS)
    a = _Object(o.data["activity"], o.path("activity"), _ACTIVITY_FIELDS)
    by_effect = a.items("window_by_effect", len(Effect))
    if len(by_effect) != len(Effect):
        raise ValueError(f"{a.path('window_by_effect')} must hold exactly {len(Effect)} counts")
    w0, w1, w2, w3 = (_count(n, f"{a.path('window_by_effect')}[{i}]") for i, n in enumerate(by_effect))
    activity = Activity(
        calls=a.count("calls"),
        denials=a.count("denials"),
        writes=a.count("writes"),
        window_calls=a.count("window_calls"),
        minute_calls=a.count("minute_calls"),
        window_by_effect=(w0, w1, w2, w3),
        repeat_denials=a.count("repeat_denials"),
        history=a.strings("history"),
    )
    findings = []
    for i, item in enumerate(o.items("findings")):
        f = _Object(item, f"{o.path('findings')}[{i}]", _FINDING_FIELDS)
        findings.append(Finding(f.text("detector"), f.choice("effect", _EFFECTS), f.text("message", MAX_TEXT)))
    return ReviewContext(activity, tuple(findings), o.strings("violations", MAX_TEXT), frozenset(o.strings("elevated")))


def encode_review(
    action: Action, session: Session, effect: Effect, prior: Decision, context: ReviewContext
) -> dict[str, Any]:
    """Everything a tier's ``review()`` receives, as JSON. Arguments are not redacted: Deep redacts."""
    return {
        "version": WIRE_VERSION,
        "action": encode_action(action),
        "session": encode_session(session),
        "effect": effect.label,
        "prior": encode_decision(prior),
        "context": encode_context(context),
    }


def decode_review(data: Any) -> tuple[Action, Session, Effect, Decision, ReviewContext]:
    """The inverse of :func:`encode_review`; raises ``ValueError`` naming the first bad field."""
    o = _Object(data, "review", _REVIEW_FIELDS)
    version = o.data["version"]
    if isinstance(version, bool) or version != WIRE_VERSION:
        raise ValueError(f"review.version must be {WIRE_VERSION} (this service speaks wire version {WIRE_VERSION})")
    return (
        decode_action(o.data["action"]),
        decode_session(o.data["session"]),
        o.choice("effect", _EFFECTS),
        decode_decision(o.data["prior"], "review.prior"),
        decode_context(o.data["context"]),
    )


# --------------------------------------------------------------------------- keys and tokens

KEY_ENV: Final = "WICKET_GUARDIAN_KEY"
MIN_KEY_BYTES: Final = 32
AUDIENCE: Final = "wicket-guardian"
TOKEN_LIFETIME: Final = 30
LEEWAY: Final = 5
MAX_TOKEN_LIFETIME: Final = 60
"""The service refuses tokens that claim to live longer, so its replay cache stays bounded in time."""
REQUIRED_CLAIMS: Final = ("iss", "aud", "iat", "exp", "jti", "body_sha256")


def check_key(key: bytes) -> bytes:
    """Refuse a short shared key: an HS256 key is only as strong as its length."""
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"{KEY_ENV} must be at least {MIN_KEY_BYTES} bytes (got {len(key)}); generate one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
        )
    return key


def guardian_key(env: Mapping[str, str]) -> bytes:
    """The shared key from the environment, whitespace-trimmed; ValueError when missing or short."""
    raw = env.get(KEY_ENV, "").strip()
    if not raw:
        raise ValueError(
            f"{KEY_ENV} is not set: the guardian service and its sidecars need the same shared key "
            f"(at least {MIN_KEY_BYTES} bytes) to sign and verify every review call"
        )
    return check_key(raw.encode())


def body_sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def sign_request(
    key: bytes, body: bytes, *, client_id: str, now: float | None = None, lifetime: int = TOKEN_LIFETIME
) -> str:
    """A one-time token for exactly this body, valid ``lifetime`` seconds."""
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": client_id,
        "aud": AUDIENCE,
        "iat": issued,
        "exp": issued + lifetime,
        "jti": secrets.token_urlsafe(18),
        "body_sha256": body_sha256(body),
    }
    return jwt.encode(claims, key, algorithm="HS256")


class TokenError(Exception):
    """A review call's token is missing, invalid, expired, for another body, or replayed (-> 401)."""


class ReplayCacheFull(Exception):
    """Too many live tokens to remember; refusing is the only replay-safe answer (-> 503)."""


class TokenVerifier:
    """Checks a call's JWT and body, and remembers every accepted ``jti`` until it expires.

    Only HS256 is accepted. The replay cache holds at most ``capacity`` live entries; each
    expires with its token (plus leeway), which is at most ``MAX_TOKEN_LIFETIME`` away.
    """

    def __init__(
        self,
        key: bytes,
        *,
        leeway: float = LEEWAY,
        capacity: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = check_key(key)
        self._leeway = leeway
        self._capacity = capacity
        self._clock = clock
        self._seen: dict[str, float] = {}
        self._expiries: list[tuple[float, str]] = []

    def verify_token(self, token: str) -> dict[str, Any]:
        """Signature, algorithm, audience, expiry and claim shapes; the body is checked later."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                audience=AUDIENCE,
                leeway=self._leeway,
                options={"require": list(REQUIRED_CLAIMS), "verify_signature": True},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("token expired") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(f"token lacks the {exc.claim!r} claim") from None
        except jwt.PyJWTError as exc:
            raise TokenError(f"invalid token ({exc.__class__.__name__})") from None
        for claim in ("iss", "jti", "body_sha256"):
            value = claims[claim]
            if not isinstance(value, str) or not value or len(value) > 256:
                raise TokenError(f"token claim {claim!r} must be a non-empty string")
        exp, iat = claims["exp"], claims["iat"]
        if not isinstance(exp, int | float) or not isinstance(iat, int | float) or exp - iat > MAX_TOKEN_LIFETIME:
            raise TokenError(f"token lifetime exceeds {MAX_TOKEN_LIFETIME}s")
        return claims

    def check_body(self, claims: Mapping[str, Any], body: bytes) -> None:
        if not hmac.compare_digest(str(claims["body_sha256"]), body_sha256(body)):
            raise TokenError("token was signed for another body")

    def remember(self, claims: Mapping[str, Any]) -> None:
        """Accept this ``jti`` once; a second use within its lifetime is a replay."""
        now = self._clock()
        while self._expiries and self._expiries[0][0] < now:
            _, old = heapq.heappop(self._expiries)
            self._seen.pop(old, None)
        ident = f"{claims['iss']}\x00{claims['jti']}"
        if ident in self._seen:
            raise TokenError("token replayed (jti already used)")
        if len(self._seen) >= self._capacity:
            raise ReplayCacheFull("replay cache full; retry shortly")
        until = float(claims["exp"]) + self._leeway
        self._seen[ident] = until
        heapq.heappush(self._expiries, (until, ident))

    def verify(self, token: str, body: bytes) -> dict[str, Any]:
        """All three checks in order; raises TokenError or ReplayCacheFull."""
        claims = self.verify_token(token)
        self.check_body(claims, body)
        self.remember(claims)
        return claims
