"""The job surfaces' test rig: a real gateway on a socket in front of the real suite.

Two Basic API clients, each in its own tenant, call the gateway; jobs are created with
JobService.CreateJob over gRPC in those tenants and driven to their outcomes with
WorkerService (a worker token) or CancelJob, as the render and archive workers will.
Outputs are written where the jobs service reads them (`services.runtime.blob_keys`).
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
from google.protobuf import duration_pb2, struct_pb2
from kiln.jobs.v1 import jobs_pb2, jobs_pb2_grpc

from gateway.apis import DEFAULT_APIS, clara
from gateway.app import build_app
from services.runtime.blob_keys import output_key
from services.runtime.config import load_gateway_config
from services.runtime.storage import BlobStore
from tests.conftest import Suite, bearer, start_service
from tests.gateway.conftest import live, suite_gateway_env

#: Keep-alive of the test gateway's Clara event streams (the real one: 4 s).
HEARTBEAT = 0.5


@dataclass(frozen=True)
class Tenant:
    """An API client of the gateway and the gRPC token of its tenant."""

    name: str
    client_id: str
    secret: str
    token: str

    @property
    def basic(self) -> tuple[str, str]:
        return (self.client_id, self.secret)

    @property
    def basic_header(self) -> dict[str, str]:
        raw = base64.b64encode(f"{self.client_id}:{self.secret}".encode()).decode()
        return {"Authorization": f"Basic {raw}"}

    @property
    def bearer_header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Jobs:
    """Creates jobs in a tenant and plays the worker that runs them."""

    channel: grpc.aio.Channel
    worker_token: str
    blobs: BlobStore
    leases: dict[str, str] = field(default_factory=dict)

    @property
    def client(self) -> jobs_pb2_grpc.JobServiceStub:
        return jobs_pb2_grpc.JobServiceStub(self.channel)

    @property
    def worker(self) -> jobs_pb2_grpc.WorkerServiceStub:
        return jobs_pb2_grpc.WorkerServiceStub(self.channel)

    def _worker_md(self) -> Any:
        return bearer(self.worker_token)

    async def create(
        self, tenant: Tenant, kind: str, params: dict[str, Any] | None = None
    ) -> jobs_pb2.Job:
        job = jobs_pb2.Job(kind=kind)
        if params is not None:
            struct = struct_pb2.Struct()
            struct.update(params)
            job.params.CopyFrom(struct)
        reply = await self.client.CreateJob(
            jobs_pb2.CreateJobRequest(job=job), metadata=bearer(tenant.token)
        )
        return reply.job

    async def get(self, tenant: Tenant, job_id: str) -> jobs_pb2.Job:
        reply = await self.client.GetJob(
            jobs_pb2.GetJobRequest(job_id=job_id), metadata=bearer(tenant.token)
        )
        return reply.job

    async def cancel(self, tenant: Tenant, job_id: str) -> jobs_pb2.Job:
        reply = await self.client.CancelJob(
            jobs_pb2.CancelJobRequest(job_id=job_id), metadata=bearer(tenant.token)
        )
        return reply.job

    async def lease(self, job: jobs_pb2.Job) -> str:
        """Leases `job` (other jobs leased on the way go back to the queue at once)."""
        for _ in range(50):
            reply = await self.worker.LeaseJobs(
                jobs_pb2.LeaseJobsRequest(
                    kinds=[job.kind],
                    max_jobs=100,
                    lease_duration=duration_pb2.Duration(seconds=60),
                    wait=duration_pb2.Duration(nanos=200_000_000),
                    worker_id="surface-tests",
                ),
                metadata=self._worker_md(),
            )
            found = ""
            for lease in reply.leases:
                if lease.job.id == job.id:
                    found = lease.lease_id
                else:
                    await self.worker.ReleaseJob(
                        jobs_pb2.ReleaseJobRequest(job_id=lease.job.id, lease_id=lease.lease_id),
                        metadata=self._worker_md(),
                    )
            if found:
                self.leases[job.id] = found
                return found
        raise AssertionError(f"job {job.id} was never leased")

    async def progress(self, job: jobs_pb2.Job, value: float) -> bool:
        reply = await self.worker.HeartbeatJob(
            jobs_pb2.HeartbeatJobRequest(
                job_id=job.id, lease_id=self.leases[job.id], progress=value
            ),
            metadata=self._worker_md(),
        )
        return bool(reply.canceled)

    async def complete(
        self,
        job: jobs_pb2.Job,
        result: dict[str, Any] | None = None,
        outputs: Sequence[tuple[str, str, bytes]] = (),
    ) -> jobs_pb2.Job:
        """Writes each (name, content type, bytes) output, then completes the job."""
        described = []
        for name, content_type, data in outputs:
            await self.blobs.put_bytes(output_key(job.id, name), data, content_type=content_type)
            described.append(
                jobs_pb2.JobOutput(name=name, content_type=content_type, size=len(data))
            )
        struct = struct_pb2.Struct()
        struct.update(result or {})
        reply = await self.worker.CompleteJob(
            jobs_pb2.CompleteJobRequest(
                job_id=job.id, lease_id=self.leases[job.id], result=struct, outputs=described
            ),
            metadata=self._worker_md(),
        )
        return reply.job

    async def fail(self, job: jobs_pb2.Job, error: str) -> jobs_pb2.Job:
        reply = await self.worker.FailJob(
            jobs_pb2.FailJobRequest(
                job_id=job.id, lease_id=self.leases[job.id], error=error, retryable=False
            ),
            metadata=self._worker_md(),
        )
        return reply.job

    async def run(
        self,
        job: jobs_pb2.Job,
        result: dict[str, Any] | None = None,
        outputs: Sequence[tuple[str, str, bytes]] = (),
    ) -> jobs_pb2.Job:
        """Leases and completes `job` at once."""
        await self.lease(job)
        return await self.complete(job, result, outputs)


@dataclass
class Surfaces:
    """The running gateway, its two tenants, and the jobs driver."""

    http: httpx.AsyncClient
    a: Tenant
    b: Tenant
    jobs: Jobs

    @property
    def base_url(self) -> str:
        return str(self.http.base_url).rstrip("/")


async def start_surfaces(
    suite: Suite,
    data: Path,
    token_for: Callable[..., str],
    worker_token: str,
) -> AsyncIterator[Surfaces]:
    # A jobs service of their own: the suite's render and archive workers would otherwise
    # lease the test's scene, image and archive jobs before the test's hand-driven worker.
    private_jobs = await start_service(
        "jobs", {**suite.env, "KILN_JOBS_DATABASE_URL": f"sqlite+aiosqlite:///{data / 'jobs.db'}"}
    )
    jobs_target = f"127.0.0.1:{private_jobs.port}"
    env = suite_gateway_env(suite.target_env(), data, KILN_JOBS_TARGET=jobs_target)
    apis = tuple(clara.api(HEARTBEAT) if api is clara.API else api for api in DEFAULT_APIS)
    app = build_app(load_gateway_config(env), apis=apis)
    suffix = uuid.uuid4().hex[:8]
    async with live(app) as http:
        tenants = []
        for label in ("a", "b"):
            name = f"jobs-{label}-{suffix}"
            client_id, secret = f"user-{label}-{suffix}", f"c3be3060-{uuid.uuid4()}"
            await app.state.gateway.clients.ensure(client_id, secret, tenant=name, scopes=["*"])
            tenants.append(Tenant(name, client_id, secret, token_for(name)))
        blobs = BlobStore(suite.config("jobs").storage)
        async with grpc.aio.insecure_channel(jobs_target) as channel:
            jobs = Jobs(channel, worker_token, blobs)
            try:
                yield Surfaces(http=http, a=tenants[0], b=tenants[1], jobs=jobs)
            finally:
                await blobs.close()
                await private_jobs.stop(1)


async def eventually(check: Callable[[], Any], within: float = 10.0) -> None:
    """Retries an async check until it stops raising AssertionError."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            await check()
            return
        except AssertionError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)
