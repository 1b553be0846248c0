"""Asset domain logic: ids, kinds, storage keys, validation, and the upload protocol.

An upload streams into S3 first and is recorded in SQL only once every byte is stored, so a
row never points at a partial blob. Blob keys derive from the asset id alone, so a retried
upload overwrites instead of duplicating.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import mimetypes
import re
import secrets
import unicodedata
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from prometheus_client import Counter

from services.objects.store import AssetRecord, AssetStore, DuplicateRequest
from services.runtime.blob_keys import asset_key
from services.runtime.errors import InvalidArgument, MissingField, NotFound, TooLarge
from services.runtime.paging import decode_page_token, encode_page_token
from services.runtime.storage import BlobStore

log = logging.getLogger("kiln.objects.assets")

ASSET_ID = re.compile(r"^asset_[A-Za-z0-9_-]{22}$")
MAX_UPLOAD_BYTES = 5 * 1024**3
MAX_FILE_NAME = 255
MAX_METADATA_BYTES = 16 * 1024
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_BATCH_GET = 1000

_3D_EXTENSIONS = {".obj", ".mtl", ".glb", ".gltf", ".stl", ".ply", ".off", ".fbx", ".usdz", ".dae"}
_3D_TYPES = {
    ".obj": "model/obj",
    ".mtl": "model/mtl",
    ".glb": "model/gltf-binary",
    ".gltf": "model/gltf+json",
    ".stl": "model/stl",
    ".ply": "model/ply",
    ".off": "model/off",
    ".fbx": "application/octet-stream",
}

UPLOADED_ASSETS = Counter("kiln_assets_uploaded_total", "Assets stored.", ["kind"])
UPLOADED_BYTES = Counter("kiln_asset_bytes_uploaded_total", "Bytes of assets stored.", ["kind"])


@dataclass(frozen=True)
class UploadHeader:
    """What a client says about a file before its bytes arrive."""

    file_name: str
    mime_type: str
    metadata: dict[str, Any]
    request_id: str


@dataclass(frozen=True)
class AssetPage:
    records: list[AssetRecord]
    next_page_token: str


def new_asset_id() -> str:
    return "asset_" + secrets.token_urlsafe(16)


def blob_key(tenant: str, asset_id: str) -> str:
    return asset_key(tenant, asset_id)


def safe_file_name(raw: str) -> str:
    """The client's name reduced to a harmless base name: no directories, no control characters."""
    name = unicodedata.normalize("NFC", raw).replace("\\", "/")
    name = PurePosixPath(name).name
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    if name in {"", ".", ".."}:
        return ""
    if len(name) > MAX_FILE_NAME:
        stem, dot, ext = name.rpartition(".")
        keep = ext if dot and len(ext) <= 16 else ""
        name = (stem if dot else name)[: MAX_FILE_NAME - len(keep) - 1] + (
            "." + keep if keep else ""
        )
    return name


def guess_mime_type(file_name: str, declared: str) -> str:
    declared = declared.strip().lower()
    if declared and declared != "application/octet-stream":
        if not re.fullmatch(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*", declared):
            raise InvalidArgument(
                f"mime type {declared!r} is not a type/subtype", field="mime_type"
            )
        return declared
    ext = PurePosixPath(file_name).suffix.lower()
    if ext in _3D_TYPES:
        return _3D_TYPES[ext]
    return mimetypes.guess_type(file_name)[0] or "application/octet-stream"


def kind_of(mime_type: str, file_name: str) -> str:
    ext = PurePosixPath(file_name).suffix.lower()
    if mime_type.startswith("image/"):
        return "image"
    if mime_type.startswith("model/") or ext in _3D_EXTENSIONS:
        return "3d"
    if mime_type in {"application/zip", "application/x-zip-compressed"}:
        return "archive"
    if mime_type.startswith("text/") or mime_type == "application/json":
        return "text"
    return "other"


class AssetCatalog:
    """Assets of every tenant: bytes in the blob store, records in the SQL store."""

    def __init__(
        self, store: AssetStore, blobs: BlobStore, *, max_upload_bytes: int = MAX_UPLOAD_BYTES
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._max_upload_bytes = max_upload_bytes

    async def upload(
        self, tenant: str, header: UploadHeader, chunks: AsyncIterator[bytes]
    ) -> AssetRecord:
        if len(header.request_id) > 128:
            raise InvalidArgument("request_id is longer than 128 characters", field="request_id")
        if header.request_id:
            earlier = await self._store.by_request_id(tenant, header.request_id)
            if earlier is not None:
                async for _ in chunks:  # the retry's bytes are the same; drain and answer the first
                    pass
                return earlier
        metadata = dict(header.metadata)
        if len(json.dumps(metadata)) > MAX_METADATA_BYTES:
            raise TooLarge(f"metadata exceeds {MAX_METADATA_BYTES} bytes", field="metadata")
        file_name = safe_file_name(header.file_name)
        if file_name:
            metadata["fileName"] = file_name
        mime_type = guess_mime_type(file_name, header.mime_type)
        kind = kind_of(mime_type, file_name)
        asset_id = new_asset_id()
        key = blob_key(tenant, asset_id)
        stored = await self._blobs.put_stream(
            key, chunks, mime_type, max_bytes=self._max_upload_bytes
        )
        record = AssetRecord(
            id=asset_id,
            tenant=tenant,
            file_name=file_name,
            mime_type=mime_type,
            kind=kind,
            size=stored.size,
            sha256=stored.sha256,
            metadata=metadata,
            blob_key=key,
            request_id=header.request_id or None,
            created_at=dt.datetime.now(dt.UTC),
        )
        try:
            record = await self._store.insert(record)
        except DuplicateRequest as dup:
            await self._blobs.delete(key)
            return dup.earlier
        except BaseException:
            await self._blobs.delete(key)
            raise
        UPLOADED_ASSETS.labels(kind).inc()
        UPLOADED_BYTES.labels(kind).inc(stored.size)
        return record

    async def get(self, tenant: str, asset_id: str) -> AssetRecord:
        if not ASSET_ID.match(asset_id):
            raise NotFound(f"asset {asset_id!r} not found")
        record = await self._store.get(tenant, asset_id)
        if record is None:
            raise NotFound(f"asset {asset_id!r} not found")
        return record

    async def get_many(self, tenant: str, asset_ids: Sequence[str]) -> list[AssetRecord]:
        """The assets in request order; NotFound names the first id the tenant does not have."""
        if not asset_ids:
            raise MissingField("asset_ids must name at least one asset", field="asset_ids")
        if len(asset_ids) > MAX_BATCH_GET:
            raise InvalidArgument(
                f"at most {MAX_BATCH_GET} assets per call, got {len(asset_ids)}", field="asset_ids"
            )
        wanted = [i for i in dict.fromkeys(asset_ids) if ASSET_ID.match(i)]
        found = await self._store.get_many(tenant, wanted) if wanted else {}
        for asset_id in asset_ids:
            if asset_id not in found:
                raise NotFound(
                    f"asset {asset_id!r} not found", field="asset_ids", metadata={"id": asset_id}
                )
        return [found[i] for i in asset_ids]

    async def list(self, tenant: str, *, page_size: int, page_token: str, kind: str) -> AssetPage:
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative", field="page_size")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = decode_page_token(page_token) if page_token else None
        records = await self._store.list(tenant, limit=size + 1, after=after, kind=kind or None)
        more = len(records) > size
        records = records[:size]
        return AssetPage(
            records, encode_page_token(records[-1].created_at, records[-1].id) if more else ""
        )

    async def delete(self, tenant: str, asset_id: str) -> None:
        record = await self.get(tenant, asset_id)
        await self._store.delete(tenant, asset_id)
        try:
            await self._blobs.delete(record.blob_key)
        except Exception:
            # The record is gone, so nobody can reach the bytes; an orphan blob is only space.
            log.warning("could not delete blob", extra={"key": record.blob_key}, exc_info=True)

    async def download_url(self, record: AssetRecord) -> str:
        return await self._blobs.presigned_get_url(
            record.blob_key, download_name=record.file_name or None
        )
