"""The duplex message channel between the upstream bridge and one real MCP server connection.

A channel carries JSON-RPC messages both ways and nothing else: no HTTP, no sessions. The
bridge (``bridge.py``) owns those and opens one channel per MCP session; ``stdio.py`` (a
child process) and ``legacy_sse.py`` (a 2024-11-05 HTTP+SSE connection) implement it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Channel", "ChannelEnd", "ChannelError", "ChannelFactory", "Incoming", "encode"]


class ChannelError(Exception):
    """A channel could not be opened, or a message could not be handed to the server.

    The text is shown to the agent as a JSON-RPC error message, so it says what happened
    in plain words and carries no secrets.
    """


@dataclass(frozen=True, slots=True)
class Incoming:
    """One message from the server: parsed for routing, raw for relaying unchanged."""

    message: dict[str, Any]
    raw: bytes


@dataclass(frozen=True, slots=True)
class ChannelEnd:
    """Why a channel stopped delivering messages.

    ``reason`` is the metric label: ``exited`` (the server ended cleanly on its own),
    ``crashed`` (non-zero exit, a signal, a broken connection or a protocol violation) or
    ``closed`` (Wicket closed it). ``message`` is the sentence pending requests receive.
    """

    reason: str
    message: str


class Channel(Protocol):
    """One connection to a real MCP server, carrying whole JSON-RPC messages."""

    @property
    def alive(self) -> bool:
        """False once the server can no longer receive or deliver messages."""
        ...

    @property
    def ended(self) -> ChannelEnd | None:
        """Why the channel ended; set by the time iteration stops."""
        ...

    async def send(self, message: dict[str, Any] | bytes, *, headers: Mapping[str, str] | None = None) -> None:
        """Hand one message (a dict, or the JSON text of one) to the server.

        ``headers`` are the HTTP headers Wicket forwarded with it (its upstream credential
        among them); transports without HTTP ignore them. Raises ``ChannelError``.
        """
        ...

    def __aiter__(self) -> AsyncIterator[Incoming]:
        """Every message the server sends, in order, until the channel ends."""
        ...

    async def close(self) -> None:
        """End the connection and release everything behind it; safe to call twice."""
        ...


class ChannelFactory(Protocol):
    """Opens channels of one kind to one configured server."""

    description: str
    """How errors name the server, e.g. ``the stdio MCP server``."""

    async def open(self, headers: Mapping[str, str]) -> Channel:
        """A new, independent connection; ``headers`` as for ``Channel.send``. Raises ``ChannelError``."""
        ...

    async def aclose(self) -> None:
        """Release what the factory itself holds (not the channels it opened)."""
        ...


def encode(message: dict[str, Any] | bytes) -> bytes:
    """The compact JSON text of one message."""
    if isinstance(message, bytes):
        return message
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
