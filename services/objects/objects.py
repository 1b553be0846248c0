"""CLyman objects and properties: the domain rules, one implementation under both APIs.

- Keys look like MongoDB ObjectIds (24 hex characters, time first), so they sort in creation
  order, CLyman's natural order.
- Updates change only what is sent; the transform is rebuilt only when transform inputs are
  sent; assets sent in an update are appended.
- Locks are one atomic statement: any number of racing devices, exactly one winner. A lock may
  carry a lease (`lock_ttl_seconds`) so a crashed device's lock lapses; off by default.
- Every change publishes an ObjectEvent after it commits. Changes to one object are serialised
  in this process, so its events leave in version order.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import re
import secrets
import time
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeAlias

from google.protobuf import timestamp_pb2
from kiln.objects.v1 import objects_pb2
from prometheus_client import Counter

from services.objects.events import EventHub, Reference
from services.objects.object_store import (
    FieldWrite,
    ObjectQuery,
    ObjectRecord,
    ObjectStore,
    PropertyQuery,
    PropertyRecord,
    VersionConflict,
)
from services.objects.transform import IDENTITY
from services.runtime.batching import GroupCommit
from services.runtime.errors import InvalidArgument, LockHeld, MissingField, NotFound

KEY = re.compile(r"^[0-9a-f]{24}$")
DEFAULT_QUERY_LIMIT = 10
MAX_QUERY_LIMIT = 1000
MAX_LOCK_TTL_SECONDS = 24 * 3600
MAX_BATCH = 1000
_RETRIES = 20

EventType = objects_pb2.ObjectEventType
# The generated enum's value type is a NewType mypy cannot name here; values are plain ints.
EventKind: TypeAlias = int
CHANGES = Counter("kiln_object_changes_total", "Stored object changes.", ["change"])


_PROCESS = secrets.token_hex(5)
_COUNTER = itertools.count(secrets.randbelow(1 << 24))


def new_key() -> str:
    """A MongoDB ObjectId: 4 bytes of seconds, 5 random bytes per process, a 3-byte counter.
    Keys from one process sort in creation order, CLyman's natural order."""
    return f"{int(time.time()) & 0xFFFFFFFF:08x}{_PROCESS}{next(_COUNTER) & 0xFFFFFF:06x}"


@dataclass(frozen=True)
class ObjectPatch:
    """What an update sends: only set fields change."""

    strings: dict[str, str] = field(default_factory=dict)
    """Non-empty strings replace (CLyman never clears a string through an update)."""
    frame: int | None = None
    timestamp: int | None = None
    transform: list[float] | None = None
    """A rebuilt transform, only when transform inputs were sent."""
    add_assets: list[str] = field(default_factory=list)
    handles: dict[str, Any] | None = None


@dataclass(frozen=True)
class PropertyPatch:
    strings: dict[str, str] = field(default_factory=dict)
    frame: int | None = None
    timestamp: int | None = None
    values: list[dict[str, Any]] | None = None


def to_proto(record: ObjectRecord) -> objects_pb2.Object:
    """The idiomatic message of a record; CLyman's envelope is built from the same record."""
    obj = objects_pb2.Object(
        key=record.key,
        name=record.name,
        type=record.type,
        subtype=record.subtype,
        owner=record.owner,
        scene=record.scene,
        parent=record.parent,
        asset_sub_id=record.asset_sub_id,
        transform=record.transform,
        assets=record.assets,
    )
    if record.frame is not None:
        obj.frame = record.frame
    if record.timestamp is not None:
        obj.timestamp = record.timestamp
    handles = record.handles or {}
    for name in ("translation", "rotation", "scale"):
        getattr(obj, f"{name}_handle").extend(
            objects_pb2.Handle(**h) for h in handles.get(name, [])
        )
    if record.lock_expires_at is not None:
        obj.lock_expire_time.FromDatetime(record.lock_expires_at)
    return obj


def object_event(kind: EventKind, record: ObjectRecord) -> objects_pb2.ObjectEvent:
    """The event of a change that produced `record`."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(record.updated_at)
    return objects_pb2.ObjectEvent(
        type=kind,  # type: ignore[arg-type]
        object=to_proto(record),
        version=record.version,
        time=stamp,
    )


class ObjectCatalog:
    """Objects and properties of every tenant, and the events their changes publish."""

    def __init__(
        self,
        store: ObjectStore,
        events: EventHub,
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._store = store
        self._events = events
        self._clock = clock
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._guard: Callable[[str], AbstractAsyncContextManager[None]] | None = None
        # Field overwrites of concurrent requests share one statement and one commit.
        self._overwrites: GroupCommit[FieldWrite, ObjectRecord | None] = GroupCommit(
            self._commit_overwrites
        )

    @property
    def events(self) -> EventHub:
        return self._events

    def guard_changes(self, guard: Callable[[str], AbstractAsyncContextManager[None]]) -> None:
        """Wraps every change of one object, inside its lock: the UDP ingress stores what it
        streamed first and holds new datagrams until the change is published (udp.py)."""
        self._guard = guard

    async def resolve_event(self, ref: Reference) -> objects_pb2.ObjectEvent | None:
        """The event a too-large notification referred to, with the object's stored state;
        None when the object is gone (events.PostgresRelay)."""
        record = await self._store.get_object(ref.tenant, ref.key)
        return None if record is None else object_event(ref.type, record)

    @asynccontextmanager
    async def _serialised(self, key: str) -> AsyncIterator[None]:
        # One writer per object in this process: commit and publish happen in version order.
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        async with lock:
            if self._guard is None:
                yield
            else:
                async with self._guard(key):
                    yield

    async def _publish(self, tenant: str, kind: EventKind, record: ObjectRecord) -> None:
        await self._events.publish(tenant, object_event(kind, record))

    async def announce_created(self, tenant: str, records: Sequence[ObjectRecord]) -> None:
        """Publishes the creation of objects another catalog stored (a scene import)."""
        CHANGES.labels("create").inc(len(records))
        for record in records:
            await self._publish(tenant, EventType.OBJECT_EVENT_TYPE_CREATED, record)

    async def announce_deleted(self, tenant: str, records: Sequence[ObjectRecord]) -> None:
        """Publishes the deletion of objects another catalog removed (a scene delete)."""
        CHANGES.labels("delete").inc(len(records))
        now = self._clock()
        for record in records:
            gone = replace(record, version=record.version + 1, updated_at=now)
            await self._publish(tenant, EventType.OBJECT_EVENT_TYPE_DELETED, gone)

    # --- objects ---------------------------------------------------------------------------

    async def create(self, tenant: str, drafts: Sequence[ObjectRecord]) -> list[ObjectRecord]:
        """Stores every draft (key, tenant and version assigned) in one transaction."""
        if not drafts:
            raise InvalidArgument("no objects to create", field="objects")
        if len(drafts) > MAX_BATCH:
            raise InvalidArgument(f"at most {MAX_BATCH} objects per request", field="objects")
        now = self._clock()
        records = [
            replace(
                d,
                key=new_key(),
                tenant=tenant,
                owner="",
                transform=list(d.transform or IDENTITY),
                version=1,
                lock_expires_at=None,
                created_at=now,
                updated_at=now,
            )
            for d in drafts
        ]
        await self._store.insert_objects(records)
        CHANGES.labels("create").inc(len(records))
        for record in records:
            await self._publish(tenant, EventType.OBJECT_EVENT_TYPE_CREATED, record)
        return records

    async def get(self, tenant: str, key: str) -> ObjectRecord:
        record = await self._store.get_object(tenant, key) if KEY.match(key) else None
        if record is None:
            raise NotFound(f"object {key!r} not found")
        return record

    async def _change(
        self,
        tenant: str,
        key: str,
        change: Callable[[ObjectRecord], ObjectRecord],
        kind: EventKind,
        label: str,
    ) -> ObjectRecord:
        async with self._serialised(key):
            for _ in range(_RETRIES):
                before = await self.get(tenant, key)
                after = replace(change(before), updated_at=self._clock())
                try:
                    stored = await self._store.replace_object(before, after)
                except VersionConflict:
                    continue  # another replica wrote in between: read again
                CHANGES.labels(label).inc()
                await self._publish(tenant, kind, stored)
                return stored
        raise InvalidArgument(f"object {key!r} changed too often to update; retry")

    async def update(self, tenant: str, key: str, patch: ObjectPatch) -> ObjectRecord:
        for name, value in (("frame", patch.frame), ("timestamp", patch.timestamp)):
            if value is not None and not -(1 << 63) <= value < 1 << 63:
                raise InvalidArgument(f"{name} does not fit in 64 bits", field=name)
        overwrites: dict[str, Any] = {k: v for k, v in patch.strings.items() if v and k != "owner"}
        if patch.frame is not None:
            overwrites["frame"] = patch.frame
        if patch.timestamp is not None:
            overwrites["timestamp"] = patch.timestamp
        if patch.transform is not None:
            overwrites["transform"] = list(patch.transform)
        if overwrites and not patch.add_assets and patch.handles is None:
            # Nothing depends on the stored row: one statement, no read, no retry.
            return await self._overwrite(tenant, key, overwrites)

        def apply(before: ObjectRecord) -> ObjectRecord:
            values: dict[str, Any] = {k: v for k, v in patch.strings.items() if v and k != "owner"}
            if patch.frame is not None:
                values["frame"] = patch.frame
            if patch.timestamp is not None:
                values["timestamp"] = patch.timestamp
            if patch.transform is not None:
                values["transform"] = list(patch.transform)
            if patch.add_assets:
                values["assets"] = [*before.assets, *patch.add_assets]
            if patch.handles is not None:
                values["handles"] = {**(before.handles or {}), **patch.handles}
            return replace(before, **values)

        return await self._change(tenant, key, apply, EventType.OBJECT_EVENT_TYPE_UPDATED, "update")

    async def _overwrite(self, tenant: str, key: str, values: dict[str, Any]) -> ObjectRecord:
        if not KEY.match(key):
            raise NotFound(f"object {key!r} not found")
        # Holding the object's lock keeps at most one overwrite of it in flight here, so other
        # kinds of change (locks, assets, deletes) stay ordered around it; the batch publishes
        # the event. A caller cancelled while its write is in a batch releases the lock early:
        # the write may still commit and publish, and the hub puts a change racing it back in
        # version order.
        async with self._serialised(key):
            stored = await self._overwrites.submit(FieldWrite(tenant, key, values, self._clock()))
        if stored is None:
            raise NotFound(f"object {key!r} not found")
        return stored

    async def _commit_overwrites(
        self, writes: Sequence[FieldWrite]
    ) -> Sequence[ObjectRecord | BaseException | None]:
        """One batch of GroupCommit: commits every write, then publishes their events in
        commit order, before any caller is answered."""
        results = await self._store.set_fields_many(writes)
        for result in results:
            if isinstance(result, ObjectRecord):
                CHANGES.labels("update").inc()
                await self._publish(result.tenant, EventType.OBJECT_EVENT_TYPE_UPDATED, result)
        return results

    async def close(self) -> None:
        await self._store.close()

    async def overwrite_transform(
        self, tenant: str, key: str, transform: Sequence[float]
    ) -> ObjectRecord:
        """CLyman's UDP overwrite: the transform as sent."""
        return await self.update(tenant, key, ObjectPatch(transform=list(transform)))

    async def delete(self, tenant: str, key: str) -> ObjectRecord:
        async with self._serialised(key):
            record = await self._store.delete_object(tenant, key) if KEY.match(key) else None
            if record is None:
                raise NotFound(f"object {key!r} not found")
            CHANGES.labels("delete").inc()
            # A delete is a change too: its event takes the next version.
            gone = replace(record, version=record.version + 1, updated_at=self._clock())
            await self._publish(tenant, EventType.OBJECT_EVENT_TYPE_DELETED, gone)
            return record

    async def query(
        self, tenant: str, queries: Sequence[ObjectQuery], limit: int | None
    ) -> list[ObjectRecord]:
        if limit is not None and limit < 0:
            raise InvalidArgument("num_records must not be negative", field="num_records")
        size = DEFAULT_QUERY_LIMIT if limit is None else min(limit, MAX_QUERY_LIMIT)
        return await self._store.query_objects(tenant, queries, size)

    async def lock(self, tenant: str, key: str, device: str, ttl_seconds: int = 0) -> ObjectRecord:
        if not device:
            raise MissingField("device is required", field="device")
        if not 0 <= ttl_seconds <= MAX_LOCK_TTL_SECONDS:
            raise InvalidArgument(
                f"lock_ttl_seconds must be between 0 and {MAX_LOCK_TTL_SECONDS}",
                field="lock_ttl_seconds",
            )
        if not KEY.match(key):
            raise NotFound(f"object {key!r} not found")
        now = self._clock()
        expires = now + dt.timedelta(seconds=ttl_seconds) if ttl_seconds else None
        async with self._serialised(key):
            record = await self._store.try_lock(tenant, key, device, now, expires)
            if record is None:
                holder = await self.get(tenant, key)  # NotFound when it does not exist
                raise LockHeld(f"object {key!r} is locked by device {holder.owner!r}")
            CHANGES.labels("lock").inc()
            await self._publish(tenant, EventType.OBJECT_EVENT_TYPE_LOCKED, record)
            return record

    async def unlock(self, tenant: str, key: str, device: str) -> ObjectRecord:
        if not device:
            raise MissingField("device is required", field="device")
        if not KEY.match(key):
            raise NotFound(f"object {key!r} not found")
        async with self._serialised(key):
            record = await self._store.try_unlock(tenant, key, device, self._clock())
            if record is None:
                holder = await self.get(tenant, key)
                if not holder.owner:
                    raise LockHeld(f"object {key!r} is not locked")
                raise LockHeld(f"object {key!r} is locked by another device")
            CHANGES.labels("unlock").inc()
            await self._publish(tenant, EventType.OBJECT_EVENT_TYPE_UNLOCKED, record)
            return record

    async def add_asset(self, tenant: str, key: str, asset_key: str) -> ObjectRecord:
        if not asset_key:
            raise MissingField("asset key is required", field="asset_key")
        return await self._change(
            tenant,
            key,
            lambda before: replace(before, assets=[*before.assets, asset_key]),
            EventType.OBJECT_EVENT_TYPE_ASSETS_CHANGED,
            "asset_add",
        )

    async def remove_asset(self, tenant: str, key: str, asset_key: str) -> ObjectRecord:
        return await self._change(
            tenant,
            key,
            lambda before: replace(before, assets=[a for a in before.assets if a != asset_key]),
            EventType.OBJECT_EVENT_TYPE_ASSETS_CHANGED,
            "asset_remove",
        )

    # --- properties ------------------------------------------------------------------------

    async def create_properties(
        self, tenant: str, drafts: Sequence[PropertyRecord]
    ) -> list[PropertyRecord]:
        if not drafts:
            raise InvalidArgument("no properties to create", field="properties")
        if len(drafts) > MAX_BATCH:
            raise InvalidArgument(f"at most {MAX_BATCH} properties per request", field="properties")
        now = self._clock()
        records = [
            replace(d, key=new_key(), tenant=tenant, version=1, created_at=now, updated_at=now)
            for d in drafts
        ]
        await self._store.insert_properties(records)
        return records

    async def get_property(self, tenant: str, key: str) -> PropertyRecord:
        record = await self._store.get_property(tenant, key) if KEY.match(key) else None
        if record is None:
            raise NotFound(f"property {key!r} not found")
        return record

    async def update_property(self, tenant: str, key: str, patch: PropertyPatch) -> PropertyRecord:
        async with self._serialised(key):
            for _ in range(_RETRIES):
                before = await self.get_property(tenant, key)
                values: dict[str, Any] = {k: v for k, v in patch.strings.items() if v}
                if patch.frame is not None:
                    values["frame"] = patch.frame
                if patch.timestamp is not None:
                    values["timestamp"] = patch.timestamp
                if patch.values is not None:
                    values["values"] = patch.values
                try:
                    return await self._store.replace_property(
                        before, replace(before, **values, updated_at=self._clock())
                    )
                except VersionConflict:
                    continue
        raise InvalidArgument(f"property {key!r} changed too often to update; retry")

    async def delete_property(self, tenant: str, key: str) -> PropertyRecord:
        record = await self._store.delete_property(tenant, key) if KEY.match(key) else None
        if record is None:
            raise NotFound(f"property {key!r} not found")
        return record

    async def query_properties(
        self, tenant: str, queries: Sequence[PropertyQuery], limit: int | None
    ) -> list[PropertyRecord]:
        if limit is not None and limit < 0:
            raise InvalidArgument("num_records must not be negative", field="num_records")
        size = DEFAULT_QUERY_LIMIT if limit is None else min(limit, MAX_QUERY_LIMIT)
        return await self._store.query_properties(tenant, queries, size)
