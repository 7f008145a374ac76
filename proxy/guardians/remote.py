"""A sidecar's view of the central guardian service: one ``ReviewTier`` per remote tier.

``RemoteTier`` signs each review with a one-time JWT and POSTs it. It never turns a
problem into a verdict: any non-200 answer, network error, timeout or malformed reply
raises ``RemoteTierError``, and the router applies SPEC §7 (mutating falls back to Fast,
destructive and admin fail closed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import aiohttp

from proxy.core.action import Action, Decision, Effect, ReviewContext, Tier
from proxy.core.guardian import TierUnavailable
from proxy.core.sessions import Session
from proxy.guardians.wire import (
    check_key,
    decode_decision,
    dumps,
    encode_review,
    guardian_key,
    loads,
    sign_request,
)
from proxy.httpio import client_session

MAX_REPLY_BYTES: Final = 256 * 1024
REVIEW_PATH: Final = "/v1/review"


class RemoteTierError(TierUnavailable):
    """The guardian service gave no usable decision. ``status`` is its HTTP status, if it answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RemoteTier:
    """Spot or Deep, reviewed by the guardian service at ``url`` (its base URL)."""

    def __init__(
        self,
        tier: Tier,
        url: str,
        key: bytes,
        *,
        client_id: str,
        session: aiohttp.ClientSession | None = None,
        timeout: float,
    ) -> None:
        if tier not in (Tier.SPOT, Tier.DEEP):
            raise ValueError("a remote tier is Spot or Deep")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"the guardian URL must be http(s)://HOST[:PORT], got {url!r}")
        if not client_id:
            raise ValueError("client_id must name this sidecar")
        self.tier = tier
        self.url = url.rstrip("/") + REVIEW_PATH
        self._key = check_key(key)
        self._client_id = client_id
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No proxy from the environment (client_session ignores them) may see signed review traffic.
            self._session = client_session()
            self._owns_session = True
        return self._session

    async def review(
        self, action: Action, session: Session, effect: Effect, prior: Decision, context: ReviewContext
    ) -> Decision:
        try:
            body = dumps({"tier": self.tier.value, **encode_review(action, session, effect, prior, context)})
        except (TypeError, ValueError) as exc:
            raise RemoteTierError(f"cannot encode the review request: {exc.__class__.__name__}") from None
        token = sign_request(self._key, body, client_id=self._client_id)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        try:
            async with self._http().post(
                self.url, data=body, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as response:
                raw = await _read_bounded(response)
                status = response.status
        except TimeoutError:
            raise RemoteTierError(f"guardian service timed out after {self._timeout.total:g}s") from None
        except aiohttp.ClientError as exc:
            raise RemoteTierError(f"guardian service unreachable ({exc.__class__.__name__})") from None
        if status != 200:
            raise RemoteTierError(f"guardian service answered HTTP {status}: {_error_text(raw)}", status)
        try:
            reply = loads(raw)
            if not isinstance(reply, dict) or set(reply) != {"decision"}:
                raise ValueError("reply must be an object with exactly 'decision'")
            decision = decode_decision(reply["decision"])
        except (ValueError, UnicodeDecodeError) as exc:
            raise RemoteTierError(f"malformed reply from the guardian service: {exc}", status) from None
        if decision.tier is not self.tier:
            raise RemoteTierError(f"asked for a {self.tier.value} review, got a {decision.tier.value} decision", status)
        if decision.effect is not effect:
            raise RemoteTierError(
                f"asked about a {effect.label} action, got a {decision.effect.label} decision", status
            )
        return decision

    async def close(self) -> None:
        """Close the HTTP session if this tier created it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    if response.content_length is not None and response.content_length > MAX_REPLY_BYTES:
        raise RemoteTierError(f"reply exceeds {MAX_REPLY_BYTES} bytes", response.status)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_REPLY_BYTES:
            raise RemoteTierError(f"reply exceeds {MAX_REPLY_BYTES} bytes", response.status)
        chunks.append(chunk)
    return b"".join(chunks)


def _error_text(raw: bytes) -> str:
    """The service's ``error`` message, printable and short; never the raw body of a stranger."""
    try:
        message = loads(raw).get("error")
    except (ValueError, UnicodeDecodeError, AttributeError):
        message = None
    if not isinstance(message, str):
        return "no error message"
    cleaned = "".join(c if c.isprintable() else " " for c in message)
    return cleaned[:300]


def remote_tiers(
    url: str,
    env: Mapping[str, str],
    *,
    client_id: str,
    spot_timeout: float = 0.5,
    deep_timeout: float = 15.0,
    session: aiohttp.ClientSession | None = None,
) -> tuple[RemoteTier, RemoteTier]:
    """(Spot, Deep) at the guardian service; SystemExit when the shared key is missing or short.

    A sidecar must not start half-configured: without the key every remote review would be
    refused, silently turning every destructive action into a denial.
    """
    try:
        key = guardian_key(env)
    except ValueError as exc:
        raise SystemExit(f"wicket: refusing to start with --guardian-url: {exc}") from None
    try:
        return (
            RemoteTier(Tier.SPOT, url, key, client_id=client_id, session=session, timeout=spot_timeout),
            RemoteTier(Tier.DEEP, url, key, client_id=client_id, session=session, timeout=deep_timeout),
        )
    except ValueError as exc:
        raise SystemExit(f"wicket: {exc}") from None
