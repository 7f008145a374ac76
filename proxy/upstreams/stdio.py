"""A channel to a child process that speaks MCP over stdio: newline-delimited JSON-RPC.

stdout carries only MCP messages; stderr is the server's log, relayed line by line to the
``wicket.stdio`` logger with the child's pid. Each child is the leader of its own session
and process group (``start_new_session``), so Wicket can end the whole tree it started:
closing stdin asks it to leave, SIGTERM insists, SIGKILL ends it, and every child is
reaped. When the leader exits on its own, whatever it left in its group is killed too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import signal
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

from proxy.adapters import jsonrpc
from proxy.upstreams.channel import ChannelEnd, ChannelError, Incoming, encode

__all__ = ["StdioChannel", "StdioFactory", "child_environment", "stdio_label"]

log = logging.getLogger("wicket.stdio")

STDIN_GRACE = 2.0
"""Seconds a child gets to exit after its stdin closes (the polite MCP stdio shutdown)."""
TERM_GRACE = 2.0
"""Seconds between SIGTERM and SIGKILL."""
_LOG_LINE = 8192
"""stderr lines are logged up to this many characters."""


UPSTREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""What ``--upstream-name`` accepts: one URL path segment that needs no quoting."""

CHILD_ENVIRONMENT = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TERM", "TMPDIR", "TMP", "TEMP"}
)
"""What every stdio child gets of Wicket's environment (plus ``LC_*``): enough to find programs,
a home for caches (npx), a locale and a temporary directory, and nothing that grants access."""


def stdio_label(argv: Sequence[str], name: str | None = None) -> str:
    """The name a stdio server goes by in audit records, metrics, policy ``upstreams`` and credentials.

    Two servers must never share it (they would share tool pins, trust and ``aud``), so it is
    the operator's ``name`` or else the program followed by a digest of the whole command line
    (``http://stdio/npx-3f2a9c01d4e5``): the arguments may hold secrets, so only their digest shows.
    It must be an http URL: the proxy sends its requests to it (through the bridge's Unix
    socket, so it is never resolved or dialled) and policies name upstreams by URL.
    """
    if name is not None:
        if not UPSTREAM_NAME.fullmatch(name):
            raise ValueError(
                f"an upstream name is 1 to 64 of A-Z a-z 0-9 . _ - (starting with a letter or digit), not {name!r}"
            )
        return "http://stdio/" + name
    program = PurePosixPath(argv[0]).name if argv else ""
    digest = hashlib.sha256(json.dumps(list(argv), ensure_ascii=False).encode("utf-8", "surrogatepass")).hexdigest()
    return "http://stdio/" + quote(program or "server", safe="") + "-" + digest[:12]


def child_environment(environ: Mapping[str, str], passed: Iterable[str] = ()) -> dict[str, str]:
    """What a stdio child sees of Wicket's environment: the allowlist above, ``LC_*``, and the
    variables the operator names (``--stdio-env NAME``).

    The child runs a third party's code on the agent's behalf: it must never hold Wicket's
    keys or admin token, nor the model and cloud credentials in Wicket's environment.
    ``WICKET_*`` is never passed, even when named.
    """
    wanted = CHILD_ENVIRONMENT | frozenset(passed)
    return {
        key: value
        for key, value in environ.items()
        if (key in wanted or key.startswith("LC_")) and not key.upper().startswith("WICKET_")
    }


class StdioFactory:
    """Spawns one child per channel from a fixed command line."""

    description = "the stdio MCP server"

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
        stdin_grace: float = STDIN_GRACE,
        term_grace: float = TERM_GRACE,
    ) -> None:
        if not argv:
            raise ValueError("a stdio MCP server needs a command")
        self.argv = tuple(argv)
        self._env = dict(env) if env is not None else child_environment(os.environ)
        self._limit = max_message_bytes
        self._stdin_grace = stdin_grace
        self._term_grace = term_grace

    async def open(self, headers: Mapping[str, str]) -> StdioChannel:
        return await StdioChannel.spawn(
            self.argv,
            env=self._env,
            max_message_bytes=self._limit,
            stdin_grace=self._stdin_grace,
            term_grace=self._term_grace,
        )

    async def aclose(self) -> None:
        return None


class StdioChannel:
    """One child process; see the module docstring for its lifecycle."""

    def __init__(
        self, proc: asyncio.subprocess.Process, *, max_message_bytes: int, stdin_grace: float, term_grace: float
    ) -> None:
        self._proc = proc
        self.pid = proc.pid
        self._limit = max_message_bytes
        self._stdin_grace = stdin_grace
        self._term_grace = term_grace
        self._ended: ChannelEnd | None = None
        self._closing = False
        self._close_task: asyncio.Future[None] | None = None
        self._write_lock = asyncio.Lock()
        self._waiter = asyncio.create_task(self._wait_exit())
        self._stderr = asyncio.create_task(self._relay_stderr())

    @classmethod
    async def spawn(
        cls,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        max_message_bytes: int,
        stdin_grace: float = STDIN_GRACE,
        term_grace: float = TERM_GRACE,
    ) -> StdioChannel:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=dict(env),
                limit=max_message_bytes,
                start_new_session=True,
            )
        except OSError as exc:
            raise ChannelError(
                f"the stdio MCP server could not be started ({argv[0]}: {exc.strerror or exc})"
            ) from None
        log.info("[pid %d] started %s", proc.pid, argv[0])
        return cls(proc, max_message_bytes=max_message_bytes, stdin_grace=stdin_grace, term_grace=term_grace)

    @property
    def alive(self) -> bool:
        return self._ended is None and not self._closing and self._proc.returncode is None

    @property
    def ended(self) -> ChannelEnd | None:
        return self._ended

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def send(self, message: dict[str, Any] | bytes, *, headers: Mapping[str, str] | None = None) -> None:
        data = encode(message)
        if b"\n" in data or b"\r" in data:
            # One message per line: JSON whitespace may contain line breaks, so re-encode compactly.
            try:
                data = encode(json.loads(data))
            except ValueError:
                raise ChannelError("the message is not valid JSON") from None
        if not self.alive:
            raise ChannelError(self._gone_text())
        stdin = self._proc.stdin
        assert stdin is not None
        async with self._write_lock:
            try:
                stdin.write(data + b"\n")
                await stdin.drain()
            except (BrokenPipeError, ConnectionResetError, RuntimeError):
                raise ChannelError(self._gone_text()) from None

    def __aiter__(self) -> AsyncIterator[Incoming]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Incoming]:
        stdout = self._proc.stdout
        assert stdout is not None
        violation: str | None = None
        while True:
            try:
                line = await stdout.readline()
            except ValueError:
                violation = f"the stdio MCP server sent a message over {self._limit} bytes"
                log.error("[pid %d] %s; stopping it", self.pid, violation)
                break
            if not line:
                break
            line = line.strip()
            if not line:
                continue
            try:
                message = jsonrpc.loads(line)
            except jsonrpc.NestingTooDeep:
                violation = f"the stdio MCP server sent a message nested deeper than {jsonrpc.MAX_DEPTH} levels"
                log.error("[pid %d] %s; stopping it", self.pid, violation)
                break
            except ValueError:
                log.warning("[pid %d] ignored a stdout line that is not JSON: %.200r", self.pid, line)
                continue
            if not isinstance(message, dict):
                log.warning("[pid %d] ignored a stdout line that is not one JSON-RPC message", self.pid)
                continue
            yield Incoming(message, line)
        self._ended = await self._end(violation)

    async def _end(self, violation: str | None) -> ChannelEnd:
        """Why stdout ended: our own close, a protocol violation, or the child's exit code."""
        if violation is not None:
            await self.close()
            return ChannelEnd("crashed", violation)
        if not self._closing and not await self._exited_within(self._stdin_grace):
            return ChannelEnd("crashed", "the stdio MCP server closed its stdout")
        if self._closing:
            await self.close()
            return ChannelEnd("closed", "the MCP session was closed")
        return exit_end(self._proc.returncode)

    def _gone_text(self) -> str:
        if self._ended is not None:
            return self._ended.message
        if self._proc.returncode is not None:
            return exit_end(self._proc.returncode).message
        return "the stdio MCP server is no longer reading its input"

    async def close(self) -> None:
        self._closing = True
        if self._close_task is None:
            self._close_task = asyncio.ensure_future(self._shutdown())
        await asyncio.shield(self._close_task)

    async def _shutdown(self) -> None:
        stdin = self._proc.stdin
        if stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                stdin.close()
        if not await self._exited_within(self._stdin_grace):
            self._signal_group(signal.SIGTERM)
            if not await self._exited_within(self._term_grace):
                self._signal_group(signal.SIGKILL)
        await self._waiter  # reaped, and the rest of its process group killed
        try:
            async with asyncio.timeout(self._term_grace):
                await asyncio.shield(self._stderr)
        except TimeoutError:
            # Something outside the group (a grandchild that left it) still holds stderr open.
            self._stderr.cancel()
            await asyncio.gather(self._stderr, return_exceptions=True)

    async def _exited_within(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await asyncio.shield(self._waiter)
        except TimeoutError:
            return False
        return True

    async def _wait_exit(self) -> None:
        code = await self._proc.wait()
        log.info("[pid %d] %s", self.pid, exit_end(code).message)
        # The leader is reaped; anything still in its process group is an orphan of this server.
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    async def _relay_stderr(self) -> None:
        stderr = self._proc.stderr
        assert stderr is not None
        while True:
            try:
                line = await stderr.readline()
            except ValueError:
                log.warning("[pid %d] (a stderr line over %d bytes was dropped)", self.pid, self._limit)
                continue
            if not line:
                return
            text = line.decode("utf-8", errors="replace").rstrip()
            if text:
                log.info("[pid %d] %s", self.pid, text[:_LOG_LINE])


def exit_end(code: int | None) -> ChannelEnd:
    """The ChannelEnd for a child's exit status."""
    if code is None:
        return ChannelEnd("crashed", "the stdio MCP server stopped answering")
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return ChannelEnd("crashed", f"the stdio MCP server was killed by signal {name}")
    return ChannelEnd("exited" if code == 0 else "crashed", f"the stdio MCP server exited with code {code}")
