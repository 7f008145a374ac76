"""Runtime settings for one Wicket process: defaults here, flags and environment on top."""

from __future__ import annotations

import importlib.resources
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

MiB = 1024 * 1024


def split_host_port(value: str, default_port: int) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT``, ``[::1]:PORT`` or ``HOST`` -> (host, port)."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.lstrip(":")
        return host, int(port) if port else default_port
    host, sep, port = value.rpartition(":")
    if not sep:
        return value, default_port
    return host or "0.0.0.0", int(port)


@dataclass
class Settings:
    upstream: str
    listen: str = "0.0.0.0:8080"
    admin_listen: str = "127.0.0.1:9090"
    health_listen: str | None = None  # /healthz, /readyz, /metrics only, e.g. 0.0.0.0:9091 for kubelet and Prometheus
    policy_files: list[str] = field(default_factory=lambda: [bundled_policy("default")])
    audit_log: str = "./wicket-audit.jsonl"
    audit_fsync: str = "interval"
    audit_checkpoint_every: int = 1000  # sign the chain head after this many records ...
    audit_checkpoint_seconds: float = 5.0  # ... and this often while records arrive
    store: str = "memory"
    max_body_bytes: int = 4 * MiB
    max_response_bytes: int = 64 * MiB
    max_message_bytes: int = 16 * MiB  # one SSE event or JSON line of a streamed answer
    connect_timeout: float = 10.0
    request_timeout: float = 30.0  # a client's request headers and body must arrive within this (slow clients)
    read_timeout: float = 300.0
    stream_idle_timeout: float = 300.0  # a silent stream (GET, subscriptions/listen) is closed; 0 = never
    upstream_pool_size: int = 100
    revocation_resync_seconds: float = 5.0
    upstream_keepalive: float = 4.0  # below the 5 s idle timeout of uvicorn and Node servers
    upstream_transport: str = "streamable-http"  # or "sse" (2024-11-05 HTTP+SSE URL) or "stdio" (upstream_command)
    upstream_command: list[str] | None = None  # the stdio MCP server's argv; one child per MCP session
    upstream_name: str | None = None  # stdio: the server's name (http://stdio/NAME); None: program + argv digest
    metrics_agents: int = 0  # per-agent decision series for the first N agents (0: none; ids can be many)
    stdio_env: list[str] = field(default_factory=list)  # stdio: environment variables passed beyond the allowlist
    max_upstream_children: int = 32  # sse/stdio: live channels (children, SSE connections) at most
    upstream_idle_seconds: float = 1800.0  # sse/stdio: an MCP session idle this long is closed
    allowed_hosts: list[str] = field(default_factory=list)
    allowed_origins: list[str] = field(default_factory=list)
    admin_allowed_hosts: list[str] = field(default_factory=list)
    """Host names the admin port answers besides localhost and its own listen address."""
    session_key: bytes = b""
    admin_token: str | None = None
    agent_name: str | None = None  # the agent behind this Wicket, as delegation links name it (default: upstream URL)
    credential_issuer: str = "wicket"  # iss of minted upstream credentials: set it to Wicket's public base URL
    guardian_url: str | None = None  # central guardian service for Spot and Deep (None: in process)
    guardian_client_id: str = ""  # this sidecar's name (JWT iss) towards the guardian service
    oidc_issuer: str | None = None  # SPEC §3 step 2: accept agents' JWTs from this issuer
    oidc_audience: str | None = None  # the aud those JWTs must carry (required with oidc_issuer)
    oidc_jwks_url: str | None = None  # None: discovered from {issuer}/.well-known/openid-configuration
    oidc_agent_claim: str = "sub"
    a2a_upstream: str | None = None
    """The A2A agent Wicket fronts (its base URL); its routes are served under the same paths."""
    a2a_card_signatures: str = "resign"
    """A signed agent card is re-signed with Wicket's key (``resign``) or served unsigned (``drop``)."""
    public_url: str | None = None
    """The data port's external base URL (RFC 9728 ``resource``); None: each request's own scheme and Host."""
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    """Where ANTHROPIC_*, WICKET_DEEP_MODEL and WICKET_GUARDIAN_KEY are read (tests pass their own)."""

    def __post_init__(self) -> None:
        if self.upstream_command and not self.upstream:
            # A stdio server has no URL; this http name stands for it (audit, policy upstreams, credentials).
            from proxy.upstreams.stdio import stdio_label

            try:
                self.upstream = stdio_label(self.upstream_command, self.upstream_name)
            except ValueError as exc:
                raise SystemExit(f"wicket: --upstream-name: {exc}") from None
        self.session_key_explicit = bool(self.session_key or self.environ.get("WICKET_SESSION_KEY"))
        if not self.session_key:
            env = self.environ.get("WICKET_SESSION_KEY", "")
            self.session_key = env.encode() if env else secrets.token_bytes(32)
        if self.admin_token is None:
            self.admin_token = self.environ.get("WICKET_ADMIN_TOKEN") or None
        _require_length("WICKET_SESSION_KEY", len(self.session_key))
        if self.admin_token is not None:
            _require_length("WICKET_ADMIN_TOKEN", len(self.admin_token.encode()))

    @property
    def listen_address(self) -> tuple[str, int]:
        return split_host_port(self.listen, 8080)

    @property
    def admin_address(self) -> tuple[str, int]:
        return split_host_port(self.admin_listen, 9090)

    @property
    def health_address(self) -> tuple[str, int] | None:
        return split_host_port(self.health_listen, 9091) if self.health_listen else None


MIN_SECRET_BYTES = 16


def _require_length(name: str, length: int) -> None:
    """Refuse to start with a guessable secret: one line saying the minimum, no traceback."""
    if length < MIN_SECRET_BYTES:
        raise SystemExit(
            f"wicket: {name} must be at least {MIN_SECRET_BYTES} bytes (got {length}); "
            "generate one with: openssl rand -hex 32"
        )


def bundled_policy(name: str) -> str:
    """The path of a policy shipped inside the package (``default``, ``demo``), so an installed
    ``wicket`` finds its defaults from any directory; ``policies/`` in the repository links to them."""
    return str(importlib.resources.files("proxy").joinpath("data", f"{name}.yaml"))
