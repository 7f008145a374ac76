"""The real checker, offline: what ``wicket policy test`` and ``wicket policy explain`` run.

Every piece is the production one (classifier, argument analysis, anomaly escalation, Fast and
Spot, approvals and elevations, the hash-chained audit) over the memory store, with one
exception: Deep Guard (or the guardian service) is a verdict the case states, because a policy
test tests the policy, not the model. Each tier is wrapped so the explanation can show what it
said. Nothing here opens a socket or a file.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.adapters.a2a_action import JSONRPC_METHODS as A2A_METHODS
from proxy.adapters.a2a_action import PROTOCOL as A2A
from proxy.adapters.a2a_action import a2a_action, skill_of
from proxy.audit.sink import MemoryAuditSink
from proxy.core.action import Action, Decision, Effect, ReviewContext, Tier, Verdict
from proxy.core.approval_store import Approvals
from proxy.core.approvals import approver_identity
from proxy.core.arguments import ArgumentAnalyser, ArgumentReport
from proxy.core.checker import Checker
from proxy.core.effects import EffectClassifier
from proxy.core.guardian import FastGuard, GuardianRouter, ReviewTier, TierUnavailable
from proxy.core.policy import Policy
from proxy.core.sessions import RecordSigner, Session, SessionManager
from proxy.core.spot import SpotGuard
from proxy.state.memory import MemoryStore
from proxy.telemetry import Metrics

TOOL_CALL = "tools/call"
HISTORY_SPACING_SECONDS = 1.0


@dataclass(frozen=True)
class Step:
    """One tier's say: which tier, its verdict (or why it had none) and its reason."""

    tier: str
    verdict: str
    reason: str
    confidence: float | None = None


@dataclass(frozen=True)
class StatedVerdict:
    """What Deep Guard says in a case: a verdict, or ``unavailable`` to test failing closed."""

    verdict: Verdict | None
    reason: str = "verdict stated by the policy test case"
    confidence: float = 0.9

    @classmethod
    def parse(cls, raw: Any) -> StatedVerdict:
        """``allow`` / ``deny`` / ``approval_required`` / ``unavailable``, or a mapping with reason."""
        if isinstance(raw, Mapping):
            base = cls.parse(raw.get("verdict", "unavailable"))
            reason = str(raw.get("reason", base.reason))
            return cls(base.verdict, reason, float(raw.get("confidence", base.confidence)))
        text = str(raw).strip().lower()
        if text == "unavailable":
            return cls(None, "Deep Guard stated unavailable by the case")
        try:
            return cls(Verdict(text))
        except ValueError:
            raise ValueError(
                f"deep verdict must be allow, deny, approval_required or unavailable, not {raw!r}"
            ) from None


class _StatedDeep:
    """Deep Guard as the case states it: the one tier a policy test does not run for real."""

    tier = Tier.DEEP

    def __init__(self, stated: StatedVerdict) -> None:
        self.stated = stated

    async def review(
        self, action: Action, session: Session, effect: Effect, prior: Decision, context: ReviewContext
    ) -> Decision:
        if self.stated.verdict is None:
            raise TierUnavailable(self.stated.reason)
        return Decision(self.stated.verdict, effect, Tier.DEEP, self.stated.reason, self.stated.confidence)


class _Recorded:
    """Wraps a tier beyond Fast and writes down what it decided (or that it could not)."""

    def __init__(self, inner: ReviewTier, steps: list[Step]) -> None:
        self.tier = inner.tier
        self._inner = inner
        self._steps = steps

    async def review(
        self, action: Action, session: Session, effect: Effect, prior: Decision, context: ReviewContext
    ) -> Decision:
        try:
            verdict = await self._inner.review(action, session, effect, prior, context)
        except Exception as exc:
            self._steps.append(Step(self.tier.value, "unavailable", str(exc) or exc.__class__.__name__))
            raise
        self._steps.append(Step(self.tier.value, verdict.verdict.value, verdict.reason, verdict.confidence))
        return verdict


class _RecordedFast(FastGuard):
    def __init__(self, policy: Policy, steps: list[Step]) -> None:
        super().__init__(policy)
        self._steps = steps

    def review(self, action: Action, session: Session, effect: Effect, context: ReviewContext) -> Decision:
        decision = super().review(action, session, effect, context)
        self._steps.append(Step("fast", decision.verdict.value, decision.reason))
        return decision


@dataclass(frozen=True)
class SessionSpec:
    """The session a case runs in, and the history it has behind it."""

    agent: str = "agent"
    mode: str = "read-only"
    scope: tuple[str, ...] = ("*",)
    intent: str | None = None
    elevations: tuple[str, ...] = ()
    """Tool names an operator has approved in this session (a granted elevation)."""
    calls: int = 0
    denials: int = 0
    writes: int = 0
    age_seconds: float = 0.0


@dataclass(frozen=True)
class ActionSpec:
    tool: str | None = None
    method: str = TOOL_CALL
    protocol: str = "mcp"
    arguments: Mapping[str, Any] = field(default_factory=dict)
    annotations: Mapping[str, Any] | None = None
    upstream: str = "http://upstream.invalid/mcp"
    intent: str | None = None
    skill: str | None = None  # A2A: the skill the message names

    def action(self, session: Session, policy: Policy) -> Action:
        if self.protocol == A2A:
            # Exactly the Action the A2A adapter builds: label, policy effect, reviewed arguments.
            name = self.tool or self.method
            message = dict(self.arguments)
            return a2a_action(
                policy,
                A2A_METHODS.get(name, name),
                message=message,
                skill=self.skill or skill_of(message, policy),
                task_id=None,
                push_urls=[],
                agent_id=session.agent_id,
                session_id=session.session_id,
                upstream=self.upstream,
            )
        is_call = self.tool is not None
        return Action(
            protocol=self.protocol,
            method=self.method,
            name=self.tool if is_call else self.method,
            arguments=self.arguments,
            agent_id=session.agent_id,
            session_id=session.session_id,
            upstream=self.upstream,
            annotations=self.annotations,
            is_tool_call=is_call,
            intent=self.intent,
        )


@dataclass
class Explanation:
    """Everything that produced one decision, in the order it happened."""

    action: Action
    session: Session
    effect: Effect
    effect_source: str
    report: ArgumentReport
    activity_note: str
    steps: list[Step]
    decision: Decision
    audit: list[dict[str, Any]]


async def evaluate(
    policy: Policy, action_spec: ActionSpec, session_spec: SessionSpec, deep: StatedVerdict
) -> Explanation:
    """Decide one action in one session under ``policy`` with the real checker; explain it."""
    clock = _Clock(time.time())
    store = MemoryStore()
    signer = RecordSigner(secrets.token_bytes(32))
    sessions = SessionManager(store, signer, clock=clock)
    audit = MemoryAuditSink()
    metrics = Metrics()
    steps: list[Step] = []
    checker_box: list[Checker] = []

    async def audit_event(event: dict[str, Any]) -> None:
        await checker_box[0].audit_event(event)

    approvals = Approvals(store, signer, sessions, policy.approvals, audit=audit_event, clock=clock)
    classifier = EffectClassifier(overrides=policy.effect_override, is_trusted_upstream=policy.is_trusted_upstream)
    g = policy.guardian
    router = GuardianRouter(
        _RecordedFast(policy, steps),
        spot=_Recorded(SpotGuard(g.spot, clock=clock), steps),
        deep=_Recorded(_StatedDeep(deep), steps),
        spot_timeout=max(g.spot_timeout, 5.0),  # offline: a slow machine must not make the case flaky
        deep_timeout=max(g.deep_timeout, 5.0),
    )
    checker = Checker(
        policy=policy,
        classifier=classifier,
        analyser=ArgumentAnalyser(),
        router=router,
        activity=store,
        audit=audit,
        metrics=metrics,
        clock=clock,
        approvals=approvals,
    )
    checker_box.append(checker)
    clock.now -= session_spec.age_seconds + session_spec.calls * HISTORY_SPACING_SECONDS
    session = await sessions.create(
        session_spec.agent,
        scope=session_spec.scope,
        mode=session_spec.mode,  # type: ignore[arg-type]
        ttl_seconds=session_spec.age_seconds + 86400.0,
        intent=session_spec.intent,
        origin="anonymous" if session_spec.agent == "anonymous" else "token",
    )
    clock.now += session_spec.age_seconds
    await _replay_history(store, session, session_spec, policy, clock)
    action = action_spec.action(session, policy)
    await _grant(approvals, session, action, session_spec.elevations)
    effect, source = classifier.explain(action)
    report = ArgumentAnalyser().analyse(action, policy) if action.is_tool_call else ArgumentReport()
    audit.events.clear()
    steps.clear()
    decision = await checker.check(action, session)
    return Explanation(
        action=action,
        session=session,
        effect=effect,
        effect_source=source,
        report=report,
        activity_note=_activity_note(session_spec, policy),
        steps=list(steps),
        decision=decision,
        audit=list(audit.events),
    )


class _Clock:
    """A clock the harness can move, so a case's history and session age are in the past."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def _replay_history(
    store: MemoryStore, session: Session, spec: SessionSpec, policy: Policy, clock: _Clock
) -> None:
    """Put ``calls`` earlier calls (``writes`` of them writes, ``denials`` of them denied) behind the session."""
    if spec.calls < max(spec.denials, spec.writes):
        raise ValueError("session.calls must be at least session.denials and session.writes")
    window = policy.guardian.spot.window_seconds
    for index in range(spec.calls):
        label = f"{TOOL_CALL}:earlier_call_{index}"
        effect = Effect.MUTATING if index < spec.writes else Effect.READ
        await store.note_call(session.session_id, label, int(effect), clock(), window)
        denied = index < spec.denials
        entry = f"{label}={'deny' if denied else 'allow'}"
        await store.note_verdict(session.session_id, label, entry, denied, effect is not Effect.READ)
        clock.now += HISTORY_SPACING_SECONDS


async def _grant(approvals: Approvals, session: Session, action: Action, tools: Sequence[str]) -> None:
    """An operator's approval of each named tool in this session, through the real approval flow."""
    for tool in tools:
        target = (
            action
            if action.is_tool_call and action.name == tool
            else dataclasses.replace(action, method=TOOL_CALL, name=tool, is_tool_call=True, arguments={})
        )
        pending = Decision(Verdict.APPROVAL_REQUIRED, Effect.MUTATING, Tier.FAST, "elevation stated by the case")
        requested = await approvals.request(target, session, pending)
        if requested.approval_id is None:
            raise ValueError(f"an elevation for {tool!r} cannot be granted in this session: {requested.reason}")
        await approvals.approve(requested.approval_id, approver_identity("policy-test", "policy-test"))


def _activity_note(spec: SessionSpec, policy: Policy) -> str:
    if not spec.calls:
        return "no earlier calls in this session"
    anomaly = policy.guardian.anomaly
    return (
        f"{spec.calls} earlier calls: {spec.denials} denied ({spec.denials / spec.calls:.0%}), "
        f"{spec.writes} writes ({spec.writes / spec.calls:.0%}); escalation starts after {anomaly.min_calls} calls at "
        f"{anomaly.denial_rate:.0%} denials or {anomaly.write_ratio:.0%} writes"
    )
