"""The upstream bridge: MCP Streamable HTTP towards the proxy, one channel per MCP session.

The proxy (``adapters/mcp.py``) only speaks Streamable HTTP to its upstream. For a stdio
server or a 2024-11-05 HTTP+SSE server, ``app.py`` starts this bridge and points the
proxy at it, so every request still goes through the checker first. The bridge listens on
a Unix socket in a fresh private directory (mode 0700) and answers only its own process
(``SO_PEERCRED``): an agent sharing localhost, or even a volume and a uid, with the sidecar
cannot reach it, so there is no way to the server around Wicket.

Sessions (the initialize generation). An ``initialize`` POST without ``Mcp-Session-Id``
opens a new channel (a new child process, a new SSE connection) and gets a fresh random
session id: concurrent agents never share a server process. Requests carrying that id go
to that channel; an unknown id gets 404 (JSON-RPC -32001) so the client re-initializes;
DELETE closes the channel. Each request POST is answered with an SSE stream that ends with
the response of the same id. Server-to-client requests keep the server's ids; the client's
response (POSTed by the agent, or by Wicket itself on the agent's behalf) goes back to the
channel and is answered 202, as are notifications.

Routing rule for what the server sends that is not a response: a progress notification
goes to the request that asked for it (``_meta.progressToken``); list-changed and
resource-updated notifications go to the GET stream when one is open; everything else
goes to the most recently opened pending request of the session (a tool asking for
sampling or elicitation is almost always the call just made), else to the GET stream,
else it waits (bounded) for the session's next GET stream.

Stateless requests (2026-07-28: ``params._meta["io.modelcontextprotocol/protocolVersion"]``,
no session id). The mcp SDK serves stdio connections in one era, fixed by the first
request: an enveloped request locks the process to 2026-07-28, where each request carries
its own envelope; ``initialize`` locks it to the session generation. So stateless requests
never share a child with a session. Nor with each other: without a session nothing at the
bridge says which agent a request belongs to, and a shared pool would let agents share a
process's memory, the very thing one child per session prevents. Each stateless request
therefore gets its own channel, closed when the response ends. The one exception: a result
with ``resultType: input_required`` carries a ``requestState`` that SDK servers seal with
a per-process key, so that channel is kept (up to ``CONTINUATION_SECONDS``, or the idle
timeout if shorter) and the retry carrying the same ``requestState`` is sent back to it.
The price is one process start per stateless request. A server that predates 2026-07-28
answers such requests with its own error (clients in ``auto`` mode then fall back to
``initialize``) or dies; the error then says to connect in session mode.

A channel that dies fails every pending request with JSON-RPC -32051 naming the cause
("the stdio MCP server exited with code 3"), and its session is dropped: the next request
gets 404 and the client's new session gets a new child. Live channels are capped
(``initialize`` beyond the cap gets 503) and idle sessions (no request and no message for
``idle_seconds``; an open but silent GET stream is not activity) are closed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import shutil
import socket
import struct
import tempfile
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from jsonrpcserver.sentinels import NODATA

from proxy.adapters import jsonrpc
from proxy.adapters.http_guard import forward_headers
from proxy.httpio import read_limited
from proxy.telemetry import Metrics
from proxy.upstreams.channel import Channel, ChannelError, ChannelFactory, Incoming

__all__ = ["CONTINUATION_SECONDS", "UpstreamBridge"]

log = logging.getLogger("wicket.bridge")

SESSION_HEADER = "Mcp-Session-Id"
PROTOCOL_VERSION_META = "io.modelcontextprotocol/protocolVersion"
CONTINUATION_SECONDS = 600.0
"""How long a stateless channel waits for the retry of an ``input_required`` result (the
SDK's default ``requestState`` lifetime)."""
_SINK_LIMIT = 64  # messages queued for one response stream before the channel is paused
_BACKLOG = 64  # messages kept for a session's next GET stream
_SERVER_REQUESTS = 1024  # outstanding server-to-client request ids remembered per session
_ENDED_MEMORY = 1024  # ended session ids remembered to explain a 404
_UNRELATED = frozenset(
    {
        "notifications/tools/list_changed",
        "notifications/prompts/list_changed",
        "notifications/resources/list_changed",
        "notifications/resources/updated",
    }
)
# Headers of the hop between the proxy and the bridge; the rest (the upstream credential
# among them) is handed to channels that speak HTTP.
_HOP_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "accept",
        "accept-encoding",
        "mcp-session-id",
        "mcp-protocol-version",
        "mcp-method",
        "mcp-name",
        "last-event-id",
    }
)
_LINES = re.compile(rb"\r\n|\r|\n")
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux, 104 on macOS


@dataclass(frozen=True, slots=True)
class _Message:
    raw: bytes
    final: bool = False
    error: bool = False


@dataclass(frozen=True, slots=True)
class _End:
    message: str


class _Sink:
    """The queue behind one open response stream: bounded, so a slow reader pauses the channel."""

    def __init__(self) -> None:
        self._items: deque[_Message] = deque()
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._end: str | None = None
        self.closed = False

    async def put(self, item: _Message) -> None:
        while len(self._items) >= _SINK_LIMIT and not self.closed:
            self._space.clear()
            await self._space.wait()
        if not self.closed:
            self._items.append(item)
            self._ready.set()

    def finish(self, message: str) -> None:
        """End the stream after what is queued; never blocks."""
        if self._end is None:
            self._end = message
        self._ready.set()

    async def get(self) -> _Message | _End:
        while not self._items and self._end is None:
            self._ready.clear()
            await self._ready.wait()
        if self._items:
            item = self._items.popleft()
            self._space.set()
            return item
        return _End(self._end or "")

    def close(self) -> None:
        """The reader is gone: drop what is queued and release a producer waiting for space."""
        self.closed = True
        self._items.clear()
        self._space.set()


class _Session:
    """One channel and the streams currently open on it."""

    def __init__(self, sid: str | None, channel: Channel) -> None:
        self.sid = sid
        self.channel = channel
        self.stateless = sid is None
        self.pending: dict[str, _Sink] = {}  # request id -> its stream, in the order they were opened
        self.progress: dict[str, _Sink] = {}  # progress token -> the stream of the request that set it
        self.stream: _Sink | None = None  # the standalone GET stream
        self.backlog: deque[bytes] = deque(maxlen=_BACKLOG)
        self.server_requests: OrderedDict[str, None] = OrderedDict()
        self.states: set[str] = set()  # requestState values this (stateless) channel minted
        self.last_active = asyncio.get_running_loop().time()
        self.close_reason: str | None = None
        self.close_message: str | None = None
        self.ended = False
        self.pump: asyncio.Task[None] | None = None

    def touch(self) -> None:
        self.last_active = asyncio.get_running_loop().time()

    @property
    def label(self) -> str:
        return f"session {self.sid[:8]}…" if self.sid else "stateless request"


class _Refused(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


class UpstreamBridge:
    """A Streamable HTTP server on a private Unix socket in front of one ``ChannelFactory``."""

    def __init__(
        self,
        factory: ChannelFactory,
        *,
        max_channels: int = 32,
        idle_seconds: float = 1800.0,
        max_body_bytes: int = 4 * 1024 * 1024,
        metrics: Metrics | None = None,
    ) -> None:
        if max_channels < 1:
            raise ValueError("the upstream channel cap must be at least 1")
        if idle_seconds <= 0:
            raise ValueError("the upstream idle timeout must be positive")
        self._factory = factory
        self._max = max_channels
        self._idle = idle_seconds
        self._max_body = max_body_bytes
        self._metrics = metrics
        self._sessions: dict[str, _Session] = {}
        self._all: set[_Session] = set()
        self._continuations: dict[str, _Session] = {}
        self._ended: OrderedDict[str, str] = OrderedDict()
        self._live = 0  # channels open or being opened: what the cap counts
        self._tasks: set[asyncio.Future[Any]] = set()
        self._runner: web.AppRunner | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._dir: str | None = None
        self._stopping = False
        self.socket_path = ""

    @property
    def live_channels(self) -> int:
        return self._live

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> str:
        """Listen on a Unix socket in a new 0700 directory; returns the socket's path."""
        self._dir = tempfile.mkdtemp(prefix="wicket-upstream-")
        os.chmod(self._dir, 0o700)
        path = os.path.join(self._dir, "mcp.sock")
        if len(os.fsencode(path)) > _SOCKET_PATH_MAX:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise OSError(f"the upstream bridge socket path {path!r} is too long; set TMPDIR to a shorter directory")
        app = web.Application(client_max_size=self._max_body + 1)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a stream whose reader left ends at once, freeing its slot.
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, handler_cancellation=True, shutdown_timeout=10.0
        )
        await self._runner.setup()
        await web.UnixSite(self._runner, path).start()
        os.chmod(path, 0o600)
        self.socket_path = path
        self._reaper = asyncio.create_task(self._reap())
        return path

    async def stop(self) -> None:
        """Close every channel (ending every child) and the socket."""
        self._stopping = True
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
            self._reaper = None
        await self._close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._close_all()  # anything opened while the runner was draining
        await self._factory.aclose()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    async def _close_all(self) -> None:
        for session in list(self._all):
            self._close(session, "closed", "Wicket is shutting down")
        await asyncio.gather(*(s.pump for s in list(self._all) if s.pump is not None), return_exceptions=True)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- HTTP ---------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if not _from_this_process(request):
            log.warning("upstream bridge: refused a connection from another process")
            return _error(403, jsonrpc.INVALID_REQUEST, "Forbidden: only Wicket itself may use its upstream bridge.")
        try:
            if request.method == "POST":
                return await self._post(request)
            if request.method == "GET":
                return await self._get(request)
            if request.method == "DELETE":
                return self._delete(request)
            return _error(405, jsonrpc.INVALID_REQUEST, f"Method {request.method} is not allowed.")
        except _Refused as refused:
            return refused.response

    async def _post(self, request: web.Request) -> web.StreamResponse:
        body = await read_limited(request.content, self._max_body)
        if body is None:
            return _error(413, jsonrpc.INVALID_REQUEST, f"Request body exceeds {self._max_body} bytes.")
        try:
            message = json.loads(body)
        except ValueError:
            return _error(400, jsonrpc.PARSE_ERROR, "Parse error: the body is not valid JSON.")
        if not isinstance(message, dict):
            return _error(400, jsonrpc.INVALID_REQUEST, "Invalid Request: expected one JSON-RPC object.")
        method = message.get("method")
        is_request = isinstance(method, str) and "id" in message
        headers = forward_headers(request.headers, _HOP_HEADERS)
        sid = request.headers.get(SESSION_HEADER)
        if sid:
            session = self._session(sid)
            session.touch()
            if is_request:
                return await self._exchange(request, session, message, body, headers)
            if method is None:
                answered = _key(message.get("id"))
                if answered not in session.server_requests:
                    log.warning("%s: dropped a response to no outstanding server request", session.label)
                    return web.Response(status=202)
                del session.server_requests[answered]
            try:
                await session.channel.send(body, headers=headers)
            except ChannelError as exc:
                return _error(502, jsonrpc.UPSTREAM_UNAVAILABLE, _sentence(str(exc)))
            return web.Response(status=202)
        if not is_request:
            if method is None:
                return _error(
                    400, jsonrpc.INVALID_REQUEST, "Bad Request: a response must carry the Mcp-Session-Id it answers."
                )
            return web.Response(status=202)  # a sessionless notification concerns no channel
        if method == "initialize":
            session = await self._open(headers, stateless=False)
            return await self._exchange(request, session, message, body, headers, opening=True)
        if _is_modern(message):
            params = message.get("params")
            state = params.get("requestState") if isinstance(params, dict) else None
            continued = self._continuations.pop(state, None) if isinstance(state, str) else None
            if continued is not None and not continued.ended:
                continued.states.discard(str(state))
                session = continued  # the child that sealed this requestState
            else:
                session = await self._open(headers, stateless=True)
            return await self._exchange(request, session, message, body, headers)
        return _error(
            400,
            jsonrpc.INVALID_REQUEST,
            "Bad Request: Mcp-Session-Id header is required (open a session with initialize, "
            "or send 2026-07-28 requests with params._meta).",
            message.get("id"),
        )

    async def _get(self, request: web.Request) -> web.StreamResponse:
        sid = request.headers.get(SESSION_HEADER)
        if not sid:
            return _error(400, jsonrpc.INVALID_REQUEST, "Bad Request: GET needs an Mcp-Session-Id header.")
        session = self._session(sid)
        if session.stream is not None:
            return _error(
                409, jsonrpc.INVALID_REQUEST, "Conflict: this MCP session already has its one standalone SSE stream."
            )
        sink = session.stream = _Sink()
        backlog = list(session.backlog)
        session.backlog.clear()
        session.touch()
        response = web.StreamResponse(status=200, headers=_stream_headers(session))
        try:
            await response.prepare(request)
            for raw in backlog:
                await response.write(_sse(raw))
            while not isinstance(item := await sink.get(), _End):
                await response.write(_sse(item.raw))
            await response.write_eof()
        except ConnectionError:
            pass  # the reader left
        finally:
            if session.stream is sink:
                session.stream = None
            sink.close()
        return response

    def _delete(self, request: web.Request) -> web.Response:
        sid = request.headers.get(SESSION_HEADER)
        if not sid:
            return _error(400, jsonrpc.INVALID_REQUEST, "Bad Request: DELETE needs an Mcp-Session-Id header.")
        self._close(self._session(sid), "closed", "the MCP session was deleted")
        return web.Response(status=200)

    def _session(self, sid: str) -> _Session:
        session = self._sessions.get(sid)
        if session is None or session.ended:
            why = self._ended.get(sid)
            text = f"Session not found: {why}. Start a new MCP session." if why else "Session not found."
            raise _Refused(_error(404, jsonrpc.SESSION_NOT_FOUND, text))
        return session

    # -- one request, one response stream -----------------------------------------------

    async def _exchange(
        self,
        request: web.Request,
        session: _Session,
        message: dict[str, Any],
        body: bytes,
        headers: Mapping[str, str],
        *,
        opening: bool = False,
    ) -> web.StreamResponse:
        """Hand one request to the channel and stream back what it brings, up to its response.

        ``opening``: the ``initialize`` that created this session; if its answer is an error, or
        never reaches the client, nobody holds the session id, so the session is closed.
        """
        request_id = message.get("id")
        key = _key(request_id)
        if session.ended:
            return _error(502, jsonrpc.UPSTREAM_UNAVAILABLE, "The upstream MCP session has ended.", request_id)
        if key in session.pending:
            return _error(
                409, jsonrpc.INVALID_REQUEST, f"A request with id {key} is already pending in this session.", request_id
            )
        answered = False
        sink = session.pending[key] = _Sink()
        token = _progress_key(message)
        if token is not None:
            session.progress[token] = sink
        response = web.StreamResponse(status=200, headers=_stream_headers(session))
        try:
            try:
                await session.channel.send(body, headers=headers)
            except ChannelError as exc:
                return _error(502, jsonrpc.UPSTREAM_UNAVAILABLE, _sentence(str(exc)), request_id)
            await response.prepare(request)
            while True:
                item = await sink.get()
                if isinstance(item, _End):
                    error = jsonrpc.error_body(
                        jsonrpc.UPSTREAM_UNAVAILABLE, _sentence(item.message), NODATA, request_id
                    )
                    await response.write(_sse(error))
                    break
                await response.write(_sse(item.raw))
                if item.final:
                    answered = not (opening and item.error)
                    break
            await response.write_eof()
            return response
        except ConnectionError:
            return response  # the reader left; the response is dropped when it comes
        finally:
            sink.close()
            if session.pending.get(key) is sink:
                del session.pending[key]
            if token is not None and session.progress.get(token) is sink:
                del session.progress[token]
            session.touch()
            if opening and not answered:
                # Nobody holds this session id (the client never got it, or initialize failed).
                self._close(session, "closed", "the MCP session was never established")
            elif session.stateless and not session.states:
                self._close(session, "closed", "the request ended")

    # -- channels -------------------------------------------------------------------------

    async def _open(self, headers: Mapping[str, str], *, stateless: bool) -> _Session:
        if self._stopping:
            raise _Refused(_error(503, jsonrpc.UPSTREAM_UNAVAILABLE, "Wicket is shutting down."))
        if self._live >= self._max:
            log.warning("upstream channel cap reached (%d); refused a new MCP session", self._max)
            raise _Refused(
                _error(
                    503,
                    jsonrpc.UPSTREAM_UNAVAILABLE,
                    f"Wicket's limit of {self._max} concurrent upstream MCP sessions is reached "
                    f"(each runs its own {self._factory.description.removeprefix('the ')} connection). "
                    "Close an idle session or retry later.",
                )
            )
        self._live += 1
        try:
            channel = await self._factory.open(headers)
        except ChannelError as exc:
            self._live -= 1
            log.error("upstream: %s", exc)
            if self._metrics is not None:
                self._metrics.upstream_child_exits.labels("start_failed").inc()
            raise _Refused(_error(502, jsonrpc.UPSTREAM_UNAVAILABLE, _sentence(str(exc)))) from None
        except BaseException:
            self._live -= 1
            raise
        session = _Session(None if stateless else secrets.token_urlsafe(32), channel)
        self._all.add(session)
        if session.sid is not None:
            self._sessions[session.sid] = session
        if self._metrics is not None:
            self._metrics.upstream_children.inc()
        session.pump = asyncio.create_task(self._pump(session))
        if self._stopping:
            self._close(session, "closed", "Wicket is shutting down")
            raise _Refused(_error(503, jsonrpc.UPSTREAM_UNAVAILABLE, "Wicket is shutting down."))
        return session

    def _close(self, session: _Session, reason: str, message: str) -> None:
        """Wicket ends this channel; the pump then fails what is pending and counts the exit."""
        if session.close_reason is None and not session.ended:
            session.close_reason, session.close_message = reason, message
        self._forget(session)
        task = asyncio.ensure_future(session.channel.close())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forget(self, session: _Session) -> None:
        if session.sid is not None and self._sessions.get(session.sid) is session:
            del self._sessions[session.sid]
        for state in session.states:
            if self._continuations.get(state) is session:
                del self._continuations[state]
        session.states.clear()

    async def _pump(self, session: _Session) -> None:
        """Route everything the channel says until it ends, then clean up after it."""
        try:
            async for incoming in session.channel:
                session.touch()
                await self._route(session, incoming)
        except Exception:
            log.exception("%s: the upstream channel failed", session.label)
        finally:
            await self._finish(session)

    async def _route(self, session: _Session, incoming: Incoming) -> None:
        message = incoming.message
        method = message.get("method")
        if not isinstance(method, str):
            sink = session.pending.pop(_key(message.get("id")), None)
            if sink is None:
                log.debug("%s: dropped a response nobody waits for", session.label)
                return
            if session.stateless:
                self._note_continuation(session, message)
            await sink.put(_Message(incoming.raw, final=True, error="error" in message))
            return
        if "id" in message:
            session.server_requests[_key(message["id"])] = None
            while len(session.server_requests) > _SERVER_REQUESTS:
                session.server_requests.popitem(last=False)
        target = _target(session, method, message)
        if target is None:
            session.backlog.append(incoming.raw)
        else:
            await target.put(_Message(incoming.raw))

    def _note_continuation(self, session: _Session, message: dict[str, Any]) -> None:
        result = message.get("result")
        if not isinstance(result, dict) or result.get("resultType") != "input_required":
            return
        state = result.get("requestState")
        if isinstance(state, str) and len(self._continuations) < self._max * 8:
            self._continuations[state] = session
            session.states.add(state)

    async def _finish(self, session: _Session) -> None:
        session.ended = True
        self._forget(session)
        self._all.discard(session)
        end = session.channel.ended
        reason = session.close_reason or (end.reason if end else "crashed")
        text = session.close_message or (end.message if end else f"{self._factory.description} stopped")
        if session.close_reason is None and session.stateless and session.pending:
            text = (
                f"{text} before answering; if {self._factory.description} predates MCP 2026-07-28 it cannot "
                "serve stateless requests: connect in the session-based (legacy) mode"
            )
        for sink in list(session.pending.values()):
            sink.finish(text)
        if session.stream is not None:
            session.stream.finish(text)
        if session.close_reason is None:
            log.warning("upstream %s ended: %s", session.label, text)
            if session.sid is not None:
                self._ended[session.sid] = text
                while len(self._ended) > _ENDED_MEMORY:
                    self._ended.popitem(last=False)
        else:
            log.debug("upstream %s closed: %s", session.label, text)
        try:
            await session.channel.close()
        finally:
            self._live -= 1
            if self._metrics is not None:
                self._metrics.upstream_children.dec()
                self._metrics.upstream_child_exits.labels(reason).inc()

    async def _reap(self) -> None:
        """Close idle sessions, and stateless channels whose continuation never came."""
        period = max(0.05, min(self._idle / 4, 30.0))
        linger = min(self._idle, CONTINUATION_SECONDS)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for session in list(self._all):
                if session.ended or session.close_reason is not None or session.pending:
                    continue
                if session.stateless and now - session.last_active >= linger:
                    self._close(session, "idle", "the request's continuation never came")
                elif not session.stateless and now - session.last_active >= self._idle:
                    log.info("upstream %s idle for %g s; closing it", session.label, self._idle)
                    self._close(session, "idle", f"the MCP session was closed after {self._idle:g} s idle")


def _from_this_process(request: web.Request) -> bool:
    """Whether the peer on the Unix socket is this very process (Linux ``SO_PEERCRED``).

    The 0700 directory keeps other users out; this also keeps out processes of the same user,
    e.g. an agent container that shares the volume holding the socket. Elsewhere the
    directory's permissions are the guard.
    """
    peercred = getattr(socket, "SO_PEERCRED", None)
    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    if peercred is None or sock is None:
        return peercred is None
    pid, _uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, peercred, struct.calcsize("3i")))
    return bool(pid == os.getpid())


def _target(session: _Session, method: str, message: dict[str, Any]) -> _Sink | None:
    """Which open stream carries a server request or notification (module docstring)."""
    if method == "notifications/progress":
        params = message.get("params")
        token = _key(params.get("progressToken")) if isinstance(params, dict) else None
        sink = session.progress.get(token) if token is not None else None
        if sink is not None and not sink.closed:
            return sink
    if method in _UNRELATED and session.stream is not None:
        return session.stream
    if session.pending:
        return next(reversed(session.pending.values()))
    return session.stream


def _key(value: Any) -> str:
    """A JSON-RPC id (or progress token) as a dict key that keeps ``1`` and ``"1"`` apart."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _progress_key(message: dict[str, Any]) -> str | None:
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    if isinstance(meta, dict) and "progressToken" in meta:
        return _key(meta["progressToken"])
    return None


def _is_modern(message: dict[str, Any]) -> bool:
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return isinstance(meta, dict) and PROTOCOL_VERSION_META in meta


def _sse(raw: bytes) -> bytes:
    """One SSE ``message`` event; line breaks in the JSON become separate data lines."""
    return b"event: message\n" + b"".join(b"data: " + line + b"\n" for line in _LINES.split(raw)) + b"\n"


def _stream_headers(session: _Session) -> dict[str, str]:
    headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    if session.sid is not None:
        headers[SESSION_HEADER] = session.sid
    return headers


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _error(status: int, code: int, message: str, request_id: Any = None) -> web.Response:
    return web.Response(
        status=status, body=jsonrpc.error_body(code, message, NODATA, request_id), content_type="application/json"
    )
