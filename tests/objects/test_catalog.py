"""The object catalog on SQLite and PostgreSQL: locks, queries, updates, atomic creates."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from kiln.objects.v1 import objects_pb2
from sqlalchemy.exc import IntegrityError

from services.objects.events import EventHub
from services.objects.main import MIGRATIONS
from services.objects.object_store import FieldWrite, ObjectQuery, ObjectRecord, ObjectStore
from services.objects.objects import ObjectCatalog, ObjectPatch
from services.runtime import db
from services.runtime.errors import InvalidArgument, LockHeld, MissingField, NotFound

T = "tenant-cat"


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
async def catalog(database_url: str) -> AsyncIterator[tuple[ObjectCatalog, Clock]]:
    clock = Clock()
    async with db.migrated_engine(database_url, "objects", MIGRATIONS) as engine:
        objects = ObjectCatalog(ObjectStore(db.sessionmaker(engine)), EventHub(), clock=clock)
        yield objects, clock
        await objects.close()


def draft(**fields: object) -> ObjectRecord:
    return ObjectRecord(key="", tenant="", **fields)  # type: ignore[arg-type]


async def test_fifty_racing_devices_one_winner(catalog: tuple[ObjectCatalog, Clock]) -> None:
    objects, _ = catalog
    [record] = await objects.create(T, [draft(name="contested")])

    async def attempt(device: str) -> str | None:
        try:
            await objects.lock(T, record.key, device)
            return device
        except LockHeld:
            return None

    results = await asyncio.gather(*(attempt(f"device-{i}") for i in range(50)))
    winners = [r for r in results if r]
    assert len(winners) == 1
    assert (await objects.get(T, record.key)).owner == winners[0]


async def test_lock_rules(catalog: tuple[ObjectCatalog, Clock]) -> None:
    objects, _ = catalog
    [record] = await objects.create(T, [draft(name="door")])
    await objects.lock(T, record.key, "a")
    with pytest.raises(LockHeld):
        await objects.lock(T, record.key, "a")  # CLyman: already locked, the same device included
    with pytest.raises(LockHeld):
        await objects.lock(T, record.key, "b")
    with pytest.raises(LockHeld):
        await objects.unlock(T, record.key, "b")  # only the holder unlocks
    with pytest.raises(MissingField):
        await objects.lock(T, record.key, "")
    with pytest.raises(NotFound):
        await objects.lock(T, "0" * 24, "a")
    with pytest.raises(NotFound):
        await objects.lock("other-tenant", record.key, "b")
    unlocked = await objects.unlock(T, record.key, "a")
    assert unlocked.owner == ""
    assert (await objects.lock(T, record.key, "b")).owner == "b"


async def test_lock_lease_lapses(catalog: tuple[ObjectCatalog, Clock]) -> None:
    objects, clock = catalog
    [record] = await objects.create(T, [draft(name="lease")])
    held = await objects.lock(T, record.key, "crashed", ttl_seconds=30)
    assert held.lock_expires_at == clock.now + dt.timedelta(seconds=30)
    clock.now += dt.timedelta(seconds=29)
    with pytest.raises(LockHeld):
        await objects.lock(T, record.key, "next")
    clock.now += dt.timedelta(seconds=2)
    assert (await objects.lock(T, record.key, "next")).owner == "next"
    with pytest.raises(InvalidArgument):
        await objects.lock(T, record.key, "x", ttl_seconds=-1)


async def test_update_changes_only_what_is_sent(catalog: tuple[ObjectCatalog, Clock]) -> None:
    objects, _ = catalog
    transform = [2.0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 2, 5, 0, 0, 0, 1]
    [record] = await objects.create(
        T, [draft(name="a", type="Mesh", frame=3, transform=transform, assets=["x"])]
    )
    after = await objects.update(
        T, record.key, ObjectPatch(strings={"name": "b"}, add_assets=["y"])
    )
    assert (after.name, after.type, after.frame) == ("b", "Mesh", 3)
    assert after.transform == transform  # no transform input: kept, not reset to identity
    assert after.assets == ["x", "y"]  # appended
    assert after.version == record.version + 1
    moved = await objects.update(T, record.key, ObjectPatch(transform=[1.0] * 16, frame=7))
    assert moved.transform == [1.0] * 16 and moved.name == "b" and moved.frame == 7
    assert moved.assets == ["x", "y"] and moved.version == after.version + 1
    assert await objects.get(T, record.key) == moved
    with pytest.raises(NotFound):
        await objects.update(T, "e" * 24, ObjectPatch(strings={"name": "nobody"}))
    with pytest.raises(NotFound):
        await objects.update("other-tenant", record.key, ObjectPatch(strings={"name": "z"}))
    assert (await objects.get(T, record.key)).name == "b"


async def test_query_rules(catalog: tuple[ObjectCatalog, Clock]) -> None:
    objects, _ = catalog
    made = await objects.create(
        T,
        [
            draft(name="tree", type="Mesh", assets=["bark", "leaf"]),
            draft(name="tree", type="Curve", assets=["bark"]),
            draft(name="tree", type="Mesh", frame=2, assets=["bark", "leaf"]),
            draft(name="rock", type="Mesh", assets=["leaf", "bark"]),
        ],
    )
    keys = [m.key for m in made]

    async def q(*queries: ObjectQuery, limit: int | None = None) -> list[str]:
        return [r.key for r in await objects.query(T, list(queries), limit)]

    # AND within one query; no frame given = only objects without a frame.
    assert await q(ObjectQuery(strings={"name": "tree", "type": "Mesh"})) == [keys[0]]
    assert await q(ObjectQuery(strings={"name": "tree"}, frame=2)) == [keys[2]]
    assert await q(ObjectQuery(strings={"name": "tree"}, frame=-1)) == keys[:3]
    # OR across queries.
    both = await q(ObjectQuery(strings={"type": "Curve"}), ObjectQuery(strings={"name": "rock"}))
    assert both == [keys[1], keys[3]]
    # One asset: contains. Several: equal, in order.
    assert await q(ObjectQuery(assets=["bark"])) == [keys[0], keys[1], keys[3]]
    assert await q(ObjectQuery(assets=["bark", "leaf"])) == [keys[0]]
    assert await q(ObjectQuery(assets=["leaf", "bark"])) == [keys[3]]
    # The limit is exact; 10 by default.
    assert len(await q(ObjectQuery(), ObjectQuery(frame=-1), limit=1)) == 1
    await objects.create(T, [draft(name="many") for _ in range(12)])
    assert len(await q(ObjectQuery(strings={"name": "many"}))) == 10
    assert await objects.query("other-tenant", [ObjectQuery(strings={"name": "tree"})], None) == []


async def test_create_is_all_or_nothing(database_url: str) -> None:
    async with db.migrated_engine(database_url, "objects", MIGRATIONS) as engine:
        store = ObjectStore(db.sessionmaker(engine))
        now = dt.datetime.now(dt.UTC)
        first = ObjectRecord(key="a" * 24, tenant=T, transform=[1.0] * 16, created_at=now)
        clash = ObjectRecord(key="a" * 24, tenant=T, transform=[1.0] * 16, created_at=now)
        with pytest.raises(IntegrityError):
            await store.insert_objects([first, clash])
        assert await store.get_object(T, "a" * 24) is None, "a failed create must store nothing"
    with pytest.raises(InvalidArgument):
        await ObjectCatalog(store, EventHub()).create(T, [])


async def test_assets_add_and_remove_every_copy(catalog: tuple[ObjectCatalog, Clock]) -> None:
    objects, _ = catalog
    [record] = await objects.create(T, [draft(name="a", assets=["x"])])
    await objects.add_asset(T, record.key, "x")
    assert (await objects.get(T, record.key)).assets == ["x", "x"]
    assert (await objects.remove_asset(T, record.key, "x")).assets == []
    assert (await objects.remove_asset(T, record.key, "absent")).assets == []
    with pytest.raises(NotFound):
        await objects.add_asset(T, "f" * 24, "x")


async def test_events_follow_every_change_in_version_order(
    catalog: tuple[ObjectCatalog, Clock],
) -> None:
    objects, _ = catalog
    received = []

    async def listen() -> None:
        async for event in objects.events.subscribe(T):
            received.append(event)
            if len(received) == 6:
                return

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0)
    [record] = await objects.create(T, [draft(name="watched", scene="s1")])
    await objects.update(T, record.key, ObjectPatch(strings={"name": "w2"}))
    await objects.lock(T, record.key, "d")
    await objects.add_asset(T, record.key, "tex")
    await objects.unlock(T, record.key, "d")
    await objects.delete(T, record.key)
    await asyncio.wait_for(listener, 5)
    assert [e.version for e in received] == [1, 2, 3, 4, 5, 6]
    names = [e.type for e in received]
    assert names == [1, 2, 4, 6, 5, 3]  # created, updated, locked, assets, unlocked, deleted
    assert received[1].object.name == "w2" and received[2].object.owner == "d"


# --- group commit of field overwrites -------------------------------------------------------


class CountingStore(ObjectStore):
    """The real store, recording the size of every batch of overwrites it is given."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.batches: list[int] = []

    async def set_fields_many(
        self, writes: Sequence[FieldWrite]
    ) -> list[ObjectRecord | Exception | None]:
        self.batches.append(len(writes))
        return await super().set_fields_many(writes)


@pytest.fixture
async def counted(database_url: str) -> AsyncIterator[tuple[ObjectCatalog, CountingStore]]:
    async with db.migrated_engine(database_url, "objects", MIGRATIONS) as engine:
        store = CountingStore(db.sessionmaker(engine))
        objects = ObjectCatalog(store, EventHub())
        yield objects, store
        await objects.close()


async def test_concurrent_overwrites_share_batches_and_keep_versions(
    counted: tuple[ObjectCatalog, CountingStore],
) -> None:
    objects, store = counted
    records = await objects.create(T, [draft(name=f"o{i}", scene="s") for i in range(8)])
    received: list[objects_pb2.ObjectEvent] = []
    rounds = 5

    async def listen() -> None:
        async for event in objects.events.subscribe(T):
            received.append(event)
            if len(received) == 8 * 2 * rounds:  # subscribed after the creates
                return

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0)

    async def writer(key: str) -> list[int]:
        versions = []
        for i in range(rounds):
            stored = await objects.update(
                T, key, ObjectPatch(strings={"name": f"{key}-{i}"}, frame=i, transform=[2.0] * 16)
            )
            versions.append(stored.version)
        return versions

    # Every object twice at once: a write to one object waits for the one before it.
    keys = [r.key for r in records for _ in range(2)]
    results = await asyncio.gather(*(writer(key) for key in keys))
    await asyncio.wait_for(listener, 5)
    assert max(store.batches) > 1, f"concurrent overwrites were never batched: {store.batches}"
    assert sum(store.batches) == 8 * 2 * rounds
    for record in records:
        stored = await objects.get(T, record.key)
        assert stored.version == 1 + 2 * rounds
        assert stored.frame == rounds - 1 and stored.transform == [2.0] * 16
        assert stored.scene == "s" and stored.name.startswith(record.key)
        mine = sorted(
            v for key, got in zip(keys, results, strict=True) if key == record.key for v in got
        )
        assert mine == list(range(2, 2 + 2 * rounds)), "versions must be gap-free and unique"
        events = [e.version for e in received if e.object.key == record.key]
        assert events == list(range(2, 2 + 2 * rounds)), "events must follow version order"


async def test_one_unknown_key_fails_only_its_own_caller(
    counted: tuple[ObjectCatalog, CountingStore],
) -> None:
    objects, store = counted
    good = await objects.create(T, [draft(name=f"g{i}") for i in range(4)])
    missing = "0" * 24
    outcomes = await asyncio.gather(
        *(objects.update(T, r.key, ObjectPatch(strings={"name": "ok"})) for r in good[:2]),
        objects.update(T, missing, ObjectPatch(strings={"name": "nope"})),
        *(objects.update(T, r.key, ObjectPatch(strings={"name": "ok"})) for r in good[2:]),
        objects.update("another-tenant", good[0].key, ObjectPatch(strings={"name": "theirs"})),
        return_exceptions=True,
    )
    assert isinstance(outcomes[2], NotFound) and isinstance(outcomes[5], NotFound)
    changed = [o for i, o in enumerate(outcomes) if i not in (2, 5)]
    assert all(isinstance(o, ObjectRecord) and o.name == "ok" and o.version == 2 for o in changed)
    assert max(store.batches) > 1
    assert (await objects.get(T, good[0].key)).name == "ok"


async def test_a_refused_write_fails_only_itself(database_url: str) -> None:
    async with db.migrated_engine(database_url, "objects", MIGRATIONS) as engine:
        store = ObjectStore(db.sessionmaker(engine))
        try:
            now = dt.datetime.now(dt.UTC)
            records = [
                ObjectRecord(key=f"{i:024x}", tenant=T, transform=[1.0] * 16, created_at=now)
                for i in range(4)
            ]
            await store.insert_objects(records)
            refused = [{"frame": 1 << 70}]  # refused before any statement, on both databases
            if database_url.startswith("postgresql"):
                # Refused by the database itself (SQLite does not enforce lengths), which
                # fails the whole statement: the others must still be applied.
                refused.append({"name": "x" * 300})
            results = await store.set_fields_many(
                [
                    FieldWrite(T, records[0].key, {"name": "a"}, now),
                    *(FieldWrite(T, records[1 + i].key, v, now) for i, v in enumerate(refused)),
                    FieldWrite(T, records[3].key, {"name": "d"}, now),
                    FieldWrite(T, records[0].key, {"name": "a2"}, now),
                ]
            )
            first, *bad, fourth, again = results
            assert all(isinstance(b, Exception) for b in bad) and len(bad) == len(refused)
            assert isinstance(first, ObjectRecord) and first.name == "a" and first.version == 2
            assert isinstance(fourth, ObjectRecord) and fourth.name == "d" and fourth.version == 2
            assert isinstance(again, ObjectRecord) and again.name == "a2" and again.version == 3
            for record in records[1:3]:
                untouched = await store.get_object(T, record.key)
                assert untouched is not None and untouched.version == 1
                assert untouched.frame is None and untouched.name == ""
            # The connection kept for overwrites still works after a refusal.
            assert await store.set_fields(T, records[1].key, {"frame": 7}, now) is not None
        finally:
            await store.close()


async def test_only_overwritable_columns_can_be_overwritten(database_url: str) -> None:
    async with db.migrated_engine(database_url, "objects", MIGRATIONS) as engine:
        store = ObjectStore(db.sessionmaker(engine))
        with pytest.raises(ValueError, match="owner"):
            await store.set_fields(T, "a" * 24, {"owner": "me"}, dt.datetime.now(dt.UTC))
        await store.close()


async def test_an_out_of_range_frame_is_bad_input(catalog: tuple[ObjectCatalog, Clock]) -> None:
    objects, _ = catalog
    [record] = await objects.create(T, [draft(name="f")])
    with pytest.raises(InvalidArgument):
        await objects.update(T, record.key, ObjectPatch(frame=1 << 64))
    assert (await objects.get(T, record.key)).version == 1
