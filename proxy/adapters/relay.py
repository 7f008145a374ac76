"""What every proxying adapter shares: its own refusals, the bounded request body, and the
relay of an upstream's answer message by message (SSE event by event) through a screen.

MCP and A2A differ in what they look for in an answer, not in how it is carried: an adapter
passes a ``screen`` that sees each JSON message (an SSE ``data`` payload or a whole JSON body)
and returns what the client gets instead (``b""``: nothing) or ``None`` to pass it on untouched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy import tracing
from proxy.adapters import jsonrpc
from proxy.adapters.http_guard import WatchedConnection, forward_headers
from proxy.adapters.sse import DEFAULT_MAX_EVENT_BYTES, JsonLines, SseEvent, SseScanner, event_bytes
from proxy.core.checker import Checker
from proxy.core.identity import Caller, IdentityError, IdentityResolver
from proxy.core.sessions import Session
from proxy.credentials import IssuedCredential
from proxy.httpio import read_limited
from proxy.identity_providers.oidc import resource_metadata_url, www_authenticate
from proxy.settings import Settings
from proxy.telemetry import Metrics

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Screen = Callable[[str | bytes], Awaitable[bytes | None]]
"""One upstream message in; its replacement (``b""`` drops it) or ``None`` to forward it as it came."""

# Never forwarded: the agent's credential (its token must not reach the upstream), the browser's
# Origin (checked here), and Accept-Encoding: Wicket's upstream clients ask for ``identity``
# themselves (UPSTREAM_HEADERS), so answers arrive readable for inspection.
DROP_UPSTREAM = frozenset({"authorization", "origin", "accept-encoding"})
# Every upstream request's defaults. Without an Accept-Encoding, any coding is acceptable (RFC 9110
# §12.5.3), and aiohttp would otherwise offer gzip and deflate on Wicket's behalf.
UPSTREAM_HEADERS = {"Accept-Encoding": "identity"}
# The longest header line Wicket reads, from upstreams and on the data port: the SDKs' HTTP stacks
# (h11 under httpx and uvicorn, Node's http) read header blocks up to 16 KiB, aiohttp only 8 KiB
# per line unless told.
HEADER_LINE_LIMIT = 16 * 1024
# Never relayed: an upstream's authentication challenge is about the credential Wicket presented,
# or names an authorization server Wicket does not vouch for; a client would take it for Wicket's own.
DROP_DOWNSTREAM = frozenset({"server", "date", "www-authenticate"})


class Refusal(Exception):
    """A request answered by Wicket itself before anything is forwarded."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        data: Any = None,
        reason: str = "refused",
        challenge: str | None = None,
        request_id: Any = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.data = data
        self.reason = reason
        self.challenge = challenge  # the WWW-Authenticate value of a 401
        self.request_id = request_id  # the client's id, once the envelope was valid enough to have one


@dataclasses.dataclass(slots=True)
class Flight:
    """A request's link to its connection: has the client gone, is the upstream being talked to."""

    gone: bool = False
    upstream_open: bool = False  # an adapter sets it while the upstream request is open


FLIGHT = web.RequestKey("wicket.flight", Flight)


def follow_disconnects(handler: Handler) -> Handler:
    """``handler``, noticing at once when a request's client goes away, without cutting Wicket's
    own work short.

    The data port's connections are each a :class:`WatchedConnection`: when one is lost, the request
    in progress is marked gone, and only if the adapter has the upstream request open
    (``Flight.upstream_open``) is its handler cancelled, which closes the upstream request.
    Decisions and audit records are therefore never cut short, and the upstream never works on
    for a client that left. It wraps the handlers that use ``request[FLIGHT]`` (not a middleware:
    an application without middlewares spares aiohttp's own wrapper around them on every request).
    """

    async def followed(request: web.Request) -> web.StreamResponse:
        flight = Flight()
        request[FLIGHT] = flight
        transport = request.transport
        connection = transport.get_protocol() if transport is not None else None
        task = asyncio.current_task()
        if not isinstance(connection, WatchedConnection) or task is None:
            return await handler(request)  # not served by the data port's listener: nothing to follow

        def lost() -> None:
            flight.gone = True
            if flight.upstream_open:
                task.cancel()

        connection.on_lost = lost
        try:
            return await handler(request)
        finally:
            if connection.on_lost is lost:
                connection.on_lost = None

    return followed


async def deliver(request: web.Request, response: web.StreamResponse) -> None:
    """Send a whole response now rather than when the handler returns, so what the handler does
    after it (a forwarded call's outcome record) is off the client's path. A streamed response is
    already sent; a client that has gone gets nothing, as it would have."""
    transport = request.transport
    if response.prepared or transport is None or transport.is_closing():
        return
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        pass  # it left meanwhile: the outcome is recorded all the same


def parse_body(body: bytes) -> Any:
    """A request body as JSON, or the Refusal a server would answer: -32700 for text that is not
    JSON, -32600 for JSON nested deeper than Wicket reads."""
    try:
        return jsonrpc.loads(body)
    except jsonrpc.NestingTooDeep:
        message = f"Invalid Request: the body nests deeper than {jsonrpc.MAX_DEPTH} levels."
        raise Refusal(400, jsonrpc.INVALID_REQUEST, message, reason="too_deep") from None
    except ValueError:
        raise Refusal(400, jsonrpc.PARSE_ERROR, "Parse error: the body is not valid JSON.", reason="parse") from None


def is_id(value: Any) -> bool:
    """A JSON-RPC id Wicket may echo: a string or a number (never an object, a bool or null)."""
    return isinstance(value, str | int | float) and not isinstance(value, bool)


async def read_body(request: web.Request, limit: int, within_seconds: float | None = None) -> bytes:
    """The request body, refused with 413 before or as soon as it passes ``limit`` bytes, and
    with 408 when it has not all arrived after ``within_seconds`` (a slow client holds nothing long)."""
    length = request.content_length
    if length is not None and length > limit:
        raise Refusal(413, jsonrpc.INVALID_REQUEST, f"Request body exceeds {limit} bytes.", reason="too_large")
    try:
        if request.content.is_eof():  # all of it has arrived: there is nothing to time out
            body = await read_limited(request.content, limit)
        else:
            async with asyncio.timeout(within_seconds):
                body = await read_limited(request.content, limit)
    except TimeoutError:
        message = f"The request body did not arrive within {within_seconds:g} seconds."
        raise Refusal(408, jsonrpc.INVALID_REQUEST, message, reason="slow_client") from None
    if body is None:
        raise Refusal(413, jsonrpc.INVALID_REQUEST, f"Request body exceeds {limit} bytes.", reason="too_large")
    return body


CLIENT_GONE = "client disconnected before the response ended"

AnswerKind = Literal["sse", "json", "ambiguous", "other"]


@functools.lru_cache(maxsize=64)
def answer_kind(content_types: tuple[str, ...]) -> AnswerKind:
    """How clients read an answer's Content-Type, and ``ambiguous`` when they disagree.

    The Python SDK lower-cases the (comma-joined) header and checks how it starts; the
    TypeScript SDK looks for ``text/event-stream``, then ``application/json``, anywhere in it,
    case and all. Parameters, a list of types and odd case are read as each client would.
    Remembered: an upstream sends the same one or two Content-Types on every answer.
    """
    joined = ", ".join(content_types)
    lowered = joined.lower()
    readings = {
        "json" if lowered.startswith("application/json") else "sse" if lowered.startswith("text/event-stream") else "",
        "sse" if "text/event-stream" in joined else "json" if "application/json" in joined else "",
        "sse" if "text/event-stream" in lowered else "json" if "application/json" in lowered else "",
    }
    readings.discard("")
    if not readings:
        return "other"
    if len(readings) > 1:
        return "ambiguous"
    return "sse" if "sse" in readings else "json"


async def relay_stream(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    screen: Screen,
    failed: Callable[[str], None],
    *,
    metrics: Metrics,
    protocol: str,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    last_word: Callable[[str], bytes | None] = lambda problem: None,
) -> web.StreamResponse:
    """Copy an upstream SSE stream to the client event by event, each ``data`` screened first.

    An event over ``max_event_bytes`` ends the stream: the client gets ``last_word(problem)``
    (a JSON-RPC error, say) as a final event, never the unscreened bytes.
    """
    response = web.StreamResponse(status=upstream.status, headers=forward_headers(upstream.headers, DROP_DOWNSTREAM))
    await response.prepare(request)
    scanner = SseScanner(max_event_bytes)
    try:
        async for chunk in upstream.content.iter_any():
            events = scanner.feed(chunk)
            try:
                if events:
                    out = [await _screened_event(event, screen) for event in events]
                    await response.write(out[0] if len(out) == 1 else b"".join(out))
                if scanner.problem is not None:
                    await _end_unscreenable(
                        response, scanner.problem, failed, last_word, event_bytes, metrics, protocol
                    )
                    return response
            except ConnectionError:
                failed(CLIENT_GONE)
                return response  # leaving the caller's context closes the upstream stream (cancels the call)
        last = scanner.rest()
        if last is not None:
            await response.write(await _screened_event(last, screen))
    except (aiohttp.ClientError, TimeoutError) as exc:
        # The stream has started, so the status is sent: end it where the upstream did.
        failed(f"upstream stream ended abnormally ({exc.__class__.__name__})")
        metrics.upstream_errors.labels(protocol, "stream").inc()
        return response
    await response.write_eof()
    return response


async def _screened_event(event: SseEvent, screen: Screen) -> bytes:
    """The bytes the client gets for one SSE event: its own, a replacement, or nothing."""
    if not event.data:
        return event.raw  # comments, keep-alives, priming events with no data
    replacement = await screen(event.data)
    if replacement is None:
        return event.raw
    return event_bytes(replacement) if replacement else b""


async def _end_unscreenable(
    response: web.StreamResponse,
    problem: str,
    failed: Callable[[str], None],
    last_word: Callable[[str], bytes | None],
    frame: Callable[[bytes], bytes],
    metrics: Metrics,
    protocol: str,
) -> None:
    """End a stream Wicket can no longer screen: the client's error, then the end."""
    log.warning("ending an upstream stream: %s", problem)
    failed(problem)
    metrics.upstream_errors.labels(protocol, "unscreenable").inc()
    final = last_word(problem)
    if final:
        await response.write(frame(final))
    await response.write_eof()


async def relay_json_lines(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    screen: Screen,
    failed: Callable[[str], None],
    *,
    metrics: Metrics,
    protocol: str,
    max_line_bytes: int,
    max_document_bytes: int,
    document: Callable[[bytes], Awaitable[web.StreamResponse]],
    last_word: Callable[[str], bytes | None] = lambda problem: None,
) -> web.StreamResponse:
    """A JSON answer without a length: relayed line by line when it streams JSON lines, each
    line screened, with the limits of SSE; a body that is one document goes to ``document``."""
    lines = JsonLines(_is_json, max_line_bytes, max_document_bytes)
    response: web.StreamResponse | None = None
    try:
        async for chunk in upstream.content.iter_any():
            out: list[bytes] = []
            for line in lines.feed(chunk):
                replacement = await screen(line) if line.strip() else None
                if replacement is None:
                    out.append(line)
                elif replacement:
                    out.append(replacement + b"\n")
            if out:
                if response is None:
                    headers = forward_headers(upstream.headers, DROP_DOWNSTREAM)
                    response = web.StreamResponse(status=upstream.status, headers=headers)
                    await response.prepare(request)
                await response.write(out[0] if len(out) == 1 else b"".join(out))
            if lines.problem is not None:
                if response is None:
                    metrics.upstream_errors.labels(protocol, "unscreenable").inc()
                    message = f"Wicket did not relay the upstream's answer: {lines.problem}."
                    raise Refusal(502, jsonrpc.INTERNAL_ERROR, message, reason="unscreenable")
                await _end_unscreenable(
                    response, lines.problem, failed, last_word, lambda body: body + b"\n", metrics, protocol
                )
                return response
        rest = lines.rest()
    except ConnectionError:
        failed(CLIENT_GONE)
        return response if response is not None else web.Response(status=499)
    except (aiohttp.ClientError, TimeoutError) as exc:
        if response is None:
            raise
        failed(f"upstream stream ended abnormally ({exc.__class__.__name__})")
        metrics.upstream_errors.labels(protocol, "stream").inc()
        return response
    if response is None:
        return await document(rest)  # nothing was streamed: one document (or one line), screened whole
    if rest.strip():
        replacement = await screen(rest)
        await response.write(rest if replacement is None else replacement)
    await response.write_eof()
    return response


def _is_json(line: bytes) -> bool:
    try:
        jsonrpc.loads(line)
    except ValueError:
        return False
    return True


async def read_answer(upstream: aiohttp.ClientResponse, limit: int, *, metrics: Metrics, protocol: str) -> bytes:
    """A non-streamed upstream body, refused (502) rather than truncated when it passes ``limit``."""
    payload = await read_limited(upstream.content, limit)
    if payload is None:
        metrics.upstream_errors.labels(protocol, "oversized").inc()
        raise Refusal(502, jsonrpc.UPSTREAM_UNAVAILABLE, f"Upstream response exceeds {limit} bytes.")
    return payload


async def resolve_caller(
    identity: IdentityResolver,
    checker: Checker,
    settings: Settings,
    request: web.Request,
    protocol: str,
    resource_path: str = "/mcp",
) -> Caller:
    """The caller behind ``Authorization``, or a 401/403 Refusal with the challenge a client needs."""
    try:
        return await identity.resolve(request.headers.get("Authorization"))
    except IdentityError as exc:
        if exc.integrity:
            await checker.integrity_failure(protocol, exc.reason)
        elif exc.audited:
            await checker.refused_caller(protocol, exc.reason)
        challenge = _challenge(settings, request, resource_path) if exc.status == 401 else None
        raise Refusal(exc.status, jsonrpc.UNAUTHORIZED, exc.reason, reason="auth", challenge=challenge) from None


async def caller_session(
    identity: IdentityResolver, checker: Checker, caller: Caller, protocol: str, *, fresh: bool = False
) -> Session:
    """The session a request runs in (``IdentityResolver.session_for``); a stored record that fails its
    HMAC is an audited 403 refusal, as for a token's session, never a 500."""
    try:
        return await identity.session_for(caller, fresh=fresh)
    except IdentityError as exc:
        if exc.integrity:
            await checker.integrity_failure(protocol, exc.reason)
        raise Refusal(exc.status, jsonrpc.DENIED, exc.reason, reason="integrity" if exc.integrity else "auth") from None


def _challenge(settings: Settings, request: web.Request, resource_path: str) -> str:
    """RFC 9728 §5.1: a 401 names the resource metadata, which names the IdP.

    ``error="invalid_token"`` (RFC 6750) only when a bearer token was presented and refused.
    """
    presented = request.headers.get("Authorization", "")[:7].lower() == "bearer "
    error = "invalid_token" if presented else None
    if not settings.oidc_issuer:
        return 'Bearer realm="wicket"' + (f', error="{error}"' if error else "")
    base = settings.public_url or f"{request.scheme}://{request.host}"
    return www_authenticate(resource_metadata_url(base.rstrip("/") + resource_path), error=error)


async def send_upstream(
    client: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    body: bytes | None,
    headers: CIMultiDict[str],
    limits: aiohttp.ClientTimeout,
    retry: bool,
    credential: Callable[[], Awaitable[IssuedCredential]],
    issued: list[IssuedCredential],
    answer: Callable[[aiohttp.ClientResponse], Awaitable[web.StreamResponse]],
    metrics: Metrics,
    protocol: str,
) -> web.StreamResponse:
    """Send one request upstream with a freshly issued credential and hand the response to ``answer``.

    A pooled connection the upstream closed while idle fails before any byte of the request is
    processed; with ``retry`` (only for what cannot change state) it is sent once more, with a new
    credential, since a retry must not reuse a jti the upstream may have seen. Each credential is
    appended to ``issued``, so the caller audits the last one even when the send fails.
    """
    attempts = 2 if retry else 1
    for attempt in range(attempts):
        with tracing.span("wicket.credential") as credential_span:
            issued.append(await credential())
            credential_span.set_attribute("wicket.credential.mode", issued[-1].mode)
        for name, value in issued[-1].headers.items():
            headers.popall(name, None)  # the caller cannot supply its own value for an injected header
            headers[name] = value
        try:
            with tracing.span("wicket.upstream", {"http.request.method": method}, client=True) as upstream_span:
                tracing.inject(headers)
                async with client.request(
                    method, url, data=body or None, headers=headers, timeout=limits, allow_redirects=False
                ) as upstream:
                    upstream_span.set_attribute("http.response.status_code", upstream.status)
                    refusal = _unrelayable(upstream, issued[-1].mode)
                    if refusal is not None:
                        metrics.upstream_errors.labels(protocol, refusal.reason).inc()
                        raise refusal
                    return await answer(upstream)
        except aiohttp.ServerDisconnectedError:
            if attempt + 1 >= attempts:
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")


def _unrelayable(upstream: aiohttp.ClientResponse, credential_mode: str) -> Refusal | None:
    """The error the client gets instead of an upstream answer Wicket must not relay (its
    ``reason`` is the kind counted), or None for an answer to relay."""
    if 300 <= upstream.status < 400:
        return Refusal(502, jsonrpc.UPSTREAM_UNAVAILABLE, redirect_problem(upstream), reason="redirect")
    if upstream.status == 401 and credential_mode != "passthrough":
        # The agent cannot fix what Wicket presented: an error for the operator, not a challenge.
        message = (
            f"The upstream refused the credential Wicket presented for this call ({credential_mode}, HTTP 401); "
            "the agent's own credentials are not at fault: check this upstream's credentials in the policy."
        )
        return Refusal(502, jsonrpc.UPSTREAM_UNAVAILABLE, message, reason="credential_refused")
    coding = upstream.headers.get("Content-Encoding", "").strip().lower()
    if coding not in ("", "identity"):
        # Clients decode it; Wicket's screen would see bytes it cannot read.
        message = (
            f"The upstream answered with Content-Encoding: {coding[:40]} although Wicket asked for "
            "identity; Wicket cannot screen it and did not relay it."
        )
        return Refusal(502, jsonrpc.INTERNAL_ERROR, message, reason="unscreenable")
    return None


def failure_kind(exc: BaseException) -> Literal["timeout", "unreachable", "protocol"]:
    """How an upstream exchange failed: it did not answer in time, could not be reached (or hung
    up), or answered what is not readable HTTP (a header past aiohttp's limits, a body cut short
    of its length, broken chunking), which Wicket relays nothing of."""
    if isinstance(exc, TimeoutError):  # aiohttp's ServerTimeoutError is one too
        return "timeout"
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        return "protocol"
    return "unreachable"


_FAILURE_TEXT: dict[str, str] = {
    "timeout": "did not answer in time",
    "protocol": "answered what is not readable HTTP; Wicket relayed none of it",
    "unreachable": "is unreachable; nothing was executed",
}


def failure_refusal(kind: str, upstream: str, request_id: Any = None) -> Refusal:
    """The client's error for an exchange that failed as ``failure_kind`` says: 504 when the
    upstream (``upstream`` names it: "MCP server", "A2A agent") did not answer in time, else 502."""
    status, code = (504, jsonrpc.UPSTREAM_TIMEOUT) if kind == "timeout" else (502, jsonrpc.UPSTREAM_UNAVAILABLE)
    return Refusal(status, code, f"The upstream {upstream} {_FAILURE_TEXT[kind]}.", request_id=request_id)


def redirect_problem(upstream: aiohttp.ClientResponse) -> str:
    """Why an upstream redirect went nowhere. A redirect is neither followed nor relayed: following
    it would send the call (its arguments) to a server the policy never named, and relaying it would
    send the agent around Wicket. Names where it pointed, without a query (which may carry
    secrets), and only the origin when that is another server."""
    where = ""
    try:
        target = upstream.url.join(URL(upstream.headers.get("Location", "")))
    except ValueError:
        target = None
    if target is not None and target.is_absolute():
        same = target.origin() == upstream.url.origin()
        where = f" to {target.path}" if same else f" to another server, {target.origin()}"
    return (
        f"The upstream answered HTTP {upstream.status} (a redirect{where}). Wicket does not follow or relay "
        "redirects, so the request went nowhere else: point Wicket at the upstream's final URL."
    )
