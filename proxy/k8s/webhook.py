"""``wicket inject-webhook``: the mutating admission webhook over TLS, with health and metrics.

The API server calls ``POST /mutate``; the kubelet probes ``/healthz`` and ``/readyz``;
Prometheus scrapes ``/metrics``. Certificates rotated on disk (cert-manager, a renewed
Secret) are loaded for new connections without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
from pathlib import Path

import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, generate_latest

from proxy.k8s.injector import ConfigError, ReviewError, SidecarConfig, review
from proxy.settings import split_host_port

log = logging.getLogger("wicket.injector")

MAX_REVIEW_BYTES = 8 * 1024 * 1024  # a Pod is at most ~1.5 MB in etcd; leave room for the envelope
CERT_CHECK_SECONDS = 30.0


def load_config(path: str) -> SidecarConfig:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    return SidecarConfig.from_mapping(data)


class CertificateFiles:
    """The server's TLS context, reloaded when the certificate or key file changes."""

    def __init__(self, cert: str, key: str) -> None:
        self.cert, self.key = cert, key
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._stamp = self._read_stamp()
        self.context.load_cert_chain(cert, key)

    def _read_stamp(self) -> tuple[float, float]:
        return os.stat(self.cert).st_mtime, os.stat(self.key).st_mtime

    def reload_if_changed(self) -> bool:
        try:
            stamp = self._read_stamp()
            if stamp == self._stamp:
                return False
            self.context.load_cert_chain(self.cert, self.key)  # new handshakes use the new pair
        except (OSError, ssl.SSLError) as exc:
            log.error("TLS certificate reload failed, keeping the previous one: %s", exc)
            return False
        self._stamp = stamp
        log.info("TLS certificate reloaded from %s", self.cert)
        return True


class InjectorApp:
    def __init__(self, config: SidecarConfig) -> None:
        self.config = config
        self.registry = CollectorRegistry()
        self.reviews = Counter(
            "wicket_injector_reviews",
            "AdmissionReviews answered, by result (injected, unchanged, excluded, refused, invalid).",
            ["result"],
            registry=self.registry,
        )

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REVIEW_BYTES)
        app.add_routes(
            [
                web.post("/mutate", self.mutate),
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.healthz),
                web.get("/metrics", self.metrics),
            ]
        )
        return app

    async def mutate(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            self.reviews.labels("invalid").inc()
            return web.json_response({"error": "Content-Type must be application/json"}, status=415)
        try:
            outcome = review(json.loads(await request.read()), self.config)
        except (ValueError, UnicodeDecodeError) as exc:
            self.reviews.labels("invalid").inc()
            message = str(exc) if isinstance(exc, ReviewError) else "the body is not JSON"
            return web.json_response({"error": message}, status=400)
        self.reviews.labels(outcome.result).inc()
        if outcome.result == "refused":
            log.info(
                "refused a pod (request from %s): %s", request.remote, outcome.response["response"]["status"]["message"]
            )
        return web.json_response(outcome.response)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def serve_injector(
    listen: str, cert: str, key: str, config_path: str, *, stop: asyncio.Event | None = None
) -> None:
    """Serve until ``stop`` is set (the CLI sets it on SIGTERM/SIGINT)."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise SystemExit(f"wicket inject-webhook: {config_path}: {exc}") from None
    try:
        certificates = CertificateFiles(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise SystemExit(
            f"wicket inject-webhook: cannot load the TLS certificate {cert} and key {key}: {exc}"
        ) from None
    host, port = split_host_port(listen, 8443)
    runner = web.AppRunner(InjectorApp(config).app(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=certificates.context, reuse_address=True).start()
    except OSError as exc:
        await runner.cleanup()
        raise SystemExit(f"wicket inject-webhook: cannot listen on {listen}: {exc.strerror or exc}") from None
    log.info("sidecar injector listening on https://%s:%d/mutate (image %s)", host, port, config.image)
    stop = stop or asyncio.Event()
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CERT_CHECK_SECONDS):
                    await stop.wait()
            certificates.reload_if_changed()
    finally:
        await runner.cleanup()
