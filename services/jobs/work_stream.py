"""The service's side of `WorkerService.Work`: one worker's leases and completions on a stream.

A worker on unary calls pays one `LeaseJobs` and one `CompleteJobs` call for every job or two:
each a new call through every interceptor, its metadata and its token. On a Work stream it
grants credit instead, leases arrive as jobs come due, and completions are messages. Here a
lease loop claims while the worker has credit (waiting as `LeaseJobs` would, for as long as it
takes), completions run as they arrive (so the group commit joins them with everyone else's)
and one writer sends the answers: leases as they are claimed, each completion's answer in the
order the completions came.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from kiln.jobs.v1 import jobs_pb2
from prometheus_client import Counter

from services.jobs.jobs import MAX_LEASE_BATCH, MAX_WAIT_SECONDS, JobQueue
from services.jobs.store import JobRecord
from services.runtime import tracing
from services.runtime.errors import InvalidArgument
from services.runtime.waiting import wait_either

WORK_MESSAGES = Counter(
    "kiln_jobs_work_stream_messages_total",
    "Messages on WorkerService.Work streams, by type (credit, complete, leased, completed).",
    ["type"],
)

#: The name of a completion's span, as the unary call's would be named.
COMPLETE_SPAN = "kiln.jobs.v1.WorkerService/CompleteJobs"

Complete = Callable[[jobs_pb2.CompleteJobsRequest], Awaitable[jobs_pb2.CompleteJobsResponse]]
LeaseAnswer = Callable[[list[JobRecord], str], jobs_pb2.LeaseJobsResponse]


class WorkSession:
    """One Work stream after its start message."""

    def __init__(
        self,
        queue: JobQueue,
        start: jobs_pb2.WorkStart,
        *,
        worker: str,
        lease_seconds: float,
        complete: Complete,
        answer: LeaseAnswer,
    ) -> None:
        self._queue = queue
        self._kinds = list(start.kinds)
        self._worker = worker
        self._lease_seconds = lease_seconds
        self._complete = complete
        self._answer = answer
        self._credit = 0
        self._more = asyncio.Event()
        # Set when the worker has half-closed (or its stream failed): no more leases.
        self._closed = asyncio.Event()
        # In the order to send: each answer's future (leases are done at once).
        self._out: asyncio.Queue[asyncio.Future[jobs_pb2.WorkResponse] | None] = asyncio.Queue()

    async def run(
        self,
        requests: AsyncIterator[jobs_pb2.WorkRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        ending = asyncio.create_task(self._read_then_end(requests))
        try:
            while (answer := await self._out.get()) is not None:
                await context.write(await answer)
            await ending  # raises what broke the request stream, if anything did
        finally:
            ending.cancel()
            while not self._out.empty():
                left = self._out.get_nowait()
                if left is not None:
                    left.cancel()

    async def _read_then_end(self, requests: AsyncIterator[jobs_pb2.WorkRequest]) -> None:
        leasing = asyncio.create_task(self._lease())
        try:
            await self._read(requests)
        except BaseException:
            # A broken stream or a service shutting down: nothing more goes out.
            self._closed.set()
            leasing.cancel()
            self._out.put_nowait(None)
            raise
        self._closed.set()
        try:
            # The worker half-closed: a claim under way finishes and its leases go out before
            # the stream ends (the worker reads to the end and gives back what it no longer
            # wants).
            await leasing
        finally:
            self._out.put_nowait(None)

    async def _read(self, requests: AsyncIterator[jobs_pb2.WorkRequest]) -> None:
        async for message in requests:
            which = message.WhichOneof("message")
            if which == "credit":
                WORK_MESSAGES.labels("credit").inc()
                self._credit = max(0, self._credit + message.credit)
                self._more.set()
            elif which == "complete":
                WORK_MESSAGES.labels("complete").inc()
                self._out.put_nowait(asyncio.ensure_future(self._completed(message.complete)))
            else:
                raise InvalidArgument(
                    "after its start, a Work stream carries only credit and complete messages",
                    field="message",
                )

    async def _completed(self, request: jobs_pb2.CompleteJobsRequest) -> jobs_pb2.WorkResponse:
        # With tracing on, one span per completion in its own job's trace: the stream's one
        # call carries completions of many traces.
        spans = (
            [
                tracing.start_linked(
                    COMPLETE_SPAN,
                    kind="SERVER",
                    traceparent=item.traceparent,
                    attributes={"kiln.job.id": item.job_id},
                )
                for item in request.completions
            ]
            if tracing.enabled()
            else []
        )
        try:
            completed = await self._complete(request)
        except BaseException as exc:
            for span in spans:
                if span is not None:
                    tracing.set_error(span, type(exc).__name__)
                    span.end()
            raise
        for span, result in zip(spans, completed.results, strict=False):
            if span is not None:
                if not result.HasField("job"):
                    tracing.set_error(span, result.error_reason or "refused")
                span.end()
        WORK_MESSAGES.labels("completed").inc()
        return jobs_pb2.WorkResponse(completed=completed)

    async def _lease(self) -> None:
        try:
            await self._lease_while_open()
        except Exception as exc:
            # The database failed under a claim, say: end the stream with the error, so the
            # worker opens another (with backoff) instead of waiting on one that leases no more.
            failed: asyncio.Future[jobs_pb2.WorkResponse] = (
                asyncio.get_running_loop().create_future()
            )
            failed.set_exception(exc)
            self._out.put_nowait(failed)

    async def _lease_while_open(self) -> None:
        while not self._closed.is_set():
            if self._credit <= 0:
                self._more.clear()
                await wait_either(self._more, self._closed)
                continue
            records, lease_id = await self._queue.lease(
                kinds=self._kinds,
                max_jobs=min(self._credit, MAX_LEASE_BATCH),
                lease_seconds=self._lease_seconds,
                wait_seconds=MAX_WAIT_SECONDS,
                worker=self._worker,
                stop=self._closed,
            )
            if records:
                self._credit -= len(records)
                answer: asyncio.Future[jobs_pb2.WorkResponse] = (
                    asyncio.get_running_loop().create_future()
                )
                answer.set_result(jobs_pb2.WorkResponse(leased=self._answer(records, lease_id)))
                self._out.put_nowait(answer)
                WORK_MESSAGES.labels("leased").inc()
