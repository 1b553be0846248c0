"""The service bootstrap: health, reflection, metrics, auth, errors, logs, graceful stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from kiln.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from kiln.objects.v1 import assets_pb2, assets_pb2_grpc

from deploy.local.seaweed import free_port
from services.runtime.config import load_service_config
from services.runtime.server import RunningServer, servicers, start
from services.runtime.status import error_info
from tests.conftest import PYTHONPATH, Suite, bearer

# One RPC each service really serves, called with an empty request.
PROBE_METHODS = {
    "objects": "/kiln.objects.v1.AssetService/GetAsset",
    "jobs": "/kiln.jobs.v1.JobService/GetJob",
    "render": "/kiln.render.v1.ImageService/EditImage",
    "archive": "/kiln.archive.v1.ArchiveService/CreateArchive",
}

EXPECTED_SERVICES = {
    "objects": {"kiln.objects.v1.AssetService"},
    "jobs": {"kiln.jobs.v1.JobService"},
    "render": {"kiln.render.v1.ImageService", "kiln.render.v1.RenderService"},
    "archive": {"kiln.archive.v1.ArchiveService"},
}


async def test_every_service_is_healthy_without_a_token(suite: Suite) -> None:
    for name, target in suite.targets.items():
        async with grpc.aio.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", *EXPECTED_SERVICES[name]):
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, (name, service)


async def test_reflection_lists_every_service(suite: Suite) -> None:
    for name, target in suite.targets.items():
        async with grpc.aio.insecure_channel(target) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)

            async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
                yield reflection_pb2.ServerReflectionRequest(list_services="")

            async for reply in stub.ServerReflectionInfo(ask()):
                listed = {s.name for s in reply.list_services_response.service}
                break
        assert EXPECTED_SERVICES[name] | {"grpc.health.v1.Health"} <= listed, name


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_count_calls_by_method_and_code(
    suite: Suite, objects_channel: grpc.aio.Channel, token_for: Callable[..., str]
) -> None:
    port = suite.servers["objects"].metrics_port
    labels = {"grpc_service": "kiln.objects.v1.AssetService", "grpc_method": "GetAsset"}
    before = scrape(port)
    stub = assets_pb2_grpc.AssetServiceStub(objects_channel)
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.GetAsset(
                assets_pb2.GetAssetRequest(asset_id="nope"), metadata=bearer(token_for())
            )
    after = scrape(port)
    handled = "grpc_server_handled_total"
    assert (
        sample(after, handled, grpc_code="NOT_FOUND", **labels)
        - sample(before, handled, grpc_code="NOT_FOUND", **labels)
        == 3
    )
    assert sample(after, "grpc_server_handling_seconds_count", **labels) >= 3
    for server in suite.servers.values():
        assert "grpc_server_started_total" in scrape(server.metrics_port)


@pytest.mark.parametrize(
    ("make_metadata", "reason"),
    [
        (lambda tok: (), "ERROR_REASON_MISSING_CREDENTIALS"),
        (lambda tok: (("authorization", "Basic ZGVtbzpkZW1v"),), "ERROR_REASON_INVALID_TOKEN"),
        (
            lambda tok: (("authorization", "Bearer " + tok()[:-4] + "AAAA"),),
            "ERROR_REASON_INVALID_TOKEN",
        ),
        (lambda tok: (("authorization", "Bearer " + tok(ttl=-10)),), "ERROR_REASON_TOKEN_EXPIRED"),
    ],
)
async def test_calls_without_a_valid_token_are_refused(
    suite: Suite,
    token_for: Callable[..., str],
    make_metadata: Callable[[Callable[..., str]], tuple[tuple[str, str], ...]],
    reason: str,
) -> None:
    for name, target in suite.targets.items():
        async with grpc.aio.insecure_channel(target) as channel:
            call = channel.unary_unary(
                PROBE_METHODS[name],
                request_serializer=bytes,
                response_deserializer=bytes,
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(b"", metadata=make_metadata(token_for))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
        info = error_info(err.value)
        assert info is not None and info.reason == reason


class SlowJobs(jobs_pb2_grpc.JobServiceServicer):
    """A servicer whose calls take a while, to watch a graceful stop let them finish."""

    async def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.GetJobResponse:
        await asyncio.sleep(0.5)
        return jobs_pb2.GetJobResponse(job=jobs_pb2.Job(id=request.job_id))

    async def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.CancelJobResponse:
        raise RuntimeError("secret internal detail")


async def test_graceful_stop_finishes_calls_in_flight(
    base_env: dict[str, str], token_for: Callable[..., str]
) -> None:
    config = load_service_config("jobs", base_env)
    running = await start(
        config,
        servicers(
            (jobs_pb2, "JobService", jobs_pb2_grpc.add_JobServiceServicer_to_server, SlowJobs())
        ),
    )
    try:
        await _stop_while_busy(running, token_for)
    finally:
        await running.stop(0)


async def _stop_while_busy(running: RunningServer, token_for: Callable[..., str]) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        auth = bearer(token_for())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CancelJob(jobs_pb2.CancelJobRequest(job_id="j"), metadata=auth)
        # An unexpected exception is INTERNAL, and its text stays on the server.
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert "secret" not in (err.value.details() or "")

        in_flight = asyncio.ensure_future(
            stub.GetJob(jobs_pb2.GetJobRequest(job_id="j1"), metadata=auth)
        )
        await asyncio.sleep(0.1)
        stopping = asyncio.create_task(running.stop(5))
        await asyncio.sleep(0.05)
        # Balancers are told first, then new calls are refused, and the call in flight finishes.
        health = await running.health.Check(health_pb2.HealthCheckRequest(), None)
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetJob(jobs_pb2.GetJobRequest(job_id="late"), metadata=auth, timeout=2)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (await in_flight).job.id == "j1"
        await stopping


async def test_process_logs_json_with_request_id_and_exits_cleanly_on_sigterm(
    base_env: dict[str, str], token_for: Callable[..., str], tmp_path: Path
) -> None:
    port, metrics = free_port(), free_port()
    env = {
        **os.environ,
        **base_env,
        "KILN_JOBS_PORT": str(port),
        "KILN_JOBS_METRICS_PORT": str(metrics),
        "KILN_LOG_FORMAT": "json",
        "KILN_LOG_LEVEL": "INFO",
        "KILN_SHUTDOWN_GRACE_SECONDS": "2",
        "PYTHONPATH": PYTHONPATH,
    }
    stderr = tmp_path / "jobs.log"
    with open(stderr, "wb") as err_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.jobs"], env=env, stderr=err_file, stdout=err_file
        )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for _ in range(100):
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.1)
            else:
                pytest.fail(f"jobs never became healthy: {stderr.read_text()[-2000:]}")
            with pytest.raises(grpc.aio.AioRpcError):
                await jobs_pb2_grpc.JobServiceStub(channel).GetJob(
                    jobs_pb2.GetJobRequest(job_id="x"),
                    metadata=(*bearer(token_for("tenant-log")), ("x-request-id", "req-abc123")),
                )
        assert "grpc_server_started_total" in scrape(metrics)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
    lines = [json.loads(line) for line in stderr.read_text().splitlines() if line.startswith("{")]
    rpc_lines = [line for line in lines if line.get("msg") == "rpc"]
    assert any(
        line.get("request_id") == "req-abc123"
        and line.get("tenant") == "tenant-log"
        and line.get("code") == "NOT_FOUND"
        and line.get("service") == "jobs"
        for line in rpc_lines
    ), rpc_lines
    assert [line["msg"] for line in lines if line["msg"] in {"serving", "stopping", "stopped"}] == [
        "serving",
        "stopping",
        "stopped",
    ]
