"""``/healthz``, ``/readyz`` and ``/metrics``: served on the admin port and on the health listener.

The health listener (``--health-listen``) carries only these three, so kubelet probes and
Prometheus reach them on the pod IP while ``/v1`` and ``/console`` stay on loopback.
"""

from __future__ import annotations

from aiohttp import web

from proxy.audit.sink import AuditSink
from proxy.state.base import Store, StoreUnavailable
from proxy.telemetry import Metrics
from proxy.upstreams.reachability import UpstreamReachability


class HealthApi:
    def __init__(self, *, audit: AuditSink, store: Store, metrics: Metrics, upstream: UpstreamReachability) -> None:
        self._audit = audit
        self._store = store
        self._metrics = metrics
        self._upstream = upstream

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/metrics", self.metrics),
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
        ]

    async def metrics(self, request: web.Request) -> web.Response:
        await self._metrics.refresh()
        body = self._metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def healthz(self, request: web.Request) -> web.Response:
        """Liveness: the process answers. Nothing else, so a down dependency never restarts the pod."""
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Readiness: the audit log is writable, the store answers, the upstream was reached."""
        checks: dict[str, str] = {}
        checks["audit"] = "ok" if self._audit.healthy else f"failing: {self._audit.problem}"
        try:
            await self._store.ping()
            checks["store"] = "ok"
        except StoreUnavailable as exc:
            checks["store"] = f"failing: {exc}"
        upstream = await self._upstream.problem()
        checks["upstream"] = "ok" if upstream is None else f"failing: {upstream}"
        ready = all(v == "ok" for v in checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)
