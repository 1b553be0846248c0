"""What Kiln's service runtime costs per RPC: the same handler on a raw grpc.aio server and on
Kiln's bootstrap (metrics, request-id/logging and token-verifying interceptors).

The server runs in its own process (`--serve`), the client here, both on loopback; each variant
gets the same warm-up, request count and concurrency.

    python -m bench.grpc_overhead [--requests 4000] [--concurrency 1 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from kiln.jobs.v1 import jobs_pb2, jobs_pb2_grpc

from bench._report import Figure, measure, percentile, report, with_ratios
from deploy.local.seaweed import free_port


class EchoJobs(jobs_pb2_grpc.JobServiceServicer):
    """A trivial handler, so the figure is the runtime's cost and not the handler's."""

    async def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.GetJobResponse:
        return jobs_pb2.GetJobResponse(job=jobs_pb2.Job(id=request.job_id, kind="bench"))


async def serve(variant: str, port: int, keys: Path) -> None:
    if variant == "raw-grpc-aio":
        server = grpc.aio.server()
        jobs_pb2_grpc.add_JobServiceServicer_to_server(EchoJobs(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()
        return
    from services.runtime.config import load_service_config
    from services.runtime.logs import configure_logging
    from services.runtime.server import servicers, start

    env = {
        "KILN_JOBS_PORT": str(port),
        "KILN_JOBS_METRICS_PORT": "0",
        "KILN_JWT_PUBLIC_KEY_FILES": str(keys / "jwt.pub.pem"),
        "KILN_LOG_LEVEL": "WARNING",
    }
    config = load_service_config("jobs", env)
    configure_logging("jobs", config.log_level, config.log_format)
    # Keep the handle: a grpc.aio server that is garbage collected shuts down.
    running = await start(
        config,
        servicers(
            (jobs_pb2, "JobService", jobs_pb2_grpc.add_JobServiceServicer_to_server, EchoJobs())
        ),
    )
    await asyncio.Event().wait()
    await running.stop(0)


async def drive(
    port: int, token: str, requests: int, concurrency: int
) -> tuple[float, list[float]]:
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        await channel.channel_ready()
        request = jobs_pb2.GetJobRequest(job_id="j")

        async def call() -> object:
            return await stub.GetJob(request, metadata=metadata)

        return await measure(call, requests, concurrency, warmup=200)


def wait_ready(port: int) -> None:
    async def check() -> None:
        # Polls rather than awaiting channel_ready(): a refused first connect puts the channel
        # into reconnect backoff that can outlast the server's start.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                try:
                    await asyncio.wait_for(channel.channel_ready(), 0.5)
                    return
                except TimeoutError:
                    pass
        raise TimeoutError(f"bench server on port {port} did not start")

    asyncio.run(check())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--serve", choices=["raw-grpc-aio", "kiln-runtime"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--keys", type=Path)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()
    if args.serve:
        import uvloop

        uvloop.run(serve(args.serve, args.port, args.keys))
        return

    from services.runtime.auth import TokenSigner, generate_keypair

    keys = Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    generate_keypair(keys / "jwt.pem", keys / "jwt.pub.pem")
    token, _ = TokenSigner.from_file(keys / "jwt.pem", issuer="kiln", ttl_seconds=3600).issue(
        client_id="bench", tenant="bench", scopes=["*"]
    )
    figures: list[Figure] = []
    for variant in ("raw-grpc-aio", "kiln-runtime"):
        port = free_port()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.grpc_overhead",
                "--serve",
                variant,
                "--port",
                str(port),
                "--keys",
                str(keys),
            ],
            env=env,
        )
        try:
            wait_ready(port)
            for concurrency in args.concurrency:
                qps, latencies = asyncio.run(drive(port, token, args.requests, concurrency))
                figures.append(
                    Figure(
                        case=f"unary GetJob c={concurrency}",
                        variant=variant,
                        value=round(qps, 1),
                        unit="req/s",
                        p50_ms=round(percentile(latencies, 0.5) * 1000, 3),
                        p99_ms=round(percentile(latencies, 0.99) * 1000, 3),
                    )
                )
        finally:
            server.terminate()
            server.wait(10)
    report(
        "grpc_overhead",
        with_ratios(figures, "raw-grpc-aio"),
        {
            "requests": args.requests,
            "server": "separate process, uvloop",
            "client": "grpc.aio, loopback",
        },
    )


if __name__ == "__main__":
    main()
