"""Blob storage against the real SeaweedFS S3 server."""

from __future__ import annotations

import asyncio
import hashlib
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator

import pytest

from deploy.local.seaweed import SeaweedS3
from services.runtime.config import StorageConfig
from services.runtime.errors import NotFound, StorageError, TooLarge
from services.runtime.storage import BlobStore

MIB = 1024 * 1024


@pytest.fixture(scope="module")
async def store(s3: SeaweedS3, bucket_name: str) -> AsyncIterator[BlobStore]:
    blobs = BlobStore(
        StorageConfig(
            endpoint=s3.endpoint,
            access_key=s3.access_key,
            secret_key=s3.secret_key,
            bucket=bucket_name,
            part_size=5 * MIB,
        )
    )
    await blobs.ensure_bucket()
    await blobs.ensure_bucket()  # a second replica starting must not fail
    yield blobs
    await blobs.close()


async def chunks_of(data: bytes, size: int = MIB) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def key() -> str:
    return f"test/{uuid.uuid4().hex}"


async def test_multipart_stream_round_trip(store: BlobStore) -> None:
    data = os.urandom(12 * MIB + 3)  # three parts at 5 MiB
    name = key()
    result = await store.put_stream(name, chunks_of(data), "model/gltf-binary")
    assert (result.size, result.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert result.etag.endswith("-3"), "more than one part must go as a multipart upload"
    info = await store.stat(name)
    assert info is not None and info.size == len(data) and info.content_type == "model/gltf-binary"
    received = [chunk async for chunk in store.get_stream(name, chunk_size=MIB)]
    assert b"".join(received) == data
    assert max(len(c) for c in received) <= MIB
    assert await store.get_bytes(name) == data


async def test_ranged_read(store: BlobStore) -> None:
    name = key()
    await store.put_bytes(name, b"0123456789")
    assert b"".join([c async for c in store.get_stream(name, offset=3, length=4)]) == b"3456"


async def test_failed_stream_leaves_no_object(store: BlobStore) -> None:
    name = key()

    async def broken() -> AsyncIterator[bytes]:
        yield b"x" * (6 * MIB)
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError, match="client went away"):
        await store.put_stream(name, broken())
    assert await store.stat(name) is None


async def test_size_limit_aborts_the_upload(store: BlobStore) -> None:
    name = key()
    with pytest.raises(TooLarge):
        await store.put_stream(name, chunks_of(b"y" * (3 * MIB)), max_bytes=2 * MIB)
    assert await store.stat(name) is None


async def test_missing_objects_are_not_found(store: BlobStore) -> None:
    assert await store.stat("test/absent") is None
    with pytest.raises(NotFound):
        await store.get_bytes("test/absent")


async def test_presigned_urls_need_no_credentials_and_expire(store: BlobStore) -> None:
    name = key()
    await store.put_bytes(name, b"hello")
    url = await store.presigned_get_url(name, download_name='evil"name.txt')
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.read() == b"hello"
        assert 'filename="evilname.txt"' in response.headers["Content-Disposition"]
    short = await store.presigned_get_url(name, expires_seconds=1)
    await asyncio.sleep(2.1)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(short, timeout=5)
    assert err.value.code == 403


async def test_presigned_put(store: BlobStore) -> None:
    name = key()
    url = await store.presigned_put_url(name)
    request = urllib.request.Request(url, data=b"direct", method="PUT")
    urllib.request.urlopen(request, timeout=5)
    assert await store.get_bytes(name) == b"direct"


async def test_streaming_does_not_block_the_event_loop(store: BlobStore) -> None:
    """Other coroutines keep running while 20 MiB stream in and out.

    Counts ticks rather than timing them: a client that blocked the loop for the whole
    transfer would let the ticker run once or not at all, however fast the machine is.
    """
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            await asyncio.sleep(0.005)
            ticks += 1

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    name = key()
    data = os.urandom(20 * MIB)
    await store.put_stream(name, chunks_of(data))
    assert len(await store.get_bytes(name)) == len(data)
    stop.set()
    await tick
    assert ticks >= 5, f"the loop ran other work only {ticks} times during the transfer"


async def test_wrong_credentials_are_a_storage_error(s3: SeaweedS3, bucket_name: str) -> None:
    bad = BlobStore(
        StorageConfig(
            endpoint=s3.endpoint, access_key="kiln", secret_key="wrong", bucket=bucket_name
        )
    )
    with pytest.raises(
        StorageError, match=r"AccessDenied|SignatureDoesNotMatch|InvalidAccessKeyId"
    ):
        await bad.stat("anything")
    await bad.close()


async def test_delete_prefix_removes_only_that_prefix(store: BlobStore) -> None:
    base = f"prefix-{uuid.uuid4().hex[:8]}"
    for key in (f"{base}/1/a", f"{base}/1/sub/b", f"{base}/10/c"):
        await store.put_bytes(key, b"x")
    assert await store.delete_prefix(f"{base}/1/") == 2
    assert await store.stat(f"{base}/1/a") is None
    assert await store.stat(f"{base}/1/sub/b") is None
    assert await store.stat(f"{base}/10/c") is not None
    assert await store.delete_prefix(f"{base}/1/") == 0
    with pytest.raises(ValueError):
        await store.delete_prefix(f"{base}/1")


async def test_delete_older_than_keeps_what_is_young(store: BlobStore) -> None:
    base = f"aged-{uuid.uuid4().hex[:8]}"
    await store.put_bytes(f"{base}/tmp/a", b"x")
    await store.put_bytes(f"{base}/kept/b", b"x")
    assert await store.delete_older_than(f"{base}/tmp/", 3600) == 0  # written just now
    assert await store.stat(f"{base}/tmp/a") is not None
    # An age in the future's favour: everything under the prefix counts as old.
    assert await store.delete_older_than(f"{base}/tmp/", -60) == 1
    assert await store.stat(f"{base}/tmp/a") is None
    assert await store.stat(f"{base}/kept/b") is not None
