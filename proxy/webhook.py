"""The approval webhook: tell a human that an agent is waiting for an approval.

Every new approval request is POSTed as JSON to ``approvals.webhook.url``, either as the
approval record itself (``format: wicket``) or as a message a Slack-compatible incoming
webhook accepts (``format: slack``). Delivery is fire-and-forget: it runs after the decision
has been made, under its own deadline, and a failure is logged and counted
(``wicket_webhook_failures_total``) but never changes or delays a decision.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from proxy.core.policy import WebhookSettings
from proxy.httpio import client_session
from proxy.telemetry import Metrics

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 100
"""Deliveries pending at once; beyond this a notification is dropped (and counted) rather than queued."""


class WebhookError(Exception):
    """The receiver answered, but not with success."""


def _mrkdwn(text: str) -> str:
    """Slack mrkdwn control characters escaped, so agent-supplied text cannot ping or link anyone."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("`", "'")


def slack_message(record: Mapping[str, Any]) -> dict[str, Any]:
    """``{"text", "blocks"}`` for a Slack-compatible incoming webhook, with the commands to decide."""
    approval_id = _mrkdwn(str(record["approval_id"]))
    agent = _mrkdwn(str(record["agent_id"]))
    actions = _mrkdwn(", ".join(str(a) for a in record["actions"]))
    effect = _mrkdwn(str(record["effect"]))
    session = _mrkdwn(str(record["session_id"]))
    reason = _mrkdwn(str(record["reason"])) if record.get("reason") else "_none given_"
    approve = f"wicket approvals approve {approval_id}"
    deny = f"wicket approvals deny {approval_id}"
    text = (
        f"Wicket: agent {agent} asks for approval to run {actions} ({effect}) in session {session}. "
        f"Approve with `{approve}` before {record['expires_at']}."
    )
    details = (
        f"*Agent* `{agent}` asks to run `{actions}` ({effect} effect)\n"
        f"*Session* `{session}`\n*Reason given* {reason}\n*Request expires* {record['expires_at']}"
    )
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": details}},
            {"type": "section", "text": {"type": "mrkdwn", "text": f"Approve: `{approve}`\nDeny: `{deny}`"}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"Wicket approval {approval_id}"}]},
        ],
    }


class ApprovalWebhook:
    """Implements ``ApprovalNotifier``: each ``notify`` schedules one POST and returns at once."""

    def __init__(self, settings: WebhookSettings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        parts = urlsplit(settings.url)
        self._where = f"{parts.scheme}://{parts.hostname or ''}"  # the path may hold a secret (Slack's does)
        self._client: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def payload(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return slack_message(record) if self._settings.format == "slack" else dict(record)

    def notify(self, record: dict[str, Any]) -> None:
        if len(self._tasks) >= MAX_IN_FLIGHT:
            self._failed("too many deliveries in flight")
            return
        task = asyncio.get_running_loop().create_task(self._deliver(self.payload(record)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, payload: dict[str, Any]) -> None:
        try:
            async with asyncio.timeout(self._settings.timeout_seconds):
                if self._client is None:
                    self._client = client_session()
                async with self._client.post(self._settings.url, json=payload, allow_redirects=False) as response:
                    await response.read()
                    if response.status >= 300:
                        raise WebhookError(f"HTTP {response.status}")
        except TimeoutError:
            self._failed(f"no answer within {self._settings.timeout_seconds:g}s")
        except (aiohttp.ClientError, OSError, WebhookError) as exc:
            self._failed(str(exc) if isinstance(exc, WebhookError) else exc.__class__.__name__)

    def _failed(self, why: str) -> None:
        self._metrics.webhook_failures.inc()
        log.warning("approval webhook to %s failed: %s", self._where, why)

    async def close(self) -> None:
        """Let deliveries already under way finish (each is bounded by its timeout), then close."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
            self._client = None
