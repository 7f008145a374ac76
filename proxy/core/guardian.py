"""Guardian tiers and the router that sends each Action through them (SPEC §7).

Fast Guard is pure rules and always present. Spot and Deep are pluggable ``ReviewTier``
implementations that may do I/O (a risk store, an LLM); the router gives each a deadline
and decides what an unreachable tier means: mutating actions fall back to Fast's
verdict, destructive and admin actions are denied.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import string
import time
import urllib.parse
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, cast

from proxy import tracing
from proxy.core.action import Action, Decision, Effect, ReviewContext, Tier, Verdict
from proxy.core.breaker import CircuitBreaker
from proxy.core.policy import Policy
from proxy.core.sessions import Session
from proxy.telemetry import Metrics

log = logging.getLogger(__name__)
_NO_CONTEXT = ReviewContext()
_MEMO_ENTRIES = 4096
_MAX_MEMO_NAME = 256


class FastGuard:
    """Capabilities, blocklists, parameter constraints, the scope ceiling and read-only mode. No I/O."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._refusals: dict[tuple[str, tuple[str, ...], str], str] = {}

    def use_policy(self, policy: Policy) -> None:
        self._policy = policy
        self._refusals = {}

    def review(self, action: Action, session: Session, effect: Effect, context: ReviewContext) -> Decision:
        name = action.name
        if action.is_tool_call:
            # tool_refusal is a pure function of this policy, the agent, the session's scope ceiling and
            # the tool, and the same few come back on every call: remembered ("" when there is none).
            key = (action.agent_id, session.scope, name)
            refusal = self._refusals.get(key)
            if refusal is None:
                refusal = tool_refusal(self._policy, action.agent_id, session, name) or ""
                if len(name) <= _MAX_MEMO_NAME:
                    if len(self._refusals) >= _MEMO_ENTRIES:
                        self._refusals.clear()  # a client inventing names must not grow memory
                    self._refusals[key] = refusal
            if refusal:
                return _deny(effect, refusal)
            if context.violations:
                return _deny(effect, "The arguments break policy: " + "; ".join(context.violations) + ".")
            refusal = delegation_refusal(self._policy, action)
            if refusal is not None:
                return _deny(effect, refusal)
        elif action.resource is not None:
            refusal = resource_refusal(self._policy, action.resource)
            if refusal is not None:
                return _deny(effect, refusal)
        if effect is not Effect.READ and session.read_only and not action.server_initiated:
            return _read_only(action, effect, context)
        reason = f"Allowed by Fast Guard: '{name}' is {effect.with_article} action."
        return Decision(Verdict.ALLOW, effect, Tier.FAST, reason)


def delegation_refusal(policy: Policy, action: Action) -> str | None:
    """Why the chain behind this call may not reach this tool (``delegation`` in policy), or None.

    A direct call counts as a chain of depth 0 that starts at the caller. Forwarding adds a link,
    so a chain already at ``max_hops`` cannot go on."""
    chain = action.delegation
    origin, depth = (chain.origin, chain.depth) if chain is not None else (action.agent_id, 0)
    if depth + 1 > policy.delegation_max_hops:
        return (
            f"The delegation chain ({' -> '.join(chain.agents) if chain else origin}) already has {depth} hops; "
            f"forwarding would make {depth + 1}, more than the {policy.delegation_max_hops} allowed (rule: max_hops)."
        )
    for rule in policy.delegation_rules:
        if not rule.tools.matches(action.name):
            continue
        if rule.origins is not None and not rule.origins.matches(origin):
            return (
                f"'{action.name}' may only be reached by work that starts at {', '.join(rule.origins.patterns)}; "
                f"this chain starts at '{origin}' (policy delegation.rules)."
            )
        if rule.max_depth is not None and depth > rule.max_depth:
            return (
                f"'{action.name}' may be reached through at most {rule.max_depth} delegation hops; this call "
                f"arrived through {depth} (policy delegation.rules)."
            )
    return None


def tool_refusal(policy: Policy, agent_id: str, session: Session, name: str) -> str | None:
    """Why no call to tool ``name`` can ever pass in this session, whatever its arguments, or None.

    The same rule hides such tools from the session's ``tools/list``.
    """
    if policy.blocklist_for(agent_id).matches(name):
        return f"Tool '{name}' is blocklisted by policy; no session may call it."
    if not policy.capabilities_for(agent_id).matches(name):
        return f"Agent '{agent_id}' is not granted the tool '{name}' by policy."
    if not session.scope_globs.matches(name):
        return f"Tool '{name}' is outside this session's scope ceiling ({', '.join(session.scope) or 'empty'})."
    return None


def resources_restricted(policy: Policy) -> bool:
    """Whether the policy limits which resource URIs may be read at all (the common case: not)."""
    return bool(policy.resource_deny) or policy.resource_allow.patterns != ("*",)


def resource_refusal(policy: Policy, uri: str) -> str | None:
    """Why reading the resource ``uri`` is refused by the policy's ``resources`` patterns, or None.

    Servers resolve URIs differently, so the URI is judged in every form one might take it in
    (as sent, RFC 3986-normalised, and fully percent-decoded): any form on the deny list refuses
    it, and with an allow list every form must be on it."""
    forms = uri_forms(uri)
    shown = uri if len(uri) <= 200 else uri[:197] + "..."
    if any(policy.resource_deny.matches(form) for form in forms):
        return f"Resource '{shown}' matches a resources.deny pattern of the policy; no session may read it."
    if not all(policy.resource_allow.matches(form) for form in forms):
        return f"Resource '{shown}' is not covered by the policy's resources.allow patterns."
    return None


_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")


def uri_forms(uri: str) -> tuple[str, ...]:
    """``uri`` as sent, RFC 3986-normalised (scheme and host lower-cased, escapes of unreserved
    characters decoded, dot segments removed) and fully percent-decoded with dot segments removed."""
    parts = urllib.parse.urlsplit(uri)
    unreserved = _ESCAPE.sub(lambda m: chr(c) if chr(c := int(m[1], 16)) in _UNRESERVED else m[0].upper(), uri)
    normal = _dot_free(urllib.parse.urlsplit(unreserved), parts)
    decoded = _dot_free(urllib.parse.urlsplit(urllib.parse.unquote(uri, errors="surrogateescape")), parts)
    return tuple(dict.fromkeys((uri, normal, decoded)))


def _dot_free(parts: urllib.parse.SplitResult, original: urllib.parse.SplitResult) -> str:
    segments: list[str] = []
    for segment in parts.path.split("/"):
        if segment == "..":
            if len(segments) > 1:
                segments.pop()
        elif segment != ".":
            segments.append(segment)
    path = "/".join(segments)
    if parts.path.endswith(("/.", "/..")):
        path += "/"
    netloc = parts.netloc.lower() if original.netloc else parts.netloc
    return urllib.parse.urlunsplit((parts.scheme.lower(), netloc, path, parts.query, parts.fragment))


def _read_only(action: Action, effect: Effect, context: ReviewContext) -> Decision:
    """SPEC §8: a write in a read-only session passes only under an approved elevation for exactly
    this action; otherwise it needs one (the checker turns that into an approval request). Admin
    actions and protocol requests are never elevated."""
    name = action.name
    if effect is Effect.ADMIN:
        return _deny(
            effect,
            f"This session is read-only and '{name}' is an admin action, so no approval can allow it here."
            + _ADMIN_ADVICE,
        )
    if not action.is_tool_call:
        return _deny(effect, f"This session is read-only and '{action.method}' is {effect.with_article} request.")
    if action.label in context.elevated:
        kind = effect.with_article
        reason = f"Allowed by Fast Guard under an operator-approved elevation: '{name}' is {kind} action."
        return Decision(Verdict.ALLOW, effect, Tier.FAST, reason)
    return Decision(
        Verdict.APPROVAL_REQUIRED,
        effect,
        Tier.FAST,
        f"This session is read-only and '{name}' is {effect.with_article} action: it needs a human-approved, "
        "time-boxed elevation.",
    )


def _deny(effect: Effect, reason: str, tier: Tier = Tier.FAST) -> Decision:
    return Decision(Verdict.DENY, effect, tier, reason)


class TierUnavailable(Exception):
    """Raised by a tier that cannot reach a verdict. Its message is shown in the denial
    reason, so tiers keep it free of secrets and of anything the agent sent."""


class ReviewTier(Protocol):
    """A guardian tier beyond Fast (Spot, Deep), in-process or a remote guardian service.

    A tier whose class sets ``inline = True`` promises that ``review`` never awaits (pure CPU): the
    router then runs it to completion in place, without a task and a deadline timer (a coroutine
    that does not suspend cannot miss a deadline). One that suspends anyway counts as failed.
    """

    tier: Tier

    async def review(
        self, action: Action, session: Session, effect: Effect, prior: Decision, context: ReviewContext
    ) -> Decision:
        """Return this tier's decision; raise when the tier cannot reach a verdict."""


_TIER_LABEL = {Tier.SPOT: "Spot Guard", Tier.DEEP: "Deep Guard"}


@dataclass
class _Slot:
    tier: Tier
    reviewer: ReviewTier | None
    timeout: float
    breaker: CircuitBreaker
    inline: bool = False  # the reviewer never awaits (ReviewTier)
    shown_open: int = -1  # what the breaker_open gauge says (-1: not set yet)


def _run_inline(review: Coroutine[Any, Any, Decision]) -> Decision:
    """The result of a coroutine that finishes without suspending (an ``inline`` tier's review); one
    that suspends broke the promise, so the tier counts as unavailable."""
    try:
        review.send(None)
    except StopIteration as done:
        return cast(Decision, done.value)
    review.close()
    raise TierUnavailable("it awaited although it promised to run inline")


class GuardianRouter:
    """Routes by effect: read -> Fast; mutating -> Fast, Spot; destructive/admin -> Fast, Spot, Deep.

    Each tier beyond Fast gets a deadline and a circuit breaker. An unavailable tier (not
    configured, failing, slow, or its breaker open) makes a mutating action fall back to
    Fast's verdict and a destructive or admin action fail closed. The one exception: with Deep
    not configured at all, an operator's approval of a destructive tool call stands in for Deep.
    """

    def __init__(
        self,
        fast: FastGuard,
        *,
        spot: ReviewTier | None = None,
        deep: ReviewTier | None = None,
        spot_timeout: float = 0.5,
        deep_timeout: float = 15.0,
        breaker_failures: int = 5,
        breaker_cooldown: float = 30.0,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fast = fast
        self._metrics = metrics
        self._slots = tuple(
            _Slot(tier, reviewer, timeout, CircuitBreaker(breaker_failures, breaker_cooldown, clock), _inline(reviewer))
            for tier, reviewer, timeout in ((Tier.SPOT, spot, spot_timeout), (Tier.DEEP, deep, deep_timeout))
        )

    def use_policy(self, policy: Policy) -> None:
        """A policy reload: Fast's rules, the tiers' deadlines, and in-process tiers' settings."""
        g = policy.guardian
        self._fast.use_policy(policy)
        for slot, timeout in zip(self._slots, (g.spot_timeout, g.deep_timeout), strict=True):
            slot.timeout = timeout
            use = getattr(slot.reviewer, "use_policy", None)  # in-process tiers; a remote service has its own
            if use is not None:
                use(policy)

    async def decide(
        self, action: Action, session: Session, effect: Effect, context: ReviewContext = _NO_CONTEXT
    ) -> Decision:
        decision = self._fast.review(action, session, effect, context)
        if decision.verdict is Verdict.DENY or effect is Effect.READ:
            return decision
        # Fast may want a human first (a write in a read-only session). The other tiers still run, so
        # an approval is only ever requested for a call that can run once it is approved.
        pending = decision if decision.verdict is Verdict.APPROVAL_REQUIRED else None
        approved = _approved(action, effect, context)
        deep_configured = self._slots[1].reviewer is not None
        # Without Deep, a human's approval of this very call stands in for Deep's review of a
        # destructive tool call (a human is the stronger reviewer). Admin actions have no stand-in.
        human_for_deep = effect is Effect.DESTRUCTIVE and not deep_configured and action.is_tool_call
        if effect >= Effect.DESTRUCTIVE and not deep_configured and not human_for_deep:
            # Nothing can review this action, so do not spend a Spot review on it.
            self._count_error(Tier.DEEP, "unconfigured")
            return _unavailable_denial(Tier.DEEP, effect, "not configured")
        for slot in self._slots:
            if slot.tier is Tier.DEEP and (effect < Effect.DESTRUCTIVE or human_for_deep):
                break
            ask = self._ask_tier if tracing.current() is None else self._ask_traced
            verdict, problem = await ask(slot, action, session, effect, decision, context)
            if verdict is None:
                if effect is Effect.MUTATING:
                    return pending or decision  # SPEC §7: a mutating action falls back to Fast's verdict
                return _unavailable_denial(slot.tier, effect, problem)
            if verdict.verdict is Verdict.APPROVAL_REQUIRED:
                if approved:
                    reason = f"{verdict.reason} An operator-approved elevation covers this action."
                    verdict = dataclasses.replace(verdict, verdict=Verdict.ALLOW, reason=reason)
                elif slot.tier is Tier.SPOT and effect >= Effect.DESTRUCTIVE and deep_configured:
                    decision = verdict  # Deep decides, with Spot's findings in its prompt
                    continue
                else:
                    return verdict
            if verdict.verdict is Verdict.DENY:
                return verdict
            decision = verdict
        if pending is not None:
            return pending
        if human_for_deep:
            self._count_error(Tier.DEEP, "unconfigured")
            if not approved:
                return Decision(
                    Verdict.APPROVAL_REQUIRED,
                    effect,
                    Tier.DEEP,
                    f"'{action.name}' is a destructive action and Deep Guard is not configured, so a human must "
                    "approve this exact call; their approval stands in for Deep Guard's review.",
                )
            return dataclasses.replace(
                decision,
                tier=Tier.DEEP,
                reason=f"{decision.reason} An operator approved this call in place of Deep Guard (not configured).",
            )
        return decision

    async def _ask_traced(
        self,
        slot: _Slot,
        action: Action,
        session: Session,
        effect: Effect,
        prior: Decision,
        context: ReviewContext,
    ) -> tuple[Decision | None, str]:
        """``_ask_tier`` in a trace span of its own (the request is traced)."""
        with tracing.span(f"wicket.guardian.{slot.tier.value}", {"wicket.effect": effect.label}) as span:
            verdict, problem = await self._ask_tier(slot, action, session, effect, prior, context)
            span.set_attribute("wicket.verdict", verdict.verdict.value if verdict is not None else "unavailable")
            return verdict, problem

    async def _ask_tier(
        self,
        slot: _Slot,
        action: Action,
        session: Session,
        effect: Effect,
        prior: Decision,
        context: ReviewContext,
    ) -> tuple[Decision | None, str]:
        """The tier's decision, or None and why it is unavailable."""
        tier = slot.tier
        if slot.reviewer is None:
            self._count_error(tier, "unconfigured")
            return None, "not configured"
        if not slot.breaker.allow():
            self._count_error(tier, "circuit_open")
            return None, f"circuit open after repeated failures; retrying in up to {slot.breaker.cooldown:g}s"
        started = time.perf_counter()
        try:
            review = slot.reviewer.review(action, session, effect, prior, context)
            if slot.inline:
                verdict = _run_inline(review)
            else:
                async with asyncio.timeout(slot.timeout):
                    verdict = await review
        except TimeoutError:
            problem, kind = f"timed out after {slot.timeout:g}s", "timeout"
        except TierUnavailable as exc:
            log.warning("%s unavailable: %s", _TIER_LABEL[tier], exc)
            problem, kind = str(exc)[:200] or exc.__class__.__name__, "error"
        except Exception as exc:  # a tier fault must never turn into an allow
            log.warning("%s failed: %s", _TIER_LABEL[tier], exc.__class__.__name__)
            problem, kind = f"failed ({exc.__class__.__name__})", "error"
        else:
            slot.breaker.success()
            self._observe(tier, started, verdict)
            return verdict, ""
        slot.breaker.failure()
        self._count_error(tier, kind)
        self._observe(tier, started, None)
        return None, problem

    def _observe(self, tier: Tier, started: float, verdict: Decision | None) -> None:
        if self._metrics is None:
            return
        tier_value = tier.value
        self._metrics.tier_seconds.labels(tier_value).observe(time.perf_counter() - started)
        if verdict is not None:
            self._metrics.tier_verdicts.labels(tier_value, verdict.verdict.value).inc()
        for slot in self._slots:
            shown = 1 if slot.breaker.is_open else 0
            if shown != slot.shown_open:  # the gauge changes only when a breaker does
                self._metrics.breaker_open.labels(slot.tier.value).set(shown)
                slot.shown_open = shown

    def _count_error(self, tier: Tier, kind: str) -> None:
        if self._metrics is not None:
            self._metrics.tier_errors.labels(tier.value, kind).inc()


def _inline(reviewer: ReviewTier | None) -> bool:
    return getattr(type(reviewer), "inline", False) is True


def _approved(action: Action, effect: Effect, context: ReviewContext) -> bool:
    """Whether a human has approved this call (an elevation covering it); admin actions are never elevated."""
    return effect is not Effect.ADMIN and action.is_tool_call and action.label in context.elevated


_ADMIN_ADVICE = (
    " Admin actions are never elevated: an operator can perform it themselves, or configure Deep Guard "
    "(ANTHROPIC_API_KEY) and give the agent a read-write session (wicket sessions create --mode read-write)."
)


def _unavailable_denial(tier: Tier, effect: Effect, problem: str) -> Decision:
    """A required tier could not review: Wicket's own safety refuses, so shadow mode never relaxes it."""
    reason = (
        f"{_TIER_LABEL[tier]} unavailable ({problem}): {effect.label} actions are denied until it can review them "
        "(fail closed)."
    )
    if effect is Effect.ADMIN:
        reason += _ADMIN_ADVICE
    return Decision(Verdict.DENY, effect, tier, reason, fail_closed=True)
