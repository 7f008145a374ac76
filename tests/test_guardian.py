"""The guardian router's SPEC §7 semantics, with real ReviewTier implementations plugged in."""

from __future__ import annotations

import asyncio

import pytest

from proxy.core.action import Action, Decision, Effect, ReviewContext, Tier, Verdict
from proxy.core.guardian import FastGuard, GuardianRouter
from proxy.core.policy import parse_policy_text
from proxy.core.sessions import Session

POLICY = parse_policy_text("version: 1\nblocklist: ['nuke_*']\n")


def session(mode: str = "read-write", scope: tuple[str, ...] = ("*",)) -> Session:
    return Session("ses_1", "agent", scope, mode, 0.0, 1e12)  # type: ignore[arg-type]


def action(name: str) -> Action:
    return Action("mcp", "tools/call", name, {}, "agent", "ses_1", "http://u", is_tool_call=True)


class Reviewer:
    """A tier that answers with a fixed verdict, after an optional delay, or fails."""

    def __init__(self, tier: Tier, verdict: Verdict = Verdict.ALLOW, *, delay: float = 0, fail: bool = False):
        self.tier = tier
        self.verdict = verdict
        self.delay = delay
        self.fail = fail
        self.calls = 0

    async def review(
        self, action: Action, session: Session, effect: Effect, prior: Decision, context: ReviewContext
    ) -> Decision:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise ConnectionError("tier backend down")
        return Decision(self.verdict, effect, self.tier, f"{self.tier.value} says {self.verdict.value}", 0.9)


def router(spot: Reviewer | None = None, deep: Reviewer | None = None) -> GuardianRouter:
    return GuardianRouter(FastGuard(POLICY), spot=spot, deep=deep, spot_timeout=0.05, deep_timeout=0.05)


async def test_reads_use_fast_only() -> None:
    spot, deep = Reviewer(Tier.SPOT), Reviewer(Tier.DEEP)
    decision = await router(spot, deep).decide(action("get_x"), session(), Effect.READ)
    assert decision.allowed and decision.tier is Tier.FAST
    assert spot.calls == deep.calls == 0


@pytest.mark.parametrize("spot", [None, Reviewer(Tier.SPOT, fail=True), Reviewer(Tier.SPOT, delay=1.0)])
async def test_mutating_falls_back_to_fast_when_spot_is_unavailable(spot: Reviewer | None) -> None:
    decision = await router(spot).decide(action("create_x"), session(), Effect.MUTATING)
    assert decision.allowed and decision.tier is Tier.FAST


async def test_mutating_spot_denial_stands_and_deep_is_not_asked() -> None:
    deep = Reviewer(Tier.DEEP)
    decision = await router(Reviewer(Tier.SPOT, Verdict.DENY), deep).decide(
        action("create_x"), session(), Effect.MUTATING
    )
    assert decision.verdict is Verdict.DENY and decision.tier is Tier.SPOT
    assert deep.calls == 0


@pytest.mark.parametrize("effect", [Effect.DESTRUCTIVE, Effect.ADMIN])
async def test_destructive_and_admin_fail_closed_without_deep(effect: Effect) -> None:
    spot = Reviewer(Tier.SPOT)
    decision = await router(spot).decide(action("delete_x"), session(), effect)
    assert decision.verdict is Verdict.DENY and decision.tier is Tier.DEEP
    assert decision.reason.startswith("Deep Guard unavailable (not configured)")
    assert spot.calls == 0


@pytest.mark.parametrize(
    ("spot", "deep", "tier"),
    [
        (Reviewer(Tier.SPOT, fail=True), Reviewer(Tier.DEEP), Tier.SPOT),
        (Reviewer(Tier.SPOT), Reviewer(Tier.DEEP, fail=True), Tier.DEEP),
        (Reviewer(Tier.SPOT), Reviewer(Tier.DEEP, delay=1.0), Tier.DEEP),
    ],
)
async def test_destructive_denied_when_any_tier_fails(spot: Reviewer, deep: Reviewer, tier: Tier) -> None:
    decision = await router(spot, deep).decide(action("delete_x"), session(), Effect.DESTRUCTIVE)
    assert decision.verdict is Verdict.DENY and decision.tier is tier
    assert "fail closed" in decision.reason


async def test_destructive_allowed_only_when_every_tier_allows() -> None:
    decision = await router(Reviewer(Tier.SPOT), Reviewer(Tier.DEEP)).decide(
        action("delete_x"), session(), Effect.DESTRUCTIVE
    )
    assert decision.allowed and decision.tier is Tier.DEEP and decision.confidence == 0.9


async def test_fast_denials_short_circuit_every_tier() -> None:
    spot, deep = Reviewer(Tier.SPOT), Reviewer(Tier.DEEP)
    r = router(spot, deep)
    read_only = await r.decide(action("delete_x"), session("read-only"), Effect.DESTRUCTIVE)
    blocked = await r.decide(action("nuke_all"), session(), Effect.MUTATING)
    out_of_scope = await r.decide(action("create_x"), session(scope=("get_*",)), Effect.MUTATING)
    assert "read-only" in read_only.reason
    assert "blocklisted" in blocked.reason
    assert "scope ceiling" in out_of_scope.reason
    assert all(d.tier is Tier.FAST and d.verdict is Verdict.DENY for d in (blocked, out_of_scope))
    # A write in a read-only session needs a human-approved elevation (SPEC §8), still decided by Fast alone.
    assert read_only.tier is Tier.FAST and read_only.verdict is Verdict.APPROVAL_REQUIRED
    assert spot.calls == deep.calls == 0


async def test_circuit_breaker_stops_calling_a_failing_tier() -> None:
    deep = Reviewer(Tier.DEEP, fail=True)
    r = GuardianRouter(FastGuard(POLICY), spot=Reviewer(Tier.SPOT), deep=deep, breaker_failures=2, breaker_cooldown=60)
    for _ in range(4):
        decision = await r.decide(action("delete_x"), session(), Effect.DESTRUCTIVE)
        assert decision.verdict is Verdict.DENY and decision.tier is Tier.DEEP
    assert deep.calls == 2, "after two failures the breaker opens and Deep is no longer called"
    assert "circuit open" in decision.reason
