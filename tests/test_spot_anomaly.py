"""Spot Guard's risk score, anomaly escalation at its exact thresholds, and the circuit breaker."""

from __future__ import annotations

import pytest

from proxy.core.action import Action, Activity, Decision, Effect, Finding, ReviewContext, Tier, Verdict
from proxy.core.anomaly import escalation, raise_effect
from proxy.core.breaker import CircuitBreaker
from proxy.core.policy import AnomalySettings, SpotSettings
from proxy.core.sessions import Session
from proxy.core.spot import SpotGuard

NOW = 1_000_000.0
ANOMALY = AnomalySettings()


def session(age: float = 10.0) -> Session:
    return Session("ses_1", "agent", ("*",), "read-write", NOW - age, NOW + 3600)


def action(name: str = "create_note") -> Action:
    return Action("mcp", "tools/call", name, {}, "agent", "ses_1", "http://u", is_tool_call=True)


FRESH = Activity()


async def review(
    effect: Effect, activity: Activity = FRESH, findings: tuple[Finding, ...] = (), **kw: float
) -> Decision:
    spot = SpotGuard(SpotSettings(), clock=lambda: NOW)
    prior = Decision(Verdict.ALLOW, effect, Tier.FAST, "ok")
    return await spot.review(action(), session(**kw), effect, prior, ReviewContext(activity, findings))


async def test_fresh_session_writes_are_allowed_with_named_factors() -> None:
    decision = await review(Effect.MUTATING)
    assert decision.verdict is Verdict.ALLOW and decision.tier is Tier.SPOT
    assert "risk 0.10" in decision.reason and "mutating effect +0.10" in decision.reason


async def test_repeated_denied_attempts_push_to_approval_then_deny() -> None:
    approval = await review(Effect.MUTATING, Activity(calls=3, denials=3, repeat_denials=1))
    assert approval.verdict is Verdict.APPROVAL_REQUIRED
    assert "1 earlier denied attempt(s) at this same action" in approval.reason
    assert "3 earlier denial(s)" in approval.reason
    denied = await review(Effect.DESTRUCTIVE, Activity(calls=6, denials=4, repeat_denials=2))
    assert denied.verdict is Verdict.DENY


async def test_old_session_and_velocity_and_findings_are_factors() -> None:
    old = await review(Effect.MUTATING, age=200_000)
    assert "old (policy maximum 86400 s)" in old.reason
    fast = await review(Effect.MUTATING, Activity(calls=100, minute_calls=60))
    assert "60 calls in the last minute" in fast.reason
    finding = Finding("sql", Effect.DESTRUCTIVE, "DROP statement")
    flagged = await review(Effect.DESTRUCTIVE, findings=(finding,))
    assert "argument finding (sql): DROP statement +0.20" in flagged.reason
    assert flagged.verdict is Verdict.APPROVAL_REQUIRED  # 0.3 + 0.2 = 0.5


@pytest.mark.parametrize(
    ("activity", "raised"),
    [
        (Activity(calls=4, denials=4), False),  # fewer than 5 calls: never
        (Activity(calls=5, denials=1), False),  # 20% < 30%
        (Activity(calls=10, denials=3), True),  # exactly 30%
        (Activity(calls=10, denials=2, writes=7), False),  # 20% denials, 70% writes
        (Activity(calls=5, writes=4), True),  # exactly 80%
        (Activity(calls=5, writes=3), False),  # 60%
    ],
)
def test_anomaly_thresholds(activity: Activity, raised: bool) -> None:
    assert (escalation(activity, ANOMALY) is not None) is raised
    effect, why = raise_effect(Effect.MUTATING, activity, ANOMALY)
    assert effect is (Effect.DESTRUCTIVE if raised else Effect.MUTATING)
    assert (why is not None) is raised


def test_admin_cannot_rise_further() -> None:
    assert raise_effect(Effect.ADMIN, Activity(calls=10, denials=10), ANOMALY) == (Effect.ADMIN, None)


def test_policy_can_tighten_anomaly() -> None:
    strict = AnomalySettings(min_calls=2, denial_rate=0.1, write_ratio=0.5)
    assert escalation(Activity(calls=2, writes=1), strict) is not None


def test_circuit_breaker_opens_half_opens_and_closes() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=2, cooldown=10, clock=lambda: now[0])
    assert breaker.allow()
    breaker.failure()
    assert breaker.allow()
    breaker.failure()
    assert breaker.is_open and not breaker.allow()
    now[0] = 11
    assert breaker.allow()  # one trial call
    assert not breaker.allow()  # and only one
    breaker.failure()
    assert not breaker.allow()
    now[0] = 22
    assert breaker.allow()
    breaker.success()
    assert not breaker.is_open and breaker.allow() and breaker.allow()
