"""Guardian tiers and the router that sends each Action through them (SPEC §7).

Fast Guard is pure rules and always present. Spot and Deep are pluggable ``ReviewTier``
implementations that may do I/O (a risk store, an LLM); the router gives each a deadline
and decides what an unreachable tier means: mutating actions fall back to Fast's
verdict, destructive and admin actions are denied.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from proxy.core.action import Action, Decision, Effect, Tier, Verdict
from proxy.core.policy import Policy
from proxy.core.sessions import Session

log = logging.getLogger(__name__)


class FastGuard:
    """Capabilities, blocklists, the session's scope ceiling and read-only mode. No I/O."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy

    def review(self, action: Action, session: Session, effect: Effect) -> Decision:
        name = action.name
        if action.is_tool_call:
            if self._policy.blocklist_for(action.agent_id).matches(name):
                return _deny(effect, f"Tool '{name}' is blocklisted by policy; no session may call it.")
            if not self._policy.capabilities_for(action.agent_id).matches(name):
                return _deny(effect, f"Agent '{action.agent_id}' is not granted the tool '{name}' by policy.")
            if not session.scope_globs.matches(name):
                return _deny(
                    effect,
                    f"Tool '{name}' is outside this session's scope ceiling ({', '.join(session.scope) or 'empty'}).",
                )
        if effect is not Effect.READ and session.read_only:
            return _deny(
                effect,
                f"This session is read-only and '{name}' is a {effect.label} action: it needs a human-approved, "
                "time-boxed elevation. Do not retry; ask the operator to grant write access for this task.",
            )
        return Decision(
            Verdict.ALLOW, effect, Tier.FAST, f"Allowed by Fast Guard: '{name}' is a {effect.label} action."
        )


def _deny(effect: Effect, reason: str, tier: Tier = Tier.FAST) -> Decision:
    return Decision(Verdict.DENY, effect, tier, reason)


class ReviewTier(Protocol):
    """A guardian tier beyond Fast (Spot, Deep), in-process or a remote guardian service."""

    tier: Tier

    async def review(self, action: Action, session: Session, effect: Effect, prior: Decision) -> Decision:
        """Return this tier's decision; raise when the tier cannot reach a verdict."""


_TIER_LABEL = {Tier.SPOT: "Spot Guard", Tier.DEEP: "Deep Guard"}


class GuardianRouter:
    """Routes by effect: read -> Fast; mutating -> Fast, Spot; destructive/admin -> Fast, Spot, Deep."""

    def __init__(
        self,
        fast: FastGuard,
        *,
        spot: ReviewTier | None = None,
        deep: ReviewTier | None = None,
        spot_timeout: float = 0.5,
        deep_timeout: float = 15.0,
    ) -> None:
        self._fast = fast
        self._tiers: tuple[tuple[Tier, ReviewTier | None, float], ...] = (
            (Tier.SPOT, spot, spot_timeout),
            (Tier.DEEP, deep, deep_timeout),
        )

    async def decide(self, action: Action, session: Session, effect: Effect) -> Decision:
        decision = self._fast.review(action, session, effect)
        if not decision.allowed or effect is Effect.READ:
            return decision
        if effect >= Effect.DESTRUCTIVE and self._tiers[1][1] is None:
            # Nothing can approve this action, so do not spend a Spot review on it.
            return _deny(effect, _unavailable(Tier.DEEP, effect, "not configured"), Tier.DEEP)
        for tier, reviewer, timeout in self._tiers:
            if tier is Tier.DEEP and effect < Effect.DESTRUCTIVE:
                break
            label = _TIER_LABEL[tier]
            problem = ""
            if reviewer is None:
                problem = "not configured"
            else:
                try:
                    verdict = await asyncio.wait_for(reviewer.review(action, session, effect, decision), timeout)
                except TimeoutError:
                    problem = f"timed out after {timeout:g}s"
                except Exception as exc:  # a tier fault must never turn into an allow
                    log.warning("%s failed: %s", label, exc.__class__.__name__)
                    problem = f"failed ({exc.__class__.__name__})"
                else:
                    if not verdict.allowed:
                        return verdict
                    decision = verdict
                    continue
            if effect is Effect.MUTATING:
                return decision  # SPEC §7: a mutating action falls back to Fast's verdict
            return _deny(effect, _unavailable(tier, effect, problem), tier)
        return decision


def _unavailable(tier: Tier, effect: Effect, problem: str) -> str:
    return (
        f"{_TIER_LABEL[tier]} unavailable ({problem}): {effect.label} actions are denied until it can review them "
        "(fail closed)."
    )
