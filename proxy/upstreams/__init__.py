"""Upstreams that do not speak MCP Streamable HTTP: stdio servers and 2024-11-05 HTTP+SSE servers.

``bridge.UpstreamBridge`` serves Streamable HTTP on a private Unix socket and gives every MCP
session its own channel (``stdio.StdioChannel``: a child process; ``legacy_sse.LegacySseChannel``:
an SSE connection), so the proxy forwards to it exactly as to any HTTP upstream.
"""

from proxy.upstreams.bridge import UpstreamBridge
from proxy.upstreams.channel import Channel, ChannelEnd, ChannelError, ChannelFactory, Incoming
from proxy.upstreams.legacy_sse import LegacySseFactory
from proxy.upstreams.stdio import StdioFactory, child_environment, stdio_label

__all__ = [
    "Channel",
    "ChannelEnd",
    "ChannelError",
    "ChannelFactory",
    "Incoming",
    "LegacySseFactory",
    "StdioFactory",
    "UpstreamBridge",
    "child_environment",
    "stdio_label",
]
