"""Archive member names, and ZIPs streamed from S3 to S3 (real SeaweedFS, real unzip)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import subprocess
import threading
import uuid
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from deploy.local.seaweed import SeaweedS3
from services.archive.naming import NamedAsset, member_names, safe_stem
from services.archive.zipstream import Cancelled, Member, should_deflate, write_zip
from services.runtime.config import StorageConfig
from services.runtime.storage import BlobStore


def asset(
    asset_id: str, kind: str = "image", mime: str = "image/jpeg", **meta: object
) -> NamedAsset:
    return NamedAsset(id=asset_id, kind=kind, mime_type=mime, metadata=meta)


def test_templates_substitute_tokens_and_keep_the_extension() -> None:
    names = member_names(
        [
            asset("asset_a", prompt="a red fox", num=1, generator="g1", seed=42, fileName="x.JPG"),
            asset("asset_b", kind="3d", mime="model/obj", fileName="zebra.obj"),
        ],
        template="<prompt>-<num>-<generator>-<seed>",
    )
    assert names == ["a red fox-1-g1-42.jpg", "---.obj"]
    assert member_names([asset("asset_a")], template="<assetId>") == ["asset_a.jpg"]
    assert member_names([asset("asset_a")], template="<unknown>-<assetId>") == [
        "_unknown_-asset_a.jpg"
    ]


def test_hostile_values_cannot_escape_or_break_the_archive() -> None:
    hostile = [
        asset("asset_1", prompt="../../etc/passwd"),
        asset("asset_2", prompt="..\\..\\windows\\system32"),
        asset("asset_3", prompt="evil\x00name\n\r\t"),
        asset("asset_4", prompt="/absolute/path"),
        asset("asset_5", prompt="x" * 5000),
        asset("asset_6", prompt="..."),
        asset("asset_7", prompt="CON"),
        asset("asset_8", prompt='a:b*c?d"e<f>g|h'),
    ]
    names = member_names(hostile, template="<prompt>")
    for name in names:
        assert "/" not in name and "\\" not in name
        assert ".." not in name.rsplit(".", 1)[0]
        assert not any(ord(c) < 32 for c in name)
        assert len(name) <= 160
        assert name.endswith(".jpg")
    assert names[5] == "asset_6.jpg"  # nothing usable left: the id
    assert names[6] == "_CON.jpg"
    assert safe_stem(" . ") == ""


def test_collisions_are_numbered_and_folders_group_by_kind() -> None:
    same = [asset(f"asset_{i}", prompt="fox") for i in range(3)]
    assert member_names(same, template="<prompt>") == ["fox.jpg", "fox (2).jpg", "fox (3).jpg"]
    mixed = [
        asset("asset_a"),
        asset("asset_b", kind="3d", mime="model/gltf-binary", fileName="m.glb"),
    ]
    assert member_names(mixed, flat=False) == ["image/asset_a.jpg", "3d/asset_b.glb"]


def test_only_text_like_members_are_deflated() -> None:
    assert should_deflate("zebra.obj", "")
    assert should_deflate("scene.gltf", "model/gltf+json")
    assert not should_deflate("photo.jpg", "image/jpeg")
    assert not should_deflate("model.glb", "model/gltf-binary")


@pytest.fixture(scope="module")
async def store(s3: SeaweedS3, bucket_name: str) -> AsyncIterator[BlobStore]:
    blobs = BlobStore(
        StorageConfig(
            endpoint=s3.endpoint,
            access_key=s3.access_key,
            secret_key=s3.secret_key,
            bucket=bucket_name,
            part_size=5 * 1024 * 1024,
        )
    )
    await blobs.ensure_bucket()
    yield blobs
    await blobs.close()


async def put_members(store: BlobStore) -> tuple[list[Member], dict[str, bytes]]:
    base = f"zip-{uuid.uuid4().hex[:8]}"
    contents = {
        "photo.jpg": os.urandom(3 * 1024 * 1024 + 17),
        "zebra.obj": b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n" * 100_000,
        "empty.txt": b"",
        "folder/model.glb": os.urandom(1234),
    }
    members = []
    for name, data in contents.items():
        key = f"{base}/{name}"
        await store.put_bytes(key, data)
        members.append(Member(name=name, key=key, size=len(data), deflate=should_deflate(name, "")))
    return members, contents


async def test_the_archive_is_a_valid_zip_with_identical_members(
    store: BlobStore, tmp_path: Path
) -> None:
    members, contents = await put_members(store)
    key = f"archives/{uuid.uuid4().hex}.zip"
    seen: list[int] = []
    result = await asyncio.to_thread(
        write_zip, store, key, members, progress=seen.append, cancelled=threading.Event()
    )
    data = await store.get_bytes(key)
    assert result.size == len(data) and result.members == 4
    assert seen[-1] == sum(len(v) for v in contents.values())
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        for name, expected in contents.items():
            assert hashlib.sha256(archive.read(name)).digest() == hashlib.sha256(expected).digest()
        infos = {i.filename: i for i in archive.infolist()}
    assert infos["zebra.obj"].compress_type == zipfile.ZIP_DEFLATED
    assert infos["zebra.obj"].compress_size < len(contents["zebra.obj"]) // 10
    assert infos["photo.jpg"].compress_type == zipfile.ZIP_STORED
    unzip = shutil.which("unzip")
    assert unzip, "unzip is missing: `make bootstrap` installs it (deploy/local/apt-packages.txt)"
    path = tmp_path / "a.zip"
    path.write_bytes(data)
    checked = subprocess.run([unzip, "-t", str(path)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_cancelling_aborts_the_upload_and_leaves_nothing(store: BlobStore) -> None:
    members, _ = await put_members(store)
    key = f"archives/{uuid.uuid4().hex}.zip"
    cancelled = threading.Event()

    def cancel_on_progress(done: int) -> None:
        if done > 0:
            cancelled.set()

    with pytest.raises(Cancelled):
        await asyncio.to_thread(
            write_zip, store, key, members * 3, progress=cancel_on_progress, cancelled=cancelled
        )
    assert await store.stat(key) is None


async def test_a_missing_member_fails_the_archive_and_leaves_nothing(store: BlobStore) -> None:
    members, _ = await put_members(store)
    members.append(Member(name="gone.bin", key="no/such/key", size=10, deflate=False))
    key = f"archives/{uuid.uuid4().hex}.zip"
    with pytest.raises(Exception):  # noqa: B017 - the SDK's NoSuchKey, whatever its class
        await asyncio.to_thread(
            write_zip, store, key, members, progress=lambda _: None, cancelled=threading.Event()
        )
    assert await store.stat(key) is None


def test_whole_numbers_from_struct_metadata_print_as_integers() -> None:
    assert member_names([asset("asset_a", num=2.0, seed=42.0)], template="<num>-<seed>") == [
        "2-42.jpg"
    ]
