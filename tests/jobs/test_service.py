"""JobService and WorkerService over real gRPC: auth, scopes, tenants, restarts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2
from kiln.jobs.v1 import jobs_pb2, jobs_pb2_grpc

from services.runtime.status import error_info
from tests.conftest import (
    Suite,
    bearer,
    postgres_reachable,
    private_postgres_database,
    start_service,
)


def stubs(
    channel: grpc.aio.Channel,
) -> tuple[jobs_pb2_grpc.JobServiceStub, jobs_pb2_grpc.WorkerServiceStub]:
    return jobs_pb2_grpc.JobServiceStub(channel), jobs_pb2_grpc.WorkerServiceStub(channel)


def worker_auth(worker_token_file: Path) -> tuple[tuple[str, str], ...]:
    return bearer(worker_token_file.read_text().strip())


async def lease(
    workers: jobs_pb2_grpc.WorkerServiceStub, auth: tuple[tuple[str, str], ...], kind: str
) -> jobs_pb2.Lease:
    reply = await workers.LeaseJobs(
        jobs_pb2.LeaseJobsRequest(
            kinds=[kind], max_jobs=1, wait=duration_pb2.Duration(seconds=2), worker_id="test"
        ),
        metadata=auth,
    )
    assert len(reply.leases) == 1
    return reply.leases[0]


async def test_a_client_creates_and_a_worker_completes_over_grpc(
    suite: Suite, token_for: Callable[..., str], worker_token_file: Path
) -> None:
    client = bearer(token_for("tenant-jobs"))
    worker = worker_auth(worker_token_file)
    async with grpc.aio.insecure_channel(suite.targets["jobs"]) as channel:
        jobs, workers = stubs(channel)
        params = struct_pb2.Struct()
        params.update({"scene": "s1", "width": 640})
        created = (
            await jobs.CreateJob(
                jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(kind="test.grpc", params=params)),
                metadata=client,
            )
        ).job
        assert created.status == jobs_pb2.JOB_STATUS_QUEUED and created.tenant == "tenant-jobs"
        leased = await lease(workers, worker, "test.grpc")
        assert leased.job.id == created.id and leased.job.params["width"] == 640
        assert leased.job.tenant == "tenant-jobs" and leased.expire_time.seconds > 0
        beat = await workers.HeartbeatJob(
            jobs_pb2.HeartbeatJobRequest(
                job_id=created.id, lease_id=leased.lease_id, progress=0.25
            ),
            metadata=worker,
        )
        assert not beat.canceled
        result = struct_pb2.Struct()
        result.update({"ok": True})
        await workers.CompleteJob(
            jobs_pb2.CompleteJobRequest(job_id=created.id, lease_id=leased.lease_id, result=result),
            metadata=worker,
        )
        by_seq = (
            await jobs.GetJob(jobs_pb2.GetJobRequest(seq_id=created.seq_id), metadata=client)
        ).job
        assert by_seq.status == jobs_pb2.JOB_STATUS_SUCCEEDED and by_seq.result["ok"] is True
        assert [h.status for h in by_seq.history] == [
            jobs_pb2.JOB_STATUS_QUEUED,
            jobs_pb2.JOB_STATUS_RUNNING,
            jobs_pb2.JOB_STATUS_SUCCEEDED,
        ]
        watched = [
            r.job.status
            async for r in jobs.WatchJob(
                jobs_pb2.WatchJobRequest(job_id=created.id), metadata=client
            )
        ]
        assert watched == [jobs_pb2.JOB_STATUS_SUCCEEDED]


async def test_workers_need_the_worker_scope_and_clients_their_tenant(
    suite: Suite, token_for: Callable[..., str]
) -> None:
    async with grpc.aio.insecure_channel(suite.targets["jobs"]) as channel:
        jobs, workers = stubs(channel)
        owner = bearer(token_for("tenant-a"))
        created = (
            await jobs.CreateJob(
                jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(kind="test.scope")), metadata=owner
            )
        ).job
        # A client token, even with the `*` scope, cannot lease every tenant's jobs.
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await workers.LeaseJobs(jobs_pb2.LeaseJobsRequest(kinds=["test.scope"]), metadata=owner)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        for call in (
            jobs.GetJob(jobs_pb2.GetJobRequest(job_id=created.id), metadata=bearer(token_for("b"))),
            jobs.CancelJob(
                jobs_pb2.CancelJobRequest(job_id=created.id), metadata=bearer(token_for("b"))
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as hidden:
                await call
            assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await jobs.GetJob(jobs_pb2.GetJobRequest(job_id=created.id))
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_bad_requests_name_the_field(suite: Suite, token_for: Callable[..., str]) -> None:
    async with grpc.aio.insecure_channel(suite.targets["jobs"]) as channel:
        jobs, _ = stubs(channel)
        auth = bearer(token_for("tenant-bad"))
        cases = [
            (jobs.CreateJob(jobs_pb2.CreateJobRequest(), metadata=auth), "job"),
            (
                jobs.CreateJob(
                    jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(kind="Bad Kind")), metadata=auth
                ),
                "job.kind",
            ),
            (jobs.GetJob(jobs_pb2.GetJobRequest(), metadata=auth), "job_id"),
            (
                jobs.ListJobs(jobs_pb2.ListJobsRequest(page_token="%%%"), metadata=auth),
                "page_token",
            ),
        ]
        for call, field in cases:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            info = error_info(refused.value)
            assert info is not None and info.metadata["field"] == field


@pytest.mark.postgres
async def test_a_restarted_jobs_process_loses_nothing(
    suite: Suite, token_for: Callable[..., str], worker_token_file: Path
) -> None:
    reason = postgres_reachable()
    if reason is not None:
        pytest.skip(reason)
    client = bearer(token_for("tenant-restart"))
    worker = worker_auth(worker_token_file)
    async with private_postgres_database() as url:
        env = {**suite.env, "KILN_JOBS_DATABASE_URL": url}
        first = await start_service("jobs", env)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
            jobs, workers = stubs(channel)
            ids = [
                (
                    await jobs.CreateJob(
                        jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(kind="test.restart")),
                        metadata=client,
                    )
                ).job.id
                for _ in range(4)
            ]
            running = await lease(workers, worker, "test.restart")
        await first.stop(1)

        second = await start_service("jobs", env)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
                jobs, workers = stubs(channel)
                # The running job's lease survived the restart.
                await workers.HeartbeatJob(
                    jobs_pb2.HeartbeatJobRequest(
                        job_id=running.job.id, lease_id=running.lease_id, progress=0.5
                    ),
                    metadata=worker,
                )
                await workers.CompleteJob(
                    jobs_pb2.CompleteJobRequest(job_id=running.job.id, lease_id=running.lease_id),
                    metadata=worker,
                )
                for _ in range(3):
                    queued = await lease(workers, worker, "test.restart")
                    await workers.CompleteJob(
                        jobs_pb2.CompleteJobRequest(job_id=queued.job.id, lease_id=queued.lease_id),
                        metadata=worker,
                    )
                for job_id in ids:
                    job = (
                        await jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=client)
                    ).job
                    assert job.status == jobs_pb2.JOB_STATUS_SUCCEEDED
        finally:
            await second.stop(1)


async def test_batch_create_and_batch_complete_over_grpc(
    suite: Suite, token_for: Callable[..., str], worker_token_file: Path
) -> None:
    client = bearer(token_for("tenant-batch"))
    worker = worker_auth(worker_token_file)
    async with grpc.aio.insecure_channel(suite.targets["jobs"]) as channel:
        jobs, workers = stubs(channel)
        created = await jobs.BatchCreateJobs(
            jobs_pb2.BatchCreateJobsRequest(
                requests=[
                    jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(kind="test.batchgrpc"))
                    for _ in range(3)
                ]
            ),
            metadata=client,
        )
        assert len({j.id for j in created.jobs}) == 3
        with pytest.raises(grpc.aio.AioRpcError) as empty:
            await jobs.BatchCreateJobs(jobs_pb2.BatchCreateJobsRequest(), metadata=client)
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        leased = await workers.LeaseJobs(
            jobs_pb2.LeaseJobsRequest(
                kinds=["test.batchgrpc"], max_jobs=3, wait=duration_pb2.Duration(seconds=2)
            ),
            metadata=worker,
        )
        assert len(leased.leases) == 3
        reply = await workers.CompleteJobs(
            jobs_pb2.CompleteJobsRequest(
                completions=[
                    jobs_pb2.CompleteJobRequest(job_id=lease.job.id, lease_id=lease.lease_id)
                    for lease in leased.leases
                ]
                + [jobs_pb2.CompleteJobRequest(job_id=leased.leases[0].job.id, lease_id="nope")]
            ),
            metadata=worker,
        )
        assert [r.job.status for r in reply.results[:3]] == [jobs_pb2.JOB_STATUS_SUCCEEDED] * 3
        assert reply.results[3].error_reason == "ERROR_REASON_LEASE_LOST"


async def test_the_jobs_metrics_count_what_happened(
    suite: Suite, token_for: Callable[..., str]
) -> None:
    import urllib.request

    async with grpc.aio.insecure_channel(suite.targets["jobs"]) as channel:
        jobs, _ = stubs(channel)
        created = (
            await jobs.CreateJob(
                jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(kind="test.metrics")),
                metadata=bearer(token_for("tenant-metrics")),
            )
        ).job
        await jobs.CancelJob(
            jobs_pb2.CancelJobRequest(job_id=created.id),
            metadata=bearer(token_for("tenant-metrics")),
        )
    port = suite.servers["jobs"].metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'kiln_jobs_created_total{kind="test.metrics"} 1.0' in text
    assert 'kiln_jobs_finished_total{kind="test.metrics",status="canceled"} 1.0' in text
