"""CLyman's UDP Events API ingress (api-spec §5.7): overwrites streamed, then persisted.

One JSON object per datagram, optionally AES-256-CBC encrypted and base64'd as a whole:

- `msg_type` 1, object overwrite: `{"msg_type":1,"key":"<ObjectId>","transform":[16 row-major]}`,
  or `translation` / `euler_rotation` / `quaternion_rotation` / `scale` (built as over HTTP),
  plus optionally the strings, `frame`, `timestamp` and handles. `owner` is ignored (only a lock
  sets it) and so are `assets`: appending on every datagram of a 40 Hz stream would grow the
  object without bound; assets change over HTTP.
- `msg_type` 9, property overwrite: `{"msg_type":9,"key":"…","values":[…]}` plus `frame` etc.

UDP carries no credentials: every datagram acts on one tenant (KILN_OBJECTS_UDP_TENANT), so the
port must only be reachable from trusted devices (a private network, a firewall rule, a
NetworkPolicy); the optional AES key is the only check on who sent a datagram. There is no
reply: malformed datagrams are counted (`kiln_object_udp_datagrams_rejected_total`) and dropped.

Streaming, then persisting, without unbounded work:

- An accepted object overwrite is delivered to this replica's subscribers at once, as an
  UPDATED event whose version is the next version of the object.
- Writes are coalesced per object: at most one write per object is in flight and the datagrams
  that arrive meanwhile are merged (last write wins), so a flood costs one pending state per
  object, never a queue of writes. The write stores the newest state with the newest version
  (the version counts every overwrite, even those never stored one by one) and is then relayed
  to the other replicas, which therefore see a burst as one event (a version gap).
- Another writer may change the object in between. A change through this replica's catalog
  first writes what is pending (the catalog calls `guard`), and datagrams arriving during it
  wait for it; a change on another replica makes the write conflict, and the overwrite is then
  re-applied on top of the stored object and delivered again with a newer version. Either way
  every subscriber converges on the stored state, in version order.
- Property overwrites are persisted the same coalesced way; properties have no events.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import json
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from kiln.objects.v1 import objects_pb2
from prometheus_client import Counter
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.objects.clyman import parse_object, parse_property
from services.objects.events import EventHub
from services.objects.object_store import STRING_FIELDS, ObjectRecord, ObjectRow
from services.objects.objects import KEY, ObjectCatalog, ObjectPatch, PropertyPatch, object_event
from services.runtime.errors import NotFound

log = logging.getLogger("kiln.objects.udp")

OBJECT_OVERWRITE = 1
PROPERTY_OVERWRITE = 9
#: Objects (and properties) with streamed state kept here; beyond it, idle ones are forgotten
#: and, when none is idle, datagrams for further objects are refused.
MAX_TRACKED = 10000
#: Writes in flight at once, across objects: the database pool is shared with the API.
MAX_WRITES = 8
#: How long a streamed object's state is trusted without re-reading it (missed notifications).
CACHE_SECONDS = 30.0
#: A write that keeps conflicting (another replica writing the object flat out) is given up.
MAX_CONFLICTS = 20
RECEIVE_BUFFER = 4 * 1024 * 1024

UPDATED = objects_pb2.ObjectEventType.OBJECT_EVENT_TYPE_UPDATED

ACCEPTED = Counter(
    "kiln_object_udp_datagrams_accepted_total", "UDP event datagrams accepted.", ["msg_type"]
)
REJECTED = Counter(
    "kiln_object_udp_datagrams_rejected_total", "UDP event datagrams dropped.", ["reason"]
)
WRITES = Counter("kiln_object_udp_writes_total", "Coalesced writes of UDP overwrites.", ["kind"])
PERSIST_FAILURES = Counter(
    "kiln_object_udp_persist_failures_total",
    "UDP overwrites that could not be stored (they were streamed already).",
    ["reason"],
)


# --- the wire ------------------------------------------------------------------------------


class Rejected(ValueError):
    """A datagram that is not a usable overwrite; `reason` labels the metric."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


@dataclass(frozen=True)
class ObjectOverwrite:
    key: str
    patch: ObjectPatch


@dataclass(frozen=True)
class PropertyOverwrite:
    key: str
    patch: PropertyPatch


class EventCipher:
    """CLyman's optional event security: the datagram is base64 of AES-256-CBC ciphertext
    (PKCS7 padding), with a configured 32-byte key and 16-byte IV (api-spec §5.7)."""

    def __init__(self, key: bytes, iv: bytes) -> None:
        if len(key) != 32 or len(iv) != 16:
            raise ValueError("AES-256-CBC needs a 32-byte key and a 16-byte IV")
        self._cipher = Cipher(algorithms.AES(key), modes.CBC(iv))

    @classmethod
    def from_hex(cls, key: str, iv: str) -> EventCipher:
        return cls(bytes.fromhex(key), bytes.fromhex(iv))

    def encrypt(self, plain: bytes) -> bytes:
        padder = padding.PKCS7(128).padder()
        encryptor = self._cipher.encryptor()
        data = encryptor.update(padder.update(plain) + padder.finalize()) + encryptor.finalize()
        return base64.b64encode(data)

    def decrypt(self, wire: bytes) -> bytes:
        decryptor = self._cipher.decryptor()
        unpadder = padding.PKCS7(128).unpadder()
        data = base64.b64decode(wire.strip(), validate=True)
        plain = decryptor.update(data) + decryptor.finalize()
        return unpadder.update(plain) + unpadder.finalize()


def parse_datagram(
    data: bytes, cipher: EventCipher | None = None
) -> ObjectOverwrite | PropertyOverwrite:
    """One datagram as an overwrite; raises Rejected (with the reason) otherwise."""
    if cipher is not None:
        try:
            data = cipher.decrypt(data)
        except (ValueError, binascii.Error) as exc:
            raise Rejected("decrypt", str(exc)) from exc
    try:
        message = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Rejected("json", str(exc)) from exc
    if not isinstance(message, dict):
        raise Rejected("json", "a datagram is one JSON object")
    msg_type = message.get("msg_type")
    if isinstance(msg_type, bool) or msg_type not in (OBJECT_OVERWRITE, PROPERTY_OVERWRITE):
        # CLyman handles only these two and ignores the rest.
        raise Rejected("msg_type", f"unsupported msg_type {msg_type!r}")
    key = message.get("key")
    if not isinstance(key, str) or not KEY.match(key):
        raise Rejected("key", "key must be a 24-hex-character object key")
    if msg_type == PROPERTY_OVERWRITE:
        prop = parse_property(message)
        if prop == PropertyPatch():
            raise Rejected("empty", "the overwrite changes nothing")
        return PropertyOverwrite(key, prop)
    _, parsed = parse_object(message)
    if "transform" in message and parsed.transform is None:
        raise Rejected("transform", "transform must be 16 numbers, row-major")
    patch = ObjectPatch(
        strings={k: v for k, v in parsed.strings.items() if v and k != "owner"},
        frame=parsed.frame,
        timestamp=parsed.timestamp,
        transform=parsed.transform,
        handles=parsed.handles,
    )
    if patch == ObjectPatch():
        raise Rejected("empty", "the overwrite changes nothing")
    return ObjectOverwrite(key, patch)


# --- merging overwrites --------------------------------------------------------------------


def combine(first: ObjectPatch | None, then: ObjectPatch) -> ObjectPatch:
    """One patch doing what `first` then `then` do (the later value wins field by field)."""
    if first is None:
        return then
    handles = (
        {**(first.handles or {}), **(then.handles or {})}
        if first.handles is not None or then.handles is not None
        else None
    )
    return ObjectPatch(
        strings={**first.strings, **then.strings},
        frame=then.frame if then.frame is not None else first.frame,
        timestamp=then.timestamp if then.timestamp is not None else first.timestamp,
        transform=then.transform if then.transform is not None else first.transform,
        handles=handles,
    )


def combine_property(first: PropertyPatch | None, then: PropertyPatch) -> PropertyPatch:
    if first is None:
        return then
    return PropertyPatch(
        strings={**first.strings, **then.strings},
        frame=then.frame if then.frame is not None else first.frame,
        timestamp=then.timestamp if then.timestamp is not None else first.timestamp,
        values=then.values if then.values is not None else first.values,
    )


def apply(
    record: ObjectRecord, patch: ObjectPatch, version: int, when: dt.datetime
) -> ObjectRecord:
    """The catalog's update rules (objects.ObjectCatalog.update), at a given version."""
    values: dict[str, Any] = {k: v for k, v in patch.strings.items() if v and k != "owner"}
    if patch.frame is not None:
        values["frame"] = patch.frame
    if patch.timestamp is not None:
        values["timestamp"] = patch.timestamp
    if patch.transform is not None:
        values["transform"] = list(patch.transform)
    if patch.handles is not None:
        values["handles"] = {**(record.handles or {}), **patch.handles}
    return replace(record, **values, version=version, updated_at=when)


def updated_event(record: ObjectRecord) -> objects_pb2.ObjectEvent:
    return object_event(UPDATED, record)


# --- the ingress ---------------------------------------------------------------------------


@dataclass(eq=False)
class _Streamed:
    """What this replica knows of one streamed object."""

    key: str
    base: ObjectRecord | None = None
    """The stored row `state` builds on; None until read."""
    state: ObjectRecord | None = None
    """`base` with `pending` applied: the newest state delivered here."""
    pending: ObjectPatch | None = None
    """Overwrites delivered but not stored yet."""
    backlog: list[tuple[ObjectPatch, dt.datetime]] = field(default_factory=list)
    """Overwrites not delivered yet: the state must be (re-)read first."""
    stale: bool = True
    """`base` may be out of date: re-read before delivering more."""
    read_at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        busy = self.task is not None and not self.task.done()
        return not (busy or self.pending or self.backlog or self.lock.locked())


@dataclass(eq=False)
class _StreamedProperty:
    pending: PropertyPatch | None = None
    task: asyncio.Task[None] | None = None


class UdpIngress(asyncio.DatagramProtocol):
    """The datagram endpoint, and the coalescing writer behind it."""

    def __init__(
        self,
        catalog: ObjectCatalog,
        hub: EventHub,
        sessions: async_sessionmaker[AsyncSession],
        *,
        tenant: str,
        cipher: EventCipher | None = None,
        max_tracked: int = MAX_TRACKED,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        if not tenant:
            raise ValueError("the UDP ingress needs a tenant")
        self._catalog = catalog
        self._hub = hub
        self._sessions = sessions
        self._tenant = tenant
        self._cipher = cipher
        self._max_tracked = max_tracked
        self._clock = clock
        self._objects: OrderedDict[str, _Streamed] = OrderedDict()
        self._properties: dict[str, _StreamedProperty] = {}
        self._changing: dict[str, int] = {}
        self._writes = asyncio.Semaphore(MAX_WRITES)
        self._transport: asyncio.DatagramTransport | None = None
        self.port = -1
        catalog.guard_changes(self.guard)
        hub.observe_remote(self._on_remote)

    # --- endpoint --------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        """Binds host:port (0: a free port) and returns the port."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Bursts arrive faster than one loop turn; a larger buffer drops fewer of them.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        self.port = int(transport.get_extra_info("sockname")[1])
        log.info("UDP events listening", extra={"udp_port": self.port, "tenant": self._tenant})
        return self.port

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            item = parse_datagram(data, self._cipher)
        except Rejected as exc:
            REJECTED.labels(exc.reason).inc()
            log.debug("dropped a datagram", extra={"reason": exc.reason, "peer": str(addr)})
            return
        try:
            if isinstance(item, ObjectOverwrite):
                self._accept_object(item)
            else:
                self._accept_property(item)
        except Rejected as exc:
            REJECTED.labels(exc.reason).inc()
            return
        except Exception:  # the listener must outlive any one datagram
            REJECTED.labels("error").inc()
            log.exception("could not take a datagram")
            return
        kind = OBJECT_OVERWRITE if isinstance(item, ObjectOverwrite) else PROPERTY_OVERWRITE
        ACCEPTED.labels(str(kind)).inc()

    def error_received(self, exc: Exception) -> None:
        log.warning("UDP socket error", extra={"error": repr(exc)})

    async def close(self) -> None:
        """Stops listening and stores what is pending (briefly)."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        tasks = [e.task for e in self._objects.values() if e.task is not None]
        tasks += [p.task for p in self._properties.values() if p.task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=5.0)
            for task in late:
                task.cancel()

    # --- objects ---------------------------------------------------------------------------

    def _accept_object(self, item: ObjectOverwrite) -> None:
        entry = self._objects.get(item.key)
        if entry is None:
            entry = self._track(item.key)
        else:
            self._objects.move_to_end(item.key)
        now = self._clock()
        if time.monotonic() - entry.read_at >= CACHE_SECONDS:
            entry.stale = True  # a notification may have been missed: trust the database
        if (
            entry.state is not None
            and not entry.stale
            and not entry.backlog
            and item.key not in self._changing
        ):
            self._advance(entry, item.patch, now)
        else:
            # Known state is missing or suspect: deliver after (re-)reading it.
            entry.backlog.append((item.patch, now))
        self._kick(entry)

    def _track(self, key: str) -> _Streamed:
        if len(self._objects) >= self._max_tracked:
            for old_key, old in list(self._objects.items()):
                if old.idle:
                    del self._objects[old_key]
                    break
            else:
                raise Rejected("overloaded", "too many objects with writes in flight")
        entry = _Streamed(key)
        self._objects[key] = entry
        return entry

    def _advance(self, entry: _Streamed, patch: ObjectPatch, when: dt.datetime) -> None:
        """Applies one overwrite to the known state and delivers it here at once."""
        assert entry.state is not None
        version = max(entry.state.version, self._hub.last_version(self._tenant, entry.key) or 0)
        entry.state = apply(entry.state, patch, version + 1, when)
        entry.pending = combine(entry.pending, patch)
        if not self._hub.publish_local(self._tenant, updated_event(entry.state)):
            # Something newer of this object was delivered meanwhile: read it again; the
            # pending overwrite is re-applied on top and delivered then.
            entry.stale = True

    def _kick(self, entry: _Streamed) -> None:
        if entry.task is None or entry.task.done():
            entry.task = asyncio.create_task(self._work(entry), name=f"kiln-udp-{entry.key}")

    async def _work(self, entry: _Streamed) -> None:
        try:
            # The entry first: a slot is only held by a writer that can write now.
            async with entry.lock, self._writes:
                await self._settle(entry, drain=True)
        except Exception:
            # The database is unreachable, say. What was pending stays pending and is retried
            # with the object's next datagram (or the next catalog change of it).
            PERSIST_FAILURES.labels("error").inc()
            log.exception("could not store a UDP overwrite", extra={"key": entry.key})
            entry.stale = True
        # No datagram can slip in between _settle returning and this task ending (there is no
        # await in between), so whatever arrived while it ran has been handled.

    async def _settle(self, entry: _Streamed, *, drain: bool) -> None:
        """With entry.lock held: reads, delivers what is waiting, and stores until nothing is
        pending. `drain=False` (a catalog change in progress) stores only what was delivered."""
        rounds = 0
        while True:
            if entry.key in self._changing:
                drain = False
            if entry.stale or entry.base is None:
                if not (entry.pending or (drain and entry.backlog)):
                    return  # nothing to deliver or store; read when a datagram needs it
                rounds += 1
                if rounds > MAX_CONFLICTS:
                    # Another replica keeps winning the race for this object; let it.
                    PERSIST_FAILURES.labels("conflict").inc()
                    log.warning("gave up storing a UDP overwrite", extra={"key": entry.key})
                    entry.pending = None
                    entry.backlog.clear()
                    return
                if not await self._reload(entry):
                    return
            if drain:
                while entry.backlog:
                    patch, when = entry.backlog.pop(0)
                    self._advance(entry, patch, when)
                    if entry.stale:
                        break
                if entry.stale:
                    continue
            if entry.pending is None:
                return
            assert entry.base is not None and entry.state is not None
            target, written = entry.state, entry.pending
            entry.pending = None
            over = entry.base.version
            if await self._store(entry.base, target):
                WRITES.labels("object").inc()
                entry.base, rounds = target, 0
                # Delivered here already; the other replicas get the stored state, which
                # follows the version it was written over (they never saw those in between).
                self._hub.relay(self._tenant, updated_event(target), prev=over)
                continue
            # Another replica changed the object: put the overwrite back and re-apply it on
            # top of what is stored now (the loop reads it again).
            entry.pending = combine(written, entry.pending) if entry.pending else written
            entry.stale = True

    async def _reload(self, entry: _Streamed) -> bool:
        """Reads the stored object and delivers what is pending on top of it. False when the
        object is gone (what was pending is dropped)."""
        try:
            record = await self._catalog.get(self._tenant, entry.key)
        except NotFound:
            dropped = len(entry.backlog) + (1 if entry.pending else 0)
            PERSIST_FAILURES.labels("not_found").inc(dropped)
            entry.backlog.clear()
            entry.pending = None
            entry.base = entry.state = None
            self._objects.pop(entry.key, None)
            return False
        entry.base, entry.stale, entry.read_at = record, False, time.monotonic()
        if entry.pending is None:
            entry.state = record
            return True
        seen = max(
            record.version,
            entry.state.version if entry.state else 0,
            self._hub.last_version(self._tenant, entry.key) or 0,
        )
        assert entry.state is not None
        entry.state = apply(record, entry.pending, seen + 1, entry.state.updated_at)
        if not self._hub.publish_local(self._tenant, updated_event(entry.state)):
            entry.stale = True
        return True

    async def _store(self, base: ObjectRecord, target: ObjectRecord) -> bool:
        """Writes `target` over the row if it is still at `base.version` (one statement)."""
        values: dict[str, Any] = {n: getattr(target, n) for n in STRING_FIELDS if n != "owner"}
        values.update(
            frame=target.frame,
            timestamp=target.timestamp,
            transform=list(target.transform),
            handles=target.handles,
            version=target.version,
            updated_at=target.updated_at,
        )
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(ObjectRow)
                .where(
                    ObjectRow.tenant == base.tenant,
                    ObjectRow.key == base.key,
                    ObjectRow.version == base.version,
                )
                .values(**values)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    @contextlib.asynccontextmanager
    async def guard(self, key: str) -> AsyncIterator[None]:
        """Wraps every catalog change of `key` (inside the catalog's lock for it): stores what
        was streamed first, so the change lands on top of it, and holds new datagrams until it
        is done, so no streamed version can collide with the change's version."""
        self._changing[key] = self._changing.get(key, 0) + 1
        try:
            entry = self._objects.get(key)
            if entry is None:
                yield
            else:
                async with entry.lock:
                    try:
                        await self._settle(entry, drain=False)
                    except Exception:
                        # The API change goes ahead regardless; what stays pending is
                        # re-applied on top of it later (last write wins).
                        PERSIST_FAILURES.labels("error").inc()
                        log.exception("could not store a UDP overwrite", extra={"key": key})
                    yield
        finally:
            count = self._changing.pop(key) - 1
            if count:
                self._changing[key] = count
            entry = self._objects.get(key)
            if entry is not None:
                entry.stale = True  # the change moved the object on: read it again
                if entry.backlog or entry.pending:
                    self._kick(entry)

    def _on_remote(self, tenant: str, event: objects_pb2.ObjectEvent) -> None:
        if tenant != self._tenant:
            return
        entry = self._objects.get(event.object.key)
        if entry is not None:
            entry.stale = True

    # --- properties ------------------------------------------------------------------------

    def _accept_property(self, item: PropertyOverwrite) -> None:
        entry = self._properties.get(item.key)
        if entry is None:
            if len(self._properties) >= self._max_tracked:
                raise Rejected("overloaded", "too many properties with writes in flight")
            entry = self._properties[item.key] = _StreamedProperty()
        entry.pending = combine_property(entry.pending, item.patch)
        if entry.task is None or entry.task.done():
            entry.task = asyncio.create_task(self._store_property(item.key, entry))

    async def _store_property(self, key: str, entry: _StreamedProperty) -> None:
        try:
            while entry.pending is not None:
                patch, entry.pending = entry.pending, None
                try:
                    async with self._writes:
                        await self._catalog.update_property(self._tenant, key, patch)
                    WRITES.labels("property").inc()
                except NotFound:
                    PERSIST_FAILURES.labels("not_found").inc()
                except Exception:
                    PERSIST_FAILURES.labels("error").inc()
                    log.exception("could not store a UDP property overwrite", extra={"key": key})
        finally:
            if entry.pending is None and self._properties.get(key) is entry:
                del self._properties[key]
