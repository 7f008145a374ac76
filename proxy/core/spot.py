"""Spot Guard: the policy and risk engine for anything that writes.

A pure scoring function over what Wicket already knows (the effect, argument findings,
the session's history, its age and its pace), mapped to a verdict by policy thresholds.
Every factor that contributed is named in the reason, so an operator can see why.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from proxy.core.action import Action, Decision, Effect, ReviewContext, Tier, Verdict
from proxy.core.policy import Policy, SpotSettings
from proxy.core.sessions import Session

EFFECT_RISK = {Effect.READ: 0.0, Effect.MUTATING: 0.1, Effect.DESTRUCTIVE: 0.3, Effect.ADMIN: 0.4}


class SpotGuard:
    """Implements ``ReviewTier`` in process; it does no I/O, so it never times out."""

    tier = Tier.SPOT
    inline = True  # review never awaits: the router runs it in place (ReviewTier)

    def __init__(self, settings: SpotSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._clock = clock

    def use_policy(self, policy: Policy) -> None:
        self.settings = policy.guardian.spot

    def score(self, session: Session, effect: Effect, context: ReviewContext) -> tuple[float, list[str]]:
        """The risk score in [0, 1] and the named factors that make it up."""
        s = self.settings
        activity = context.activity
        factors: list[tuple[float, str]] = [(EFFECT_RISK[effect], f"{effect.label} effect")]
        for finding in context.findings:
            weight = 0.2 if finding.effect >= Effect.DESTRUCTIVE else 0.1
            factors.append((weight, f"argument finding ({finding.detector}): {finding.message}"))
        risky = activity.window_by_effect[Effect.DESTRUCTIVE] + activity.window_by_effect[Effect.ADMIN]
        if risky:
            factors.append(
                (min(0.1 * risky, 0.3), f"{risky} destructive/admin call(s) in the last {s.window_seconds}s")
            )
        if activity.denials:
            factors.append((min(0.05 * activity.denials, 0.2), f"{activity.denials} earlier denial(s) in this session"))
        if activity.repeat_denials:
            n = activity.repeat_denials
            factors.append((min(0.25 * n, 0.5), f"{n} earlier denied attempt(s) at this same action"))
        age = self._clock() - session.created_at
        if age > s.max_session_age_seconds:
            factors.append((0.3, f"session is {age / 3600:.1f} h old (policy maximum {s.max_session_age_seconds} s)"))
        if activity.minute_calls >= s.max_calls_per_minute:
            factors.append((0.3, f"{activity.minute_calls} calls in the last minute (limit {s.max_calls_per_minute})"))
        score = min(sum(weight for weight, _ in factors), 1.0)
        named = [f"{why} +{weight:.2f}" for weight, why in factors if weight > 0]
        return score, named

    async def review(
        self, action: Action, session: Session, effect: Effect, prior: Decision, context: ReviewContext
    ) -> Decision:
        s = self.settings
        score, factors = self.score(session, effect, context)
        if score >= s.deny_at:
            verdict, outcome = Verdict.DENY, "denied"
        elif score >= s.approval_at:
            verdict, outcome = Verdict.APPROVAL_REQUIRED, "needs human approval"
        else:
            verdict, outcome = Verdict.ALLOW, "allowed"
        reason = (
            f"Spot Guard {outcome}: risk {score:.2f} (approval at {s.approval_at:.2f}, deny at {s.deny_at:.2f}); "
            + ("; ".join(factors) if factors else "no risk factors")
            + "."
        )
        confidence = round(max(score, 1.0 - score), 2)
        return Decision(verdict, effect, Tier.SPOT, reason, confidence)
