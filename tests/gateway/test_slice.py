"""The vertical slice: HTTP through the gateway to the real services, SQL and S3, and back."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from gateway.app import build_app
from gateway.core import Limits
from services.runtime.auth import TokenSigner
from services.runtime.config import load_gateway_config
from tests.conftest import Suite
from tests.gateway.conftest import REPO, serving

MAX_UPLOAD = 4 * 1024 * 1024
BOUNDARY = "kiln-test-boundary"


@pytest.fixture(scope="session")
async def gw_slice(
    suite: Suite, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[httpx.AsyncClient]:
    data = tmp_path_factory.mktemp("gw-slice")
    env = {
        **suite.target_env(),
        "KILN_GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{data / 'gateway.db'}",
        "KILN_DESCRIPTOR_SET": str(REPO / "gen" / "kiln.binpb"),
        "KILN_DEMO_CLIENT_ID": "demo",
        "KILN_DEMO_CLIENT_SECRET": "demo-secret",
        "KILN_DEMO_TENANT": "slice-demo",
        "KILN_MAX_BODY_BYTES": "65536",
    }
    app = build_app(load_gateway_config(env), limits=Limits(max_upload_bytes=MAX_UPLOAD))
    async with serving(app) as client:
        yield client


@pytest.fixture(scope="session")
async def demo_token(gw_slice: httpx.AsyncClient) -> str:
    response = await gw_slice.post("/oauth2/application_token", auth=("demo", "demo-secret"))
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def multipart(*parts: tuple[str, bytes, str | None]) -> tuple[bytes, dict[str, str]]:
    """A multipart body with parts in exactly this order: (name, content, filename)."""
    chunks = []
    for name, content, filename in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
        if filename is not None:
            head += "Content-Type: application/octet-stream\r\n"
        chunks.append(head.encode() + b"\r\n" + content + b"\r\n")
    body = b"".join(chunks) + f"--{BOUNDARY}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


async def asset_ids(client: httpx.AsyncClient, headers: dict[str, str]) -> set[str]:
    response = await client.get("/v1/assets", params={"pageSize": 500}, headers=headers)
    assert response.status_code == 200, response.text
    return {asset["id"] for asset in response.json()["assets"]}


async def upload(
    client: httpx.AsyncClient, headers: dict[str, str], data: bytes, **fields: str
) -> dict[str, Any]:
    response = await client.post(
        "/v1/assets",
        data=fields,
        files={"file": ("rock.obj", data, "application/octet-stream")},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    asset: dict[str, Any] = response.json()["asset"]
    return asset


async def test_upload_get_download_delete(gw_slice: httpx.AsyncClient, demo_token: str) -> None:
    auth = bearer(demo_token)
    data = os.urandom(3 * 1024 * 1024 + 17)
    asset = await upload(
        gw_slice, auth, data, name="Rock", prompt="a mossy rock", seed="42", num="7"
    )
    assert asset["id"].startswith("asset_")
    assert asset["size"] == str(len(data))  # int64: a string in proto3 JSON
    assert asset["sha256"] == hashlib.sha256(data).hexdigest()
    assert asset["kind"] == "3d" and asset["mimeType"] == "model/obj"
    assert asset["metadata"] == {
        "name": "Rock",
        "prompt": "a mossy rock",
        "seed": "42",
        "num": 7,
        "fileName": "rock.obj",
    }

    got = await gw_slice.get(f"/v1/assets/{asset['id']}", headers=auth)
    assert got.status_code == 200
    fetched = got.json()["asset"]
    assert {k: fetched[k] for k in ("id", "sha256", "size", "metadata", "createdAt")} == {
        k: asset[k] for k in ("id", "sha256", "size", "metadata", "createdAt")
    }
    async with httpx.AsyncClient(timeout=30) as plain:
        download = await plain.get(fetched["url"])  # presigned: no credentials
    assert download.status_code == 200 and download.content == data
    assert asset["id"] in await asset_ids(gw_slice, auth)

    deleted = await gw_slice.delete(f"/v1/assets/{asset['id']}", headers=auth)
    assert deleted.status_code == 200 and deleted.json() == {"assetId": asset["id"]}
    gone = await gw_slice.get(f"/v1/assets/{asset['id']}", headers=auth)
    assert gone.status_code == 404
    body = gone.json()
    assert body["code"] == 5
    assert body["details"][0]["reason"] == "ERROR_REASON_NOT_FOUND"
    assert asset["id"] not in await asset_ids(gw_slice, auth)


async def test_tenants_cannot_see_each_other(
    gw_slice: httpx.AsyncClient, demo_token: str, signer: TokenSigner
) -> None:
    owner = bearer(demo_token)
    intruder_token, _ = signer.issue(client_id="intruder", tenant="slice-other", scopes=["*"])
    intruder = bearer(intruder_token)
    asset = await upload(gw_slice, owner, b"tenant secret")
    for response in (
        await gw_slice.get(f"/v1/assets/{asset['id']}", headers=intruder),
        await gw_slice.delete(f"/v1/assets/{asset['id']}", headers=intruder),
    ):
        assert response.status_code == 404
    assert asset["id"] not in await asset_ids(gw_slice, intruder)
    # The intruder's delete changed nothing.
    assert (await gw_slice.get(f"/v1/assets/{asset['id']}", headers=owner)).status_code == 200


async def test_basic_credentials_work_on_api_routes(
    gw_slice: httpx.AsyncClient, demo_token: str
) -> None:
    asset = await upload(gw_slice, bearer(demo_token), b"basic")
    basic = {"Authorization": "Basic " + base64.b64encode(b"demo:demo-secret").decode()}
    response = await gw_slice.get(f"/v1/assets/{asset['id']}", headers=basic)
    assert response.status_code == 200 and response.json()["asset"]["id"] == asset["id"]


async def test_idempotency_key_answers_the_first_upload(
    gw_slice: httpx.AsyncClient, demo_token: str
) -> None:
    headers = {**bearer(demo_token), "Idempotency-Key": f"key-{os.urandom(4).hex()}"}
    first = await upload(gw_slice, headers, b"once")
    again = await upload(gw_slice, headers, b"once")
    assert again["id"] == first["id"]


async def test_credentials_are_checked(
    gw_slice: httpx.AsyncClient, demo_token: str, signer: TokenSigner
) -> None:
    before = await asset_ids(gw_slice, bearer(demo_token))
    header, payload, signature = demo_token.split(".")
    tampered = f"{header}.{payload[:-4]}AAAA.{signature}"
    expired, _ = signer.issue(
        client_id="demo", tenant="slice-demo", scopes=["*"], ttl_seconds=1, now=1_000_000
    )
    body, multipart_headers = multipart(("file", b"sneaky", "x.txt"))
    for auth in ({}, bearer(tampered), bearer(expired)):
        listed = await gw_slice.get("/v1/assets", headers=auth)
        assert listed.status_code == 401
        assert listed.headers["www-authenticate"].startswith('Bearer realm="kiln"')
        uploaded = await gw_slice.post(
            "/v1/assets", content=body, headers={**multipart_headers, **auth}
        )
        assert uploaded.status_code == 401
    assert await asset_ids(gw_slice, bearer(demo_token)) == before


def truncated() -> tuple[bytes, dict[str, str]]:
    body, headers = multipart(("file", b"x" * 1000, "cut.txt"))
    return body[: -len(f"--{BOUNDARY}--\r\n") - 10], headers


@pytest.mark.parametrize(
    ("build", "status", "fragment"),
    [
        (lambda: multipart(("file", b"data", "a.txt"), ("name", b"late", None)), 400, "before"),
        (lambda: multipart(("name", b"only fields", None)), 400, "missing"),
        (lambda: multipart(("color", b"red", None), ("file", b"d", "a.txt")), 400, "unknown"),
        (lambda: multipart(("num", b"seven", None), ("file", b"d", "a.txt")), 400, "integer"),
        (
            lambda: multipart(("file", b"a", "a.txt"), ("file", b"b", "b.txt")),
            400,
            "one file",
        ),
        (lambda: multipart(("file", os.urandom(MAX_UPLOAD + 1), "big.bin")), 413, "limit"),
        (truncated, 400, "ended"),
        (lambda: (b'{"file": "x"}', {"Content-Type": "application/json"}), 415, "multipart"),
    ],
)
async def test_bad_uploads_are_refused_and_store_nothing(
    gw_slice: httpx.AsyncClient,
    demo_token: str,
    build: Callable[[], tuple[bytes, dict[str, str]]],
    status: int,
    fragment: str,
) -> None:
    auth = bearer(demo_token)
    before = await asset_ids(gw_slice, auth)
    body, headers = build()
    response = await gw_slice.post("/v1/assets", content=body, headers={**headers, **auth})
    assert response.status_code == status, response.text
    assert fragment in response.json()["message"]
    assert await asset_ids(gw_slice, auth) == before


async def test_bad_requests_on_transcoded_routes(
    gw_slice: httpx.AsyncClient, demo_token: str
) -> None:
    auth = bearer(demo_token)
    wrong_type = await gw_slice.get("/v1/assets?pageSize=lots", headers=auth)
    assert wrong_type.status_code == 400 and wrong_type.json()["code"] == 3
    unknown_route = await gw_slice.get("/v1/assetz", headers=auth)
    assert unknown_route.status_code == 404 and unknown_route.json()["code"] == 5
    wrong_method = await gw_slice.put("/v1/assets/asset_x", headers=auth)
    assert wrong_method.status_code == 405
    assert set(wrong_method.headers["allow"].split(", ")) == {"GET", "DELETE"}


async def test_health_with_the_real_services(gw_slice: httpx.AsyncClient) -> None:
    health = await gw_slice.get("/health")
    assert health.status_code == 200 and health.json() == {"status": "up"}
