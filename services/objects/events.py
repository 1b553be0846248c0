"""Live object changes: fan-out to subscribers, and across replicas over PostgreSQL.

Within one process (`EventHub`):

- Every subscriber has its own bounded queue. Publishing never waits on a subscriber: one whose
  queue is full has fallen behind and is dropped, and its stream ends with RESOURCE_EXHAUSTED
  (FellBehind) so the client knows to resubscribe and re-read instead of silently missing
  events. The other subscribers are not affected.
- Events of one object are delivered in version order, each version once. Every event names
  the version it follows (`prev`: version - 1 for every change, a delete included,
  the stored version before a coalesced UDP write). The hub remembers the newest version it
  delivered per object; an older or equal one is a duplicate or superseded and is dropped; one
  whose predecessor has not been delivered yet (another replica's notification still in
  flight) is held back up to HOLD_SECONDS and delivered as soon as the predecessor arrives, or
  when the wait ends, with the gap showing in its version. A delete is delivered once and ends
  the object.

Across replicas (`PostgresRelay`, PostgreSQL only; SQLite deployments are one process):

- Each replica NOTIFYs every event it publishes on CHANNEL, tagged with its origin id, and
  LISTENs on a dedicated connection; it ignores its own notifications (already delivered).
- The payload is the serialised event, base64'd, when it fits PostgreSQL's 8000-byte limit;
  else a reference (tenant, key, version, type, scene) that the receiver resolves by re-reading
  the object. The re-read state may be newer than the reference (it is delivered with its own
  version), and a deleted object cannot be re-read: its delete arrives with key and scene only.
- NOTIFYs are sent from a queue by one task, in publish order, so publishing never waits on the
  database. Both connections reconnect with backoff when they drop; the service keeps serving.

Guarantees. On every replica, each subscriber sees an object's events in strictly increasing
version order, without duplicates, and converges on the object's stored state. Versions are
gap-free (every change, from any replica) as long as each notification arrives within
HOLD_SECONDS of the change that follows it. They have gaps when notifications are lost: sent
while a listener was reconnecting, dropped because the send queue overflowed while the
database was unreachable, or late beyond the hold. UDP overwrites are coalesced before they
are stored, so other replicas see a burst as one event whose version jumps (by design, not a
loss). A subscriber that needs every intermediate state re-reads the object when its version
jumps; the replica that made a change never skips it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import random
import secrets
import weakref
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
from google.protobuf.message import DecodeError
from kiln.objects.v1 import objects_pb2
from prometheus_client import Counter, Gauge

from services.runtime.db import postgres_dsn
from services.runtime.errors import FellBehind

log = logging.getLogger("kiln.objects.events")

_T = TypeVar("_T")

DEFAULT_QUEUE = 1024
#: Objects whose last delivered version the hub remembers, to keep their events in order.
RECENT_OBJECTS = 65536
#: How long an event waits for its predecessor (a notification in flight) before it goes out.
HOLD_SECONDS = 0.05
#: Events held for one object at most; more and they go out at once.
MAX_HELD = 256
#: The NOTIFY channel; notifications are scoped to one database, so one name serves all.
CHANNEL = "kiln_object_events"
#: PostgreSQL refuses a NOTIFY payload of 8000 bytes or more (default build).
NOTIFY_LIMIT = 8000
#: Events waiting to be NOTIFYed; beyond this (database unreachable) the oldest are dropped.
SEND_QUEUE = 10000
SEND_BATCH = 200

DELETED = objects_pb2.ObjectEventType.OBJECT_EVENT_TYPE_DELETED

SUBSCRIBERS = Gauge("kiln_object_subscribers", "Live object-change subscriptions.")
EVENTS_PUBLISHED = Counter(
    "kiln_object_events_published_total", "Object events published by this replica.", ["type"]
)
SUBSCRIBERS_DROPPED = Counter(
    "kiln_object_subscribers_dropped_total", "Subscribers dropped for falling behind."
)
EVENTS_SUPERSEDED = Counter(
    "kiln_object_events_superseded_total",
    "Events not delivered because that or a newer version of the object was delivered already.",
)
EVENTS_HELD = Counter(
    "kiln_object_events_held_total",
    "Events held back until the event before them (from another replica) arrived.",
    ["outcome"],
)
RELAYED = Counter(
    "kiln_object_events_relayed_total",
    "Object events exchanged with other replicas over NOTIFY.",
    ["direction"],
)
RELAY_DROPPED = Counter(
    "kiln_object_events_relay_dropped_total",
    "Events other replicas never got: send queue overflow or unreadable notifications.",
    ["reason"],
)
NOTIFY_RECONNECTS = Counter(
    "kiln_object_notify_reconnects_total",
    "Reconnects of the LISTEN/NOTIFY connections after a failure.",
    ["connection"],
)

# Queue markers: why a subscription ends.
_FELL_BEHIND = object()
_CLOSED = object()

#: The key of field 1 (`event`, length-delimited) of SubscribeResponse.
_SUBSCRIBE_RESPONSE_EVENT = b"\x0a"


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class _Delivery:
    """One event as every subscriber's queue holds it: its SubscribeResponse bytes are made
    by the first stream that sends it and shared by the others."""

    __slots__ = ("_wire", "event")

    def __init__(self, event: objects_pb2.ObjectEvent) -> None:
        self.event = event
        self._wire: bytes | None = None

    def wire(self) -> bytes:
        if self._wire is None:
            body = self.event.SerializeToString()
            self._wire = _SUBSCRIBE_RESPONSE_EVENT + _varint(len(body)) + body
        return self._wire


@dataclass(eq=False)
class _Subscriber:
    tenant: str
    scene: str
    queue: asyncio.Queue[Any]


@dataclass(eq=False)
class _Held:
    """Events of one object waiting for their predecessor: (version, prev, event)."""

    tenant: str
    events: list[tuple[int, int, objects_pb2.ObjectEvent]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


@dataclass(frozen=True)
class Reference:
    """An event too large for a NOTIFY payload: the receiver re-reads the object."""

    tenant: str
    key: str
    version: int
    type: int
    scene: str
    time_nanos: int = 0


#: Re-reads a referenced object: the event of `ref.type` with its stored state, or None when
#: the object is gone (its delete follows).
Resolver = Callable[[Reference], Awaitable[objects_pb2.ObjectEvent | None]]
#: Told of every event another replica made (tenant, event).
RemoteObserver = Callable[[str, objects_pb2.ObjectEvent], None]


def follows(event: objects_pb2.ObjectEvent) -> int:
    """The version an event of the catalog follows: a change makes the next version; a delete
    carries the version of the state it removed."""
    return event.version - 1


def encode_notification(
    origin: str, tenant: str, event: objects_pb2.ObjectEvent, prev: int | None = None
) -> str:
    """The NOTIFY payload of an event: the event itself when it fits, else a reference."""
    after = follows(event) if prev is None else prev
    inline = json.dumps(
        {
            "o": origin,
            "t": tenant,
            "p": after,
            "e": base64.b64encode(event.SerializeToString()).decode("ascii"),
        },
        separators=(",", ":"),
    )
    # json.dumps escapes non-ASCII, so characters are bytes here.
    if len(inline) < NOTIFY_LIMIT:
        return inline
    ref = [
        event.object.key,
        event.version,
        int(event.type),
        event.object.scene,
        event.time.ToNanoseconds(),
    ]
    return json.dumps({"o": origin, "t": tenant, "p": after, "r": ref}, separators=(",", ":"))


def decode_notification(
    payload: str,
) -> tuple[str, str, int, objects_pb2.ObjectEvent | Reference]:
    """(origin, tenant, prev, event or reference); ValueError when it is not one of ours."""
    try:
        message = json.loads(payload)
        origin, tenant, prev = message["o"], message["t"], int(message["p"])
        if not isinstance(origin, str) or not isinstance(tenant, str):
            raise ValueError("origin and tenant must be strings")
        if "e" in message:
            event = objects_pb2.ObjectEvent()
            event.ParseFromString(base64.b64decode(message["e"], validate=True))
            return origin, tenant, prev, event
        key, version, kind, scene, nanos = message["r"]
        ref = Reference(tenant, str(key), int(version), int(kind), str(scene), int(nanos))
        return origin, tenant, prev, ref
    except (KeyError, TypeError, ValueError, DecodeError, binascii.Error) as exc:
        raise ValueError(f"not an object-event notification: {exc}") from exc


def _deleted_stub(ref: Reference) -> objects_pb2.ObjectEvent:
    """A delete that was too large to send: the object is gone, so only key and scene remain."""
    event = objects_pb2.ObjectEvent(
        type=DELETED,
        object=objects_pb2.Object(key=ref.key, scene=ref.scene),
        version=ref.version,
    )
    event.time.FromNanoseconds(ref.time_nanos)
    return event


def _event_of(delivery: _Delivery) -> objects_pb2.ObjectEvent:
    return delivery.event


class EventHub:
    """Fans object events out to the subscribers of the same tenant (and scene, when given)."""

    def __init__(
        self,
        *,
        queue_size: int = DEFAULT_QUEUE,
        recent: int = RECENT_OBJECTS,
        hold_seconds: float = HOLD_SECONDS,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self._queue_size = queue_size
        self._recent_limit = recent
        self._hold_seconds = hold_seconds
        self._subscribers: dict[str, set[_Subscriber]] = {}
        # (tenant, key) -> (version, deleted) of the newest event delivered, least recent first.
        self._recent: OrderedDict[tuple[str, str], tuple[int, bool]] = OrderedDict()
        self._held: dict[tuple[str, str], _Held] = {}
        self._relay: PostgresRelay | None = None
        self._observers: list[RemoteObserver] = []
        #: Tags this replica's notifications, so it can ignore its own.
        self.origin = secrets.token_hex(8)

    # --- publishing ------------------------------------------------------------------------

    async def publish(self, tenant: str, event: objects_pb2.ObjectEvent) -> None:
        """Delivers to every matching subscriber here and on the other replicas; never waits
        on a subscriber or on the database."""
        EVENTS_PUBLISHED.labels(objects_pb2.ObjectEventType.Name(event.type)).inc()
        self.deliver(tenant, event)
        self.relay(tenant, event)

    def publish_local(self, tenant: str, event: objects_pb2.ObjectEvent) -> bool:
        """Delivers here only (UDP streams relay the stored state once written); False when
        that or a newer version of the object was delivered already."""
        EVENTS_PUBLISHED.labels(objects_pb2.ObjectEventType.Name(event.type)).inc()
        return self.deliver(tenant, event)

    def relay(self, tenant: str, event: objects_pb2.ObjectEvent, prev: int | None = None) -> None:
        """Sends to the other replicas only; `prev` is the version the event follows."""
        if self._relay is not None:
            self._relay.send(tenant, event, prev)

    def deliver_remote(
        self, tenant: str, event: objects_pb2.ObjectEvent, prev: int | None = None
    ) -> None:
        """An event from another replica: delivered here, and observers are told."""
        RELAYED.labels("received").inc()
        if self.deliver(tenant, event, prev):
            for observe in self._observers:
                observe(tenant, event)

    def observe_remote(self, observer: RemoteObserver) -> None:
        """Calls `observer` for every event another replica made (UDP caches use it)."""
        self._observers.append(observer)

    def deliver(self, tenant: str, event: objects_pb2.ObjectEvent, prev: int | None = None) -> bool:
        """Delivers to this replica's subscribers in version order (see the module docstring).
        False when that or a newer version of the object was delivered already."""
        ident = (tenant, event.object.key)
        if self._superseded(ident, event):
            EVENTS_SUPERSEDED.inc()
            return False
        after = follows(event) if prev is None else prev
        last = self._recent.get(ident)
        if last is None or after <= last[0]:
            self._emit(ident, tenant, event)
            if ident in self._held:
                self._release(ident)
        else:
            self._hold(ident, tenant, event, after)
        return True

    def last_version(self, tenant: str, key: str) -> int | None:
        """The newest version of the object known here (delivered or held), if remembered."""
        ident = (tenant, key)
        last = self._recent.get(ident)
        held = self._held.get(ident)
        newest = max((v for v, _, _ in held.events), default=None) if held else None
        if last is None:
            return newest
        return last[0] if newest is None else max(last[0], newest)

    def _superseded(self, ident: tuple[str, str], event: objects_pb2.ObjectEvent) -> bool:
        last = self._recent.get(ident)
        if last is None:
            return False
        version, deleted = last
        # After a delete nothing of the object is news; a delete itself may carry an older
        # version than streamed (UDP) states delivered here, and still ends the object.
        return deleted or (event.type != DELETED and event.version <= version)

    def _emit(self, ident: tuple[str, str], tenant: str, event: objects_pb2.ObjectEvent) -> None:
        last = self._recent.pop(ident, None)
        self._recent[ident] = (max(event.version, last[0] if last else 0), event.type == DELETED)
        if len(self._recent) > self._recent_limit:
            self._recent.popitem(last=False)
        subscribers = self._subscribers.get(tenant)
        if not subscribers:
            return
        scene = event.object.scene
        delivery = _Delivery(event)
        for sub in list(subscribers):
            if sub.scene and sub.scene != scene:
                continue
            try:
                sub.queue.put_nowait(delivery)
            except asyncio.QueueFull:
                self._drop(sub)

    def _hold(
        self, ident: tuple[str, str], tenant: str, event: objects_pb2.ObjectEvent, after: int
    ) -> None:
        held = self._held.get(ident)
        if held is None:
            held = self._held[ident] = _Held(tenant)
            held.timer = asyncio.get_running_loop().call_later(
                self._hold_seconds, self._give_up_waiting, ident
            )
        held.events.append((event.version, after, event))
        if len(held.events) > MAX_HELD:
            self._give_up_waiting(ident)

    def _release(self, ident: tuple[str, str]) -> None:
        """Delivers the held events whose predecessor has now been delivered, in order."""
        held = self._held[ident]
        held.events.sort(key=lambda item: item[0])
        waiting = []
        for version, after, event in held.events:
            last = self._recent[ident]
            if self._superseded(ident, event):
                EVENTS_SUPERSEDED.inc()
            elif after <= last[0]:
                EVENTS_HELD.labels("in_order").inc()
                self._emit(ident, held.tenant, event)
            else:
                waiting.append((version, after, event))
        held.events = waiting
        if not waiting:
            self._forget_held(ident)

    def _give_up_waiting(self, ident: tuple[str, str]) -> None:
        """The predecessor never came: deliver what waited, in order; the gap shows."""
        held = self._forget_held(ident)
        if held is None:
            return
        for _, _, event in sorted(held.events, key=lambda item: item[0]):
            if self._superseded(ident, event):
                EVENTS_SUPERSEDED.inc()
            else:
                EVENTS_HELD.labels("gap").inc()
                self._emit(ident, held.tenant, event)

    def _forget_held(self, ident: tuple[str, str]) -> _Held | None:
        held = self._held.pop(ident, None)
        if held is not None and held.timer is not None:
            held.timer.cancel()
        return held

    # --- subscribing -----------------------------------------------------------------------

    def subscribe(self, tenant: str, scene: str = "") -> AsyncIterator[objects_pb2.ObjectEvent]:
        """Registers now (events published from here on are queued) and returns the stream;
        it raises FellBehind when the subscriber overflowed, and ends when the hub closes."""
        return self._register(tenant, scene, _event_of)

    def subscribe_wire(self, tenant: str, scene: str = "") -> AsyncIterator[bytes]:
        """`subscribe`, each event as the bytes of a SubscribeResponse carrying it: made once
        per event, however many streams send it."""
        return self._register(tenant, scene, _Delivery.wire)

    def _register(
        self, tenant: str, scene: str, convert: Callable[[_Delivery], _T]
    ) -> AsyncIterator[_T]:
        sub = _Subscriber(tenant=tenant, scene=scene, queue=asyncio.Queue(self._queue_size))
        self._subscribers.setdefault(tenant, set()).add(sub)
        SUBSCRIBERS.inc()
        stream = self._stream(sub, convert)
        # A stream dropped before its first read never runs its `finally`; this covers it.
        weakref.finalize(stream, self._unregister, sub)
        return stream

    async def _stream(
        self, sub: _Subscriber, convert: Callable[[_Delivery], _T]
    ) -> AsyncIterator[_T]:
        try:
            while True:
                item = await sub.queue.get()
                if item is _FELL_BEHIND:
                    raise FellBehind(
                        "subscriber fell behind and was dropped; subscribe again and re-read"
                    )
                if item is _CLOSED:
                    return
                yield convert(item)
        finally:
            self._unregister(sub)

    def _unregister(self, sub: _Subscriber) -> None:
        subscribers = self._subscribers.get(sub.tenant)
        if subscribers is None or sub not in subscribers:
            return
        subscribers.discard(sub)
        if not subscribers:
            del self._subscribers[sub.tenant]
        SUBSCRIBERS.dec()

    def _drop(self, sub: _Subscriber) -> None:
        self._unregister(sub)
        SUBSCRIBERS_DROPPED.inc()
        log.warning("subscriber fell behind and was dropped", extra={"tenant": sub.tenant})
        # Make room for the marker so the reader learns why as soon as it reads again.
        while not sub.queue.empty():
            sub.queue.get_nowait()
        sub.queue.put_nowait(_FELL_BEHIND)

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, database_url: str = "", resolve: Resolver | None = None) -> None:
        """Starts cross-replica delivery when the database is PostgreSQL; in-process only
        otherwise. `resolve` re-reads objects whose events were too large to send."""
        dsn = postgres_dsn(database_url) if database_url else None
        if dsn is None:
            return
        if resolve is None:
            raise ValueError("a resolver is needed for cross-replica delivery")
        self._relay = PostgresRelay(dsn, self, resolve)
        await self._relay.start()

    @property
    def relay_connection(self) -> PostgresRelay | None:
        return self._relay

    async def close(self) -> None:
        """Ends every subscription (normally: the client resubscribes elsewhere)."""
        if self._relay is not None:
            await self._relay.close()
            self._relay = None
        for ident in list(self._held):
            self._give_up_waiting(ident)
        for subscribers in list(self._subscribers.values()):
            for sub in list(subscribers):
                self._unregister(sub)
                if sub.queue.full():  # make room for the marker: the stream ends either way
                    sub.queue.get_nowait()
                sub.queue.put_nowait(_CLOSED)


@dataclass
class Backoff:
    """Exponential backoff with jitter, so replicas do not reconnect in lockstep."""

    first: float = 0.1
    limit: float = 5.0
    _next: float = field(default=0.0, init=False)

    def reset(self) -> None:
        self._next = self.first

    def delay(self) -> float:
        current = self._next or self.first
        self._next = min(current * 2, self.limit)
        return current * random.uniform(0.5, 1.0)


class PostgresRelay:
    """NOTIFY out, LISTEN in, each on its own asyncpg connection, both reconnecting."""

    #: How often an idle listener checks that its connection is alive.
    KEEPALIVE_SECONDS = 10.0
    CONNECT_TIMEOUT = 5.0
    START_TIMEOUT = 30.0

    def __init__(
        self,
        dsn: str,
        hub: EventHub,
        resolve: Resolver,
        *,
        channel: str = CHANNEL,
        backoff: Backoff | None = None,
    ) -> None:
        self._dsn = dsn
        self._hub = hub
        self._resolve = resolve
        self._channel = channel
        self._backoff_template = backoff or Backoff()
        self._outbox: deque[str] = deque()
        self._wake = asyncio.Event()
        self._references: asyncio.Queue[tuple[Reference, int]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._listener: Any = None
        # encode_notification writes the origin first, so a prefix test recognises our own.
        self._own_prefix = '{"o":' + json.dumps(hub.origin) + ","
        #: Set while the listener is connected.
        self.listening = asyncio.Event()

    async def start(self) -> None:
        """Connects the listener before returning, so a replica that reports serving receives
        every change committed after that; later drops are retried in the background."""
        first = await asyncpg.connect(self._dsn, timeout=self.CONNECT_TIMEOUT)
        self._tasks = [
            asyncio.create_task(self._listen(first), name="kiln-events-listen"),
            asyncio.create_task(self._send(), name="kiln-events-notify"),
            asyncio.create_task(self._resolve_references(), name="kiln-events-resolve"),
        ]
        try:
            await asyncio.wait_for(self.listening.wait(), self.START_TIMEOUT)
        except TimeoutError:
            await self.close()
            raise

    def send(self, tenant: str, event: objects_pb2.ObjectEvent, prev: int | None = None) -> None:
        if len(self._outbox) >= SEND_QUEUE:
            self._outbox.popleft()
            RELAY_DROPPED.labels("send_queue_full").inc()
        self._outbox.append(encode_notification(self._hub.origin, tenant, event, prev))
        self._wake.set()

    # --- out -------------------------------------------------------------------------------

    async def _send(self) -> None:
        conn: Any = None
        backoff = self._copy_backoff()
        # The subquery fixes the order: one batch, one round trip, notifications in order.
        statement = (
            "SELECT pg_notify($1, p) FROM "
            "(SELECT p FROM unnest($2::text[]) WITH ORDINALITY AS t(p, i) ORDER BY i) AS s"
        )
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                batch = [self._outbox[i] for i in range(min(SEND_BATCH, len(self._outbox)))]
                try:
                    if conn is not None and conn.is_closed():
                        NOTIFY_RECONNECTS.labels("notify").inc()
                        log.warning("NOTIFY connection lost; reconnecting")
                        conn = None
                    if conn is None:
                        conn = await asyncpg.connect(self._dsn, timeout=self.CONNECT_TIMEOUT)
                    await conn.execute(statement, self._channel, batch)
                except Exception as exc:  # whatever the driver raises: never stop relaying
                    # Retrying may send a batch twice; receivers drop the duplicate versions.
                    if conn is not None:
                        conn.terminate()
                        conn = None
                    if self._closing:
                        return
                    NOTIFY_RECONNECTS.labels("notify").inc()
                    log.warning("NOTIFY failed; retrying", extra={"error": repr(exc)})
                    await asyncio.sleep(backoff.delay())
                    continue
                backoff.reset()
                RELAYED.labels("sent").inc(len(batch))
                for _ in batch:
                    self._outbox.popleft()
            if self._closing:
                if conn is not None:
                    await conn.close()
                return

    # --- in --------------------------------------------------------------------------------

    async def _listen(self, conn: Any) -> None:
        backoff = self._copy_backoff()
        while not self._closing:
            try:
                if conn is None:
                    conn = await asyncpg.connect(self._dsn, timeout=self.CONNECT_TIMEOUT)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(self._channel, self._on_notify)
                self._listener = conn
                self.listening.set()
                backoff.reset()
                while not lost.is_set():
                    try:
                        await asyncio.wait_for(lost.wait(), self.KEEPALIVE_SECONDS)
                    except TimeoutError:
                        # A silently dead peer (no RST) is only noticed by talking to it.
                        await conn.fetchval("SELECT 1", timeout=self.CONNECT_TIMEOUT)
                raise ConnectionError("LISTEN connection closed")
            except Exception as exc:  # whatever the driver raises: never stop listening
                self.listening.clear()
                if self._closing:
                    break
                # Notifications sent until the listener is back are lost; subscribers see the
                # gap in versions (module docstring). The service keeps running.
                NOTIFY_RECONNECTS.labels("listen").inc()
                log.warning("LISTEN connection lost; reconnecting", extra={"error": repr(exc)})
                if conn is not None:
                    conn.terminate()
                    conn = None
                await asyncio.sleep(backoff.delay())
        if conn is not None and not conn.is_closed():
            await conn.close()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload.startswith(self._own_prefix):
            return  # our own, delivered when published: not worth decoding
        try:
            origin, tenant, prev, item = decode_notification(payload)
        except ValueError as exc:
            RELAY_DROPPED.labels("unreadable").inc()
            log.warning("ignored an unreadable notification", extra={"error": str(exc)})
            return
        if origin == self._hub.origin:
            return  # our own: delivered locally when it was published
        if isinstance(item, Reference):
            self._references.put_nowait((item, prev))
        else:
            self._hub.deliver_remote(tenant, item, prev)

    async def _resolve_references(self) -> None:
        # One at a time, in arrival order; an event overtaken meanwhile is dropped as superseded.
        while True:
            ref, prev = await self._references.get()
            try:
                event = await self._resolve(ref)
                if event is None and ref.type == DELETED:
                    event = _deleted_stub(ref)
            except Exception:
                log.exception("could not re-read a referenced object", extra={"key": ref.key})
                RELAY_DROPPED.labels("unresolved").inc()
                continue
            if event is not None:
                self._hub.deliver_remote(ref.tenant, event, prev)

    def _copy_backoff(self) -> Backoff:
        return Backoff(self._backoff_template.first, self._backoff_template.limit)

    async def close(self) -> None:
        """Sends what is queued (briefly), then closes both connections."""
        self._closing = True
        self._wake.set()
        sender = self._tasks[1] if len(self._tasks) > 1 else None
        if sender is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(sender), 2.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._listener is not None and not self._listener.is_closed():
            self._listener.terminate()
