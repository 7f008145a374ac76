"""Prometheus metrics. One registry per Wicket instance, so tests can run several side by side."""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import prometheus_client
import prometheus_client.metrics
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from proxy import __version__

log = logging.getLogger(__name__)
SCRAPE_REFRESH_SECONDS = 2.0
_CHECK_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0, 15.0)
_UPSTREAM_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 600.0)


class _KeptChildren:
    """``labels(*values)`` resolved once per label tuple and kept: prometheus_client validates,
    converts and locks on every call (~1 µs), and each call counts several labelled series."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._kept: dict[tuple[object, ...], Any] = {}

    def labels(self, *values: object, **named: object) -> Any:
        if named:
            return super().labels(*values, **named)  # type: ignore[misc]
        try:
            return self._kept[values]
        except KeyError:
            child = self._kept[values] = super().labels(*values)  # type: ignore[misc]
            return child
        except TypeError:  # an unhashable value: prometheus_client makes it a string
            return super().labels(*values)  # type: ignore[misc]

    def remove(self, *values: object) -> None:
        self._kept.clear()
        super().remove(*values)  # type: ignore[misc]

    def clear(self) -> None:
        self._kept.clear()
        super().clear()  # type: ignore[misc]


class Counter(_KeptChildren, prometheus_client.Counter):
    pass


class Gauge(_KeptChildren, prometheus_client.Gauge):
    pass


class LoopCounter(_KeptChildren, prometheus_client.Counter):
    """A counter for series only the event loop thread counts (every tool call does): the value is
    a plain float, not prometheus_client's locked value, so ``inc()`` is one call instead of five.
    Exposed exactly as a Counter: the samples are built the same way from the same floats."""

    def _metric_init(self) -> None:
        self._count = 0.0
        self._created = time.time()

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        if exemplar is not None:
            raise ValueError("a LoopCounter keeps no exemplars")
        try:
            self._count += amount
        except AttributeError:  # the labelled parent: prometheus_client's own error
            self._raise_if_not_observable()
            raise

    def reset(self) -> None:
        self._count = 0.0
        self._created = time.time()

    def _child_samples(self) -> Iterable[Sample]:
        sample = Sample("_total", {}, self._count, None, None)
        if prometheus_client.metrics._use_created:
            return (sample, Sample("_created", {}, self._created, None, None))
        return (sample,)


class LoopHistogram(_KeptChildren, prometheus_client.Histogram):
    """A histogram only the event loop thread observes (every tool call does): bucket counts and the
    sum are plain floats, so ``observe()`` is one call instead of seven (no locks, no checks per
    call). Exposed exactly as a Histogram: the same bucket choice, the same float sums."""

    def _metric_init(self) -> None:
        self._counts = [0.0] * len(self._upper_bounds)
        self._sum_value = 0.0
        self._created = time.time()

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        if exemplar is not None:
            raise ValueError("a LoopHistogram keeps no exemplars")
        try:
            self._sum_value += amount
        except AttributeError:  # the labelled parent: prometheus_client's own error
            self._raise_if_not_observable()
            raise
        if amount == amount:  # NaN falls in no bucket, as in prometheus_client
            # The first bucket that holds it (the bounds ascend and end with +Inf), found in C.
            self._counts[bisect_left(self._upper_bounds, amount)] += 1

    def _child_samples(self) -> Iterable[Sample]:
        samples = []
        acc = 0.0
        for bound, count in zip(self._upper_bounds, self._counts, strict=True):
            acc += count
            samples.append(Sample("_bucket", {"le": floatToGoString(bound)}, acc, None, None))
        samples.append(Sample("_count", {}, acc, None, None))
        if self._upper_bounds[0] >= 0:
            samples.append(Sample("_sum", {}, self._sum_value, None, None))
        if prometheus_client.metrics._use_created:
            samples.append(Sample("_created", {}, self._created, None, None))
        return tuple(samples)


class Metrics:
    """Every ``wicket_*`` series, named once here. Series every tool call counts are LoopCounter and
    LoopHistogram (no lock: only the event loop thread may count them); any series a worker thread
    counts (data findings: results are screened in ``asyncio.to_thread``) stays a locked Counter."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.decisions = LoopCounter(
            "wicket_decisions_total",
            "Decisions made, by protocol, effect, verdict (would_deny / would_require_approval in shadow mode), "
            "deciding tier and mode (enforce or shadow).",
            ["protocol", "effect", "decision", "tier", "mode"],
            registry=r,
        )
        self.policy_reloads = Counter(
            "wicket_policy_reloads_total",
            "Policy reloads (SIGHUP or POST /v1/policy/reload), by result: applied or refused.",
            ["result"],
            registry=r,
        )
        self.check_seconds = LoopHistogram(
            "wicket_check_duration_seconds",
            "Time to decide one action (classification, guardian tiers and the audit write).",
            ["protocol"],
            buckets=_CHECK_BUCKETS,
            registry=r,
        )
        self.upstream_seconds = LoopHistogram(
            "wicket_upstream_duration_seconds",
            "Time from forwarding a request upstream to its final response byte.",
            ["protocol"],
            buckets=_UPSTREAM_BUCKETS,
            registry=r,
        )
        self.client_disconnects = Counter(
            "wicket_client_disconnects_total",
            "Requests whose client left before the answer ended; Wicket closed the upstream request.",
            ["protocol"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "wicket_upstream_errors_total",
            "Upstream failures: unreachable, timeout, protocol error, oversized or unscreenable answer.",
            ["protocol", "kind"],
            registry=r,
        )
        self.rejections = Counter(
            "wicket_http_rejections_total",
            "Requests refused before any decision: bad Host/Origin, size, content type, parse errors, auth.",
            ["reason"],
            registry=r,
        )
        self.audit_failures = Counter(
            "wicket_audit_write_failures_total", "Audit events that could not be written.", registry=r
        )
        self.integrity_failures = Counter(
            "wicket_session_integrity_failures_total",
            "Session records that failed their HMAC check (tampering inside the store).",
            registry=r,
        )
        self.sessions_created = Counter(
            "wicket_sessions_created_total", "Sessions created, by mode and origin.", ["mode", "origin"], registry=r
        )
        self.tier_seconds = LoopHistogram(
            "wicket_guardian_tier_duration_seconds",
            "Time one guardian tier beyond Fast took to review an action.",
            ["tier"],
            buckets=_CHECK_BUCKETS,
            registry=r,
        )
        self.tier_errors = Counter(
            "wicket_guardian_tier_errors_total",
            "Guardian tier failures: timeout, error, circuit_open or unconfigured.",
            ["tier", "kind"],
            registry=r,
        )
        self.tier_verdicts = LoopCounter(
            "wicket_guardian_tier_verdicts_total",
            "Verdicts returned by each guardian tier.",
            ["tier", "verdict"],
            registry=r,
        )
        self.breaker_open = Gauge(
            "wicket_guardian_breaker_open", "1 while a tier's circuit breaker is open.", ["tier"], registry=r
        )
        self.escalations = Counter(
            "wicket_anomaly_escalations_total", "Actions whose effect anomaly escalation raised one tier.", registry=r
        )
        self.revocations = Counter(
            "wicket_revocations_total", "Revocations issued through this replica, by kind.", ["kind"], registry=r
        )
        self.revocations_in_force = Counter(
            "wicket_revocations_in_force_total",
            "Revocations this replica started enforcing, by how they came: local (its own API), feed (another "
            "replica's announcement), resync (the periodic reload: the feed missed them, or there is none) or start.",
            ["via"],
            registry=r,
        )
        self.revocation_in_force_at = Gauge(
            "wicket_revocation_in_force_timestamp_seconds",
            "When this replica last started enforcing a new revocation (Unix time; 0: none since it started).",
            registry=r,
        )
        self.approvals = Counter(
            "wicket_approvals_total",
            "Approval requests and their fate: requested, reused, approved, denied, expired, refused.",
            ["outcome"],
            registry=r,
        )
        self.elevations_active = Gauge(
            "wicket_elevations_active", "Elevations granted through this replica that are still running.", registry=r
        )
        self.elevated_calls = Counter(
            "wicket_elevated_calls_total", "Calls allowed under an operator-approved elevation.", registry=r
        )
        self.webhook_failures = Counter(
            "wicket_webhook_failures_total", "Approval webhook deliveries that failed or timed out.", registry=r
        )
        self.event_feed_dropped = Counter(
            "wicket_event_feed_dropped_total",
            "Audit events not delivered to a /v1/events subscriber whose queue was full.",
            registry=r,
        )
        self.upstream_children = Gauge(
            "wicket_upstream_children",
            "Live upstream channels behind the bridge: stdio child processes or legacy SSE connections.",
            registry=r,
        )
        self.upstream_info = Gauge(
            "wicket_upstream_info",
            "The upstream this Wicket proxies, by the name audit records, policy and credentials use, and transport.",
            ["upstream", "transport"],
            registry=r,
        )
        self.upstream_child_exits = Counter(
            "wicket_upstream_child_exits_total",
            "Upstream channels that ended, by reason: closed (by Wicket), idle, exited, crashed, start_failed.",
            ["reason"],
            registry=r,
        )
        self.server_requests = Counter(
            "wicket_server_requests_total",
            "Sampling and elicitation requests from upstream servers, by method, decision and what decided it "
            "(policy, rate_limit, prompt_scan, store, guardian).",
            ["method", "decision", "reason"],
            registry=r,
        )
        self.tool_catalog_lists = Counter(
            "wicket_tool_catalog_lists_total",
            "Upstream tool lists Wicket made itself to learn a tool no replica had pinned, by outcome (ok, error).",
            ["outcome"],
            registry=r,
        )
        self.tools_hidden = Counter(
            "wicket_tools_hidden_total",
            "Tools removed from tools/list results because the session may never call them.",
            registry=r,
        )
        self.tool_definition_changes = Counter(
            "wicket_tool_definition_changes_total",
            "New tool definitions that differ from the pinned one, by policy mode (block, warn).",
            ["mode"],
            registry=r,
        )
        self.tool_poisonings = Counter(
            "wicket_tool_poisonings_total",
            "New tool definitions whose descriptions carry hidden instructions, by policy mode (block, warn).",
            ["mode"],
            registry=r,
        )
        self.data_findings = Counter(
            "wicket_data_findings_total",
            "Secrets and personal data found in traffic, by kind, direction (arguments, results) and action taken.",
            ["kind", "direction", "action"],
            registry=r,
        )
        self.rate_limited = Counter(
            "wicket_rate_limited_total",
            "Calls refused by a policy rate limit or quota, by limit (limits[i]) and window (rate or quota).",
            ["limit", "window"],
            registry=r,
        )
        self.flows_blocked = Counter(
            "wicket_toxic_flows_total",
            "Calls that would complete a toxic flow, by rule and outcome (deny, approval_required, approved, "
            "approval_used).",
            ["rule", "outcome"],
            registry=r,
        )
        self.tool_calls_blocked = Counter(
            "wicket_tool_calls_blocked_total",
            "Tool calls refused because the tool awaits operator approval, by reason (changed, poisoned).",
            ["reason"],
            registry=r,
        )
        self.audit_healthy = Gauge("wicket_audit_healthy", "1 while the audit log can be written.", registry=r)
        self.audit_healthy.set(1)
        self._audit_ok = True
        self.audit_checkpoints = Counter(
            "wicket_audit_checkpoints_total", "Signed checkpoints of the audit chain head written.", registry=r
        )
        self.audit_held = Gauge(
            "wicket_audit_held",
            "1 while the audit log is behind its last signed checkpoint and no operator has acknowledged it.",
            registry=r,
        )
        info = Gauge("wicket_build_info", "Wicket version.", ["version"], registry=r)
        info.labels(version=__version__).set(1)
        self.store_up = Gauge(
            "wicket_store_up", "1 while the state store answered its last ping (refreshed on every scrape).", registry=r
        )
        self.approvals_pending = Gauge(
            "wicket_approvals_pending",
            "Approval requests waiting for an operator (refreshed on every scrape).",
            registry=r,
        )
        self.approvals_oldest_pending = Gauge(
            "wicket_approvals_oldest_pending_seconds",
            "Age of the oldest approval request still waiting for an operator; 0 when none waits.",
            registry=r,
        )
        self.agent_decisions = LoopCounter(
            "wicket_agent_decisions_total",
            "Decisions per agent and verdict; only with --metrics-agents N, for the first N agents seen "
            '(later ones count as agent="other").',
            ["agent", "decision"],
            registry=r,
        )
        self._refreshers: list[Callable[[], Awaitable[None]]] = []
        self._agents: set[str] = set()
        self.agent_limit = 0  # 0: no per-agent series at all (the default)

    def audit_written(self, ok: bool) -> None:
        """Whether the last audit append succeeded; the gauge (a lock each time) is set only on a change."""
        if ok is not self._audit_ok:
            self._audit_ok = ok
            self.audit_healthy.set(1 if ok else 0)

    def count_agent(self, agent_id: str, decision: str) -> None:
        """Per-agent decisions, bounded: the first ``agent_limit`` agents by name, the rest as ``other``."""
        if not self.agent_limit:
            return
        if agent_id not in self._agents:
            if len(self._agents) >= self.agent_limit:
                agent_id = "other"
            else:
                self._agents.add(agent_id)
        self.agent_decisions.labels(agent_id, decision).inc()

    def on_scrape(self, refresh: Callable[[], Awaitable[None]]) -> None:
        """Run ``refresh`` (bounded to 2 s) before each exposition: gauges that read the store."""
        self._refreshers.append(refresh)

    async def refresh(self) -> None:
        for refresh in self._refreshers:
            try:
                async with asyncio.timeout(SCRAPE_REFRESH_SECONDS):
                    await refresh()
            except Exception as exc:  # a scrape must still answer; the gauge keeps its last value
                log.warning("metrics refresh failed: %s", exc.__class__.__name__)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
