"""A channel to an MCP server on the 2024-11-05 HTTP+SSE transport.

``GET <url>`` opens a Server-Sent Events stream whose first ``endpoint`` event names the
URL to POST messages to (relative to the SSE URL; an endpoint on another origin is refused,
so a server cannot redirect Wicket's upstream credentials elsewhere). Each message is POSTed
there and answered 202; everything the server says arrives on the SSE stream. One SSE
connection is one MCP session, so the bridge opens one per session.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urljoin

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from proxy.adapters import jsonrpc
from proxy.adapters.sse import SseScanner
from proxy.httpio import client_session, read_limited
from proxy.upstreams.channel import ChannelEnd, ChannelError, Incoming, encode

__all__ = ["LegacySseChannel", "LegacySseFactory", "SseParser", "display_url"]

log = logging.getLogger("wicket.sse")

_ACK_LIMIT = 64 * 1024  # a POST's 202 body is read (and dropped) up to this size


def display_url(url: str) -> str:
    """The URL without query or userinfo, for messages (a query may carry an API key)."""
    parsed = URL(url)
    return str(parsed.with_query(None).with_fragment(None).with_user(None))


def _origin(url: URL) -> tuple[str, str, int | None]:
    return url.scheme.lower(), (url.host or "").lower(), url.port


class SseParser:
    """``(event, data)`` per dispatched event, read by the relay's WHATWG splitter (``SseScanner``),
    so a legacy server's stream is parsed exactly as the streams Wicket relays; bounded."""

    def __init__(self, max_event_bytes: int) -> None:
        self._scanner = SseScanner(max_event_bytes)
        self._max = max_event_bytes

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        events = [(e.type, e.data.encode()) for e in self._scanner.feed(chunk) if e.data is not None]
        if self._scanner.problem is not None:
            raise ChannelError(f"the legacy SSE MCP server sent an event over {self._max} bytes")
        return events


class LegacySseFactory:
    """Opens one SSE connection per channel to one 2024-11-05 server."""

    description = "the legacy SSE MCP server"

    def __init__(
        self, url: str, *, connect_timeout: float, read_timeout: float, max_message_bytes: int = 64 * 1024 * 1024
    ) -> None:
        parsed = URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"the legacy SSE URL must be an http:// or https:// URL with a host, not {url!r}")
        self.url = url
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._limit = max_message_bytes
        self._http: aiohttp.ClientSession | None = None

    async def open(self, headers: Mapping[str, str]) -> LegacySseChannel:
        if self._http is None:
            # No pool limit: SSE connections are bounded by the bridge's channel cap.
            connector = aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True)
            self._http = client_session(connector=connector)
        return await LegacySseChannel.connect(
            self._http,
            self.url,
            headers=headers,
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout,
            max_message_bytes=self._limit,
        )

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


class LegacySseChannel:
    """One SSE connection (the server's half) plus POSTs to its endpoint (the client's half)."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        url: str,
        response: aiohttp.ClientResponse,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_message_bytes: int,
    ) -> None:
        self._http = http
        self._url = url
        self._where = display_url(url)
        self._response = response
        self._parser = SseParser(max_message_bytes)
        self._early: list[tuple[str, bytes]] = []
        self._endpoint: URL | None = None
        self._post_timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout or None, sock_read=read_timeout or None
        )
        self._ended: ChannelEnd | None = None
        self._lost: ChannelEnd | None = None
        self._closing = False

    @classmethod
    async def connect(
        cls,
        http: aiohttp.ClientSession,
        url: str,
        *,
        headers: Mapping[str, str],
        connect_timeout: float,
        read_timeout: float,
        max_message_bytes: int,
    ) -> LegacySseChannel:
        where = display_url(url)
        request_headers: CIMultiDict[str] = CIMultiDict(headers)
        request_headers["Accept"] = "text/event-stream"
        request_headers["Cache-Control"] = "no-cache"
        timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout or None, sock_read=None)
        try:
            response = await http.get(url, headers=request_headers, timeout=timeout, allow_redirects=False)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ChannelError(
                f"the legacy SSE MCP server at {where} is unreachable ({exc.__class__.__name__})"
            ) from None
        if response.status != 200 or response.content_type != "text/event-stream":
            response.close()
            what = f"HTTP {response.status}" if response.status != 200 else f"a {response.content_type} body"
            raise ChannelError(f"the legacy SSE MCP server at {where} answered its SSE GET with {what}")
        channel = cls(
            http,
            url,
            response,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_message_bytes=max_message_bytes,
        )
        try:
            async with asyncio.timeout(connect_timeout or None):
                await channel._await_endpoint()
        except TimeoutError:
            await channel.close()
            raise ChannelError(
                f"the legacy SSE MCP server at {where} sent no endpoint event within {connect_timeout:g} s"
            ) from None
        except ChannelError:
            await channel.close()
            raise
        except (aiohttp.ClientError, OSError) as exc:
            await channel.close()
            raise ChannelError(f"the legacy SSE stream from {where} failed ({exc.__class__.__name__})") from None
        return channel

    async def _await_endpoint(self) -> None:
        """Read until the ``endpoint`` event; keep whatever follows it in the same chunk."""
        while self._endpoint is None:
            chunk = await self._response.content.readany()
            if not chunk:
                raise ChannelError(f"the legacy SSE stream from {self._where} ended before its endpoint event")
            for event, data in self._parser.feed(chunk):
                if self._endpoint is None and event == "endpoint":
                    self._endpoint = self._resolve(data)
                elif self._endpoint is not None:
                    self._early.append((event, data))
                else:
                    log.warning("legacy SSE server %s: ignored a %r event before its endpoint", self._where, event)

    def _resolve(self, data: bytes) -> URL:
        text = data.decode("utf-8", errors="replace").strip()
        endpoint = URL(urljoin(self._url, text))
        if _origin(endpoint) != _origin(URL(self._url)):
            raise ChannelError(
                f"refused: the legacy SSE MCP server at {self._where} named a message endpoint on another origin "
                f"({display_url(str(endpoint))})"
            )
        return endpoint

    @property
    def alive(self) -> bool:
        return self._ended is None and self._lost is None and not self._closing

    @property
    def ended(self) -> ChannelEnd | None:
        return self._ended

    async def send(self, message: dict[str, Any] | bytes, *, headers: Mapping[str, str] | None = None) -> None:
        if not self.alive or self._endpoint is None:
            raise ChannelError(
                self._ended.message if self._ended else f"the legacy SSE stream from {self._where} ended"
            )
        request_headers: CIMultiDict[str] = CIMultiDict(headers or {})
        request_headers["Content-Type"] = "application/json"
        try:
            async with self._http.post(
                self._endpoint,
                data=encode(message),
                headers=request_headers,
                timeout=self._post_timeout,
                allow_redirects=False,
            ) as response:
                await read_limited(response.content, _ACK_LIMIT)
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ChannelError(
                f"the legacy SSE MCP server at {self._where} did not take the message ({exc.__class__.__name__})"
            ) from None
        if 200 <= status < 300:
            return
        if status in (404, 410):
            # The server no longer knows this connection: the MCP session is over.
            self._lost = ChannelEnd("crashed", f"the legacy SSE MCP server at {self._where} lost the session")
            self._response.close()
        raise ChannelError(f"the legacy SSE MCP server at {self._where} refused the message with HTTP {status}")

    def __aiter__(self) -> AsyncIterator[Incoming]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Incoming]:
        end = ChannelEnd("exited", f"the legacy SSE stream from {self._where} ended")
        try:
            early, self._early = self._early, []
            for event, data in early:
                incoming = self._message(event, data)
                if incoming is not None:
                    yield incoming
            while True:
                chunk = await self._response.content.readany()
                if not chunk:
                    break
                for event, data in self._parser.feed(chunk):
                    incoming = self._message(event, data)
                    if incoming is not None:
                        yield incoming
        except ChannelError as exc:
            end = ChannelEnd("crashed", str(exc))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            end = ChannelEnd("crashed", f"the legacy SSE stream from {self._where} failed ({exc.__class__.__name__})")
        if self._closing:
            end = ChannelEnd("closed", "the MCP session was closed")
        elif self._lost is not None:
            end = self._lost
        self._ended = end
        self._response.close()

    def _message(self, event: str, data: bytes) -> Incoming | None:
        if event != "message":
            if event != "endpoint":
                log.debug("legacy SSE server %s: ignored a %r event", self._where, event)
            return None
        try:
            message = jsonrpc.loads(data)
        except jsonrpc.NestingTooDeep:
            too_deep = f"a message nested deeper than {jsonrpc.MAX_DEPTH} levels"
            raise ChannelError(f"the legacy SSE MCP server at {self._where} sent {too_deep}") from None
        except ValueError:
            log.warning("legacy SSE server %s: ignored a message that is not JSON", self._where)
            return None
        if not isinstance(message, dict):
            log.warning("legacy SSE server %s: ignored a message that is not one JSON-RPC object", self._where)
            return None
        return Incoming(message, data)

    async def close(self) -> None:
        self._closing = True
        self._response.close()
