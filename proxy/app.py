"""Wiring: build every component from Settings and a Policy, serve the data and admin ports."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from proxy.adapters.a2a import A2AProxy
from proxy.adapters.http_guard import OriginPolicy, WatchedConnection, admin_origin_policy, cors
from proxy.adapters.mcp import McpProxy
from proxy.adapters.relay import HEADER_LINE_LIMIT, UPSTREAM_HEADERS
from proxy.admin.api import AdminApi, host_check, store_faults
from proxy.admin.audit import AuditApi
from proxy.admin.check import CheckApi
from proxy.admin.control import ControlApi
from proxy.admin.health import HealthApi
from proxy.admin.introspect import IntrospectionApi
from proxy.admin.policy import PolicyApi
from proxy.admin.tools import ToolsApi
from proxy.audit.checkpoint import CheckpointingSink
from proxy.audit.feed import EventFeed, PublishingSink
from proxy.audit.sink import AuditSink, AuditUnavailable, FileAuditSink, open_sink
from proxy.core.approval_store import Approvals
from proxy.core.arguments import ArgumentAnalyser
from proxy.core.checker import Checker
from proxy.core.effects import EffectClassifier
from proxy.core.flows import FlowMemory
from proxy.core.guardian import FastGuard, GuardianRouter, ReviewTier
from proxy.core.identity import IdentityResolver
from proxy.core.policy import Policy, PolicyError, load_policy
from proxy.core.protection import Scanner
from proxy.core.revocations import RevocationList, SignedRevocations
from proxy.core.sessions import RecordSigner, SessionManager
from proxy.core.spot import SpotGuard
from proxy.core.tasks import TaskOwners
from proxy.core.toolpins import ToolPins
from proxy.credentials import (
    JWKS_PATH,
    CredentialBroker,
    CredentialConfigError,
    KeyRing,
    SigningKeyError,
    TokenExchanger,
    jwks_handler,
    passthrough_warnings,
)
from proxy.guardians.deep import DeepGuard, deep_from_env
from proxy.guardians.remote import RemoteTier, remote_tiers
from proxy.guardians.wire import KEY_ENV as GUARDIAN_KEY_ENV
from proxy.httpio import client_session
from proxy.identity_providers.federation import Federation
from proxy.identity_providers.oidc import OidcVerifier, oauth_routes
from proxy.settings import Settings
from proxy.state.base import Store, StoreUnavailable
from proxy.state.memory import MemoryStore
from proxy.state.redis import RedisStore
from proxy.telemetry import Metrics
from proxy.tracing import Tracing, TracingConfigError
from proxy.upstreams.reachability import UpstreamReachability
from proxy.upstreams.setup import bridge_for
from proxy.webhook import ApprovalWebhook

log = logging.getLogger("wicket")


class _PolicyUser(Protocol):
    def use_policy(self, policy: Policy) -> None: ...


@dataclass(frozen=True)
class PolicyReload:
    """What a reload did: ``applied``, or refused with the problems (``file:line: message``)."""

    applied: bool
    files: list[str]
    problems: list[str]
    mode: str | None = None


def restart_only_changes(running: Policy, new: Policy) -> list[str]:
    """Policy sections that are wired into connections and clients at start, so a reload cannot change them."""
    changed = []
    if running.credential_variants() != new.credential_variants():
        changed.append("credentials (upstreams[].credentials, tools.*.credentials)")
    if running.guardian.deep != new.guardian.deep:
        changed.append("guardian.deep")
    if running.approvals.webhook != new.approvals.webhook:
        changed.append("approvals.webhook")
    if running.trust != new.trust:
        changed.append("trust")
    return changed


REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", "redis+sentinel", "redis+cluster"})


def open_store(settings: Settings) -> Store:
    """The embedded memory store, or Redis shared by a fleet of replicas."""
    url = settings.store
    if url == "memory":
        return MemoryStore()
    if url.partition("://")[0].lower() not in REDIS_SCHEMES:
        raise SystemExit(
            "wicket: --store must be 'memory' or a redis://, rediss://, unix://, "
            "redis+sentinel:// or redis+cluster:// URL."
        )
    missing = [
        name
        for name, present in (
            ("WICKET_SESSION_KEY", settings.session_key_explicit),
            ("WICKET_SIGNING_KEY", bool(settings.environ.get("WICKET_SIGNING_KEY"))),
        )
        if not present
    ]
    if missing:
        # Replicas must verify each other's session records and credentials: random per-process keys cannot.
        raise SystemExit(f"wicket: a shared store needs the same keys on every replica: set {' and '.join(missing)}.")
    try:
        return RedisStore(url)
    except ValueError as exc:
        raise SystemExit(f"wicket: --store: {exc}") from None


def oidc_verifier(settings: Settings) -> OidcVerifier | None:
    """SPEC §3 step 2 from the --oidc-* flags; a half-configured issuer refuses to start."""
    if not settings.oidc_issuer:
        if settings.oidc_audience or settings.oidc_jwks_url:
            raise SystemExit("wicket: --oidc-audience and --oidc-jwks-url need --oidc-issuer.")
        return None
    if not settings.oidc_audience:
        raise SystemExit(
            "wicket: --oidc-issuer needs --oidc-audience: the aud your identity provider puts in agents' tokens."
        )
    try:
        return OidcVerifier(
            issuer=settings.oidc_issuer,
            audience=settings.oidc_audience,
            jwks_url=settings.oidc_jwks_url,
            agent_claim=settings.oidc_agent_claim,
        )
    except ValueError as exc:
        raise SystemExit(f"wicket: {exc}") from None


@dataclass
class Wicket:
    """One running sidecar: both listening sockets and everything behind them."""

    settings: Settings
    policy: Policy
    metrics: Metrics = field(default_factory=Metrics)

    def __post_init__(self) -> None:
        try:
            # Off (None, nothing imported) unless OTEL_* asks for traces.
            self.tracing: Tracing | None = Tracing.from_env(self.settings.environ)
        except TracingConfigError as exc:
            raise SystemExit(f"wicket: tracing: {exc}") from None
        self.store: Store = open_store(self.settings)
        # Every audit event written also goes to the live feed (/v1/events), never blocking the write.
        self.events = EventFeed(on_drop=self.metrics.event_feed_dropped.inc)
        try:
            self.keys = KeyRing.from_env(self.settings.environ)
        except SigningKeyError as exc:
            raise SystemExit(f"wicket: {exc}") from None
        sink: AuditSink = open_sink(self.settings.audit_log, fsync=self.settings.audit_fsync)  # type: ignore[arg-type]
        self.checkpoints: CheckpointingSink | None = None
        if isinstance(sink, FileAuditSink):
            # The chain head is signed in the background and checked on start (proxy/audit/checkpoint.py).
            sink = self.checkpoints = CheckpointingSink(
                sink,
                self.keys,
                store=self.store,
                every=self.settings.audit_checkpoint_every,
                interval=self.settings.audit_checkpoint_seconds,
                on_checkpoint=self.metrics.audit_checkpoints.inc,
            )
        self.audit = PublishingSink(sink, self.events)
        self.signer = RecordSigner(self.settings.session_key)
        self.sessions = SessionManager(self.store, self.signer)
        self.oidc = oidc_verifier(self.settings)
        self.revocations = RevocationList(on_new=self._revocations_in_force)
        self.signed_revocations = SignedRevocations(self.store, self.signer, self.revocations)
        try:
            self.federation = Federation(
                self.policy,
                own_issuer=self.settings.credential_issuer,
                own_keys=self.keys,
                revocations=self.revocations,
                environ=self.settings.environ,
            )
        except ValueError as exc:
            raise SystemExit(f"wicket: {exc}") from None
        self.identity = IdentityResolver(
            self.sessions, self.policy, oidc=self.oidc, revocations=self.revocations, federation=self.federation
        )
        classifier = EffectClassifier(
            overrides=self.policy.effect_override, is_trusted_upstream=self.policy.is_trusted_upstream
        )
        self.remote_tiers: tuple[RemoteTier, ...] = ()
        self.deep: ReviewTier | None = None
        webhook = self.policy.approvals.webhook
        self.webhook = ApprovalWebhook(webhook, self.metrics) if webhook is not None else None
        self.metrics.agent_limit = max(0, self.settings.metrics_agents)
        self.metrics.on_scrape(self._scrape_store)
        self.approvals = Approvals(
            self.store,
            self.signer,
            self.sessions,
            self.policy.approvals,
            audit=lambda event: self.checker.audit_event(event),
            metrics=self.metrics,
            notifier=self.webhook,
        )
        self.checker = Checker(
            policy=self.policy,
            classifier=classifier,
            analyser=ArgumentAnalyser(),
            router=self._router(),
            activity=self.store,
            audit=self.audit,
            metrics=self.metrics,
            approvals=self.approvals,
            flows=FlowMemory(self.store, self.signer),
            scanner=Scanner(hashlib.sha256(b"wicket fingerprint\x00" + self.settings.session_key).digest()),
        )
        self.toolpins = ToolPins(
            self.store,
            self.policy,
            signer=self.signer,
            audit=self.checker.audit_event,
            metrics=self.metrics,
            effect_of=lambda name, upstream, hints, trusted: classifier.tool_effect(
                name, upstream, hints, trusted=trusted
            ),
        )
        try:
            needs_exchange = any(s.mode == "exchange" for _, _, s in self.policy.credential_variants())
            self.exchanger: TokenExchanger | None = TokenExchanger() if needs_exchange else None
            self.credentials = CredentialBroker(
                self.policy,
                self.keys,
                issuer=self.settings.credential_issuer,
                env=self.settings.environ,
                exchange=self.exchanger,
                agent_name=self.settings.agent_name,
                own_secrets={
                    "WICKET_ADMIN_TOKEN": self.settings.admin_token,
                    "WICKET_SESSION_KEY": self.settings.session_key,
                    GUARDIAN_KEY_ENV: self.settings.environ.get(GUARDIAN_KEY_ENV),
                },
            )
        except (SigningKeyError, CredentialConfigError) as exc:
            raise SystemExit(f"wicket: {exc}") from None
        for warning in passthrough_warnings(self.policy):
            log.warning(warning)
        self._resync: asyncio.Task[None] | None = None
        self._policy_users: list[_PolicyUser] = [
            self.identity,
            self.checker,
            self.toolpins,
            self.credentials,
            self.federation,
        ]
        self._reload_lock = asyncio.Lock()
        self._runners: list[web.AppRunner] = []
        self._listeners: list[asyncio.Server] = []
        self._client: aiohttp.ClientSession | None = None
        self._stream_client: aiohttp.ClientSession | None = None
        self._a2a_client: aiohttp.ClientSession | None = None
        # stdio and legacy SSE upstreams: the proxy forwards to this bridge, which runs the real servers.
        self.bridge = bridge_for(self.settings, self.metrics, self.policy.upstream_env(self.settings.upstream))
        self.metrics.upstream_info.labels(self.settings.upstream, self.settings.upstream_transport).set(1)
        self.health = HealthApi(
            audit=self.audit, store=self.store, metrics=self.metrics, upstream=UpstreamReachability(self.settings)
        )
        self.data_port = 0
        self.admin_port = 0
        self.health_port = 0

    def _router(self) -> GuardianRouter:
        """Fast always in process; Spot and Deep in process, or at the guardian service with --guardian-url."""
        g = self.policy.guardian
        spot: ReviewTier | None = SpotGuard(g.spot)
        if self.settings.guardian_url:
            # Only the service holds the LLM key. No WICKET_GUARDIAN_KEY: SystemExit before any port opens.
            spot, self.deep = self.remote_tiers = remote_tiers(
                self.settings.guardian_url,
                self.settings.environ,
                client_id=self.settings.guardian_client_id or socket.gethostname(),
                spot_timeout=g.spot_timeout,
                deep_timeout=g.deep_timeout,
            )
        else:
            self.deep = deep_from_env(self.policy, self.settings.environ)
        return GuardianRouter(
            FastGuard(self.policy),
            spot=spot,
            deep=self.deep,
            spot_timeout=g.spot_timeout,
            deep_timeout=g.deep_timeout,
            breaker_failures=g.breaker_failures,
            breaker_cooldown=g.breaker_cooldown_seconds,
            metrics=self.metrics,
        )

    def _client_session(self, *, bridged: bool = True, pool: int | None = None) -> aiohttp.ClientSession:
        connector: aiohttp.BaseConnector
        if bridged and self.bridge is not None:
            # The upstream URL only names the server; every request goes to the bridge's private socket.
            # No pool limit: each session holds a GET stream, and the bridge caps sessions itself.
            connector = aiohttp.UnixConnector(
                self.bridge.socket_path, limit=0, keepalive_timeout=self.settings.upstream_keepalive
            )
        else:
            connector = aiohttp.TCPConnector(
                limit=self.settings.upstream_pool_size if pool is None else pool,
                keepalive_timeout=self.settings.upstream_keepalive,
                enable_cleanup_closed=True,
            )
        return client_session(
            connector=connector,
            auto_decompress=False,
            headers=UPSTREAM_HEADERS,
            skip_auto_headers=("User-Agent",),
            max_line_size=HEADER_LINE_LIMIT,
            max_field_size=HEADER_LINE_LIMIT,
        )

    def data_app(self) -> web.Application:
        assert self._client is not None
        # The body limit is enforced by the adapter (413 with a JSON-RPC error); aiohttp's
        # own limit is kept just above it as a backstop.
        app = web.Application(
            client_max_size=self.settings.max_body_bytes + 1,
            middlewares=[*self._tracing_middleware()],
        )
        # Every answer's CORS headers are Wicket's own, never the upstream's.
        app.on_response_prepare.append(cors(OriginPolicy(self.settings.allowed_hosts, self.settings.allowed_origins)))
        if self.settings.upstream:
            proxy = McpProxy(
                self.settings,
                checker=self.checker,
                identity=self.identity,
                sessions=self.sessions,
                metrics=self.metrics,
                client=self._client,
                stream_client=self._stream_client,
                credentials=self.credentials,
                toolpins=self.toolpins,
                tasks=TaskOwners(self.store, self.signer),
            )
            app.add_routes(proxy.routes())
        app.router.add_get(JWKS_PATH, jwks_handler(self.keys))
        if self.settings.oidc_issuer:
            public = self.settings.public_url
            app.add_routes(oauth_routes(public.rstrip("/") + "/mcp" if public else None, self.settings.oidc_issuer))
        if self.settings.a2a_upstream:
            assert self._a2a_client is not None
            a2a = A2AProxy(
                self.settings,
                checker=self.checker,
                identity=self.identity,
                store=self.store,
                metrics=self.metrics,
                client=self._a2a_client,
                credentials=self.credentials,
                keys=self.keys,
            )
            app.add_routes(a2a.routes())  # a catch-all for the agent's paths: last, after Wicket's own
        return app

    def admin_app(self) -> web.Application:
        api = AdminApi(
            admin_token=self.settings.admin_token,
            policy=self.policy,
            sessions=self.sessions,
            checker=self.checker,
            audit=self.audit,
            store=self.store,
            revocations=self.signed_revocations,
            metrics=self.metrics,
        )
        control = ControlApi(
            admin_token=self.settings.admin_token,
            policy=self.policy,
            sessions=self.sessions,
            approvals=self.approvals,
            store=self.store,
            audit=self.audit,
            audit_path=self.audit.path,
            feed=self.events,
            revocations=self.revocations,
        )
        self._policy_users += [api, control]
        check = CheckApi(identity=self.identity, checker=self.checker, store=self.store, signer=self.signer)
        hosts = admin_origin_policy(self.settings.admin_address[0], self.settings.admin_allowed_hosts)
        app = web.Application(
            client_max_size=64 * 1024,
            middlewares=[host_check(hosts, self.metrics), *self._tracing_middleware(), store_faults],
        )
        app.add_routes(self.health.routes())
        app.add_routes(api.routes())
        app.add_routes(control.routes())
        tools = ToolsApi(admin_token=self.settings.admin_token, toolpins=self.toolpins, upstream=self.settings.upstream)
        app.add_routes(tools.routes())
        app.add_routes(check.routes())
        policy_api = PolicyApi(
            admin_token=self.settings.admin_token, reload=self.reload_policy, audit_path=self.audit.path
        )
        app.add_routes(policy_api.routes())
        introspection = IntrospectionApi(
            clients=lambda: self.policy.introspection_clients,
            environ=self.settings.environ,
            keys=self.keys,
            issuer=self.settings.credential_issuer,
            revocations=self.revocations,
        )
        app.add_routes(introspection.routes())
        audit = AuditApi(
            admin_token=self.settings.admin_token,
            checkpoints=self.checkpoints,
            checker=self.checker,
            metrics=self.metrics,
        )
        app.add_routes(audit.routes())
        app.router.add_get(JWKS_PATH, jwks_handler(self.keys))
        return app

    def health_app(self) -> web.Application:
        """The health listener: probes and scrapes only, nothing that reads or changes state."""
        app = web.Application(client_max_size=1024)
        app.add_routes(self.health.routes())
        return app

    async def reload_policy(self) -> PolicyReload:
        """Re-read the policy files and put the result in force, or keep the running policy and say why.

        SIGHUP and ``POST /v1/policy/reload`` both land here; either way the attempt is audited.
        Calls already past the checker finish under the policy they were decided by.
        """
        async with self._reload_lock:
            files = list(self.settings.policy_files)
            try:
                policy = await asyncio.to_thread(load_policy, files)
            except PolicyError as exc:
                result = PolicyReload(False, files, [str(issue) for issue in exc.issues])
            else:
                blocked = restart_only_changes(self.policy, policy)
                if blocked:
                    result = PolicyReload(
                        False, files, [f"{what} changed: restart Wicket to apply it" for what in blocked]
                    )
                else:
                    self.policy = policy
                    for user in self._policy_users:
                        user.use_policy(policy)
                    result = PolicyReload(True, files, [], mode=policy.mode)
            self.metrics.policy_reloads.labels("applied" if result.applied else "refused").inc()
            event: dict[str, Any] = {"event": "policy_reload", "status": "applied" if result.applied else "refused"}
            event.update(files=files, problems=result.problems[:20])
            if result.applied:
                event["mode"] = result.mode
            try:
                await self.checker.audit_event(event)
            except AuditUnavailable:
                log.error("a policy reload (%s) could not be audited", event["status"])
            if result.applied:
                log.info("policy reloaded from %s (mode %s)", ", ".join(files), result.mode)
            else:
                log.error("policy reload refused; the running policy stays in force: %s", "; ".join(result.problems))
            return result

    async def start(self) -> None:
        if self.bridge is not None:
            await self.bridge.start()
        self._client = self._client_session()
        # Streams have a pool of their own (bounded by the per-agent stream limit), so reads never wait on them.
        self._stream_client = self._client if self.bridge is not None else self._client_session(pool=0)
        if self.settings.a2a_upstream:
            self._a2a_client = self._client_session(bridged=False) if self.bridge is not None else self._client
        await self._sync_revocations("start")
        await self.store.subscribe_revocations(self.revocations.add)
        self._resync = asyncio.create_task(self._resync_revocations())
        if not self.audit.healthy:
            log.error("audit log unavailable: %s; only reads will be allowed", self.audit.problem)
        if self.checkpoints is not None and (held := await self.checkpoints.start()) is not None:
            self.metrics.audit_held.set(1)
            await self.checker.integrity_failure("audit", f"audit log on hold: {held}")
        await self.federation.warm()
        if self.oidc is not None and not await self.oidc.warm():
            log.error("OIDC: the keys of %s are unreachable; agents' JWTs get 503 until they are", self.oidc.issuer)
        data_host, data_port = self.settings.listen_address
        admin_host, admin_port = self.settings.admin_address
        self.data_port = await self._serve(self.data_app(), data_host, data_port, data_port=True)
        self.admin_port = await self._serve(self.admin_app(), admin_host, admin_port)
        if (health := self.settings.health_address) is not None:
            self.health_port = await self._serve(self.health_app(), *health)

    async def _serve(self, app: web.Application, host: str, port: int, *, data_port: bool = False) -> int:
        # On the data port each connection is watched: a client gets request_timeout to send each
        # request's headers (slow clients hold nothing long), and a lost connection reaches the
        # request in progress at once (relay.follow_disconnects).
        deadline = self.settings.request_timeout if data_port else 0.0
        extra: dict[str, Any] = {"keepalive_timeout": deadline} if deadline else {}
        if data_port:  # header lines as long as the MCP servers' own HTTP stacks read (h11, Node: 16 KiB)
            extra |= {"max_line_size": HEADER_LINE_LIMIT, "max_field_size": HEADER_LINE_LIMIT}
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0, **extra)
        await runner.setup()
        self._runners.append(runner)
        if data_port:
            factory = runner.server
            assert factory is not None
            listener = await asyncio.get_running_loop().create_server(
                lambda: WatchedConnection(factory(), deadline), host, port, reuse_address=True
            )
            self._listeners.append(listener)
            sockets: Sequence[socket.socket] = listener.sockets
        else:
            site = web.TCPSite(runner, host, port, reuse_address=True)
            await site.start()
            sockets = getattr(site._server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    def _revocations_in_force(self, via: str, count: int) -> None:
        """Count revocations new to this replica by how they came; note when (are all replicas up to date?)."""
        self.metrics.revocations_in_force.labels(via).inc(count)
        if via != "start":
            self.metrics.revocation_in_force_at.set(time.time())

    async def _sync_revocations(self, via: str = "resync") -> bool:
        try:
            loaded = await self.signed_revocations.load(self.revocations.items())
        except StoreUnavailable as exc:
            log.error("revocations could not be loaded: %s", exc)
            return False
        self.revocations.update(loaded.items, via)
        if loaded.problem is not None:
            # Every revocation either side held stays in force (and was put back); the operator must know why.
            log.error("revocations: %s", loaded.problem)
            await self.checker.integrity_failure("store", f"revocations: {loaded.problem}")
        return True

    async def _resync_revocations(self) -> None:
        """Pub/sub makes revocations instant; this full reload covers any message a replica missed."""
        while True:
            await asyncio.sleep(self.settings.revocation_resync_seconds)
            await self._sync_revocations()

    async def _scrape_store(self) -> None:
        """Gauges a scrape reads from the store: is it up, and how long have approvals been waiting."""
        try:
            await self.store.ping()
            pending = await self.approvals.recent(pending_only=True)
        except StoreUnavailable:
            self.metrics.store_up.set(0)
            return
        self.metrics.store_up.set(1)
        now = time.time()
        self.metrics.approvals_pending.set(len(pending))
        self.metrics.approvals_oldest_pending.set(max((now - r.created_at for r in pending), default=0.0))

    def _tracing_middleware(self) -> list[Any]:
        """A server span per request (continuing the caller's traceparent) when tracing is on; none when off."""
        traced = self.tracing
        if traced is None:
            return []

        @web.middleware
        async def trace_request(request: web.Request, handler: Any) -> web.StreamResponse:
            if traced.skips(request.path):
                return await handler(request)
            with traced.serve(request.method, request.path, request.headers) as span:
                response = await handler(request)
                span.set_attribute("http.response.status_code", response.status)
                return response

        return [trace_request]

    async def stop(self) -> None:
        if self._resync is not None:
            self._resync.cancel()
            self._resync = None
        self.events.close()  # ends open /v1/events streams, so shutting the admin port down does not wait on them
        if self.bridge is not None:
            await self.bridge.stop()  # ends every child first, so the proxy's streams to it end too
        for listener in self._listeners:
            listener.close()  # no new connections; the runner's cleanup ends the open ones
        self._listeners.clear()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self._a2a_client is not None and self._a2a_client is not self._client:
            await self._a2a_client.close()
        self._a2a_client = None
        if self._stream_client is not None and self._stream_client is not self._client:
            await self._stream_client.close()
        self._stream_client = None
        if self._client is not None:
            await self._client.close()
            self._client = None
        for tier in self.remote_tiers:
            await tier.close()
        if self.oidc is not None:
            await self.oidc.close()
        await self.federation.close()
        if self.exchanger is not None:
            await self.exchanger.close()
        if isinstance(self.deep, DeepGuard):
            await self.deep.aclose()
        if self.webhook is not None:
            await self.webhook.close()
        await self.audit.close()
        if self.tracing is not None:
            await self.tracing.close()  # exports what is still buffered
        await self.store.close()
