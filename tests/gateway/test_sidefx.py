"""SideFX's RPC API driven by SideFX's own reference client (`sidefx_reference.py`, the seed's
sidefx.py) through the real gateway and services: tokens, JSON results, file uploads, binary
downloads, jobs, and every way a call can be refused."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.apis.sidefx_docs import main as docs_main
from gateway.app import build_app
from services.runtime.config import load_gateway_config
from tests.conftest import Suite
from tests.gateway import sidefx_reference as sidefx
from tests.gateway.conftest import live, suite_gateway_env
from tests.render import meshes


@dataclass(frozen=True)
class Rig:
    base: str
    http: httpx.AsyncClient
    a: Any
    b: Any
    a_credentials: tuple[str, str]


@pytest.fixture(scope="module")
async def rig(suite: Suite, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    data: Path = tmp_path_factory.mktemp("sidefx-gw")
    app = build_app(load_gateway_config(suite_gateway_env(suite.target_env(), data)))
    suffix = uuid.uuid4().hex[:8]
    async with live(app) as http:
        base = str(http.base_url).rstrip("/")
        services = []
        credentials = []
        for label in ("a", "b"):
            client_id, secret = f"sidefx-{label}-{suffix}", uuid.uuid4().hex
            await app.state.gateway.clients.ensure(
                client_id, secret, tenant=f"sidefx-{label}-{suffix}", scopes=["*"]
            )
            credentials.append((client_id, secret))
            services.append(
                await asyncio.to_thread(
                    sidefx.service,
                    client_id,
                    secret,
                    access_token_url=f"{base}/oauth2/application_token",
                    endpoint_url=f"{base}/api/",
                    timeout=60,
                )
            )
        yield Rig(base, http, services[0], services[1], credentials[0])


async def blocking(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Runs a call of the (blocking) reference client off the event loop the gateway runs on."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def api_error(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> sidefx.APIError:
    with pytest.raises(sidefx.APIError) as caught:
        await blocking(fn, *args, **kwargs)
    return caught.value


async def read_all(result: Any) -> bytes:
    """A binary result's bytes, read off the event loop (the gateway streams them on it)."""
    assert isinstance(result, sidefx.ResponseFile)

    def read() -> bytes:
        with result as stream:
            return bytes(stream.read())

    return await asyncio.to_thread(read)


async def test_upload_then_download_the_same_bytes(rig: Rig, tmp_path: Path) -> None:
    path = tmp_path / "zebra.obj"
    path.write_text(meshes.ZEBRA_OBJ)
    asset = await blocking(rig.a.assets.upload, file=sidefx.File(str(path)), metadata={"k": 1})
    assert asset["id"].startswith("asset_") and asset["metadata"]["fileName"] == str(path.name)
    assert asset["metadata"]["k"] == 1
    data = await read_all(await blocking(rig.a.assets.download, asset["id"]))
    assert data == path.read_bytes()
    # Raw bytes go up as "unnamed.bin", as the reference client sends a bytearray.
    raw = await blocking(rig.a.assets.upload, file=bytearray(b"\x00\x01binary"))
    assert raw["metadata"]["fileName"] == "unnamed.bin"
    assert await read_all(await blocking(rig.a.assets.download, raw["id"])) == b"\x00\x01binary"
    # Positional and keyword arguments bind the same way.
    assert (await blocking(rig.a.assets.get, raw["id"]))["id"] == raw["id"]
    assert (await blocking(rig.a.assets.get, asset_id=raw["id"]))["id"] == raw["id"]
    listed = await blocking(rig.a.assets.list, page_size=100)
    assert {asset["id"], raw["id"]} <= {a["id"] for a in listed["assets"]}


async def test_objects_round_trip(rig: Rig) -> None:
    created = await blocking(
        rig.a.objects.create, name="Cube", scene="lobby", translation=[0, 0, 1], scale=[1, 1, 2]
    )
    assert created["transform"] == [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 2, 1, 0, 0, 0, 1]
    key = created["key"]
    assert (await blocking(rig.a.objects.get, key))["name"] == "Cube"
    locked = await blocking(rig.a.objects.lock, key, "device-1")
    assert locked["owner"] == "device-1"
    held = await api_error(rig.a.objects.lock, key, "device-2")
    assert held.http_code in (409, 423, 400) and "lock" in str(held).lower()
    await blocking(rig.a.objects.unlock, key, "device-1")
    updated = await blocking(rig.a.objects.update, key, name="Box")
    assert updated["name"] == "Box" and updated["transform"] == created["transform"]
    found = await blocking(rig.a.objects.query, [{"scene": "lobby", "name": "Box"}])
    assert [o["key"] for o in found] == [key]
    assert await blocking(rig.b.objects.query, [{"scene": "lobby"}]) == []
    await blocking(rig.a.objects.delete, key)
    gone = await api_error(rig.a.objects.get, key)
    assert gone.http_code == 404


async def test_scene_import_render_and_binary_output(rig: Rig, tmp_path: Path) -> None:
    names = meshes.write_files(tmp_path, meshes.zebra_files())
    scene = await blocking(rig.a.scenes.create, name="zebra")
    job = await blocking(
        getattr(rig.a.scenes, "import"),
        scene["id"],
        obj=sidefx.File(str(tmp_path / names[0])),
        mtl=sidefx.File(str(tmp_path / names[1])),
        img=sidefx.File(str(tmp_path / names[2])),
    )
    assert job["kind"] == "scene.import"
    done = await blocking(rig.a.jobs.wait, job["id"], timeout=60)
    assert done["status"] == "JOB_STATUS_SUCCEEDED", done
    assert (await blocking(rig.a.scenes.get, scene["id"]))["object_count"] == 2
    render = await blocking(rig.a.scenes.render, scene["id"], width=64, height=48, format="png")
    finished = await blocking(rig.a.jobs.wait, render["id"])
    assert finished["status"] == "JOB_STATUS_SUCCEEDED"
    png = await read_all(await blocking(rig.a.jobs.output, render["id"]))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # Another tenant: the same ids are unknown.
    for call, args in (
        (rig.b.scenes.get, (scene["id"],)),
        (rig.b.jobs.get, (render["id"],)),
        (rig.b.jobs.output, (render["id"],)),
    ):
        assert (await api_error(call, *args)).http_code == 404


async def test_refused_calls_answer_text_and_the_right_status(rig: Rig) -> None:
    unknown = await api_error(rig.a.nothing.here, 1)
    assert unknown.http_code == 404 and "nothing.here" in unknown.args[0]
    missing = await api_error(rig.a.objects.get)
    assert missing.http_code == 400 and "key" in missing.args[0]
    extra = await api_error(rig.a.objects.get, "k", "extra")
    assert extra.http_code == 400 and "too many" in extra.args[0]
    wrong = await api_error(rig.a.objects.lock, "k", 42)
    assert wrong.http_code == 400 and "device must be str" in wrong.args[0]
    bad_field = await api_error(rig.a.objects.create, colour="red")
    assert bad_field.http_code == 400 and "colour" in bad_field.args[0]
    too_long = await api_error(rig.a.jobs.wait, "job_x", timeout=10_000)
    assert too_long.http_code == 400
    no_file = await api_error(rig.a.assets.upload)
    assert no_file.http_code == 400 and "file" in no_file.args[0]
    not_a_file = await api_error(rig.a.assets.upload, file="just text")
    assert not_a_file.http_code == 400 and "file must be file" in not_a_file.args[0]
    for error in (unknown, missing, wrong):
        assert "Traceback" not in error.args[0]


async def test_malformed_posts_and_credentials(rig: Rig) -> None:
    token = rig.a.access_token
    headers = {"Authorization": f"Bearer {token}"}
    cases: list[tuple[dict[str, Any], int]] = [
        ({"data": {"json": "[not json"}}, 400),
        ({"data": {"json": json.dumps({"fn": "x"})}}, 400),
        ({"data": {"json": json.dumps([1, [], {}])}}, 400),
        ({"data": {"json": json.dumps(["jobs.get", "job_1", {}])}}, 400),
        ({"data": {"json": json.dumps(["jobs.get", [], []])}}, 400),
        ({"data": {"other": "x"}}, 400),
        ({"content": b"{}", "headers": {**headers, "content-type": "application/json"}}, 415),
    ]
    for kwargs, status in cases:
        kwargs.setdefault("headers", headers)
        response = await rig.http.post("/api/", **kwargs)
        assert response.status_code == status, (kwargs, response.text)
        assert response.headers["content-type"].startswith("text/plain")
    # A form body over KILN_MAX_BODY_BYTES (8 MiB) is refused before it is read whole.
    huge = await rig.http.post(
        "/api/", headers=headers, data={"json": json.dumps(["jobs.get", ["x" * (9 << 20)]])}
    )
    assert huge.status_code == 413 and huge.headers["content-type"].startswith("text/plain")
    # A file and a JSON keyword of the same name.
    clash = await rig.http.post(
        "/api/",
        headers=headers,
        data={"json": json.dumps(["assets.upload", [], {"file": "x"}])},
        files={"file": ("a.bin", b"x", "application/octet-stream")},
    )
    assert clash.status_code == 400
    # No token, a garbage token: 401 with WWW-Authenticate.
    anonymous = await rig.http.post("/api/", data={"json": json.dumps(["jobs.get", ["x"], {}])})
    assert anonymous.status_code == 401 and "www-authenticate" in anonymous.headers
    garbage = await api_error(
        sidefx.call_api_with_access_token, f"{rig.base}/api/", "garbage", "jobs.get", ["x"], {}
    )
    assert garbage.http_code == 401
    # Bad client credentials at the token endpoint: the reference client's AuthorizationError.
    with pytest.raises(sidefx.AuthorizationError) as caught:
        await blocking(
            sidefx.get_access_token_and_expiry_time,
            f"{rig.base}/oauth2/application_token",
            rig.a_credentials[0],
            "wrong-secret",
        )
    assert caught.value.http_code == 401
    # The /token variant: the client adds grant_type=client_credentials by itself.
    token_url = f"{rig.base}/oauth2/token"
    fresh = await blocking(
        sidefx.service,
        *rig.a_credentials,
        access_token_url=token_url,
        endpoint_url=f"{rig.base}/api/",
    )
    assert (await blocking(fresh.scenes.list))["scenes"] is not None


def test_the_readme_lists_every_function() -> None:
    assert docs_main(["--check"]) == 0
