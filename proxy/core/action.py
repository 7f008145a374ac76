"""The vocabulary every layer shares: what is being attempted (Action) and what Wicket
decided about it (Decision).

Protocol adapters build Actions from the wire; the checker never learns which wire an
Action came from. A Decision serialises to exactly the SPEC §4 record.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.audit.chain import fast_sorted_json


class Effect(enum.IntEnum):
    """How much harm an action can do. Ordered, so ``max()`` picks the highest tier."""

    READ = 0
    MUTATING = 1
    DESTRUCTIVE = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return _EFFECT_LABELS[self]

    @property
    def with_article(self) -> str:
        """``a read``, ``an admin``: for reasons written as sentences."""
        return _WITH_ARTICLE[self]

    @classmethod
    def parse(cls, text: str) -> Effect:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown effect {text!r}; expected read, mutating, destructive or admin") from None

    def raised(self) -> Effect:
        """One tier higher, saturating at admin (anomaly escalation)."""
        return Effect(min(self + 1, Effect.ADMIN))


_EFFECT_LABELS: dict[Effect, str] = {effect: effect.name.lower() for effect in Effect}
_WITH_ARTICLE: dict[Effect, str] = {e: ("an " if e is Effect.ADMIN else "a ") + e.name.lower() for e in Effect}


class Verdict(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    APPROVAL_REQUIRED = "approval_required"


class Tier(enum.Enum):
    FAST = "fast"
    SPOT = "spot"
    DEEP = "deep"


@dataclass(frozen=True, slots=True)
class Delegation:
    """The verified chain a delegated call arrived with: who started the work and every hop since."""

    origin: str
    agents: tuple[str, ...]
    """Every agent in order: the origin first, the caller (the last link's audience) last."""
    link_ids: tuple[str, ...]
    scope: tuple[str, ...]
    """The narrowest scope of the chain (its last link's): tool-name globs."""
    expires_at: int
    raw: tuple[str, ...] = field(default=(), repr=False, compare=False)
    """The signed links themselves, for the credential that extends the chain; never audited."""

    @property
    def depth(self) -> int:
        """Links so far (hops); forwarding this call adds one."""
        return len(self.link_ids)

    def record(self) -> dict[str, object]:
        """As audit records and accountability show it."""
        return {"origin": self.origin, "agents": list(self.agents), "depth": self.depth, "links": list(self.link_ids)}


class _ActionMemo:
    """A slot an Action fills on first use, beside its fields: not compared, shown, encoded or replaced."""

    __slots__ = ("_arguments_sha256",)
    _arguments_sha256: str


@dataclass(frozen=True, slots=True)
class Action(_ActionMemo):
    """One thing an agent is trying to do, independent of the protocol that carried it.

    ``name`` is what the effect is classified from: the tool name for a tool call, the
    method for anything else. ``annotations`` are the upstream's tool hints, if known.
    """

    protocol: str  # "mcp" | "a2a" | "api" | "sampling"
    method: str
    name: str
    arguments: Mapping[str, Any]
    agent_id: str
    session_id: str
    upstream: str
    annotations: Mapping[str, Any] | None = None
    is_tool_call: bool = False
    fixed_effect: Effect | None = None
    """Set by an adapter for protocol housekeeping (``initialize``, ``tools/list``) whose
    effect is known from the protocol itself rather than guessed from a name."""
    intent: str | None = None
    """Why the agent says it wants this (MCP ``params._meta``, the check API's ``input_summary``).
    Untrusted text: shown to the approver of an elevation request, never used to decide."""
    server_initiated: bool = False
    """A request the upstream sends to the agent's client (sampling, elicitation): the agent is
    not writing anything, so a read-only session does not stop it; its own limits do."""
    delegation: Delegation | None = None
    """The verified delegation chain the caller presented (None: the caller acts for itself)."""
    annotations_trusted: bool = False
    """An operator accepted these annotations for exactly this pinned definition (``wicket tools
    trust``), so they may lower the effect like those of a trusted upstream."""
    resource: str | None = None
    """The URI of the resource this action reads or subscribes to: audited, and checked against
    the policy's ``resources`` patterns."""
    prompt: str | None = None
    """The name of the prompt this action fetches, audited."""

    @property
    def arguments_sha256(self) -> str:
        """:func:`arguments_sha256` of ``arguments``, computed once per Action: the decision record,
        approvals and the minted credential all bind to the same digest."""
        digest: str | None = getattr(self, "_arguments_sha256", None)
        if digest is None:
            digest = arguments_sha256(self.arguments)
            object.__setattr__(self, "_arguments_sha256", digest)
        return digest

    @property
    def label(self) -> str:
        """How the action appears in audit records and metrics-free logs."""
        return f"{self.method}:{self.name}" if self.is_tool_call else self.method


def arguments_sha256(arguments: Mapping[str, Any]) -> str:
    """SHA-256 of a call's arguments as canonical JSON (sorted keys, no whitespace, UTF-8).

    The one digest of arguments Wicket uses: the audit proves what ran without storing the
    values, and minted credentials bind to it (upstreams recompute it; absent is ``{}``).
    """
    plain = dict(arguments)
    blob = fast_sorted_json(plain)  # the same bytes, several times faster, for what orjson writes alike
    if blob is None:
        blob = json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def new_decision_id() -> str:
    """``dec_`` and 96 random bits from ``os.urandom`` (the CSPRNG ``secrets`` uses), drawn 256 ids
    at a time: one system call per 256 decisions instead of one each. Thread-safe (``popleft``)."""
    try:
        return _ids.popleft()
    except IndexError:
        pool = os.urandom(12 * 256).hex()
        _ids.extend(["dec_" + pool[i : i + 24] for i in range(24, len(pool), 24)])
        return "dec_" + pool[:24]


_ids: collections.deque[str] = collections.deque()
os.register_at_fork(after_in_child=_ids.clear)  # a forked child must not hand out its parent's next ids


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of checking one Action: the SPEC §4 record plus what the audit needs."""

    verdict: Verdict
    effect: Effect
    tier: Tier
    reason: str
    confidence: float = 1.0
    decision_id: str = field(default_factory=new_decision_id)
    approval_id: str | None = None
    escalated_from: Effect | None = None
    fail_closed: bool = False
    """Wicket's own safety refused this (audit unwritable, a required tier unavailable), not the
    policy's rules: shadow mode never relaxes it."""
    shadow_of: Verdict | None = None
    """Shadow mode: the verdict enforcing would have given; the call is allowed and forwarded."""
    retry_after: float | None = None
    """Seconds until a refused call may succeed (a policy rate limit or quota); carried in the record."""
    forward_arguments: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    """The arguments to forward instead of the agent's (data protection masked a value in them)."""

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW

    @property
    def recorded_verdict(self) -> str:
        """The audit's ``decision``: the verdict, or ``would_deny`` / ``would_require_approval`` in shadow."""
        if self.shadow_of is None:
            return self.verdict.value
        return "would_deny" if self.shadow_of is Verdict.DENY else "would_require_approval"

    def shadowed(self) -> Decision:
        """This refusal as shadow mode records it: allowed, remembering what enforcing would do."""
        return dataclasses.replace(self, verdict=Verdict.ALLOW, shadow_of=self.verdict)

    def record(self) -> dict[str, Any]:
        """The SPEC §4 decision record, as carried in denials and returned by /v1/check."""
        out: dict[str, Any] = {
            "decision": self.verdict.value,
            "decision_id": self.decision_id,
            "effect": self.effect.label,
            "tier": self.tier.value,
            "reason": self.reason,
            "confidence": self.confidence,
        }
        if self.verdict is Verdict.APPROVAL_REQUIRED and self.approval_id:
            out["approval_id"] = self.approval_id
        if self.escalated_from is not None:
            out["escalated_from"] = self.escalated_from.label
        if self.shadow_of is not None:
            out["mode"] = "shadow"
            out["shadow"] = self.recorded_verdict
        if self.retry_after is not None:
            out["retry_after"] = self.retry_after
        return out


@dataclass(frozen=True, slots=True)
class Finding:
    """Something the argument analysis noticed: which detector, the effect it implies, and why.

    ``message`` names the pattern, never the argument's value, so findings are safe to audit.
    """

    detector: str
    effect: Effect
    message: str


@dataclass(frozen=True, slots=True)
class Activity:
    """A session's behaviour *before* the call being decided, as the store counted it."""

    calls: int = 0
    denials: int = 0
    writes: int = 0  # calls whose effect was mutating or higher
    window_calls: int = 0  # calls inside the Spot window
    minute_calls: int = 0  # calls in the last 60 s (velocity)
    window_by_effect: tuple[int, int, int, int] = (0, 0, 0, 0)  # read, mutating, destructive, admin
    repeat_denials: int = 0  # earlier denials of this very action in this session
    history: tuple[str, ...] = ()  # recent "action=verdict" entries, oldest first


@dataclass(frozen=True, slots=True)
class ReviewContext:
    """What the tiers beyond Fast get to see besides the Action and the session."""

    activity: Activity = Activity()
    findings: tuple[Finding, ...] = ()
    violations: tuple[str, ...] = ()  # policy parameter constraints the arguments break
    elevated: frozenset[str] = frozenset()
    """Action labels an operator-approved elevation currently covers in this session (SPEC §8)."""
