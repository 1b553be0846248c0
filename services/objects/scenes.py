"""Scenes: Clara's scene records, and the import commit that fills them.

- Ids are UUIDs (Clara's scene ids), assigned on create; `license` is one of Clara's.
- An import becomes visible all at once: the render worker writes every blob first, then
  `commit_import` stores the asset rows, the objects and the import's id in one transaction.
  A retried commit (same import id) answers the first one's objects and changes nothing, so a
  worker that crashed after committing cannot import twice.
- Deleting a scene removes its objects (publishing their delete events) and the assets its
  imports created, rows first, then bytes.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from prometheus_client import Counter

from services.objects.assets import ASSET_ID, guess_mime_type, kind_of, safe_file_name
from services.objects.object_store import ObjectRecord
from services.objects.objects import ObjectCatalog, new_key
from services.objects.scene_store import (
    CommittedImport,
    DuplicateScene,
    SceneRecord,
    SceneStore,
)
from services.objects.store import AssetRecord
from services.objects.transform import IDENTITY
from services.runtime.blob_keys import asset_key
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from services.runtime.paging import decode_page_token, encode_page_token
from services.runtime.storage import BlobStore

log = logging.getLogger("kiln.objects.scenes")

SCENE_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
LICENSES = (
    "none",
    "custom",
    "cc by",
    "cc by-sa",
    "cc by-nc",
    "cc by-nc-sa",
    "cc by-nd",
    "cc by-nc-nd",
    "cc0",
    "public",
)
SETTABLE = ("name", "description", "public", "license", "allow_public_clone")
MAX_NAME = 255
MAX_DESCRIPTION = 10_000
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
#: Most objects (mesh nodes) and assets one import may create.
MAX_IMPORT_OBJECTS = 10_000
MAX_IMPORT_ASSETS = 20_000

SCENE_CHANGES = Counter("kiln_scene_changes_total", "Scene changes stored.", ["change"])
IMPORTED_OBJECTS = Counter("kiln_scene_imported_objects_total", "Objects created by imports.")
IMPORTED_ASSETS = Counter("kiln_scene_imported_assets_total", "Assets created by imports.")


@dataclass(frozen=True)
class SceneFields:
    """Settable fields of a scene, as a request gives them."""

    name: str = ""
    description: str = ""
    public: bool = False
    license: str = ""
    allow_public_clone: bool = False


def _check_fields(fields: SceneFields, names: Sequence[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in names:
        if name not in SETTABLE:
            raise InvalidArgument(
                f"{name!r} cannot be changed; settable: {', '.join(SETTABLE)}", field=name
            )
        values[name] = getattr(fields, name)
    if "name" in values:
        values["name"] = values["name"].strip()
        if len(values["name"]) > MAX_NAME:
            raise InvalidArgument(f"name is longer than {MAX_NAME} characters", field="name")
    if "description" in values and len(values["description"]) > MAX_DESCRIPTION:
        raise InvalidArgument(
            f"description is longer than {MAX_DESCRIPTION} characters", field="description"
        )
    if "license" in values:
        values["license"] = values["license"] or "none"
        if values["license"] not in LICENSES:
            raise InvalidArgument(f"license must be one of: {', '.join(LICENSES)}", field="license")
    return values


@dataclass(frozen=True)
class ImportedAssetDraft:
    """An asset an import wrote to S3, as the worker describes it."""

    id: str
    file_name: str
    mime_type: str
    size: int
    sha256: str
    metadata: dict[str, Any]


class SceneCatalog:
    def __init__(
        self,
        store: SceneStore,
        objects: ObjectCatalog,
        blobs: BlobStore,
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._store = store
        self._objects = objects
        self._blobs = blobs
        self._clock = clock

    async def create(
        self, tenant: str, owner: str, fields: SceneFields, request_id: str = ""
    ) -> SceneRecord:
        if len(request_id) > 128:
            raise InvalidArgument("request_id is longer than 128 characters", field="request_id")
        if request_id:
            earlier = await self._store.by_request_id(tenant, request_id)
            if earlier is not None:
                return earlier
        values = _check_fields(fields, SETTABLE)
        now = self._clock()
        record = SceneRecord(
            id=str(uuid.uuid4()),
            tenant=tenant,
            owner=owner,
            version=1,
            request_id=request_id or None,
            created_at=now,
            updated_at=now,
            **values,
        )
        try:
            record = await self._store.insert(record)
        except DuplicateScene as dup:
            return dup.earlier
        SCENE_CHANGES.labels("create").inc()
        return record

    async def get(self, tenant: str, scene_id: str) -> SceneRecord:
        record = await self._store.get(tenant, scene_id) if SCENE_ID.match(scene_id) else None
        if record is None:
            raise NotFound(f"scene {scene_id!r} not found", field="scene_id")
        return record

    async def page(
        self, tenant: str, *, page_size: int, page_token: str, query: str
    ) -> tuple[list[SceneRecord], str]:
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative", field="page_size")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = decode_page_token(page_token) if page_token else None
        records = await self._store.page(tenant, limit=size + 1, after=after, query=query)
        more = len(records) > size
        records = records[:size]
        last = records[-1] if records else None
        token = encode_page_token(last.created_at, last.id) if more and last else ""
        return records, token

    async def update(
        self, tenant: str, scene_id: str, fields: SceneFields, names: Sequence[str]
    ) -> SceneRecord:
        values = _check_fields(fields, names or SETTABLE)
        record = (
            await self._store.update(tenant, scene_id, values, self._clock())
            if SCENE_ID.match(scene_id)
            else None
        )
        if record is None:
            raise NotFound(f"scene {scene_id!r} not found", field="scene_id")
        SCENE_CHANGES.labels("update").inc()
        return record

    async def delete(self, tenant: str, scene_id: str) -> tuple[int, int]:
        """Answers how many objects and assets went with the scene."""
        gone = await self._store.delete(tenant, scene_id) if SCENE_ID.match(scene_id) else None
        if gone is None:
            raise NotFound(f"scene {scene_id!r} not found", field="scene_id")
        SCENE_CHANGES.labels("delete").inc()
        await self._objects.announce_deleted(tenant, gone.objects)
        for asset in gone.assets:
            try:
                await self._blobs.delete(asset.blob_key)
            except Exception:
                # The rows are gone, so nothing reaches these bytes; an orphan is only space.
                log.warning("could not delete blob", extra={"key": asset.blob_key}, exc_info=True)
        return len(gone.objects), len(gone.assets)

    async def commit_import(
        self,
        tenant: str,
        scene_id: str,
        import_id: str,
        assets: Sequence[ImportedAssetDraft],
        objects: Sequence[ObjectRecord],
    ) -> CommittedImport:
        if not SCENE_ID.match(scene_id):
            raise NotFound(f"scene {scene_id!r} not found", field="scene_id")
        if not import_id or len(import_id) > 128:
            raise InvalidArgument("import_id must be 1 to 128 characters", field="import_id")
        if len(objects) > MAX_IMPORT_OBJECTS:
            raise InvalidArgument(
                f"an import creates at most {MAX_IMPORT_OBJECTS} objects, got {len(objects)}",
                field="objects",
            )
        if len(assets) > MAX_IMPORT_ASSETS:
            raise InvalidArgument(
                f"an import creates at most {MAX_IMPORT_ASSETS} assets, got {len(assets)}",
                field="assets",
            )
        now = self._clock()
        records = [await self._asset_record(tenant, scene_id, a, now) for a in assets]
        ids = {r.id for r in records}
        if len(ids) != len(records):
            raise InvalidArgument("an import names an asset twice", field="assets")
        drafts: list[ObjectRecord] = []
        for draft in objects:
            unknown = [a for a in draft.assets if a not in ids]
            if unknown:
                raise InvalidArgument(
                    f"object {draft.name!r} names assets this import did not create: "
                    f"{', '.join(unknown[:3])}",
                    field="objects",
                )
            if draft.transform and len(draft.transform) != 16:
                raise InvalidArgument("a transform has 16 numbers", field="objects")
            drafts.append(
                replace(
                    draft,
                    key=new_key(),
                    tenant=tenant,
                    scene=scene_id,
                    owner="",
                    transform=list(draft.transform or IDENTITY),
                    version=1,
                    lock_expires_at=None,
                    created_at=now,
                    updated_at=now,
                )
            )
        committed = await self._store.commit_import(
            tenant, scene_id, import_id, assets=records, objects=drafts, now=now
        )
        if committed is None:
            raise NotFound(f"scene {scene_id!r} not found", field="scene_id")
        if committed.first_time:
            IMPORTED_OBJECTS.inc(len(committed.objects))
            IMPORTED_ASSETS.inc(len(committed.asset_ids))
            SCENE_CHANGES.labels("import").inc()
            await self._objects.announce_created(tenant, committed.objects)
        return committed

    async def _asset_record(
        self, tenant: str, scene_id: str, draft: ImportedAssetDraft, now: dt.datetime
    ) -> AssetRecord:
        if not ASSET_ID.match(draft.id):
            raise InvalidArgument(f"asset id {draft.id!r} is malformed", field="assets")
        key = asset_key(tenant, draft.id)
        # The row must never point at bytes that are not there (or not whole).
        stored = await self._blobs.stat(key)
        if stored is None or stored.size != draft.size:
            raise FailedPrecondition(
                f"the bytes of asset {draft.id} are not stored (or not whole); write them first"
            )
        file_name = safe_file_name(draft.file_name)
        mime_type = guess_mime_type(file_name, draft.mime_type)
        return AssetRecord(
            id=draft.id,
            tenant=tenant,
            file_name=file_name,
            mime_type=mime_type,
            kind=kind_of(mime_type, file_name),
            size=draft.size,
            sha256=draft.sha256,
            metadata={**draft.metadata, "fileName": file_name, "sceneId": scene_id},
            blob_key=key,
            request_id=None,
            created_at=now,
        )

    async def content(
        self, tenant: str, scene_id: str
    ) -> tuple[SceneRecord, list[ObjectRecord], list[AssetRecord]]:
        found = await self._store.content(tenant, scene_id) if SCENE_ID.match(scene_id) else None
        if found is None:
            raise NotFound(f"scene {scene_id!r} not found", field="scene_id")
        return found
