"""Push-notification URLs are an outbound channel: the agent will later POST to them, from
inside the network Wicket protects. A URL is refused unless it is ``https`` and every address
its host resolves to is public, or the policy names the host (``a2a.push_allowed_hosts``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from proxy.core.patterns import GlobSet

METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "instance-data"})


def push_urls(value: Any, found: list[Any] | None = None) -> list[Any]:
    """Every ``url`` member anywhere inside ``value`` (a push config, or a message's configuration)."""
    found = [] if found is None else found
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "url":
                found.append(item)
            else:
                push_urls(item, found)
    elif isinstance(value, list):
        for item in value:
            push_urls(item, found)
    return found


def _blocked_address(address: str) -> str | None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        ip = mapped
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (cloud metadata lives there)"
    if ip.is_private or ip.is_reserved or ip.is_multicast or ip.is_unspecified or not ip.is_global:
        return "a private or non-public address"
    return None


async def push_url_problem(url: Any, allowed: GlobSet) -> str | None:
    """Why the agent must not be told to POST to ``url``; None when it may."""
    if not isinstance(url, str) or not url:
        return "a push notification url must be a non-empty string"
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower().rstrip(".")
        port = parts.port
    except ValueError:
        return "the push notification url cannot be parsed"
    if not host:
        return "the push notification url has no host"
    if allowed.matches(host):
        return None  # the operator named this receiver in the policy
    if parts.scheme.lower() != "https":
        return f"push notification urls must use https (got {parts.scheme or 'no scheme'}://)"
    if host in METADATA_HOSTS or host == "localhost" or host.endswith(".localhost"):
        return f"push notification host '{host}' is a local or metadata service"
    try:
        ipaddress.ip_address(host)
        addresses = [host]
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
        except OSError:
            return f"push notification host '{host}' does not resolve"
        addresses = [str(info[4][0]) for info in infos]
    for address in addresses:
        why = _blocked_address(address)
        if why is not None:
            return f"push notification host '{host}' is {why}"
    return None
