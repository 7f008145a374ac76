"""OpenTelemetry traces end to end: a real MCP call through Wicket, exported over OTLP/HTTP to a
local receiver that decodes the protobuf, with the agent's traceparent continued and the upstream
given a child context. JSON logs, and tracing costing nothing when it is off."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from proxy import tracing
from proxy.demo.server import DemoUpstream
from proxy.logfmt import JsonFormatter
from tests.conftest import WicketFactory, mcp_client, serve
from tests.test_http_defences import META, modern_headers

AGENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
AGENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{AGENT_TRACE}-{AGENT_SPAN}-01"
SECRET_ARGUMENT = "Reykjavik-7f3a-not-an-attribute"


class Receiver:
    """An OTLP/HTTP trace receiver: every span it was sent, as (name, attributes, trace id, parent id, span id)."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        export = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in export.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    attributes = {}
                    for a in span.attributes:
                        value = a.value
                        kind = value.WhichOneof("value")
                        attributes[a.key] = getattr(value, kind) if kind else None
                    self.spans.append(
                        {
                            "name": span.name,
                            "attributes": attributes,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_id": span.parent_span_id.hex(),
                            "service": resource.get("service.name"),
                        }
                    )
        return web.Response(status=200, content_type="application/x-protobuf", body=b"")

    def named(self, name: str) -> list[dict[str, Any]]:
        return [s for s in self.spans if s["name"] == name]


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    sink = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", sink.handle)
    async with serve(app) as base:
        yield sink, base


@pytest.fixture
async def tapped() -> AsyncIterator[tuple[DemoUpstream, str, list[dict[str, str]]]]:
    """The demo MCP server behind a tap that records the headers each request reached it with."""
    demo = DemoUpstream(json_response=True)
    await demo.start()
    seen: list[dict[str, str]] = []

    async def forward(request: web.Request) -> web.StreamResponse:
        seen.append(dict(request.headers))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with (
            aiohttp.ClientSession() as http,
            http.request(request.method, demo.url, data=await request.read(), headers=headers) as answer,
        ):
            body = await answer.read()
            keep = {k: v for k, v in answer.headers.items() if k.lower() in ("content-type", "mcp-session-id")}
            return web.Response(status=answer.status, body=body, headers=keep)

    app = web.Application()
    app.router.add_route("*", "/mcp", forward)
    async with serve(app) as base:
        yield demo, base + "/mcp", seen
    await demo.stop()


def otel_env(base: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": base, "OTEL_SERVICE_NAME": "wicket-test"}


async def test_a_traced_call_continues_the_agents_trace_and_reaches_the_upstream(
    receiver: tuple[Receiver, str],
    tapped: tuple[DemoUpstream, str, list[dict[str, str]]],
    make_wicket: WicketFactory,
) -> None:
    sink, base = receiver
    demo, upstream_url, seen = tapped
    running = await make_wicket(upstream_url, environ=otel_env(base))
    assert running.wicket.tracing is not None
    async with mcp_client(running.url, mode="2026-07-28", headers={"traceparent": TRACEPARENT}) as client:
        allowed = await client.call_tool("get_weather", {"city": SECRET_ARGUMENT})
        denied = await client.call_tool("drop_table", {"table": SECRET_ARGUMENT})
    assert not allowed.is_error and denied.is_error
    assert demo.ledger.names() == ["get_weather"]
    assert await running.wicket.tracing.flush()

    checks = sink.named("wicket.check")
    by_action = {s["attributes"]["wicket.action"]: s for s in checks}
    read, drop = by_action["tools/call:get_weather"], by_action["tools/call:drop_table"]
    assert read["attributes"]["wicket.decision"] == "allow" and read["attributes"]["wicket.effect"] == "read"
    assert drop["attributes"]["wicket.decision"] == "deny" and drop["attributes"]["wicket.effect"] == "destructive"
    assert drop["attributes"]["wicket.tier"] == "fast"
    assert all(s["trace_id"] == AGENT_TRACE for s in sink.spans), "every span continues the agent's trace"
    assert all(s["service"] == "wicket-test" for s in sink.spans)

    servers = [s for s in sink.spans if s["name"] == "POST /mcp"]
    assert servers and all(s["parent_id"] == AGENT_SPAN for s in servers), "the server span's parent is the agent's"
    server_ids = {s["span_id"] for s in servers}
    assert read["parent_id"] in server_ids

    [upstream_span] = [s for s in sink.named("wicket.upstream") if s["parent_id"] in server_ids and s is not None][-1:]
    assert upstream_span["attributes"]["http.response.status_code"] == 200
    assert sink.named("wicket.credential"), "the credential is its own span"
    # The upstream was handed Wicket's client span as its parent: same trace, Wicket's span id.
    tool_call_headers = seen[-1]
    parent = tool_call_headers["traceparent"].split("-")
    assert parent[1] == AGENT_TRACE and parent[2] in {s["span_id"] for s in sink.named("wicket.upstream")}
    assert parent[2] != AGENT_SPAN

    # The audit record of each decision names its trace.
    decisions = [e for e in running.audit_events() if e["event"] == "decision" and "tools/call" in e["action"]]
    assert {e["trace_id"] for e in decisions} == {AGENT_TRACE}
    # No argument value reaches any span attribute.
    assert SECRET_ARGUMENT not in json.dumps(sink.spans)


async def test_guardian_tiers_are_spans(
    receiver: tuple[Receiver, str], tapped: tuple[DemoUpstream, str, list[dict[str, str]]], make_wicket: WicketFactory
) -> None:
    sink, base = receiver
    _, upstream_url, _ = tapped
    running = await make_wicket(upstream_url, "version: 1\nanonymous: {enabled: false}\n", environ=otel_env(base))
    grant = await running.create_session("writer", mode="read-write")
    async with mcp_client(running.url, token=grant["token"], mode="2026-07-28") as client:
        wrote = await client.call_tool("create_note", {"title": "t", "text": "x"})
    assert not wrote.is_error
    assert running.wicket.tracing is not None
    assert await running.wicket.tracing.flush()
    [spot] = sink.named("wicket.guardian.spot")
    assert spot["attributes"]["wicket.verdict"] == "allow" and spot["attributes"]["wicket.effect"] == "mutating"
    [check] = [s for s in sink.named("wicket.check") if s["attributes"]["wicket.action"] == "tools/call:create_note"]
    assert spot["parent_id"] == check["span_id"]


async def test_meta_traceparent_is_continued(
    receiver: tuple[Receiver, str], tapped: tuple[DemoUpstream, str, list[dict[str, str]]], make_wicket: WicketFactory
) -> None:
    sink, base = receiver
    _, upstream_url, _ = tapped
    running = await make_wicket(upstream_url, environ=otel_env(base))
    meta_trace = "0af7651916cd43dd8448eb211c80319c"
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {
            "name": "get_weather",
            "arguments": {"city": "Oslo"},
            "_meta": {**META, "traceparent": f"00-{meta_trace}-b7ad6b7169203331-01"},
        },
    }
    headers = modern_headers(name="get_weather")
    async with aiohttp.ClientSession() as http, http.post(running.url, json=body, headers=headers) as response:
        assert response.status == 200, await response.text()
    assert running.wicket.tracing is not None
    assert await running.wicket.tracing.flush()
    [check] = sink.named("wicket.check")
    assert check["trace_id"] == meta_trace
    [mcp_span] = sink.named("mcp tools/call")
    assert mcp_span["parent_id"] == "b7ad6b7169203331" and check["parent_id"] == mcp_span["span_id"]


async def test_tracing_off_creates_nothing(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, environ={})
    assert running.wicket.tracing is None
    assert tracing.span("x") is tracing.span("y"), "off: one shared no-op, nothing created per call"
    async with mcp_client(running.url, mode="2026-07-28") as client:
        assert not (await client.call_tool("get_weather", {"city": "Oslo"})).is_error
    assert all("trace_id" not in e for e in running.audit_events())
    headers: CIMultiDict[str] = CIMultiDict({"traceparent": TRACEPARENT})
    tracing.inject(headers)
    assert headers["traceparent"] == TRACEPARENT, "off: the agent's own context passes through untouched"


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "not supported"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "http/protobuf"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_TRACES_SAMPLER": "sometimes"}, "not supported"),
    ],
)
async def test_a_tracing_setting_wicket_cannot_honour_refuses_to_start(
    upstream: DemoUpstream, make_wicket: WicketFactory, environ: dict[str, str], problem: str
) -> None:
    with pytest.raises(SystemExit, match=problem):
        await make_wicket(upstream.url, environ=environ)


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
    ],
)
def test_which_settings_turn_tracing_on(environ: dict[str, str], on: bool) -> None:
    assert tracing.enabled_in(environ) is on


async def test_json_logs_carry_the_trace_id(
    receiver: tuple[Receiver, str], tapped: tuple[DemoUpstream, str, list[dict[str, str]]], make_wicket: WicketFactory
) -> None:
    _, base = receiver
    _, upstream_url, _ = tapped
    running = await make_wicket(upstream_url, environ=otel_env(base))
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(JsonFormatter().format(record))

    handler = Collect(level=logging.INFO)
    probe = logging.getLogger("proxy.core.checker")
    probe.addHandler(handler)
    previous = probe.level
    probe.setLevel(logging.INFO)
    try:
        assert running.wicket.tracing is not None
        with running.wicket.tracing.serve("POST", "/mcp", {"traceparent": TRACEPARENT}):
            probe.info("a decision was made", extra={"decision_id": "dec_abc"})
        probe.info("outside any request")
    finally:
        probe.removeHandler(handler)
        probe.setLevel(previous)
    inside, outside = (json.loads(line) for line in lines)
    assert inside["trace_id"] == AGENT_TRACE and len(inside["span_id"]) == 16
    assert inside["decision_id"] == "dec_abc" and inside["level"] == "info" and inside["logger"] == "proxy.core.checker"
    assert inside["time"].endswith("Z") and inside["message"] == "a decision was made"
    assert "trace_id" not in outside
