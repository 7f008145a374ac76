"""Transport defences shared by every HTTP adapter: Host/Origin checks, CORS and header hygiene."""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import cast
from urllib.parse import urlsplit

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::", "[::]"})

# RFC 9110 §7.6.1 hop-by-hop headers, plus the ones a proxy must set itself.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Content-Length",
        "Host",
    )
)


def _hostname(value: str) -> str:
    """Host header value without its port, lower-cased (``[::1]:8080`` -> ``[::1]``)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[: value.find("]") + 1] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class OriginPolicy:
    """DNS-rebinding protection: the ``Host`` must be ours and a browser ``Origin`` trusted.

    Wicket checks both itself because it rewrites ``Host`` when forwarding, which would
    otherwise blind the upstream's own check.
    """

    def __init__(
        self, allowed_hosts: Iterable[str] = (), allowed_origins: Iterable[str] = (), *, flag: str = "--allowed-host"
    ) -> None:
        self.hosts = LOCAL_HOSTS | {_hostname(h) for h in allowed_hosts}
        self.any_host = "*" in self.hosts
        self._served: set[str] = set()  # Host header values already found ours, as sent
        self.origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        self._flag = flag  # the option that adds a Host, named in the refusal

    def host_problem(self, host: str | None) -> str | None:
        if self.any_host or host in self._served:
            return None
        if not host:
            return "the request has no Host header"
        if _hostname(host) not in self.hosts:
            return f"Host '{host}' is not served here (add it with {self._flag})"
        # Every request sends the same few: remember them as sent (refused ones never are).
        if len(self._served) >= _SERVED_MAX:
            self._served.clear()
        self._served.add(host)
        return None

    def origin_problem(self, origin: str | None) -> str | None:
        if origin is None:
            return None  # non-browser clients send no Origin
        normalised = origin.rstrip("/").lower()
        if normalised in self.origins:
            return None
        parts = urlsplit(normalised)
        if parts.scheme in ("http", "https") and parts.hostname is not None:
            host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            if host in LOCAL_HOSTS:
                return None
        return f"Origin '{origin}' is not allowed (add it with --allowed-origin)"


_SERVED_MAX = 256


def forward_headers(
    headers: CIMultiDictProxy[str] | Mapping[str, str], drop: frozenset[str] = frozenset()
) -> CIMultiDict[str]:
    """Copy end-to-end headers: hop-by-hop ones, those named in ``Connection`` and ``drop`` go.

    Runs twice per call, so the copy is multidict's and only the names to drop are looked up."""
    out: CIMultiDict[str] = CIMultiDict(headers)
    names = _dropped(drop)
    connection = headers.get("Connection")
    if connection:
        names = names | {t.strip().lower() for t in connection.split(",") if t.strip()}
    for name in names:
        if name in out:
            out.popall(name)
    return out


@functools.lru_cache(maxsize=64)
def _dropped(drop: frozenset[str]) -> frozenset[str]:
    return HOP_BY_HOP | drop


def admin_origin_policy(listen_host: str, extra_hosts: Iterable[str]) -> OriginPolicy:
    """The admin port's Host check: the local names, the address it listens on (unless that is a
    wildcard, which names no host) and the operator's ``--admin-allowed-host`` values."""
    own = (
        ()
        if listen_host.lower() in WILDCARD_ADDRESSES
        else (f"[{listen_host}]" if ":" in listen_host else listen_host,)
    )
    return OriginPolicy((*own, *extra_hosts), flag="--admin-allowed-host")


# What a browser MCP client sends and must be able to read (the session id above all).
CORS_METHODS = "GET, POST, DELETE, OPTIONS"
CORS_REQUEST_HEADERS = (
    "Authorization, Content-Type, Accept, Last-Event-ID, Mcp-Session-Id, MCP-Protocol-Version, Mcp-Method, Mcp-Name"
)
CORS_EXPOSED_HEADERS = "Mcp-Session-Id, MCP-Protocol-Version, WWW-Authenticate"
CORS_MAX_AGE = "600"
_HEADER_LIST = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:\s*,\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+)*")


def preflight(request: web.Request) -> web.Response:
    """The answer to a CORS preflight from an origin the ``OriginPolicy`` already accepted
    (``Access-Control-Allow-Origin`` is added by ``cors``, as on every answer)."""
    headers = {"Access-Control-Allow-Methods": CORS_METHODS, "Access-Control-Max-Age": CORS_MAX_AGE}
    asked = request.headers.get("Access-Control-Request-Headers", "").strip()
    # A trusted page may send other headers too (they are forwarded like any other): allow what it asks for.
    headers["Access-Control-Allow-Headers"] = (
        f"{CORS_REQUEST_HEADERS}, {asked}" if asked and _HEADER_LIST.fullmatch(asked) else CORS_REQUEST_HEADERS
    )
    return web.Response(status=204, headers=headers)


def cors(origins: OriginPolicy) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """An ``on_response_prepare`` hook: every answer's CORS headers are Wicket's own.

    Whatever the upstream said (``Access-Control-Allow-Origin: *``, say) is removed; a browser
    origin Wicket accepts gets itself named back, with the headers an MCP client must read.
    """

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        if request.method != "OPTIONS":  # preflights are answered by Wicket itself; everything else was relayed
            for name in [name for name in headers if name[:15].lower() == "access-control-"]:
                headers.popall(name, None)
        origin = request.headers.get("Origin")
        if origin is None or origins.origin_problem(origin) is not None:
            return
        headers["Access-Control-Allow-Origin"] = origin
        headers["Access-Control-Expose-Headers"] = CORS_EXPOSED_HEADERS
        vary = headers.get("Vary")
        headers["Vary"] = f"{vary}, Origin" if vary else "Origin"

    return on_prepare


class WatchedConnection(asyncio.Protocol):
    """A data-port connection, wrapped around aiohttp's own protocol for two things aiohttp
    does not do cheaply.

    Its request headers must all arrive within ``seconds`` of it opening (0: no deadline), or it
    is answered 408 and closed: a slow client holds no connection long. Only the blank line
    that ends the header block is watched; later requests on a kept-alive connection are bounded
    by the server's keep-alive timeout, which aiohttp applies until their headers are complete.

    Its loss is reported at once to the request in progress through ``on_lost`` (set by
    ``relay.follow_disconnects``), which costs nothing per request, unlike running every
    handler in a task of its own for aiohttp's handler cancellation.
    """

    def __init__(self, inner: asyncio.Protocol, seconds: float) -> None:
        self._inner = inner
        self._seconds = seconds
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""
        self._transport: asyncio.Transport | None = None
        self.on_lost: Callable[[], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's does not subclass asyncio.Transport, so no isinstance check).
        self._transport = cast(asyncio.Transport, transport)
        if self._seconds > 0:
            self._timer = asyncio.get_running_loop().call_later(self._seconds, self._expire)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            seen = self._tail + data
            if b"\r\n\r\n" in seen:
                self._timer.cancel()
                self._timer = None
            else:
                self._tail = seen[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._inner.connection_lost(exc)
        if self.on_lost is not None:
            on_lost, self.on_lost = self.on_lost, None
            on_lost()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def _expire(self) -> None:
        self._timer = None
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            self._transport.close()
