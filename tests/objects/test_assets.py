"""The assets slice over real gRPC: bytes in SeaweedFS, records in SQLite, tenants apart."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from kiln.objects.v1 import assets_pb2, assets_pb2_grpc

from services.runtime.status import error_info
from tests.conftest import Suite, bearer


def upload_messages(
    data: bytes, *, file_name: str = "mesh.obj", chunk: int = 256 * 1024, **header: object
) -> AsyncIterator[assets_pb2.UploadAssetRequest]:
    async def gen() -> AsyncIterator[assets_pb2.UploadAssetRequest]:
        yield assets_pb2.UploadAssetRequest(
            header=assets_pb2.AssetHeader(file_name=file_name, **header)  # type: ignore[arg-type]
        )
        for start in range(0, len(data), chunk):
            yield assets_pb2.UploadAssetRequest(chunk=data[start : start + chunk])

    return gen()


@pytest.fixture
def stub(objects_channel: grpc.aio.Channel) -> assets_pb2_grpc.AssetServiceStub:
    return assets_pb2_grpc.AssetServiceStub(objects_channel)


async def test_upload_get_download_delete(
    stub: assets_pb2_grpc.AssetServiceStub, token_for: Callable[..., str], suite: Suite
) -> None:
    auth = bearer(token_for("tenant-a"))
    data = os.urandom(3 * 1024 * 1024 + 17)
    uploaded = await stub.UploadAsset(upload_messages(data, file_name="rock.obj"), metadata=auth)
    asset = uploaded.asset
    assert asset.id.startswith("asset_") and len(asset.id) == 28
    assert asset.size == len(data)
    assert asset.sha256 == hashlib.sha256(data).hexdigest()
    assert asset.kind == "3d" and asset.mime_type == "model/obj"
    assert asset.metadata["fileName"] == "rock.obj"

    got = (await stub.GetAsset(assets_pb2.GetAssetRequest(asset_id=asset.id), metadata=auth)).asset
    assert got.id == asset.id and got.sha256 == asset.sha256
    # The presigned URL needs no credentials and serves the exact bytes.
    with urllib.request.urlopen(got.url, timeout=10) as response:
        assert response.read() == data

    await stub.DeleteAsset(assets_pb2.DeleteAssetRequest(asset_id=asset.id), metadata=auth)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetAsset(assets_pb2.GetAssetRequest(asset_id=asset.id), metadata=auth)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(err.value)
    assert info is not None and info.reason == "ERROR_REASON_NOT_FOUND"
    # The bytes went with the record.
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(got.url, timeout=10)


async def test_tenants_cannot_see_each_other(
    stub: assets_pb2_grpc.AssetServiceStub, token_for: Callable[..., str]
) -> None:
    owner, other = bearer(token_for("tenant-owner")), bearer(token_for("tenant-other"))
    asset = (await stub.UploadAsset(upload_messages(b"secret"), metadata=owner)).asset
    for call in (
        stub.GetAsset(assets_pb2.GetAssetRequest(asset_id=asset.id), metadata=other),
        stub.DeleteAsset(assets_pb2.DeleteAssetRequest(asset_id=asset.id), metadata=other),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await stub.ListAssets(assets_pb2.ListAssetsRequest(), metadata=other)
    assert asset.id not in {a.id for a in listed.assets}
    # The owner still has it: the other tenant's delete changed nothing.
    still = await stub.GetAsset(assets_pb2.GetAssetRequest(asset_id=asset.id), metadata=owner)
    assert still.asset.sha256 == hashlib.sha256(b"secret").hexdigest()


async def test_list_pages_newest_first_and_filters_by_kind(
    stub: assets_pb2_grpc.AssetServiceStub, token_for: Callable[..., str]
) -> None:
    auth = bearer(token_for("tenant-pages"))
    ids = []
    for i in range(5):
        name = f"img{i}.png" if i % 2 == 0 else f"notes{i}.txt"
        ids.append(
            (
                await stub.UploadAsset(upload_messages(b"x" * i, file_name=name), metadata=auth)
            ).asset.id
        )
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListAssets(
            assets_pb2.ListAssetsRequest(page_size=2, page_token=token), metadata=auth
        )
        assert len(page.assets) <= 2
        seen += [a.id for a in page.assets]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids))
    images = await stub.ListAssets(assets_pb2.ListAssetsRequest(kind="image"), metadata=auth)
    assert [a.id for a in images.assets] == [ids[4], ids[2], ids[0]]
    assert {a.mime_type for a in images.assets} == {"image/png"}


async def test_request_id_makes_upload_idempotent(
    stub: assets_pb2_grpc.AssetServiceStub, token_for: Callable[..., str]
) -> None:
    auth = bearer(token_for("tenant-idem"))
    first = await stub.UploadAsset(upload_messages(b"abc", request_id="req-1"), metadata=auth)
    again = await stub.UploadAsset(upload_messages(b"abc", request_id="req-1"), metadata=auth)
    assert again.asset.id == first.asset.id
    listed = await stub.ListAssets(assets_pb2.ListAssetsRequest(), metadata=auth)
    assert [a.id for a in listed.assets] == [first.asset.id]


async def test_hostile_file_name_is_reduced_to_a_base_name(
    stub: assets_pb2_grpc.AssetServiceStub, token_for: Callable[..., str]
) -> None:
    auth = bearer(token_for("tenant-names"))
    asset = (
        await stub.UploadAsset(
            upload_messages(b"x", file_name="../../etc/pass\x00wd\n.txt"), metadata=auth
        )
    ).asset
    assert asset.metadata["fileName"] == "passwd.txt"
    assert "/etc" not in asset.url


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ([assets_pb2.UploadAssetRequest(chunk=b"no header")], "header"),
        (
            [
                assets_pb2.UploadAssetRequest(header=assets_pb2.AssetHeader(file_name="a")),
                assets_pb2.UploadAssetRequest(header=assets_pb2.AssetHeader(file_name="b")),
            ],
            "header",
        ),
        (
            [assets_pb2.UploadAssetRequest(header=assets_pb2.AssetHeader(mime_type="not a type"))],
            "mime_type",
        ),
        ([], "header"),
    ],
)
async def test_bad_uploads_are_refused_and_store_nothing(
    stub: assets_pb2_grpc.AssetServiceStub,
    token_for: Callable[..., str],
    messages: list[assets_pb2.UploadAssetRequest],
    field: str,
) -> None:
    auth = bearer(token_for("tenant-bad-upload"))

    async def gen() -> AsyncIterator[assets_pb2.UploadAssetRequest]:
        for m in messages:
            yield m

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UploadAsset(gen(), metadata=auth)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(err.value)
    assert info is not None and info.metadata["field"] == field
    listed = await stub.ListAssets(assets_pb2.ListAssetsRequest(), metadata=auth)
    assert list(listed.assets) == []


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (assets_pb2.ListAssetsRequest(page_token="garbage!"), grpc.StatusCode.INVALID_ARGUMENT),
        (assets_pb2.ListAssetsRequest(page_size=-1), grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_bad_list_requests(
    stub: assets_pb2_grpc.AssetServiceStub,
    token_for: Callable[..., str],
    request_: assets_pb2.ListAssetsRequest,
    code: grpc.StatusCode,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListAssets(request_, metadata=bearer(token_for()))
    assert err.value.code() == code


@pytest.mark.parametrize("asset_id", ["", "nope", "asset_../../x", "asset_" + "A" * 200])
async def test_unknown_or_malformed_ids_are_not_found(
    stub: assets_pb2_grpc.AssetServiceStub, token_for: Callable[..., str], asset_id: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetAsset(
            assets_pb2.GetAssetRequest(asset_id=asset_id), metadata=bearer(token_for())
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
