"""Named storages against real components: the migrated SQLite table, the StorageService
servicer (called directly, the caller set as the auth interceptor would, and over real gRPC
behind the auth interceptor), and the resolver reading, writing and listing buckets of the
session's SeaweedFS server. The table runs on SQLite and, where it answers, PostgreSQL."""

from __future__ import annotations

import asyncio
import functools
import http.server
import io
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import json_format
from kiln.render.v1 import render_pb2, render_pb2_grpc
from minio import Minio

from deploy.local.seaweed import SeaweedS3
from services.render import storages as storages_module
from services.render.imaging.fetch import FetchPolicy
from services.render.storage_store import StorageStore
from services.render.storages import (
    StorageResolver,
    Storages,
    open_storages,
    public_parameters,
    validate_storage,
)
from services.render.storages_servicer import StorageServicer
from services.runtime import db
from services.runtime.auth import Principal
from services.runtime.config import ServiceConfig, StorageConfig, load_service_config
from services.runtime.context import principal_var
from services.runtime.errors import AlreadyExists, InputUnreachable, InvalidArgument, NotFound
from services.runtime.server import running, servicers
from services.runtime.status import error_info
from tests.conftest import bearer

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "render" / "migrations"
OWN_BUCKET = "kiln-own"
T = TypeVar("T")


def _s3_params(bucket: str, s3: SeaweedS3 | None = None, path: str | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {
        "bucket": bucket,
        "credentials": {
            "access_key": s3.access_key if s3 else "AKIA",
            "secret_access_key": s3.secret_key if s3 else "very-secret",
        },
    }
    if path is not None:
        params["path"] = path
    return params


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[StorageStore]:
    """The migrated table on a fresh SQLite file, then on PostgreSQL where it answers."""
    async with db.migrated_engine(database_url, "render", MIGRATIONS) as engine:
        yield StorageStore(engine)


@pytest.fixture(scope="module")
def bucket(s3: SeaweedS3) -> str:
    name = f"stor-{uuid.uuid4().hex[:12]}"
    _admin(s3).make_bucket(name)
    return name


def _admin(s3: SeaweedS3) -> Minio:
    return Minio(s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key, secure=False)


def _put(s3: SeaweedS3, bucket: str, key: str, data: bytes, content_type: str) -> None:
    _admin(s3).put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type)


def _get(s3: SeaweedS3, bucket: str, key: str) -> bytes:
    response = _admin(s3).get_object(bucket, key)
    try:
        return bytes(response.read())
    finally:
        response.close()
        response.release_conn()


@pytest.fixture
def resolver(store: StorageStore, s3: SeaweedS3) -> StorageResolver:
    config = StorageConfig(
        endpoint=s3.endpoint,
        access_key=s3.access_key,
        secret_key=s3.secret_key,
        bucket=OWN_BUCKET,
    )
    return StorageResolver(
        store, config, FetchPolicy.parse("", max_bytes=1 << 20, timeout_seconds=5)
    )


async def _as(tenant: str, call: Callable[[], Awaitable[T]]) -> T:
    """Runs one servicer call as `tenant`, in its own context like one RPC."""
    principal = Principal(tenant=tenant, client_id="test", scopes=frozenset({"*"}))

    async def run() -> T:
        principal_var.set(principal)
        return await call()

    # A task runs in a copy of the current context, so the caller set here stays in it.
    return await asyncio.create_task(run())


def _storage(
    name: str, kind: str, params: dict[str, Any], storage_id: int = 0
) -> render_pb2.Storage:
    storage = render_pb2.Storage(id=storage_id, name=name, type=kind)
    storage.parameters.update(params)
    return storage


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "params", "field"),
    [
        ("", "s3", _s3_params("b-1"), "name"),
        (".hidden", "s3", _s3_params("b-1"), "name"),
        ("x" * 51, "s3", _s3_params("b-1"), "name"),
        ("a/b", "s3", _s3_params("b-1"), "name"),
        ("a b", "s3", _s3_params("b-1"), "name"),
        (None, "s3", _s3_params("b-1"), "name"),
        ("ok", "gcs", _s3_params("b-1"), "type"),
        ("ok", "ftp", _s3_params("b-1"), "type"),
        ("ok", "s3", ["bucket"], "parameters"),
        (
            "ok",
            "s3",
            {"credentials": {"access_key": "a", "secret_access_key": "b"}},
            "parameters.bucket",
        ),
        ("ok", "s3", _s3_params("B-Upper"), "parameters.bucket"),
        ("ok", "s3", _s3_params("ab"), "parameters.bucket"),
        ("ok", "s3", _s3_params("a..b"), "parameters.bucket"),
        ("ok", "s3", _s3_params("-ab"), "parameters.bucket"),
        ("ok", "s3", _s3_params("192.168.1.1"), "parameters.bucket"),
        ("ok", "s3", _s3_params("under_score"), "parameters.bucket"),
        ("ok", "s3", _s3_params(OWN_BUCKET), "parameters.bucket"),
        ("ok", "s3", _s3_params("b-1", path="a/../b"), "parameters.path"),
        ("ok", "s3", _s3_params("b-1", path="a\\b"), "parameters.path"),
        ("ok", "s3", _s3_params("b-1", path="a\nb"), "parameters.path"),
        ("ok", "s3", {**_s3_params("b-1"), "region": "x"}, "parameters.region"),
        ("ok", "s3", {"bucket": "b-1"}, "parameters.credentials"),
        (
            "ok",
            "s3",
            {"bucket": "b-1", "credentials": {"access_key": "a"}},
            "parameters.credentials.secret_access_key",
        ),
        (
            "ok",
            "s3",
            {"bucket": "b-1", "credentials": {"secret_access_key": "a"}},
            "parameters.credentials.access_key",
        ),
        (
            "ok",
            "s3",
            {
                "bucket": "b-1",
                "credentials": {"access_key": "a", "secret_access_key": "b", "token": "t"},
            },
            "parameters.credentials.token",
        ),
        ("ok", "web_folder", {}, "parameters.base_url"),
        ("ok", "web_folder", {"base_url": "ftp://x/"}, "parameters.base_url"),
        ("ok", "web_folder", {"base_url": "http://x/?a=1"}, "parameters.base_url"),
        ("ok", "web_folder", {"base_url": "https:///nohost"}, "parameters.base_url"),
        ("ok", "web_folder", {"base_url": "http://x/", "bucket": "b"}, "parameters.bucket"),
    ],
)
def test_each_rule_names_its_field(name: object, kind: str, params: object, field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_storage(name, kind, params, OWN_BUCKET)
    assert raised.value.field == field


def test_valid_storages_are_normalized() -> None:
    name, kind, params = validate_storage(
        "my.store_1-a", "s3", _s3_params("my-bucket", path="/in/x/"), OWN_BUCKET
    )
    assert (name, kind, params["path"], params["bucket"]) == (
        "my.store_1-a",
        "s3",
        "in/x/",
        "my-bucket",
    )
    assert (
        validate_storage("s", "s3", _s3_params("my-bucket", path="in"), OWN_BUCKET)[2]["path"]
        == "in/"
    )
    assert validate_storage("s", "s3", _s3_params("my-bucket"), OWN_BUCKET)[2]["path"] == ""
    assert validate_storage(
        "x" * 50, "web_folder", {"base_url": "https://cdn.example.com/img"}, OWN_BUCKET
    )[2] == {"base_url": "https://cdn.example.com/img/"}


# --- the servicer and the table ----------------------------------------------------------------


async def test_crud_is_tenant_scoped_and_never_answers_the_secret(store: StorageStore) -> None:
    servicer = StorageServicer(store, StorageConfig(bucket=OWN_BUCKET))
    types = await _as(
        "a", lambda: servicer.ListStorageTypes(render_pb2.ListStorageTypesRequest(), None)
    )
    assert list(types.types) == ["web_folder", "s3"]

    created = (
        await _as(
            "a",
            lambda: servicer.CreateStorage(
                render_pb2.CreateStorageRequest(
                    storage=_storage("photos", "s3", _s3_params("b-1", path="in"))
                ),
                None,
            ),
        )
    ).storage
    assert created.id > 0 and created.name == "photos" and created.type == "s3"
    answered = json_format.MessageToDict(created.parameters)
    assert answered == {"bucket": "b-1", "path": "in/", "credentials": {"access_key": "AKIA"}}
    assert "very-secret" not in str(created) and "secret_access_key" not in str(created)
    # The secret is kept for the resolver, only never answered.
    record = await store.get("a", created.id)
    assert record.parameters["credentials"]["secret_access_key"] == "very-secret"
    assert "secret_access_key" not in str(public_parameters(record))

    # The same name in another tenant is another storage; twice in one tenant is refused.
    other = (
        await _as(
            "b",
            lambda: servicer.CreateStorage(
                render_pb2.CreateStorageRequest(
                    storage=_storage("photos", "web_folder", {"base_url": "https://e.com"})
                ),
                None,
            ),
        )
    ).storage
    assert other.id != created.id
    with pytest.raises(AlreadyExists):
        await _as(
            "a",
            lambda: servicer.CreateStorage(
                render_pb2.CreateStorageRequest(
                    storage=_storage("photos", "s3", _s3_params("b-2"))
                ),
                None,
            ),
        )

    listed = await _as("a", lambda: servicer.ListStorages(render_pb2.ListStoragesRequest(), None))
    assert [s.id for s in listed.storages] == [created.id]
    assert "very-secret" not in str(listed)
    got = await _as(
        "a", lambda: servicer.GetStorage(render_pb2.GetStorageRequest(id=created.id), None)
    )
    assert got.storage == created

    # Another tenant's id is as unknown as an id that never existed.
    for call in (
        lambda: servicer.GetStorage(render_pb2.GetStorageRequest(id=created.id), None),
        lambda: servicer.DeleteStorage(render_pb2.DeleteStorageRequest(id=created.id), None),
        lambda: servicer.UpdateStorage(
            render_pb2.UpdateStorageRequest(
                storage=_storage("stolen", "s3", _s3_params("b-1"), created.id)
            ),
            None,
        ),
    ):
        with pytest.raises(NotFound):
            await _as("b", call)
    with pytest.raises(NotFound):
        await _as("a", lambda: servicer.GetStorage(render_pb2.GetStorageRequest(id=9999), None))

    updated = (
        await _as(
            "a",
            lambda: servicer.UpdateStorage(
                render_pb2.UpdateStorageRequest(
                    storage=_storage(
                        "renamed", "web_folder", {"base_url": "https://cdn.example.com"}, created.id
                    )
                ),
                None,
            ),
        )
    ).storage
    assert (updated.id, updated.name, updated.type) == (created.id, "renamed", "web_folder")
    assert (await store.get("a", created.id)).parameters == {"base_url": "https://cdn.example.com/"}
    assert await store.by_name("a", "photos") is None
    # Validation applies to updates too, and a rename onto a taken name is refused.
    await _as(
        "a",
        lambda: servicer.CreateStorage(
            render_pb2.CreateStorageRequest(storage=_storage("taken", "s3", _s3_params("b-3"))),
            None,
        ),
    )
    with pytest.raises(AlreadyExists):
        await _as(
            "a",
            lambda: servicer.UpdateStorage(
                render_pb2.UpdateStorageRequest(
                    storage=_storage("taken", "s3", _s3_params("b-3"), created.id)
                ),
                None,
            ),
        )
    with pytest.raises(InvalidArgument) as raised:
        await _as(
            "a",
            lambda: servicer.UpdateStorage(
                render_pb2.UpdateStorageRequest(
                    storage=_storage("renamed", "s3", _s3_params(OWN_BUCKET), created.id)
                ),
                None,
            ),
        )
    assert raised.value.field == "parameters.bucket"

    await _as(
        "a", lambda: servicer.DeleteStorage(render_pb2.DeleteStorageRequest(id=created.id), None)
    )
    with pytest.raises(NotFound):
        await _as(
            "a",
            lambda: servicer.DeleteStorage(render_pb2.DeleteStorageRequest(id=created.id), None),
        )
    # b's storage of the same former name is untouched.
    assert (await store.get("b", other.id)).name == "photos"


async def test_open_storages_migrates_the_database(tmp_path: Path, s3: SeaweedS3) -> None:
    config: ServiceConfig = load_service_config(
        "render",
        {
            "KILN_DATA_DIR": str(tmp_path),
            "KILN_RENDER_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'r.db'}",
            "KILN_S3_ENDPOINT": s3.endpoint,
        },
    )
    storages: Storages = await open_storages(config)
    try:
        record = await storages.store.create("t", "n", "web_folder", {"base_url": "https://e.com/"})
        assert (await storages.store.list("t"))[0] == record
        assert storages.resolver.config.endpoint == s3.endpoint
        # Also a (store, resolver) pair.
        store, resolver = storages
        assert (store, resolver) == (storages.store, storages.resolver)
    finally:
        await storages.close()
    # Opening again finds the table migrated and the row kept.
    again = await open_storages(config)
    try:
        assert [r.name for r in await again.store.list("t")] == ["n"]
    finally:
        await again.close()


# --- the servicer over real gRPC ---------------------------------------------------------------


async def test_the_service_over_grpc(
    store: StorageStore,
    tmp_path: Path,
    jwt_keys: tuple[Path, Path],
    token_for: Callable[..., str],
) -> None:
    config = load_service_config(
        "render",
        {
            "KILN_DATA_DIR": str(tmp_path),
            "KILN_RENDER_PORT": "0",
            "KILN_RENDER_METRICS_PORT": "-1",
            "KILN_JWT_PUBLIC_KEY_FILES": str(jwt_keys[1]),
        },
    )
    registration = servicers(
        (
            render_pb2,
            "StorageService",
            render_pb2_grpc.add_StorageServiceServicer_to_server,
            StorageServicer(store, StorageConfig(bucket=OWN_BUCKET)),
        )
    )
    as_a, as_b = bearer(token_for("grpc-a")), bearer(token_for("grpc-b"))
    async with (
        running(config, registration) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = render_pb2_grpc.StorageServiceStub(channel)
        created = (
            await stub.CreateStorage(
                render_pb2.CreateStorageRequest(
                    storage=_storage("photos", "s3", _s3_params("b-1"))
                ),
                metadata=as_a,
            )
        ).storage
        assert "very-secret" not in str(created)
        assert json_format.MessageToDict(created.parameters)["credentials"] == {
            "access_key": "AKIA"
        }
        listed = await stub.ListStorages(render_pb2.ListStoragesRequest(), metadata=as_a)
        assert [s.name for s in listed.storages] == ["photos"]
        assert not (
            await stub.ListStorages(render_pb2.ListStoragesRequest(), metadata=as_b)
        ).storages

        async def refused(call: Awaitable[object], code: grpc.StatusCode) -> dict[str, str]:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call
            assert raised.value.code() == code, raised.value.details()
            info = error_info(raised.value)
            return dict(info.metadata) if info is not None else {}

        taken = render_pb2.CreateStorageRequest(storage=_storage("photos", "s3", _s3_params("b-2")))
        await refused(stub.CreateStorage(taken, metadata=as_a), grpc.StatusCode.ALREADY_EXISTS)
        # The same name is free in another tenant.
        await stub.CreateStorage(taken, metadata=as_b)
        missing = render_pb2.GetStorageRequest(id=created.id)
        await refused(stub.GetStorage(missing, metadata=as_b), grpc.StatusCode.NOT_FOUND)
        await refused(
            stub.DeleteStorage(render_pb2.DeleteStorageRequest(id=created.id), metadata=as_b),
            grpc.StatusCode.NOT_FOUND,
        )
        bad = render_pb2.CreateStorageRequest(storage=_storage("own", "s3", _s3_params(OWN_BUCKET)))
        metadata = await refused(
            stub.CreateStorage(bad, metadata=as_a), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert metadata["field"] == "parameters.bucket"
        await refused(
            stub.ListStorages(render_pb2.ListStoragesRequest()), grpc.StatusCode.UNAUTHENTICATED
        )
        types = await stub.ListStorageTypes(render_pb2.ListStorageTypesRequest(), metadata=as_a)
        assert list(types.types) == ["web_folder", "s3"]
        await stub.DeleteStorage(render_pb2.DeleteStorageRequest(id=created.id), metadata=as_a)
        await refused(stub.GetStorage(missing, metadata=as_a), grpc.StatusCode.NOT_FOUND)


# --- the resolver against S3 -------------------------------------------------------------------


async def test_read_write_and_list_through_a_storage(
    store: StorageStore, resolver: StorageResolver, s3: SeaweedS3, bucket: str
) -> None:
    await store.create(
        "a",
        "photos",
        "s3",
        validate_storage("photos", "s3", _s3_params(bucket, s3, "pre"), OWN_BUCKET)[2],
    )
    for key in (
        "pre/in/cat.jpg",
        "pre/in/dog.PNG",
        "pre/in/notes.txt",
        "pre/in/deep/owl.webp",
        "pre/inbox/x.jpg",
        "outside.jpg",
    ):
        _put(s3, bucket, key, key.encode(), "image/jpeg")

    read = await resolver.read("a", "storage://photos/in/cat.jpg", 1 << 20)
    assert (read.data, read.content_type, read.name) == (b"pre/in/cat.jpg", "image/jpeg", "cat.jpg")

    # Listing: images only, under the folder (not its sibling "inbox"), recursive or not.
    assert await resolver.list_folder("a", "storage://photos/in/", False) == [
        "storage://photos/in/cat.jpg",
        "storage://photos/in/dog.PNG",
    ]
    assert await resolver.list_folder("a", "storage://photos/in", True) == [
        "storage://photos/in/cat.jpg",
        "storage://photos/in/deep/owl.webp",
        "storage://photos/in/dog.PNG",
    ]
    everything = await resolver.list_folder("a", "storage://photos/", True)
    assert "storage://photos/inbox/x.jpg" in everything
    assert all(uri.startswith("storage://photos/") for uri in everything)
    assert not any("outside" in uri for uri in everything)

    # Writing to a folder names the file; to a file, that exact key.
    stored = await resolver.write(
        "a", "storage://photos/out/", "cat.png", b"png-bytes", "image/png"
    )
    assert (stored.object_key, stored.object_bucket) == ("pre/out/cat.png", bucket)
    assert stored.object_uri == f"s3://{bucket}/pre/out/cat.png"
    assert _get(s3, bucket, "pre/out/cat.png") == b"png-bytes"
    stored = await resolver.write(
        "a", "storage://photos/out/final.webp", "cat.png", b"webp", "image/webp"
    )
    assert stored.object_key == "pre/out/final.webp"
    assert _get(s3, bucket, "pre/out/final.webp") == b"webp"
    stored = await resolver.write("a", "storage://photos/", "root.png", b"r", "image/png")
    assert stored.object_key == "pre/root.png"


async def test_misses_and_refusals(
    store: StorageStore, resolver: StorageResolver, s3: SeaweedS3, bucket: str
) -> None:
    await store.create(
        "a", "photos", "s3", validate_storage("photos", "s3", _s3_params(bucket, s3), OWN_BUCKET)[2]
    )
    _put(s3, bucket, "big.jpg", b"x" * 2048, "image/jpeg")

    # Another tenant's storage name means nothing to this caller.
    with pytest.raises(InputUnreachable, match="no storage named"):
        await resolver.read("b", "storage://photos/big.jpg", 1 << 20)
    with pytest.raises(InputUnreachable, match=r"missing\.jpg could not be read: NoSuchKey"):
        await resolver.read("a", "storage://photos/missing.jpg", 1 << 20)
    with pytest.raises(InputUnreachable, match="KILN_FETCH_MAX_BYTES"):
        await resolver.read("a", "storage://photos/big.jpg", 1024)
    with pytest.raises(InputUnreachable, match="folder"):
        await resolver.read("a", "storage://photos/", 1 << 20)

    # Hostile paths never reach S3.
    for uri in (
        "storage://photos/../other/x.jpg",
        "storage://photos/a/../../x.jpg",
        "storage://photos/a\\..\\x.jpg",
        "storage://photos/a\x00.jpg",
        "storage://photos/a\r\nb.jpg",
        "storage://photos//etc/passwd",
        "storage://photos",
    ):
        with pytest.raises(InvalidArgument):
            await resolver.read("a", uri, 1 << 20)
        with pytest.raises(InvalidArgument):
            await resolver.write("a", uri, "x.png", b"x", "image/png")
    with pytest.raises(InvalidArgument):
        await resolver.write("a", "storage://photos/out/", "../x.png", b"x", "image/png")
    with pytest.raises(InvalidArgument):
        await resolver.list_folder("a", "storage://photos/../", True)

    # Wrong credentials or a bucket that does not exist are S3's refusals, reported as such.
    await store.create(
        "a",
        "badkey",
        "s3",
        {
            "bucket": bucket,
            "path": "",
            "credentials": {"access_key": s3.access_key, "secret_access_key": "wrong"},
        },
    )
    with pytest.raises(InputUnreachable):
        await resolver.read("a", "storage://badkey/big.jpg", 1 << 20)
    with pytest.raises(InputUnreachable):
        await resolver.write("a", "storage://badkey/out/", "x.png", b"x", "image/png")
    await store.create(
        "a",
        "nobucket",
        "s3",
        validate_storage("nobucket", "s3", _s3_params("no-such-bucket-here", s3), OWN_BUCKET)[2],
    )
    with pytest.raises(InputUnreachable):
        await resolver.list_folder("a", "storage://nobucket/", True)

    # A web folder is read through the fetch guard, and never written.
    await store.create("a", "web", "web_folder", {"base_url": "http://127.0.0.1:1/img/"})
    with pytest.raises(InputUnreachable, match="KILN_FETCH_ALLOWLIST"):
        await resolver.read("a", "storage://web/cat.jpg", 1 << 20)
    with pytest.raises(InvalidArgument, match="read-only"):
        await resolver.write("a", "storage://web/out/", "x.png", b"x", "image/png")


# --- web folders and the listing cap -----------------------------------------------------------


@pytest.fixture
def web_folder(tmp_path: Path) -> Iterator[str]:
    """A loopback web server over a folder of files; yields its base URL."""
    root = tmp_path / "web"
    (root / "img").mkdir(parents=True)
    (root / "img" / "cat.jpg").write_bytes(b"a cat")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined, method-assign]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/img"
    finally:
        httpd.shutdown()
        httpd.server_close()


async def test_a_web_folder_is_read_under_the_fetch_policy(
    store: StorageStore, s3: SeaweedS3, web_folder: str
) -> None:
    _, kind, params = validate_storage("web", "web_folder", {"base_url": web_folder}, OWN_BUCKET)
    await store.create("a", "web", kind, params)
    allowing = StorageResolver(
        store,
        StorageConfig(endpoint=s3.endpoint, bucket=OWN_BUCKET),
        FetchPolicy.parse("127.0.0.1", max_bytes=1 << 20, timeout_seconds=5),
    )
    read = await allowing.read("a", "storage://web/cat.jpg", 1 << 20)
    assert (read.data, read.name) == (b"a cat", "cat.jpg")
    # The caller's cap wins over the policy's.
    with pytest.raises(InputUnreachable, match="KILN_FETCH_MAX_BYTES"):
        await allowing.read("a", "storage://web/cat.jpg", 3)
    with pytest.raises(InputUnreachable, match="404"):
        await allowing.read("a", "storage://web/dog.jpg", 1 << 20)
    with pytest.raises(InvalidArgument, match="cannot be listed"):
        await allowing.list_folder("a", "storage://web/", True)


async def test_a_listing_stops_at_its_cap(
    store: StorageStore,
    resolver: StorageResolver,
    s3: SeaweedS3,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prefix = f"cap-{uuid.uuid4().hex[:8]}"
    params = validate_storage("capped", "s3", _s3_params(bucket, s3, prefix), OWN_BUCKET)[2]
    await store.create("a", "capped", "s3", params)
    for index in range(5):
        _put(s3, bucket, f"{prefix}/{index}.jpg", b"x", "image/jpeg")
    monkeypatch.setattr(storages_module, "MAX_LISTED", 3)
    assert await resolver.list_folder("a", "storage://capped/", False) == [
        "storage://capped/0.jpg",
        "storage://capped/1.jpg",
        "storage://capped/2.jpg",
    ]
