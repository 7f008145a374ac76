"""Toxic-flow control: which labels a call carries, what a session has already seen, and
which ``flows:`` rule a call would complete.

The "lethal trifecta": an agent that has read private data and untrusted content, and can
then send data out, can be steered by the untrusted content into leaking the private data.
Policy ``labels:`` tags tools (globs) ``private`` (results hold private data), ``untrusted``
(results hold outside content) and ``egress`` (the call can send data out); a tool the
upstream annotates ``openWorldHint: true`` is ``untrusted`` when it reads and ``egress``
otherwise. The session's memory of labels, and which call first brought each, is one
HMAC-signed record in the store (``wicket:{session}:labels``), so it holds across replicas
and restarts and an edited record is refused.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from proxy.core.action import Effect
from proxy.core.approvals import rfc3339
from proxy.core.sessions import RecordSigner, SessionIntegrityError
from proxy.state.base import Store, StoreUnavailable

log = logging.getLogger(__name__)

LABELS: Final = ("private", "untrusted", "egress")
RESULT_LABELS: Final = frozenset({"private", "untrusted"})
_DESCRIBE: Final = {"private": "private data", "untrusted": "untrusted content", "egress": "a way to send data out"}
_CAS_ATTEMPTS = 8
_MEMO_ENTRIES: Final = 4096
_MAX_MEMO_NAME: Final = 256


@dataclass(frozen=True, slots=True)
class FlowRule:
    index: int
    seen: frozenset[str]
    call: str
    action: str  # "deny" | "approval_required"


DEFAULT_FLOWS: Final = (FlowRule(0, frozenset({"private", "untrusted"}), "egress", "approval_required"),)


@dataclass(frozen=True)
class Labelling:
    """``labels:`` and ``flows:`` from policy."""

    globs: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """(label, tool globs) pairs."""
    flows: tuple[FlowRule, ...] = DEFAULT_FLOWS

    _memo: dict[str, frozenset[str]] = field(default_factory=dict, repr=False, compare=False)
    """The glob labels per tool name (this policy's; a reload makes a new Labelling)."""

    def labels_for(self, tool: str, effect: Effect, annotations: Mapping[str, Any] | None) -> frozenset[str]:
        """The labels a call to ``tool`` carries: the policy's globs, then ``openWorldHint`` defaults."""
        found = self._memo.get(tool)
        if found is None:
            found = frozenset(label for label, globs in self.globs if any(fnmatch.fnmatchcase(tool, g) for g in globs))
            if len(tool) <= _MAX_MEMO_NAME:
                if len(self._memo) >= _MEMO_ENTRIES:
                    self._memo.clear()  # a client inventing names must not grow memory
                self._memo[tool] = found
        if annotations and annotations.get("openWorldHint") is True:
            return found | {"untrusted" if effect is Effect.READ else "egress"}
        return found

    def blocking(self, seen: Iterable[str], call_labels: frozenset[str]) -> FlowRule | None:
        """The first rule this call would complete, given the labels already seen."""
        known = frozenset(seen)
        for rule in self.flows:
            if rule.call in call_labels and rule.seen <= known:
                return rule
        return None


@dataclass(frozen=True, slots=True)
class Source:
    """The call that first brought a label into the session."""

    tool: str
    at: float
    decision_id: str

    def describe(self) -> str:
        return f"'{self.tool}' at {rfc3339(self.at)} ({self.decision_id})"


def reason(rule: FlowRule, seen: Mapping[str, Source], tool: str) -> str:
    earlier = "; ".join(f"{_DESCRIBE[label]} from {seen[label].describe()}" for label in sorted(rule.seen))
    verdict = "needs a human's approval" if rule.action == "approval_required" else "is denied"
    return (
        f"Toxic flow (policy flows[{rule.index}]: [{', '.join(sorted(rule.seen))}] -> {rule.call}): this session "
        f"has already seen {earlier}, and '{tool}' is {_DESCRIBE[rule.call]} ({rule.call}), so it {verdict}."
    )


def parse(labels: Mapping[str, Any] | None, flows: list[Mapping[str, Any]] | None) -> Labelling:
    globs = tuple((label, tuple(patterns)) for label, patterns in (labels or {}).items() if patterns)
    if flows is None:
        return Labelling(globs)
    rules = tuple(
        FlowRule(index, frozenset(entry["seen"]), entry["call"], entry.get("action", "approval_required"))
        for index, entry in enumerate(flows)
    )
    return Labelling(globs, rules)


def labels_key(session_id: str) -> str:
    return f"wicket:{{{session_id}}}:labels"


class FlowMemory:
    """The session's label memory in the store: one signed record, changed by compare-and-set."""

    _VERIFIED_MAX = 10_000

    def __init__(self, store: Store, signer: RecordSigner) -> None:
        self._store = store
        self._signer = signer
        self._verified: dict[str, tuple[bytes, dict[str, Source]]] = {}

    async def seen(self, session_id: str) -> dict[str, Source]:
        """Labels the session has seen, with their first source. Raises SessionIntegrityError if tampered."""
        key = labels_key(session_id)
        raw = await self._store.get(key, cached=True)  # it expires with the session
        return {} if raw is None else self._decode(key, raw, session_id)

    async def remember(
        self, session_id: str, labels: Iterable[str], source: Source, ttl: float, known: Mapping[str, Source]
    ) -> dict[str, Source]:
        """Add ``labels`` (those not yet seen) with ``source``; ``known`` is what the caller last read."""
        wanted = [label for label in labels if label not in known]
        if not wanted:
            return dict(known)
        key = labels_key(session_id)
        for _ in range(_CAS_ATTEMPTS):
            raw = await self._store.get(key)
            current: dict[str, Source] = {}
            if raw is not None:
                try:
                    current = self._decode(key, raw, session_id)
                except SessionIntegrityError as exc:
                    log.warning("replacing a label record that failed verification: %s", exc)
                    current = {}
            missing = [label for label in wanted if label not in current]
            if not missing:
                return current
            merged = {**current, **{label: source for label in missing}}
            record = {
                "session_id": session_id,
                "labels": {k: {"tool": s.tool, "at": s.at, "decision_id": s.decision_id} for k, s in merged.items()},
            }
            if await self._store.compare_and_set(key, raw, self._signer.encode(key, record), max(ttl, 1.0)):
                return merged
        raise StoreUnavailable("the session's label record kept changing under concurrent writers")

    def _decode(self, key: str, raw: bytes, session_id: str) -> dict[str, Source]:
        cached = self._verified.get(key)
        if cached is not None and cached[0] == raw:
            return cached[1]
        record = self._signer.decode(key, raw)
        try:
            if record["session_id"] != session_id:
                raise SessionIntegrityError(f"record {key!r} names another session")
            labels = {
                str(label): Source(str(s["tool"]), float(s["at"]), str(s["decision_id"]))
                for label, s in record["labels"].items()
                if label in LABELS
            }
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SessionIntegrityError(f"record {key!r} is not a label record") from exc
        if len(self._verified) >= self._VERIFIED_MAX:
            self._verified.clear()
        self._verified[key] = (raw, labels)
        return labels
