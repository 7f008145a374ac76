"""What every proxying adapter shares: its own refusals, the bounded request body, and the
relay of an upstream's answer message by message (SSE event by event) through a screen.

MCP and A2A differ in what they look for in an answer, not in how it is carried: an adapter
passes a ``screen`` that sees each JSON message (an SSE ``data`` payload or a whole JSON body)
and returns what the client gets instead (``b""``: nothing) or ``None`` to pass it on untouched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from proxy import tracing
from proxy.adapters import jsonrpc
from proxy.adapters.http_guard import forward_headers
from proxy.adapters.sse import SseScanner, event_bytes
from proxy.core.checker import Checker
from proxy.core.identity import Caller, IdentityError, IdentityResolver
from proxy.credentials import IssuedCredential
from proxy.httpio import read_limited
from proxy.identity_providers.oidc import resource_metadata_url, www_authenticate
from proxy.settings import Settings
from proxy.telemetry import Metrics

Screen = Callable[[str | bytes], Awaitable[bytes | None]]
"""One upstream message in; its replacement (``b""`` drops it) or ``None`` to forward it as it came."""

# Never forwarded: the agent's credential (its token must not reach the upstream), the browser's
# Origin (checked here), and Accept-Encoding (so responses arrive readable for inspection).
DROP_UPSTREAM = frozenset({"authorization", "origin", "accept-encoding"})
DROP_DOWNSTREAM = frozenset({"server", "date"})


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


def is_id(value: Any) -> bool:
    """A JSON-RPC id Wicket may echo: a string or a number (never an object, a bool or null)."""
    return isinstance(value, str | int | float) and not isinstance(value, bool)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refused with 413 before or as soon as it passes ``limit`` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise Refusal(413, jsonrpc.INVALID_REQUEST, f"Request body exceeds {limit} bytes.", reason="too_large")
    body = await read_limited(request.content, limit)
    if body is None:
        raise Refusal(413, jsonrpc.INVALID_REQUEST, f"Request body exceeds {limit} bytes.", reason="too_large")
    return body


async def relay_stream(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    screen: Screen,
    failed: Callable[[str], None],
    *,
    metrics: Metrics,
    protocol: str,
) -> web.StreamResponse:
    """Copy an upstream SSE stream to the client event by event, each ``data`` screened first."""
    response = web.StreamResponse(status=upstream.status, headers=forward_headers(upstream.headers, DROP_DOWNSTREAM))
    await response.prepare(request)
    scanner = SseScanner()
    try:
        async for chunk in upstream.content.iter_any():
            out: list[bytes] = []
            for raw, data in scanner.feed(chunk):
                replacement = None if data is None else await screen(data)
                if replacement is None:
                    out.append(raw)
                elif replacement:
                    out.append(event_bytes(replacement))
            if not out:
                continue
            try:
                await response.write(out[0] if len(out) == 1 else b"".join(out))
            except ConnectionError:
                failed("client disconnected before the response ended")
                return response  # leaving the caller's context closes the upstream stream (cancels the call)
    except (aiohttp.ClientError, TimeoutError) as exc:
        # The stream has started, so the status is sent: end it where the upstream did.
        failed(f"upstream stream ended abnormally ({exc.__class__.__name__})")
        metrics.upstream_errors.labels(protocol, "stream").inc()
        return response
    rest = scanner.rest()
    if rest:
        await response.write(rest)
    await response.write_eof()
    return response


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
        challenge = _challenge(settings, request, resource_path) if exc.status == 401 else None
        raise Refusal(exc.status, jsonrpc.UNAUTHORIZED, exc.reason, reason="auth", challenge=challenge) from None


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
                async with client.request(method, url, data=body or None, headers=headers, timeout=limits) as upstream:
                    upstream_span.set_attribute("http.response.status_code", upstream.status)
                    return await answer(upstream)
        except aiohttp.ServerDisconnectedError:
            if attempt + 1 >= attempts:
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")
