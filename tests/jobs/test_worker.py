"""The worker library against a real jobs service (in this process, its own database) and the
session's real S3: outcomes, cancellation, lost leases, graceful stop, crashes, reconnects.

Worker subprocesses run `python -m services.runtime.worker tests.jobs.worker_handlers:handlers`.
Every test uses kinds of its own (a random prefix), so the module's one service is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from kiln.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from prometheus_client import REGISTRY

from deploy.local.seaweed import free_port
from services.runtime import tracing
from services.runtime.auth import TokenSigner, write_worker_token
from services.runtime.blob_keys import output_key
from services.runtime.config import StorageConfig, load_service_config
from services.runtime.storage import BlobStore
from services.runtime.worker import Handler, TokenFile, Worker
from tests.conftest import (
    PYTHONPATH,
    REPO_ROOT,
    bearer,
    postgres_reachable,
    private_postgres_database,
    start_service,
)
from tests.jobs import worker_handlers
from tests.jobs.worker_handlers import STARTED, STOPPED

LEASE = 2.0
HEARTBEAT = 0.25
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = (
    jobs_pb2.JOB_STATUS_QUEUED,
    jobs_pb2.JOB_STATUS_RUNNING,
    jobs_pb2.JOB_STATUS_SUCCEEDED,
    jobs_pb2.JOB_STATUS_FAILED,
    jobs_pb2.JOB_STATUS_CANCELED,
)
TERMINAL = (SUCCEEDED, FAILED, CANCELED)


@dataclass
class JobsUnderTest:
    """A running jobs service, a client of it, and what workers need to reach it."""

    target: str
    env: dict[str, str]
    jobs: jobs_pb2_grpc.JobServiceStub
    client: tuple[tuple[str, str], ...]
    storage: StorageConfig
    blobs: BlobStore
    token_file: Path

    async def create(
        self, kind: str, params: dict[str, Any] | None = None, max_attempts: int = 0
    ) -> jobs_pb2.Job:
        struct = struct_pb2.Struct()
        struct.update(params or {})
        reply = await self.jobs.CreateJob(
            jobs_pb2.CreateJobRequest(
                job=jobs_pb2.Job(kind=kind, params=struct, max_attempts=max_attempts)
            ),
            metadata=self.client,
        )
        return reply.job

    async def get(self, job_id: str) -> jobs_pb2.Job:
        return (
            await self.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=self.client)
        ).job

    async def final(self, job_id: str, within: float = 10.0) -> jobs_pb2.Job:
        deadline = time.monotonic() + within
        while True:
            job = await self.get(job_id)
            if job.status in TERMINAL:
                return job
            assert time.monotonic() < deadline, f"job still {job.status} after {within} s"
            await asyncio.sleep(0.02)

    async def read_output(self, job_id: str, name: str) -> bytes:
        stream = self.jobs.ReadJobOutput(
            jobs_pb2.ReadJobOutputRequest(job_id=job_id, name=name), metadata=self.client
        )
        return b"".join([message.data async for message in stream])

    def worker(
        self, prefix: str, handlers: dict[str, Handler] | None = None, **settings: Any
    ) -> Worker:
        options: dict[str, Any] = {
            "concurrency": 2,
            "lease_seconds": LEASE,
            "heartbeat_seconds": HEARTBEAT,
            "storage": self.storage,
            "poll_seconds": 5.0,
        }
        options.update(settings)
        token_file = options.pop("token_file", self.token_file)
        return Worker(
            self.target,
            token_file,
            handlers or dict(worker_handlers.handlers(prefix)),
            **options,
        )

    def spawn_worker(
        self, prefix: str, log_file: Path, **variables: str
    ) -> subprocess.Popen[bytes]:
        """A worker process, as `python -m services.runtime.worker` runs one."""
        env = {
            **os.environ,
            **self.env,
            "PYTHONPATH": PYTHONPATH,
            "KILN_JOBS_TARGET": self.target,
            "KILN_TEST_KIND_PREFIX": prefix,
            "KILN_WORKER_LEASE_SECONDS": str(LEASE),
            "KILN_WORKER_HEARTBEAT_SECONDS": str(HEARTBEAT),
            "KILN_WORKER_CONCURRENCY": "2",
            **variables,
        }
        with log_file.open("ab") as log:
            return subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "services.runtime.worker",
                    "tests.jobs.worker_handlers:handlers",
                ],
                env=env,
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )


@contextlib.asynccontextmanager
async def jobs_under_test(
    base_env: dict[str, str],
    database_url: str,
    client_token: str,
    token_file: Path,
    *,
    port: int = 0,
) -> AsyncIterator[JobsUnderTest]:
    env = {
        **base_env,
        "KILN_JOBS_DATABASE_URL": database_url,
        "KILN_JOBS_PORT": str(port),
        # Quick retries and lease expiry, so every test takes seconds.
        "KILN_JOBS_BACKOFF_SECONDS": "0.05",
        "KILN_JOBS_REAP_INTERVAL_SECONDS": "0.1",
    }
    server = await start_service("jobs", env)
    storage = load_service_config("jobs", env).storage
    blobs = BlobStore(storage)
    target = f"127.0.0.1:{server.port}"
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            yield JobsUnderTest(
                target=target,
                env=env,
                jobs=jobs_pb2_grpc.JobServiceStub(channel),
                client=bearer(client_token),
                storage=storage,
                blobs=blobs,
                token_file=token_file,
            )
    finally:
        await blobs.close()
        await server.stop(0)


@contextlib.asynccontextmanager
async def module_jobs_service(
    request: pytest.FixtureRequest, tenant: str
) -> AsyncIterator[JobsUnderTest]:
    """One test module's jobs service on a SQLite file of its own, clients acting in `tenant`."""
    database = request.getfixturevalue("tmp_path_factory").mktemp("jobs") / "jobs.db"
    async with jobs_under_test(
        request.getfixturevalue("base_env"),
        f"sqlite+aiosqlite:///{database}",
        request.getfixturevalue("token_for")(tenant),
        request.getfixturevalue("worker_token_file"),
    ) as running:
        yield running


@pytest.fixture(scope="module")
async def service(request: pytest.FixtureRequest) -> AsyncIterator[JobsUnderTest]:
    async with module_jobs_service(request, "tenant-worker") as running:
        yield running


@pytest.fixture
def prefix() -> str:
    """Job kinds of this test only: `<prefix>.<behaviour>`."""
    return f"t{uuid.uuid4().hex[:10]}"


def finished(kind: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "kiln_worker_jobs_finished_total", {"kind": kind, "outcome": outcome}
    )
    return value or 0.0


async def eventually(check: Callable[[], bool], within: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        await asyncio.sleep(0.01)


def statuses(job: jobs_pb2.Job) -> list[int]:
    return [t.status for t in job.history]


# --- outcomes ---------------------------------------------------------------------------------


async def test_a_handler_result_and_output_complete_the_job(
    service: JobsUnderTest, prefix: str
) -> None:
    kind = f"{prefix}.echo"
    async with service.worker(prefix):
        job = await service.create(kind, {"outputs": {"hello.txt": "hello, kiln"}, "n": 3})
        done = await service.final(job.id)
    assert done.status == SUCCEEDED and done.attempt == 1 and done.progress == 1.0
    result = json_format.MessageToDict(done.result)
    assert result["echo"]["n"] == 3 and result["tenant"] == "tenant-worker"
    assert [(o.name, o.content_type, o.size) for o in done.outputs] == [
        ("hello.txt", "text/plain", 11)
    ]
    # Stored at the deterministic key, and served back by the jobs service.
    assert await service.blobs.get_bytes(output_key(job.id, "hello.txt")) == b"hello, kiln"
    assert await service.read_output(job.id, "hello.txt") == b"hello, kiln"
    assert statuses(done) == [QUEUED, RUNNING, SUCCEEDED]
    assert finished(kind, "succeeded") == 1
    assert REGISTRY.get_sample_value("kiln_worker_jobs_started_total", {"kind": kind}) == 1
    assert REGISTRY.get_sample_value("kiln_worker_handler_seconds_count", {"kind": kind}) == 1


async def test_a_retryable_failure_is_retried_then_succeeds(
    service: JobsUnderTest, prefix: str
) -> None:
    kind = f"{prefix}.flaky"
    async with service.worker(prefix):
        job = await service.create(kind, {"succeed_on": 2})
        done = await service.final(job.id)
    assert done.status == SUCCEEDED and done.attempt == 2
    assert json_format.MessageToDict(done.result) == {"attempt": 2.0}
    assert statuses(done) == [QUEUED, RUNNING, QUEUED, RUNNING, SUCCEEDED]
    assert "not yet (attempt 1)" in done.history[2].reason
    assert finished(kind, "retried") == 1 and finished(kind, "succeeded") == 1


async def test_a_non_retryable_failure_fails_the_job_at_once(
    service: JobsUnderTest, prefix: str
) -> None:
    kind = f"{prefix}.fail"
    async with service.worker(prefix):
        job = await service.create(kind, {"message": "scene has no camera"}, max_attempts=3)
        done = await service.final(job.id)
    assert done.status == FAILED and done.attempt == 1
    assert done.error == "scene has no camera"
    assert finished(kind, "failed") == 1


async def test_an_unexpected_exception_is_retryable_and_keeps_its_text_private(
    service: JobsUnderTest, prefix: str
) -> None:
    kind = f"{prefix}.crash"
    async with service.worker(prefix):
        job = await service.create(kind, max_attempts=2)
        done = await service.final(job.id)
    assert done.status == FAILED and done.attempt == 2  # retried once, then out of attempts
    assert done.error == "internal error (ValueError)"
    assert all("secret" not in t.reason for t in done.history)
    assert finished(kind, "retried") == 1 and finished(kind, "failed") == 1


async def test_jobs_run_at_most_concurrency_at_once(service: JobsUnderTest, prefix: str) -> None:
    kind = f"{prefix}.slow"
    worker = service.worker(prefix, concurrency=2)
    await worker.start()
    try:
        jobs = [await service.create(kind) for _ in range(5)]
        started = lambda: sum((j.id, 1) in STARTED for j in jobs)  # noqa: E731
        await eventually(lambda: started() == 2, what="two jobs started")
        await asyncio.sleep(0.3)
        assert started() == 2 and len(worker.running_jobs) == 2
        states = [(await service.get(j.id)).status for j in jobs]
        assert states.count(RUNNING) == 2 and states.count(QUEUED) == 3
    finally:
        await worker.stop(0)
    # Stopping released the two it held: nothing is left leased to a gone worker.
    states = [(await service.get(j.id)).status for j in jobs]
    assert states == [QUEUED] * 5


# --- cancellation and lost leases ---------------------------------------------------------------


async def test_cancel_during_a_run_stops_the_handler_within_a_heartbeat_and_removes_outputs(
    service: JobsUnderTest, prefix: str
) -> None:
    kind = f"{prefix}.slow"
    async with service.worker(prefix) as worker:
        job = await service.create(kind)
        await eventually(lambda: (job.id, 1) in STARTED, what="the handler started")
        partial = output_key(job.id, "partial.bin")
        assert await service.blobs.stat(partial) is not None
        asked = time.monotonic()
        canceled = await service.jobs.CancelJob(
            jobs_pb2.CancelJobRequest(job_id=job.id), metadata=service.client
        )
        assert canceled.job.status == CANCELED
        await eventually(lambda: (job.id, 1) in STOPPED, within=5, what="the handler stopped")
        assert STOPPED[(job.id, 1)] - asked <= HEARTBEAT + 0.2
        # Partial outputs go once the handler has stopped.
        deadline = time.monotonic() + 3
        while await service.blobs.stat(partial) is not None:
            assert time.monotonic() < deadline, "the partial output was not removed"
            await asyncio.sleep(0.02)
        await eventually(lambda: job.id not in worker.running_jobs, what="the slot freed")
        # Nothing more was reported: the job stays exactly as the cancel left it.
        await asyncio.sleep(HEARTBEAT * 2)
        after = await service.get(job.id)
    assert after.status == CANCELED and statuses(after) == [QUEUED, RUNNING, CANCELED]
    assert after.update_time == canceled.job.update_time
    assert finished(kind, "canceled") == 1


async def test_a_lost_lease_stops_the_handler_but_keeps_outputs(
    service: JobsUnderTest, prefix: str
) -> None:
    kind = f"{prefix}.hang-first"
    # A lease shorter than the heartbeat period: the service requeues attempt 1 before its
    # first heartbeat, this same worker runs attempt 2 (which overwrites out.txt and
    # succeeds), and attempt 1's heartbeat then answers LEASE_LOST.
    async with service.worker(prefix, lease_seconds=0.5, heartbeat_seconds=1.0):
        job = await service.create(kind)
        done = await service.final(job.id)
        assert done.status == SUCCEEDED and done.attempt == 2
        await eventually(lambda: (job.id, 1) in STOPPED, within=5, what="attempt 1 stopped")
        await eventually(lambda: finished(kind, "lease_lost") == 1, what="lease_lost counted")
    # Another worker's output (attempt 2's) is still there: a lost lease removes nothing.
    assert await service.blobs.get_bytes(output_key(job.id, "out.txt")) == b"attempt 2"
    assert await service.read_output(job.id, "out.txt") == b"attempt 2"
    assert "lease expired" in done.history[2].reason
    assert (await service.get(job.id)).update_time == done.update_time


# --- stopping -----------------------------------------------------------------------------------


async def test_graceful_stop_finishes_quick_jobs_and_releases_the_rest(
    service: JobsUnderTest, prefix: str
) -> None:
    kind = f"{prefix}.slow"
    worker = service.worker(prefix, concurrency=3)
    await worker.start()
    quick = await service.create(kind, {"seconds": 0.3})
    slow = [await service.create(kind) for _ in range(2)]
    await eventually(
        lambda: all((j.id, 1) in STARTED for j in [quick, *slow]), what="all three started"
    )
    began = time.monotonic()
    await worker.stop(grace=0.8)
    took = time.monotonic() - began
    assert 0.7 <= took < 2.5
    assert (await service.get(quick.id)).status == SUCCEEDED
    for job in slow:
        released = await service.get(job.id)
        assert (job.id, 1) in STOPPED
        assert released.status == QUEUED and released.attempt == 0  # the attempt did not count
        assert released.history[-1].reason == "released by its worker"
    assert finished(kind, "released") == 2
    # Another worker picks the released jobs up at once.
    async with service.worker(prefix, {kind: worker_handlers.echo}):
        for job in slow:
            done = await service.final(job.id)
            assert done.status == SUCCEEDED and done.attempt == 1


async def test_sigterm_stops_a_worker_process_and_releases_its_job(
    service: JobsUnderTest, prefix: str, tmp_path: Path
) -> None:
    process = service.spawn_worker(
        prefix, tmp_path / "worker.log", KILN_SHUTDOWN_GRACE_SECONDS="0.3"
    )
    try:
        job = await service.create(f"{prefix}.slow", {"marker_dir": str(tmp_path)})
        started = tmp_path / f"{job.id}.1.started"
        await eventually(started.exists, within=30, what="the worker process started the job")
        process.send_signal(signal.SIGTERM)
        began = time.monotonic()
        while process.poll() is None:
            assert time.monotonic() - began < 10, "the worker did not stop on SIGTERM"
            await asyncio.sleep(0.02)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]
    assert (tmp_path / f"{job.id}.1.stopped").exists()
    released = await service.get(job.id)
    assert released.status == QUEUED and released.attempt == 0
    assert released.history[-1].reason == "released by its worker"


# --- failures of the world around the worker ----------------------------------------------------


@pytest.mark.postgres
async def test_a_worker_killed_mid_job_is_replaced_and_the_job_completes_once(
    base_env: dict[str, str],
    token_for: Callable[..., str],
    worker_token_file: Path,
    prefix: str,
    tmp_path: Path,
) -> None:
    reason = postgres_reachable()
    if reason is not None:
        pytest.skip(reason)
    lease, heartbeat = 1.5, 0.3
    async with (
        private_postgres_database() as url,
        jobs_under_test(base_env, url, token_for("tenant-kill"), worker_token_file) as svc,
    ):
        process = svc.spawn_worker(
            prefix,
            tmp_path / "worker.log",
            KILN_WORKER_LEASE_SECONDS=str(lease),
            KILN_WORKER_HEARTBEAT_SECONDS=str(heartbeat),
        )
        try:
            job = await svc.create(f"{prefix}.hang-first", {"marker_dir": str(tmp_path)})
            seen: list[jobs_pb2.Job] = []

            async def watch() -> None:
                stream = svc.jobs.WatchJob(
                    jobs_pb2.WatchJobRequest(job_id=job.id), metadata=svc.client
                )
                async for message in stream:
                    seen.append(message.job)

            watcher = asyncio.create_task(watch())
            started = tmp_path / f"{job.id}.1.started"
            await eventually(started.exists, within=30, what="the worker process started it")
            await asyncio.sleep(heartbeat * 2)  # it has heartbeated: the lease was renewed
            process.kill()
            killed_at = time.time()
            process.wait()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        # A live worker polls from now on; it must not get the job while the lease lives.
        async with svc.worker(prefix, lease_seconds=lease, heartbeat_seconds=heartbeat):
            await asyncio.wait_for(watcher, 20)
            final = seen[-1]
            await asyncio.sleep(0.5)
            again = await svc.get(job.id)
            output = await svc.read_output(job.id, "out.txt")
    assert process.returncode == -signal.SIGKILL
    # What every client saw: one success, at the end, from the second attempt.
    assert [j.status for j in seen].count(SUCCEEDED) == 1 and final.status == SUCCEEDED
    assert not {j.status for j in seen} & {FAILED, CANCELED}
    assert final.attempt == 2 and json_format.MessageToDict(final.result)["pid"] == os.getpid()
    assert statuses(final) == [QUEUED, RUNNING, QUEUED, RUNNING, SUCCEEDED]
    assert "lease expired" in final.history[2].reason
    rerun = final.history[3].time.ToNanoseconds() / 1e9
    assert rerun >= killed_at + lease - heartbeat - 0.2, "re-leased while the lease was live"
    assert [o.name for o in final.outputs] == ["out.txt"] and output == b"attempt 2"
    assert again == final


@pytest.mark.parametrize("intercepted", [False, True], ids=["plain", "tracing-interceptors"])
async def test_a_worker_waits_out_an_unreachable_jobs_service(
    base_env: dict[str, str],
    token_for: Callable[..., str],
    worker_token_file: Path,
    prefix: str,
    tmp_path: Path,
    *,
    intercepted: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if intercepted:
        # Calls through client interceptors fail differently (a write to an ended stream says
        # only that it has finished); with KILN_TRACING on, every worker's channel has them.
        monkeypatch.setattr(tracing, "client_interceptors", tracing.all_client_interceptors)
    port = free_port()

    def lease_errors() -> float:
        value = REGISTRY.get_sample_value("kiln_worker_lease_errors_total", {"code": "UNAVAILABLE"})
        return value or 0.0

    before = lease_errors()
    storage = load_service_config("jobs", base_env).storage
    worker = Worker(
        f"127.0.0.1:{port}",
        worker_token_file,
        dict(worker_handlers.handlers(prefix)),
        heartbeat_seconds=HEARTBEAT,
        storage=storage,
    )
    await worker.start()
    try:
        await eventually(lambda: lease_errors() >= before + 2, what="failed lease attempts")
        async with jobs_under_test(
            base_env,
            f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}",
            token_for("tenant-late"),
            worker_token_file,
            port=port,
        ) as svc:
            job = await svc.create(f"{prefix}.echo")
            done = await svc.final(job.id, within=15)
            assert done.status == SUCCEEDED
    finally:
        await worker.stop(0)


async def test_the_token_file_is_read_again_after_unauthenticated(
    service: JobsUnderTest, prefix: str, signer: TokenSigner, tmp_path: Path
) -> None:
    token_file = tmp_path / "worker.token"
    token_file.write_text("not-a-valid-token\n")
    worker = service.worker(prefix, token_file=token_file)
    await worker.start()
    try:
        job = await service.create(f"{prefix}.echo")
        await asyncio.sleep(0.5)
        assert (await service.get(job.id)).status == QUEUED
        write_worker_token(signer, token_file)  # the operator rotates the Secret
        assert (await service.final(job.id)).status == SUCCEEDED
    finally:
        await worker.stop(0)


def test_a_token_near_its_expiry_is_read_again(signer: TokenSigner, tmp_path: Path) -> None:
    path = tmp_path / "worker.token"
    long_lived = write_worker_token(signer, path, ttl_seconds=3600)
    tokens = TokenFile(path)
    tokens.REREAD_SECONDS = 0
    assert tokens.token == long_lived
    write_worker_token(signer, path, ttl_seconds=60)
    assert tokens.token == long_lived  # an hour left: the file is not re-read
    tokens.reload()
    expiring = tokens.token
    assert expiring != long_lived
    fresh = write_worker_token(signer, path, ttl_seconds=3600)
    assert tokens.token == fresh  # a minute left: every read looks at the file again
    path.unlink()
    tokens.reload()  # a missing file keeps the token it had
    assert tokens.token == fresh
