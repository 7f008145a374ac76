"""Knowing a tool before its first call: Wicket lists the upstream's tools itself.

A call's effect depends on the tool's annotations (``destructiveHint``), so they must not
depend on whether this process happened to relay a ``tools/list``: after a restart, on a new
replica, or for a client that never lists. The pins in the shared store hold every definition
any replica has seen (``ToolPins.facts``); for a name with no pin, this module lists the
upstream's tools with Wicket's own credential, pins what it finds exactly as a relayed list
would (poisoning scan included), and a name the upstream does not list is refused. It lists
inside the caller's own MCP session when the call came in one (a read of protocol
housekeeping, with the credential Wicket derives for that session; no extra server process
behind a stdio bridge), else in a short session of its own (``initialize`` … ``DELETE``, with
a credential whose subject is Wicket), or statelessly for a 2026-07-28-only server.

A list runs at most once per ``relist_seconds`` per process (one at a time), so clients
inventing names cannot make Wicket hammer the upstream; a failure fails the call closed.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from proxy import __version__
from proxy.adapters import jsonrpc
from proxy.adapters.relay import Refusal, redirect_problem
from proxy.adapters.sse import SseScanner
from proxy.core.sessions import Session
from proxy.core.toolpins import ToolFacts, ToolPins
from proxy.credentials import CredentialBroker, CredentialError
from proxy.httpio import read_limited
from proxy.telemetry import Metrics

log = logging.getLogger(__name__)

LIST_VERSION = "2025-11-25"
"""The session generation Wicket lists with (every server Wicket fronts speaks it, stdio included)."""
MODERN_VERSION = "2026-07-28"
MAX_PAGES = 100
"""``nextCursor`` pages followed; an upstream that pages further fails the list (never a partial one)."""
AGENT_ID = "wicket"
"""Who the upstream sees asking (credential ``sub``) and the audit records name."""


class ListingFailed(Exception):
    """The upstream's tools could not be listed; the reason is safe to show the client."""


class ToolCatalog:
    """The tools of one upstream as the call path needs them; see the module docstring."""

    def __init__(
        self,
        *,
        upstream: str,
        client: aiohttp.ClientSession,
        credentials: CredentialBroker,
        toolpins: ToolPins,
        metrics: Metrics,
        timeout: aiohttp.ClientTimeout,
        max_bytes: int,
        relist_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._upstream = upstream
        self._client = client
        self._credentials = credentials
        self._toolpins = toolpins
        self._metrics = metrics
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._relist = relist_seconds
        self._clock = clock
        self._lock = asyncio.Lock()
        self._listed_at: float | None = None

    async def facts(
        self,
        name: str,
        *,
        session: Session,
        inbound_token: str | None,
        mcp_headers: Callable[[], dict[str, str]],
    ) -> ToolFacts | None:
        """The tool's pinned facts; None when the upstream does not list it. Raises ``Refusal``
        (502) when the upstream's tools cannot be listed, so an unknown tool never runs unchecked.
        ``mcp_headers`` gives the client's MCP session headers, only asked for when Wicket lists."""
        found = await self._toolpins.facts(self._upstream, name)
        if found is not None:
            return found
        async with self._lock:  # one list at a time; callers queued behind it see its pins
            recent = self._listed_at is not None and 0 <= self._clock() - self._listed_at < self._relist
            if not recent:
                try:
                    headers = mcp_headers()
                    if headers.get("Mcp-Session-Id"):
                        tools = await self._pages(session, inbound_token, headers, modern=False)
                    else:
                        tools = await self._list(inbound_token)
                    await self._toolpins.review(self._upstream, tools, agent_id=AGENT_ID, session_id=AGENT_ID)
                except ListingFailed as exc:
                    self._metrics.tool_catalog_lists.labels("error").inc()
                    log.warning("could not list the tools of %s: %s", self._upstream, exc)
                    message = (
                        f"Wicket has no definition of tool '{name[:128]}' and could not list the upstream's tools "
                        f"({exc}); nothing was forwarded."
                    )
                    raise Refusal(502, jsonrpc.UPSTREAM_UNAVAILABLE, message, reason="tool_catalog") from None
                self._metrics.tool_catalog_lists.labels("ok").inc()
                self._listed_at = self._clock()
        return await self._toolpins.facts(self._upstream, name)

    # -- one list: initialize, tools/list page by page, DELETE ------------------------------

    async def _list(self, inbound_token: str | None) -> list[dict[str, Any]]:
        session = _own_session()
        init = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": LIST_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "wicket-tool-catalog", "version": __version__},
            },
        }
        answer, sid = await self._call(init, session, inbound_token, {})
        if "result" not in answer:
            # A server of the stateless generation only: list without a session.
            return await self._pages(session, inbound_token, {"MCP-Protocol-Version": MODERN_VERSION}, modern=True)
        result = answer["result"]
        version = result.get("protocolVersion") if isinstance(result, dict) else None
        headers = {"MCP-Protocol-Version": version if isinstance(version, str) else LIST_VERSION}
        if sid:
            headers["Mcp-Session-Id"] = sid
        try:
            await self._call({"jsonrpc": "2.0", "method": "notifications/initialized"}, session, inbound_token, headers)
            return await self._pages(session, inbound_token, headers, modern=False)
        finally:
            if sid:
                await self._end(session, inbound_token, headers)

    async def _pages(
        self, session: Session, inbound_token: str | None, headers: dict[str, str], *, modern: bool
    ) -> list[dict[str, Any]]:
        tools: list[dict[str, Any]] = []
        cursor: str | None = None
        run = secrets.token_hex(6)
        for page in range(MAX_PAGES):
            params: dict[str, Any] = {} if cursor is None else {"cursor": cursor}
            extra = dict(headers)
            if modern:
                params["_meta"] = {
                    "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
                    "io.modelcontextprotocol/clientCapabilities": {},
                    "io.modelcontextprotocol/clientInfo": {"name": "wicket-tool-catalog", "version": __version__},
                }
                extra["Mcp-Method"] = "tools/list"
            # In the caller's own MCP session the id must never equal one of the client's in-flight ids.
            message = {"jsonrpc": "2.0", "id": f"wicket-catalog-{run}-{page}", "method": "tools/list", "params": params}
            answer, _ = await self._call(message, session, inbound_token, extra)
            result = answer.get("result")
            if not isinstance(result, dict) or not isinstance(result.get("tools"), list):
                error = answer.get("error")
                detail = error.get("message") if isinstance(error, dict) else "no tools in the answer"
                raise ListingFailed(f"tools/list failed: {str(detail)[:200]}")
            tools.extend(t for t in result["tools"] if isinstance(t, dict))
            cursor = result.get("nextCursor")
            if not isinstance(cursor, str) or not cursor:
                return tools
        raise ListingFailed(f"the upstream lists its tools in more than {MAX_PAGES} pages")

    async def _call(
        self, message: dict[str, Any], session: Session, inbound_token: str | None, headers: dict[str, str]
    ) -> tuple[dict[str, Any], str | None]:
        """POST one message; (the answer to it, or {} for a notification; the Mcp-Session-Id header)."""
        sent = {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "Accept-Encoding": "identity",
            **headers,
        }
        method = str(message.get("method"))
        try:
            credential = await self._credentials.issue_for_request(
                session, upstream=self._upstream, method=method, inbound_token=inbound_token
            )
        except CredentialError as exc:
            raise ListingFailed(f"could not obtain an upstream credential: {exc.reason}") from None
        sent.update(credential.headers)
        try:
            async with self._client.post(
                self._upstream,
                data=jsonrpc.dumps(message),
                headers=sent,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                if 300 <= response.status < 400:
                    raise ListingFailed(redirect_problem(response))
                sid = response.headers.get("Mcp-Session-Id")
                if "id" not in message:
                    await response.read()  # whatever a server answers a notification, the list decides
                    return {}, sid
                answer = await self._answer(response, message["id"])
                if answer is None:
                    raise ListingFailed(f"the upstream answered {method} with HTTP {response.status} and no JSON-RPC")
                return answer, sid
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ListingFailed(f"the upstream is unreachable ({exc.__class__.__name__})") from None

    async def _answer(self, response: aiohttp.ClientResponse, request_id: Any) -> dict[str, Any] | None:
        """The JSON-RPC answer with ``request_id``, from a JSON body or an SSE stream (read to it, bounded)."""
        if response.content_type == "text/event-stream":
            scanner = SseScanner(self._max_bytes)
            async for chunk in response.content.iter_any():
                for event in scanner.feed(chunk):
                    found = _matching(event.data, request_id)
                    if found is not None:
                        return found
                if scanner.problem is not None:
                    raise ListingFailed(f"an event of the tool list exceeds {self._max_bytes} bytes")
            return None
        body = await read_limited(response.content, self._max_bytes)
        if body is None:
            raise ListingFailed(f"the tool list exceeds {self._max_bytes} bytes")
        return _matching(body, request_id)

    async def _end(self, session: Session, inbound_token: str | None, headers: dict[str, str]) -> None:
        """DELETE the listing's MCP session (a stdio upstream ends its child); best effort."""
        try:
            credential = await self._credentials.issue_for_request(
                session, upstream=self._upstream, method="DELETE", inbound_token=inbound_token
            )
            async with self._client.delete(
                self._upstream, headers={**headers, **credential.headers}, timeout=self._timeout
            ) as response:
                await response.read()
        except (CredentialError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.info("could not end the tool-listing session at %s: %s", self._upstream, exc.__class__.__name__)


def _own_session() -> Session:
    """Wicket's own short session: the subject of the credentials its listing carries."""
    now = time.time()
    return Session(AGENT_ID, AGENT_ID, ("tools/list",), "read-only", now, now + 300, origin="wicket")


def _matching(text: str | bytes | None, request_id: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        message = jsonrpc.loads(text)
    except jsonrpc.NestingTooDeep:
        raise ListingFailed(f"the tool list nests deeper than {jsonrpc.MAX_DEPTH} levels") from None
    except ValueError:
        return None
    if isinstance(message, dict) and message.get("id") == request_id and "method" not in message:
        return message
    return None
