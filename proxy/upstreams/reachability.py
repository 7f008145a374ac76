"""Is the upstream there? Readiness waits for it once, as Envoy and Istio sidecars do."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from proxy.settings import Settings

DEFAULT_PORTS = {"http": 80, "https": 443}


class UpstreamReachability:
    """``/readyz`` is not ready until the upstream has been reached once since start.

    An HTTP upstream must accept a TCP connection. A stdio server counts as reached: its command
    was found at start (or Wicket would not have started) and its processes start per MCP
    session. Once reached, the answer stays ``ok``: a later
    outage shows as failing calls (-32051, 502), not as every sidecar leaving its Service.
    """

    def __init__(self, settings: Settings, *, timeout: float = 1.0) -> None:
        parts = urlsplit(settings.upstream)
        self._host = parts.hostname or ""
        try:
            self._port = parts.port or DEFAULT_PORTS.get(parts.scheme, 80)
        except ValueError:
            self._port = 0
        self._timeout = timeout
        self._reached = bool(settings.upstream_command)

    async def problem(self) -> str | None:
        """None once the upstream has been reached, else why it is not ready yet."""
        if self._reached:
            return None
        problem = await self._connect_problem()
        self._reached = problem is None
        return problem

    async def _connect_problem(self) -> str | None:
        if not self._host or not self._port:
            return "the upstream URL names no host and port"
        where = f"{self._host}:{self._port}"
        try:
            async with asyncio.timeout(self._timeout):
                _, writer = await asyncio.open_connection(self._host, self._port)
        except TimeoutError:
            return f"no answer from {where} within {self._timeout:g} s"
        except OSError as exc:
            return f"cannot connect to {where}: {exc.strerror or exc}"
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
        return None
