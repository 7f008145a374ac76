"""Data protection: what policy says to do with secrets and personal data found in traffic,
and the walk over MCP payloads that finds and masks them. Pure: no I/O.

Directions: ``arguments`` (what an agent sends: tool-call arguments) and ``results`` (what
comes back: tool results with their text, ``structuredContent`` and embedded resources,
``resources/read`` contents, and the prompts of sampling requests a server sends). Each
direction has an action per category (``secrets``, ``pii``): ``mask`` replaces a value with
``[REDACTED:<kind>]`` (a masked string is still a string, so JSON stays valid and keeps its
shape), ``deny`` refuses, ``audit`` only records, ``off`` does not look. Audit records carry
kinds, counts and keyed fingerprints, never a value.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from proxy.core import detectors
from proxy.core.action import Effect

ACTIONS: Final = ("mask", "deny", "audit", "off")
_RANK: Final = {"off": 0, "audit": 1, "mask": 2, "deny": 3}
BY_EFFECT: Final = "by_effect"
"""The default for secrets in arguments: ``deny`` for a mutating or higher tool, ``audit`` for a read."""
_MAX_FINGERPRINTS = 10
_TOO_DEEP: Final = "the payload is nested too deeply to scan"
INLINE_SCAN_BYTES: Final = 256 * 1024
"""A longer answer is scanned off the event loop (a thread), so other calls are not held up."""
SECRET_KINDS: Final = (*detectors.SECRET_KINDS, "secret_field")
"""``secret_field``: a high-entropy value (any value, for a password) under a key-like JSON key."""


@dataclass(frozen=True, slots=True)
class CategoryRules:
    """One category (secrets or pii): the action per direction and the kinds looked for."""

    arguments: str
    results: str
    kinds: frozenset[str]


@dataclass(frozen=True, slots=True)
class Override:
    """``data_protection.overrides`` entry: tools and upstreams (globs) and the keys it changes."""

    tools: tuple[str, ...]
    upstreams: tuple[str, ...]
    secrets: tuple[tuple[str, Any], ...]
    pii: tuple[tuple[str, Any], ...]

    def matches(self, upstream: str, tool: str) -> bool:
        tool_ok = not self.tools or any(fnmatch.fnmatchcase(tool, g) for g in self.tools)
        upstream_ok = not self.upstreams or any(fnmatch.fnmatchcase(upstream, g) for g in self.upstreams)
        return tool_ok and upstream_ok


@dataclass(frozen=True, slots=True)
class Plan:
    """What to look for in one direction of one call: the detectors and the action per kind."""

    detectors: tuple[detectors.Detector, ...]
    actions: Mapping[str, str]  # kind -> mask | deny | audit
    secret_fields: str  # action for key-like fields holding secrets ("off": not looked at)
    phone_region: str | None

    @property
    def active(self) -> bool:
        return bool(self.detectors) or self.secret_fields != "off" or self.phone_region is not None


_NOTHING: Final = Plan((), {}, "off", None)


@dataclass(frozen=True)
class DataProtection:
    """The effective ``data_protection`` policy."""

    secrets: CategoryRules = CategoryRules(BY_EFFECT, "mask", frozenset(SECRET_KINDS))
    pii: CategoryRules = CategoryRules("off", "off", frozenset(detectors.PII_KINDS))
    phone_region: str = "US"
    overrides: tuple[Override, ...] = ()
    _memo: dict[tuple[str, str, str, int], Plan] = field(default_factory=dict, repr=False, compare=False)

    def plan(self, direction: str, upstream: str, tool: str, effect: Effect = Effect.READ) -> Plan:
        """The plan for ``direction`` ("arguments" | "results") of a call to ``tool`` at ``upstream``."""
        key = (direction, upstream, tool, int(effect))
        cached = self._memo.get(key)
        if cached is not None:
            return cached
        secrets, pii = self.secrets, self.pii
        for override in self.overrides:
            if override.matches(upstream, tool):
                secrets = _apply(secrets, override.secrets)
                pii = _apply(pii, override.pii)
                break
        secret_action = getattr(secrets, direction)
        if secret_action == BY_EFFECT:
            secret_action = "deny" if effect >= Effect.MUTATING else "audit"
        pii_action = getattr(pii, direction)
        actions: dict[str, str] = {}
        if secret_action != "off":
            actions.update((kind, secret_action) for kind in secrets.kinds)
        if pii_action != "off":
            actions.update((kind, pii_action) for kind in pii.kinds)
        chosen = tuple(d for d in (*detectors.SECRET_DETECTORS, *detectors.PII_DETECTORS) if d.kind in actions)
        phone = self.phone_region if "phone" in actions else None
        fields = secret_action if secret_action != "off" and "secret_field" in secrets.kinds else "off"
        if fields != "off":
            actions["secret_field"] = fields
        result = Plan(chosen, actions, fields, phone) if actions else _NOTHING
        if len(self._memo) > 4096:
            self._memo.clear()
        self._memo[key] = result
        return result


def _frozen(block: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in (block or {}).items()))


def _apply(rules: CategoryRules, given: Mapping[str, Any] | tuple[tuple[str, Any], ...]) -> CategoryRules:
    changes = dict(given)
    if not changes:
        return rules
    return CategoryRules(
        arguments=changes.get("arguments", rules.arguments),
        results=changes.get("results", rules.results),
        kinds=frozenset(changes["kinds"]) if "kinds" in changes else rules.kinds,
    )


# --------------------------------------------------------------------------- findings


@dataclass(slots=True)
class Findings:
    """What one scan found: per kind, the count, the action and fingerprints of the values."""

    direction: str
    kinds: dict[str, list[str]] = field(default_factory=dict)  # kind -> fingerprints (one per value)
    action: str = "off"  # the strictest action any finding asked for
    incomplete: str | None = None  # why the payload could not be scanned whole (fail closed)
    clean: str | None = field(default=None, repr=False, compare=False)
    """The last text this scan found nothing in: a tool's text answer comes again in its
    ``structuredContent`` (``{"result": text}``), and the same text under the same plan finds the same."""

    def __bool__(self) -> bool:
        return bool(self.kinds) or self.incomplete is not None

    def add(self, kind: str, action: str, fingerprint: str) -> None:
        self.kinds.setdefault(kind, []).append(fingerprint)
        if _RANK[action] > _RANK[self.action]:
            self.action = action

    @property
    def denied(self) -> bool:
        return self.action == "deny" or self.incomplete is not None

    def summary(self) -> str:
        """``aws_access_key (1), jwt (2)``: safe to put in a reason."""
        return ", ".join(f"{kind} ({len(fps)})" for kind, fps in sorted(self.kinds.items()))

    def record(self) -> dict[str, Any]:
        """The audit form: kinds with counts and fingerprints, never a value."""
        out: dict[str, Any] = {
            "direction": self.direction,
            "action": self.action,
            "findings": {
                kind: {"count": len(fps), "fingerprints": fps[:_MAX_FINGERPRINTS]}
                for kind, fps in sorted(self.kinds.items())
            },
        }
        if self.incomplete is not None:
            out["incomplete"] = self.incomplete
        return out


def outcome_record(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The outcome audit's ``data_protection`` for one forward: its one scan's record, or all of
    them (a stream is scanned event by event)."""
    if not records:
        return None
    return records[0] if len(records) == 1 else {"scans": list(records)}


class Scanner:
    """Finds and masks in MCP payloads under a Plan; fingerprints are keyed (HMAC), so the audit
    log can say "the same value as before" without letting anyone test guesses against it."""

    def __init__(self, fingerprint_key: bytes) -> None:
        self._key = fingerprint_key

    def fingerprint(self, value: str) -> str:
        return "hmac-sha256:" + hmac.new(self._key, value.encode("utf-8", "replace"), hashlib.sha256).hexdigest()[:16]

    # -- entry points, one per payload shape -----------------------------------------------

    def arguments(self, arguments: Mapping[str, Any], plan: Plan) -> tuple[Findings, dict[str, Any] | None]:
        """Tool-call arguments: every string, with key-like fields checked for secrets."""
        findings = Findings("arguments")
        if not plan.active or not arguments:
            return findings, None
        try:
            masked = self._value(arguments if type(arguments) is dict else dict(arguments), None, plan, findings)
        except RecursionError:
            findings.incomplete = _TOO_DEEP
            return findings, None
        return findings, masked if masked is not None and findings.action == "mask" else None

    def tool_result(self, result: Mapping[str, Any], plan: Plan) -> tuple[Findings, dict[str, Any] | None]:
        """A CallToolResult: text content, embedded resources, resource links, ``structuredContent``."""
        findings = Findings("results")
        if not plan.active:
            return findings, None

        def walk() -> dict[str, Any] | None:
            out: dict[str, Any] | None = None
            content = result.get("content")
            if isinstance(content, list):
                new = self._list(content, self._block, plan, findings)
                if new is not None:
                    out = {**result, "content": new}
            structured = result.get("structuredContent")
            if structured is not None:
                masked = self._value(structured, None, plan, findings)
                if masked is not None:
                    out = {**(out or result), "structuredContent": masked}
            return out

        return findings, self._guarded(walk, findings)

    def resource_contents(self, result: Mapping[str, Any], plan: Plan) -> tuple[Findings, dict[str, Any] | None]:
        """A ``resources/read`` result: the text of each entry of ``contents``."""
        findings = Findings("results")
        if not plan.active:
            return findings, None

        def walk() -> dict[str, Any] | None:
            contents = result.get("contents")
            if not isinstance(contents, list):
                return None
            new = self._list(contents, self._resource, plan, findings)
            return None if new is None else {**result, "contents": new}

        return findings, self._guarded(walk, findings)

    def sampling(self, params: Mapping[str, Any], plan: Plan) -> tuple[Findings, dict[str, Any] | None]:
        """A ``sampling/createMessage`` request's prompt: its messages and system prompt."""
        findings = Findings("results")
        if not plan.active:
            return findings, None

        def walk() -> dict[str, Any] | None:
            out: dict[str, Any] | None = None
            messages = params.get("messages")
            if isinstance(messages, list):
                new = self._list(messages, self._message, plan, findings)
                if new is not None:
                    out = {**params, "messages": new}
            system = params.get("systemPrompt")
            if isinstance(system, str):
                masked = self._text(system, None, plan, findings)
                if masked is not None:
                    out = {**(out or params), "systemPrompt": masked}
            return out

        return findings, self._guarded(walk, findings)

    def a2a_answer(self, answer: Mapping[str, Any], plan: Plan) -> tuple[Findings, dict[str, Any] | None]:
        """An A2A answer (a JSON-RPC result, a REST body or one stream event, 1.0 or 0.3): the parts
        of every message and artifact in it, wherever they sit (a task's status message, history
        and artifacts, an update event, a listed task)."""
        findings = Findings("results")
        if not plan.active:
            return findings, None
        return findings, self._guarded(lambda: self._a2a(answer, plan, findings), findings)

    # -- the walk ---------------------------------------------------------------------------

    def _a2a(self, value: Any, plan: Plan, findings: Findings) -> Any:
        """Any JSON value of an A2A answer: a ``parts`` list has its parts scanned, everything else is
        searched for more of them (identifiers, states and timestamps are not text anyone wrote)."""
        if isinstance(value, dict):
            out: dict[str, Any] | None = None
            for name, item in value.items():
                if name == "parts" and isinstance(item, list):
                    new = self._list(item, self._part, plan, findings)
                elif isinstance(item, dict | list):
                    new = self._a2a(item, plan, findings)
                else:
                    continue
                if new is not None:
                    if out is None:
                        out = dict(value)
                    out[name] = new
            return out
        if isinstance(value, list):
            return self._list(value, self._a2a, plan, findings)
        return None

    def _part(self, part: Any, plan: Plan, findings: Findings) -> Any:
        """One A2A part: text, structured ``data`` (key-aware, like ``structuredContent``) and file
        URLs (1.0 ``url``, 0.3 ``file.uri``). File bytes are media, not scanned, like MCP images."""
        if not isinstance(part, dict):
            return None
        out = self._fields(part, ("text", "url"), plan, findings)
        data = part.get("data")
        if isinstance(data, dict | list):
            masked = self._value(data, None, plan, findings)
            if masked is not None:
                out = {**(out or part), "data": masked}
        file = part.get("file")
        if isinstance(file, dict):
            new = self._fields(file, ("uri",), plan, findings)
            if new is not None:
                out = {**(out or part), "file": new}
        return out

    @staticmethod
    def _guarded(walk: Any, findings: Findings) -> Any:
        try:
            return walk()
        except RecursionError:
            findings.incomplete = _TOO_DEEP
            return None

    def _block(self, block: Any, plan: Plan, findings: Findings) -> Any:
        """One content block: text, an embedded resource, or a resource link. Images and audio
        are base64 media, not text, and are not scanned."""
        if not isinstance(block, dict):
            return None
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            masked = self._text(text, None, plan, findings) if isinstance(text, str) else None
            return None if masked is None else {**block, "text": masked}
        if kind == "resource":
            resource = block.get("resource")
            new = self._resource(resource, plan, findings)
            return None if new is None else {**block, "resource": new}
        if kind == "resource_link":
            return self._fields(block, ("uri", "description"), plan, findings)
        return None

    def _resource(self, resource: Any, plan: Plan, findings: Findings) -> Any:
        if not isinstance(resource, dict):
            return None
        return self._fields(resource, ("text", "uri"), plan, findings)

    def _message(self, message: Any, plan: Plan, findings: Findings) -> Any:
        if not isinstance(message, dict):
            return None
        content = message.get("content")
        if isinstance(content, list):
            new = self._list(content, self._block, plan, findings)
        else:
            new = self._block(content, plan, findings)
        return None if new is None else {**message, "content": new}

    def _fields(self, item: dict[str, Any], names: Sequence[str], plan: Plan, findings: Findings) -> Any:
        out: dict[str, Any] | None = None
        for name in names:
            value = item.get(name)
            if isinstance(value, str):
                masked = self._text(value, None, plan, findings)
                if masked is not None:
                    out = {**(out or item), name: masked}
        return out

    def _list(self, items: list[Any], each: Any, plan: Plan, findings: Findings) -> list[Any] | None:
        out: list[Any] | None = None
        for index, item in enumerate(items):
            new = each(item, plan, findings)
            if new is not None:
                if out is None:
                    out = list(items)
                out[index] = new
        return out

    def _value(self, value: Any, key: str | None, plan: Plan, findings: Findings) -> Any:
        """Any JSON value; returns the masked copy, or None when nothing changed."""
        if isinstance(value, str):
            return self._text(value, key, plan, findings)
        if isinstance(value, dict):
            out: dict[str, Any] | None = None
            for name, item in value.items():
                new = self._value(item, name if isinstance(name, str) else None, plan, findings)
                if new is not None:
                    if out is None:
                        out = dict(value)
                    out[name] = new
            return out
        if isinstance(value, list):
            out_list: list[Any] | None = None
            for index, item in enumerate(value):
                new = self._value(item, key, plan, findings)
                if new is not None:
                    if out_list is None:
                        out_list = list(value)
                    out_list[index] = new
            return out_list
        return None

    def _text(self, text: str, key: str | None, plan: Plan, findings: Findings) -> str | None:
        """One string: the masked string when a finding is to be masked, else None."""
        if not text:
            return None
        if key is not None and plan.secret_fields != "off" and detectors.secret_field(key, text):
            findings.add("secret_field", plan.secret_fields, self.fingerprint(text))
            return "[REDACTED:secret_field]" if plan.secret_fields == "mask" else None
        if text == findings.clean:
            return None
        spans = detectors.find(text, plan.detectors, phone_region=plan.phone_region)
        if not spans:
            findings.clean = text
            return None
        to_mask: list[detectors.Span] = []
        for span in spans:
            action = plan.actions.get(span.kind, "audit")
            findings.add(span.kind, action, self.fingerprint(text[span.start : span.end]))
            if action == "mask":
                to_mask.append(span)
        return detectors.mask(text, to_mask) if to_mask else None


def parse(block: Mapping[str, Any] | None) -> DataProtection:
    """``data_protection`` as validated by the schema (merged: later files' keys win)."""
    if not block:
        return DataProtection()
    base = DataProtection()
    secrets = _apply(base.secrets, block.get("secrets") or {})
    pii = _apply(base.pii, block.get("pii") or {})
    overrides = tuple(
        Override(
            tools=tuple((entry.get("match") or {}).get("tools", ())),
            upstreams=tuple((entry.get("match") or {}).get("upstreams", ())),
            secrets=_frozen(entry.get("secrets")),
            pii=_frozen(entry.get("pii")),
        )
        for entry in block.get("overrides", ())
    )
    return DataProtection(secrets, pii, str(block.get("phone_region", base.phone_region)), overrides)


def merge_blocks(blocks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Layer several files' ``data_protection`` blocks: per category, a later file's keys win."""
    merged: dict[str, Any] = {}
    for block in blocks:
        for name, value in block.items():
            if name in ("secrets", "pii") and isinstance(value, dict):
                merged[name] = {**merged.get(name, {}), **value}
            else:
                merged[name] = value
    return merged
