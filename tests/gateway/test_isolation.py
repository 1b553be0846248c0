"""Tenant isolation, walked over the whole HTTP surface: tenant A creates one of everything
(asset, object, lock, property, scene and its import, render output, archive job, storage,
Claid task), then tenant B calls every route that names an id, with A's ids, and must get
exactly what an unknown id gets (404); lists, queries, streams and SideFX's functions never
show B anything of A's. The routes are read from the gateway itself, so a new route with an id
fails this test until it is walked too."""

from __future__ import annotations

import asyncio
import functools
import http.server
import io
import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from gateway.app import build_app
from gateway.routing import GatewayRoute
from services.runtime.config import load_gateway_config
from tests.conftest import Suite
from tests.gateway.conftest import live, suite_gateway_env
from tests.gateway.sse_client import EventReader
from tests.render import meshes

SCENE_TAG = f"iso-{uuid.uuid4().hex[:8]}"
#: Routes whose id A cannot read back as a plain GET (the id belongs to another view).
NOT_READABLE_BY_A = {("GET", "/v1/image/edit/batch/{task_id}")}


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        del format, args


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("iso-files")
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 40, 40)).save(buffer, format="JPEG")
    (root / "photo.jpg").write_bytes(buffer.getvalue())
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Tenant:
    http: httpx.AsyncClient
    auth: tuple[str, str]
    ids: dict[str, str] = field(default_factory=dict)

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.request(method, path, auth=self.auth, timeout=120, **kwargs)

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.call(method, path, **kwargs)
        assert response.status_code in (200, 201, 202), (path, response.text)
        return response.json()


@dataclass
class Rig:
    a: Tenant
    b: Tenant
    app: Any


async def wait_scenario(tenant: Tenant, job_id: str) -> dict[str, Any]:
    for _ in range(600):
        job = (await tenant.json("GET", f"/v1/jobs/{job_id}"))["job"]
        if job["status"] in ("success", "failure", "canceled"):
            return dict(job)
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end")


async def populate(a: Tenant, files: str) -> None:
    """One of everything, owned by A."""
    asset = await a.json("POST", "/v1/assets", files={"file": ("a.bin", b"tenant A's bytes")})
    a.ids["asset_id"] = asset["asset"]["id"]
    obj = await a.json("POST", "/v1/object", json={"objects": [{"name": "o", "scene": SCENE_TAG}]})
    a.ids["key"] = obj["objects"][0]["key"]
    await a.json("GET", f"/v1/object/{a.ids['key']}/lock", params={"device": "dev-a"})
    prop = await a.json(
        "POST", "/v1/property", json={"properties": [{"name": "p", "scene": SCENE_TAG}]}
    )
    a.ids["property_key"] = prop["properties"][0]["key"]
    scene = await a.json("POST", "/api/scenes", json={"name": "iso"})
    a.ids["sceneId"] = scene["id"]
    upload = [
        (field_name, (name, data if isinstance(data, bytes) else data.encode()))
        for field_name, (name, data) in zip(
            ("obj", "mtl", "img"), meshes.zebra_files().items(), strict=True
        )
    ]
    imported = await a.json("POST", f"/api/scenes/{scene['id']}/import", files=upload)
    assert imported["status"] == "ok", imported
    render = await a.json("POST", f"/api/scenes/{scene['id']}/render", params={"width": 32})
    a.ids["jobId"] = render["id"]
    archive = await a.json(
        "POST",
        "/v1/assets/download",
        json={"query": {"assetIds": [a.ids["asset_id"]]}, "options": {}},
    )
    a.ids["archive_job"] = archive["jobId"]
    storage = await a.json(
        "POST",
        "/v1/storage/storages",
        json={
            "name": f"wf-{uuid.uuid4().hex[:6]}",
            "type": "web_folder",
            "parameters": {"base_url": files + "/"},
        },
    )
    a.ids["storage_id"] = str(storage["data"]["id"])
    task = await a.json(
        "POST", "/v1/image/edit/async", json={"input": f"{files}/photo.jpg", "operations": {}}
    )
    a.ids["task_id"] = str(task["data"]["id"])
    await wait_scenario(a, a.ids["jobId"])
    await wait_scenario(a, a.ids["archive_job"])


def fill(method: str, template: str, ids: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """The path with A's ids in it, and a body that would be valid for A."""
    values = {
        "jobId": ids["archive_job"] if template.startswith("/v1/assets/download") else ids["jobId"],
        "sceneId": ids["sceneId"],
        "extension": "obj",
        "asset_id": ids["asset_id"],
        "key": ids["property_key"] if template.startswith("/v1/property") else ids["key"],
        "object_key": ids["key"],
        "asset_key": ids["asset_id"],
        "storage_id": ids["storage_id"],
        "task_id": ids["task_id"],
        "name": "render.jpg",
    }
    path = template
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    assert "{" not in path, f"walk {method} {template}: give its id a value in fill()"
    kwargs: dict[str, Any] = {}
    if template.endswith("/lock"):
        kwargs["params"] = {"device": "dev-b"}
    if template.endswith("/import"):
        kwargs["files"] = {"obj": ("x.obj", meshes.ZEBRA_OBJ.encode())}
    elif template.startswith("/v1/storage/storages/") and method == "PUT":
        kwargs["json"] = {
            "name": "mine",
            "type": "web_folder",
            "parameters": {"base_url": "http://x/"},
        }
    elif template.startswith("/v1/object/") and method == "POST":
        kwargs["json"] = {"objects": [{"name": "taken"}]}
    elif template.startswith("/v1/property/") and method == "POST":
        kwargs["json"] = {"properties": [{"name": "taken"}]}
    elif template.startswith("/api/scenes/") and method == "PUT":
        kwargs["json"] = {"name": "taken"}
    return path, kwargs


@pytest.fixture(scope="module")
async def rig(
    suite: Suite, tmp_path_factory: pytest.TempPathFactory, files: str
) -> AsyncIterator[Rig]:
    data: Path = tmp_path_factory.mktemp("iso-gw")
    app = build_app(load_gateway_config(suite_gateway_env(suite.target_env(), data)))
    async with live(app) as http:
        tenants = []
        for label in ("a", "b"):
            client = (f"iso-{label}-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex)
            await app.state.gateway.clients.ensure(*client, tenant=client[0], scopes=["*"])
            tenants.append(Tenant(http, client))
        await populate(tenants[0], files)
        yield Rig(tenants[0], tenants[1], app)


def id_routes(app: Any) -> list[tuple[str, str]]:
    routes = []
    for route in app.routes:
        if isinstance(route, GatewayRoute):
            for method, endpoint in route.endpoints.items():
                if endpoint.template.variables and not endpoint.public:
                    routes.append((method, endpoint.template.template))
    return sorted(routes)


async def test_every_route_with_an_id_answers_b_as_for_an_unknown_id(rig: Rig) -> None:
    routes = id_routes(rig.app)
    assert len(routes) >= 25  # the walk covers the surface, not a sample
    # Reads first, then writes, deletes last: B's deletes must not remove A's things either.
    order = {"GET": 0, "POST": 1, "PUT": 2, "DELETE": 3}
    for method, template in sorted(routes, key=lambda r: order.get(r[0], 9)):
        path, kwargs = fill(method, template, rig.a.ids)
        answer = await rig.b.call(method, path, **kwargs)
        assert answer.status_code == 404, (method, template, answer.status_code, answer.text)
    # A still has every one of them.
    for method, template in routes:
        if method != "GET" or (method, template) in NOT_READABLE_BY_A:
            continue
        path, kwargs = fill(method, template, rig.a.ids)
        answer = await rig.a.call(method, path, **kwargs)
        assert answer.status_code != 404, (template, answer.text)
    locked = await rig.a.json("GET", f"/v1/object/{rig.a.ids['key']}")
    assert locked["objects"][0]["owner"] == "dev-a"  # B could not unlock it


async def test_lists_queries_and_sidefx_show_b_nothing_of_as(rig: Rig) -> None:
    ids = rig.a.ids
    assets = await rig.b.json("GET", "/v1/assets")
    assert ids["asset_id"] not in json.dumps(assets)
    scenes = await rig.b.json("GET", "/api/scenes")
    assert ids["sceneId"] not in json.dumps(scenes)
    storages = await rig.b.json("GET", "/v1/storage/storages")
    assert storages["data"] == []
    objects = await rig.b.json("POST", "/v1/object/query", json={"objects": [{"scene": SCENE_TAG}]})
    assert objects.get("objects", []) == []
    properties = await rig.b.json(
        "POST", "/v1/property/query", json={"properties": [{"scene": SCENE_TAG}]}
    )
    assert properties.get("properties", []) == []
    for function, args in (
        ("assets.get", [ids["asset_id"]]),
        ("objects.get", [ids["key"]]),
        ("scenes.get", [ids["sceneId"]]),
        ("jobs.get", [ids["jobId"]]),
        ("jobs.output", [ids["jobId"]]),
        ("assets.download", [ids["asset_id"]]),
    ):
        answer = await rig.b.call("POST", "/api/", data={"json": json.dumps([function, args])})
        assert answer.status_code == 404, (function, answer.text)
    mine = await rig.a.call(
        "POST", "/api/", data={"json": json.dumps(["jobs.get", [ids["jobId"]]])}
    )
    assert mine.status_code == 200


async def test_b_streams_none_of_as_object_events(rig: Rig) -> None:
    params = {"scene": SCENE_TAG}
    async with (
        rig.a.http.stream("GET", "/v1/object/events", params=params, auth=rig.a.auth) as mine,
        rig.b.http.stream("GET", "/v1/object/events", params=params, auth=rig.b.auth) as theirs,
    ):
        assert mine.status_code == theirs.status_code == 200
        await rig.a.json(
            "POST", "/v1/object", json={"objects": [{"name": "n", "scene": SCENE_TAG}]}
        )
        event = await asyncio.wait_for(EventReader(mine).next(), timeout=10)
        assert event is not None and SCENE_TAG in event.data
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(EventReader(theirs).next(), timeout=1.5)
