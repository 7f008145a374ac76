"""The central guardian service (``wicket guardian serve``): Spot and Deep for many sidecars.

Only this process holds the LLM key. Sidecars reach it with ``RemoteTier``; every call
carries a one-time HS256 JWT bound to the exact body (see ``wire.py``), and a call that
fails verification is answered 401 before anything is parsed or reviewed. A tier the
service does not have answers 503, a failing tier 502 and a slow one 504: the sidecar's
router treats all of them as an unavailable tier, so destructive and admin actions fail
closed there.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import time
from collections.abc import Mapping
from typing import Any, Final

from aiohttp import web

from proxy.core.action import Tier
from proxy.core.guardian import ReviewTier
from proxy.core.policy import Policy, PolicyError, load_policy
from proxy.core.spot import SpotGuard
from proxy.guardians.deep import deep_from_env
from proxy.guardians.wire import (
    ReplayCacheFull,
    TokenError,
    TokenVerifier,
    check_key,
    decode_review,
    dumps,
    encode_decision,
    guardian_key,
    loads,
)
from proxy.settings import MiB, split_host_port
from proxy.telemetry import Metrics

log = logging.getLogger("wicket.guardian")

MAX_BODY_BYTES: Final = 1 * MiB
DEFAULT_PORT: Final = 9400
_TIER_NAMES: Final = {"spot": Tier.SPOT, "deep": Tier.DEEP}
_LABEL: Final = {Tier.SPOT: "Spot Guard", Tier.DEEP: "Deep Guard"}


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.Response(
        status=status, body=dumps({"error": message}), content_type="application/json", headers=headers or None
    )


class GuardianService:
    """The request handlers; one instance per application."""

    def __init__(
        self,
        *,
        key: bytes,
        tiers: Mapping[Tier, ReviewTier | None],
        timeouts: Mapping[Tier, float],
        metrics: Metrics,
        replay_capacity: int = 100_000,
    ) -> None:
        self._verifier = TokenVerifier(key, capacity=replay_capacity)
        self._tiers = dict(tiers)
        self._timeouts = dict(timeouts)
        self._metrics = metrics

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/review", self.review),
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/metrics", self.metrics),
        ]

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        return web.json_response({tier.value: reviewer is not None for tier, reviewer in self._tiers.items()})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.exposition(), content_type="text/plain", charset="utf-8")

    def _reject(self, status: int, reason: str, message: str) -> web.Response:
        self._metrics.rejections.labels(reason).inc()
        if status == 401:
            return _error(401, message, **{"WWW-Authenticate": 'Bearer realm="wicket-guardian"'})
        return _error(status, message)

    async def review(self, request: web.Request) -> web.Response:
        # 1. Authenticate before reading or parsing anything the caller sent.
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return self._reject(401, "auth", "missing bearer token")
        try:
            claims = self._verifier.verify_token(token.strip())
        except TokenError as exc:
            return self._reject(401, "auth", str(exc))
        # 2. Read the bounded body and bind it to the token; only then burn the jti.
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return self._reject(413, "size", f"body exceeds {MAX_BODY_BYTES} bytes")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._reject(413, "size", f"body exceeds {MAX_BODY_BYTES} bytes")
        try:
            self._verifier.check_body(claims, body)
            self._verifier.remember(claims)
        except TokenError as exc:
            return self._reject(401, "auth", str(exc))
        except ReplayCacheFull as exc:
            return self._reject(503, "busy", str(exc))
        # 3. Decode strictly.
        if request.content_type != "application/json":
            return self._reject(415, "content_type", "Content-Type must be application/json")
        try:
            payload = loads(body)
            if not isinstance(payload, dict):
                raise ValueError("body must be a JSON object")
            tier_name = payload.pop("tier", None)
            if not isinstance(tier_name, str) or tier_name not in _TIER_NAMES:
                raise ValueError("tier must be 'spot' or 'deep'")
            action, session, effect, prior, context = decode_review(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            return self._reject(400, "malformed", f"malformed review request: {exc}")
        tier = _TIER_NAMES[tier_name]
        # 4. Review with the named in-process tier.
        reviewer = self._tiers.get(tier)
        if reviewer is None:
            self._count_error(tier, "unconfigured")
            hint = " (set ANTHROPIC_API_KEY on the guardian service)" if tier is Tier.DEEP else ""
            return _error(503, f"{_LABEL[tier]} is not available on this guardian service{hint}")
        timeout = self._timeouts[tier]
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                decision = await reviewer.review(action, session, effect, prior, context)
        except TimeoutError:
            self._count_error(tier, "timeout")
            return _error(504, f"{_LABEL[tier]} timed out after {timeout:g}s")
        except Exception as exc:  # report the class only: messages may quote provider errors
            log.warning("%s failed: %s", _LABEL[tier], exc.__class__.__name__)
            self._count_error(tier, "error")
            return _error(502, f"{_LABEL[tier]} failed ({exc.__class__.__name__})")
        self._metrics.tier_seconds.labels(tier.value).observe(time.perf_counter() - started)
        if decision.tier is not tier:
            self._count_error(tier, "error")
            return _error(502, f"{_LABEL[tier]} answered as tier {decision.tier.value!r}")
        self._metrics.tier_verdicts.labels(tier.value, decision.verdict.value).inc()
        log.debug("%s %s for %s from %s", _LABEL[tier], decision.verdict.value, action.label, claims["iss"])
        return web.Response(body=dumps({"decision": encode_decision(decision)}), content_type="application/json")

    def _count_error(self, tier: Tier, kind: str) -> None:
        self._metrics.tier_errors.labels(tier.value, kind).inc()


def build_guardian_app(
    *,
    key: bytes,
    policy: Policy,
    deep: ReviewTier | None,
    spot: ReviewTier | None = None,
    metrics: Metrics | None = None,
    replay_capacity: int = 100_000,
) -> web.Application:
    """The service's aiohttp application. Spot is always present (built from the policy if not given)."""
    check_key(key)
    settings = policy.guardian
    service = GuardianService(
        key=key,
        tiers={Tier.SPOT: spot if spot is not None else SpotGuard(settings.spot), Tier.DEEP: deep},
        timeouts={Tier.SPOT: settings.spot_timeout, Tier.DEEP: settings.deep_timeout},
        metrics=metrics if metrics is not None else Metrics(),
        replay_capacity=replay_capacity,
    )
    # aiohttp's own limit backs up the explicit 413 in the handler.
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.add_routes(service.routes())
    return app


async def _close(tier: Any) -> None:
    """Best effort: release a tier's HTTP client if it exposes a way to."""
    for name in ("aclose", "close"):
        closer = getattr(tier, name, None)
        if callable(closer):
            result = closer()
            if inspect.isawaitable(result):
                await result
            return


async def serve_guardian(
    listen: str, policy_files: list[str], env: Mapping[str, str], *, stop: asyncio.Event | None = None
) -> None:
    """Run the service until SIGINT/SIGTERM (or ``stop`` is set). Refuses to start without a good key."""
    try:
        key = guardian_key(env)
    except ValueError as exc:
        raise SystemExit(f"wicket guardian: refusing to start: {exc}") from None
    try:
        policy = load_policy(policy_files)
    except PolicyError as exc:
        raise SystemExit(f"wicket guardian: the policy is invalid:\n{exc}") from None
    try:
        host, port = split_host_port(listen, DEFAULT_PORT)
    except ValueError:
        raise SystemExit(f"wicket guardian: --listen must be HOST:PORT, got {listen!r}") from None
    deep = deep_from_env(policy, env)
    app = build_guardian_app(key=key, policy=policy, deep=deep)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise SystemExit(f"wicket guardian: cannot listen on {listen}: {exc.strerror or exc}") from None
        bound = runner.addresses[0][1] if runner.addresses else port
        log.info(
            "guardian service listening on %s:%d; Spot enabled; Deep %s",
            host,
            bound,
            f"enabled (model {getattr(deep, 'model', 'default')})"
            if deep is not None
            else "disabled (ANTHROPIC_API_KEY not set: deep reviews answer 503)",
        )
        done = stop if stop is not None else asyncio.Event()
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if stop is None:  # a caller-supplied event means the caller owns the lifecycle
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, done.set)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass
        try:
            await done.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            log.info("guardian service shutting down")
    finally:
        await runner.cleanup()
        if deep is not None:
            await _close(deep)
