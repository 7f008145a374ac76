"""The guardian router's SPEC §7 semantics, with real ReviewTier implementations plugged in."""

from __future__ import annotations

import asyncio

import pytest

from proxy.core.action import Action, Decision, Effect, ReviewContext, Tier, Verdict
from proxy.core.guardian import FastGuard, GuardianRouter, tool_refusal
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


def test_fast_guard_remembers_refusals_exactly_as_tool_refusal_gives_them() -> None:
    """The memo of tool_refusal is keyed by agent, scope ceiling and tool, and dropped with its policy."""
    fast = FastGuard(POLICY)
    wide, narrow = session(scope=("*",)), session(scope=("get_*",))
    for _ in range(2):  # the second round is answered from the memo
        for s in (wide, narrow):
            for name in ("get_weather", "nuke_all", "create_note"):
                decision = fast.review(action(name), s, Effect.READ, ReviewContext())
                refusal = tool_refusal(POLICY, "agent", s, name)
                assert decision.allowed is (refusal is None)
                if refusal is not None:
                    assert decision.reason == refusal
    stricter = parse_policy_text("version: 1\nblocklist: ['get_*']\n")
    fast.use_policy(stricter)
    assert fast.review(action("get_weather"), wide, Effect.READ, ReviewContext()).reason == tool_refusal(
        stricter, "agent", wide, "get_weather"
    )


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


async def test_admin_fails_closed_without_deep_and_says_what_the_operator_can_do() -> None:
    spot = Reviewer(Tier.SPOT)
    decision = await router(spot).decide(action("grant_x"), session(), Effect.ADMIN)
    assert decision.verdict is Verdict.DENY and decision.tier is Tier.DEEP
    assert decision.reason.startswith("Deep Guard unavailable (not configured)")
    assert "an operator can perform it themselves" in decision.reason and "--mode read-write" in decision.reason
    assert spot.calls == 0
    read_only = await router(spot).decide(action("grant_x"), session("read-only"), Effect.ADMIN)
    assert read_only.verdict is Verdict.DENY and "an operator can perform it themselves" in read_only.reason


async def test_without_deep_a_human_approval_stands_in_for_it_on_destructive_calls() -> None:
    spot = Reviewer(Tier.SPOT)
    asked = await router(spot).decide(action("delete_x"), session(), Effect.DESTRUCTIVE)
    assert asked.verdict is Verdict.APPROVAL_REQUIRED and asked.tier is Tier.DEEP
    assert "Deep Guard is not configured" in asked.reason and spot.calls == 1
    approved = ReviewContext(elevated=frozenset({"tools/call:delete_x"}))
    for mode in ("read-write", "read-only"):
        allowed = await router(spot).decide(action("delete_x"), session(mode), Effect.DESTRUCTIVE, approved)
        assert allowed.allowed and "in place of Deep Guard" in allowed.reason
    # Spot still has its say: its denial stands, approved or not.
    refused = await router(Reviewer(Tier.SPOT, Verdict.DENY)).decide(
        action("delete_x"), session(), Effect.DESTRUCTIVE, approved
    )
    assert refused.verdict is Verdict.DENY and refused.tier is Tier.SPOT


async def test_an_approval_is_only_offered_when_the_call_could_then_run() -> None:
    """A read-only session's destructive call runs Spot and Deep first: if either refuses or Deep is
    down, the agent gets the denial, never an approval request that could not lead anywhere."""
    read_only = session("read-only")
    for spot, deep in (
        (Reviewer(Tier.SPOT), Reviewer(Tier.DEEP, fail=True)),
        (Reviewer(Tier.SPOT), Reviewer(Tier.DEEP, Verdict.DENY)),
        (Reviewer(Tier.SPOT, Verdict.DENY), Reviewer(Tier.DEEP)),
    ):
        decision = await router(spot, deep).decide(action("delete_x"), read_only, Effect.DESTRUCTIVE)
        assert decision.verdict is Verdict.DENY, (spot.verdict, deep.verdict, deep.fail)
    asked = await router(Reviewer(Tier.SPOT), Reviewer(Tier.DEEP)).decide(
        action("delete_x"), read_only, Effect.DESTRUCTIVE
    )
    assert asked.verdict is Verdict.APPROVAL_REQUIRED and asked.tier is Tier.FAST and "read-only" in asked.reason


async def test_spot_approval_band_on_destructive_goes_to_deep_with_spots_findings() -> None:
    class Recording(Reviewer):
        prior: Decision | None = None

        async def review(
            self, action: Action, session: Session, effect: Effect, prior: Decision, context: ReviewContext
        ) -> Decision:
            self.prior = prior
            return await super().review(action, session, effect, prior, context)

    deep = Recording(Tier.DEEP)
    decision = await router(Reviewer(Tier.SPOT, Verdict.APPROVAL_REQUIRED), deep).decide(
        action("delete_x"), session(), Effect.DESTRUCTIVE
    )
    assert decision.allowed and decision.tier is Tier.DEEP
    assert (
        deep.prior is not None and deep.prior.tier is Tier.SPOT and deep.prior.reason == "spot says approval_required"
    )
    # A mutating action in Spot's approval band still goes to a human (Deep does not review mutating actions).
    mutating = await router(Reviewer(Tier.SPOT, Verdict.APPROVAL_REQUIRED), Recording(Tier.DEEP)).decide(
        action("create_x"), session(), Effect.MUTATING
    )
    assert mutating.verdict is Verdict.APPROVAL_REQUIRED and mutating.tier is Tier.SPOT


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
    blocked = await r.decide(action("nuke_all"), session(), Effect.MUTATING)
    out_of_scope = await r.decide(action("create_x"), session(scope=("get_*",)), Effect.MUTATING)
    assert "blocklisted" in blocked.reason
    assert "scope ceiling" in out_of_scope.reason
    assert all(d.tier is Tier.FAST and d.verdict is Verdict.DENY for d in (blocked, out_of_scope))
    assert spot.calls == deep.calls == 0
    # A write in a read-only session needs a human-approved elevation, and Fast says so; the other
    # tiers still look first, so the request is only raised for a call that could then run.
    read_only = await r.decide(action("delete_x"), session("read-only"), Effect.DESTRUCTIVE)
    assert "read-only" in read_only.reason
    assert read_only.tier is Tier.FAST and read_only.verdict is Verdict.APPROVAL_REQUIRED
    assert spot.calls == deep.calls == 1


async def test_circuit_breaker_stops_calling_a_failing_tier() -> None:
    deep = Reviewer(Tier.DEEP, fail=True)
    r = GuardianRouter(FastGuard(POLICY), spot=Reviewer(Tier.SPOT), deep=deep, breaker_failures=2, breaker_cooldown=60)
    for _ in range(4):
        decision = await r.decide(action("delete_x"), session(), Effect.DESTRUCTIVE)
        assert decision.verdict is Verdict.DENY and decision.tier is Tier.DEEP
    assert deep.calls == 2, "after two failures the breaker opens and Deep is no longer called"
    assert "circuit open" in decision.reason


class InlineReviewer(Reviewer):
    """A tier that promises never to await (``inline``), like the in-process Spot Guard."""

    inline = True


async def test_an_inline_tier_is_run_in_place_with_the_same_verdicts() -> None:
    for verdict in Verdict:
        spot = InlineReviewer(Tier.SPOT, verdict)
        decision = await router(spot).decide(action("create_x"), session(), Effect.MUTATING)
        assert (decision.verdict, decision.tier, spot.calls) == (verdict, Tier.SPOT, 1)
    failing = await router(InlineReviewer(Tier.SPOT, fail=True)).decide(
        action("delete_x"), session(), Effect.DESTRUCTIVE
    )
    assert failing.verdict is Verdict.DENY and "Spot Guard unavailable (failed (ConnectionError))" in failing.reason


async def test_an_inline_tier_that_awaits_counts_as_failed() -> None:
    """A broken promise never hangs the check or passes unreviewed: the tier is unavailable."""
    spot = InlineReviewer(Tier.SPOT, delay=0.01)
    destructive = await router(spot, Reviewer(Tier.DEEP)).decide(action("delete_x"), session(), Effect.DESTRUCTIVE)
    assert destructive.verdict is Verdict.DENY and destructive.tier is Tier.SPOT and destructive.fail_closed
    assert "Spot Guard unavailable (it awaited although it promised to run inline)" in destructive.reason
    mutating = await router(InlineReviewer(Tier.SPOT, Verdict.DENY, delay=0.01)).decide(
        action("create_x"), session(), Effect.MUTATING
    )
    assert mutating.allowed and mutating.tier is Tier.FAST, "a mutating action falls back to Fast's verdict"
