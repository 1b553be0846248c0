"""Clara's scenes through the real gateway, render service, worker, jobs, objects and S3: the
seed's import (curl + bash), render (Node) and export (Python urllib) examples, run as
written; rendered pixels checked against the model; refusals that create nothing."""

from __future__ import annotations

import asyncio
import base64
import io
import math
import tempfile
import urllib.parse
import urllib.request
import uuid
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from gateway.app import build_app
from services.render.scenes.importing import ImportBudget, parse_upload
from services.runtime.config import load_gateway_config
from tests.conftest import Suite
from tests.gateway.conftest import live, suite_gateway_env
from tests.render import meshes

#: Looking straight down -Z at the zebra's textured quad (it lies in z = 0, facing +Z).
FRONT = {"azimuthAngle": "0", "polarAngle": str(math.pi / 2)}


@dataclass(frozen=True)
class Clara:
    http: httpx.AsyncClient
    auth: tuple[str, str]
    base: str

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("timeout", 150)
        return await self.http.request(method, path, auth=self.auth, **kwargs)

    async def new_scene(self, name: str = "zebra") -> str:
        created = await self.request("POST", "/api/scenes", json={"name": name})
        assert created.status_code == 201, created.text
        scene_id: str = created.json()["id"]
        return scene_id

    async def import_zebra(self, scene_id: str) -> dict[str, Any]:
        """A synchronous import of the seed's three files."""
        response = await self.request(
            "POST", f"/api/scenes/{scene_id}/import", files=zebra_upload()
        )
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        assert job["status"] == "ok"
        return job

    async def until_303(self, location: str, within: float = 90.0) -> httpx.Response:
        """The seed's bash loop: poll the job URL until it answers 303."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            response = await self.http.get(location, auth=self.auth)
            if response.status_code == 303:
                return response
            assert response.status_code == 200, response.text
            assert response.json()["status"] in ("pending", "working")
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.1)


@dataclass(frozen=True)
class Rig:
    a: Clara
    b: Clara


def zebra_upload() -> list[tuple[str, tuple[str, bytes]]]:
    files = meshes.zebra_files()
    return [
        ("obj", ("zebra.obj", str(files["zebra.obj"]).encode())),
        ("mtl", ("zebra.mtl", str(files["zebra.mtl"]).encode())),
        ("img", ("zebra-atlas.jpg", bytes(files["zebra-atlas.jpg"]))),  # type: ignore[arg-type]
    ]


@pytest.fixture(scope="module")
async def rig(suite: Suite, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    data: Path = tmp_path_factory.mktemp("clara-gw")
    app = build_app(load_gateway_config(suite_gateway_env(suite.target_env(), data)))
    suffix = uuid.uuid4().hex[:8]
    async with live(app) as http:
        clients = []
        for label in ("a", "b"):
            client_id, secret = f"clara-{label}-{suffix}", str(uuid.uuid4())
            await app.state.gateway.clients.ensure(
                client_id, secret, tenant=f"clara-{label}-{suffix}", scopes=["*"]
            )
            clients.append(Clara(http, (client_id, secret), str(http.base_url).rstrip("/")))
        yield Rig(clients[0], clients[1])


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def coloured(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 60) -> np.ndarray:
    return np.all(np.abs(pixels.astype(int) - np.array(colour)) <= tolerance, axis=-1)


# --- the seed's examples --------------------------------------------------------------------


async def test_the_seed_curl_import_ends_on_303_and_the_objects_appear(rig: Rig) -> None:
    scene_id = await rig.a.new_scene()
    # curl -X POST -D- -u user:token -F obj=@… -F mtl=@… -F img=@… -F async=1 …/import
    response = await rig.a.request(
        "POST", f"/api/scenes/{scene_id}/import", files=zebra_upload(), data={"async": "1"}
    )
    assert response.status_code == 202, response.text
    location = response.headers["location"]
    assert location.startswith(rig.a.base + "/api/jobs/")
    assert response.json()["status"] in ("pending", "working", "ok")
    assert response.json()["sceneId"] == scene_id

    done = await rig.a.until_303(location)
    assert done.json()["status"] == "ok", done.json()
    assert done.json()["type"] == "import"

    scene = (await rig.a.request("GET", f"/api/scenes/{scene_id}")).json()
    assert scene["objects"] == 2
    # The objects are CLyman objects of the scene: names, type Mesh, row-major transforms,
    # and their assets (a GLB per mesh, the texture for the textured one).
    query = {"objects": [{"scene": scene_id}], "num_records": 10}
    found = await rig.a.request("POST", "/v1/object/query", json=query)
    assert found.status_code == 200, found.text
    objects = {o["name"]: o for o in found.json()["objects"]}
    assert set(objects) == {"Body", "Tail"}
    assert all(o["type"] == "Mesh" for o in objects.values())
    assert objects["Body"]["transform"] == [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    assert len(objects["Body"]["assets"]) == 2 and len(objects["Tail"]["assets"]) == 1
    for asset_id in objects["Body"]["assets"]:
        asset = await rig.a.request("GET", f"/v1/assets/{asset_id}")
        assert asset.status_code == 200, asset.text
        assert asset.json()["asset"]["mimeType"] in ("model/gltf-binary", "image/jpeg")


async def test_the_seed_render_example_writes_a_jpeg_of_the_model(rig: Rig) -> None:
    scene_id = await rig.a.new_scene()
    await rig.a.import_zebra(scene_id)
    # superagent.post(…/render) with no parameters, then the job URL until 303, then GET its
    # Location: the image. Here with the camera in front, so the texture faces it.
    query = urllib.parse.urlencode(FRONT)
    response = await rig.a.request("POST", f"/api/scenes/{scene_id}/render?{query}")
    assert response.status_code == 202, response.text
    done = await rig.a.until_303(response.headers["location"])
    image = await rig.a.http.get(done.headers["location"], auth=rig.a.auth)
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/jpeg"
    assert image.content[:2] == b"\xff\xd8"
    pixels = decode(image.content)
    assert pixels.shape == (600, 800, 3)  # Clara's default size here
    # The atlas's four colours show, in their places: red top left, blue bottom left.
    red, blue = coloured(pixels, meshes.RED), coloured(pixels, meshes.BLUE)
    green = coloured(pixels, meshes.GREEN)
    assert red.sum() > 2000 and blue.sum() > 2000 and green.sum() > 2000
    red_y, red_x = np.argwhere(red).mean(axis=0)
    blue_y, _ = np.argwhere(blue).mean(axis=0)
    _, green_x = np.argwhere(green).mean(axis=0)
    assert red_y < blue_y  # red above blue
    assert red_x < green_x  # red left of green
    # The model is framed: it touches neither the left nor the right edge.
    background = coloured(pixels, (255, 255, 255), tolerance=8)
    assert background[:, :5].all() and background[:, -5:].all()


async def test_the_seed_python_export_yields_a_zip_that_reimports_the_same(rig: Rig) -> None:
    scene_id = await rig.a.new_scene()
    await rig.a.import_zebra(scene_id)
    user, token = rig.a.auth

    def seed_example() -> bytes | None:
        # The seed's Python example, as written (urllib follows the 303 by itself).
        params = urllib.parse.urlencode({"async": "true", "zip": "true"}).encode("utf-8")
        request = urllib.request.Request(f"{rig.a.base}/api/scenes/{scene_id}/export/obj", params)
        auth = base64.b64encode(f"{user}:{token}".encode("ascii")).decode("ascii")
        request.add_header("Authorization", f"Basic {auth}")
        response = urllib.request.urlopen(request, timeout=30)
        job_url = response.info().get("Location")
        job_request = urllib.request.Request(job_url)
        job_request.add_header("Authorization", f"Basic {auth}")

        def get_zip(job_request: urllib.request.Request) -> bytes | None:
            import json
            import time

            data = urllib.request.urlopen(job_request, timeout=30).read()
            if data[0] != ord(b"{"):
                return bytes(data)
            job_json = json.loads(data.decode("utf8"))
            if job_json["status"] != "ok" and job_json["status"] != "failed":
                time.sleep(0.2)
                return get_zip(job_request)
            return None

        return get_zip(job_request)

    archive = await asyncio.to_thread(seed_example)
    assert archive is not None and archive[:2] == b"PK"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with zipfile.ZipFile(io.BytesIO(archive)) as bundle:
            names = bundle.namelist()
            assert any(n.endswith(".obj") for n in names) and any(n.endswith(".mtl") for n in names)
            bundle.extractall(folder)
        again = await parse_upload(folder, sorted(names), ImportBudget())
    with tempfile.TemporaryDirectory() as tmp:
        original = await parse_upload(
            Path(tmp), meshes.write_files(Path(tmp), meshes.zebra_files()), ImportBudget()
        )
    assert world_vertices(again.placed) == pytest.approx(world_vertices(original.placed))
    assert sum(len(p.mesh.faces) for p in again.placed) == 3


def world_vertices(placed: Any) -> list[float]:
    points = [
        tuple(np.round((p.transform @ np.append(v, 1.0))[:3], 5))
        for p in placed
        for v in np.asarray(p.mesh.vertices)
    ]
    return [c for point in sorted(set(points)) for c in point]


# --- export and render, sync and refusals ---------------------------------------------------


async def test_sync_exports_answer_the_file_and_refuse_what_clara_refuses(rig: Rig) -> None:
    scene_id = await rig.a.new_scene()
    await rig.a.import_zebra(scene_id)
    glb = await rig.a.request("GET", f"/api/scenes/{scene_id}/export/glb?zip=false")
    assert glb.status_code == 200, glb.text
    assert glb.content[:4] == b"glTF"
    stl = await rig.a.request("GET", f"/api/scenes/{scene_id}/export/stl")
    assert stl.status_code == 200 and stl.content[:2] == b"PK"
    with zipfile.ZipFile(io.BytesIO(stl.content)) as bundle:
        assert len([n for n in bundle.namelist() if n.endswith(".stl")]) == 2  # one per object
    refused = await rig.a.request("GET", f"/api/scenes/{scene_id}/export/stl?zip=false")
    assert refused.status_code == 422 and "zip" in refused.json()["message"]
    unsupported = await rig.a.request("GET", f"/api/scenes/{scene_id}/export/fbx")
    assert unsupported.status_code == 422
    assert "obj" in unsupported.json()["message"] and "glb" in unsupported.json()["message"]


async def test_sync_renders_size_format_url_camera_and_determinism(rig: Rig) -> None:
    scene_id = await rig.a.new_scene()
    await rig.a.import_zebra(scene_id)
    path = f"/api/scenes/{scene_id}/render"
    png = await rig.a.request("GET", path, params={"width": 160, "height": 120, "format": "png"})
    assert png.status_code == 200, png.text
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert decode(png.content).shape == (120, 160, 3)
    again = await rig.a.request("GET", path, params={"width": 160, "height": 120, "format": "png"})
    assert np.array_equal(decode(again.content), decode(png.content))  # same scene, same pixels
    turned = await rig.a.request(
        "GET", path, params={"width": 160, "height": 120, "format": "png", "azimuthAngle": 2.0}
    )
    assert not np.array_equal(decode(turned.content), decode(png.content))
    far = await rig.a.request(
        "GET", path, params={"width": 160, "height": 120, "format": "png", "boundingRadius": 20}
    )
    model = ~coloured(decode(png.content), (255, 255, 255), 8)
    small = ~coloured(decode(far.content), (255, 255, 255), 8)
    assert small.sum() < model.sum() / 4  # a larger radius frames a smaller model
    url = await rig.a.request("GET", path, params={"width": 64, "height": 64, "url": "true"})
    assert url.status_code == 200, url.text
    image = await rig.a.http.get(url.json()["url"], auth=rig.a.auth)
    assert image.status_code == 200 and image.content[:2] == b"\xff\xd8"
    for bad in ({"width": "wide"}, {"width": 0}, {"format": "gif"}, {"polarAngle": "nan"}):
        refused = await rig.a.request("GET", path, params=bad)
        assert refused.status_code == 422, (bad, refused.text)
        assert "message" in refused.json()


async def test_a_transform_changed_through_clyman_shows_in_the_next_render(rig: Rig) -> None:
    scene_id = await rig.a.new_scene()
    await rig.a.import_zebra(scene_id)
    params = {"width": 200, "height": 200, "format": "png", "boundingRadius": 4, **FRONT}
    path = f"/api/scenes/{scene_id}/render"
    before = ~coloured(
        decode((await rig.a.request("GET", path, params=params)).content), (255, 255, 255), 8
    )
    found = await rig.a.request(
        "POST", "/v1/object/query", json={"objects": [{"scene": scene_id, "name": "Body"}]}
    )
    key = found.json()["objects"][0]["key"]
    moved = await rig.a.request(
        "POST",
        f"/v1/object/{key}",
        json={"objects": [{"translation": [0, 0, 0], "scale": [2, 2, 2]}]},
    )
    assert moved.status_code == 200, moved.text
    after = ~coloured(
        decode((await rig.a.request("GET", path, params=params)).content), (255, 255, 255), 8
    )
    assert after.sum() > before.sum() * 2


async def test_a_scene_without_meshes_is_refused_and_creates_no_job(rig: Rig) -> None:
    scene_id = await rig.a.new_scene("empty")
    refused = await rig.a.request("GET", f"/api/scenes/{scene_id}/render")
    assert refused.status_code == 422
    assert "no objects" in refused.json()["message"]
    refused = await rig.a.request("POST", f"/api/scenes/{scene_id}/render")
    assert refused.status_code == 422


async def test_imports_that_cannot_work_are_refused_and_leave_nothing(rig: Rig) -> None:
    scene_id = await rig.a.new_scene("refusals")
    path = f"/api/scenes/{scene_id}/import"
    only_image = await rig.a.request("POST", path, files=[("img", ("a.jpg", meshes.atlas()))])
    assert only_image.status_code == 422 and "obj" in only_image.json()["message"]
    no_files = await rig.a.request("POST", path, data={"async": "1"}, files=[])
    assert no_files.status_code in (415, 422)
    broken = await rig.a.request(
        "POST", path, files=[("file0", ("broken.glb", b"glTF\x02\x00\x00\x00garbage"))]
    )
    assert broken.status_code == 422, broken.text
    assert broken.json()["status"] == "failed" and "broken.glb" in broken.json()["message"]
    refs = await rig.a.request(
        "POST",
        path,
        data={"async": "true"},
        files=[("obj", ("bad.obj", b"v 0 0 0\nv 1 0 0\nf 1 2 9\n"))],
    )
    assert refs.status_code == 202
    done = await rig.a.until_303(refs.headers["location"])
    assert done.json()["status"] == "failed" and done.json()["error"]
    scene = (await rig.a.request("GET", f"/api/scenes/{scene_id}")).json()
    assert scene["objects"] == 0


async def test_scenes_crud_and_tenants(rig: Rig) -> None:
    scene_id = await rig.a.new_scene("crud")
    got = await rig.a.request("GET", f"/api/scenes/{scene_id}")
    body = got.json()
    assert body["id"] == body["_id"] == scene_id and body["name"] == "crud"
    assert body["createdAt"].endswith("Z") and body["public"] is False and body["license"] == "none"
    put = await rig.a.request(
        "PUT",
        f"/api/scenes/{scene_id}",
        json={"description": "d", "public": True, "license": "cc0"},
    )
    assert put.status_code == 200, put.text
    assert (put.json()["description"], put.json()["public"], put.json()["license"]) == (
        "d",
        True,
        "cc0",
    )
    listed = await rig.a.request("GET", "/api/scenes", params={"query": "crud"})
    assert scene_id in [m["id"] for m in listed.json()["models"]]
    # Another tenant sees nothing of it, and cannot change or delete it.
    assert (await rig.b.request("GET", f"/api/scenes/{scene_id}")).status_code == 404
    assert (
        await rig.b.request("PUT", f"/api/scenes/{scene_id}", json={"name": "x"})
    ).status_code == 404
    assert (await rig.b.request("DELETE", f"/api/scenes/{scene_id}")).status_code == 404
    assert (
        await rig.b.request("POST", f"/api/scenes/{scene_id}/import", files=zebra_upload())
    ).status_code == 404
    assert (await rig.b.request("GET", f"/api/scenes/{scene_id}/render")).status_code == 404
    listed_b = await rig.b.request("GET", "/api/scenes")
    assert scene_id not in [m["id"] for m in listed_b.json()["models"]]
    # Bad input.
    assert (await rig.a.request("GET", "/api/scenes/not-a-uuid")).status_code == 404
    bad_json = await rig.a.request(
        "POST", "/api/scenes", content=b"{nope", headers={"content-type": "application/json"}
    )
    # Clara's statuses have no 400: a body it cannot read is unprocessable.
    assert bad_json.status_code == 422 and "JSON" in bad_json.json()["message"]
    wrong_type = await rig.a.request("PUT", f"/api/scenes/{scene_id}", json={"public": "maybe"})
    assert wrong_type.status_code == 422
    bad_license = await rig.a.request("PUT", f"/api/scenes/{scene_id}", json={"license": "gpl"})
    assert bad_license.status_code == 422
    assert (await rig.a.http.get("/api/scenes")).status_code == 401
    gone = await rig.a.request("DELETE", f"/api/scenes/{scene_id}")
    assert gone.status_code == 200 and gone.json()["deleted"] is True
    assert (await rig.a.request("GET", f"/api/scenes/{scene_id}")).status_code == 404
