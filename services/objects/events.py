"""Live object changes: a fan-out hub with one bounded queue per subscriber.

Publishing never waits on a subscriber. A subscriber whose queue is full has fallen behind: it
is dropped, and its stream ends with RESOURCE_EXHAUSTED so the client knows to resubscribe
(and re-read what it cares about) instead of silently missing events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from kiln.objects.v1 import objects_pb2
from prometheus_client import Counter, Gauge

from services.runtime.errors import FellBehind

log = logging.getLogger("kiln.objects.events")

DEFAULT_QUEUE = 1024

SUBSCRIBERS = Gauge("kiln_object_subscribers", "Live object-change subscriptions.")
EVENTS_PUBLISHED = Counter(
    "kiln_object_events_published_total", "Object events published.", ["type"]
)
SUBSCRIBERS_DROPPED = Counter(
    "kiln_object_subscribers_dropped_total", "Subscribers dropped for falling behind."
)


@dataclass(eq=False)
class _Subscriber:
    tenant: str
    scene: str
    queue: asyncio.Queue[objects_pb2.ObjectEvent | None] = field(
        default_factory=lambda: asyncio.Queue(DEFAULT_QUEUE)
    )
    overflowed: bool = False


class EventHub:
    """Fans object events out to the subscribers of the same tenant (and scene, when given)."""

    def __init__(self, *, queue_size: int = DEFAULT_QUEUE) -> None:
        self._queue_size = queue_size
        self._subscribers: set[_Subscriber] = set()

    async def publish(self, tenant: str, event: objects_pb2.ObjectEvent) -> None:
        """Delivers to every matching subscriber without waiting on any of them."""
        EVENTS_PUBLISHED.labels(objects_pb2.ObjectEventType.Name(event.type)).inc()
        self.deliver(tenant, event)

    def deliver(self, tenant: str, event: objects_pb2.ObjectEvent) -> None:
        for sub in list(self._subscribers):
            if sub.tenant != tenant or (sub.scene and sub.scene != event.object.scene):
                continue
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                self._drop(sub)

    def _drop(self, sub: _Subscriber) -> None:
        sub.overflowed = True
        self._subscribers.discard(sub)
        SUBSCRIBERS_DROPPED.inc()
        log.warning("subscriber fell behind and was dropped", extra={"tenant": sub.tenant})
        # Make room for the end-of-stream marker so the reader wakes up and learns why.
        while not sub.queue.empty():
            sub.queue.get_nowait()
        sub.queue.put_nowait(None)

    def subscribe(self, tenant: str, scene: str = "") -> AsyncIterator[objects_pb2.ObjectEvent]:
        """Registers a subscriber now (events published from here on reach it), and returns
        the iterator of its events; it raises FellBehind on overflow."""
        sub = _Subscriber(tenant=tenant, scene=scene, queue=asyncio.Queue(self._queue_size))
        self._subscribers.add(sub)
        SUBSCRIBERS.inc()
        return self._drain(sub)

    async def _drain(self, sub: _Subscriber) -> AsyncIterator[objects_pb2.ObjectEvent]:
        try:
            while True:
                event = await sub.queue.get()
                if event is None:
                    raise FellBehind(
                        "subscriber fell behind and was dropped; subscribe again and re-read"
                    )
                yield event
        finally:
            self._subscribers.discard(sub)
            SUBSCRIBERS.dec()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    async def start(self) -> None:
        """Starts cross-replica delivery where the database offers it (none in-process)."""

    async def close(self) -> None:
        for sub in list(self._subscribers):
            self._subscribers.discard(sub)
            sub.queue.put_nowait(None)
