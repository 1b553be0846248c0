"""Scenes on SQLite and PostgreSQL with real S3: CRUD, all-or-nothing import commits, retries,
deletes that take objects and assets along, and tenants apart."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from kiln.objects.v1 import objects_pb2

from services.objects.events import EventHub
from services.objects.main import MIGRATIONS
from services.objects.object_store import ObjectQuery, ObjectRecord, ObjectStore
from services.objects.objects import ObjectCatalog
from services.objects.scene_store import SceneStore
from services.objects.scenes import ImportedAssetDraft, SceneCatalog, SceneFields
from services.objects.store import AssetStore
from services.runtime import db
from services.runtime.blob_keys import asset_key
from services.runtime.config import load_service_config
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from services.runtime.storage import BlobStore

T, OTHER = "tenant-scenes", "tenant-other"


@dataclass
class Rig:
    scenes: SceneCatalog
    objects: ObjectCatalog
    assets: AssetStore
    blobs: BlobStore
    events: EventHub


@pytest.fixture
async def rig(database_url: str, base_env: dict[str, str]) -> AsyncIterator[Rig]:
    blobs = BlobStore(load_service_config("objects", base_env).storage)
    await blobs.ensure_bucket()
    async with db.migrated_engine(database_url, "objects", MIGRATIONS) as engine:
        sessions = db.sessionmaker(engine)
        events = EventHub()
        objects = ObjectCatalog(ObjectStore(sessions), events)
        yield Rig(
            SceneCatalog(SceneStore(sessions), objects, blobs),
            objects,
            AssetStore(sessions),
            blobs,
            events,
        )
        await objects.close()
    await blobs.close()


async def stored_asset(rig: Rig, tenant: str, asset_id: str, data: bytes) -> ImportedAssetDraft:
    put = await rig.blobs.put_bytes(asset_key(tenant, asset_id), data, "model/gltf-binary")
    return ImportedAssetDraft(
        id=asset_id,
        file_name="../../mesh.glb",
        mime_type="model/gltf-binary",
        size=put.size,
        sha256=hashlib.sha256(data).hexdigest(),
        metadata={"role": "mesh"},
    )


def mesh_object(name: str, *assets: str) -> ObjectRecord:
    transform = [1.0, 0, 0, 2, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    return ObjectRecord(
        key="", tenant="", name=name, type="Mesh", transform=transform, assets=list(assets)
    )


def aid(n: int) -> str:
    return f"asset_{n:022d}"


async def test_create_get_update_list_and_validation(rig: Rig) -> None:
    scene = await rig.scenes.create(T, "client-1", SceneFields(name="  Zebra  ", license="cc by"))
    assert len(scene.id) == 36 and scene.name == "Zebra" and scene.license == "cc by"
    assert scene.owner == "client-1" and scene.version == 1 and scene.object_count == 0
    got = await rig.scenes.get(T, scene.id)
    assert got.id == scene.id and got.created_at == scene.created_at

    updated = await rig.scenes.update(T, scene.id, SceneFields(public=True), ["public"])
    assert updated.public is True and updated.name == "Zebra"  # only the masked field changed
    assert updated.version == 2

    with pytest.raises(InvalidArgument, match="license"):
        await rig.scenes.update(T, scene.id, SceneFields(license="gpl"), ["license"])
    with pytest.raises(InvalidArgument):
        await rig.scenes.create(T, "c", SceneFields(name="x" * 300))
    with pytest.raises(InvalidArgument):
        await rig.scenes.update(T, scene.id, SceneFields(), ["owner"])

    second = await rig.scenes.create(T, "client-1", SceneFields(name="Other zebra"))
    await rig.scenes.create(T, "client-1", SceneFields(name="Cow"))
    page, token = await rig.scenes.page(T, page_size=2, page_token="", query="")
    assert len(page) == 2 and token
    rest, last = await rig.scenes.page(T, page_size=2, page_token=token, query="")
    assert len(rest) == 1 and last == ""
    assert {s.id for s in page + rest} >= {scene.id, second.id}
    found, _ = await rig.scenes.page(T, page_size=10, page_token="", query="ZEBRA")
    assert {s.name for s in found} == {"Zebra", "Other zebra"}
    # A LIKE wildcard in the query is a literal character.
    none, _ = await rig.scenes.page(T, page_size=10, page_token="", query="%")
    assert none == []
    with pytest.raises(InvalidArgument):
        await rig.scenes.page(T, page_size=10, page_token="garbage!", query="")


async def test_request_id_makes_create_idempotent(rig: Rig) -> None:
    first = await rig.scenes.create(T, "c", SceneFields(name="once"), request_id="req-1")
    again = await rig.scenes.create(T, "c", SceneFields(name="twice"), request_id="req-1")
    assert again.id == first.id and again.name == "once"


async def test_other_tenants_and_malformed_ids_are_not_found(rig: Rig) -> None:
    scene = await rig.scenes.create(T, "c", SceneFields(name="mine"))
    for tenant, scene_id in ((OTHER, scene.id), (T, "not-a-uuid"), (T, scene.id.upper())):
        with pytest.raises(NotFound):
            await rig.scenes.get(tenant, scene_id)
    with pytest.raises(NotFound):
        await rig.scenes.delete(OTHER, scene.id)
    with pytest.raises(NotFound):
        await rig.scenes.update(OTHER, scene.id, SceneFields(name="theirs"), ["name"])
    assert (await rig.scenes.get(T, scene.id)).name == "mine"


async def test_an_import_commits_assets_and_objects_at_once_and_only_once(rig: Rig) -> None:
    scene = await rig.scenes.create(T, "c", SceneFields(name="import"))
    assets = [
        await stored_asset(rig, T, aid(1), b"glb-1"),
        await stored_asset(rig, T, aid(2), b"png"),
    ]
    committed = await rig.scenes.commit_import(
        T,
        scene.id,
        "job-1",
        assets,
        [mesh_object("body", aid(1), aid(2)), mesh_object("leg", aid(1))],
    )
    assert committed.first_time and [o.name for o in committed.objects] == ["body", "leg"]
    assert all(o.scene == scene.id and o.type == "Mesh" for o in committed.objects)
    assert committed.objects[0].transform[3] == 2  # the row-major transform, as sent
    stored = await rig.assets.get(T, aid(1))
    assert stored is not None and stored.file_name == "mesh.glb"  # hostile name reduced
    assert stored.metadata["sceneId"] == scene.id and stored.kind == "3d"
    after = await rig.scenes.get(T, scene.id)
    assert after.object_count == 2 and after.version == 2

    # The worker retried after committing: nothing more is created, the same objects answer.
    again = await rig.scenes.commit_import(
        T,
        scene.id,
        "job-1",
        assets,
        [mesh_object("body", aid(1), aid(2)), mesh_object("leg", aid(1))],
    )
    assert not again.first_time
    assert [o.key for o in again.objects] == [o.key for o in committed.objects]
    assert (await rig.scenes.get(T, scene.id)).object_count == 2

    _, objects, scene_assets = await rig.scenes.content(T, scene.id)
    assert [o.key for o in objects] == sorted(o.key for o in committed.objects)
    assert {a.id for a in scene_assets} == {aid(1), aid(2)}
    with pytest.raises(NotFound):
        await rig.scenes.content(OTHER, scene.id)


async def test_a_refused_import_creates_nothing(rig: Rig) -> None:
    scene = await rig.scenes.create(T, "c", SceneFields(name="refusals"))
    good = await stored_asset(rig, T, aid(10), b"mesh")
    missing = ImportedAssetDraft(aid(11), "a.glb", "model/gltf-binary", 4, "0" * 64, {})
    short = ImportedAssetDraft(aid(10), "a.glb", "model/gltf-binary", 999, "0" * 64, {})
    cases = [
        ([good, missing], [mesh_object("a", aid(10))], FailedPrecondition),  # bytes not stored
        ([short], [mesh_object("a", aid(10))], FailedPrecondition),  # bytes not whole
        ([good], [mesh_object("a", aid(10), aid(99))], InvalidArgument),  # foreign asset
        ([good, good], [mesh_object("a", aid(10))], InvalidArgument),  # the same asset twice
        ([ImportedAssetDraft("asset_bad", "a", "", 1, "", {})], [], InvalidArgument),
    ]
    for assets, objects, error in cases:
        with pytest.raises(error):
            await rig.scenes.commit_import(T, scene.id, "job-x", assets, objects)
    with pytest.raises(NotFound):
        await rig.scenes.commit_import(OTHER, scene.id, "job-x", [], [])
    assert (await rig.scenes.get(T, scene.id)).object_count == 0
    assert await rig.assets.get(T, aid(10)) is None
    assert await rig.objects.query(T, [ObjectQuery(strings={"scene": scene.id})], 100) == []


async def test_deleting_a_scene_takes_its_objects_assets_and_bytes(rig: Rig) -> None:
    scene = await rig.scenes.create(T, "c", SceneFields(name="doomed"))
    keep = await rig.scenes.create(T, "c", SceneFields(name="kept"))
    await rig.scenes.commit_import(
        T,
        scene.id,
        "job-d",
        [await stored_asset(rig, T, aid(20), b"bytes")],
        [mesh_object("m", aid(20))],
    )
    await rig.scenes.commit_import(
        T,
        keep.id,
        "job-k",
        [await stored_asset(rig, T, aid(21), b"kept")],
        [mesh_object("k", aid(21))],
    )
    assert await rig.scenes.delete(T, scene.id) == (1, 1)
    with pytest.raises(NotFound):
        await rig.scenes.get(T, scene.id)
    assert await rig.assets.get(T, aid(20)) is None
    assert await rig.blobs.stat(asset_key(T, aid(20))) is None
    assert await rig.objects.query(T, [ObjectQuery(strings={"scene": scene.id})], 100) == []
    # The other scene is untouched.
    assert (await rig.scenes.get(T, keep.id)).object_count == 1
    assert await rig.blobs.stat(asset_key(T, aid(21))) is not None


async def test_import_and_delete_publish_object_events(rig: Rig) -> None:
    scene = await rig.scenes.create(T, "c", SceneFields(name="events"))
    stream = rig.events.subscribe(T, scene.id)
    await rig.scenes.commit_import(
        T,
        scene.id,
        "job-e",
        [await stored_asset(rig, T, aid(30), b"x")],
        [mesh_object("e", aid(30))],
    )
    await rig.scenes.delete(T, scene.id)
    kinds = [(await anext(stream)).type for _ in range(2)]
    assert kinds == [
        objects_pb2.OBJECT_EVENT_TYPE_CREATED,
        objects_pb2.OBJECT_EVENT_TYPE_DELETED,
    ]
