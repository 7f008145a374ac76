"""A local fake of the Anthropic Messages API, close enough for the real ``anthropic`` SDK.

Tests point ``anthropic.AsyncAnthropic(base_url=fake.url)`` at it, script the next replies
(verdicts, malformed output, errors, slowness) and then inspect exactly what Wicket sent.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from aiohttp import web

API_KEY = "test-key"
MalformedKind = Literal[
    "text_only", "wrong_types", "invalid_json", "wrong_tool", "missing_field", "bad_confidence", "bad_verdict"
]
MALFORMED_KINDS: tuple[MalformedKind, ...] = (
    "text_only",
    "wrong_types",
    "invalid_json",
    "wrong_tool",
    "missing_field",
    "bad_confidence",
    "bad_verdict",
)


@dataclass(frozen=True)
class Received:
    """One request as the fake saw it."""

    path: str
    headers: dict[str, str]
    raw: bytes

    @property
    def api_key(self) -> str | None:
        """The credential as the real API reads it: ``x-api-key``, or ``Authorization: Bearer`` (SDK 2.x)."""
        headers = {name.lower(): value for name, value in self.headers.items()}
        if "x-api-key" in headers:
            return headers["x-api-key"]
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return token if scheme.lower() == "bearer" and token else None

    @property
    def body(self) -> dict[str, Any]:
        return json.loads(self.raw)

    @property
    def user_text(self) -> str:
        """The text of the first user message (string or text-block content)."""
        content = self.body["messages"][0]["content"]
        if isinstance(content, str):
            return content
        return "".join(block.get("text", "") for block in content)

    @property
    def system_text(self) -> str:
        system = self.body.get("system", "")
        return system if isinstance(system, str) else "".join(block.get("text", "") for block in system)


class FakeAnthropic:
    """``POST /v1/messages`` on 127.0.0.1, a random free port. Behaviour persists until changed."""

    def __init__(self, api_key: str = API_KEY) -> None:
        self.api_key = api_key
        self.requests: list[Received] = []
        self._mode: tuple[str, Any] = ("verdict", {"verdict": "allow", "confidence": 0.95, "reasoning": "fine"})
        self._delay = 0.0
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- scripting ------------------------------------------------------------------

    def reply(self, *, verdict: str = "allow", confidence: float = 0.95, reasoning: str = "looks fine") -> None:
        self._mode = ("verdict", {"verdict": verdict, "confidence": confidence, "reasoning": reasoning})

    def reply_malformed(self, kind: MalformedKind) -> None:
        if kind not in MALFORMED_KINDS:
            raise ValueError(f"unknown malformed kind {kind!r}")
        self._mode = ("malformed", kind)

    def fail(self, status: int = 500, message: str = "Internal server error") -> None:
        self._mode = ("fail", (status, message))

    def slow(self, seconds: float) -> None:
        """Delay every following reply (composes with the scripted reply)."""
        self._delay = seconds

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- the endpoint ---------------------------------------------------------------

    async def _messages(self, request: web.Request) -> web.Response:
        raw = await request.read()
        received = Received(request.path, dict(request.headers), raw)
        self.requests.append(received)
        if received.api_key != self.api_key:
            return _error(401, "authentication_error", "invalid x-api-key")
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "invalid_request_error", "body is not JSON")
        if self._delay:
            try:
                await asyncio.wait_for(self._closing.wait(), self._delay)
            except TimeoutError:
                pass
        kind, arg = self._mode
        if kind == "fail":
            status, message = arg
            return _error(status, "api_error" if status >= 500 else "invalid_request_error", message)
        if kind == "verdict":
            return _message(body, [_tool_use(arg)])
        return _malformed(body, arg)


def _message(body: dict[str, Any], content: list[dict[str, Any]], stop_reason: str = "tool_use") -> web.Response:
    return web.json_response(
        {
            "id": "msg_" + secrets.token_hex(12),
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "unknown"),
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": 321, "output_tokens": 42},
        }
    )


def _tool_use(payload: dict[str, Any], name: str = "record_verdict") -> dict[str, Any]:
    return {"type": "tool_use", "id": "toolu_" + secrets.token_hex(12), "name": name, "input": payload}


def _malformed(body: dict[str, Any], kind: str) -> web.Response:
    if kind == "invalid_json":
        return web.Response(text='{"id": "msg_1", "type": "message", "content": [', content_type="application/json")
    if kind == "text_only":
        return _message(body, [{"type": "text", "text": "ALLOW. Confidence: high."}], stop_reason="end_turn")
    if kind == "wrong_types":
        return _message(body, [_tool_use({"verdict": True, "confidence": "very", "reasoning": ["ok"]})])
    if kind == "wrong_tool":
        return _message(body, [_tool_use({"verdict": "allow", "confidence": 0.99, "reasoning": "ok"}, "approve")])
    if kind == "missing_field":
        return _message(body, [_tool_use({"verdict": "allow", "reasoning": "ok"})])
    if kind == "bad_verdict":
        return _message(body, [_tool_use({"verdict": "maybe", "confidence": 0.9, "reasoning": "ok"})])
    return _message(body, [_tool_use({"verdict": "allow", "confidence": 1.5, "reasoning": "ok"})])


def _error(status: int, error_type: str, message: str) -> web.Response:
    return web.json_response({"type": "error", "error": {"type": error_type, "message": message}}, status=status)


@pytest.fixture
async def fake_anthropic() -> AsyncIterator[FakeAnthropic]:
    fake = FakeAnthropic()
    await fake.start()
    yield fake
    await fake.stop()
