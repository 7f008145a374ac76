"""MCP Streamable HTTP adapter: the wire at ``/mcp`` in, Actions to the checker, bytes out.

Both protocol generations pass through here. Legacy sessions (``Mcp-Session-Id``) are
bound to the Wicket session and agent that opened them; 2026-07-28 stateless requests get
their session from the caller's token. The request body is parsed once to build the
Action and then forwarded as the original bytes. Answers come back message by message
(SSE event by event) and each is screened before the client sees it: server-to-client
sampling and elicitation requests (the sampling guard), ``tools/list`` results (filtering,
tool pinning) and the final response (the outcome audit).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Coroutine
from typing import Any

import aiohttp
from aiohttp import web

from proxy import tracing
from proxy.adapters import jsonrpc
from proxy.adapters.http_guard import OriginPolicy, forward_headers, preflight
from proxy.adapters.quotas import AgentSessions, AgentSlots, OverLimit
from proxy.adapters.relay import (
    CLIENT_GONE,
    DROP_DOWNSTREAM,
    DROP_UPSTREAM,
    FLIGHT,
    Refusal,
    answer_kind,
    caller_session,
    deliver,
    failure_kind,
    failure_refusal,
    follow_disconnects,
    is_id,
    parse_body,
    read_answer,
    read_body,
    relay_json_lines,
    relay_stream,
    resolve_caller,
    send_upstream,
)
from proxy.adapters.tool_catalog import ToolCatalog
from proxy.audit.sink import AuditUnavailable
from proxy.core.action import Action, Decision, Effect, Verdict
from proxy.core.checker import Checker
from proxy.core.guardian import resource_refusal, resources_restricted, tool_refusal
from proxy.core.identity import Caller, IdentityError, IdentityResolver
from proxy.core.policy import Policy
from proxy.core.protection import INLINE_SCAN_BYTES, outcome_record
from proxy.core.sessions import Session, SessionIntegrityError, SessionManager
from proxy.core.tasks import TaskOwners, task_id_of
from proxy.core.toolpins import ToolPins
from proxy.credentials import CredentialBroker, CredentialError, IssuedCredential
from proxy.settings import Settings
from proxy.state.base import StoreUnavailable
from proxy.telemetry import Metrics

log = logging.getLogger(__name__)

MODERN_VERSION = "2026-07-28"
PROTOCOL = "mcp"

# Protocol housekeeping whose effect the protocol itself defines. Everything else is
# classified from its name, and unknown methods therefore count as mutating.
METHOD_EFFECTS: dict[str, Effect] = {
    m: Effect.READ
    for m in (
        "initialize",
        "ping",
        "server/discover",
        "tools/list",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "subscriptions/listen",
        # The Tasks extension: reading one's own task.
        "tasks/get",
        "tasks/result",
        "tasks/list",
    )
}
# Cancelling a task or answering its input requests acts on it: a write, in a read-only session too.
METHOD_EFFECTS.update({"tasks/cancel": Effect.MUTATING, "tasks/update": Effect.MUTATING})
# Methods on one task (``params.taskId``): only the session that created it may use them.
TASK_METHODS = frozenset({"tasks/get", "tasks/result", "tasks/cancel", "tasks/update"})
STREAM_METHODS = frozenset({"subscriptions/listen"})
# Every client-to-server request method of both generations; anything else gets -32601 from Wicket.
KNOWN_METHODS = frozenset({*METHOD_EFFECTS, "tools/call"})
# Requests an upstream sends to the agent's client (legacy: on an SSE stream; 2026-07-28: as
# ``inputRequests`` of an ``input_required`` result), with the protocol they are audited under.
# Sampling spends the agent's model on the server's prompt, so it is checked like a write.
SERVER_REQUESTS = {"sampling/createMessage": "sampling", "elicitation/create": PROTOCOL}
SERVER_REQUEST_EFFECTS = {"sampling/createMessage": Effect.MUTATING, "elicitation/create": Effect.READ}
# Client requests whose results data protection scans, and how to read them.
RESULT_KINDS = {"tools/call": "tool", "resources/read": "resource"}
# Methods whose target travels in ``Mcp-Name`` (2026-07-28) and in this body parameter.
NAME_PARAMS = {"tools/call": "name", "resources/read": "uri", "prompts/get": "name"}
# Requests that touch one resource: its URI is audited and checked against the policy's ``resources``.
RESOURCE_METHODS = frozenset({"resources/read", "resources/subscribe"})


class McpProxy:
    """The ``/mcp`` endpoint in front of one upstream MCP server."""

    def __init__(
        self,
        settings: Settings,
        *,
        checker: Checker,
        identity: IdentityResolver,
        sessions: SessionManager,
        metrics: Metrics,
        client: aiohttp.ClientSession,
        credentials: CredentialBroker,
        toolpins: ToolPins | None = None,
        tasks: TaskOwners | None = None,
        stream_client: aiohttp.ClientSession | None = None,
    ) -> None:
        self._settings = settings
        self._tasks = tasks
        self._toolpins = toolpins
        self._upstream = settings.upstream
        self._checker = checker
        self._identity = identity
        self._sessions = sessions
        self._metrics = metrics
        self._client = client
        # Long-lived streams get their own connection pool, so they can never use up the one reads need.
        self._stream_client = stream_client or client
        self._credentials = credentials
        self._origins = OriginPolicy(settings.allowed_hosts, settings.allowed_origins)
        self._background_work: set[asyncio.Task[None]] = set()
        self._in_flight = AgentSlots("upstream requests")
        self._streams = AgentSlots("streams")
        self._open_sessions = AgentSessions(settings.upstream_idle_seconds)
        self._post_timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.connect_timeout, sock_read=settings.read_timeout or None
        )
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.connect_timeout, sock_read=settings.stream_idle_timeout or None
        )
        self._catalog = (
            None
            if toolpins is None
            else ToolCatalog(
                upstream=self._upstream,
                client=client,
                credentials=credentials,
                toolpins=toolpins,
                metrics=metrics,
                timeout=self._post_timeout,
                max_bytes=settings.max_response_bytes,
            )
        )

    def routes(self) -> list[web.RouteDef]:
        return [web.route("*", "/mcp", follow_disconnects(self.handle))]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            problem = self._origins.host_problem(request.headers.get("Host"))
            if problem is None and (origin := request.headers.get("Origin")) is not None:
                problem = self._origins.origin_problem(origin)
            if problem is not None:
                raise Refusal(403, jsonrpc.INVALID_REQUEST, f"Forbidden: {problem}.", reason="origin")
            if request.method == "POST":
                return await self._post(request)
            if request.method == "OPTIONS":
                return preflight(request)
            if request.method in ("GET", "DELETE"):
                return await self._session_request(request)
            raise Refusal(405, jsonrpc.INVALID_REQUEST, f"Method {request.method} is not allowed on /mcp.")
        except Refusal as refusal:
            return self._refusal_response(refusal)
        except StoreUnavailable as exc:
            # Sessions, bindings and counters live in the store: without it nothing can be decided.
            message = f"Wicket's state store is unavailable ({exc}); nothing was forwarded. Retry shortly."
            return self._refusal_response(Refusal(503, jsonrpc.STORE_UNAVAILABLE, message, reason="store"))

    # -- POST: one JSON-RPC message ---------------------------------------------------

    async def _post(self, request: web.Request) -> web.StreamResponse:
        if request.content_type != "application/json":
            raise Refusal(415, jsonrpc.INVALID_REQUEST, "Content-Type must be application/json.", reason="content_type")
        body = await read_body(request, self._settings.max_body_bytes, self._settings.request_timeout or None)
        message = parse_body(body)
        if isinstance(message, list):
            raise Refusal(
                400,
                jsonrpc.INVALID_REQUEST,
                "Batch requests are not accepted: send one JSON-RPC message per POST.",
                reason="batch",
            )
        method, request_id, params = _shape(message)
        try:
            with tracing.continue_from_meta(method or "reply", params.get("_meta")):
                return await self._post_message(request, body, message, method, request_id, params)
        except Refusal as refusal:
            # Once the envelope is known to be valid, Wicket's own error answers the client's id.
            if refusal.request_id is None and is_id(request_id):
                refusal.request_id = request_id
            raise

    async def _post_message(
        self,
        request: web.Request,
        body: bytes,
        message: dict[str, Any],
        method: str | None,
        request_id: Any,
        params: dict[str, Any],
    ) -> web.StreamResponse:
        _check_headers(request, method, params)
        caller = await resolve_caller(self._identity, self._checker, self._settings, request, PROTOCOL)
        mcp_session_id = request.headers.get("Mcp-Session-Id")
        is_request = method is not None and "id" in message
        if not is_request:
            # Notifications and the client's replies to server requests execute nothing upstream.
            session = await self._session(caller, mcp_session_id, method, None)
            return await self._forward(
                request,
                body,
                None,
                session=session,
                caller=caller,
                method=method or "reply",
                mcp_session_id=mcp_session_id,
            )

        action_name = params.get(NAME_PARAMS[method], method) if method in NAME_PARAMS else method
        if not isinstance(action_name, str):
            raise Refusal(400, jsonrpc.INVALID_REQUEST, f"params.{NAME_PARAMS[method]} must be a string.")
        _check_lengths(method, action_name, request_id)
        is_tool_call = method == "tools/call"
        resource = params.get("uri") if method in RESOURCE_METHODS else None
        if resource is not None and not isinstance(resource, str):
            # (A missing uri is the upstream's to refuse: 2026-07-28 servers answer a removed
            # resources/subscribe with 404/-32601, which clients and the conformance suite expect.)
            raise Refusal(400, jsonrpc.INVALID_REQUEST, "params.uri must be a string.", reason="invalid")
        arguments = params.get("arguments") if is_tool_call else None
        if arguments is not None and not isinstance(arguments, dict):
            raise Refusal(400, jsonrpc.INVALID_REQUEST, "params.arguments must be an object.", reason="invalid")
        # The Action's fields, bound to a session once it is known: built once on the way through
        # (an Action is frozen, and dataclasses.replace on the hot path costs a copy each time).
        draft: dict[str, Any] = {
            "protocol": PROTOCOL,
            "method": method,
            "name": action_name,
            "arguments": arguments or {},
            "agent_id": caller.agent_id,
            "upstream": self._upstream,
            "is_tool_call": is_tool_call,
            "fixed_effect": METHOD_EFFECTS.get(method),
            "intent": _intent(params) if is_tool_call else None,
            "resource": resource,
            "prompt": action_name if method == "prompts/get" else None,
            "delegation": caller.delegation,
        }
        session = await self._session(caller, mcp_session_id, method, draft)
        draft["session_id"] = session.session_id
        if method not in KNOWN_METHODS:
            # Never forward what Wicket cannot classify as protocol: answer as a server would.
            reason = f"Method not found: '{method}' is not an MCP request method; Wicket did not forward it."
            decision = await self._checker.refuse(Action(**draft), session.session_id, reason)
            modern = _is_modern(request, params)
            body = jsonrpc.error_body(jsonrpc.METHOD_NOT_FOUND, reason, decision.record(), request_id)
            return web.Response(status=404 if modern else 200, body=body, content_type="application/json")
        if method in TASK_METHODS and self._tasks is not None:
            task_id = params.get("taskId")
            owner = await self._tasks.owner(self._upstream, task_id) if isinstance(task_id, str) else None
            if owner != session.session_id:
                shown = str(task_id)[:128]
                reason = f"Task '{shown}' was not created by this session; Wicket did not forward {method}."
                action = Action(**draft)
                decision = await self._checker.refuse(action, session.session_id, reason)
                return _denial(action, decision, request_id, modern=_is_modern(request, params))
        pinned_tool = is_tool_call and self._toolpins is not None and self._catalog is not None
        if pinned_tool:
            # The tool's pinned definition decides its effect, whichever replica pinned it; a tool no
            # replica has seen is learnt from the upstream's own list first, and one it does not list never runs.
            assert self._catalog is not None
            try:
                facts = await self._catalog.facts(
                    action_name,
                    session=session,
                    inbound_token=caller.inbound_token,
                    mcp_headers=functools.partial(_session_headers, request),
                )
            except Refusal as refusal:
                # Audited like any refusal.
                await self._checker.refuse(Action(**draft), session.session_id, refusal.message)
                raise
            if facts is None:
                reason = (
                    f"The upstream does not list a tool named '{action_name[:128]}' (Wicket listed its tools); "
                    "nothing was forwarded."
                )
                action = Action(**draft)
                decision = await self._checker.refuse(action, session.session_id, reason)
                return _denial(action, decision, request_id, modern=_is_modern(request, params))
            draft["annotations"], draft["annotations_trusted"] = facts.annotations, facts.trusted
        action = Action(**draft)
        if pinned_tool:
            assert self._toolpins is not None
            # A tool whose definition changed or looks poisoned waits for an operator; the upstream never sees it.
            pinned = await self._toolpins.refusal(self._upstream, action.name)
            if pinned is not None:
                decision = await self._checker.refuse(action, session.session_id, pinned)
                return _denial(action, decision, request_id, modern=_is_modern(request, params))
        decision = await self._checker.check(action, session)
        if not decision.allowed:
            return _denial(action, decision, request_id, modern=_is_modern(request, params))
        if decision.forward_arguments is not None:
            # Data protection masked a value: the upstream gets (and the credential binds to) the masked call.
            masked = dict(decision.forward_arguments)
            action = dataclasses.replace(action, arguments=masked)
            body = jsonrpc.dumps({**message, "params": {**params, "arguments": masked}})
        return await self._forward(
            request,
            body,
            (action, decision, request_id),
            session=session,
            caller=caller,
            method=method,
            mcp_session_id=mcp_session_id,
            bind_to=session if method == "initialize" else None,
        )

    # -- GET (standalone SSE stream) and DELETE (end session) -------------------------

    async def _session_request(self, request: web.Request) -> web.StreamResponse:
        mcp_session_id = request.headers.get("Mcp-Session-Id")
        if not mcp_session_id:
            raise Refusal(400, jsonrpc.INVALID_REQUEST, f"{request.method} /mcp needs an Mcp-Session-Id header.")
        caller = await resolve_caller(self._identity, self._checker, self._settings, request, PROTOCOL)
        session = await self._session(caller, mcp_session_id, request.method, None)
        response = await self._forward(
            request, b"", None, session=session, caller=caller, method=request.method, mcp_session_id=mcp_session_id
        )
        if request.method == "DELETE" and 200 <= response.status < 300:
            self._open_sessions.end(mcp_session_id)
            await asyncio.shield(self._sessions.unbind_mcp(mcp_session_id))
        return response

    # -- identity and sessions ----------------------------------------------------------

    async def _session(
        self, caller: Caller, mcp_session_id: str | None, method: str | None, draft: dict[str, Any] | None
    ) -> Session:
        """The Wicket session this request runs in; refuses revoked callers, hijacks and unknown sessions."""
        if mcp_session_id:
            session = await self._bound_session(caller, mcp_session_id, method, draft)
        else:
            session = await caller_session(
                self._identity, self._checker, caller, PROTOCOL, fresh=method == "initialize"
            )
        try:
            self._identity.admit(caller, session)
        except IdentityError as exc:
            raise Refusal(exc.status, jsonrpc.UNAUTHORIZED, exc.reason, reason="revoked") from None
        return session

    async def _bound_session(
        self, caller: Caller, mcp_session_id: str, method: str | None, draft: dict[str, Any] | None
    ) -> Session:
        """The session an ``Mcp-Session-Id`` is bound to, if this caller may use it. ``draft``: the
        fields of the Action being attempted, for the audit record of a refused hijack."""
        try:
            binding = await self._sessions.mcp_binding(mcp_session_id)
            session = None if binding is None else await self._sessions.get(binding.session_id)
        except SessionIntegrityError as exc:
            await self._checker.integrity_failure(PROTOCOL, str(exc))
            raise Refusal(403, jsonrpc.DENIED, f"Session denied: {exc}.", reason="integrity") from None
        if binding is None or session is None:
            raise Refusal(404, jsonrpc.SESSION_NOT_FOUND, "Session not found: start a new MCP session.")
        owner_mismatch = binding.agent_id != caller.agent_id
        token_mismatch = caller.session is not None and caller.session.session_id != binding.session_id
        if owner_mismatch or token_mismatch:
            reason = "This MCP session belongs to another agent or session; the request was refused."
            if draft is not None:
                action = Action(**draft, session_id=binding.session_id)
            else:
                action = Action(
                    protocol=PROTOCOL,
                    method=method or "",
                    name=method or "",
                    arguments={},
                    agent_id=caller.agent_id,
                    session_id=binding.session_id,
                    upstream=self._upstream,
                    fixed_effect=Effect.READ,
                )
            decision = await self._checker.refuse(action, binding.session_id, reason)
            raise Refusal(403, jsonrpc.DENIED, reason, data=decision.record(), reason="hijack")
        return session

    # -- forwarding ---------------------------------------------------------------------

    async def _forward(
        self,
        request: web.Request,
        body: bytes,
        decided: tuple[Action, Decision, Any] | None,
        *,
        session: Session,
        caller: Caller,
        method: str,
        mcp_session_id: str | None,
        bind_to: Session | None = None,
    ) -> web.StreamResponse:
        """``mcp_session_id``: the request's ``Mcp-Session-Id`` header (already read by the caller)."""
        headers = forward_headers(request.headers, DROP_UPSTREAM)
        # Standalone streams (legacy GET, 2026-07-28 subscriptions/listen) may idle for long.
        streaming = request.method == "GET" or (decided is not None and decided[0].method in STREAM_METHODS)
        timeout = self._stream_timeout if streaming else self._post_timeout
        started = time.perf_counter()
        exchange = _Exchange(
            request,
            session,
            caller,
            decided[2] if decided else None,
            decided[0].method if decided else None,
            action=decided[0] if decided else None,
        )
        issued: list[IssuedCredential] = []

        async def answer(upstream: aiohttp.ClientResponse) -> web.StreamResponse:
            sid = upstream.headers.get("Mcp-Session-Id")
            if bind_to is not None and upstream.status == 200 and sid:
                await asyncio.shield(self._sessions.bind_mcp(sid, bind_to))
                self._open_sessions.opened(session.agent_id, sid)
            return await self._relay(request, upstream, exchange)

        flight = request[FLIGHT]  # set by relay.follow_disconnects
        flight.upstream_open = True
        policy = self._checker.policy
        slots, limit = (
            (self._streams, policy.max_streams_per_agent)
            if streaming
            else (self._in_flight, policy.max_requests_per_agent)
        )
        if mcp_session_id:
            self._open_sessions.used(mcp_session_id)
        try:
            if flight.gone:
                raise asyncio.CancelledError  # the client left while this was being decided: not forwarded
            # This agent's share of the sidecar for one forward: room for the MCP session an
            # ``initialize`` opens, and a request or stream slot (``OverLimit`` past the policy's limits).
            if bind_to is not None:
                self._open_sessions.admit(session.agent_id, policy.max_sessions_per_agent)
            slots.take(session.agent_id, limit)
            try:
                response = await send_upstream(
                    self._stream_client if streaming else self._client,
                    request.method,
                    self._upstream,
                    body=body,
                    headers=headers,
                    limits=timeout,
                    retry=decided is None or decided[1].effect is Effect.READ,
                    credential=functools.partial(self._credential, decided, session, method, caller),
                    issued=issued,
                    answer=answer,
                    metrics=self._metrics,
                    protocol=PROTOCOL,
                )
            finally:
                slots.give_back(session.agent_id)
        except asyncio.CancelledError:
            # The client went away: leaving send_upstream closed the upstream request.
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            exchange.gone = True
            response = web.Response(status=499)  # nobody receives it
        except (aiohttp.ClientError, OSError) as exc:
            if request.transport is None or request.transport.is_closing():
                exchange.gone = True  # a write to the client failed: it left
                response = web.Response(status=499)
            else:
                kind = failure_kind(exc)
                exchange.failed(f"upstream {kind}: {exc.__class__.__name__}")
                self._metrics.upstream_errors.labels(PROTOCOL, kind).inc()
                response = self._upstream_failure(request, kind, decided)
        except Refusal as refusal:
            exchange.failed(refusal.message)
            response = self._refusal_response(refusal)
        except OverLimit as exc:
            exchange.failed(str(exc))
            message = f"Too many {exc.what}: {exc}; nothing was forwarded. Retry when one ends."
            refusal = Refusal(429, jsonrpc.OVER_LIMIT, message, reason="over_limit", request_id=exchange.request_id)
            response = self._refusal_response(refusal, {"Retry-After": "1"})
        except TimeoutError:
            exchange.failed("upstream timeout")
            self._metrics.upstream_errors.labels(PROTOCOL, "timeout").inc()
            response = self._upstream_failure(request, "timeout", decided)
        finally:
            flight.upstream_open = False
            elapsed = time.perf_counter() - started
            self._metrics.upstream_seconds.labels(PROTOCOL).observe(elapsed)
        if exchange.gone or exchange.detail == CLIENT_GONE:
            exchange.failed("the client disconnected; Wicket closed the upstream request")
            self._metrics.client_disconnects.labels(PROTOCOL).inc()
            if decided is not None and is_id(exchange.request_id) and mcp_session_id:
                # The session generation does not cancel on a closed response: say so, as the client would have.
                params = {"requestId": exchange.request_id, "reason": "The client disconnected."}
                notice = jsonrpc.dumps({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params})
                self._background(self._post_upstream(notice, exchange))
        if exchange.tools_changed and self._toolpins is not None:
            self._toolpins.forget(self._upstream)
        credential = issued[-1] if issued else None
        audit = credential.audit() if credential is not None else None
        if decided is not None:
            action, decision, _ = decided
            await deliver(request, response)  # the decision was audited before the forward; the outcome may follow
            await self._checker.outcome(
                action,
                decision,
                status=exchange.status,
                duration=elapsed,
                detail=exchange.detail,
                credential=audit,
                data=exchange.data_protection(),
            )
        elif credential is not None and credential.mode == "passthrough" and credential.headers:
            # Passthrough is audited on every use, including forwards that carry no decision.
            event = {"event": "credential", "protocol": PROTOCOL, "action": method, **(audit or {})}
            event.update(agent_id=session.agent_id, session_id=session.session_id)
            try:
                await self._checker.audit_event(event)
            except AuditUnavailable:
                log.error("a passthrough credential use could not be audited")
        return response

    async def _credential(
        self, decided: tuple[Action, Decision, Any] | None, session: Session, method: str, caller: Caller
    ) -> IssuedCredential:
        """The credential this one forward carries upstream (never the agent's own token)."""
        try:
            if decided is not None:
                return await self._credentials.issue(decided[0], session, inbound_token=caller.inbound_token)
            return await self._credentials.issue_for_request(
                session, upstream=self._upstream, method=method, inbound_token=caller.inbound_token
            )
        except CredentialError as exc:
            self._metrics.upstream_errors.labels(PROTOCOL, "credential").inc()
            raise Refusal(
                502,
                jsonrpc.UPSTREAM_UNAVAILABLE,
                f"Wicket could not obtain an upstream credential: {exc.reason}. Nothing was executed.",
                reason="credential",
            ) from None

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse, exchange: _Exchange
    ) -> web.StreamResponse:
        """Copy the upstream's answer to the client, screening every JSON-RPC message in it first.

        The answer is read the way clients read it (``answer_kind``); one Wicket cannot screen
        (a Content-Type clients disagree on, a body that is not JSON) is not relayed.
        """
        kind = answer_kind(tuple(upstream.headers.getall("Content-Type", ())))
        if kind == "ambiguous":
            self._metrics.upstream_errors.labels(PROTOCOL, "unscreenable").inc()
            message = "The upstream's Content-Type names both JSON and SSE, which clients read differently; "
            raise Refusal(502, jsonrpc.INTERNAL_ERROR, message + "Wicket did not relay it.", reason="unscreenable")
        if upstream.status >= 400:
            exchange.failed(f"upstream HTTP {upstream.status}")
        screen = functools.partial(self._screen_text, exchange=exchange)
        if kind == "sse":
            return await relay_stream(
                request,
                upstream,
                screen,
                exchange.failed,
                metrics=self._metrics,
                protocol=PROTOCOL,
                max_event_bytes=self._settings.max_message_bytes,
                last_word=exchange.last_word,
            )
        headers = forward_headers(upstream.headers, DROP_DOWNSTREAM)

        async def document(payload: bytes) -> web.Response:
            if payload.strip() and (kind == "json" or upstream.status < 400):
                # Error pages (HTML, text) no client reads as JSON-RPC pass as they are; anything else is screened.
                replacement = await self._screen_body(payload, exchange)
                if replacement is not None:
                    payload = replacement
            return web.Response(status=upstream.status, body=payload, headers=headers)

        if kind == "json" and upstream.content_length is None:
            return await relay_json_lines(
                request,
                upstream,
                screen,
                exchange.failed,
                metrics=self._metrics,
                protocol=PROTOCOL,
                max_line_bytes=self._settings.max_message_bytes,
                max_document_bytes=self._settings.max_response_bytes,
                document=document,
                last_word=exchange.last_word,
            )
        return await document(
            await read_answer(upstream, self._settings.max_response_bytes, metrics=self._metrics, protocol=PROTOCOL)
        )

    # -- screening what the upstream sends back ------------------------------------------

    async def _screen_body(self, payload: bytes, exchange: _Exchange) -> bytes | None:
        """A whole JSON body: one message or batch, or (from a server that streams) JSON lines."""
        try:
            message = jsonrpc.loads(payload)
        except jsonrpc.NestingTooDeep:
            return self._unreadable(exchange, f"nests deeper than {jsonrpc.MAX_DEPTH} levels")
        except ValueError:
            lines = payload.splitlines(keepends=True)
            if len(lines) < 2:
                return self._unreadable(exchange, "is not JSON")
            changed = False
            for index, line in enumerate(lines):
                replacement = await self._screen_text(line, exchange) if line.strip() else None
                if replacement is not None:
                    lines[index] = replacement + b"\n" if replacement else b""
                    changed = True
            return b"".join(lines) if changed else None
        return await self._screen_value(message, exchange)

    def _unreadable(self, exchange: _Exchange, problem: str) -> bytes:
        """What the client gets for an upstream message Wicket cannot screen: an error for its request."""
        exchange.failed(f"the upstream's message {problem}")
        self._metrics.upstream_errors.labels(PROTOCOL, "unscreenable").inc()
        if exchange.request_id is None:
            return b""
        message = f"The upstream's answer {problem}; Wicket did not relay it."
        return jsonrpc.error_body(jsonrpc.INTERNAL_ERROR, message, request_id=exchange.request_id)

    async def _screen_text(self, text: str | bytes, exchange: _Exchange) -> bytes | None:
        """Observe one message from the upstream; return what the client gets instead of it
        (``b""``: nothing at all) or None to pass it on unchanged."""
        try:
            message = jsonrpc.loads(text)
        except jsonrpc.NestingTooDeep:
            return self._unreadable(exchange, f"nests deeper than {jsonrpc.MAX_DEPTH} levels")
        except ValueError:
            return self._unreadable(exchange, "is not JSON")
        exchange.size = len(text)
        return await self._screen_value(message, exchange)

    async def _screen_value(self, message: Any, exchange: _Exchange) -> bytes | None:
        if isinstance(message, dict):
            return await self._screen_message(message, exchange)
        if not isinstance(message, list):
            return self._unreadable(exchange, "is not a JSON-RPC message")
        # A JSON-RPC batch (2025-03-26) must not carry a server request past the screen.
        kept: list[Any] = []
        changed = False
        for item in message:
            replacement = await self._screen_message(item, exchange) if isinstance(item, dict) else None
            if replacement is None:
                kept.append(item)
                continue
            changed = True
            if replacement:
                kept.append(jsonrpc.loads(replacement))
        if not changed:
            return None
        return jsonrpc.dumps(kept) if kept else b""

    async def _screen_message(self, message: dict[str, Any], exchange: _Exchange) -> bytes | None:
        """Note what one message from the upstream says about the outcome, and screen it.

        Ordered for the common case, the answer to the client's own request: each check that only
        another shape needs (a task, a listing, a server request) costs one test of the method or
        of a key before it is skipped."""
        method = message.get("method")
        if method is not None:
            if method == "notifications/tools/list_changed":
                exchange.tools_changed = True
                return None
            if method in SERVER_REQUESTS and "id" in message:
                return await self._screen_server_request(message, exchange)
            params = message.get("params")
            if method == "notifications/tasks" and isinstance(params, dict):
                # A task's status push may carry its input requests: a refused one is never delivered.
                refused = await self._refused_input_request(_input_requests(params), exchange)
                return b"" if refused is not None else None
            return None
        # A response under another id may answer another of the client's requests (clients
        # match ids loosely, and a GET stream carries no request of its own): it is screened
        # by what it holds, never let through because the id is not this request's.
        answer_id = message.get("id")
        ours = exchange.answers(answer_id)
        result = message.get("result")
        is_result = isinstance(result, dict)
        if ours and "method" not in message:  # the outcome of the client's request ("method": null is none)
            if "error" in message:
                error = message["error"]
                exchange.failed(f"JSON-RPC error {error.get('code')}" if isinstance(error, dict) else "JSON-RPC error")
            elif is_result and result.get("isError") is True:
                exchange.status = "tool_error"
        if not is_result:
            return None
        if ours and self._tasks is not None and exchange.method not in TASK_METHODS:
            created = task_id_of(result)
            if created is not None:  # before the client can learn the id, so its first tasks/get finds the owner
                await self._tasks.record(self._upstream, created, exchange.session.session_id)
        requests = _input_requests(result)
        if requests is not None:
            return await self._screen_input_required(requests, exchange, answer_id)
        translated = ours and "resultType" not in result and exchange.modern
        if translated:
            _complete_for_modern(result, exchange.method)
        if self._tasks is not None and (exchange.method == "tasks/list" or not ours):
            listed_tasks = result.get("tasks")
            if isinstance(listed_tasks, list):
                replaced = await self._screen_tasks_list(message, listed_tasks, exchange)
                if replaced is not None:
                    return replaced
        if exchange.method == "tools/list" or not ours:
            tools = result.get("tools")
            if isinstance(tools, list):
                replaced = await self._screen_tools_list(message, tools, exchange)
                if replaced is not None:
                    return replaced
        if exchange.method == "resources/list" and isinstance(result.get("resources"), list):
            policy = self._checker.policy
            if resources_restricted(policy):
                listed = result["resources"]
                kept = [r for r in listed if not (isinstance(r, dict) and _refused_resource(policy, r.get("uri")))]
                if len(kept) != len(listed):  # a URI the session may never read is not offered
                    return jsonrpc.dumps({**message, "result": {**result, "resources": kept}})
        if ours and exchange.method in RESULT_KINDS and exchange.action is not None:
            replaced = await self._screen_result(message, result, exchange)
            if replaced is not None:
                return replaced
        return jsonrpc.dumps(message) if translated else None

    async def _screen_tasks_list(self, message: dict[str, Any], tasks: list[Any], exchange: _Exchange) -> bytes | None:
        """A session sees only the tasks it created (the upstream may list every task it holds)."""
        assert self._tasks is not None
        ids = [t["taskId"] for t in tasks if isinstance(t, dict) and isinstance(t.get("taskId"), str)]
        owned = await self._tasks.owned(self._upstream, ids, exchange.session.session_id)
        kept = [t for t in tasks if isinstance(t, dict) and t.get("taskId") in owned]
        if len(kept) == len(tasks):
            return None
        return jsonrpc.dumps({**message, "result": {**message["result"], "tasks": kept}})

    async def _screen_result(
        self, message: dict[str, Any], result: dict[str, Any], exchange: _Exchange
    ) -> bytes | None:
        """Data protection of a tool result or ``resources/read`` contents, SSE or JSON, either
        generation: masked values are re-serialised in place; under ``deny`` the client gets a
        -32050 error for its request instead of the result."""
        assert exchange.action is not None and exchange.method is not None
        kind = RESULT_KINDS[exchange.method]
        if exchange.size > INLINE_SCAN_BYTES:  # a long result is scanned off the event loop
            found, masked = await asyncio.to_thread(self._checker.screen_result, exchange.action, kind, result)
        else:
            found, masked = self._checker.screen_result(exchange.action, kind, result)
        if not found:
            return None
        exchange.scans.append(found.record())
        if found.denied:
            exchange.failed("result withheld by data protection")
            why = found.incomplete or f"it carries {found.summary()}"
            reason = (
                f"Wicket withheld the result of '{exchange.action.name}': {why} (policy data_protection results: deny)."
            )
            return jsonrpc.error_body(jsonrpc.DENIED, reason, None, exchange.request_id)
        if masked is None:
            return None
        return jsonrpc.dumps({**message, "result": masked})

    async def _screen_tools_list(self, message: dict[str, Any], tools: list[Any], exchange: _Exchange) -> bytes | None:
        """Hide the tools this session may never call and those awaiting an operator's approval
        (tool pinning); re-serialise only when one is hidden."""
        policy, session = self._checker.policy, exchange.session
        unapproved: frozenset[str] = frozenset()
        if self._toolpins is not None:
            try:
                review = self._toolpins.review(
                    self._upstream, tools, agent_id=session.agent_id, session_id=session.session_id
                )
                unapproved = await asyncio.shield(review)
            except StoreUnavailable as exc:
                # Without the pins no tool can be vouched for: the client gets an error, never an unchecked list
                # (the SSE stream may already be under way, so this replaces the message instead of a 503).
                log.error("tools/list could not be checked against the tool pins: %s", exc)
                exchange.failed("tool pins unavailable")
                reason = (
                    f"Wicket's state store is unavailable ({exc}), so the tool list cannot be checked; retry shortly."
                )
                return jsonrpc.error_body(jsonrpc.STORE_UNAVAILABLE, reason, request_id=message.get("id"))
        kept: list[Any] = []
        never_allowed = 0  # counted here; tools awaiting approval have their own metrics
        for tool in tools:
            name = tool.get("name") if isinstance(tool, dict) else None
            if isinstance(name, str):
                if name in unapproved:
                    continue
                if tool_refusal(policy, session.agent_id, session, name) is not None:
                    never_allowed += 1
                    continue
            kept.append(tool)
        if len(kept) == len(tools):
            return None
        if never_allowed:
            self._metrics.tools_hidden.inc(never_allowed)
        return jsonrpc.dumps({**message, "result": {**message["result"], "tools": kept}})

    async def _screen_server_request(self, message: dict[str, Any], exchange: _Exchange) -> bytes | None:
        """Legacy generation: a server-to-client request on the stream (SPEC §8 sampling guard).

        Refused: the client never sees it, and Wicket answers the upstream itself with -32050
        under the *server's* id, on the same MCP session.
        """
        method = message["method"]
        decision = await self._check_server_request(method, message.get("params"), exchange)
        if decision.allowed:
            params = self._screen_prompt(method, message.get("params"), exchange)
            if params is None:
                return None
            if not isinstance(params, str):
                return jsonrpc.dumps({**message, "params": params})
            decision = dataclasses.replace(decision, verdict=Verdict.DENY, reason=params)
        error = jsonrpc.error_body(
            jsonrpc.DENIED, f"Wicket refused {method}: {decision.reason}", decision.record(), message["id"]
        )
        await asyncio.shield(self._post_upstream(error, exchange))
        return b""

    async def _screen_input_required(self, requests: Any, exchange: _Exchange, answer_id: Any) -> bytes | None:
        """2026-07-28: a result asking the client for input (an ``input_required`` result, or a
        task's in ``tasks/get``). Every sampling or elicitation request in it is checked; if any
        is refused, the client gets a -32050 error for its own request instead of the result,
        so it never runs the refused request."""
        refused = await self._refused_input_request(requests, exchange)
        if refused is None:
            return None
        key, method, decision = refused
        exchange.failed(f"{method} input request refused by Wicket")
        message = f"Wicket refused the server's {method} input request '{key}': {decision.reason}"
        return jsonrpc.error_body(jsonrpc.DENIED, message, decision.record(), answer_id)

    async def _refused_input_request(self, requests: Any, exchange: _Exchange) -> tuple[str, str, Decision] | None:
        """The first of these ``inputRequests`` the sampling guard refuses, else None."""
        if not isinstance(requests, dict):
            return None
        for key, entry in requests.items():
            method = entry.get("method") if isinstance(entry, dict) else None
            if method not in SERVER_REQUESTS:
                continue
            decision = await self._check_server_request(method, entry.get("params"), exchange)
            screened = self._screen_prompt(method, entry.get("params"), exchange) if decision.allowed else None
            if isinstance(screened, dict):
                # Masking inside inputRequests would mean rewriting the result (or the task status)
                # that carries them; until then a prompt to be masked is refused, never passed on.
                screened = "the sampling prompt carries secrets or personal data to be masked (refused here)."
            if screened is not None:
                decision = dataclasses.replace(decision, verdict=Verdict.DENY, reason=screened)
            if not decision.allowed:
                return str(key), method, decision
        return None

    def _screen_prompt(self, method: str, params: Any, exchange: _Exchange) -> dict[str, Any] | str | None:
        """Data protection of an allowed sampling prompt: the masked params, a refusal reason
        (policy ``deny``), or None to pass it on as it is."""
        if method != "sampling/createMessage" or not isinstance(params, dict):
            return None
        action = Action(
            protocol="sampling",
            method=method,
            name=method,
            arguments={},
            agent_id=exchange.session.agent_id,
            session_id=exchange.session.session_id,
            upstream=self._upstream,
            server_initiated=True,
        )
        found, masked = self._checker.screen_result(action, "sampling", params)
        if not found:
            return None
        exchange.scans.append(found.record())
        if found.denied:
            return f"the sampling prompt carries {found.incomplete or found.summary()} (policy data_protection: deny)."
        return masked

    async def _check_server_request(self, method: str, params: Any, exchange: _Exchange) -> Decision:
        session = exchange.session
        action = Action(
            protocol=SERVER_REQUESTS[method],
            method=method,
            name=method,
            arguments=params if isinstance(params, dict) else {},
            agent_id=session.agent_id,
            session_id=session.session_id,
            upstream=self._upstream,
            fixed_effect=SERVER_REQUEST_EFFECTS[method],
            server_initiated=True,
        )
        return await asyncio.shield(self._checker.check_server_request(action, session))

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` beyond this request (kept referenced until it ends)."""
        task = asyncio.ensure_future(work)
        self._background_work.add(task)
        task.add_done_callback(self._background_work.discard)

    async def _post_upstream(self, body: bytes, exchange: _Exchange) -> None:
        """POST a message of Wicket's own on the client's MCP session, as the client would have:
        a refusal of a server-to-client request, or a cancellation."""
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        for name in ("Mcp-Session-Id", "MCP-Protocol-Version"):
            value = exchange.request.headers.get(name)
            if value is not None:
                headers[name] = value
        try:
            credential = await self._credential(None, exchange.session, "reply", exchange.caller)
            headers.update(credential.headers)
            async with self._client.post(
                self._upstream, data=body, headers=headers, timeout=self._post_timeout, allow_redirects=False
            ) as reply:
                await reply.read()
                if reply.status >= 400:
                    log.warning("the upstream answered Wicket's own message with HTTP %s", reply.status)
        except (Refusal, aiohttp.ClientError, OSError, TimeoutError) as exc:
            # The request stays unanswered upstream (it times out there); the client still never saw it.
            log.warning("could not deliver a message to the upstream: %s", exc.__class__.__name__)

    def _upstream_failure(
        self, request: web.Request, kind: str, decided: tuple[Action, Decision, Any] | None
    ) -> web.Response:
        failure = failure_refusal(kind, "MCP server", decided[2] if decided else None)
        body = jsonrpc.error_body(failure.code, failure.message, None, failure.request_id)
        return web.Response(status=failure.status, body=body, content_type="application/json")

    def _refusal_response(self, refusal: Refusal, headers: dict[str, str] | None = None) -> web.Response:
        self._metrics.rejections.labels(refusal.reason).inc()
        if refusal.status == 401:
            headers = {"WWW-Authenticate": refusal.challenge or 'Bearer realm="wicket"'}
        data = refusal.data if refusal.data is not None else jsonrpc.NODATA
        return web.Response(
            status=refusal.status,
            body=jsonrpc.error_body(refusal.code, refusal.message, data, refusal.request_id),
            content_type="application/json",
            headers=headers,
        )


@dataclasses.dataclass(slots=True)
class _Exchange:
    """One forward in flight: what screening the upstream's answer needs, and its outcome."""

    request: web.Request
    session: Session
    caller: Caller
    request_id: Any  # the client's JSON-RPC id (None for GET streams and notifications)
    method: str | None  # the client's JSON-RPC method, likewise
    status: str = "success"  # the outcome audit: success, tool_error or error
    detail: str | None = None
    tools_changed: bool = False  # the upstream announced notifications/tools/list_changed
    action: Action | None = None  # the decided client request this forward carries
    size: int = 0  # bytes of the message being screened (long ones are scanned off the loop)
    scans: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # data-protection findings
    gone: bool = False  # the client disconnected before the answer ended

    def answers(self, answer_id: Any) -> bool:
        """Does a response with ``answer_id`` answer this request, as clients match ids?"""
        if type(answer_id) is type(self.request_id):
            return bool(answer_id == self.request_id)
        return jsonrpc.same_id(answer_id, self.request_id)

    def last_word(self, problem: str) -> bytes | None:
        """The error a stream Wicket had to end carries for the client's request."""
        if self.request_id is None:
            return None
        message = f"Wicket ended the upstream's stream: {problem}."
        return jsonrpc.error_body(jsonrpc.INTERNAL_ERROR, message, request_id=self.request_id)

    def data_protection(self) -> dict[str, Any] | None:
        """The outcome audit's ``data_protection``: one scan's record, or all of them."""
        return outcome_record(self.scans) if self.scans else None

    @property
    def modern(self) -> bool:
        """The client speaks 2026-07-28 (every result it accepts carries ``resultType``)."""
        return self.request.headers.get("MCP-Protocol-Version", "") >= MODERN_VERSION

    def failed(self, detail: str) -> None:
        self.status = "error"
        self.detail = detail


def _shape(message: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Validate the JSON-RPC envelope; return (method, id, params)."""
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        raise Refusal(400, jsonrpc.INVALID_REQUEST, "Invalid Request: expected one JSON-RPC 2.0 object.")
    method = message.get("method")
    if method is not None and not isinstance(method, str):
        raise Refusal(400, jsonrpc.INVALID_REQUEST, "Invalid Request: method must be a string.")
    if method is None and "result" not in message and "error" not in message:
        raise Refusal(400, jsonrpc.INVALID_REQUEST, "Invalid Request: neither a request, a notification nor a reply.")
    params = message.get("params")
    if params is None:
        params = {}
    elif not isinstance(params, dict):
        request_id = message.get("id")
        raise Refusal(
            400,
            jsonrpc.INVALID_REQUEST,
            "Invalid Request: params must be an object.",
            reason="invalid",
            request_id=request_id if is_id(request_id) else None,
        )
    return method, message.get("id"), params


def _is_modern(request: web.Request, params: dict[str, Any]) -> bool:
    if request.headers.get("MCP-Protocol-Version", "") >= MODERN_VERSION:
        return True
    meta = params.get("_meta")
    return isinstance(meta, dict) and "io.modelcontextprotocol/protocolVersion" in meta


def _check_headers(request: web.Request, method: str | None, params: dict[str, Any]) -> None:
    """2026-07-28: ``Mcp-Method``/``Mcp-Name`` must say what the body says (-32020 otherwise).

    Policy is decided on the body; an intermediary routing on the headers must never see
    a different call than the one the server executes.
    """
    if method is None:
        return
    header_method = request.headers.get("Mcp-Method")
    modern = request.headers.get("MCP-Protocol-Version", "") >= MODERN_VERSION
    problem: str | None = None
    if header_method is None:
        if modern:
            problem = "the Mcp-Method header is required"
    elif header_method != method:
        problem = f"Mcp-Method header '{header_method}' does not match the body's method '{method}'"
    if problem is None and method in NAME_PARAMS:
        header_name = request.headers.get("Mcp-Name")
        body_name = params.get(NAME_PARAMS[method])
        if header_name is None:
            if modern:
                problem = f"the Mcp-Name header is required for {method}"
        elif header_name != body_name:
            problem = f"Mcp-Name header '{header_name}' does not match the body's '{body_name}'"
    if problem is not None:
        raise Refusal(400, jsonrpc.HEADER_MISMATCH, f"Header mismatch: {problem}.", reason="header_mismatch")


CACHEABLE_METHODS = frozenset(
    {"prompts/list", "resources/list", "resources/read", "resources/templates/list", "server/discover", "tools/list"}
)
"""2026-07-28 results of these methods must say how long they may be cached (``ttlMs``, ``cacheScope``)."""


def _complete_for_modern(result: dict[str, Any], method: str | None) -> None:
    """Give a result from a server older than 2026-07-28 (one without ``resultType``) the fields a
    2026-07-28 client requires. Such a server never asks for input, so its result is complete,
    and its lists get the SDKs' own safe cache defaults (immediately stale, private)."""
    result["resultType"] = "complete"
    if method in CACHEABLE_METHODS:
        result.setdefault("ttlMs", 0)
        result.setdefault("cacheScope", "private")


def _input_requests(result: dict[str, Any]) -> Any:
    """``inputRequests`` of a result or task status, top-level or inside its ``task``; None without any."""
    found = result.get("inputRequests")
    task = result.get("task")
    if found is None and isinstance(task, dict):
        found = task.get("inputRequests")
    return found


def _session_headers(request: web.Request) -> dict[str, str]:
    """The client's MCP session headers, for a request Wicket sends in that session itself."""
    return {name: value for name in ("Mcp-Session-Id", "MCP-Protocol-Version") if (value := request.headers.get(name))}


def _refused_resource(policy: Policy, uri: Any) -> bool:
    return not isinstance(uri, str) or resource_refusal(policy, uri) is not None


# Longest names Wicket accepts (tool names are 1 to 128 characters in MCP); anything longer is
# refused with -32602 before it reaches the checker, the audit log or the upstream.
MAX_METHOD_CHARS = 128
MAX_NAME_CHARS = 128
MAX_URI_CHARS = 8192
MAX_ID_CHARS = 256


def _check_lengths(method: str, name: str, request_id: Any) -> None:
    uri = NAME_PARAMS.get(method) == "uri"
    limits = (
        ("the method name", method, MAX_METHOD_CHARS),
        ("the resource URI" if uri else "the name", name, MAX_URI_CHARS if uri else MAX_NAME_CHARS),
        ("the request id", request_id if isinstance(request_id, str) else "", MAX_ID_CHARS),
    )
    for what, value, limit in limits:
        if len(value) > limit:
            raise Refusal(
                400,
                jsonrpc.INVALID_PARAMS,
                f"Invalid params: {what} is {len(value)} characters long; Wicket accepts at most {limit}.",
                reason="too_long",
            )


INTENT_META_KEYS = ("wicket/intent", "intent")


def _intent(params: dict[str, Any]) -> str | None:
    """Why the agent says it makes this call (``params._meta["wicket/intent"]`` or ``["intent"]``),
    shown to the operator with an approval request. Untrusted text; never used to decide."""
    meta = params.get("_meta")
    if not isinstance(meta, dict):
        return None
    for key in INTENT_META_KEYS:
        value = meta.get(key)
        if isinstance(value, str) and value.strip():
            return value[:2000]
    return None


def _denial(action: Action, decision: Decision, request_id: Any, *, modern: bool) -> web.Response:
    """SPEC §4: a refused tool call is a normal ``isError`` result; anything else is -32050."""
    record = decision.record()
    if action.is_tool_call:
        verb = "needs approval" if decision.verdict.value == "approval_required" else "was denied"
        result: dict[str, Any] = {
            "content": [
                {
                    "type": "text",
                    "text": f"Wicket: the call to '{action.name}' {verb}. {decision.reason} "
                    f"(decision {decision.decision_id})",
                }
            ],
            "isError": True,
            "_meta": {"wicket/decision": record},
        }
        if modern:
            result["resultType"] = "complete"
        body = jsonrpc.result_body(result, request_id)
    else:
        body = jsonrpc.error_body(
            jsonrpc.DENIED, f"Wicket denied {action.method}: {decision.reason}", record, request_id
        )
    return web.Response(status=200, body=body, content_type="application/json")
