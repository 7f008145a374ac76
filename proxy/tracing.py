"""OpenTelemetry traces: off unless the standard ``OTEL_*`` variables ask for them.

When off, nothing from OpenTelemetry's SDK is imported and every ``span()`` is one context
variable read returning a shared no-op, so the hot path pays nothing measurable. When on, each
Wicket has its own ``TracerProvider`` (several can run in one test process); the data and admin
ports' middleware opens a server span per request, continuing the caller's W3C
``traceparent``/``tracestate``, and makes this Wicket's tracer current for everything the
request does: the checker, each guardian tier, the credential and the upstream call open child
spans through :func:`span` without being handed a tracer. Span attributes carry the action,
effect, tier and decision, never arguments, tokens or other values an agent sent.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger(__name__)

SERVICE_NAME = "wicket"
_UNTRACED = frozenset({"/metrics", "/healthz", "/readyz"})


class TracingConfigError(Exception):
    """``OTEL_*`` asks for something Wicket cannot do (an exporter it does not ship, a bad value)."""


class _NoopSpan:
    """What :func:`span` yields while tracing is off: every call is a no-op."""

    __slots__ = ()

    def set_attribute(self, key: str, value: Any) -> None:
        return None

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        return None


_NOOP_SPAN = _NoopSpan()


class _NoopScope:
    __slots__ = ()

    def __enter__(self) -> _NoopSpan:
        return _NOOP_SPAN

    def __exit__(self, *exc: object) -> None:
        return None


_NOOP_SCOPE = _NoopScope()
_current: contextvars.ContextVar[Tracing | None] = contextvars.ContextVar("wicket_tracing", default=None)


def enabled_in(environ: Mapping[str, str]) -> bool:
    """Whether ``OTEL_*`` asks for traces: an OTLP endpoint, or an explicit traces exporter."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(
        exporter or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


class Tracing:
    """One Wicket's tracer provider, exporter and the propagator for W3C trace context."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer: Tracer = provider.get_tracer("wicket")
        self._propagator = TraceContextTextMapPropagator()
        self._server = SpanKind.SERVER
        self._client = SpanKind.CLIENT
        self._internal = SpanKind.INTERNAL

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Tracing | None:
        """Tracing as ``OTEL_*`` configures it, or None (off) when they do not ask for it."""
        if not enabled_in(environ):
            return None
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        attributes: dict[str, Any] = {"service.name": environ.get("OTEL_SERVICE_NAME") or SERVICE_NAME}
        for pair in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
            key, sep, value = pair.partition("=")
            if sep and key.strip():
                attributes.setdefault(key.strip(), value.strip())
        provider = TracerProvider(resource=Resource.create(attributes), sampler=_sampler(environ))
        provider.add_span_processor(BatchSpanProcessor(_exporter(environ)))
        return cls(provider)

    # -- the request's server span ------------------------------------------------------------

    @contextmanager
    def serve(self, method: str, path: str, headers: Mapping[str, str]) -> Iterator[Span]:
        """The server span of one request, continuing the caller's ``traceparent`` if it sent one."""
        parent = self._propagator.extract(headers)
        token = _current.set(self)
        try:
            with self.tracer.start_as_current_span(
                f"{method} {path}",
                context=parent,
                kind=self._server,
                attributes={"http.request.method": method, "url.path": path},
            ) as server_span:
                yield server_span
        finally:
            _current.reset(token)

    def skips(self, path: str) -> bool:
        return path in _UNTRACED

    async def flush(self, timeout_seconds: float = 5.0) -> bool:
        """Export what is buffered (off the event loop: the exporter blocks on the network)."""
        import asyncio

        return await asyncio.to_thread(self.provider.force_flush, int(timeout_seconds * 1000))

    async def close(self) -> None:
        import asyncio

        await asyncio.to_thread(self.provider.shutdown)


def _sampler(environ: Mapping[str, str]) -> Any:
    from opentelemetry.sdk.trace.sampling import (
        ALWAYS_OFF,
        ALWAYS_ON,
        ParentBased,
        TraceIdRatioBased,
    )

    name = (environ.get("OTEL_TRACES_SAMPLER") or "parentbased_always_on").strip().lower()
    ratio_text = environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0")
    try:
        ratio = float(ratio_text)
    except ValueError:
        raise TracingConfigError(f"OTEL_TRACES_SAMPLER_ARG must be a number from 0 to 1, not {ratio_text!r}") from None
    samplers = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": TraceIdRatioBased(ratio),
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(TraceIdRatioBased(ratio)),
    }
    if name not in samplers:
        raise TracingConfigError(f"OTEL_TRACES_SAMPLER {name!r} is not supported; use one of {', '.join(samplers)}")
    return samplers[name]


def _exporter(environ: Mapping[str, str]) -> Any:
    kind = (environ.get("OTEL_TRACES_EXPORTER") or "otlp").strip().lower()
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if kind != "otlp":
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER {kind!r} is not supported; use otlp, console or none")
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    ).strip()
    if protocol not in ("", "http/protobuf"):
        raise TracingConfigError(f"OTLP protocol {protocol!r} is not supported; Wicket exports http/protobuf")
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise TracingConfigError(
            "OTLP export needs the optional exporter: pip install 'wicket[otlp]' (or unset OTEL_EXPORTER_OTLP_*)"
        ) from None
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not endpoint:
        base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318"
        endpoint = base.rstrip("/") + "/v1/traces"
    headers = {}
    for pair in (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or environ.get("OTEL_EXPORTER_OTLP_HEADERS") or ""
    ).split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            headers[key.strip()] = value.strip()
    timeout = float(environ.get("OTEL_EXPORTER_OTLP_TIMEOUT", "10000")) / 1000.0
    return OTLPSpanExporter(endpoint=endpoint, headers=headers or None, timeout=timeout)


# -- what the rest of Wicket calls -----------------------------------------------------------------


current: Callable[[], Tracing | None] = _current.get
"""The current request's tracing, or None while it is not traced. A hot path asks this once and
skips every span (and the attributes it would build) when it is None: one C call, no scope objects."""


def span(name: str, attributes: Mapping[str, Any] | None = None, *, client: bool = False) -> Any:
    """A child span of the current request's span (a context manager); a no-op while tracing is off."""
    tracing = _current.get()
    if tracing is None:
        return _NOOP_SCOPE
    kind = tracing._client if client else tracing._internal
    return tracing.tracer.start_as_current_span(name, kind=kind, attributes=dict(attributes or {}))


def continue_from_meta(method: str, meta: Any) -> Any:
    """An MCP message's own trace context (``params._meta.traceparent``) as the parent of what follows.

    MCP carries W3C trace context per message in ``_meta``; when a client sends it, the decision
    and the upstream call join that trace (the HTTP server span stays linked as the request)."""
    tracing = _current.get()
    if tracing is None or not isinstance(meta, dict) or not isinstance(meta.get("traceparent"), str):
        return _NOOP_SCOPE
    carrier = {k: v for k in ("traceparent", "tracestate") if isinstance(v := meta.get(k), str)}
    parent = tracing._propagator.extract(carrier)
    from opentelemetry.trace import Link, get_current_span

    request_span = get_current_span().get_span_context()
    links = [Link(request_span)] if request_span.is_valid else None
    return tracing.tracer.start_as_current_span(
        f"mcp {method}", context=parent, kind=tracing._server, links=links, attributes={"mcp.method.name": method}
    )


def inject(headers: MutableMapping[str, str]) -> None:
    """Propagate the current span to the upstream as ``traceparent``/``tracestate`` headers.

    The body is forwarded as sent: an MCP ``_meta.traceparent`` keeps the agent's span as its
    parent (same trace id), since rewriting it could touch bytes the agent's arguments share."""
    tracing = _current.get()
    if tracing is None:
        return
    for name in ("traceparent", "tracestate"):
        while name in headers:  # the agent's own values: the upstream's parent is Wicket's span
            del headers[name]
    tracing._propagator.inject(headers)


def current_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) in hex of the current span, for audit records and JSON logs; None when off."""
    if _current.get() is None:
        return None
    from opentelemetry.trace import get_current_span

    context = get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"
