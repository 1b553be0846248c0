"""Claid's image editing through the real gateway, render service, worker, jobs and S3.

Inputs are served by a loopback HTTP server (the session allow-lists 127.0.0.1/32); outputs
are fetched back through `tmp_url` with a bare GET and decoded, so every answer is checked
against the pixels it describes.
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import io
import json
import threading
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pyvips
from minio import Minio

from gateway.app import build_app
from services.runtime.config import load_gateway_config
from tests.conftest import Suite
from tests.gateway.conftest import live, suite_gateway_env

FINAL = ("DONE", "ERROR")


def photo(width: int, height: int, fmt: str = ".jpg") -> bytes:
    """A small synthetic photo: a colour gradient with a disc, so crops and scales show."""
    x = pyvips.Image.xyz(width, height)
    red = x[0] * (255 / max(width - 1, 1))
    green = x[1] * (255 / max(height - 1, 1))
    blue = (x[0] - width / 2) ** 2 + (x[1] - height / 2) ** 2 < (min(width, height) / 4) ** 2
    image = (
        red.bandjoin([green, blue.ifthenelse(230, 40)]).cast("uchar").copy(interpretation="srgb")
    )
    data: bytes = image.write_to_buffer(fmt)
    return data


@dataclass(frozen=True)
class Files:
    root: Path
    port: int

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def add(self, name: str, data: bytes) -> str:
        (self.root / name).write_bytes(data)
        return self.url(name)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Files]:
    root = tmp_path_factory.mktemp("image-inputs")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Files(root, server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        del format, args


@dataclass(frozen=True)
class Client:
    http: httpx.AsyncClient
    headers: dict[str, str]
    tenant: str

    async def post(self, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        if body is not None:
            kwargs["json"] = body
        return await self.http.post(path, headers=self.headers, timeout=60, **kwargs)

    async def get(self, path: str) -> httpx.Response:
        return await self.http.get(path, headers=self.headers)

    async def wait(self, path: str, within: float = 60.0) -> dict[str, Any]:
        """Polls a task (or batch) view until DONE or ERROR."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            response = await self.get(path)
            assert response.status_code == 200, response.text
            data: dict[str, Any] = response.json()["data"]
            if data["status"] in FINAL:
                return data
            assert data["status"] in ("ACCEPTED", "PROCESSING"), data
            assert asyncio.get_running_loop().time() < deadline, data
            await asyncio.sleep(0.1)


@dataclass(frozen=True)
class Rig:
    a: Client
    b: Client
    anonymous: httpx.AsyncClient


@pytest.fixture(scope="module")
async def rig(suite: Suite, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    data: Path = tmp_path_factory.mktemp("claid-gw")
    env = suite_gateway_env(suite.target_env(), data)
    app = build_app(load_gateway_config(env))
    suffix = uuid.uuid4().hex[:8]
    async with live(app) as http, httpx.AsyncClient(timeout=30) as anonymous:
        clients = []
        for label in ("a", "b"):
            client_id, secret = f"claid-{label}-{suffix}", uuid.uuid4().hex
            tenant = f"claid-{label}-{suffix}"
            await app.state.gateway.clients.ensure(client_id, secret, tenant=tenant, scopes=["*"])
            token = await http.post(
                "/oauth2/token",
                data={"grant_type": "client_credentials"},
                auth=(client_id, secret),
            )
            assert token.status_code == 200, token.text
            headers = {"authorization": f"Bearer {token.json()['access_token']}"}
            clients.append(Client(http, headers, tenant))
        yield Rig(clients[0], clients[1], anonymous)


async def fetch_image(rig: Rig, url: str) -> pyvips.Image:
    """The output at a presigned URL, fetched with no credentials, decoded."""
    response = await rig.anonymous.get(url)
    assert response.status_code == 200, response.text
    return pyvips.Image.new_from_buffer(response.content, "")


def edits_total(suite: Suite, mode: str, outcome: str) -> float:
    port = suite.servers["render"].metrics_port
    wanted = f'kiln_image_edits_total{{mode="{mode}",outcome="{outcome}"}}'
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(wanted):
                return float(line.split()[-1])
    return 0.0


# --- the seed's async flow ------------------------------------------------------------------


async def test_the_seed_example_ends_done_with_a_1000px_wide_output(
    rig: Rig, files: Files, suite: Suite
) -> None:
    before = edits_total(suite, "async", "ok")
    body = {
        "input": files.add("200.jpg", photo(200, 200)),
        "operations": {"resizing": {"width": 1000}, "background": {"remove": False}},
    }
    accepted = await rig.a.post("/v1-beta1/image/edit/async", body)
    assert accepted.status_code == 200, accepted.text
    data = accepted.json()["data"]
    assert data["status"] == "ACCEPTED"
    assert isinstance(data["id"], int)
    assert data["result_url"].endswith(f"/v1-beta1/image/edit/async/{data['id']}")
    assert data["request"] == body  # echoed as sent, not normalized
    assert data["created_at"].endswith("+00:00")

    done = await rig.a.wait(f"/v1-beta1/image/edit/async/{data['id']}")
    assert done["status"] == "DONE", done
    assert done["errors"] == []
    source, output = done["result"]["input_object"], done["result"]["output_object"]
    assert (source["width"], source["height"], source["format"]) == (200, 200, "JPEG")
    assert output["width"] == 1000 and output["format"] == "JPEG"
    assert output["mime"] == "image/jpeg" and output["ext"] in ("jpg", "jpeg")
    assert output["mps"] == pytest.approx(output["width"] * output["height"] / 1e6, rel=1e-3)
    image = await fetch_image(rig, output["tmp_url"])
    assert (image.width, image.height) == (output["width"], output["height"])
    assert image.width == 1000
    assert edits_total(suite, "async", "ok") == before + 1


async def test_another_tenant_cannot_see_a_task(rig: Rig, files: Files) -> None:
    body = {"input": files.add("mine.jpg", photo(64, 48)), "operations": {}}
    accepted = await rig.a.post("/v1/image/edit/async", body)
    task = accepted.json()["data"]["id"]
    assert (await rig.a.wait(f"/v1/image/edit/async/{task}"))["status"] == "DONE"
    other = await rig.b.get(f"/v1/image/edit/async/{task}")
    assert other.status_code == 404
    assert other.json()["error_type"] == "general"


async def test_a_broken_image_ends_the_task_in_error(rig: Rig, files: Files) -> None:
    url = files.add("broken.jpg", photo(300, 200)[:400])
    accepted = await rig.a.post("/v1/image/edit/async", {"input": url, "operations": {}})
    done = await rig.a.wait(f"/v1/image/edit/async/{accepted.json()['data']['id']}")
    assert done["status"] == "ERROR"
    assert done["result"] == {}
    assert len(done["errors"]) == 1 and done["errors"][0]["error"]


# --- sync edits -----------------------------------------------------------------------------


async def test_a_sync_edit_answers_input_and_output_objects(rig: Rig, files: Files) -> None:
    body = {
        "input": files.add("sync.png", photo(640, 480, ".png")),
        "operations": {"resizing": {"width": 320, "height": 320, "fit": "bounds"}},
        "output": {"format": {"type": "webp", "compression": "lossless"}},
    }
    answer = await rig.a.post("/v1/image/edit", body)
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert data["input"] == {
        "ext": "png",
        "mps": pytest.approx(0.3072),
        "mime": "image/png",
        "format": "PNG",
        "width": 640,
        "height": 480,
    }
    output = data["output"]
    assert (output["width"], output["height"], output["format"]) == (320, 240, "WEBP")
    image = await fetch_image(rig, output["tmp_url"])
    assert (image.width, image.height) == (320, 240)
    assert image.get("vips-loader").startswith("webp")


async def test_an_upload_is_edited_like_a_url(rig: Rig) -> None:
    response = await rig.a.post(
        "/v1/image/edit/upload",
        files={"file": ("upload.jpg", photo(400, 300), "image/jpeg")},
        data={
            "data": json.dumps(
                {
                    "operations": {"resizing": {"width": "50%", "height": "50%"}},
                    "output": {"format": "png"},
                }
            )
        },
    )
    assert response.status_code == 200, response.text
    output = response.json()["data"]["output"]
    assert (output["width"], output["height"], output["format"]) == (200, 150, "PNG")
    image = await fetch_image(rig, output["tmp_url"])
    assert (image.width, image.height) == (200, 150)


# --- refusals -------------------------------------------------------------------------------


async def test_every_broken_rule_is_a_422_with_claids_details(rig: Rig, files: Files) -> None:
    body = {
        "input": files.url("200.jpg"),
        "operations": {"resizing": {"width": -5}, "sparkle": True},
        "output": {"format": "gif"},
    }
    for path in ("/v1/image/edit", "/v1-beta1/image/edit/async"):
        response = await rig.a.post(path, body)
        assert response.status_code == 422, response.text
        error = response.json()
        assert error["error_code"] == "9000" and error["error_type"] == "validation"
        assert {"operations.resizing.width", "operations.sparkle", "output.format"} <= set(
            error["error_details"]
        )


async def test_what_cannot_run_offline_says_so(rig: Rig, files: Files) -> None:
    body = {
        "input": files.url("200.jpg"),
        "operations": {"resizing": {"width": 500, "height": 500, "fit": "outpaint"}},
    }
    response = await rig.a.post("/v1/image/edit", body)
    assert response.status_code == 422
    assert "offline" in response.json()["error_message"]


async def test_malformed_json_is_400_and_missing_auth_401(rig: Rig) -> None:
    response = await rig.a.post("/v1/image/edit", content=b'{"input": ')
    assert response.status_code == 400
    assert response.json()["error_type"] == "validation"
    anonymous = await rig.a.http.post("/v1/image/edit", json={"input": "x", "operations": {}})
    assert anonymous.status_code == 401
    assert anonymous.json()["error_code"] == "111"
    assert anonymous.json()["error_type"] == "auth"


async def test_unreachable_and_private_inputs_are_400(rig: Rig, files: Files) -> None:
    missing = await rig.a.post(
        "/v1/image/edit", {"input": files.url("nothing-here.jpg"), "operations": {}}
    )
    assert missing.status_code == 400, missing.text
    assert missing.json()["error_type"] == "storage"
    private = await rig.a.post(
        "/v1/image/edit", {"input": "http://10.20.30.40/secret.jpg", "operations": {}}
    )
    assert private.status_code == 400, private.text
    assert "KILN_FETCH_ALLOWLIST" in private.json()["error_message"]


async def test_undecodable_and_oversized_images_are_422_image(rig: Rig, files: Files) -> None:
    garbage = await rig.a.post(
        "/v1/image/edit",
        {"input": files.add("garbage.jpg", b"not an image" * 50), "operations": {}},
    )
    assert garbage.status_code == 422, garbage.text
    assert garbage.json()["error_type"] == "image"
    # A valid PNG header claiming 50,000 x 50,000 pixels: refused from the header alone.
    flood = pyvips.Image.black(1, 1).write_to_buffer(".png")
    flood = flood[:16] + (50_000).to_bytes(4, "big") + (50_000).to_bytes(4, "big") + flood[24:]
    bomb = await rig.a.post(
        "/v1/image/edit", {"input": files.add("flood.png", flood), "operations": {}}
    )
    assert bomb.status_code == 422, bomb.text
    assert bomb.json()["error_type"] == "image"


# --- storages -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def customer_bucket(suite: Suite) -> str:
    storage = suite.config("render").storage
    client = Minio(
        storage.endpoint,
        access_key=storage.access_key,
        secret_key=storage.secret_key,
        secure=False,
    )
    bucket = f"customer-{uuid.uuid4().hex[:8]}"
    client.make_bucket(bucket)
    return bucket


async def test_storages_carry_inputs_and_outputs(
    rig: Rig, suite: Suite, customer_bucket: str
) -> None:
    storage_config = suite.config("render").storage
    name = f"store-{uuid.uuid4().hex[:6]}"
    created = await rig.a.post(
        "/v1/storage/storages",
        {
            "name": name,
            "type": "s3",
            "parameters": {
                "bucket": customer_bucket,
                "path": "kiln/",
                "credentials": {
                    "access_key": storage_config.access_key,
                    "secret_access_key": storage_config.secret_key,
                },
            },
        },
    )
    assert created.status_code == 200, created.text
    storage = created.json()["data"]
    assert storage["name"] == name and storage["type"] == "s3"
    assert "secret_access_key" not in str(storage)
    types = await rig.a.get("/v1/storage/storage-types")
    assert "s3" in types.json()["data"]
    listed = await rig.a.get("/v1/storage/storages")
    assert [s["id"] for s in listed.json()["data"]] == [storage["id"]]
    assert (await rig.b.get(f"/v1/storage/storages/{storage['id']}")).status_code == 404

    client = Minio(
        storage_config.endpoint,
        access_key=storage_config.access_key,
        secret_key=storage_config.secret_key,
        secure=False,
    )
    source = photo(300, 200)
    client.put_object(customer_bucket, "kiln/in/cat.jpg", io.BytesIO(source), len(source))
    answer = await rig.a.post(
        "/v1/image/edit",
        {
            "input": f"storage://{name}/in/cat.jpg",
            "operations": {"resizing": {"width": 150}},
            "output": {"destination": f"storage://{name}/out/", "format": "png"},
        },
    )
    assert answer.status_code == 200, answer.text
    output = answer.json()["data"]["output"]
    assert output["object_bucket"] == customer_bucket
    assert output["object_key"] == "kiln/out/cat.png"
    assert output["object_uri"] == f"s3://{customer_bucket}/kiln/out/cat.png"
    stored = client.get_object(customer_bucket, "kiln/out/cat.png").read()
    image = pyvips.Image.new_from_buffer(stored, "")
    assert (image.width, image.get("vips-loader")[:3]) == (150, "png")

    # Another tenant's storage name means nothing to this caller.
    foreign = await rig.b.post(
        "/v1/image/edit", {"input": f"storage://{name}/in/cat.jpg", "operations": {}}
    )
    assert foreign.status_code == 400, foreign.text

    # A batch over a storage folder lists its images (not the text file) and writes each
    # output beside the others, named after its input.
    for key, data in (
        ("kiln/batch/one.jpg", photo(120, 80)),
        ("kiln/batch/two.png", photo(80, 120, ".png")),
        ("kiln/batch/notes.txt", b"not an image"),
    ):
        client.put_object(customer_bucket, key, io.BytesIO(data), len(data))
    batch = await rig.a.post(
        "/v1/image/edit/batch",
        {
            "input": {"source": f"storage://{name}/batch/", "recursive": False},
            "operations": {"resizing": {"width": 40, "fit": "bounds"}},
            "output": {"destination": f"storage://{name}/batch-out/", "format": "png"},
        },
    )
    assert batch.status_code == 200, batch.text
    done = await rig.a.wait(f"/v1/image/edit/batch/{batch.json()['data']['id']}")
    assert done["status"] == "DONE", done
    assert sorted(r["output_object"]["object_key"] for r in done["results"]) == [
        "kiln/batch-out/one.png",
        "kiln/batch-out/two.png",
    ]
    assert done["errors"] == []
    written = pyvips.Image.new_from_buffer(
        client.get_object(customer_bucket, "kiln/batch-out/two.png").read(), ""
    )
    assert (written.width, written.height) == (40, 60)

    deleted = await rig.a.http.delete(
        f"/v1/storage/storages/{storage['id']}", headers=rig.a.headers
    )
    assert deleted.status_code == 204
    assert (await rig.a.get(f"/v1/storage/storages/{storage['id']}")).status_code == 404


async def test_bad_storages_are_refused(rig: Rig, suite: Suite) -> None:
    own_bucket = suite.config("render").storage.bucket
    cases: list[Any] = [
        {"name": "x", "type": "gcs", "parameters": {}},
        {"name": "../evil", "type": "web_folder", "parameters": {"base_url": "https://a.b/"}},
        {
            "name": "mine",
            "type": "s3",
            "parameters": {
                "bucket": own_bucket,
                "credentials": {"access_key": "a", "secret_access_key": "b"},
            },
        },
        {"name": "x", "type": "s3", "parameters": {"bucket": "b", "extra": 1}},
        ["not", "an", "object"],
    ]
    for body in cases:
        response = await rig.a.post("/v1/storage/storages", body)
        assert response.status_code in (400, 422), (body, response.text)
        assert response.json()["error_type"] == "validation", response.text
    assert (await rig.a.get("/v1/storage/storages/not-a-number")).status_code == 422
    assert (await rig.a.get("/v1/storage/storages/999999999")).status_code == 404


# --- batches --------------------------------------------------------------------------------


async def test_a_batch_edits_every_input_and_lists_the_failures(rig: Rig, files: Files) -> None:
    urls = [
        files.add("b1.jpg", photo(200, 100)),
        files.add("b2.png", photo(100, 200, ".png")),
        files.url("b3-missing.jpg"),
    ]
    accepted = await rig.a.post(
        "/v1/image/edit/batch",
        {"input": urls, "operations": {"resizing": {"width": 50}}, "output": {"format": "webp"}},
    )
    assert accepted.status_code == 200, accepted.text
    data = accepted.json()["data"]
    assert data["status"] == "ACCEPTED"
    assert data["result_url"].endswith(f"/v1/image/edit/batch/{data['id']}")
    done = await rig.a.wait(f"/v1/image/edit/batch/{data['id']}")
    assert done["status"] == "DONE", done
    assert [r["output_object"]["width"] for r in done["results"]] == [50, 50]
    assert [r["output_object"]["format"] for r in done["results"]] == ["WEBP", "WEBP"]
    assert len(done["errors"]) == 1 and done["errors"][0]["input"] == urls[2]
    for result in done["results"]:
        image = await fetch_image(rig, result["output_object"]["tmp_url"])
        assert image.width == 50
    # A batch is not an edit task, and an unknown batch says what Claid says.
    assert (await rig.a.get(f"/v1/image/edit/async/{data['id']}")).status_code == 404
    missing = await rig.a.get("/v1/image/edit/batch/987654321")
    assert missing.status_code == 404
    assert missing.json()["error_message"] == "Batch image edit pipeline not found"


async def test_a_bad_batch_is_refused_whole(rig: Rig) -> None:
    response = await rig.a.post(
        "/v1/image/edit/batch",
        {"input": ["ftp://x/y.jpg"], "operations": {"adjustments": {"exposure": 500}}},
    )
    assert response.status_code == 422, response.text
    details = response.json()["error_details"]
    assert "input[0]" in details and "operations.adjustments.exposure" in details
