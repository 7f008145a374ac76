"""The ``wicket`` command line (SPEC §1)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from proxy import __version__
from proxy.settings import MiB, Settings, bundled_policy

DEFAULT_ADMIN_URL = "http://127.0.0.1:9090"


def _default_audit_log() -> str:
    """Where ``run`` writes the audit log and ``audit verify`` looks for it unless told otherwise."""
    return os.environ.get("WICKET_AUDIT_LOG") or "./wicket-audit.jsonl"


def _run_options(parser: argparse.ArgumentParser, *, listen: str, store: str) -> None:
    parser.add_argument("--listen", default=listen, metavar="HOST:PORT", help=f"data port (default {listen})")
    parser.add_argument(
        "--admin-listen", default="127.0.0.1:9090", metavar="HOST:PORT", help="admin port (default 127.0.0.1:9090)"
    )
    parser.add_argument(
        "--health-listen",
        default=os.environ.get("WICKET_HEALTH_LISTEN") or None,
        metavar="HOST:PORT",
        help="also serve /healthz, /readyz and /metrics (nothing else) here, e.g. 0.0.0.0:9091 for kubelet "
        "probes and Prometheus (env WICKET_HEALTH_LISTEN; default: off, they are always on the admin port)",
    )
    parser.add_argument(
        "--store",
        default=store,
        help=f"state store: memory, or a redis://, redis+sentinel:// or redis+cluster:// URL (default: {store})",
    )
    parser.add_argument(
        "--audit-log",
        default=_default_audit_log(),
        metavar="PATH",
        help="JSONL audit log; '-' for stdout (default: $WICKET_AUDIT_LOG or ./wicket-audit.jsonl)",
    )
    parser.add_argument(
        "--audit-fsync",
        choices=("always", "interval", "never"),
        default="interval",
        help="when audit lines are fsynced (default: interval, at most 1 s after writing)",
    )
    parser.add_argument("--allowed-host", action="append", default=[], metavar="HOST", help="extra Host to serve")
    parser.add_argument(
        "--allowed-origin", action="append", default=[], metavar="ORIGIN", help="extra browser Origin to accept"
    )
    parser.add_argument(
        "--admin-allowed-host",
        action="append",
        default=[],
        metavar="HOST",
        help="extra Host the admin port answers (localhost and its listen address always)",
    )
    parser.add_argument("--max-body-bytes", type=int, default=4 * MiB, help="request body limit (default 4 MiB)")
    parser.add_argument("--connect-timeout", type=float, default=10.0, help="upstream connect timeout, seconds")
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=30.0,
        help="a client's request body must arrive within this many seconds, else 408 (0: no limit)",
    )
    parser.add_argument(
        "--read-timeout",
        type=float,
        default=300.0,
        help="longest silence from the upstream while answering a POST, seconds (0: none)",
    )
    parser.add_argument(
        "--stream-idle-timeout",
        type=float,
        default=300.0,
        help="longest silence on a long-lived stream, GET or subscriptions/listen (default 300 s; 0: none)",
    )
    parser.add_argument(
        "--upstream-keepalive",
        type=float,
        default=4.0,
        help="seconds an idle upstream connection is kept for reuse; keep it below the upstream's own (default 4)",
    )
    parser.add_argument(
        "--credential-issuer",
        default=os.environ.get("WICKET_ISSUER", "wicket"),
        metavar="URL",
        help="iss of minted upstream credentials; upstreams fetch its /.well-known/jwks.json (env WICKET_ISSUER)",
    )
    parser.add_argument(
        "--guardian-url",
        metavar="URL",
        help="central guardian service (wicket guardian serve) for Spot and Deep; needs WICKET_GUARDIAN_KEY",
    )
    parser.add_argument(
        "--guardian-client-id", metavar="ID", help="this sidecar's name in guardian tokens (default: the hostname)"
    )
    parser.add_argument("--oidc-issuer", metavar="URL", help="accept agents' JWTs from this OIDC issuer")
    parser.add_argument(
        "--oidc-audience", metavar="AUD", help="the aud agents' JWTs must carry (required with --oidc-issuer)"
    )
    parser.add_argument("--oidc-jwks-url", metavar="URL", help="the issuer's JWKS (default: OIDC discovery)")
    parser.add_argument(
        "--oidc-agent-claim", default="sub", metavar="NAME", help="the JWT claim naming the agent (default: sub)"
    )
    parser.add_argument(
        "--public-url",
        metavar="URL",
        help="the data port's external base URL, e.g. https://mcp.example.com (default: each request's Host)",
    )
    parser.add_argument(
        "--metrics-agents",
        type=int,
        default=0,
        metavar="N",
        help="per-agent decision metrics for the first N agents seen (default 0: none; later agents count as 'other')",
    )
    parser.add_argument(
        "--agent-name",
        metavar="NAME",
        help="the agent behind this Wicket, as delegation chains name it (default: the upstream's URL)",
    )
    parser.add_argument(
        "--event-loop",
        default=os.environ.get("WICKET_EVENT_LOOP") or "auto",
        metavar="{auto,uvloop,asyncio}",
        help="uvloop (libuv, in C: less CPU per call) or asyncio (the standard library's); auto: uvloop "
        "where it is installed, which it is with Wicket on Linux and macOS (env WICKET_EVENT_LOOP; default auto)",
    )
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--log-format", default="text", choices=("text", "json"), help="json: one JSON object per line")


EVENT_LOOPS = ("auto", "uvloop", "asyncio")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def event_loop_factory(choice: str) -> LoopFactory | None:
    """The event loop ``--event-loop`` names (None: asyncio's own). uvloop runs the loop, its
    timers and the socket transports in C: Wicket's per-call CPU is lower on it, with the same
    asyncio API (docs/performance.md). Exits with a clear error for an unknown name, or for
    ``uvloop`` where it is not installed (it has no Windows build)."""
    if choice not in EVENT_LOOPS:
        raise SystemExit(
            f"wicket: --event-loop (or WICKET_EVENT_LOOP) must be one of {', '.join(EVENT_LOOPS)}, not {choice!r}"
        )
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SystemExit(
                "wicket: --event-loop uvloop, but uvloop is not installed (pip install uvloop; it has no "
                "Windows build): use --event-loop asyncio or auto"
            ) from None
        return None
    return uvloop.new_event_loop


def serve_on(factory: LoopFactory | None, main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run`` on the loop ``factory`` makes (None: asyncio's own)."""
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """Which loop runs (uvloop or asyncio), for the start-up log line."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wicket", description="Runtime authorization sidecar for AI agents.")
    parser.add_argument("--version", action="version", version=f"wicket {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="proxy an MCP server and/or an A2A agent",
        usage="wicket run [options] (--upstream URL | -- CMD [ARG ...] | --a2a-upstream URL)",
    )
    run.add_argument("--upstream", metavar="URL", help="the MCP server's URL (or run a stdio server: -- CMD ARG...)")
    run.add_argument(
        "--a2a-upstream",
        metavar="URL",
        help="the A2A agent's base URL: its card and routes are served under the same paths (alone or with --upstream)",
    )
    run.add_argument(
        "--a2a-card-signatures",
        choices=("resign", "drop"),
        default="resign",
        help="a signed agent card is re-signed with Wicket's key after the rewrite (default) or served unsigned",
    )
    run.add_argument(
        "--upstream-transport",
        choices=UPSTREAM_TRANSPORTS,
        help="streamable-http, sse (2024-11-05 HTTP+SSE) or stdio; default: stdio after --, sse for a URL "
        "ending in /sse, else streamable-http",
    )
    run.add_argument(
        "--max-children",
        type=int,
        default=32,
        metavar="N",
        help="stdio/sse: at most N MCP sessions, each with its own server process or SSE connection (default 32)",
    )
    run.add_argument(
        "--upstream-idle-timeout",
        type=float,
        default=1800.0,
        metavar="S",
        help="stdio/sse: close an MCP session (ending its process) after S idle seconds (default 1800)",
    )
    run.add_argument(
        "--upstream-name",
        metavar="NAME",
        help="stdio: the server's name in audit, metrics, policy and credentials (http://stdio/NAME); "
        "default: the program and a digest of its whole command line",
    )
    run.add_argument(
        "--stdio-env",
        action="append",
        default=[],
        metavar="NAME",
        help="stdio: pass this environment variable to the server (repeatable); it gets only PATH, HOME, USER, "
        "LOGNAME, SHELL, LANG, LANGUAGE, LC_*, TZ, TERM and TMPDIR/TMP/TEMP otherwise",
    )
    run.add_argument(
        "--policy", action="append", metavar="FILE", help="policy file (repeatable; default: the bundled default.yaml)"
    )
    _run_options(run, listen="0.0.0.0:8080", store=os.environ.get("REDIS_URL") or "memory")

    demo = sub.add_parser("demo", help="start the bundled demo MCP server with Wicket in front of it")
    demo.add_argument("--policy", action="append", metavar="FILE", help="policy file (default: the bundled demo.yaml)")
    demo.add_argument("--demo-port", type=int, default=8081, help="port of the demo MCP server (default 8081)")
    demo.add_argument("--a2a", action="store_true", help="also front a small A2A agent (a2a-sdk) on --a2a-port")
    demo.add_argument("--a2a-port", type=int, default=8082, help="port of the demo A2A agent (default 8082)")
    _run_options(demo, listen="127.0.0.1:8080", store="memory")

    policy = sub.add_parser("policy", help="policy tools").add_subparsers(dest="policy_command", required=True)
    check = policy.add_parser("check", help="validate policy files")
    check.add_argument("files", nargs="+", metavar="FILE")
    ptest = policy.add_parser("test", help="run policy test cases (*_test.yaml) through the real checker, offline")
    ptest.add_argument("files", nargs="*", metavar="FILE", help="test files or directories (default: policies/)")
    ptest.add_argument("--cases", action="append", default=[], metavar="CASES", help="a test file (repeatable)")
    ptest.add_argument(
        "--policy", action="append", default=[], metavar="FILE", help="test against these policy files instead"
    )
    ptest.add_argument("--json", action="store_true", help="machine-readable results (for CI)")
    explain = policy.add_parser("explain", help="decide one action offline and print every step behind it")
    explain.add_argument("--policy", action="append", metavar="FILE", help="policy file (repeatable)")
    explain.add_argument(
        "--input", metavar="FILE", help="a JSON or YAML file: {action, session, deep} as in a test case"
    )
    explain.add_argument("--tool", metavar="NAME", help="the tool being called")
    explain.add_argument("--method", default="tools/call", help="the request method (default tools/call)")
    explain.add_argument("--protocol", default="mcp", help="mcp, a2a, api or sampling (default mcp)")
    explain.add_argument("--arguments", metavar="JSON", help="the call's arguments as a JSON object")
    explain.add_argument("--annotations", metavar="JSON", help="the tool's annotations as a JSON object")
    explain.add_argument("--upstream", metavar="URL", help="the upstream's URL (for trusted and per-upstream rules)")
    explain.add_argument("--agent", default="agent", metavar="ID")
    explain.add_argument("--mode", choices=("read-only", "read-write"), default="read-only")
    explain.add_argument("--scope", action="append", metavar="PATTERN", help="scope ceiling glob (repeatable)")
    explain.add_argument("--intent", metavar="TEXT")
    explain.add_argument("--elevation", action="append", default=[], metavar="TOOL", help="an approved elevation")
    explain.add_argument("--calls", type=int, default=0, help="earlier calls in the session (anomaly figures)")
    explain.add_argument("--denials", type=int, default=0, help="of them, denied")
    explain.add_argument("--writes", type=int, default=0, help="of them, writes")
    explain.add_argument(
        "--deep",
        default="unavailable",
        choices=("allow", "deny", "approval_required", "unavailable"),
        help="what Deep Guard says (default unavailable: destructive and admin actions then fail closed)",
    )

    audit = sub.add_parser("audit", help="audit log tools").add_subparsers(dest="audit_command", required=True)
    verify = audit.add_parser("verify", help="verify a hash-chained audit log and its signed checkpoints")
    verify.add_argument(
        "file",
        nargs="?",
        default=_default_audit_log(),
        metavar="FILE",
        help="the log to verify (default: $WICKET_AUDIT_LOG or ./wicket-audit.jsonl, where run writes it)",
    )
    verify.add_argument("--checkpoints", metavar="PATH", help="the signed checkpoints (default: FILE.checkpoints)")
    trust = verify.add_mutually_exclusive_group()
    trust.add_argument("--key", metavar="PEM", help="Wicket's public (or private) key, PEM text or file")
    trust.add_argument("--jwks", metavar="FILE|URL", help="a JWKS, e.g. http://127.0.0.1:9090/.well-known/jwks.json")
    verify.add_argument("--chain-only", action="store_true", help="verify the hash chain alone, without checkpoints")
    show = audit.add_parser("show", help="explain a past decision from the audit log")
    show.add_argument("decision_id", metavar="DECISION_ID", help="dec_...")
    show.add_argument("--audit-log", default=_default_audit_log(), metavar="PATH")
    summary = audit.add_parser("summary", help="the most frequent would-be refusals recorded in shadow mode")
    summary.add_argument("file", nargs="?", default=_default_audit_log(), metavar="FILE")
    summary.add_argument("--limit", type=int, default=20)
    summary.add_argument("--json", action="store_true")
    ack = audit.add_parser("acknowledge", help="accept an audit log that fell behind its last signed checkpoint")
    ack.add_argument("--approver", metavar="NAME", help="your name, recorded next to the operator credential")
    ack.add_argument("--note", metavar="TEXT", help="why (recorded in the audit log)")
    ack.add_argument("--admin-url", default=os.environ.get("WICKET_ADMIN_URL", DEFAULT_ADMIN_URL))

    sessions = sub.add_parser("sessions", help="runtime sessions").add_subparsers(
        dest="sessions_command", required=True
    )
    create = sessions.add_parser("create", help="issue a runtime token bound to a new session")
    create.add_argument("--agent", required=True, metavar="ID")
    create.add_argument("--scope", action="append", metavar="PATTERN", help="tool-name glob (repeatable)")
    create.add_argument("--mode", choices=("read-only", "read-write"), default="read-only")
    create.add_argument("--intent", metavar="TEXT")
    create.add_argument("--ttl", type=int, metavar="SECONDS")
    create.add_argument("--admin-url", default=os.environ.get("WICKET_ADMIN_URL", DEFAULT_ADMIN_URL))

    revoke = sub.add_parser("revoke", help="revoke an agent, a session or a token on every replica")
    revoke.add_argument("kind", choices=("agent", "session", "token"))
    revoke.add_argument("id", metavar="ID", help="agent id, session id, or token (wkt_...) / token fingerprint")
    revoke.add_argument("--admin-url", default=os.environ.get("WICKET_ADMIN_URL", DEFAULT_ADMIN_URL))

    approvals = sub.add_parser("approvals", help="human approval of elevation requests")
    approvals_sub = approvals.add_subparsers(dest="approvals_command", required=True)
    listing = approvals_sub.add_parser("list", help="pending approval requests (newest first)")
    listing.add_argument("--all", action="store_true", help="also approved, denied and expired ones")
    listing.add_argument("--json", action="store_true", help="the full records, redacted arguments included")
    approve = approvals_sub.add_parser("approve", help="approve a request: elevate exactly its actions for a while")
    approve.add_argument("id", metavar="ID", help="the approval id (apr_...)")
    approve.add_argument("--approver", metavar="NAME", help="your name, recorded with the operator credential")
    deny = approvals_sub.add_parser("deny", help="deny a request")
    deny.add_argument("id", metavar="ID", help="the approval id (apr_...)")
    deny.add_argument("--approver", metavar="NAME", help="your name, recorded with the operator credential")
    for command in (listing, approve, deny):
        command.add_argument("--admin-url", default=os.environ.get("WICKET_ADMIN_URL", DEFAULT_ADMIN_URL))

    tools = sub.add_parser("tools", help="pinned MCP tool definitions (rug-pull and tool-poisoning defence)")
    tools_sub = tools.add_subparsers(dest="tools_command", required=True)
    tools_list = tools_sub.add_parser("list", help="tools whose definition awaits approval (changed or poisoned)")
    tools_list.add_argument("--all", action="store_true", help="every pinned tool, approved or not")
    tools_list.add_argument(
        "--held", action="store_true", help="tools held at a higher effect than their annotations claim (see trust)"
    )
    tools_list.add_argument("--upstream", metavar="URL", help="only this upstream's tools")
    tools_list.add_argument("--json", action="store_true", help="the full records, pending definitions included")
    tools_approve = tools_sub.add_parser("approve", help="adopt a tool's pending definition as its new pin")
    tools_approve.add_argument("name", metavar="NAME", help="the tool's name")
    tools_approve.add_argument("--approver", metavar="NAME", help="your name, recorded with the operator credential")
    tools_approve.add_argument(
        "--upstream", metavar="URL", help="the tool's upstream (default: the one the Wicket at --admin-url proxies)"
    )
    tools_approve.add_argument(
        "--sha256", metavar="HASH", help="approve only if the pending definition still has this hash (or prefix)"
    )
    tools_trust = tools_sub.add_parser(
        "trust", help="accept a pinned tool's annotations (readOnlyHint makes it a read) until its definition changes"
    )
    tools_trust.add_argument("name", metavar="NAME", help="the tool's name")
    tools_trust.add_argument("--approver", metavar="NAME", help="your name, recorded with the operator credential")
    tools_trust.add_argument(
        "--upstream", metavar="URL", help="the tool's upstream (default: the one the Wicket at --admin-url proxies)"
    )
    tools_trust.add_argument(
        "--sha256", metavar="HASH", help="trust only if the pinned definition still has this hash (or prefix)"
    )
    for command in (tools_list, tools_approve, tools_trust):
        command.add_argument("--admin-url", default=os.environ.get("WICKET_ADMIN_URL", DEFAULT_ADMIN_URL))

    guardian = sub.add_parser("guardian", help="the central guardian service")
    guardian_sub = guardian.add_subparsers(dest="guardian_command", required=True)
    gserve = guardian_sub.add_parser(
        "serve", help="run Spot and Deep for many sidecars (needs WICKET_GUARDIAN_KEY; Deep needs ANTHROPIC_API_KEY)"
    )
    gserve.add_argument(
        "--listen", default="127.0.0.1:9400", metavar="HOST:PORT", help="listen address (default 127.0.0.1:9400)"
    )
    gserve.add_argument("--policy", action="append", metavar="FILE", help="policy file (repeatable)")
    gserve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    gserve.add_argument("--log-format", default="text", choices=("text", "json"), help="json: one JSON object per line")

    inject = sub.add_parser(
        "inject-webhook", help="the Kubernetes sidecar injector: a mutating admission webhook over TLS"
    )
    inject.add_argument(
        "--listen", default="0.0.0.0:8443", metavar="HOST:PORT", help="HTTPS listen address (default 0.0.0.0:8443)"
    )
    inject.add_argument("--tls-cert", required=True, metavar="PATH", help="PEM certificate (chain); reloaded on change")
    inject.add_argument("--tls-key", required=True, metavar="PATH", help="PEM private key; reloaded on change")
    inject.add_argument(
        "--config", required=True, metavar="PATH", help="sidecar settings (sidecar.yaml of the chart's ConfigMap)"
    )
    inject.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    inject.add_argument("--log-format", default="text", choices=("text", "json"), help="json: one JSON object per line")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if words[:1] == ["run"] and "--" in words:
        # wicket run [options] -- CMD ARG...: everything after the first -- is the stdio server's argv.
        cut = words.index("--")
        words, command = words[:cut], words[cut + 1 :]
    args = build_parser().parse_args(words)
    args.upstream_command = command
    handler = {
        "run": cmd_run,
        "demo": cmd_demo,
        "policy": cmd_policy,
        "audit": cmd_audit,
        "sessions": cmd_sessions_create,
        "guardian": cmd_guardian_serve,
        "revoke": cmd_revoke,
        "approvals": cmd_approvals,
        "tools": cmd_tools,
        "inject-webhook": cmd_inject_webhook,
    }[args.command]
    try:
        code = handler(args)
        sys.stdout.flush()  # here, not at exit, where a closed pipe could only be reported
        return code
    except BrokenPipeError:
        # The reader went away (``wicket audit verify log | head -1``): stop quietly, as Unix tools do,
        # instead of a traceback; stdout goes to /dev/null so the interpreter's last flush cannot fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command a pipe ended


def _settings(args: argparse.Namespace, upstream: str, policy_files: list[str], **extra: Any) -> Settings:
    return Settings(
        upstream=upstream,
        listen=args.listen,
        admin_listen=args.admin_listen,
        health_listen=args.health_listen,
        policy_files=policy_files,
        audit_log=args.audit_log,
        audit_fsync=args.audit_fsync,
        store=args.store,
        max_body_bytes=args.max_body_bytes,
        connect_timeout=args.connect_timeout,
        read_timeout=args.read_timeout,
        request_timeout=args.request_timeout,
        stream_idle_timeout=args.stream_idle_timeout,
        upstream_keepalive=args.upstream_keepalive,
        allowed_hosts=args.allowed_host,
        allowed_origins=args.allowed_origin,
        admin_allowed_hosts=args.admin_allowed_host,
        credential_issuer=args.credential_issuer,
        agent_name=args.agent_name,
        guardian_url=args.guardian_url,
        guardian_client_id=args.guardian_client_id or "",
        oidc_issuer=args.oidc_issuer,
        oidc_audience=args.oidc_audience,
        oidc_jwks_url=args.oidc_jwks_url,
        oidc_agent_claim=args.oidc_agent_claim,
        public_url=args.public_url,
        metrics_agents=args.metrics_agents,
        **extra,
    )


def _configure_logging(level: str, log_format: str = "text") -> None:
    from proxy.logfmt import configure

    configure(level, log_format)


def _load_policy(files: list[str]) -> Any:
    from proxy.core.policy import PolicyError, load_policy

    try:
        return load_policy(files)
    except PolicyError as exc:
        print(f"wicket: the policy is invalid:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None


async def _serve_until_signal(wicket: Any, banner: str | None = None, extra: Any = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    # SIGHUP: logrotate (move the file away, then Wicket continues the chain in a new file) and a
    # policy reload (an invalid policy is refused and the running one stays in force).
    hangups: set[asyncio.Task[None]] = set()  # referenced until done, and finished before shutdown

    async def hangup() -> None:
        for what, step in (("reopen the audit log", wicket.audit.reopen), ("reload the policy", wicket.reload_policy)):
            try:
                await step()
            except Exception as exc:  # one failed step must not skip the other, nor vanish unlogged
                logging.getLogger("wicket").error("SIGHUP: could not %s: %s", what, exc)

    def on_hangup() -> None:
        task = loop.create_task(hangup())
        hangups.add(task)
        task.add_done_callback(hangups.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        if extra is not None:
            await extra.start()
        await wicket.start()
    except OSError as exc:
        print(f"wicket: {exc.strerror or exc}; pick free ports with --listen/--admin-listen", file=sys.stderr)
        await wicket.stop()
        if extra is not None:
            await extra.stop()
        raise SystemExit(1) from None
    settle_garbage_collector()
    if banner:
        print(banner.format(data=wicket.data_port, admin=wicket.admin_port), flush=True)
    logging.getLogger("wicket").info(
        "listening: data %s (port %d), admin %s (port %d)%s, upstream %s, event loop %s",
        wicket.settings.listen,
        wicket.data_port,
        wicket.settings.admin_listen,
        wicket.admin_port,
        f", health {wicket.settings.health_listen} (port {wicket.health_port})" if wicket.health_port else "",
        _upstream_text(wicket.settings),
        loop_name(loop),
    )
    try:
        await stop.wait()
    finally:
        logging.getLogger("wicket").info("shutting down")
        # A rotation or reload under way finishes first (for up to 10 s): closing the audit log under
        # a reopen would cut the rotated chain's closing checkpoint and audit the reload into a closed log.
        if hangups:
            await asyncio.wait(hangups, timeout=HANGUP_GRACE_SECONDS)
        await wicket.stop()
        if extra is not None:
            await extra.stop()


HANGUP_GRACE_SECONDS = 10.0
"""How long shutdown waits for a SIGHUP's rotation and policy reload still under way."""

GC_YOUNG_THRESHOLD = 20_000
"""Net new container objects between young collections (CPython's default is 700)."""


def settle_garbage_collector() -> None:
    """Tune CPython's cyclic collector for a long-running proxy, once start-up is done.

    Start-up leaves about 250,000 long-lived objects (modules, the policy, the detectors' tables),
    and every full collection walked them all: about 150 ms of CPU, a stall for every request in
    flight. Frozen, they are out of the collector's sight for good. A call's own objects die by
    reference counting, yet the default threshold of 700 still ran a young collection about every
    15 calls (0.5-0.7 ms each, about 45 µs per call); at 20,000 cycles are still collected within
    seconds under load, and memory held by uncollected cycles stays small.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def cmd_run(args: argparse.Namespace) -> int:
    from proxy.app import Wicket

    _configure_logging(args.log_level, args.log_format)
    files = args.policy or [bundled_policy("default")]
    upstream, transport, command = resolve_upstream(args)
    settings = _settings(
        args,
        upstream,
        files,
        a2a_upstream=args.a2a_upstream,
        a2a_card_signatures=args.a2a_card_signatures,
        upstream_transport=transport,
        upstream_command=command,
        upstream_name=args.upstream_name,
        stdio_env=args.stdio_env,
        max_upstream_children=args.max_children,
        upstream_idle_seconds=args.upstream_idle_timeout,
    )
    factory = event_loop_factory(args.event_loop)
    wicket = Wicket(settings, _load_policy(files))
    serve_on(factory, _serve_until_signal(wicket))
    return 0


UPSTREAM_TRANSPORTS = ("streamable-http", "sse", "stdio")


def resolve_upstream(args: argparse.Namespace) -> tuple[str, str, list[str] | None]:
    """(upstream URL, transport, stdio argv) from ``--upstream``, ``--upstream-transport`` and ``-- CMD``."""
    command: list[str] = list(getattr(args, "upstream_command", None) or [])
    problem = None
    if command and args.upstream:
        problem = "give either --upstream URL or -- CMD ARG... (a stdio MCP server to run), not both"
    elif not command and not args.upstream and not getattr(args, "a2a_upstream", None):
        problem = "wicket run needs --upstream URL, -- CMD ARG... to run a stdio MCP server, or --a2a-upstream URL"
    transport = args.upstream_transport
    if transport is None:
        path = urllib.parse.urlsplit(args.upstream or "").path.rstrip("/")
        transport = "stdio" if command else "sse" if path.endswith("/sse") else "streamable-http"
    if problem is None and (transport == "stdio") != bool(command):
        problem = "--upstream-transport stdio goes with -- CMD ARG..., and only with it"
    if problem is not None:
        print(f"wicket: {problem}", file=sys.stderr)
        raise SystemExit(2)
    return ("" if command else args.upstream or ""), transport, command or None


def _upstream_text(settings: Settings) -> str:
    """The upstream for the start-up line (a stdio server's argv0 only: its arguments may hold secrets)."""
    a2a = f"A2A agent {settings.a2a_upstream}" if settings.a2a_upstream else ""
    if not settings.upstream:
        return a2a
    return f"{_mcp_upstream_text(settings)}, {a2a}" if a2a else _mcp_upstream_text(settings)


def _mcp_upstream_text(settings: Settings) -> str:
    if settings.upstream_command:
        return f"{settings.upstream} (stdio: {settings.upstream_command[0]}, one process per MCP session)"
    if settings.upstream_transport == "sse":
        return f"{settings.upstream} (legacy HTTP+SSE, one connection per MCP session)"
    return settings.upstream


_DEMO_CALL = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "drop_table",
            "arguments": {"table": "users"},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    },
    separators=(",", ":"),
)

DEMO_BANNER = (
    """
Wicket demo is running.
  MCP endpoint through Wicket : http://127.0.0.1:{data}/mcp
  Demo MCP server (direct)    : {upstream}
  Metrics / health            : http://127.0.0.1:{admin}/metrics   http://127.0.0.1:{admin}/readyz
  Audit log                   : {audit}
  Policy                      : {policy}  (anonymous callers, read-only sessions)

A destructive call is refused with a reason (curl, MCP 2026-07-28 stateless):
  curl -s http://127.0.0.1:{data}/mcp -H 'Content-Type: application/json' \\
    -H 'Accept: application/json, text/event-stream' -H 'MCP-Protocol-Version: 2026-07-28' \\
    -H 'Mcp-Method: tools/call' -H 'Mcp-Name: drop_table' -d '"""
    + _DEMO_CALL.replace("{", "{{").replace("}", "}}")
    + """'

A read passes and a destructive call is refused (the mcp Python SDK, session-based):
  .venv/bin/python -c "import asyncio, mcp
  async def main():
      async with mcp.Client('http://127.0.0.1:{data}/mcp', mode='legacy') as c:
          print((await c.call_tool('get_weather', {{'city': 'Oslo'}})).content[0].text)
          print((await c.call_tool('drop_table', {{'table': 'users'}})).content[0].text)
  asyncio.run(main())"

Verify the audit chain: .venv/bin/wicket audit verify {audit}      Stop with Ctrl-C.
"""
)


_A2A_MESSAGE = {"messageId": "m1", "role": "ROLE_USER", "parts": [{"text": "hello"}]}
_A2A_DEMO_RPC = json.dumps(
    {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": _A2A_MESSAGE}}, separators=(",", ":")
)
_A2A_DEMO_REST = json.dumps({"message": _A2A_MESSAGE}, separators=(",", ":"))

A2A_DEMO_BANNER = (
    """
A2A: the demo agent (a2a-sdk) is behind Wicket too.
  Agent card through Wicket   : http://127.0.0.1:{data}/.well-known/agent-card.json  (every URL on it is Wicket's)
  Demo A2A agent (direct)     : {agent}

An anonymous caller is read-only, so sending a message is refused with the decision record:
  curl -s http://127.0.0.1:{data}/a2a/jsonrpc -H 'Content-Type: application/json' -H 'A2A-Version: 1.0' \\
    -d '"""
    + _A2A_DEMO_RPC.replace("{", "{{").replace("}", "}}")
    + """'
With a read-write runtime token the same message reaches the agent (over the REST binding this time):
  TOKEN=$(WICKET_ADMIN_TOKEN={admin_token} .venv/bin/wicket sessions create --admin-url http://127.0.0.1:{admin} \\
    --agent demo-peer --mode read-write | sed -n 's/.*"token": "\\(.*\\)".*/\\1/p')
  curl -s http://127.0.0.1:{data}/a2a/rest/message:send -H "Authorization: Bearer $TOKEN" \\
    -H 'Content-Type: application/json' -H 'A2A-Version: 1.0' -d '"""
    + _A2A_DEMO_REST.replace("{", "{{").replace("}", "}}")
    + """'
"""
)


class _Together:
    """Several demo servers started and stopped as one."""

    def __init__(self, *servers: Any) -> None:
        self.servers = servers

    async def start(self) -> None:
        for server in self.servers:
            await server.start()

    async def stop(self) -> None:
        for server in reversed(self.servers):
            await server.stop()


def cmd_demo(args: argparse.Namespace) -> int:
    from proxy.app import Wicket
    from proxy.demo.server import DemoUpstream

    _configure_logging(args.log_level, args.log_format)
    factory = event_loop_factory(args.event_loop)  # refused before anything is built, as in cmd_run
    files = args.policy or [bundled_policy("demo")]
    upstream = DemoUpstream("127.0.0.1", args.demo_port)
    extra: Any = upstream
    a2a: dict[str, Any] = {}
    banner = DEMO_BANNER
    if args.a2a:
        from proxy.demo.a2a_agent import DemoA2AAgent

        agent = DemoA2AAgent(args.a2a_port)
        extra = _Together(upstream, agent)
        a2a = {"a2a_upstream": agent.base}
        if not os.environ.get("WICKET_ADMIN_TOKEN"):
            os.environ["WICKET_ADMIN_TOKEN"] = "demo-" + os.urandom(16).hex()  # so the banner's token command works
        banner += A2A_DEMO_BANNER.replace("{agent}", agent.base).replace(
            "{admin_token}", os.environ["WICKET_ADMIN_TOKEN"]
        )
    wicket = Wicket(_settings(args, upstream.url, files, **a2a), _load_policy(files))
    banner = banner.replace("{upstream}", upstream.url).replace("{audit}", args.audit_log)
    banner = banner.replace("{policy}", ", ".join(files))
    serve_on(factory, _serve_until_signal(wicket, banner, extra=extra))
    return 0


def cmd_guardian_serve(args: argparse.Namespace) -> int:
    from proxy.guardians.service import serve_guardian

    _configure_logging(args.log_level, args.log_format)
    asyncio.run(serve_guardian(args.listen, args.policy or [bundled_policy("default")], os.environ))
    return 0


def cmd_inject_webhook(args: argparse.Namespace) -> int:
    from proxy.k8s.webhook import serve_injector

    _configure_logging(args.log_level, args.log_format)

    async def serve() -> None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await serve_injector(args.listen, args.tls_cert, args.tls_key, args.config, stop=stop)

    asyncio.run(serve())
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    return {"check": cmd_policy_check, "test": cmd_policy_test, "explain": cmd_policy_explain}[args.policy_command](
        args
    )


def cmd_policy_test(args: argparse.Namespace) -> int:
    from proxy.authoring.cases import report, run

    _configure_logging("error")  # a stated-unavailable Deep Guard is expected here, not worth a warning
    results = run([*args.files, *args.cases], args.policy)
    text, status = report(results, as_json=args.json)
    print(text)
    return status


def cmd_policy_explain(args: argparse.Namespace) -> int:
    import yaml

    from proxy.authoring.cases import CaseFileError, parse_case
    from proxy.authoring.explain import render
    from proxy.authoring.harness import evaluate
    from proxy.core.policy import PolicyError, load_policy

    if args.input:
        try:
            raw = yaml.safe_load(Path(args.input).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            print(f"wicket: cannot read {args.input}: {exc}", file=sys.stderr)
            return 2
        raw = {"name": "explain", **(raw if isinstance(raw, dict) else {})}
        raw.setdefault("expect", {"decision": "allow"})
    else:
        if not args.tool and args.method == "tools/call":
            print(
                "wicket: name the action: --tool NAME (or --method for a non-tool request), or --input FILE",
                file=sys.stderr,
            )
            return 2
        try:
            action: dict[str, Any] = {
                "method": args.method,
                "protocol": args.protocol,
                "arguments": json.loads(args.arguments) if args.arguments else {},
            }
            if args.annotations:
                action["annotations"] = json.loads(args.annotations)
        except ValueError as exc:
            print(f"wicket: --arguments / --annotations must be JSON objects: {exc}", file=sys.stderr)
            return 2
        if args.tool:
            action["tool"] = args.tool
        if args.upstream:
            action["upstream"] = args.upstream
        session = {"agent": args.agent, "mode": args.mode, "scope": args.scope or ["*"], "intent": args.intent}
        session.update(elevations=args.elevation, calls=args.calls, denials=args.denials, writes=args.writes)
        raw = {
            "name": "explain",
            "action": action,
            "session": session,
            "deep": args.deep,
            "expect": {"decision": "allow"},
        }
    try:
        case = parse_case(Path(args.input or "<flags>"), 1, raw)
        policy = load_policy(args.policy or ["policies/default.yaml"])
    except CaseFileError as exc:
        print(f"wicket: {exc}", file=sys.stderr)
        return 2
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 2
    _configure_logging("error")
    try:
        explanation = asyncio.run(evaluate(policy, case.action, case.session, case.deep))
    except ValueError as exc:
        print(f"wicket: {exc}", file=sys.stderr)
        return 2
    print(render(explanation))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    handlers = {
        "verify": cmd_audit_verify,
        "show": cmd_audit_show,
        "summary": cmd_audit_summary,
        "acknowledge": cmd_audit_acknowledge,
    }
    return handlers[args.audit_command](args)


def cmd_audit_show(args: argparse.Namespace) -> int:
    from proxy.authoring.explain import find_decision, render_recorded

    if not Path(args.audit_log).is_file():
        print(f"wicket: no audit log at {args.audit_log} (--audit-log PATH)", file=sys.stderr)
        return 2
    record, related = find_decision(args.audit_log, args.decision_id)
    if record is None:
        print(f"wicket: no decision {args.decision_id} in {args.audit_log}", file=sys.stderr)
        return 1
    print(render_recorded(record, related))
    return 0


def cmd_audit_summary(args: argparse.Namespace) -> int:
    from proxy.audit.summary import render, summarise_file

    if not Path(args.file).is_file():
        print(f"wicket: no audit log at {args.file}", file=sys.stderr)
        return 2
    summary = summarise_file(args.file, limit=args.limit)
    print(json.dumps(summary.public(), indent=2) if args.json else render(summary))
    return 0


def cmd_policy_check(args: argparse.Namespace) -> int:
    from proxy.core.policy import check_files

    issues = check_files(args.files)
    for issue in issues:
        print(issue)
    if issues:
        return 1
    print(f"ok: {len(args.files)} policy file(s) valid")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from proxy.audit.chain import verify_file
    from proxy.audit.checkpoint import SUFFIX, check_against_checkpoints

    if not Path(args.file).is_file():
        print(f"wicket: no audit log at {args.file}", file=sys.stderr)
        return 2
    result = verify_file(args.file)
    if not result.ok:
        print(f"broken: {result.reason}")
        return 1
    print(f"ok: {result.count} records, head {result.head}")
    if args.chain_only:
        print("note: checkpoints not checked (--chain-only): records cut from the end would not be detected")
        return 0
    try:
        keys = _checkpoint_keys(args)
    except (ValueError, OSError) as exc:
        print(f"wicket: {exc}", file=sys.stderr)
        return 2
    checkpoints = Path(args.checkpoints or args.file + SUFFIX)
    report = check_against_checkpoints(Path(args.file), checkpoints, keys)
    for problem in report.problems:
        print(f"broken: {problem}")
    if report.last is not None:
        after = result.count - report.last.seq
        tail = f"; {after} later record(s) rest on the chain alone" if after > 0 else ""
        print(f"checkpoints: {report.checked} verified, the last at {report.last.describe()}{tail}")
    for note in report.notes:
        print(f"note: {note}")
    return 1 if report.problems else 0


def _checkpoint_keys(args: argparse.Namespace) -> dict[str, Any] | None:
    """kid -> public key from --key, --jwks or WICKET_SIGNING_KEY; None: trust the keys the checkpoints carry."""
    from proxy.audit.checkpoint import public_keys
    from proxy.credentials.keys import SIGNING_KEY_ENV, public_key_from_pem

    if args.jwks:
        if args.jwks.startswith(("http://", "https://")):
            with urllib.request.urlopen(args.jwks, timeout=10) as response:
                document = json.loads(response.read())
        else:
            document = json.loads(Path(args.jwks).read_text())
        keys = public_keys(document)
        if not keys:
            raise ValueError(f"--jwks: {args.jwks} holds no usable key")
        return keys
    value = args.key or os.environ.get(SIGNING_KEY_ENV, "").strip()
    if not value:
        return None
    return public_keys({"keys": [public_key_from_pem(value, "--key" if args.key else SIGNING_KEY_ENV)]})


def cmd_audit_acknowledge(args: argparse.Namespace) -> int:
    payload = {k: v for k, v in (("approver", args.approver), ("note", args.note)) if v}
    status, body = _admin_call(args.admin_url, "/v1/audit/acknowledge", _operator_token(), payload)
    if status >= 300:
        print(f"wicket: {body.get('error', body)} (HTTP {status})", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2))
    return 0


def _operator_token() -> str:
    token = os.environ.get("WICKET_ADMIN_TOKEN")
    if not token:
        print("wicket: set WICKET_ADMIN_TOKEN to the operator token", file=sys.stderr)
        raise SystemExit(2)
    return token


def cmd_revoke(args: argparse.Namespace) -> int:
    status, body = _admin_call(args.admin_url, "/v1/revocations", _operator_token(), {"kind": args.kind, "id": args.id})
    if status >= 300:
        print(f"wicket: {body.get('error', body)} (HTTP {status})", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2))
    return 0


def cmd_approvals(args: argparse.Namespace) -> int:
    token = _operator_token()
    if args.approvals_command == "list":
        query = "?status=all" if args.all else "?status=pending"
        status, body = _admin_call(args.admin_url, "/v1/approvals" + query, token, None)
    else:
        payload = {"approver": args.approver} if args.approver else {}
        path = f"/v1/approvals/{urllib.parse.quote(args.id, safe='')}/{args.approvals_command}"
        status, body = _admin_call(args.admin_url, path, token, payload)
    if status >= 300:
        print(f"wicket: {body.get('error', body)} (HTTP {status})", file=sys.stderr)
        return 1
    if args.approvals_command == "list":
        found = body.get("approvals", [])
        print(json.dumps(found, indent=2, ensure_ascii=False) if args.json else _approvals_table(found, not args.all))
        return 0
    approval = body.get("approval", {})
    if args.approvals_command == "approve":
        elevation = body.get("elevation") or {}
        actions = ", ".join(elevation.get("actions", []))
        print(
            f"approved {approval.get('approval_id')}: {actions} elevated in session {approval.get('session_id')} "
            f"until {elevation.get('expires_at')}; the agent can retry its call now"
            + (" (with exactly the approved arguments)." if approval.get("binding") == "call" else ".")
        )
    else:
        print(f"denied {approval.get('approval_id')} (agent {approval.get('agent_id')}).")
    return 0


def _approvals_table(approvals: list[dict[str, Any]], pending_only: bool) -> str:
    if not approvals:
        return "no pending approval requests" if pending_only else "no approval requests"
    columns = ("approval_id", "status", "agent_id", "actions", "effect", "binding", "expires_at", "reason")
    headers = ("ID", "STATUS", "AGENT", "ACTIONS", "EFFECT", "BINDING", "EXPIRES", "REASON", "ARGUMENTS")
    rows = []
    for item in approvals:
        values = (item.get(column) for column in columns)
        row = [", ".join(v) if isinstance(v, list) else "" if v is None else str(v) for v in values]
        # Redacted by Wicket before they were stored; compact JSON so the approver sees what will run.
        row.append(json.dumps(item.get("arguments"), ensure_ascii=False, separators=(",", ":")))
        rows.append(row)
    return _table(headers, rows)


def _table(headers: Sequence[str], rows: list[list[str]]) -> str:
    """Aligned columns for a terminal; a cell over 60 characters is cut with "..."."""
    rows = [[c if len(c) <= 60 else c[:57] + "..." for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def cmd_tools(args: argparse.Namespace) -> int:
    token = _operator_token()
    if args.tools_command == "list":
        query = {"status": "all" if args.all else "held" if args.held else "pending"}
        if args.upstream:
            query["upstream"] = args.upstream
        status, body = _admin_call(args.admin_url, "/v1/tools?" + urllib.parse.urlencode(query), token, None)
    else:
        payload = {
            key: value
            for key, value in (("approver", args.approver), ("upstream", args.upstream), ("sha256", args.sha256))
            if value
        }
        path = f"/v1/tools/{urllib.parse.quote(args.name, safe='')}/{args.tools_command}"
        status, body = _admin_call(args.admin_url, path, token, payload)
    if status >= 300:
        print(f"wicket: {body.get('error', body)} (HTTP {status})", file=sys.stderr)
        return 1
    if args.tools_command == "list":
        found = body.get("tools", [])
        empty = "no tools held above their annotations" if args.held else None
        print(json.dumps(found, indent=2, ensure_ascii=False) if args.json else _tools_table(found, args.all, empty))
        return 0
    tool = body.get("tool", {})
    if args.tools_command == "trust":
        print(
            f"trusted the annotations of {tool.get('name')} (sha256 {str(tool.get('sha256'))[:12]}…, upstream "
            f"{tool.get('upstream')}): its calls are {tool.get('effect')} now, until its definition changes."
        )
        return 0
    print(
        f"approved {tool.get('name')}: sha256 {str(tool.get('sha256'))[:12]}… is its pin now "
        f"(upstream {tool.get('upstream')}); agents can list and call it again."
    )
    return 0


def _tools_table(tools: list[dict[str, Any]], every: bool, empty: str | None = None) -> str:
    """One row per tool; EFFECT is what its calls are held at, ``mutating>read`` when its
    annotations claim less (``wicket tools trust`` accepts them)."""
    if not tools:
        return empty or ("no pinned tools" if every else "no tools awaiting approval")
    headers = ("NAME", "STATUS", "BLOCKED", "EFFECT", "PINNED", "PENDING", "CHANGED", "UPSTREAM", "FINDINGS")
    rows = []
    for tool in tools:
        findings = "; ".join(f"{f.get('category')}: {f.get('message')}" for f in tool.get("findings") or [])
        cells = (
            str(tool.get("name")),
            str(tool.get("status")),
            "yes" if tool.get("blocked") else "no",
            _effect_cell(tool),
            str(tool.get("sha256") or "-")[:12],
            str(tool.get("pending_sha256") or "-")[:12],
            str(tool.get("changed_at") or "-"),
            str(tool.get("upstream")),
            findings or "-",
        )
        rows.append(list(cells))
    return _table(headers, rows)


def _effect_cell(tool: dict[str, Any]) -> str:
    held = str(tool.get("effect") or "-")
    if tool.get("held_above_annotations"):
        return f"{held}>{tool.get('annotated_effect')}"
    return held + ("(trusted)" if tool.get("annotations_trusted") else "")


def cmd_sessions_create(args: argparse.Namespace) -> int:
    token = _operator_token()
    payload: dict[str, Any] = {"agent_id": args.agent, "mode": args.mode}
    if args.scope:
        payload["scope"] = args.scope
    if args.intent:
        payload["intent"] = args.intent
    if args.ttl:
        payload["ttl_seconds"] = args.ttl
    status, body = _admin_call(args.admin_url, "/v1/sessions", token, payload)
    if status >= 300:
        print(f"wicket: {body.get('error', body)} (HTTP {status})", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2))
    return 0


def _admin_call(base: str, path: str, token: str, payload: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
    """POST ``payload`` (GET when it is None) to the admin API with the operator token."""
    headers = {"Authorization": f"Bearer {token}"}
    if payload is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(
        base.rstrip("/") + path,
        data=None if payload is None else json.dumps(payload).encode(),
        headers=headers,
        method="GET" if payload is None else "POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {"error": exc.reason}
    except urllib.error.URLError as exc:
        print(f"wicket: cannot reach the admin API at {base}: {exc.reason}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    sys.exit(main())
