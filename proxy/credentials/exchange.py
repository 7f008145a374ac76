"""RFC 8693 token exchange at the operator's IdP: the agent's JWT in, a narrowed token out.

Exchanged tokens are cached per (subject token, endpoint, client, audience, scope, type)
until shortly before they expire, and concurrent identical exchanges share one request, so
a burst of tool calls costs the IdP one round trip.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote_plus

import aiohttp
import jwt

from proxy.httpio import client_session, read_limited

TOKEN_EXCHANGE_GRANT: Final = "urn:ietf:params:oauth:grant-type:token-exchange"
TOKEN_TYPES: Final = {
    "jwt": "urn:ietf:params:oauth:token-type:jwt",
    "access_token": "urn:ietf:params:oauth:token-type:access_token",
}
_MAX_RESPONSE_BYTES: Final = 64 * 1024


class CredentialError(Exception):
    """No credential can be derived for this call; the adapter fails it closed (502).

    ``reason`` is safe to show and audit: it never contains a token or a secret.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ExchangedToken:
    """What the token endpoint issued. ``expires_at`` is ``None`` when the IdP did not say."""

    access_token: str = field(repr=False)
    token_type: str
    issued_token_type: str | None
    expires_at: float | None
    scope: str | None


_Key = tuple[str, str, str, str, str, str]


def _printable(text: object, limit: int = 200) -> str:
    """An IdP's error text, cut short and stripped of control characters before it is logged."""
    cleaned = "".join(ch for ch in str(text) if ch.isprintable())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


def _jwt_exp(token: str) -> float | None:
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        return None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


class TokenExchanger:
    """An aiohttp client for one or more RFC 8693 token endpoints (``client_secret_basic``)."""

    def __init__(
        self,
        client: aiohttp.ClientSession | None = None,
        *,
        timeout: float = 10.0,
        refresh_margin: float = 30.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._owns_client = False
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._margin = refresh_margin
        self._max_entries = max_entries
        self._clock = clock
        self._cache: dict[_Key, tuple[ExchangedToken, float]] = {}  # key -> (token, usable until)
        self._inflight: dict[_Key, asyncio.Task[ExchangedToken]] = {}
        self.requests = 0
        """Exchanges actually sent to an IdP (cache hits and joined requests do not count)."""

    async def exchange(
        self,
        subject_token: str,
        *,
        token_endpoint: str,
        client_id: str,
        client_secret: str,
        audience: str,
        scope: Sequence[str] = (),
        subject_token_type: str = "jwt",
    ) -> ExchangedToken:
        """A token for ``audience`` narrowed to ``scope`` (empty: let the IdP decide), cached."""
        if subject_token_type not in TOKEN_TYPES:
            raise CredentialError(f"unsupported subject_token_type {subject_token_type!r}")
        scope_text = " ".join(scope)
        digest = hashlib.sha256(subject_token.encode()).hexdigest()
        key: _Key = (digest, token_endpoint, client_id, audience, scope_text, subject_token_type)
        cached = self._cache.get(key)
        if cached is not None:
            if cached[1] > self._clock():
                return cached[0]
            del self._cache[key]
        task = self._inflight.get(key)
        if task is None:
            form = {
                "grant_type": TOKEN_EXCHANGE_GRANT,
                "subject_token": subject_token,
                "subject_token_type": TOKEN_TYPES[subject_token_type],
                "audience": audience,
            }
            if scope_text:
                form["scope"] = scope_text
            task = asyncio.ensure_future(self._fetch(key, token_endpoint, client_id, client_secret, form))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task)

    def _finished(self, key: _Key, task: asyncio.Task[ExchangedToken]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: a failure every waiter abandoned is not reported as lost

    async def _fetch(
        self, key: _Key, endpoint: str, client_id: str, client_secret: str, form: dict[str, str]
    ) -> ExchangedToken:
        # RFC 6749 §2.3.1: id and secret are form-urlencoded before they are joined and encoded.
        basic = base64.b64encode(f"{quote_plus(client_id)}:{quote_plus(client_secret)}".encode()).decode()
        headers = {"Authorization": f"Basic {basic}", "Accept": "application/json"}
        if self._client is None:
            self._client, self._owns_client = client_session(), True
        self.requests += 1
        try:
            async with self._client.post(
                endpoint, data=form, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as response:
                status = response.status
                raw = await read_limited(response.content, _MAX_RESPONSE_BYTES)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise CredentialError(f"token exchange at {endpoint} failed: {exc.__class__.__name__}") from None
        if raw is None:
            raise CredentialError(f"token exchange at {endpoint} failed: the response is too large")
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        if status != 200:
            detail = ""
            if isinstance(body, dict) and "error" in body:
                detail = f": {_printable(body['error'], 60)}"
                if body.get("error_description"):
                    detail += f" ({_printable(body['error_description'])})"
            raise CredentialError(f"token exchange at {endpoint} was refused: HTTP {status}{detail}")
        if not isinstance(body, dict) or not isinstance(body.get("access_token"), str) or not body["access_token"]:
            raise CredentialError(f"token exchange at {endpoint} answered without an access_token")
        token_type = body.get("token_type")
        expires_in = body.get("expires_in")
        now = self._clock()
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
            expires_at: float | None = now + float(expires_in)
        else:
            expires_at = _jwt_exp(body["access_token"])
        issued = ExchangedToken(
            access_token=body["access_token"],
            token_type=token_type if isinstance(token_type, str) else "Bearer",
            issued_token_type=body.get("issued_token_type") if isinstance(body.get("issued_token_type"), str) else None,
            expires_at=expires_at,
            scope=body.get("scope") if isinstance(body.get("scope"), str) else None,
        )
        if expires_at is not None and expires_at - self._margin > now:
            self._store(key, issued, expires_at - self._margin)
        return issued

    def _store(self, key: _Key, token: ExchangedToken, until: float) -> None:
        if len(self._cache) >= self._max_entries:
            now = self._clock()
            self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
            while len(self._cache) >= self._max_entries:
                del self._cache[next(iter(self._cache))]
        self._cache[key] = (token, until)

    async def close(self) -> None:
        if self._owns_client and self._client is not None:
            await self._client.close()
            self._client, self._owns_client = None, False
