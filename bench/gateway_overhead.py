"""What the HTTP gateway costs: reading one asset as a direct gRPC call to the objects service
against the same read as `GET /v1/assets/{id}` through the gateway, on the suite `make up`
starts (separate processes, SQLite, SeaweedFS), in one run.

Both clients run in this process: grpc.aio for the direct calls, and for HTTP a minimal
keep-alive HTTP/1.1 client (bench/_http.py), so that the HTTP client costs about what the gRPC
client costs and the ratio measures the gateway, not the client library.

    python -m bench.gateway_overhead [--requests 2000] [--concurrency 1 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc
import httpx
from kiln.objects.v1 import assets_pb2, assets_pb2_grpc

from bench._http import Pool
from bench._report import Figure, measure, percentile, report, with_ratios
from deploy.local.seaweed import free_port

SERVICES = ("objects", "jobs", "render", "archive")


def suite_env(data_dir: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "KILN_DATA_DIR": str(data_dir),
        "KILN_GATEWAY_PORT": str(free_port()),
        "KILN_S3_PORT": str(free_port()),
        "KILN_LOG_LEVEL": "WARNING",
    }
    for name in SERVICES:
        env[f"KILN_{name.upper()}_PORT"] = str(free_port())
        env[f"KILN_{name.upper()}_METRICS_PORT"] = str(free_port())
    return env


async def run(env: dict[str, str], requests: int, levels: list[int]) -> list[Figure]:
    gateway = f"http://127.0.0.1:{env['KILN_GATEWAY_PORT']}"
    limits = httpx.Limits(max_connections=max(levels), max_keepalive_connections=max(levels))
    async with httpx.AsyncClient(base_url=gateway, limits=limits, timeout=30) as http:
        token_reply = await http.post("/oauth2/application_token", auth=("demo", "demo-secret"))
        token = token_reply.raise_for_status().json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        uploaded = await http.post(
            "/v1/assets", files={"file": ("bench.png", b"\x89PNG" + b"0" * 4096)}, headers=headers
        )
        asset_id = uploaded.raise_for_status().json()["asset"]["id"]
        metadata = (("authorization", f"Bearer {token}"),)
        figures: list[Figure] = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{env['KILN_OBJECTS_PORT']}") as channel:
            stub = assets_pb2_grpc.AssetServiceStub(channel)
            request = assets_pb2.GetAssetRequest(asset_id=asset_id)

            async def direct() -> object:
                return await stub.GetAsset(request, metadata=metadata)

            pool = Pool("127.0.0.1", int(env["KILN_GATEWAY_PORT"]), headers)
            path = f"/v1/assets/{asset_id}"

            async def through_gateway() -> object:
                reply = await pool.request("GET", path)
                if reply.status != 200:
                    raise RuntimeError(reply.body.decode())
                return reply

            for concurrency in levels:
                for variant, call in (("direct-grpc", direct), ("via-gateway", through_gateway)):
                    qps, latencies = await measure(call, requests, concurrency)
                    figures.append(
                        Figure(
                            case=f"GetAsset c={concurrency}",
                            variant=variant,
                            value=round(qps, 1),
                            unit="req/s",
                            p50_ms=round(percentile(latencies, 0.5) * 1000, 3),
                            p99_ms=round(percentile(latencies, 0.99) * 1000, 3),
                        )
                    )
            await pool.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()
    env = suite_env(Path(tempfile.mkdtemp(prefix="kiln-bench-gw-")))
    launcher = [sys.executable, "-m", "deploy.local.launcher"]
    subprocess.run([*launcher, "--detach"], env=env, check=True, stdout=subprocess.DEVNULL)
    try:
        figures = asyncio.run(run(env, args.requests, args.concurrency))
    finally:
        subprocess.run([*launcher, "--stop"], env=env, check=False, stdout=subprocess.DEVNULL)
    report(
        "gateway_overhead",
        with_ratios(figures, "direct-grpc"),
        {
            "requests": args.requests,
            "suite": "make up layout: separate processes, SQLite, SeaweedFS",
            "clients": "grpc.aio and bench/_http.py (HTTP/1.1 keep-alive) in one process",
        },
    )


if __name__ == "__main__":
    main()
