"""Tool pinning (the MCP "rug pull" defence) and tool-poisoning blocking.

Trust on first use: the first definition Wicket sees of a tool from an upstream is pinned by
the SHA-256 of its canonical JSON (name, description, input schema, annotations). A later
definition that differs is *pending* until an operator approves it; so is a definition whose
descriptions carry hidden instructions for the model. Policy decides what pending means:
``tool_definitions.on_change`` / ``on_poisoning`` ``block`` hides the tool from ``tools/list``
and refuses its calls, ``warn`` only audits and counts.

State lives in the shared ``Store`` so every replica agrees: one record per tool (the source
of truth, changed only by compare-and-set, so replicas seeing the same new definition never
fight and exactly one audits it) and, per upstream, a small document of the tools that are
pending. The call path reads only a local copy of that document, refreshed at most every
``refresh_seconds``.

Both are HMAC-signed like sessions (``RecordSigner``, bound to their store key), and the
document also names every tool that has a record and carries a version. So a record edited
in the store, or deleted while the document still names it, is *tampered*: the tool is blocked
until an operator approves what the upstream lists now, instead of being pinned afresh on the
next list. A document that fails its check, or disappears or goes back to an older version
after this process saw it, fails closed on the call path until a ``tools/list`` rebuilds it
from the signed records.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import json
import logging
import re
import shlex
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from proxy.audit.sink import AuditUnavailable
from proxy.core import injection
from proxy.core.action import Effect
from proxy.core.approvals import rfc3339
from proxy.core.policy import Policy, normalise_url
from proxy.core.sessions import RecordSigner, SessionIntegrityError
from proxy.state.base import Store, StoreUnavailable
from proxy.telemetry import Metrics

log = logging.getLogger(__name__)

HASHED_FIELDS = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
"""Everything a model reads of a tool (the poisoning scan reads the same fields), so no part of
what it reads can change without the pin noticing."""
RECORD_VERSION = 1
INDEX_LIMIT = 5000
"""Tools listed per upstream by ``states`` (newest first); pins beyond it still hold."""
UPSTREAMS_INDEX = "wicket:index:toolpin-upstreams"
UPSTREAMS_LIMIT = 100
MAX_STORED_DEFINITION = 64 * 1024
"""Bytes of a definition kept for the operator to review; a larger one is stored shortened."""
_CAS_ATTEMPTS = 8
_SCAN_MEMO = 4096
_FACTS_LIMIT = 10_000
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
INTEGRITY = "integrity"
"""The finding category of a pin that failed its integrity check (altered, or deleted from the store)."""

AuditWriter = Callable[[dict[str, Any]], Awaitable[None]]
"""Appends one audit event; raises ``AuditUnavailable`` when it cannot."""


class ToolPinError(Exception):
    """An operator request about a pin that cannot be done; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def definition_sha256(tool: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the hashed fields (a missing field counts as null)."""
    canonical = json.dumps(
        {key: tool.get(key) for key in HASHED_FIELDS}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


@functools.lru_cache(maxsize=64)
def upstream_tag(upstream: str) -> str:
    """A bounded, brace-free key part for an upstream URL (``HTTP://Host:80/mcp/`` = ``http://host/mcp``).

    Cached: every tools/call asks for its upstream's tag, and a Wicket has one or a few upstreams."""
    return hashlib.sha256(normalise_url(upstream).encode("utf-8", "surrogatepass")).hexdigest()[:24]


def record_key(upstream: str, name: str) -> str:
    """``wicket:toolpin:{tag}:name``; names outside ``[A-Za-z0-9_.-]{1,128}`` are hashed (``~`` never
    occurs in a plain name, so the two forms cannot collide). The hash tag keeps one upstream's
    pins in one Redis Cluster slot."""
    part = (
        name if _PLAIN_NAME.fullmatch(name) else "~" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
    )
    return f"wicket:toolpin:{{{upstream_tag(upstream)}}}:{part}"


def _flagged_key(upstream: str) -> str:
    return f"wicket:toolpins:{{{upstream_tag(upstream)}}}:pending"


def _index_key(upstream: str) -> str:
    return f"wicket:index:toolpins:{{{upstream_tag(upstream)}}}"


@dataclasses.dataclass(frozen=True, slots=True)
class _Listed:
    """One name of a ``tools/list`` result: its definition, hash and the texts a model reads."""

    definition: dict[str, Any]
    sha: str
    texts: tuple[str, ...]


def _listed(found: Sequence[dict[str, Any]]) -> _Listed:
    """A name listed twice with different definitions is pinned as the whole set, so it cannot
    show one definition and run another."""
    hashes = {definition_sha256(tool) for tool in found}
    texts = tuple(text for tool in found for text in injection.tool_texts(tool))
    if len(hashes) == 1:
        return _Listed(found[0], hashes.pop(), texts)
    canonical = json.dumps(
        [{key: tool.get(key) for key in HASHED_FIELDS} for tool in found],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    combined = {"name": found[0]["name"], "duplicates": list(found)}
    return _Listed(combined, hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest(), texts)


def _stored(tool: Mapping[str, Any]) -> dict[str, Any]:
    """The definition as the operator reviews it, bounded in size."""
    text = json.dumps(tool, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if len(text.encode("utf-8", "surrogatepass")) <= MAX_STORED_DEFINITION:
        return dict(tool)
    description = tool.get("description")
    return {
        "name": tool.get("name"),
        "description": description[:4096] if isinstance(description, str) else None,
        "annotations": _hints(tool.get("annotations")),  # the call path classifies by them
        "truncated": True,
        "size": len(text),
    }


def _hints(annotations: Any) -> dict[str, bool] | None:
    """The boolean hints of a tool's annotations (what effect classification reads), nothing else."""
    if not isinstance(annotations, Mapping):
        return None
    return {str(k): v for k, v in annotations.items() if isinstance(v, bool) and len(str(k)) <= 64}


def _stricter(first: Any, second: Any) -> dict[str, bool] | None:
    """The hints of two definitions of one tool combined so the result is never the milder:
    read-only only if both say so, destructive if either does."""
    a, b = _hints(first) or {}, _hints(second) or {}
    if not a and not b:
        return None
    combined: dict[str, bool] = {}
    if a.get("readOnlyHint") is not None or b.get("readOnlyHint") is not None:
        combined["readOnlyHint"] = a.get("readOnlyHint") is True and b.get("readOnlyHint") is True
    if a.get("destructiveHint") is True or b.get("destructiveHint") is True:
        combined["destructiveHint"] = True
    elif a.get("destructiveHint") is False and b.get("destructiveHint") is False:
        combined["destructiveHint"] = False
    return combined


@dataclasses.dataclass(frozen=True, slots=True)
class ToolFacts:
    """What a ``tools/call`` needs to know of a pinned tool: its annotations and whether an
    operator accepted them (``wicket tools trust``) for exactly the definition pinned now."""

    annotations: Mapping[str, Any] | None
    trusted: bool = False

    @staticmethod
    def of(record: PinRecord) -> ToolFacts:
        pinned = record.definition.get("annotations") if record.definition else None
        if record.pending is None:
            return ToolFacts(pinned, record.annotations_trusted)
        # A changed (or poisoned) definition in warn mode still runs: believe the stricter of the two.
        return ToolFacts(
            _stricter(pinned, record.pending.get("annotations"))
            if record.definition
            else _hints(record.pending.get("annotations"))
        )


EffectOf = Callable[[str, str, Mapping[str, Any] | None, bool], Effect]
"""(tool, upstream, annotations, trusted) -> the effect a call is held at (``EffectClassifier.tool_effect``)."""


def _findings_json(findings: Iterable[injection.InjectionFinding]) -> list[dict[str, str]]:
    return [{"category": f.category, "message": f.message} for f in findings]


def _findings_of(items: Sequence[Mapping[str, str]]) -> tuple[injection.InjectionFinding, ...]:
    return tuple(injection.InjectionFinding(str(i.get("category")), str(i.get("message"))) for i in items)


def _short(sha: str | None) -> str:
    return "none" if sha is None else sha[:12] + "…"


@dataclasses.dataclass(frozen=True, slots=True)
class Pending:
    """What the call path needs to know about a tool awaiting approval (one entry of the pending document)."""

    pinned: str | None  # the trusted definition's hash; None: never trusted (poisoned on first sight)
    pending: str
    findings: tuple[dict[str, str], ...] = ()

    def blocking(self, policy: Policy) -> str | None:
        """``tampered``, ``poisoned`` or ``changed`` when this tool is blocked now, else None. A
        tampered pin blocks whatever the policy says: nothing is left to compare the definition with."""
        if any(f.get("category") == INTEGRITY for f in self.findings):
            return "tampered"
        if self.findings and policy.tool_on_poisoning == "block":
            return "poisoned"
        if self.pinned is not None and self.pinned != self.pending and policy.tool_on_change == "block":
            return "changed"
        return None

    def reason(self, name: str, kind: str) -> str:
        shown = name if len(name) <= 128 else name[:125] + "..."
        command = f"`wicket tools approve {shlex.quote(shown)}`"
        if kind == "tampered":
            return (
                f"Tool '{shown}' lost its pin: the stored record failed its integrity check (altered or deleted "
                f"in the state store); calls are blocked until an operator reviews the current definition "
                f"(sha256 {_short(self.pending)}) and approves it with {command}."
            )
        if kind == "poisoned":
            found = injection.describe(_findings_of(self.findings))
            return (
                f"Tool '{shown}' has a description that looks like tool poisoning ({found}); calls are blocked "
                f"until an operator reviews the definition (sha256 {_short(self.pending)}) and approves it with "
                f"{command}."
            )
        return (
            f"Tool '{shown}' changed its definition since it was pinned (sha256 {_short(self.pinned)} -> "
            f"{_short(self.pending)}); calls are blocked until an operator approves it with {command}."
        )

    def to_json(self) -> dict[str, Any]:
        return {"pinned": self.pinned, "pending": self.pending, "findings": list(self.findings)}

    @staticmethod
    def from_json(item: Any) -> Pending:
        if not isinstance(item, dict) or not isinstance(item.get("pending"), str):
            raise ValueError("not a pending entry")
        pinned = item.get("pinned")
        findings = item.get("findings") or []
        if (pinned is not None and not isinstance(pinned, str)) or not isinstance(findings, list):
            raise ValueError("not a pending entry")
        return Pending(pinned, item["pending"], tuple(dict(f) for f in findings if isinstance(f, dict)))


@dataclasses.dataclass(frozen=True, slots=True)
class PinRecord:
    """One tool of one upstream: its trusted definition and, while there is one, the pending one."""

    upstream: str
    name: str
    first_seen: float
    sha256: str | None = None
    definition: dict[str, Any] | None = None
    findings: tuple[dict[str, str], ...] = ()  # of the trusted definition (an approved poisoned one)
    approved_by: str | None = None
    approved_at: float | None = None
    pending_sha256: str | None = None
    pending: dict[str, Any] | None = None
    pending_findings: tuple[dict[str, str], ...] = ()
    changed_at: float | None = None
    trusted_sha256: str | None = None  # the definition whose annotations an operator accepted
    trusted_by: str | None = None
    trusted_at: float | None = None

    @property
    def annotations_trusted(self) -> bool:
        """An operator accepted the annotations of the definition pinned now; any other definition
        (a pending one, or one approved since) withdraws that."""
        return self.trusted_sha256 is not None and self.trusted_sha256 == self.sha256 and self.pending_sha256 is None

    @property
    def status(self) -> str:
        if self.pending_sha256 is not None:
            return "poisoned" if self.pending_findings else "changed"
        return "approved" if self.approved_by else "pinned"

    def flag(self) -> Pending | None:
        if self.pending_sha256 is None:
            return None
        return Pending(self.sha256, self.pending_sha256, self.pending_findings)

    @property
    def tampered(self) -> bool:
        """The pending definition replaced a pin that failed its integrity check."""
        return any(f.get("category") == INTEGRITY for f in self.pending_findings)

    def encode(self, signer: RecordSigner, key: str) -> bytes:
        body = dataclasses.asdict(self)
        body["v"] = RECORD_VERSION
        return signer.encode(key, body)

    @staticmethod
    def decode(raw: bytes | None, signer: RecordSigner, key: str) -> PinRecord | None:
        """The record, or None when absent; raises SessionIntegrityError when it fails its HMAC or is malformed."""
        if raw is None:
            return None
        body = signer.decode(key, raw)
        try:
            if not isinstance(body, dict) or body.pop("v", None) != RECORD_VERSION:
                raise ValueError("unknown record version")
            body["findings"] = tuple(body.get("findings") or ())
            body["pending_findings"] = tuple(body.get("pending_findings") or ())
            record = PinRecord(**body)
            if (
                not isinstance(record.name, str)
                or not isinstance(record.upstream, str)
                or not isinstance(record.first_seen, int | float)
            ):
                raise ValueError("malformed record")
            return record
        except (ValueError, TypeError) as exc:
            raise SessionIntegrityError(f"tool pin {key!r} is malformed ({exc})") from None

    def view(self, policy: Policy, effect_of: EffectOf | None = None) -> dict[str, Any]:
        """What an operator sees (``GET /v1/tools``, ``wicket tools list``); with ``effect_of``, also
        the effect calls are held at and the one the annotations claim (``held_above_annotations``)."""
        flag = self.flag()
        facts = ToolFacts.of(self)
        extra: dict[str, Any] = {}
        if effect_of is not None:
            held = effect_of(self.name, self.upstream, facts.annotations, facts.trusted)
            claimed = effect_of(self.name, self.upstream, facts.annotations, True)
            extra = {
                "effect": held.label,
                "annotated_effect": claimed.label,
                "held_above_annotations": held > claimed,
            }
        return {
            "name": self.name,
            "upstream": self.upstream,
            "status": self.status,
            "blocked": flag is not None and flag.blocking(policy) is not None,
            "sha256": self.sha256,
            "pending_sha256": self.pending_sha256,
            "first_seen": rfc3339(self.first_seen),
            "changed_at": rfc3339(self.changed_at),
            "approved_by": self.approved_by,
            "approved_at": rfc3339(self.approved_at),
            "findings": list(self.pending_findings if flag is not None else self.findings),
            "definition": self.definition,
            "pending": self.pending,
            "annotations_trusted": facts.trusted,
            "trusted_sha256": self.trusted_sha256,
            "trusted_by": self.trusted_by,
            "trusted_at": rfc3339(self.trusted_at),
            **extra,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class _Assessment:
    record: PinRecord | None  # the record to write, or None: nothing changes
    events: tuple[str, ...] = ()


def assess(
    record: PinRecord | None,
    *,
    upstream: str,
    tool: Mapping[str, Any],
    sha: str,
    findings: tuple[dict[str, str], ...],
    now: float,
) -> _Assessment:
    """The pure rule: what a listed definition does to the tool's record, and which events it raises.

    Never trusted (no record, or only a poisoned first sight): a clean definition is pinned, a
    poisoned one is pending. Otherwise the trusted definition (clean, or approved as it is)
    clears any pending one, and anything else becomes the pending definition; events are
    raised only for a pending definition not seen before, so a repeated list is silent.
    """
    name = str(tool.get("name"))
    if record is None or record.sha256 is None:
        if not findings:
            first_seen = record.first_seen if record is not None else now
            pinned = PinRecord(upstream, name, first_seen, sha256=sha, definition=_stored(tool))
            return _Assessment(pinned, ("tool_pinned",))
        if record is not None and record.pending_sha256 == sha and record.pending_findings == findings:
            return _Assessment(None)
        base = record or PinRecord(upstream, name, now)
        again = record is not None and record.pending_sha256 == sha
        updated = dataclasses.replace(
            base, pending_sha256=sha, pending=_stored(tool), pending_findings=findings, changed_at=now
        )
        return _Assessment(updated, () if again else ("tool_poisoned",))
    if sha == record.sha256 and (record.approved_by or not findings):
        if record.pending_sha256 is None:
            return _Assessment(None)
        cleared = dataclasses.replace(record, pending_sha256=None, pending=None, pending_findings=())
        return _Assessment(cleared)  # back to exactly what was trusted
    if record.pending_sha256 == sha and record.pending_findings == findings:
        return _Assessment(None)
    events: list[str] = []
    new_definition = record.pending_sha256 != sha
    if new_definition and sha != record.sha256:
        events.append("tool_changed")
    if findings and (new_definition or not record.pending_findings):
        events.append("tool_poisoned")
    updated = dataclasses.replace(
        record,
        pending_sha256=sha,
        pending=_stored(tool),
        pending_findings=findings,
        changed_at=now if new_definition else record.changed_at,
    )
    return _Assessment(updated, tuple(events))


def _tampered(
    upstream: str, listed: _Listed, scanned: tuple[dict[str, str], ...], lost: str, now: float
) -> _Assessment:
    """A tool whose pin was altered or deleted: nothing trusted remains, so the listed definition
    waits for an operator whatever it says (never pinned afresh, which is what an attacker wants)."""
    name = str(listed.definition.get("name"))
    finding = {"category": INTEGRITY, "message": f"the tool's pin was {lost}"}
    record = PinRecord(
        upstream,
        name,
        now,
        pending_sha256=listed.sha,
        pending=_stored(listed.definition),
        pending_findings=(finding, *scanned),
        changed_at=now,
    )
    return _Assessment(record, ("tool_tampered",))


@dataclasses.dataclass(slots=True)
class _Cached:
    entries: dict[str, Pending]
    fetched_at: float


@dataclasses.dataclass(frozen=True, slots=True)
class _Document:
    """One upstream's signed pending document: what is pending, every tool with a record, a version."""

    entries: dict[str, Pending]
    pins: frozenset[str]
    version: int

    def encode(self, signer: RecordSigner, key: str) -> bytes:
        body = {
            "tools": {name: entry.to_json() for name, entry in sorted(self.entries.items())},
            "pins": sorted(self.pins),
            "version": self.version,
        }
        return signer.encode(key, body)


_EMPTY = _Document({}, frozenset(), 0)


class ToolPins:
    """Pins, pending definitions and operator approvals for the tools of MCP upstreams."""

    def __init__(
        self,
        store: Store,
        policy: Policy,
        *,
        signer: RecordSigner,
        audit: AuditWriter,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        refresh_seconds: float = 5.0,
        effect_of: EffectOf | None = None,
    ) -> None:
        self._store = store
        self._policy = policy
        self._signer = signer
        self._audit = audit
        self._metrics = metrics
        self._clock = clock
        self._refresh = refresh_seconds
        self._cache: dict[str, _Cached] = {}
        self._refresh_lock = asyncio.Lock()
        self._scans: dict[str, tuple[dict[str, str], ...]] = {}
        self._known_upstreams: set[str] = set()
        self._versions: dict[str, int] = {}  # upstream tag -> highest document version this process saw
        self._effect_of = effect_of
        # (upstream tag, tool) -> (its facts, or None: no record, when read): the call path's copy of the records.
        self._facts: dict[tuple[str, str], tuple[ToolFacts | None, float]] = {}

    # -- tools/list ----------------------------------------------------------------------------

    def use_policy(self, policy: Policy) -> None:
        self._policy = policy

    async def review(self, upstream: str, tools: list[Any], *, agent_id: str, session_id: str) -> frozenset[str]:
        """Pin first-seen tools and record changed and poisoned ones (audited and counted once per
        new definition, not on every list); return the names to hide from this result: the
        blocked ones (none in warn mode)."""
        grouped: dict[str, list[dict[str, Any]]] = {}
        for tool in tools:
            if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                grouped.setdefault(tool["name"], []).append(tool)
        if not grouped:
            return frozenset()
        listed = {name: _listed(found) for name, found in grouped.items()}
        names = list(listed)
        keys = [record_key(upstream, n) for n in names]
        raws = await self._store.get_many([_flagged_key(upstream), *keys])
        document = self._parse_document(upstream, raws[0], strict=False)
        pins = document.pins if document is not None else frozenset()
        final: dict[str, PinRecord | None] = {}
        written = False
        for name, key, raw in zip(names, keys, raws[1:], strict=True):
            record, wrote = await self._review_one(
                upstream, key, raw, listed[name], agent_id, session_id, named=name in pins
            )
            final[name] = record
            written = written or wrote
        consistent = document is not None and all(
            document.entries.get(n) == (r.flag() if r else None) and (r is None or n in pins) for n, r in final.items()
        )
        now, tag = self._clock(), upstream_tag(upstream)
        self._trim_facts()
        for name, record in final.items():
            self._facts[(tag, name)] = (ToolFacts.of(record) if record is not None else None, now)
        if written or not consistent or document is None:
            entries = await self._sync_pending(upstream, names)
        else:
            entries = document.entries
            self._cache[upstream_tag(upstream)] = _Cached(dict(entries), self._clock())
        if upstream not in self._known_upstreams:
            await self._store.index_add(UPSTREAMS_INDEX, upstream, self._clock(), UPSTREAMS_LIMIT)
            self._known_upstreams.add(upstream)
        return frozenset(n for n in names if (e := entries.get(n)) is not None and e.blocking(self._policy) is not None)

    async def _review_one(
        self,
        upstream: str,
        key: str,
        raw: bytes | None,
        listed: _Listed,
        agent_id: str,
        session_id: str,
        *,
        named: bool,
    ) -> tuple[PinRecord | None, bool]:
        """(the tool's record after this list, whether this call wrote it). Compare-and-set: of
        replicas racing on one new definition, one writes and audits, the others re-read it.
        ``named``: the signed document says this tool has a record, so a missing one was deleted."""
        scanned = self._scan(listed)
        for _ in range(_CAS_ATTEMPTS):
            now = self._clock()
            try:
                record = PinRecord.decode(raw, self._signer, key)
                lost = "deleted from the state store" if record is None and named else None
            except SessionIntegrityError:
                record, lost = None, "altered in the state store"
            if lost is not None:
                outcome = _tampered(upstream, listed, scanned, lost, now)
            else:
                kept = tuple(f for f in record.pending_findings if f.get("category") == INTEGRITY) if record else ()
                findings = kept + scanned  # a tampered pin stays blocked until an operator approves
                outcome = assess(
                    record, upstream=upstream, tool=listed.definition, sha=listed.sha, findings=findings, now=now
                )
            if outcome.record is None:
                return record, False
            if await self._store.compare_and_set(key, raw, outcome.record.encode(self._signer, key)):
                if record is None or outcome.record.pending_sha256 != record.pending_sha256:
                    # Newest first in the listing: what awaits approval is never the one to fall off.
                    await self._store.index_add(_index_key(upstream), outcome.record.name, now, INDEX_LIMIT)
                for event in outcome.events:
                    await self._announce(event, outcome.record, agent_id=agent_id, session_id=session_id)
                return outcome.record, True
            raw = await self._store.get(key)
        raise StoreUnavailable("a tool pin kept changing under concurrent writers; try again")

    def _scan(self, listed: _Listed) -> tuple[dict[str, str], ...]:
        """Poisoning findings of a definition (none when policy turns the scan off); memoised by hash."""
        if self._policy.tool_on_poisoning == "off":
            return ()
        found = self._scans.get(listed.sha)
        if found is None:
            found = tuple(_findings_json(injection.scan(listed.texts)))
            if len(self._scans) >= _SCAN_MEMO:
                self._scans.clear()
            self._scans[listed.sha] = found
        return found

    async def _announce(self, event: str, record: PinRecord, *, agent_id: str, session_id: str) -> None:
        policy = self._policy
        mode = policy.tool_on_poisoning if event == "tool_poisoned" else policy.tool_on_change
        sha = record.sha256 if event == "tool_pinned" else record.pending_sha256
        fields: dict[str, Any] = {
            "event": event,
            "protocol": "mcp",
            "upstream": record.upstream,
            "tool": record.name,
            "sha256": sha,
            "agent_id": agent_id,
            "session_id": session_id,
            "mode": mode,
        }
        if event != "tool_pinned" and record.sha256 is not None:
            fields["previous_sha256"] = record.sha256
        if event == "tool_tampered":
            fields["findings"] = list(record.pending_findings)
            log.error(
                "the pin of tool %r of %s failed its integrity check; the tool is blocked", record.name, record.upstream
            )
        elif event == "tool_poisoned":
            fields["findings"] = list(record.pending_findings)
            self._metrics.tool_poisonings.labels(mode).inc()
            log.warning("tool %r of %s looks poisoned (%s)", record.name, record.upstream, mode)
        elif event == "tool_changed":
            self._metrics.tool_definition_changes.labels(mode).inc()
            log.warning("tool %r of %s changed its definition (%s)", record.name, record.upstream, mode)
        try:
            await self._audit(fields)
        except AuditUnavailable:
            # The pin is already in force (blocking needs no audit to be safe); only the event is lost.
            log.error("the %s event for tool %r could not be audited", event, record.name)

    # -- the pending document ------------------------------------------------------------------

    def _parse_document(self, upstream: str, raw: bytes | None, *, strict: bool) -> _Document | None:
        """The signed pending document of one upstream; None when it is unreadable or unverifiable, or
        when it vanished or went back to an older version after this process saw it (``strict``: raise)."""
        tag = upstream_tag(upstream)
        seen = self._versions.get(tag, 0)
        try:
            if raw is None:
                if seen:
                    raise ValueError("it was deleted from the state store")
                return _EMPTY
            body = self._signer.decode(_flagged_key(upstream), raw)
            tools, pins, version = body.get("tools"), body.get("pins"), body.get("version")
            if not isinstance(tools, dict) or not isinstance(pins, list) or type(version) is not int:
                raise ValueError("it is malformed")
            if version < seen:
                raise ValueError(f"it went back from version {seen} to {version}")
            document = _Document(
                {str(name): Pending.from_json(item) for name, item in tools.items()},
                frozenset(str(p) for p in pins),
                version,
            )
        except (ValueError, KeyError, TypeError, SessionIntegrityError) as exc:
            if strict:
                raise StoreUnavailable(f"the pending-tools record failed its integrity check ({exc})") from None
            log.error("the pending-tools record of %s is unusable (%s); rebuilding it from the pins", upstream, exc)
            return None
        self._versions[tag] = version
        return document

    async def _sync_pending(self, upstream: str, names: Sequence[str]) -> dict[str, Pending]:
        """Make the pending document agree with the records of ``names``, read afresh together with
        it: a record change is always followed by this, so the last writer sees every record."""
        doc_key = _flagged_key(upstream)
        keys = [doc_key, *(record_key(upstream, n) for n in names)]
        tag = upstream_tag(upstream)
        for _ in range(_CAS_ATTEMPTS):
            raws = await self._store.get_many(keys)
            current = self._parse_document(upstream, raws[0], strict=False)
            entries = dict(current.entries) if current is not None else {}
            pins = set(current.pins) if current is not None else set()
            for name, key, raw in zip(names, keys[1:], raws[1:], strict=True):
                try:
                    record = PinRecord.decode(raw, self._signer, key)
                except SessionIntegrityError:
                    record = None  # only a list rewrites it (as tampered); the document keeps naming it
                if record is not None:
                    pins.add(name)
                flag = record.flag() if record is not None else None
                if flag is None:
                    entries.pop(name, None)
                else:
                    entries[name] = flag
            if current is not None and entries == current.entries and pins == current.pins:
                written = True
            else:
                version = max(current.version if current is not None else 0, self._versions.get(tag, 0)) + 1
                encoded = _Document(entries, frozenset(pins), version).encode(self._signer, doc_key)
                written = await self._store.compare_and_set(doc_key, raws[0], encoded)
                if written:
                    self._versions[tag] = version
            if written:
                self._cache[tag] = _Cached(entries, self._clock())
                return entries
        raise StoreUnavailable("the pending-tools record kept changing under concurrent writers; try again")

    # -- tools/call ------------------------------------------------------------------------------

    async def refusal(self, upstream: str, name: str) -> str | None:
        """Why a call to this tool is refused now, else None.

        Reads only this process's copy of the pending document, refreshed from the store at most
        every ``refresh_seconds`` (so another replica's flag or approval is seen within seconds).
        """
        entry = (await self._pending(upstream)).get(name)
        if entry is None:
            return None
        kind = entry.blocking(self._policy)
        if kind is None:
            return None
        self._metrics.tool_calls_blocked.labels(kind).inc()
        return entry.reason(name, kind)

    async def _pending(self, upstream: str) -> dict[str, Pending]:
        tag = upstream_tag(upstream)
        cached = self._cache.get(tag)
        if cached is not None and 0 <= self._clock() - cached.fetched_at < self._refresh:
            return cached.entries
        async with self._refresh_lock:  # one refresh at a time; callers queued behind it reuse it
            cached = self._cache.get(tag)
            if cached is not None and 0 <= self._clock() - cached.fetched_at < self._refresh:
                return cached.entries
            raw = await self._store.get(_flagged_key(upstream))
            document = self._parse_document(upstream, raw, strict=True)
            entries = document.entries if document is not None else {}
            self._cache[tag] = _Cached(entries, self._clock())
            return entries

    async def facts(self, upstream: str, name: str) -> ToolFacts | None:
        """The pinned facts of a tool (None: no replica has pinned it yet), from this process's
        copy, read again from the store at most every ``refresh_seconds`` (so a definition another
        replica pinned, or an operator's trust, arrives within seconds). A pin that fails its
        integrity check gives no annotations at all: the tool is classified by name, and the
        pending document blocks it once a list records it as tampered."""
        tag = upstream_tag(upstream)
        cached = self._facts.get((tag, name))
        if cached is not None and 0 <= self._clock() - cached[1] < self._refresh:
            return cached[0]
        key = record_key(upstream, name)
        try:
            record = PinRecord.decode(await self._store.get(key), self._signer, key)
        except SessionIntegrityError:
            log.error("tool pin %s failed its integrity check; its annotations are ignored", key)
            return ToolFacts(None)
        found = ToolFacts.of(record) if record is not None else None
        self._trim_facts()
        self._facts[(tag, name)] = (found, self._clock())
        return found

    def forget(self, upstream: str) -> None:
        """Drop this process's copy of an upstream's tools (it announced ``tools/list_changed``)."""
        tag = upstream_tag(upstream)
        for key in [k for k in self._facts if k[0] == tag]:
            del self._facts[key]

    def _trim_facts(self) -> None:
        if len(self._facts) >= _FACTS_LIMIT:
            self._facts.clear()  # names invented by clients must not grow memory; refills on demand

    # -- the operator ----------------------------------------------------------------------------

    async def trust(self, upstream: str, name: str, operator: str, *, sha256: str | None = None) -> dict[str, Any]:
        """Accept the annotations of the tool's pinned definition, so they may lower its effect
        (``readOnlyHint: true`` makes it a read). Recorded with the pin: a later definition,
        pending or approved, withdraws it. ``sha256`` (a prefix of 8+ hex digits) guards against
        trusting a definition other than the one the operator read. Audited before it takes effect."""
        if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{8,64}", sha256):
            raise ToolPinError(400, "sha256 must be 8 to 64 hex digits of the pinned definition's hash.")
        key = record_key(upstream, name)
        for _ in range(_CAS_ATTEMPTS):
            raw = await self._store.get(key)
            try:
                record = PinRecord.decode(raw, self._signer, key)
            except SessionIntegrityError:
                raise ToolPinError(
                    409, f"Tool {name!r}'s pin failed its integrity check; it cannot be trusted."
                ) from None
            if record is None:
                raise ToolPinError(404, f"No tool {name!r} has been seen from {upstream}.")
            if record.sha256 is None or record.pending_sha256 is not None:
                raise ToolPinError(
                    409,
                    f"Tool {name!r} has a definition awaiting approval (sha256 {_short(record.pending_sha256)}); "
                    "approve or reject it first, then trust its annotations.",
                )
            if sha256 is not None and not record.sha256.startswith(sha256.lower()):
                raise ToolPinError(
                    409, f"Tool {name!r} is pinned at sha256 {_short(record.sha256)}, not {sha256.lower()[:12]}…."
                )
            if not _hints((record.definition or {}).get("annotations")):
                raise ToolPinError(409, f"Tool {name!r} declares no annotations: there is nothing to trust.")
            if record.annotations_trusted:
                return record.view(self._policy, self._effect_of)
            trusted = dataclasses.replace(
                record, trusted_sha256=record.sha256, trusted_by=operator, trusted_at=self._clock()
            )
            encoded = trusted.encode(self._signer, key)
            if not await self._store.compare_and_set(key, raw, encoded):
                continue
            event = {
                "event": "tool_annotations_trusted",
                "protocol": "api",
                "upstream": record.upstream,
                "tool": record.name,
                "sha256": record.sha256,
                "annotations": _hints((record.definition or {}).get("annotations")),
                "approver": operator,
            }
            try:
                await self._audit(event)
            except Exception:
                await self._store.compare_and_set(key, encoded, raw)  # nothing unaudited takes effect
                raise
            self._facts[(upstream_tag(upstream), name)] = (ToolFacts.of(trusted), self._clock())
            return trusted.view(self._policy, self._effect_of)
        raise StoreUnavailable("the tool pin kept changing under concurrent writers; try again")

    async def approve(self, upstream: str, name: str, approver: str, *, sha256: str | None = None) -> dict[str, Any]:
        """Adopt the pending definition as the tool's pin (a poisoned one included: the operator has
        read it). ``sha256`` (a prefix of at least 8 hex digits) guards against approving a
        definition that changed again after the operator looked. Audited before it takes effect."""
        if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{8,64}", sha256):
            raise ToolPinError(400, "sha256 must be 8 to 64 hex digits of the pending definition's hash.")
        key = record_key(upstream, name)
        for _ in range(_CAS_ATTEMPTS):
            raw = await self._store.get(key)
            try:
                record = PinRecord.decode(raw, self._signer, key)
            except SessionIntegrityError:
                raise ToolPinError(
                    409,
                    f"Tool {name!r}'s pin failed its integrity check; list the upstream's tools so Wicket records "
                    "the current definition for review, then approve it.",
                ) from None
            if raw is None or record is None:
                raise ToolPinError(404, f"No tool {name!r} has been seen from {upstream}.")
            if record.pending_sha256 is None:
                raise ToolPinError(
                    409,
                    f"Tool {name!r} is not waiting for approval: it is {record.status} "
                    f"(sha256 {_short(record.sha256)}).",
                )
            if sha256 is not None and not record.pending_sha256.startswith(sha256.lower()):
                raise ToolPinError(
                    409,
                    f"Tool {name!r} now awaits approval of sha256 {_short(record.pending_sha256)}, not "
                    f"{sha256.lower()[:12]}…; review the new definition first.",
                )
            now = self._clock()
            approved = dataclasses.replace(
                record,
                sha256=record.pending_sha256,
                definition=record.pending,
                findings=record.pending_findings,
                approved_by=approver,
                approved_at=now,
                pending_sha256=None,
                pending=None,
                pending_findings=(),
            )
            encoded = approved.encode(self._signer, key)
            if not await self._store.compare_and_set(key, raw, encoded):
                continue
            event: dict[str, Any] = {
                "event": "tool_approved",
                "protocol": "api",
                "upstream": record.upstream,
                "tool": record.name,
                "sha256": approved.sha256,
                "approver": approver,
                "mode": self._policy.tool_on_change,
            }
            if record.sha256 is not None:
                event["previous_sha256"] = record.sha256
            if record.pending_findings:
                event["findings"] = list(record.pending_findings)
            try:
                await self._audit(event)
            except Exception:
                # Nothing unaudited takes effect: put the record back as it was.
                await self._store.compare_and_set(key, encoded, raw)
                raise
            await self._sync_pending(upstream, [name])
            self._facts[(upstream_tag(upstream), name)] = (ToolFacts.of(approved), self._clock())
            return approved.view(self._policy, self._effect_of)
        raise StoreUnavailable("the tool pin kept changing under concurrent writers; try again")

    async def states(self, upstream: str | None = None) -> list[dict[str, Any]]:
        """Every pinned tool (of one upstream, or of every upstream seen), newest change first."""
        if upstream is not None:
            upstreams = [upstream]
        else:
            upstreams = await self._store.index_members(UPSTREAMS_INDEX, UPSTREAMS_LIMIT)
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        for url in upstreams:
            tag = upstream_tag(url)
            if tag in seen:
                continue
            seen.add(tag)
            names = await self._store.index_members(_index_key(url), INDEX_LIMIT)
            keys = [record_key(url, n) for n in names]
            for key, raw in zip(keys, await self._store.get_many(keys), strict=True):
                try:
                    record = PinRecord.decode(raw, self._signer, key)
                except SessionIntegrityError:
                    log.error("tool pin %s failed its integrity check; the next tools/list blocks it", key)
                    continue
                if record is not None:
                    out.append(record.view(self._policy, self._effect_of))
        return out
