"""The worker's side of `WorkerService.Work`: credit and completions out, leases and answers in.

One call carries what a worker on unary calls sends as a `LeaseJobs` and a `CompleteJobs` every
job or two. The worker grants credit as its slots free up; the service sends leases within it.
Each `complete` is answered in order, so the answers are matched to their requests by position.
When the call ends, with an error or not, every completion still waiting fails with the call's
error (UNAVAILABLE when it just ended), which the worker's report retry treats as transient.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import Any

import grpc
from kiln.jobs.v1 import jobs_pb2

OnLease = Callable[[jobs_pb2.Lease, float], None]
#: Seconds the service has to accept a new stream (its headers) before the worker tries again.
OPEN_TIMEOUT = 10.0


def _ended(details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details
    )


class WorkStream:
    """One open Work call. Writes are serialised (grpc.aio allows one at a time)."""

    def __init__(self, call: Any, on_lease: OnLease) -> None:
        self._call = call
        self._on_lease = on_lease
        self._writing = asyncio.Lock()
        self._answers: collections.deque[asyncio.Future[jobs_pb2.CompleteJobsResponse]] = (
            collections.deque()
        )
        self._reader: asyncio.Task[None] | None = None
        #: Credit granted and not yet used by a lease.
        self.outstanding = 0
        #: Set when the call has ended; `error` says how (None: the service ended it cleanly).
        self.ended = asyncio.Event()
        self.error: grpc.aio.AioRpcError | None = None

    @classmethod
    async def open(
        cls, stub: Any, metadata: Any, start: jobs_pb2.WorkStart, on_lease: OnLease
    ) -> WorkStream:
        """Opens the call and sends its start; raises the call's error if the service refuses
        it (UNIMPLEMENTED from a jobs service without Work, UNAUTHENTICATED, …)."""
        stream = cls(stub.Work(metadata=metadata), on_lease)
        call = stream._call
        await stream._write(jobs_pb2.WorkRequest(start=start))
        # The service sends its headers once it has accepted the start; a refusal arrives
        # instead of them, as the call's status. A service that never answers is given up on.
        try:
            await asyncio.wait_for(call.initial_metadata(), OPEN_TIMEOUT)
        except TimeoutError:
            call.cancel()
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                details=f"the jobs service did not accept the Work stream in {OPEN_TIMEOUT} s",
            ) from None
        if call.done():
            raise await stream._status()
        stream._reader = asyncio.create_task(stream._read(), name="kiln-worker-work-stream")
        return stream

    @property
    def usable(self) -> bool:
        return not self.ended.is_set()

    async def grant(self, credit: int) -> None:
        """Gives (or, negative, takes back) credit for leases."""
        self.outstanding += credit
        await self._write(jobs_pb2.WorkRequest(credit=credit))

    async def complete(
        self, request: jobs_pb2.CompleteJobsRequest
    ) -> jobs_pb2.CompleteJobsResponse:
        """Sends completions and waits for their answer."""
        if self.ended.is_set():
            raise self.error or _ended("the Work stream has ended")
        answer: asyncio.Future[jobs_pb2.CompleteJobsResponse] = (
            asyncio.get_running_loop().create_future()
        )
        self._answers.append(answer)
        try:
            await self._write(jobs_pb2.WorkRequest(complete=request))
        except BaseException:
            # Not sent, so never answered: its place in the order goes with it.
            self._answers.remove(answer)
            raise
        return await answer

    async def close(self, wait: float) -> None:
        """Half-closes (no more leases), then waits up to `wait` seconds for the service to end
        the call, reading the answers and leases still on their way."""
        if not self.ended.is_set():
            try:
                if self.outstanding > 0:
                    await self.grant(-self.outstanding)
                async with self._writing:
                    await self._call.done_writing()
            except (grpc.aio.AioRpcError, grpc.aio.UsageError):
                pass
            try:
                await asyncio.wait_for(self.ended.wait(), wait)
            except TimeoutError:
                self._call.cancel()
        if self._reader is not None:
            await asyncio.wait({self._reader})

    def cancel(self) -> None:
        self._call.cancel()

    async def _write(self, message: jobs_pb2.WorkRequest) -> None:
        async with self._writing:
            try:
                await self._call.write(message)
            except (grpc.aio.UsageError, asyncio.InvalidStateError):
                # A call that has ended: a plain call raises its status, one through client
                # interceptors (tracing) says only that it has finished. Raise its status.
                if self._call.done():
                    raise await self._status() from None
                raise self.error or _ended("the Work stream has ended") from None

    async def _read(self) -> None:
        try:
            while True:
                message = await self._call.read()
                if message is grpc.aio.EOF:
                    break
                if message.WhichOneof("message") == "leased":
                    received = time.monotonic()
                    leases = message.leased.leases
                    self.outstanding = max(0, self.outstanding - len(leases))
                    for lease in leases:
                        self._on_lease(lease, received)
                elif self._answers:
                    answer = self._answers.popleft()
                    if not answer.done():  # its caller may have stopped waiting (a timeout)
                        answer.set_result(message.completed)
        except grpc.aio.AioRpcError as err:
            self.error = err
        except asyncio.CancelledError:
            self.error = _ended("the Work stream was cancelled")
        finally:
            if self.error is None and self._call.done():
                status = await self._status()
                if status.code() != grpc.StatusCode.OK:
                    self.error = status
            self.ended.set()
            # The stream failed, not the completions: whatever the stream's status, they are
            # sent again (UNAVAILABLE is what the report retry treats as transient). A repeated
            # completion of a job that did finish changes nothing.
            failure = _ended(
                f"the Work stream ended ({self.error.code().name})"
                if self.error
                else "the Work stream ended"
            )
            while self._answers:
                answer = self._answers.popleft()
                if not answer.done():
                    answer.set_exception(failure)

    async def _status(self) -> grpc.aio.AioRpcError:
        """The ended call's status as the error a unary call would have raised."""
        call = self._call
        return grpc.aio.AioRpcError(
            await call.code(),
            await call.initial_metadata() or grpc.aio.Metadata(),
            await call.trailing_metadata() or grpc.aio.Metadata(),
            details=await call.details(),
        )
