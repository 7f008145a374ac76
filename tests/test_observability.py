"""What operators scrape and page on: the shipped dashboard and alerts refer only to metrics Wicket
exports, the README lists every metric, label sets stay bounded, and the store-read gauges work."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import aiohttp
import prometheus_client
import prometheus_client.metrics
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry, generate_latest

from proxy.demo.server import DemoUpstream
from proxy.telemetry import LoopCounter, LoopHistogram
from tests.conftest import ROOT, RunningWicket, WicketFactory, mcp_client
from tests.redis_support import RedisServer

DASHBOARD = ROOT / "charts" / "wicket" / "files" / "grafana-dashboard.json"
ALERTS = ROOT / "charts" / "wicket" / "files" / "prometheus-alerts.yaml"
METRIC = re.compile(r"\bwicket_[a-z0-9_]+\b")
STRICT = "version: 1\nanonymous: {enabled: false}\n"


async def scrape(running: RunningWicket) -> str:
    async with aiohttp.ClientSession() as http, http.get(running.admin_url + "/metrics") as response:
        assert response.status == 200
        return await response.text()


def families(exposition: str) -> set[str]:
    """Metric families by their exposed name (prometheus_client's per-counter ``_created`` gauges aside)."""
    names = {line.split()[2] for line in exposition.splitlines() if line.startswith("# TYPE ")}
    return {n for n in names if not n.endswith("_created")}


def exported(name: str, known: set[str]) -> bool:
    return name in known or any(
        name.endswith(s) and name.removesuffix(s) in known for s in ("_bucket", "_count", "_sum")
    )


def queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs += [t["query"]["query"] for t in dashboard["templating"]["list"] if isinstance(t.get("query"), dict)]
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    return exprs + [rule["expr"] for rule in rules]


async def test_dashboard_and_alerts_use_only_exported_metrics(wicket: RunningWicket) -> None:
    async with mcp_client(wicket.url, mode="2026-07-28") as client:
        await client.call_tool("get_weather", {"city": "Oslo"})
        await client.call_tool("drop_table", {"table": "t"})
    known = families(await scrape(wicket))
    used = {name for expr in queries() for name in METRIC.findall(expr)}
    assert len(used) >= 15
    missing = sorted(name for name in used if not exported(name, known))
    assert not missing, f"dashboard/alert queries refer to metrics Wicket does not export: {missing}"


def test_the_alert_rules_are_well_formed() -> None:
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    assert {
        "WicketAuditLogUnhealthy",
        "WicketGuardianBreakerOpen",
        "WicketStoreUnavailable",
        "WicketDenialRateHigh",
        "WicketEscalationsHigh",
        "WicketApprovalsWaiting",
    } <= set(names)
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    assert (ROOT / "docs" / "prometheus-alerts.yaml").resolve() == ALERTS.resolve()
    assert (ROOT / "docs" / "grafana-dashboard.json").resolve() == DASHBOARD.resolve()


async def test_the_readme_lists_every_metric(wicket: RunningWicket) -> None:
    readme = (ROOT / "README.md").read_text()
    listed = set(METRIC.findall(readme))
    missing = sorted(f for f in families(await scrape(wicket)) if f not in listed)
    assert not missing, f"metrics missing from the README's Metrics section: {missing}"


async def test_invented_tool_names_never_become_label_values(
    upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(upstream.url)
    before = await scrape(running)
    async with mcp_client(running.url, mode="2026-07-28") as client:
        for n in range(40):
            await client.call_tool(f"invented_tool_{n}_zz", {})
    after = await scrape(running)
    assert "invented_tool_" not in after
    series = lambda text: {line.split(" ")[0] for line in text.splitlines() if line.startswith("wicket_")}  # noqa: E731
    grown = series(after) - series(before)
    assert len(grown) < 40, f"40 tool names must not make 40 series: {sorted(grown)}"


async def test_per_agent_series_are_opt_in_and_capped(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    off = await make_wicket(upstream.url, STRICT)
    on = await make_wicket(upstream.url, STRICT, metrics_agents=2)
    for running in (off, on):
        for agent in ("alpha", "beta", "gamma"):
            grant = await running.create_session(agent)
            async with mcp_client(running.url, token=grant["token"], mode="2026-07-28") as client:
                await client.call_tool("get_weather", {"city": "Oslo"})
    assert "wicket_agent_decisions_total{" not in await scrape(off)
    text = await scrape(on)
    agents = set(re.findall(r'wicket_agent_decisions_total\{agent="([^"]+)"', text))
    assert agents == {"alpha", "beta", "other"}


async def test_store_and_approval_gauges(
    upstream: DemoUpstream, make_wicket: WicketFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    key = tmp_path / "signing.pem"
    key.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    running = await make_wicket(upstream.url, STRICT, store=redis_server.url, environ={"WICKET_SIGNING_KEY": str(key)})
    assert "wicket_approvals_pending 0.0" in await scrape(running)
    grant = await running.create_session("writer")
    async with mcp_client(running.url, token=grant["token"], mode="2026-07-28") as client:
        pending = await client.call_tool("create_note", {"title": "t", "text": "x"})
    assert pending.meta["wicket/decision"]["decision"] == "approval_required"
    text = await scrape(running)
    assert "wicket_store_up 1.0" in text and "wicket_approvals_pending 1.0" in text
    oldest = float(re.search(r"^wicket_approvals_oldest_pending_seconds (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    assert 0.0 <= oldest < 300
    redis_server.kill()
    assert "wicket_store_up 0.0" in await scrape(running)
    assert upstream.ledger.names() == []


def test_labelled_series_are_resolved_once_and_count_as_before() -> None:
    from proxy.telemetry import Metrics

    metrics = Metrics()
    child = metrics.decisions.labels("mcp", "read", "allow", "fast", "enforce")
    assert metrics.decisions.labels("mcp", "read", "allow", "fast", "enforce") is child
    named = metrics.decisions.labels(protocol="mcp", effect="read", decision="allow", tier="fast", mode="enforce")
    assert named is child
    child.inc()
    metrics.decisions.labels("mcp", "read", "allow", "fast", "enforce").inc(2)
    metrics.check_seconds.labels("mcp").observe(0.001)
    text = metrics.exposition().decode()
    series = 'wicket_decisions_total{decision="allow",effect="read",mode="enforce",protocol="mcp",tier="fast"}'
    assert f"{series} 3.0" in text
    assert 'wicket_check_duration_seconds_count{protocol="mcp"} 1.0' in text
    metrics.decisions.remove("mcp", "read", "allow", "fast", "enforce")  # a removed series starts again from 0
    metrics.decisions.labels("mcp", "read", "allow", "fast", "enforce").inc()
    assert f"{series} 1.0" in metrics.exposition().decode()


def test_audit_health_gauge_follows_the_last_append() -> None:
    from proxy.telemetry import Metrics

    metrics = Metrics()
    assert "wicket_audit_healthy 1.0" in metrics.exposition().decode()
    metrics.audit_written(False)
    assert "wicket_audit_healthy 0.0" in metrics.exposition().decode()
    metrics.audit_written(False)
    metrics.audit_written(True)
    assert "wicket_audit_healthy 1.0" in metrics.exposition().decode()


def _exposed(registry: CollectorRegistry) -> list[str]:
    """The exposition with the ``_created`` timestamps (when a series was made) left out."""
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


@pytest.mark.parametrize("created", [True, False])
def test_loop_counters_and_histograms_expose_exactly_what_prometheus_client_would(
    created: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock-free series every tool call counts against prometheus_client's own classes, fed the same."""
    monkeypatch.setattr(prometheus_client.metrics, "_use_created", created)
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    buckets = (0.00005, 0.001, 0.25, 1.0, 15.0)
    counters = [
        cls("wicket_things_total", "Things.", ["kind", "mode"], registry=r)
        for cls, r in ((LoopCounter, ours), (prometheus_client.Counter, theirs))
    ]
    histograms = [
        cls("wicket_took_seconds", "Took.", ["kind"], buckets=buckets, registry=r)
        for cls, r in ((LoopHistogram, ours), (prometheus_client.Histogram, theirs))
    ]
    bare = [
        cls("wicket_bare_seconds", "Bare.", buckets=(-1.0, 0.0, 2.0), registry=r)
        for cls, r in ((LoopHistogram, ours), (prometheus_client.Histogram, theirs))
    ]
    amounts = [0.0, 0.00005, 0.0000501, 0.001, 0.3, 1.0, 14.9, 15.0, 16.0, 1e9, math.inf, -0.5, 0.1 + 0.2, math.nan]
    for n, amount in enumerate(amounts):
        for counter, histogram, plain in zip(counters, histograms, bare, strict=True):
            counter.labels("a" if n % 3 else "b", "enforce").inc()
            counter.labels(kind="c", mode="shadow").inc(n + 0.25)
            histogram.labels("a" if n % 2 else "b").observe(amount)
            plain.observe(amount)
    for counter in counters:
        counter.labels("never", "enforce")  # made, never counted: exposed as 0
        counter.labels("gone", "enforce").inc(3)
        counter.remove("gone", "enforce")
    assert _exposed(ours) == _exposed(theirs)
    for sample in ("wicket_things_total", "wicket_took_seconds_sum", "wicket_took_seconds_bucket"):
        labels = {"kind": "a", "mode": "enforce"} if sample == "wicket_things_total" else {"kind": "b"}
        if sample.endswith("_bucket"):
            labels["le"] = "0.001"
        assert ours.get_sample_value(sample, labels) == theirs.get_sample_value(sample, labels)
    for counter in counters:
        with pytest.raises(ValueError):
            counter.inc()  # the labelled parent counts nothing, as in prometheus_client
        with pytest.raises(ValueError):
            counter.labels("a", "enforce").inc(-1)
    for histogram in histograms:
        with pytest.raises(ValueError):
            histogram.observe(1.0)
