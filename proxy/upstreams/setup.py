"""Which bridge, if any, a Wicket's settings call for."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

from proxy.settings import Settings
from proxy.telemetry import Metrics
from proxy.upstreams.bridge import UpstreamBridge
from proxy.upstreams.channel import ChannelFactory
from proxy.upstreams.legacy_sse import LegacySseFactory
from proxy.upstreams.stdio import StdioFactory, child_environment

TRANSPORTS = ("streamable-http", "sse", "stdio")


def bridge_for(settings: Settings, metrics: Metrics, policy_env: Sequence[str] = ()) -> UpstreamBridge | None:
    """The bridge for a stdio or legacy SSE upstream, None for Streamable HTTP.

    Misconfiguration stops Wicket before any port opens (``SystemExit`` with the reason).
    """
    transport = settings.upstream_transport
    command = settings.upstream_command
    if transport not in TRANSPORTS:
        raise SystemExit(f"wicket: unknown upstream transport {transport!r}: use one of {', '.join(TRANSPORTS)}.")
    if settings.upstream_name is not None and not command:
        raise SystemExit("wicket: --upstream-name names a stdio server (-- CMD ARG...); an URL names itself.")
    if command and transport != "stdio":
        raise SystemExit(f"wicket: a command to run is a stdio upstream, not {transport}.")
    if transport == "streamable-http":
        return None
    if settings.max_upstream_children < 1:
        raise SystemExit("wicket: --max-children must be at least 1.")
    if settings.upstream_idle_seconds <= 0:
        raise SystemExit("wicket: the upstream idle timeout must be positive.")
    factory: ChannelFactory
    if transport == "stdio":
        if not command:
            raise SystemExit("wicket: the stdio transport needs a command: wicket run [options] -- CMD ARG...")
        if shutil.which(command[0]) is None:
            raise SystemExit(f"wicket: cannot run the stdio MCP server: {command[0]!r} is not an executable program.")
        env = child_environment(os.environ, [*settings.stdio_env, *policy_env])
        factory = StdioFactory(command, env=env, max_message_bytes=settings.max_response_bytes)
    else:
        try:
            factory = LegacySseFactory(
                settings.upstream,
                connect_timeout=settings.connect_timeout,
                read_timeout=settings.read_timeout,
                max_message_bytes=settings.max_response_bytes,
            )
        except ValueError as exc:
            raise SystemExit(f"wicket: --upstream: {exc}") from None
    return UpstreamBridge(
        factory,
        max_channels=settings.max_upstream_children,
        idle_seconds=settings.upstream_idle_seconds,
        max_body_bytes=settings.max_body_bytes,
        metrics=metrics,
    )
