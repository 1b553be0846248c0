"""Scopes per service and operation, through the real gateway and services: a read-only token
reads and is refused writes with 403 and RFC 6750's insufficient_scope, in each API's shape;
`*` never yields a worker token."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.app import build_app
from services.runtime.auth import WORKER_SCOPE
from services.runtime.config import load_gateway_config
from services.runtime.scopes import required_scopes
from tests.conftest import Suite
from tests.gateway.conftest import live, suite_gateway_env


def test_each_method_needs_its_services_read_or_write_scope() -> None:
    assert required_scopes("/kiln.objects.v1.AssetService/GetAsset") == (
        "objects.read",
        "objects.write",
    )
    assert required_scopes("/kiln.objects.v1.AssetService/UploadAsset") == ("objects.write",)
    assert required_scopes("/kiln.jobs.v1.JobService/WatchJob") == ("jobs.read", "jobs.write")
    assert required_scopes("/kiln.objects.v1.ObjectService/LockObject") == ("objects.write",)
    assert required_scopes("/kiln.render.v1.RenderService/SubmitSceneRender") == ("render.write",)
    assert required_scopes("/kiln.jobs.v1.WorkerService/LeaseJobs") == (WORKER_SCOPE,)
    assert required_scopes("/kiln.objects.v1.SceneService/CommitImport") == (
        "objects.write",
        WORKER_SCOPE,
    )
    assert required_scopes("/grpc.health.v1.Health/Check") == ()


@dataclass(frozen=True)
class Rig:
    http: httpx.AsyncClient
    client: tuple[str, str]

    async def token(self, scope: str) -> dict[str, str]:
        answer = await self.http.post(
            "/oauth2/token",
            data={"grant_type": "client_credentials", "scope": scope},
            auth=self.client,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["scope"] == scope
        return {"Authorization": f"Bearer {answer.json()['access_token']}"}


@pytest.fixture(scope="module")
async def rig(suite: Suite, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    data: Path = tmp_path_factory.mktemp("scopes-gw")
    app = build_app(load_gateway_config(suite_gateway_env(suite.target_env(), data)))
    client = (f"scopes-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex)
    async with live(app) as http:
        await app.state.gateway.clients.ensure(*client, tenant=client[0], scopes=["*"])
        yield Rig(http, client)


def insufficient(response: httpx.Response, scope: str) -> None:
    assert response.status_code == 403, response.text
    challenge = response.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge and f'scope="{scope}"' in challenge


async def test_a_read_token_reads_and_cannot_write(rig: Rig) -> None:
    read = await rig.token("objects.read")
    assert (await rig.http.get("/v1/assets", headers=read)).status_code == 200
    assert (await rig.http.get("/api/scenes", headers=read)).status_code == 200
    upload = await rig.http.post("/v1/assets", headers=read, files={"file": ("a.bin", b"x")})
    insufficient(upload, "objects.write")
    clara = await rig.http.post("/api/scenes", headers=read, json={"name": "x"})
    insufficient(clara, "objects.write")
    assert "scope" in clara.json()["message"]
    sidefx = await rig.http.post(
        "/api/", headers=read, data={"json": json.dumps(["objects.create", [], {"name": "n"}])}
    )
    insufficient(sidefx, "objects.write")
    assert sidefx.headers["content-type"].startswith("text/plain")
    jobs = await rig.http.get("/v1/jobs/job_0000000000000000000000000", headers=read)
    insufficient(jobs, "jobs.read")
    clyman = await rig.http.post("/v1/object", headers=read, json={"objects": [{"name": "n"}]})
    insufficient(clyman, "objects.write")
    assert "err_code" in clyman.json()
    claid = await rig.http.get("/v1/storage/storages", headers=read)
    insufficient(claid, "render.read")
    assert claid.json()["error_type"] == "general" and claid.json()["error_code"] == "403"


async def test_a_write_token_also_reads(rig: Rig) -> None:
    write = await rig.token("objects.write")
    created = await rig.http.post("/api/scenes", headers=write, json={"name": "w"})
    assert created.status_code == 201, created.text
    assert (
        await rig.http.get(f"/api/scenes/{created.json()['id']}", headers=write)
    ).status_code == 200


async def test_star_never_grants_the_worker_scope(rig: Rig) -> None:
    answer = await rig.http.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials", "scope": WORKER_SCOPE},
        auth=rig.client,
    )
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_scope"
