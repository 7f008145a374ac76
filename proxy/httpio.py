"""Outbound HTTP clients and bounded body reads, shared by every edge that talks aiohttp."""

from __future__ import annotations

from typing import Any

from aiohttp import ClientSession, DummyCookieJar, StreamReader


def client_session(**options: Any) -> ClientSession:
    """An outbound HTTP client that keeps no cookies and ignores proxy variables.

    Wicket talks to each upstream for many agents over one pool. A cookie jar would hand a cookie
    one answer set (a load balancer's sticky-session cookie, an application session) to every
    later request, whichever agent it is for; the agent's own client receives the ``Set-Cookie``
    and sends it back itself if it wants to. The same holds for identity providers, webhooks and
    guardians: Wicket is a service, not a browser.
    """
    return ClientSession(cookie_jar=DummyCookieJar(), trust_env=False, **options)


async def read_limited(stream: StreamReader, limit: int) -> bytes | None:
    """The whole body, or ``None`` as soon as it passes ``limit`` bytes.

    ``StreamReader.read(n)`` returns whatever chunk has arrived, not ``n`` bytes, so a body
    must be gathered chunk by chunk; stopping at the limit keeps a hostile peer from making
    Wicket buffer more than it allows.
    """
    if stream.is_eof():
        # Everything has arrived (a small body comes with its headers): take it without the iterator.
        data = stream.read_nowait()
        return None if len(data) > limit else data
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
