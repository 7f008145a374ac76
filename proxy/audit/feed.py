"""A live feed of the audit log: every sealed event, fanned out in process to whoever listens.

The operator console follows decisions as they happen (``GET /v1/events``). Publishing must
never slow down or fail the audit append it follows, so each subscriber has a bounded queue
and an event that does not fit is dropped for that subscriber alone (and counted).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from proxy.audit.sink import AuditSink, Publish

log = logging.getLogger(__name__)

_CLOSED: dict[str, Any] = {}  # the sentinel a closing feed hands every subscriber


class EventPublisher(Protocol):
    """Where sealed audit events go after they are written. Must return at once and never raise:
    the sink calls it at the end of a successful append, which a publisher fault must not fail."""

    def publish(self, event: Mapping[str, Any]) -> None: ...


class FeedClosed(Exception):
    """The feed is shutting down; the subscriber should end its stream."""


class Subscription:
    """One listener's bounded queue. Use as a context manager so it always unsubscribes."""

    def __init__(self, feed: EventFeed, size: int) -> None:
        self._feed = feed
        self.queue: asyncio.Queue[Mapping[str, Any]] = asyncio.Queue(maxsize=size)

    async def next(self, *, wait: float) -> Mapping[str, Any] | None:
        """The next event, or None if none arrived within ``wait`` seconds (time for a heartbeat)."""
        try:
            async with asyncio.timeout(wait):
                event = await self.queue.get()
        except TimeoutError:
            return None
        if event is _CLOSED:
            raise FeedClosed
        return event

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self._feed.unsubscribe(self)


class EventFeed:
    """The in-process fan-out. ``publish`` is synchronous and never blocks."""

    def __init__(self, queue_size: int = 256, on_drop: Callable[[], None] | None = None) -> None:
        self._size = queue_size
        self._subscribers: set[Subscription] = set()
        self._on_drop = on_drop
        self._closed = False

    def subscribe(self) -> Subscription:
        if self._closed:
            raise FeedClosed
        subscription = Subscription(self, self._size)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, event: Mapping[str, Any]) -> None:
        try:
            for subscription in tuple(self._subscribers):
                try:
                    subscription.queue.put_nowait(event)
                except asyncio.QueueFull:
                    if self._on_drop is not None:
                        self._on_drop()
        except Exception as exc:  # the feed is a convenience; the audit write already succeeded
            log.warning("audit event not published to the live feed: %s", exc.__class__.__name__)

    def close(self) -> None:
        """End every subscriber's stream (shutdown): each gets the closing sentinel, dropping a backlog."""
        self._closed = True
        for subscription in tuple(self._subscribers):
            while subscription.queue.full():
                subscription.queue.get_nowait()
            subscription.queue.put_nowait(_CLOSED)


class PublishingSink:
    """An ``AuditSink`` that hands each event it wrote to a publisher (the live feed).

    Only written events are published, after they are written (and fsynced, if the policy waits
    for that); a publisher never raises (:class:`EventPublisher`), so it never turns a written
    event into a failed append. The wrapped sink publishes at the end of its own append
    (``publish_to``): this layer adds no coroutine per record.
    """

    append: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
    """The inner sink's ``append`` itself, which publishes what it wrote."""

    def __init__(self, inner: AuditSink, publisher: EventPublisher) -> None:
        self.inner = inner
        inner.publish_to(publisher.publish)
        self.append = inner.append

    @property
    def path(self) -> Path | None:
        """The audit file, or None when the log goes to stdout."""
        path = getattr(self.inner, "path", None)
        return path if isinstance(path, Path) else None

    @property
    def healthy(self) -> bool:
        return self.inner.healthy

    @property
    def problem(self) -> str | None:
        return self.inner.problem

    @property
    def hold(self) -> str | None:
        return self.inner.hold

    @property
    def head(self) -> str:
        return self.inner.head

    @property
    def count(self) -> int:
        return self.inner.count

    def publish_to(self, publish: Publish) -> None:
        self.inner.publish_to(publish)

    async def reopen(self) -> None:
        await self.inner.reopen()

    async def close(self) -> None:
        await self.inner.close()
