"""A2A adapter: Wicket as the front door of one A2A agent.

Every request another agent sends, on either binding Wicket parses (JSON-RPC, HTTP+JSON/REST)
and in either protocol version (1.0, 0.3), becomes one Action labelled ``a2a:<1.0 method>``
and is decided by the same checker as an MCP tool call; only then are the original bytes
forwarded, with a credential minted for that call instead of the caller's token. Headers
(``A2A-Version``, ``A2A-Extensions``, ``X-A2A-Extensions``) go through as sent, so an agent
answers a version mismatch itself. Answers are relayed message by message (SSE event by event)
through a screen that claims the tasks a caller creates (task ownership), hides other callers'
tasks from ``ListTasks`` and rewrites an extended agent card. The public card is rewritten by
``a2a_card.py``; push-notification URLs are checked by ``a2a_push.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import time
from typing import Any
from urllib.parse import unquote

import aiohttp
from aiohttp import web

from proxy.adapters import jsonrpc
from proxy.adapters.a2a_action import (
    JSONRPC_METHODS,
    PROTOCOL,
    SENDS,
    V03_METHODS,
    a2a_action,
    skill_of,
    without_query,
)
from proxy.adapters.a2a_card import CardError, CardRewriter, origin_of
from proxy.adapters.a2a_push import push_url_problem, push_urls
from proxy.adapters.http_guard import OriginPolicy, forward_headers
from proxy.adapters.relay import (
    DROP_DOWNSTREAM,
    DROP_UPSTREAM,
    Refusal,
    caller_session,
    deliver,
    failure_kind,
    failure_refusal,
    is_id,
    parse_body,
    read_answer,
    read_body,
    relay_stream,
    resolve_caller,
    send_upstream,
)
from proxy.adapters.sse import event_bytes
from proxy.core import injection
from proxy.core.action import Action, Decision, Effect, Verdict
from proxy.core.checker import Checker
from proxy.core.identity import Caller, IdentityError, IdentityResolver
from proxy.core.protection import INLINE_SCAN_BYTES, outcome_record
from proxy.core.sessions import Session
from proxy.credentials import CredentialBroker, CredentialError, IssuedCredential, KeyRing
from proxy.settings import Settings
from proxy.state.base import Store, StoreUnavailable
from proxy.telemetry import Metrics

log = logging.getLogger(__name__)

CARD_PATHS = frozenset({"/.well-known/agent-card.json", "/.well-known/agent.json"})

STREAMS = frozenset({"SendStreamingMessage", "SubscribeToTask"})
PUSH_METHODS = frozenset(
    {
        "CreateTaskPushNotificationConfig",
        "GetTaskPushNotificationConfig",
        "ListTaskPushNotificationConfigs",
        "DeleteTaskPushNotificationConfig",
    }
)
TASK_METHODS = PUSH_METHODS | {"GetTask", "CancelTask", "SubscribeToTask"}

# HTTP+JSON paths (1.0; a /{tenant}, a 0.3 /v1 or any base prefix precedes them) -> method per HTTP verb.
_TASK = r"(?P<task>[^/:]+)"
REST_ROUTES: tuple[tuple[re.Pattern[str], dict[str, str]], ...] = tuple(
    (re.compile(rf"^(?P<prefix>.*?){path}$"), verbs)
    for path, verbs in (
        (r"/message:send", {"POST": "SendMessage"}),
        (r"/message:stream", {"POST": "SendStreamingMessage"}),
        (rf"/tasks/{_TASK}:cancel", {"POST": "CancelTask"}),
        (rf"/tasks/{_TASK}:subscribe", {"GET": "SubscribeToTask", "POST": "SubscribeToTask"}),
        (
            rf"/tasks/{_TASK}/pushNotificationConfigs/[^/]+",
            {"GET": "GetTaskPushNotificationConfig", "DELETE": "DeleteTaskPushNotificationConfig"},
        ),
        (
            rf"/tasks/{_TASK}/pushNotificationConfigs",
            {"POST": "CreateTaskPushNotificationConfig", "GET": "ListTaskPushNotificationConfigs"},
        ),
        (rf"/tasks/{_TASK}", {"GET": "GetTask"}),
        (r"/tasks", {"GET": "ListTasks"}),
        (r"/extendedAgentCard", {"GET": "GetExtendedAgentCard"}),
        (r"/v1/card", {"GET": "GetExtendedAgentCard"}),
    )
)
JSON_TYPES = frozenset({"application/json", "application/a2a+json"})
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
TASK_NOT_FOUND = -32001
TASK_KEY = "wicket:a2a:task:"
TASK_TTL = 7 * 86400.0
MAX_TASK_ID = 256


@dataclasses.dataclass(slots=True)
class A2ACall:
    """One parsed A2A request: its 1.0 method name, the binding and version the client spoke."""

    name: str
    rest: bool
    v03: bool  # the client spoke 0.3 (0.3 method names; on REST, no A2A-Version 1.x)
    params: dict[str, Any]
    task_id: str | None = None
    request_id: Any = None
    body: bytes | None = None  # forwarded as the original bytes


@dataclasses.dataclass(slots=True)
class _Exchange:
    """One forward in flight: who asked, what for, and the outcome the audit records."""

    call: A2ACall
    session: Session
    caller: Caller
    action: Action
    status: str = "success"
    detail: str | None = None
    claimed: set[str] = dataclasses.field(default_factory=set)
    scans: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # data-protection findings

    def failed(self, detail: str) -> None:
        self.status = "error"
        self.detail = detail


class A2AProxy:
    """Every path of one upstream A2A agent, served on Wicket's data port under the same paths."""

    def __init__(
        self,
        settings: Settings,
        *,
        checker: Checker,
        identity: IdentityResolver,
        store: Store,
        metrics: Metrics,
        client: aiohttp.ClientSession,
        credentials: CredentialBroker,
        keys: KeyRing,
    ) -> None:
        assert settings.a2a_upstream
        self._settings = settings
        self._upstream = settings.a2a_upstream
        self._origin = origin_of(settings.a2a_upstream)
        self._checker = checker
        self._identity = identity
        self._store = store
        self._metrics = metrics
        self._client = client
        self._credentials = credentials
        self._origins = OriginPolicy(settings.allowed_hosts, settings.allowed_origins)
        self._cards = CardRewriter(
            self._origin, keys, signatures=settings.a2a_card_signatures, oidc_issuer=settings.oidc_issuer
        )
        self._post_timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.connect_timeout, sock_read=settings.read_timeout or None
        )
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.connect_timeout, sock_read=settings.stream_idle_timeout or None
        )

    def routes(self) -> list[web.RouteDef]:
        """A catch-all: mounted after every route of Wicket's own, so it sees only the agent's paths."""
        return [web.route("*", "/{tail:.*}", self.handle)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        rest = _rest_route(request) is not None
        try:
            problem = self._origins.host_problem(request.headers.get("Host")) or self._origins.origin_problem(
                request.headers.get("Origin")
            )
            if problem is not None:
                raise Refusal(403, jsonrpc.INVALID_REQUEST, f"Forbidden: {problem}.", reason="origin")
            if request.method == "GET" and request.path in CARD_PATHS:
                return await self._public_card(request)
            call = await self._parse(request)
            rest = call.rest
            try:
                return await self._call(request, call)
            except Refusal as refusal:
                if refusal.request_id is None and is_id(call.request_id):
                    refusal.request_id = call.request_id
                raise
        except Refusal as refusal:
            return self._refusal_response(refusal, rest=rest)
        except StoreUnavailable as exc:
            message = f"Wicket's state store is unavailable ({exc}); nothing was forwarded. Retry shortly."
            return self._refusal_response(Refusal(503, jsonrpc.STORE_UNAVAILABLE, message, reason="store"), rest=rest)

    # -- parsing the wire into one call ------------------------------------------------------

    async def _parse(self, request: web.Request) -> A2ACall:
        route = _rest_route(request)
        if route is not None:
            name, task = route
            params: dict[str, Any] = {}
            raw: bytes | None = None
            if request.method in ("POST", "PUT", "PATCH"):  # GET and DELETE bodies are neither read nor forwarded
                params, raw = await self._json_body(request, allow_empty=True)
            version = request.headers.get("A2A-Version") or request.query.get("A2A-Version") or "0.3"
            task_id = unquote(task) if task is not None else None
            v03 = not version.startswith("1")
            return A2ACall(name, rest=True, v03=v03, params=params, task_id=task_id, body=raw)
        if request.method != "POST":
            raise Refusal(404, jsonrpc.METHOD_NOT_FOUND, f"{request.method} {request.path} is not an A2A operation.")
        message, raw = await self._json_body(request, allow_empty=False)
        if message.get("jsonrpc") != "2.0" or not isinstance(message.get("method"), str) or "id" not in message:
            raise Refusal(400, jsonrpc.INVALID_REQUEST, "Invalid Request: expected one JSON-RPC 2.0 request.")
        request_id = message["id"]
        method = message["method"]
        name = JSONRPC_METHODS.get(method)
        if name is None:
            raise Refusal(
                200,
                jsonrpc.METHOD_NOT_FOUND,
                f"Method not found: '{method}' is not an A2A method; Wicket did not forward it.",
                reason="unknown_method",
                request_id=request_id if is_id(request_id) else None,
            )
        params = message.get("params")
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise Refusal(
                400, jsonrpc.INVALID_REQUEST, "Invalid Request: params must be an object.", request_id=request_id
            )
        call = A2ACall(name, rest=False, v03=method in V03_METHODS, params=params, request_id=request_id, body=raw)
        if name in TASK_METHODS:
            task = params.get("taskId") if name in PUSH_METHODS and "taskId" in params else params.get("id")
            call.task_id = task if isinstance(task, str) else ""
        return call

    async def _json_body(self, request: web.Request, *, allow_empty: bool) -> tuple[dict[str, Any], bytes | None]:
        """The body's JSON object and its original bytes (None when empty and allowed to be)."""
        body = await read_body(request, self._settings.max_body_bytes)
        if not body.strip() and allow_empty:
            return {}, None
        if request.content_type not in JSON_TYPES:
            raise Refusal(415, jsonrpc.INVALID_REQUEST, "Content-Type must be application/json.", reason="content_type")
        message = parse_body(body)
        if not isinstance(message, dict):
            raise Refusal(400, jsonrpc.INVALID_REQUEST, "Invalid Request: expected one JSON object.", reason="batch")
        return message, body

    # -- deciding ------------------------------------------------------------------------------

    async def _call(self, request: web.Request, call: A2ACall) -> web.StreamResponse:
        caller = await resolve_caller(self._identity, self._checker, self._settings, request, PROTOCOL)
        session = await caller_session(self._identity, self._checker, caller, PROTOCOL)
        try:
            self._identity.admit(caller, session)
        except IdentityError as exc:
            raise Refusal(exc.status, jsonrpc.UNAUTHORIZED, exc.reason, reason="revoked") from None
        policy = self._checker.policy
        message = call.params.get("message") if call.name in SENDS else None
        message = message if isinstance(message, dict) else {}
        skill = skill_of(message, policy)
        if call.name in SENDS and isinstance(message.get("taskId"), str):
            call.task_id = message["taskId"]  # continuing a task: it must be the caller's own
        urls = push_urls(call.params) if call.name == "CreateTaskPushNotificationConfig" else []
        if call.name in SENDS:
            urls = push_urls(call.params.get("configuration"))
        action = a2a_action(
            policy,
            call.name,
            message=message,
            skill=skill,
            task_id=call.task_id,
            push_urls=urls,
            agent_id=caller.agent_id,
            session_id=session.session_id,
            upstream=self._upstream,
            delegation=caller.delegation,
        )
        if call.task_id is not None and not await self._owns(call.task_id, caller, session):
            await self._checker.refuse(action, session.session_id, f"Task '{call.task_id[:80]}' is not this caller's.")
            return _task_not_found(call)
        if call.name in SENDS and skill is None and policy.a2a_require_skill:
            reason = f"The policy requires every message to name a skill in message.metadata['{policy.a2a_skill_key}']."
            return _denial(call, await self._checker.refuse(action, session.session_id, reason))
        text = action.arguments.get("text")
        if text and policy.a2a_scan_messages:
            findings = await self._checker.scan_untrusted([text])
            if findings:
                reason = (
                    f"The message looks like prompt injection ({injection.describe(findings)}); the agent never saw it."
                )
                return _denial(call, await self._checker.refuse(action, session.session_id, reason))
        for url in urls:
            problem = await push_url_problem(url, policy.a2a_push_allowed_hosts)
            if problem is not None:
                reason = f"Push notification url refused: {problem}."
                return _denial(call, await self._checker.refuse(action, session.session_id, reason))
        decision = await self._checker.check(action, session)
        if not decision.allowed:
            return _denial(call, decision)
        for url in urls:
            await self._checker.audit_event(
                {
                    "event": "push_config",
                    "protocol": PROTOCOL,
                    "decision_id": decision.decision_id,
                    "agent_id": caller.agent_id,
                    "session_id": session.session_id,
                    "action": action.label,
                    "url": without_query(url),
                }
            )
        return await self._forward(request, _Exchange(call, session, caller, action), action, decision)

    # -- task ownership ---------------------------------------------------------------------------

    async def _owns(self, task_id: str, caller: Caller, session: Session) -> bool:
        """A task belongs to the session that created it and to that session's agent identity;
        a task Wicket never saw created belongs to nobody (so it is never forwarded)."""
        if not task_id or len(task_id) > MAX_TASK_ID:
            return False
        raw = await self._store.get(TASK_KEY + task_id)
        return raw is not None and _owner_admits(jsonrpc.loads(raw), caller, session)

    async def _claim(self, task_id: Any, exchange: _Exchange) -> None:
        if not isinstance(task_id, str) or not task_id or len(task_id) > MAX_TASK_ID or task_id in exchange.claimed:
            return
        exchange.claimed.add(task_id)
        owner = {
            "session": exchange.session.session_id,
            "agent": exchange.caller.agent_id,
            "anonymous": exchange.caller.anonymous,
        }
        # First writer wins: an id the agent reuses never changes hands.
        await self._store.compare_and_set(TASK_KEY + task_id, None, jsonrpc.dumps(owner), ttl=TASK_TTL)

    # -- forwarding -------------------------------------------------------------------------------

    async def _forward(
        self, request: web.Request, exchange: _Exchange, action: Action, decision: Decision
    ) -> web.StreamResponse:
        headers = forward_headers(request.headers, DROP_UPSTREAM)
        timeout = self._stream_timeout if exchange.call.name in STREAMS else self._post_timeout
        issued: list[IssuedCredential] = []
        started = time.perf_counter()
        try:
            response = await send_upstream(
                self._client,
                request.method,
                self._origin + request.raw_path,
                body=exchange.call.body,
                headers=headers,
                limits=timeout,
                retry=decision.effect is Effect.READ,
                credential=lambda: self._credential(action, exchange),
                issued=issued,
                answer=lambda upstream: self._relay(request, upstream, exchange),
                metrics=self._metrics,
                protocol=PROTOCOL,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            kind = failure_kind(exc)
            exchange.failed(f"upstream {kind}: {exc.__class__.__name__}")
            self._metrics.upstream_errors.labels(PROTOCOL, kind).inc()
            refusal = failure_refusal(kind, "A2A agent", exchange.call.request_id)
            response = self._refusal_response(refusal, rest=exchange.call.rest)
        except Refusal as refusal:
            exchange.failed(refusal.message)
            refusal.request_id = exchange.call.request_id
            response = self._refusal_response(refusal, rest=exchange.call.rest)
        elapsed = time.perf_counter() - started
        self._metrics.upstream_seconds.labels(PROTOCOL).observe(elapsed)
        await deliver(request, response)  # the decision was audited before the forward; the outcome may follow
        await self._checker.outcome(
            action,
            decision,
            status=exchange.status,
            duration=elapsed,
            detail=exchange.detail,
            credential=issued[-1].audit() if issued else None,
            data=outcome_record(exchange.scans),
        )
        return response

    async def _credential(self, action: Action, exchange: _Exchange) -> IssuedCredential:
        try:
            return await self._credentials.issue(action, exchange.session, inbound_token=exchange.caller.inbound_token)
        except CredentialError as exc:
            self._metrics.upstream_errors.labels(PROTOCOL, "credential").inc()
            message = f"Wicket could not obtain an upstream credential: {exc.reason}. Nothing was executed."
            raise Refusal(502, jsonrpc.UPSTREAM_UNAVAILABLE, message, reason="credential") from None

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse, exchange: _Exchange
    ) -> web.StreamResponse:
        if upstream.status >= 400:
            exchange.failed(f"upstream HTTP {upstream.status}")
        if upstream.content_type == "text/event-stream":
            return await relay_stream(
                request,
                upstream,
                lambda text: self._screen(text, exchange),
                exchange.failed,
                metrics=self._metrics,
                protocol=PROTOCOL,
            )
        headers = forward_headers(upstream.headers, DROP_DOWNSTREAM)
        payload = await read_answer(
            upstream, self._settings.max_response_bytes, metrics=self._metrics, protocol=PROTOCOL
        )
        if payload and upstream.content_type in JSON_TYPES:
            replacement = await self._screen(payload, exchange, public_base=self._public_base(request))
            if replacement is not None:
                payload = replacement
                headers.popall("ETag", None)
        return web.Response(status=upstream.status, body=payload, headers=headers)

    # -- screening answers -----------------------------------------------------------------------

    async def _screen(self, text: str | bytes, exchange: _Exchange, public_base: str | None = None) -> bytes | None:
        """Claim created tasks, hide others' tasks from a list, rewrite an extended card, and screen
        the parts of the messages and artifacts in the answer for secrets and personal data."""
        try:
            message = jsonrpc.loads(text)
        except jsonrpc.NestingTooDeep:
            # Valid JSON that cannot be screened (or walked safely) is not relayed.
            exchange.failed(f"upstream message nested deeper than {jsonrpc.MAX_DEPTH} levels")
            self._metrics.upstream_errors.labels(PROTOCOL, "too_deep").inc()
            reason = f"The agent's answer nests deeper than {jsonrpc.MAX_DEPTH} levels; Wicket did not relay it."
            return _withheld(exchange.call, 502, jsonrpc.INTERNAL_ERROR, reason)
        except ValueError:
            return None
        if not isinstance(message, dict):
            return None
        call = exchange.call
        if call.rest:
            result: Any = message
            if "error" in message and len(message) == 1:
                exchange.failed("A2A error")
                return None
        else:
            if "error" in message:
                error = message["error"]
                exchange.failed(f"JSON-RPC error {error.get('code')}" if isinstance(error, dict) else "JSON-RPC error")
                return None
            result = message.get("result")
        if not isinstance(result, dict):
            return None
        changed: dict[str, Any] | None = None
        if call.name in SENDS:
            for task_id in _created_tasks(result):
                await self._claim(task_id, exchange)
        elif call.name == "ListTasks":
            kept = await self._owned_tasks(result, exchange)
            if kept is not None:
                changed = {**result, "tasks": kept}
                if "totalSize" in changed:
                    changed["totalSize"] = len(kept)
        elif call.name == "GetExtendedAgentCard" and public_base is not None:
            try:
                card = self._cards.rewrite(result, public_base)
            except CardError as exc:
                exchange.failed(str(exc))
                raise Refusal(
                    502, jsonrpc.UPSTREAM_UNAVAILABLE, f"Wicket cannot serve the agent card: {exc}."
                ) from None
            return jsonrpc.dumps(card if call.rest else {**message, "result": card})
        masked = await self._protect(changed or result, exchange, len(text))
        if isinstance(masked, bytes):
            return masked
        if masked is not None:
            changed = masked
        if changed is None:
            return None
        return jsonrpc.dumps(changed if call.rest else {**message, "result": changed})

    async def _protect(self, result: dict[str, Any], exchange: _Exchange, size: int) -> dict[str, Any] | bytes | None:
        """Data protection of an answer, as an MCP tool result gets it: the masked answer (None: unchanged).
        Under ``deny`` a unary answer becomes Wicket's refusal, a stream event Wicket's error (the bytes)."""
        checker = self._checker
        if size > INLINE_SCAN_BYTES:  # a long answer is scanned off the event loop
            found, masked = await asyncio.to_thread(checker.screen_result, exchange.action, "a2a", result)
        else:
            found, masked = checker.screen_result(exchange.action, "a2a", result)
        if not found:
            return None
        exchange.scans.append(found.record())
        if not found.denied:
            return masked
        why = found.incomplete or f"it carries {found.summary()}"
        reason = f"Wicket withheld the agent's answer: {why} (policy data_protection results: deny)."
        if exchange.call.name not in STREAMS:
            raise Refusal(403 if exchange.call.rest else 200, jsonrpc.DENIED, reason, reason="data_protection")
        exchange.failed("answer withheld by data protection")
        return _withheld(exchange.call, 403, jsonrpc.DENIED, reason)

    async def _owned_tasks(self, result: dict[str, Any], exchange: _Exchange) -> list[Any] | None:
        tasks = result.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            return None
        ids = [t.get("id") if isinstance(t, dict) else None for t in tasks]
        keys = [TASK_KEY + i if isinstance(i, str) and 0 < len(i) <= MAX_TASK_ID else "" for i in ids]
        owners = await self._store.get_many([k for k in keys if k])
        by_key = dict(zip([k for k in keys if k], owners, strict=True))
        kept = []
        for task, key in zip(tasks, keys, strict=True):
            raw = by_key.get(key) if key else None
            if raw is not None and _owner_admits(jsonrpc.loads(raw), exchange.caller, exchange.session):
                kept.append(task)
        return None if len(kept) == len(tasks) else kept

    # -- the public agent card ---------------------------------------------------------------------

    async def _public_card(self, request: web.Request) -> web.Response:
        """The agent's card as Wicket serves it, under both well-known names (whichever the agent has);
        discovery, so no caller identity is needed."""
        headers = forward_headers(request.headers, DROP_UPSTREAM | {"if-none-match", "if-modified-since"})
        status, payload = 404, b""
        for path in (request.path, *sorted(CARD_PATHS - {request.path})):
            try:
                async with self._client.get(
                    self._origin + path, headers=headers, timeout=self._post_timeout, allow_redirects=False
                ) as upstream:
                    status = upstream.status
                    payload = await read_answer(
                        upstream, self._settings.max_response_bytes, metrics=self._metrics, protocol=PROTOCOL
                    )
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self._metrics.upstream_errors.labels(PROTOCOL, "unreachable").inc()
                message = f"The upstream A2A agent's card could not be fetched ({exc.__class__.__name__})."
                raise Refusal(502, jsonrpc.UPSTREAM_UNAVAILABLE, message, reason="upstream") from None
            if status != 404:
                break
        if status != 200:
            raise Refusal(
                status if status >= 400 else 502, jsonrpc.UPSTREAM_UNAVAILABLE, "The agent serves no card here."
            )
        try:
            card = jsonrpc.loads(payload)
            if not isinstance(card, dict):
                raise ValueError("not an object")
            rewritten = self._cards.rewrite(card, self._public_base(request))
        except (ValueError, CardError) as exc:
            raise Refusal(
                502, jsonrpc.UPSTREAM_UNAVAILABLE, f"Wicket cannot serve the agent card: {exc}.", reason="card"
            ) from None
        return web.Response(body=jsonrpc.dumps(rewritten), content_type="application/json")

    def _public_base(self, request: web.Request) -> str:
        return (self._settings.public_url or f"{request.scheme}://{request.host}").rstrip("/")

    def _refusal_response(self, refusal: Refusal, *, rest: bool) -> web.Response:
        self._metrics.rejections.labels(refusal.reason).inc()
        headers = None
        if refusal.status == 401:
            headers = {"WWW-Authenticate": refusal.challenge or 'Bearer realm="wicket"'}
        if rest:
            problem: dict[str, Any] = {
                "type": "about:blank",
                "title": "Refused by Wicket",
                "status": refusal.status,
                "detail": refusal.message,
            }
            if refusal.data is not None:
                problem["decision"] = refusal.data
            return web.Response(
                status=refusal.status,
                body=jsonrpc.dumps(problem),
                content_type="application/problem+json",
                headers=headers,
            )
        data = refusal.data if refusal.data is not None else jsonrpc.NODATA
        return web.Response(
            status=refusal.status,
            body=jsonrpc.error_body(refusal.code, refusal.message, data, refusal.request_id),
            content_type="application/json",
            headers=headers,
        )


def _rest_route(request: web.Request) -> tuple[str, str | None] | None:
    """(1.0 method name, raw task id) for an HTTP+JSON path, or None for anything else."""
    path = request.raw_path.split("?", 1)[0]
    for pattern, verbs in REST_ROUTES:
        match = pattern.match(path)
        if match is not None:
            name = verbs.get(request.method)
            if name is None:
                return None
            return name, match.groupdict().get("task")
    return None


def _created_tasks(result: dict[str, Any]) -> list[Any]:
    """Task ids a send's answer (or one stream event) reveals: 1.0 wraps by kind, 0.3 tags ``kind``."""
    ids: list[Any] = []
    task = result.get("task")
    if isinstance(task, dict):
        ids.append(task.get("id"))
    for key in ("statusUpdate", "artifactUpdate", "message"):
        event = result.get(key)
        if isinstance(event, dict) and "taskId" in event:
            ids.append(event["taskId"])
    kind = result.get("kind")
    if kind == "task":
        ids.append(result.get("id"))
    elif kind in ("status-update", "artifact-update", "message") and "taskId" in result:
        ids.append(result["taskId"])
    return ids


def _owner_admits(owner: dict[str, Any], caller: Caller, session: Session) -> bool:
    if owner.get("session") == session.session_id:
        return True
    return not caller.anonymous and not owner.get("anonymous") and owner.get("agent") == caller.agent_id


def _error_info(reason: str, domain: str, metadata: dict[str, Any]) -> list[dict[str, Any]]:
    """A2A 1.0 error details: a google.rpc.ErrorInfo (string metadata) that a 1.x client exposes."""
    strings = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    return [{"@type": ERROR_INFO, "reason": reason, "domain": domain, "metadata": strings}]


def _withheld(call: A2ACall, status: int, code: int, reason: str) -> bytes:
    """What a caller gets in place of an answer (or one stream event) Wicket will not relay."""
    if call.rest:
        return jsonrpc.dumps({"type": "about:blank", "title": "Refused by Wicket", "status": status, "detail": reason})
    return jsonrpc.error_body(code, reason, request_id=call.request_id)


def _denial(call: A2ACall, decision: Decision) -> web.Response:
    """-32050 in the JSON-RPC shape of the client's version; on REST a problem+json body; both carry the record."""
    record = decision.record()
    pending = decision.verdict is Verdict.APPROVAL_REQUIRED
    verb = "needs approval" if pending else "was denied"
    message = f"Wicket: {call.name} {verb}. {decision.reason} (decision {decision.decision_id})"
    if call.rest:
        problem = {
            "type": "about:blank",
            "title": "Approval required by Wicket" if pending else "Denied by Wicket",
            "status": 403,
            "detail": message,
            "decision": record,
        }
        return web.Response(status=403, body=jsonrpc.dumps(problem), content_type="application/problem+json")
    reason = "WICKET_APPROVAL_REQUIRED" if pending else "WICKET_DENIED"
    data = record if call.v03 else _error_info(reason, "wicket", record)
    return _jsonrpc_answer(call, jsonrpc.error_body(jsonrpc.DENIED, message, data, call.request_id))


def _jsonrpc_answer(call: A2ACall, body: bytes) -> web.Response:
    """Wicket's own JSON-RPC answer; a streaming method gets it as the one event of an SSE stream,
    since a 0.3 client reads nothing but ``text/event-stream`` there."""
    if call.name in STREAMS:
        return web.Response(status=200, body=event_bytes(body), content_type="text/event-stream")
    return web.Response(status=200, body=body, content_type="application/json")


def _task_not_found(call: A2ACall) -> web.Response:
    """Exactly what the agent answers for a task that does not exist: another caller's task is not there."""
    if call.rest:
        error = {
            "code": 404,
            "status": "NOT_FOUND",
            "message": "Task not found",
            "details": _error_info("TASK_NOT_FOUND", "a2a-protocol.org", {}),
        }
        return web.Response(status=404, body=jsonrpc.dumps({"error": error}), content_type="application/json")
    data: Any = jsonrpc.NODATA if call.v03 else _error_info("TASK_NOT_FOUND", "a2a-protocol.org", {})
    return _jsonrpc_answer(call, jsonrpc.error_body(TASK_NOT_FOUND, "Task not found", data, call.request_id))
