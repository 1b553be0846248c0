"""The Python SDK against a running suite (real gateway, services, workers, S3): every
resource, both clients, errors, token refresh, a 429 retried, no retry of other 4xx, a
cancelled wait and a wait that times out."""

from __future__ import annotations

import asyncio
import io
import uuid
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.render import grid_obj
from gateway.app import build_app
from gateway.limits import LIMITED
from kiln_sdk import (
    ApiError,
    AsyncClient,
    Client,
    JobCanceled,
    NotFound,
    RateLimited,
    RetryPolicy,
    WaitTimeout,
)
from services.runtime.config import load_gateway_config
from tests.conftest import Suite
from tests.gateway.conftest import live, suite_gateway_env
from tests.render import meshes


class CountingTransport(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.requests: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(f"{request.method} {request.url.path}")
        return await super().handle_async_request(request)


@dataclass(frozen=True)
class Rig:
    app: Any
    base: str

    async def credentials(self, **limit: Any) -> tuple[str, str]:
        client = (f"sdk-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex)
        store = self.app.state.gateway.clients
        await store.ensure(*client, tenant=client[0], scopes=["*"])
        if limit:
            await store.set_rate_limit(client[0], limit["per_second"], limit["burst"])
        return client


@pytest.fixture(scope="module")
async def rig(suite: Suite, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    data: Path = tmp_path_factory.mktemp("sdk-gw")
    app = build_app(load_gateway_config(suite_gateway_env(suite.target_env(), data)))
    async with live(app) as http:
        yield Rig(app, str(http.base_url).rstrip("/"))


@pytest.fixture
def zebra(tmp_path: Path) -> list[Path]:
    return [tmp_path / name for name in meshes.write_files(tmp_path, meshes.zebra_files())]


async def test_scenes_jobs_and_outputs(rig: Rig, zebra: list[Path]) -> None:
    async with AsyncClient(rig.base, *await rig.credentials()) as kiln:
        scene = await kiln.scenes.create("zebra")
        job = await kiln.scenes.import_files(scene["id"], zebra)
        done = await kiln.jobs.wait(job["id"], timeout=60)
        assert done["status"] == "ok" and done["type"] == "import"
        assert (await kiln.scenes.get(scene["id"]))["objects"] == 2
        render = await kiln.scenes.render(scene["id"], width=64, height=48)
        states = [state["status"] async for state in kiln.jobs.watch(render["id"])]
        assert states[-1] == "ok"
        image = await kiln.jobs.output(render["id"])
        assert isinstance(image, bytes) and image[:2] == b"\xff\xd8"
        edit = {
            "operations": {"resizing": {"width": 32, "fit": "bounds"}},
            "output": {"format": "png"},
        }
        edited = await kiln.images.edit_upload(image, edit, file_name="render.jpg")
        assert (edited["output"]["width"], edited["output"]["height"]) == (32, 24)
        png = await kiln.download(edited["output"]["tmp_url"])
        assert isinstance(png, bytes) and png[:4] == b"\x89PNG"
        with pytest.raises(ApiError) as refused:
            await kiln.images.edit_upload(image, {"operations": {"resizing": {"width": "x"}}})
        assert (refused.value.status, refused.value.code) == (422, "9000")
        export = await kiln.scenes.export(scene["id"], "obj")
        await kiln.jobs.wait(export["id"])
        archive = await kiln.jobs.output(export["id"])
        assert isinstance(archive, bytes)
        with zipfile.ZipFile(io.BytesIO(archive)) as bundle:
            assert any(n.endswith(".obj") for n in bundle.namelist())
        assert scene["id"] in [s["id"] for s in await kiln.scenes.list(query="zebra")]


async def test_assets_objects_archives_and_errors(rig: Rig, tmp_path: Path) -> None:
    transport = CountingTransport()
    async with AsyncClient(rig.base, *await rig.credentials(), transport=transport) as kiln:
        raw = await kiln.assets.upload(b"some bytes", file_name="a.bin", name="A")
        assert raw["metadata"]["name"] == "A"
        path = tmp_path / "b.txt"
        path.write_text("from disk")
        on_disk = await kiln.assets.upload(path)
        assert await kiln.assets.download(raw["id"]) == b"some bytes"
        saved = await kiln.assets.download(on_disk["id"], tmp_path / "copy.txt")
        assert await asyncio.to_thread(Path(saved).read_text) == "from disk"
        archive = await kiln.archives.create([raw["id"], on_disk["id"]], flat=True)
        await kiln.jobs.wait(archive["id"])
        created = await kiln.objects.create(name="cube", scene="sdk", translation=[0, 0, 1])
        assert (await kiln.objects.get(created["key"]))["name"] == "cube"
        assert [o["key"] for o in await kiln.objects.query({"scene": "sdk"})] == [created["key"]]

        before = len(transport.requests)
        with pytest.raises(NotFound) as missing:
            await kiln.scenes.get(str(uuid.uuid4()))
        assert missing.value.status == 404 and "not found" in missing.value.message
        assert len(transport.requests) == before + 1  # a 4xx is never retried
        with pytest.raises(NotFound) as clyman:
            await kiln.objects.get("0" * 24)
        assert clyman.value.code == "102"  # CLyman's own error code

        # An expired or revoked token is fetched again once, transparently.
        kiln._token = "not-a-token"
        assert (await kiln.assets.get(raw["id"]))["id"] == raw["id"]


async def test_a_429_is_retried_after_retry_after(rig: Rig) -> None:
    credentials = await rig.credentials(per_second=2.0, burst=1)
    refused = LIMITED._value.get()
    async with AsyncClient(rig.base, *credentials) as kiln:
        for _ in range(3):  # the second and third wait out their 429 and succeed
            await kiln.scenes.list()
    assert LIMITED._value.get() > refused  # 429s were answered, and ridden out
    await asyncio.sleep(1.1)  # the bucket (shared by both clients: one API client) refills
    async with AsyncClient(rig.base, *credentials, retry=RetryPolicy(attempts=1)) as impatient:
        await impatient.scenes.list()
        with pytest.raises(RateLimited) as limited:
            await impatient.scenes.list()
        assert limited.value.status == 429 and (limited.value.retry_after or 0) >= 1


async def test_a_cancelled_wait_and_a_wait_that_times_out(rig: Rig, tmp_path: Path) -> None:
    big = tmp_path / "big.obj"
    big.write_bytes(grid_obj(6))
    async with AsyncClient(rig.base, *await rig.credentials()) as kiln:
        scene = await kiln.scenes.create("big")
        job = await kiln.scenes.import_files(scene["id"], [big])
        with pytest.raises(WaitTimeout):
            await kiln.jobs.wait(job["id"], timeout=0.05)
        waiting = asyncio.create_task(kiln.jobs.wait(job["id"], timeout=60))
        await asyncio.sleep(0.1)
        await kiln.jobs.cancel(job["id"])
        with pytest.raises(JobCanceled) as cancelled:
            await waiting
        assert cancelled.value.job["status"] == "cancelled"
        assert (await kiln.scenes.get(scene["id"]))["objects"] == 0


async def test_the_blocking_client(rig: Rig, zebra: list[Path]) -> None:
    credentials = await rig.credentials()

    def blocking() -> None:
        with Client(rig.base, *credentials) as kiln:
            asset = kiln.assets.upload(b"sync bytes")
            assert kiln.assets.download(asset["id"]) == b"sync bytes"
            scene = kiln.scenes.create("sync")
            job = kiln.scenes.import_files(scene["id"], zebra)
            assert [s["status"] for s in kiln.jobs.watch(job["id"])][-1] == "ok"
            with pytest.raises(NotFound):
                kiln.jobs.get("job_" + "x" * 25)

    await asyncio.to_thread(blocking)
