"""Scenario's archive flow through the real gateway, archive service, worker, jobs and S3.

The seed's three steps as written (launch, poll `/v1/jobs/{jobId}` until a final status,
download `archiveUrl` with a bare GET), then the refusals, templates and cancellation.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import urllib.request
import uuid
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from kiln.jobs.v1 import jobs_pb2, jobs_pb2_grpc

from gateway.app import build_app
from services.runtime.auth import TokenSigner
from services.runtime.blob_keys import output_key
from services.runtime.config import load_gateway_config
from services.runtime.storage import BlobStore
from tests.conftest import Suite, bearer
from tests.gateway.conftest import live, suite_gateway_env

JOB_FINAL_STATUS = ("success", "failure", "canceled")


@dataclass(frozen=True)
class Client:
    http: httpx.AsyncClient
    auth: httpx.BasicAuth
    tenant: str

    async def upload(self, data: bytes, file_name: str, **fields: str) -> dict[str, Any]:
        response = await self.http.post(
            "/v1/assets",
            auth=self.auth,
            data=fields,
            files={"file": (file_name, data)},
        )
        assert response.status_code == 200, response.text
        asset: dict[str, Any] = response.json()["asset"]
        return asset

    async def archive(self, body: Any, **headers: str) -> httpx.Response:
        return await self.http.post(
            "/v1/assets/archive",
            auth=self.auth,
            json=body,
            headers={"accept": "application/json", **headers},
        )

    async def poll(self, job_id: str, every: float = 0.2, within: float = 60.0) -> dict[str, Any]:
        """The seed's pollJobStatus loop: GET /v1/jobs/{jobId} until a final status."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            response = await self.http.get(
                f"/v1/jobs/{job_id}", auth=self.auth, headers={"accept": "application/json"}
            )
            job: dict[str, Any] = response.json()["job"]
            if job["status"] in JOB_FINAL_STATUS:
                return job
            assert asyncio.get_running_loop().time() < deadline, job
            await asyncio.sleep(every)


@dataclass(frozen=True)
class Rig:
    a: Client
    b: Client
    blobs: BlobStore


@pytest.fixture(scope="module")
async def rig(suite: Suite, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    data: Path = tmp_path_factory.mktemp("archive-gw")
    env = suite_gateway_env(suite.target_env(), data)
    app = build_app(load_gateway_config(env))
    suffix = uuid.uuid4().hex[:8]
    async with live(app) as http:
        clients = []
        for label in ("a", "b"):
            client_id, secret = f"archiver-{label}-{suffix}", uuid.uuid4().hex
            tenant = f"archive-{label}-{suffix}"
            await app.state.gateway.clients.ensure(client_id, secret, tenant=tenant, scopes=["*"])
            clients.append(Client(http, httpx.BasicAuth(client_id, secret), tenant))
        blobs = BlobStore(suite.config("archive").storage)
        try:
            yield Rig(clients[0], clients[1], blobs)
        finally:
            await blobs.close()


JPEG = b"\xff\xd8\xff\xe0" + os.urandom(200_000) + b"\xff\xd9"
OBJ = b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n" * 20_000


def archives_written(suite: Suite) -> float:
    port = suite.servers["archive"].metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("kiln_archives_written_total "):
                return float(line.split()[1])
    return 0.0


async def test_the_seed_flow_archives_assets_with_identical_bytes(rig: Rig, suite: Suite) -> None:
    written = archives_written(suite)
    photo = await rig.a.upload(
        JPEG, "fox.jpg", prompt="a red fox", num="1", generator="g", seed="7"
    )
    model = await rig.a.upload(OBJ, "zebra.obj", prompt="a zebra", num="2", generator="g", seed="8")
    launched = await rig.a.archive(
        {
            "query": {"assetIds": [photo["id"], model["id"]]},
            "options": {"flat": True, "fileNameTemplate": "<prompt>-<num>-<generator>-<seed>"},
        }
    )
    assert launched.status_code == 200, launched.text
    job = launched.json()["job"]
    assert job["jobId"].startswith("job_") and job["jobType"] == "assets-download"
    assert job["status"] in {"queued", "in-progress"}
    assert job["metadata"]["assetIds"] == [photo["id"], model["id"]]

    final = await rig.a.poll(job["jobId"])
    assert final["status"] == "success", final
    assert final["progress"] == 1
    url = final["metadata"]["archiveUrl"]
    async with httpx.AsyncClient() as anonymous:  # the seed downloads it with a bare fetch
        downloaded = await anonymous.get(url)
    assert downloaded.status_code == 200
    with zipfile.ZipFile(io.BytesIO(downloaded.content)) as archive:
        assert archive.testzip() is None
        assert sorted(archive.namelist()) == ["a red fox-1-g-7.jpg", "a zebra-2-g-8.obj"]
        assert archive.read("a red fox-1-g-7.jpg") == JPEG
        assert hashlib.sha256(archive.read("a zebra-2-g-8.obj")).digest() == (
            hashlib.sha256(OBJ).digest()
        )
        assert archive.getinfo("a zebra-2-g-8.obj").compress_type == zipfile.ZIP_DEFLATED
    assert [step["status"] for step in final["statusHistory"]] == [
        "queued",
        "in-progress",
        "success",
    ]
    assert archives_written(suite) == written + 1


async def test_folders_and_hostile_templates_stay_inside_the_archive(rig: Rig) -> None:
    photo = await rig.a.upload(JPEG, "x.jpg", prompt="../../../etc/passwd\x00")
    model = await rig.a.upload(OBJ, "m.obj", prompt="../../../etc/passwd\x00")
    launched = await rig.a.archive(
        {
            "query": {"assetIds": [photo["id"], model["id"]]},
            "options": {"flat": False, "fileNameTemplate": "<prompt>"},
        }
    )
    final = await rig.a.poll(launched.json()["job"]["jobId"])
    async with httpx.AsyncClient() as anonymous:
        content = (await anonymous.get(final["metadata"]["archiveUrl"])).content
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        names = archive.namelist()
    assert names == ["image/_._._etc_passwd_.jpg", "3d/_._._etc_passwd_.obj"]


async def test_the_download_pair_views_the_same_job(rig: Rig) -> None:
    photo = await rig.a.upload(JPEG, "p.jpg")
    requested = await rig.a.http.post(
        "/v1/assets/download",
        auth=rig.a.auth,
        json={"query": {"assetIds": [photo["id"]]}, "options": {"fileNameTemplate": "<assetId>"}},
    )
    assert requested.status_code == 200, requested.text
    job_id = requested.json()["jobId"]
    await rig.a.poll(job_id)
    status = (await rig.a.http.get(f"/v1/assets/download/{job_id}", auth=rig.a.auth)).json()
    assert status["jobId"] == job_id and status["jobStatus"] == "success"
    async with httpx.AsyncClient() as anonymous:
        content = (await anonymous.get(status["downloadUrl"])).content
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        assert archive.namelist() == [f"image/{photo['id']}.jpg"]  # flat defaults to false


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"query": {"assetIds": [f"asset_{i:022d}" for i in range(1001)]}}, 400, "assetIds"),
        ({"query": {"assetIds": []}}, 400, "assetIds"),
        ({"query": {"assetIds": "asset_x"}}, 400, "assetIds"),
        ({"query": {}}, 400, "assetIds"),
        ({"options": {}}, 400, "query"),
        ([], 400, "body"),
        ({"query": {"assetIds": ["asset_x"]}, "options": {"flat": "yes"}}, 400, "flat"),
        ({"query": {"assetIds": ["asset_x"]}, "options": {"fileNameTemplate": 5}}, 400, "Template"),
        ({"query": {"assetIds": ["asset_" + "x" * 22]}}, 404, "asset_"),
    ],
)
async def test_refused_requests_create_no_job(
    rig: Rig, suite: Suite, body: Any, status: int, field: str
) -> None:
    before = await count_jobs(suite, rig.a.tenant)
    response = await rig.a.archive(body)
    assert response.status_code == status, response.text
    assert field in response.text
    assert await count_jobs(suite, rig.a.tenant) == before


async def test_malformed_json_is_refused(rig: Rig) -> None:
    response = await rig.a.http.post(
        "/v1/assets/archive",
        auth=rig.a.auth,
        content=b'{"query": {"assetIds": [',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400


async def test_another_tenants_assets_and_jobs_are_not_found(rig: Rig) -> None:
    photo = await rig.a.upload(JPEG, "mine.jpg")
    refused = await rig.b.archive({"query": {"assetIds": [photo["id"]]}})
    assert refused.status_code == 404 and photo["id"] in refused.text
    launched = await rig.a.archive({"query": {"assetIds": [photo["id"]]}})
    job_id = launched.json()["job"]["jobId"]
    assert (await rig.b.http.get(f"/v1/jobs/{job_id}", auth=rig.b.auth)).status_code == 404
    hidden = await rig.b.http.get(f"/v1/assets/download/{job_id}", auth=rig.b.auth)
    assert hidden.status_code == 404


async def test_cancelling_a_running_archive_leaves_no_archive(rig: Rig, suite: Suite) -> None:
    big = os.urandom(24 * 1024 * 1024)
    assets = [await rig.a.upload(big, f"big{i}.bin") for i in range(4)]
    launched = await rig.a.archive({"query": {"assetIds": [a["id"] for a in assets]}})
    job_id = launched.json()["job"]["jobId"]
    for _ in range(200):
        job = (await rig.a.http.get(f"/v1/jobs/{job_id}", auth=rig.a.auth)).json()["job"]
        if job["status"] == "in-progress":
            break
        await asyncio.sleep(0.05)
    cancelled = await cancel(suite, rig.a.tenant, job_id)
    assert cancelled == "canceled"
    final = await rig.a.poll(job_id)
    assert final["status"] == "canceled" and "archiveUrl" not in final["metadata"]
    key = output_key(job_id, "archive.zip")
    for _ in range(100):
        if await rig.blobs.stat(key) is None:
            break
        await asyncio.sleep(0.1)
    # The multipart upload was aborted, or a finished object was removed: nothing remains.
    await asyncio.sleep(0.5)
    assert await rig.blobs.stat(key) is None


# --- JobService, straight, for what Scenario's routes cannot show -------------------------


async def count_jobs(suite: Suite, tenant: str) -> int:
    token = _token(suite, tenant)
    async with grpc.aio.insecure_channel(suite.targets["jobs"]) as channel:
        reply = await jobs_pb2_grpc.JobServiceStub(channel).ListJobs(
            jobs_pb2.ListJobsRequest(page_size=1000), metadata=bearer(token)
        )
    return len(reply.jobs)


async def cancel(suite: Suite, tenant: str, job_id: str) -> str:
    async with grpc.aio.insecure_channel(suite.targets["jobs"]) as channel:
        reply = await jobs_pb2_grpc.JobServiceStub(channel).CancelJob(
            jobs_pb2.CancelJobRequest(job_id=job_id), metadata=bearer(_token(suite, tenant))
        )
    return "canceled" if reply.job.status == jobs_pb2.JOB_STATUS_CANCELED else str(reply.job)


def _token(suite: Suite, tenant: str) -> str:
    signer = TokenSigner.from_file(
        suite.env["KILN_JWT_PRIVATE_KEY_FILE"], issuer="kiln", ttl_seconds=600
    )
    token, _ = signer.issue(client_id="test", tenant=tenant, scopes=["*"])
    return token
