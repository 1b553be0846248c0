"""JobService (clients, scoped by tenant) and WorkerService (workers, every tenant)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any, cast

import grpc
from google.protobuf import json_format, struct_pb2
from kiln.jobs.v1 import jobs_pb2, jobs_pb2_grpc

from services.jobs.jobs import JobQueue, JobSpec
from services.jobs.store import JobRecord
from services.jobs.work_stream import WorkSession
from services.runtime.context import current_principal, current_tenant
from services.runtime.errors import InvalidArgument, MissingField, PermissionDenied
from services.runtime.tracing import current_traceparent

_CHUNK = 256 * 1024


def _timestamp(target: Any, seconds: float | None) -> None:
    if seconds is not None:
        whole = int(seconds)
        target.seconds = whole
        target.nanos = int((seconds - whole) * 1e9)


def _struct(value: dict[str, Any] | None) -> struct_pb2.Struct | None:
    if value is None:
        return None
    message = struct_pb2.Struct()
    message.update(value)
    return message


def to_proto(record: JobRecord) -> jobs_pb2.Job:
    job = jobs_pb2.Job(
        id=record.id,
        seq_id=record.seq,
        kind=record.kind,
        status=cast(jobs_pb2.JobStatus, record.status),
        progress=record.progress,
        params=_struct(record.params),
        result=_struct(record.result),
        error=record.error,
        request_id=record.request_id,
        attempt=record.attempt,
        max_attempts=record.max_attempts,
        tenant=record.tenant,
        outputs=[
            jobs_pb2.JobOutput(
                name=str(o.get("name", "")),
                content_type=str(o.get("content_type", "")),
                size=int(o.get("size", 0)),
            )
            for o in record.outputs
        ],
    )
    _timestamp(job.create_time, record.created_at)
    _timestamp(job.update_time, record.updated_at)
    _timestamp(job.end_time, record.ended_at)
    for transition in record.history:
        entry = job.history.add(
            status=cast(jobs_pb2.JobStatus, transition.status),
            reason=transition.reason,
        )
        _timestamp(entry.time, transition.at)
    return job


def _seconds(duration: Any) -> float:
    return float(duration.seconds) + float(duration.nanos) / 1e9


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, queue: JobQueue) -> None:
        self._queue = queue

    async def CreateJob(
        self, request: jobs_pb2.CreateJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.CreateJobResponse:
        if not request.HasField("job"):
            raise MissingField("job is required", field="job")
        record = await self._queue.create(
            current_tenant(),
            kind=request.job.kind,
            params=json_format.MessageToDict(request.job.params),
            request_id=request.request_id,
            max_attempts=request.job.max_attempts,
            traceparent=current_traceparent(),
        )
        return jobs_pb2.CreateJobResponse(job=to_proto(record))

    async def BatchCreateJobs(
        self, request: jobs_pb2.BatchCreateJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.BatchCreateJobsResponse:
        specs: list[JobSpec] = []
        for index, item in enumerate(request.requests):
            if not item.HasField("job"):
                raise MissingField(f"requests[{index}].job is required", field="requests.job")
            specs.append(
                (
                    item.job.kind,
                    json_format.MessageToDict(item.job.params),
                    item.request_id,
                    item.job.max_attempts,
                )
            )
        records = await self._queue.create_many(
            current_tenant(), specs, traceparent=current_traceparent()
        )
        return jobs_pb2.BatchCreateJobsResponse(jobs=[to_proto(r) for r in records])

    async def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.GetJobResponse:
        record = await self._queue.get(current_tenant(), job_id=request.job_id, seq=request.seq_id)
        return jobs_pb2.GetJobResponse(job=to_proto(record))

    async def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListJobsResponse:
        records, token = await self._queue.list_jobs(
            current_tenant(),
            kind=request.kind,
            status=int(request.status),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return jobs_pb2.ListJobsResponse(jobs=[to_proto(r) for r in records], next_page_token=token)

    async def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.CancelJobResponse:
        if not request.job_id:
            raise MissingField("job_id is required", field="job_id")
        record = await self._queue.cancel(current_tenant(), request.job_id)
        return jobs_pb2.CancelJobResponse(job=to_proto(record))

    async def WatchJob(
        self, request: jobs_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.WatchJobResponse]:
        if not request.job_id:
            raise MissingField("job_id is required", field="job_id")
        async for record in self._queue.watch(current_tenant(), request.job_id):
            yield jobs_pb2.WatchJobResponse(job=to_proto(record))

    async def ReadJobOutput(
        self, request: jobs_pb2.ReadJobOutputRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.ReadJobOutputResponse]:
        if not request.job_id:
            raise MissingField("job_id is required", field="job_id")
        output, stream = await self._queue.open_output(
            current_tenant(), request.job_id, request.name
        )
        yield jobs_pb2.ReadJobOutputResponse(
            output=jobs_pb2.JobOutput(
                name=str(output.get("name", "")),
                content_type=str(output.get("content_type", "")),
                size=int(output.get("size", 0)),
            )
        )
        async for chunk in stream:
            for start in range(0, len(chunk), _CHUNK):
                yield jobs_pb2.ReadJobOutputResponse(data=chunk[start : start + _CHUNK])


def _leases(records: list[JobRecord], lease_id: str) -> jobs_pb2.LeaseJobsResponse:
    response = jobs_pb2.LeaseJobsResponse()
    for record in records:
        lease = response.leases.add(
            job=to_proto(record), lease_id=lease_id, traceparent=record.traceparent
        )
        _timestamp(lease.expire_time, record.lease_expires_at)
    return response


def _outputs(outputs: Iterable[jobs_pb2.JobOutput]) -> list[dict[str, Any]]:
    return [{"name": o.name, "content_type": o.content_type, "size": o.size} for o in outputs]


def _require_worker() -> None:
    if not current_principal().is_worker:
        raise PermissionDenied("WorkerService needs a worker token (scope jobs.worker)")


class WorkerServicer(jobs_pb2_grpc.WorkerServiceServicer):
    def __init__(self, queue: JobQueue) -> None:
        self._queue = queue

    async def LeaseJobs(
        self, request: jobs_pb2.LeaseJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.LeaseJobsResponse:
        _require_worker()
        records, lease_id = await self._queue.lease(
            kinds=list(request.kinds),
            max_jobs=request.max_jobs,
            lease_seconds=_seconds(request.lease_duration),
            wait_seconds=_seconds(request.wait),
            worker=request.worker_id or current_principal().client_id,
        )
        return _leases(records, lease_id)

    async def Work(
        self,
        request_iterator: AsyncIterator[jobs_pb2.WorkRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        _require_worker()
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None or first.WhichOneof("message") != "start":
            raise InvalidArgument("a Work stream begins with its start message", field="start")
        if not any(first.start.kinds):
            raise MissingField("kinds must name at least one job kind", field="kinds")
        session = WorkSession(
            self._queue,
            first.start,
            worker=first.start.worker_id or current_principal().client_id,
            lease_seconds=_seconds(first.start.lease_duration),
            complete=self._complete_many,
            answer=_leases,
        )
        # The headers tell the worker its stream was accepted (its open() waits for them).
        await context.send_initial_metadata(())
        await session.run(requests, context)

    async def HeartbeatJob(
        self, request: jobs_pb2.HeartbeatJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.HeartbeatJobResponse:
        _require_worker()
        canceled, expires = await self._queue.heartbeat(
            request.job_id,
            request.lease_id,
            progress=request.progress,
            lease_seconds=_seconds(request.lease_duration),
        )
        response = jobs_pb2.HeartbeatJobResponse(canceled=canceled)
        _timestamp(response.expire_time, expires)
        return response

    async def CompleteJob(
        self, request: jobs_pb2.CompleteJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.CompleteJobResponse:
        _require_worker()
        record = await self._queue.complete(
            request.job_id,
            request.lease_id,
            result=json_format.MessageToDict(request.result),
            outputs=_outputs(request.outputs),
        )
        return jobs_pb2.CompleteJobResponse(job=to_proto(record))

    async def CompleteJobs(
        self, request: jobs_pb2.CompleteJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.CompleteJobsResponse:
        _require_worker()
        return await self._complete_many(request)

    async def _complete_many(
        self, request: jobs_pb2.CompleteJobsRequest
    ) -> jobs_pb2.CompleteJobsResponse:
        outcomes = await self._queue.complete_many(
            [
                (c.job_id, c.lease_id, json_format.MessageToDict(c.result), _outputs(c.outputs))
                for c in request.completions
            ]
        )
        response = jobs_pb2.CompleteJobsResponse()
        for outcome in outcomes:
            if isinstance(outcome, JobRecord):
                response.results.add(job=to_proto(outcome))
            else:
                response.results.add(error_reason=outcome.reason, error_message=outcome.message)
        return response

    async def FailJob(
        self, request: jobs_pb2.FailJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.FailJobResponse:
        _require_worker()
        record = await self._queue.fail(
            request.job_id, request.lease_id, error=request.error, retryable=request.retryable
        )
        return jobs_pb2.FailJobResponse(job=to_proto(record))

    async def ReleaseJob(
        self, request: jobs_pb2.ReleaseJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ReleaseJobResponse:
        _require_worker()
        record = await self._queue.release(request.job_id, request.lease_id)
        return jobs_pb2.ReleaseJobResponse(job=to_proto(record))
