"""The single checker every protocol adapter calls.

It classifies the Action's effect, routes it through the guardian tiers, writes the
decision to the audit log *before* the adapter may forward anything, and counts it.
It never learns which wire protocol the Action came from.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from proxy import tracing
from proxy.audit.sink import AuditSink, AuditUnavailable
from proxy.core import flows as flow_rules
from proxy.core import injection
from proxy.core import limits as limit_rules
from proxy.core.action import Action, Decision, Effect, ReviewContext, Tier, Verdict
from proxy.core.anomaly import raise_effect
from proxy.core.approval_store import Approvals
from proxy.core.approvals import covers
from proxy.core.arguments import ArgumentAnalyser
from proxy.core.effects import EffectClassifier
from proxy.core.flows import FlowMemory
from proxy.core.guardian import GuardianRouter
from proxy.core.policy import Policy
from proxy.core.protection import Findings, Scanner
from proxy.core.sessions import Session, SessionIntegrityError
from proxy.state.base import Store, StoreUnavailable
from proxy.telemetry import Metrics

log = logging.getLogger(__name__)

ELICITATION = "elicitation/create"
_NONE: frozenset[str] = frozenset()
_INLINE_SCAN_CHARS = 16 * 1024


class Checker:
    def __init__(
        self,
        *,
        policy: Policy,
        classifier: EffectClassifier,
        analyser: ArgumentAnalyser,
        router: GuardianRouter,
        activity: Store,
        audit: AuditSink,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        approvals: Approvals | None = None,
        flows: FlowMemory | None = None,
        scanner: Scanner | None = None,
    ) -> None:
        self.classifier = classifier
        self.approvals = approvals
        self.flows = flows
        # Fingerprints are keyed so the audit log cannot be used to test guesses; app.py shares
        # the session key so replicas fingerprint a value alike.
        self.scanner = scanner if scanner is not None else Scanner(secrets.token_bytes(32))
        self._policy = policy
        self._analyser = analyser
        self._router = router
        self._activity = activity
        self._audit = audit
        self._metrics = metrics
        self._clock = clock

    @property
    def policy(self) -> Policy:
        return self._policy

    def use_policy(self, policy: Policy) -> None:
        """Decide every later call under ``policy`` (a reload); calls in flight finish under the old one."""
        self._policy = policy
        self.classifier.overrides = policy.effect_override
        self.classifier.is_trusted_upstream = policy.is_trusted_upstream
        self.classifier.clear()
        self._router.use_policy(policy)
        if self.approvals is not None:
            self.approvals.settings = policy.approvals

    async def check(self, action: Action, session: Session) -> Decision:
        """Decide ``action`` in ``session``; the returned Decision is already audited."""
        if tracing.current() is None:
            return await self._check(action, session)
        with tracing.span("wicket.check", {"wicket.action": action.label, "wicket.protocol": action.protocol}) as span:
            decision = await self._check(action, session)
            span.set_attributes(
                {
                    "wicket.agent_id": action.agent_id,
                    "wicket.effect": decision.effect.label,
                    "wicket.tier": decision.tier.value,
                    "wicket.decision": decision.recorded_verdict,
                    "wicket.decision_id": decision.decision_id,
                }
            )
        return decision

    async def _check(self, action: Action, session: Session) -> Decision:
        started = time.perf_counter()
        effect = self.classifier.classify(action)
        if not action.is_tool_call:
            # Protocol housekeeping executes nothing upstream: Fast Guard alone, no history.
            decision = self._shadow(action, await self._router.decide(action, session, effect))
            decision = await self._record(action, session.session_id, decision)
        else:
            extra: dict[str, Any] = {}
            label = action.label
            decision, own_write = await self._check_call(action, session, effect, label, extra)
            # Recorded first: an audit failure can still turn the verdict into a denial, and the
            # session's history must count what was finally decided. Asking for approval is not a
            # denial, and a call a human approved is not a write the anomaly check holds against the agent.
            decision = await self._record(action, session.session_id, decision, extra)
            verdict = decision.verdict
            await self._activity.note_verdict(
                session.session_id,
                label,
                f"{label}={verdict.value}",
                verdict is Verdict.DENY,
                own_write and verdict is not Verdict.APPROVAL_REQUIRED,
            )
        self._metrics.check_seconds.labels(action.protocol).observe(time.perf_counter() - started)
        return decision

    async def _check_call(
        self, action: Action, session: Session, effect: Effect, label: str, extra: dict[str, Any]
    ) -> tuple[Decision, bool]:
        """Arguments, session history and anomaly escalation, data protection, limits and toxic
        flows, then the guardian tiers. ``label`` is ``action.label``; ``extra`` collects fields for
        the audit record.

        Also says whether the call counts as the agent's own write (a write no approval covers).
        """
        report = self._analyser.analyse(action, self._policy)
        if report.effect is not None and report.effect > effect:
            effect = report.effect
        guardian = self._policy.guardian
        activity = await self._activity.note_call(
            session.session_id, label, int(effect), self._clock(), guardian.spot.window_seconds
        )
        raised, why = raise_effect(effect, activity, guardian.anomaly)
        forward: dict[str, Any] | None = None
        if action.arguments:
            plan = self._policy.protection.plan("arguments", action.upstream, action.name, raised)
            if plan.active:
                found, forward = self.scanner.arguments(action.arguments, plan)
                if found:
                    self.count_findings(found)
                    extra["data_protection"] = found.record()
                    if found.denied:
                        why_not = found.incomplete or f"they carry {found.summary()}"
                        refused = Decision(
                            Verdict.DENY,
                            raised,
                            Tier.FAST,
                            f"Data protection: the arguments were not forwarded because {why_not} "
                            "(policy data_protection arguments: deny).",
                            fail_closed=found.incomplete is not None,
                        )
                        return self._shadow(action, refused), raised >= Effect.MUTATING
        limited = await self._limits(action, session, raised) if self._policy.limits else None
        if limited is not None:
            return self._shadow(action, limited), raised >= Effect.MUTATING
        labelling = self._policy.labelling
        call_labels = labelling.labels_for(action.name, raised, action.annotations)
        seen = await self._seen(session) if self.flows is not None else {}
        if seen or call_labels:
            extra["session_labels"] = sorted(seen)
            if call_labels:
                extra["call_labels"] = sorted(call_labels)
        flow_pass: str | None = None
        # (A rule only blocks a call that carries its label: without labels there is nothing to look up.)
        rule = labelling.blocking(seen, call_labels) if call_labels and labelling.flows else None
        if rule is not None:
            grant = None
            call_digest = action.arguments_sha256
            if rule.action == "approval_required" and self.approvals is not None:
                grant = await self.approvals.grant_id(session.session_id, label, call_digest)
            if grant is None:
                self._metrics.flows_blocked.labels(f"flows[{rule.index}]", rule.action).inc()
                decision = Decision(Verdict(rule.action), raised, Tier.FAST, flow_rules.reason(rule, seen, action.name))
                decision = self._shadow(action, decision)
                if decision.verdict is Verdict.APPROVAL_REQUIRED and self.approvals is not None:
                    decision = await self.approvals.request(action, session, decision, call_digest)
                return decision, raised >= Effect.MUTATING
            flow_pass = grant
        # Only a write can use an elevation (admin never does), so reads never read one. A read-only
        # session needs it for Fast Guard; a read-write one only if a tier asks for approval.
        approvals = self.approvals if raised in (Effect.MUTATING, Effect.DESTRUCTIVE) else None
        digest = action.arguments_sha256 if approvals is not None else ""
        covered = False
        if approvals is not None and session.read_only:
            covered = covers(await approvals.elevated(session.session_id), label, digest)
        if flow_pass is not None:
            covered = True  # the approval that lets this flow through covers the call
        context = ReviewContext(
            activity=activity,
            findings=report.findings,
            violations=report.violations,
            elevated=frozenset((label,)) if covered else _NONE,
        )
        decision = await self._router.decide(action, session, raised, context)
        if approvals is not None and not session.read_only and decision.verdict is Verdict.APPROVAL_REQUIRED:
            if covers(await approvals.elevated(session.session_id), label, digest):
                covered = True
                context = dataclasses.replace(context, elevated=frozenset((label,)))
                decision = await self._router.decide(action, session, raised, context)
        if decision.allowed and covered:
            self._metrics.elevated_calls.inc()
        notes: list[str] = []
        if report.findings:
            notes.append("Argument findings: " + "; ".join(f"{f.detector}: {f.message}" for f in report.findings) + ".")
        if why is not None:
            self._metrics.escalations.inc()
            notes.append(f"Effect raised from {effect.label} to {raised.label} by anomaly escalation: {why}.")
        if notes:
            decision = dataclasses.replace(
                decision,
                reason=" ".join([decision.reason, *notes]),
                escalated_from=effect if why is not None else None,
            )
        decision = self._shadow(action, decision)
        if decision.verdict is Verdict.APPROVAL_REQUIRED and self.approvals is not None:
            # Names a pending request the agent can hand to a human (or refuses: admin, anonymous,
            # or a request an operator already denied).
            decision = await self.approvals.request(action, session, decision, digest or None)
        if decision.allowed and flow_pass is not None and rule is not None:
            passed = await self._spend_flow_pass(action, session, decision, flow_pass, rule)
            if passed is None:
                # The approval is spent: this call needs a new one, like the first did.
                reason = (
                    f"{flow_rules.reason(rule, seen, action.name)} Approval {flow_pass} was already used by one call."
                )
                asked = Decision(Verdict.APPROVAL_REQUIRED, raised, Tier.FAST, reason, decision_id=decision.decision_id)
                if self.approvals is not None:
                    asked = await self.approvals.request(action, session, asked, action.arguments_sha256)
                return asked, raised >= Effect.MUTATING
            decision = passed
        if decision.allowed:
            if self.flows is not None and call_labels & flow_rules.RESULT_LABELS:
                now = self._clock()
                source = flow_rules.Source(action.name, now, decision.decision_id)
                await self.flows.remember(
                    session.session_id, call_labels & flow_rules.RESULT_LABELS, source, session.expires_at - now, seen
                )
            if forward is not None:
                decision = dataclasses.replace(decision, forward_arguments=forward)
        own_write = effect >= Effect.MUTATING and not (covered and decision.allowed)
        return decision, own_write

    def _shadow(self, action: Action, decision: Decision) -> Decision:
        """Shadow mode forwards what the policy refuses, recording what enforcing would have done;
        Wicket's own fail-closed refusals stay refusals."""
        if decision.allowed or decision.fail_closed or not self._policy.shadow_for(action.upstream):
            return decision
        return decision.shadowed()

    async def _spend_flow_pass(
        self, action: Action, session: Session, decision: Decision, approval_id: str, rule: Any
    ) -> Decision | None:
        """An operator's approval of a toxic flow lets exactly one call through, across replicas;
        None when that call has already been made."""
        window = float(self._policy.approvals.elevation_seconds) + 60.0
        taken = await self._activity.take(session.session_id, "flowpass:" + approval_id, 1, window, self._clock())
        if taken:
            self._metrics.flows_blocked.labels(f"flows[{rule.index}]", "approved").inc()
            return dataclasses.replace(
                decision,
                reason=f"{decision.reason} Toxic flow flows[{rule.index}] let through once by approval {approval_id}.",
            )
        self._metrics.flows_blocked.labels(f"flows[{rule.index}]", "approval_used").inc()
        return None

    async def _limits(self, action: Action, session: Session, effect: Effect) -> Decision | None:
        """Every matching policy limit takes one hit from its counter; the first refusal denies."""
        matching = limit_rules.applicable(self._policy.limits, action, effect)
        for limit in matching:
            scope = limit.counter(action)
            for window in limit.windows:
                taken = await self._activity.take(
                    scope, f"{limit.index}:{window.name}", window.limit, window.seconds, self._clock()
                )
                if not taken:
                    self._metrics.rate_limited.labels(f"limits[{limit.index}]", window.name).inc()
                    retry = float(min(max(1, math.ceil(taken.retry_after)), math.ceil(window.seconds)))
                    return Decision(
                        Verdict.DENY, effect, Tier.FAST, limit_rules.reason(limit, window, retry), retry_after=retry
                    )
        return None

    async def _seen(self, session: Session) -> dict[str, flow_rules.Source]:
        """The session's label memory; a tampered record counts as having seen every label (fail closed)."""
        assert self.flows is not None
        try:
            return await self.flows.seen(session.session_id)
        except SessionIntegrityError as exc:
            await self.integrity_failure("flows", str(exc))
            tampered = flow_rules.Source("(tampered label record)", 0.0, "integrity")
            return dict.fromkeys(flow_rules.LABELS, tampered)

    def screen_result(self, action: Action, kind: str, payload: Mapping[str, Any]) -> tuple[Findings, Any]:
        """Secrets and personal data in what the upstream sent back for ``action``: a tool result
        (``kind`` "tool"), ``resources/read`` contents ("resource"), a sampling request's
        params ("sampling") or an A2A answer ("a2a"). Returns the findings and the masked payload
        (None: unchanged). Pure CPU."""
        plan = self._policy.protection.plan("results", action.upstream, action.name)
        if not plan.active:
            return Findings("results"), None
        if kind == "tool":
            found, masked = self.scanner.tool_result(payload, plan)
        elif kind == "resource":
            found, masked = self.scanner.resource_contents(payload, plan)
        elif kind == "a2a":
            found, masked = self.scanner.a2a_answer(payload, plan)
        else:
            found, masked = self.scanner.sampling(payload, plan)
        if found:
            self.count_findings(found)
        return found, masked

    def count_findings(self, findings: Findings) -> None:
        for kind, values in findings.kinds.items():
            self._metrics.data_findings.labels(kind, findings.direction, findings.action).inc(len(values))

    async def check_server_request(self, action: Action, session: Session) -> Decision:
        """Decide a request the upstream sends to the agent's client (SPEC §8 sampling guard).

        Sampling: policy, the per-session rate limit, the prompt scan, then the guardian tiers.
        Elicitation: audited, and refused only when policy disables it. Already audited.
        """
        started = time.perf_counter()
        effect = self.classifier.classify(action)
        kind, refusal = await self._server_request_rule(action, session)
        if refusal is not None:
            decision = Decision(Verdict.DENY, effect, Tier.FAST, refusal)
        else:
            decision = await self._router.decide(action, session, effect)
        decision = await self._record(action, session.session_id, decision)
        self._metrics.server_requests.labels(action.method, decision.verdict.value, kind).inc()
        self._metrics.check_seconds.labels(action.protocol).observe(time.perf_counter() - started)
        return decision

    async def _server_request_rule(self, action: Action, session: Session) -> tuple[str, str | None]:
        """(what decides, the refusal reason or None) before the guardian tiers run."""
        policy = self._policy
        if action.method == ELICITATION:
            if policy.elicitation_enabled:
                return "guardian", None
            return "policy", "Policy blocks elicitation requests from MCP servers (elicitation.enabled: false)."
        if not policy.sampling_enabled:
            return "policy", "Policy blocks sampling requests from MCP servers (sampling.enabled: false)."
        limit, window = policy.sampling_max_requests, policy.sampling_window_seconds
        try:
            within = await self._activity.take(session.session_id, "sampling", limit, window, self._clock())
        except StoreUnavailable as exc:
            return "store", f"The state store is unavailable ({exc}), so the sampling rate limit cannot be enforced."
        if not within:
            return (
                "rate_limit",
                f"Sampling rate limit reached: at most {limit} requests per session per {window} s "
                "(policy sampling.max_requests / window_seconds).",
            )
        if self.flows is not None and policy.labelling.flows:
            # A sampling request sends text to the agent's model provider: it counts as egress.
            try:
                seen = await self._seen(session)
            except StoreUnavailable as exc:
                return "store", f"The state store is unavailable ({exc}), so toxic flows cannot be checked."
            rule = policy.labelling.blocking(seen, frozenset({"egress"}))
            if rule is not None:
                self._metrics.flows_blocked.labels(f"flows[{rule.index}]", "deny").inc()
                return "toxic_flow", (
                    flow_rules.reason(rule, seen, action.method)
                    + " A server's sampling request cannot wait for an approval, so it is refused."
                )
        if policy.sampling_scan_prompts:
            findings = await self.scan_untrusted(injection.sampling_texts(dict(action.arguments)))
            if findings:
                return "prompt_scan", (
                    f"The sampling prompt looks like prompt injection ({injection.describe(findings)}); "
                    "it was not shown to the agent's model."
                )
        return "guardian", None

    async def scan_untrusted(self, texts: list[str]) -> tuple[injection.InjectionFinding, ...]:
        """The prompt-injection scan of text a model will read (a sampling prompt, an A2A message);
        a long text is scanned off the event loop so other calls keep moving."""
        if sum(map(len, texts)) <= _INLINE_SCAN_CHARS:
            return injection.scan(texts)
        return await asyncio.to_thread(injection.scan, texts)

    async def refuse(self, action: Action, session_id: str, reason: str, effect: Effect | None = None) -> Decision:
        """Audit and count a denial reached before the guardian ran (hijack, tampered session)."""
        decision = Decision(
            Verdict.DENY, effect if effect is not None else self.classifier.classify(action), Tier.FAST, reason
        )
        return await self._record(action, session_id, decision)

    async def outcome(
        self,
        action: Action,
        decision: Decision,
        *,
        status: str,
        duration: float,
        detail: str | None = None,
        credential: Mapping[str, str] | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        """Audit what happened to a forwarded call: ``status`` is success, tool_error or error."""
        fields: dict[str, Any] = {
            "event": "outcome",
            "decision_id": decision.decision_id,
            "agent_id": action.agent_id,
            "session_id": action.session_id,
            "protocol": action.protocol,
            "action": action.label,
            "effect": decision.effect.label,
            "status": status,
            "duration_ms": round(duration * 1000, 3),
        }
        _touched(fields, action)
        if detail:
            fields["detail"] = detail
        if credential:
            fields |= credential  # mode, id (jti) and fingerprint: never the credential itself
        if data:
            fields["data_protection"] = dict(data)  # kinds, counts and fingerprints: never a value
        try:
            await self._audit.append(fields)
        except AuditUnavailable:
            self._audit_failed()

    async def _record(
        self, action: Action, session_id: str, decision: Decision, extra: Mapping[str, Any] | None = None
    ) -> Decision:
        hold = self._audit.hold
        if hold is not None and decision.allowed and decision.effect is not Effect.READ:
            decision = Decision(
                Verdict.DENY,
                decision.effect,
                Tier.FAST,
                f"The audit log failed its check against its last signed checkpoint ({hold}); only read "
                "actions are allowed until an operator acknowledges it with `wicket audit acknowledge`.",
                decision_id=decision.decision_id,
                fail_closed=True,
            )
        effect, verdict, tier = decision.effect.label, decision.recorded_verdict, decision.tier.value
        fields: dict[str, Any] = {
            "event": "decision",
            "decision_id": decision.decision_id,
            "agent_id": action.agent_id,
            "session_id": session_id,
            "protocol": action.protocol,
            "action": action.label,
            "upstream": action.upstream,
            "effect": effect,
            "decision": verdict,
            "tier": tier,
            "reason": decision.reason,
            "confidence": decision.confidence,
        }
        if action.arguments:
            fields["arguments_sha256"] = action.arguments_sha256
        _touched(fields, action)
        if decision.escalated_from is not None:
            fields["escalated_from"] = decision.escalated_from.label
        if decision.approval_id is not None:
            fields["approval_id"] = decision.approval_id
        if decision.shadow_of is not None:
            fields["mode"] = "shadow"
        if action.delegation is not None:
            fields["delegation"] = action.delegation.record()  # every hop, never the signed links
        ids = tracing.current_ids()
        if ids is not None:
            fields["trace_id"] = ids[0]  # jump from the record to its trace
        if decision.retry_after is not None:
            fields["retry_after"] = decision.retry_after
        if extra:
            fields |= extra
        try:
            await self._audit.append(fields)
            self._metrics.audit_written(True)
        except AuditUnavailable as exc:
            self._audit_failed()
            if decision.allowed and decision.effect is not Effect.READ:
                decision = Decision(
                    Verdict.DENY,
                    decision.effect,
                    Tier.FAST,
                    f"The audit log cannot be written ({exc}); only read actions are allowed until it recovers.",
                    decision_id=decision.decision_id,
                    fail_closed=True,
                )
                verdict, tier = decision.recorded_verdict, decision.tier.value
        mode = "enforce" if decision.shadow_of is None else "shadow"
        self._metrics.decisions.labels(action.protocol, effect, verdict, tier, mode).inc()
        self._metrics.count_agent(action.agent_id, verdict)
        return decision

    def _audit_failed(self) -> None:
        self._metrics.audit_failures.inc()
        self._metrics.audit_written(False)

    async def refused_caller(self, protocol: str, reason: str) -> None:
        """A caller refused before any Action exists (a broken delegation chain): audited, never silent."""
        event = {"event": "identity", "protocol": protocol, "decision": "deny", "reason": reason}
        try:
            await self.audit_event(event)
        except AuditUnavailable:
            log.error("a refused caller could not be audited: %s", reason)

    async def integrity_failure(self, protocol: str, reason: str) -> None:
        """A store record failed its HMAC: count it and leave an audit event for the operator."""
        self._metrics.integrity_failures.inc()
        try:
            await self.audit_event({"event": "integrity", "protocol": protocol, "reason": reason})
        except AuditUnavailable:
            log.error("an integrity failure could not be audited: %s", reason)

    async def audit_event(self, fields: dict[str, Any]) -> None:
        """Append a non-decision event (session created, integrity failure); raises AuditUnavailable."""
        try:
            await self._audit.append(fields)
        except AuditUnavailable:
            self._audit_failed()
            raise


def _touched(fields: dict[str, Any], action: Action) -> None:
    """What the action touched besides a tool, so the audit answers "who read this resource?"."""
    if action.resource is not None:
        fields["resource"] = action.resource
    if action.prompt is not None:
        fields["prompt"] = action.prompt
