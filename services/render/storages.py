"""Named storages (Claid's `/v1/storage/storages`): what `storage://{name}/{path}` means.

Two types:

- `s3`: `{"bucket", "path"?, "credentials": {"access_key", "secret_access_key"}}`, a bucket on
  Kiln's S3 endpoint, read and written with the storage's own credentials; `path` prefixes every
  key. A storage may not name the bucket Kiln itself uses, so no tenant can reach Kiln's data
  (or another tenant's) through one.
- `web_folder`: `{"base_url"}`, read only: `storage://{name}/a/b.jpg` is `base_url + a/b.jpg`,
  fetched under the same address rules as any input URL.

Claid also lists `gcs`; Kiln cannot reach Google Cloud Storage from where it runs, so the type
is refused. Names are 1 to 50 characters of letters, digits, `.`, `_` and `-` (they sit inside
URIs), unique per tenant. Paths inside a storage may not climb (`..`), hold backslashes or
control characters.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from minio import Minio
from minio.error import MinioException, S3Error
from urllib3.exceptions import HTTPError as Urllib3Error

from services.render.imaging.fetch import FetchedFile, FetchPolicy, fetch_url
from services.render.storage_store import StorageRecord, StorageStore
from services.runtime import db
from services.runtime.config import ServiceConfig, StorageConfig
from services.runtime.errors import InputUnreachable, InvalidArgument

STORAGE_TYPES = ("web_folder", "s3")
MAX_LISTED = 1000
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".webp",
    ".gif",
    ".tif",
    ".tiff",
    ".avif",
    ".heic",
    ".bmp",
)
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,49}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_URI = re.compile(r"storage://(?P<name>[^/]+)/(?P<path>.*)", re.S)


@dataclass(frozen=True)
class StoredObject:
    """Where an output was written."""

    object_key: str
    object_bucket: str
    object_uri: str


def _bad(message: str, field: str) -> InvalidArgument:
    return InvalidArgument(message, field=field)


def _string(value: object, field: str, *, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise _bad(f"{field} must be a non-empty string", field)
    return value


def _only(params: Mapping[str, Any], allowed: tuple[str, ...], path: str) -> None:
    for key in params:
        if key not in allowed:
            raise _bad("Extra inputs are not permitted", f"{path}.{key}")


def _safe_path(path: str, field: str) -> str:
    """A relative object path with no way out of its prefix."""
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in path) or "\\" in path:
        raise _bad("the path holds control characters or backslashes", field)
    if path.startswith("/") or ".." in path.split("/"):
        raise _bad("the path must be relative and may not contain '..'", field)
    return path


def _valid_bucket(bucket: str) -> bool:
    """S3's bucket naming rules: 3 to 63 of a-z 0-9 . -, starting and ending with a letter or
    digit, no '..', '.-' or '-.', not an IP address, not the reserved prefixes and suffixes."""
    if not _BUCKET.fullmatch(bucket) or any(s in bucket for s in ("..", ".-", "-.")):
        return False
    if bucket.startswith(("xn--", "sthree-")) or bucket.endswith(("-s3alias", "--ol-s3")):
        return False
    try:
        ipaddress.IPv4Address(bucket)
    except ValueError:
        return True
    return False


def _valid_base_url(base: str) -> bool:
    if any(c.isspace() or ord(c) < 32 for c in base):
        return False
    try:
        parts = urlsplit(base)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return False
    # A query or fragment would swallow the object path appended after it.
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and not parts.query
        and not parts.fragment
        and "@" not in parts.netloc
    )


def validate_storage(
    name: object, kind: object, parameters: object, own_bucket: str
) -> tuple[str, str, dict[str, Any]]:
    """The storage's name, type and parameters, checked; InvalidArgument names the field."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _bad(
            "name must be 1 to 50 letters, digits, '.', '_' or '-', not starting with '.'", "name"
        )
    if kind == "gcs":
        raise _bad("gcs storages cannot be reached from this deployment; use s3", "type")
    if kind not in STORAGE_TYPES:
        raise _bad(f"type must be one of {', '.join(STORAGE_TYPES)}", "type")
    if not isinstance(parameters, Mapping):
        raise _bad("parameters must be an object", "parameters")
    if kind == "web_folder":
        _only(parameters, ("base_url",), "parameters")
        base = _string(parameters.get("base_url"), "parameters.base_url")
        if not _valid_base_url(base):
            raise _bad("base_url must be an http(s) URL", "parameters.base_url")
        return name, kind, {"base_url": base if base.endswith("/") else base + "/"}
    _only(parameters, ("bucket", "path", "credentials"), "parameters")
    bucket = _string(parameters.get("bucket"), "parameters.bucket")
    if not _valid_bucket(bucket):
        raise _bad("bucket is not a valid S3 bucket name", "parameters.bucket")
    if bucket == own_bucket:
        raise _bad("this bucket is Kiln's own and cannot be a storage", "parameters.bucket")
    # A leading '/' is tolerated (people write "/images"); keys never start with one.
    prefix = _safe_path(
        _string(parameters.get("path"), "parameters.path", required=False).lstrip("/"),
        "parameters.path",
    ).rstrip("/")
    if "//" in prefix:
        raise _bad("the path may not contain empty segments", "parameters.path")
    credentials = parameters.get("credentials")
    if not isinstance(credentials, Mapping):
        raise _bad(
            "credentials {access_key, secret_access_key} are required", "parameters.credentials"
        )
    _only(credentials, ("access_key", "secret_access_key"), "parameters.credentials")
    access = _string(credentials.get("access_key"), "parameters.credentials.access_key")
    secret = _string(
        credentials.get("secret_access_key"), "parameters.credentials.secret_access_key"
    )
    return (
        name,
        kind,
        {
            "bucket": bucket,
            "path": f"{prefix}/" if prefix else "",
            "credentials": {"access_key": access, "secret_access_key": secret},
        },
    )


def public_parameters(record: StorageRecord) -> dict[str, Any]:
    """The parameters as answered: never the secret key."""
    params = dict(record.parameters)
    credentials = params.get("credentials")
    if isinstance(credentials, Mapping):
        params["credentials"] = {"access_key": credentials.get("access_key", "")}
    return params


class StorageResolver:
    """Reads, writes and lists `storage://` URIs of a tenant's storages."""

    def __init__(self, store: StorageStore, config: StorageConfig, policy: FetchPolicy) -> None:
        self.store = store
        self.config = config
        self.policy = policy

    async def _storage(self, tenant: str, uri: str, field: str) -> tuple[StorageRecord, str]:
        match = _URI.fullmatch(uri)
        if match is None:
            raise _bad(f"{uri[:80]!r} is not a storage URI", field)
        path = _safe_path(match["path"], field)
        record = await self.store.by_name(tenant, match["name"])
        if record is None:
            raise InputUnreachable(f"no storage named {match['name']!r}", field=field)
        return record, path

    def _client(self, record: StorageRecord) -> Minio:
        credentials = record.parameters["credentials"]
        return Minio(
            self.config.endpoint,
            access_key=credentials["access_key"],
            secret_key=credentials["secret_access_key"],
            secure=self.config.secure,
            region=self.config.region,
        )

    async def read(self, tenant: str, uri: str, max_bytes: int) -> FetchedFile:
        record, path = await self._storage(tenant, uri, "input")
        name = path.rsplit("/", 1)[-1]
        if not name:
            raise InputUnreachable(f"{uri} names a folder, not a file", field="input")
        if record.type == "web_folder":
            policy = dataclasses.replace(self.policy, max_bytes=max_bytes)
            return await fetch_url(record.parameters["base_url"] + path, policy)
        bucket, key = record.parameters["bucket"], record.parameters["path"] + path
        client = self._client(record)

        def get() -> FetchedFile:
            info = client.stat_object(bucket, key)
            if (info.size or 0) > max_bytes:
                raise InputUnreachable(
                    f"{uri} is larger than {max_bytes} bytes (KILN_FETCH_MAX_BYTES)", field="input"
                )
            response = client.get_object(bucket, key)
            try:
                data = response.read(max_bytes + 1)
            finally:
                response.close()
                response.release_conn()
            if len(data) > max_bytes:
                # The object grew between stat and get.
                raise InputUnreachable(
                    f"{uri} is larger than {max_bytes} bytes (KILN_FETCH_MAX_BYTES)", field="input"
                )
            return FetchedFile(bytes(data), str(info.content_type or ""), name)

        try:
            return await asyncio.to_thread(get)
        except _S3_ERRORS as exc:
            raise InputUnreachable(
                f"{uri} could not be read: {_s3_reason(exc)}", field="input"
            ) from None

    async def write(
        self, tenant: str, uri: str, file_name: str, data: bytes, content_type: str
    ) -> StoredObject:
        record, path = await self._storage(tenant, uri, "output.destination")
        if record.type == "web_folder":
            raise _bad("a web_folder storage is read-only", "output.destination")
        if path.endswith("/") or not path:
            # A folder: the file is named after the input (already sanitized by the caller,
            # checked again because it becomes part of a key).
            if not file_name or "/" in file_name:
                raise _bad(f"{file_name!r} is not a file name", "output.destination")
            path += _safe_path(file_name, "output.destination")
        key = record.parameters["path"] + path
        bucket = record.parameters["bucket"]
        client = self._client(record)
        try:
            await asyncio.to_thread(
                client.put_object,
                bucket,
                key,
                io.BytesIO(data),
                len(data),
                content_type=content_type,
            )
        except _S3_ERRORS as exc:
            raise InputUnreachable(
                f"{uri} could not be written: {_s3_reason(exc)}", field="output.destination"
            ) from None
        return StoredObject(key, bucket, f"s3://{bucket}/{key}")

    async def list_folder(self, tenant: str, uri: str, recursive: bool) -> list[str]:
        record, path = await self._storage(tenant, uri, "input")
        if record.type == "web_folder":
            raise _bad("a web_folder storage cannot be listed; list the files", "input")
        # A folder: "a" lists "a/…", not also "ab.jpg".
        folder = path if not path or path.endswith("/") else path + "/"
        prefix = record.parameters["path"] + folder
        bucket = record.parameters["bucket"]
        client = self._client(record)
        strip = len(record.parameters["path"])
        name = uri[len("storage://") :].split("/", 1)[0]

        def listing() -> list[str]:
            found = []
            for item in client.list_objects(bucket, prefix=prefix, recursive=recursive):
                key = item.object_name or ""
                if not item.is_dir and key.lower().endswith(IMAGE_EXTENSIONS):
                    found.append(f"storage://{name}/{key[strip:]}")
                    if len(found) >= MAX_LISTED:
                        break
            return sorted(found)

        try:
            return await asyncio.to_thread(listing)
        except _S3_ERRORS as exc:
            raise InputUnreachable(
                f"{uri} could not be listed: {_s3_reason(exc)}", field="input"
            ) from None


#: What the minio client raises when S3 refuses or cannot be reached (ValueError: names it
#: refuses before sending).
_S3_ERRORS = (MinioException, Urllib3Error, OSError, ValueError)


def _s3_reason(exc: Exception) -> str:
    if isinstance(exc, S3Error):
        return exc.code or "S3 error"
    return type(exc).__name__


class Storages(NamedTuple):
    """The render service's storage table and resolver, opened together; a tuple, so
    `store, resolver = await open_storages(config)` works too. `close()` disposes of the
    database engine."""

    store: StorageStore
    resolver: StorageResolver

    async def close(self) -> None:
        await self.store.engine.dispose()


async def open_storages(config: ServiceConfig) -> Storages:
    """Opens the render database (migrating it with the "render" migrations) and the resolver
    over it."""
    engine = db.create_engine(config.database_url)
    await db.migrate(engine, "render", Path(__file__).parent / "migrations")
    store = StorageStore(engine)
    resolver = StorageResolver(store, config.storage, FetchPolicy.from_config(config.imaging))
    return Storages(store, resolver)
