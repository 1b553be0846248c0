"""The worker library: runs job handlers for the jobs service (render and archive use it).

A `Worker` leases jobs of the kinds it has handlers for from `WorkerService`, runs up to
`concurrency` of them at once, heartbeats each in the background, and reports how each ended:

    async def render(ctx: JobContext) -> dict[str, Any]:
        ctx.progress(0.5)
        await ctx.put_output("render.png", png_bytes, "image/png")
        return {"width": 640}

    worker = Worker.from_config(config, {"scene.render": render})
    await worker.start()
    ...
    await worker.stop(grace=10)          # or run_worker(config, handlers) as a process

How it behaves, and why:

- Leasing is one long-poll at a time (`wait`), asking for as many jobs as there are free slots:
  an idle worker costs the service one open call, not a stream of empty ones, and a busy one
  never holds jobs it cannot start (they would sit leased while other workers idle).
- One ticker heartbeats every running job every `heartbeat_seconds`, so a cancellation reaches
  a handler within one period. The reply's `canceled` stops the handler (its task is
  cancelled and `ctx.canceled` set), removes the job's outputs and reports nothing more: the
  job is already CANCELED. A heartbeat answered LEASE_LOST stops the handler too but keeps the
  outputs, because another worker may own the job now and be writing the same keys. A worker
  that cannot reach the service stops a handler once its lease has surely run out, so a job
  never runs twice at once for long.
- Handlers write outputs under the job's deterministic prefix (`output_key(job_id, name)`),
  so the re-run after a crashed worker overwrites instead of duplicating, and delivery can be
  at-least-once.
- A handler's return value is the job's result (`CompleteJob`); `JobFailed` ends the attempt
  with its message (retryable or not, as raised); any other exception is a retryable failure
  whose message names only the exception's type: the owner sees the job, not our internals.
- `stop(grace)` (SIGTERM in `run_worker`) stops leasing at once, lets running jobs finish
  within the grace period, then stops the rest and releases them (`ReleaseJob`: queued again
  at once, the attempt not counted).
- The Bearer token is read from `KILN_WORKER_TOKEN_FILE`, and read again when it nears expiry
  or a call answers UNAUTHENTICATED, so replacing the file rotates it without a restart.
- An unreachable jobs service is retried with capped exponential backoff; nothing crashes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import math
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import jwt
from google.protobuf import duration_pb2, json_format, struct_pb2
from kiln.jobs.v1 import jobs_pb2, jobs_pb2_grpc

from services.runtime import _worker_metrics as metrics
from services.runtime import tracing
from services.runtime._work_stream import WorkStream
from services.runtime.batching import GroupCommit
from services.runtime.blob_keys import output_key, output_prefix
from services.runtime.config import SERVICE_NAMES, ServiceConfig, StorageConfig
from services.runtime.errors import (
    ConfigError,
    InvalidArgument,
    JobCanceled,
    JobFailed,
    LeaseLost,
    MissingField,
    NotFound,
)
from services.runtime.peers import PEER_CHANNEL_OPTIONS
from services.runtime.status import error_info
from services.runtime.storage import BlobStore
from services.runtime.waiting import wait_either

log = logging.getLogger("kiln.worker")

#: A job handler: gets the job's context, answers the job's result (a JSON-like mapping, or
#: None for an empty one).
Handler = Callable[["JobContext"], Awaitable[Mapping[str, Any] | None]]

#: Reconnect backoff of the lease loop, in seconds.
_BACKOFF_MIN = 0.1
_BACKOFF_MAX = 5.0
#: Deadline of one Complete / Fail / Release call; they are retried until the lease runs out.
_REPORT_TIMEOUT = 10.0
#: A Work stream is replaced after this long, so that a worker's leases follow the jobs
#: replicas as they scale (a stream stays on the connection it began on).
STREAM_MAX_SECONDS = 300.0
#: How long stop() waits for stopped handlers to be released before it abandons them.
_RELEASE_TIMEOUT = 10.0
#: Longest error message sent with FailJob; the owner reads it, it is not a log.
_MAX_ERROR_CHARS = 2000
#: Codes after which a report is worth sending again: the call may never have arrived, and
#: every report is guarded by the lease id, so a duplicate cannot do harm.
_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)
# gRPC's default reconnect backoff grows to two minutes; a worker should be back within
# seconds of the jobs service.
# Why the worker stopped a handler; None while nobody has.
_CANCELED = "canceled"
_LEASE_LOST = "lease_lost"
_SHUTDOWN = "shutdown"
#: Outcomes that mark a job's span as failed.
_FAILED_OUTCOMES = frozenset({"failed", "retried", "error", "lease_lost"})


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


class TokenFile:
    """The worker's Bearer token, read from its file.

    The file is the rotation mechanism (a Kubernetes Secret, or the launcher minting a fresh
    token): the token is read again when it is within `REFRESH_BEFORE_SECONDS` of its `exp`,
    and whenever the caller asks after an UNAUTHENTICATED answer. The token is not verified
    here (the worker holds no keys); its expiry is only read.
    """

    REFRESH_BEFORE_SECONDS = 300.0
    #: While the file keeps an expiring token, it is re-read at most this often.
    REREAD_SECONDS = 5.0

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._token = ""
        self._expires_at = 0.0
        self._read_at = -math.inf
        self._metadata: tuple[tuple[str, str], ...] = ()

    @property
    def token(self) -> str:
        self.metadata()
        return self._token

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying the current token."""
        if not self._token or (
            time.time() > self._expires_at - self.REFRESH_BEFORE_SECONDS
            and time.monotonic() - self._read_at >= self.REREAD_SECONDS
        ):
            self.reload()
        return self._metadata

    def reload(self) -> None:
        """Reads the file now; keeps the previous token when the file cannot be read."""
        self._read_at = time.monotonic()
        try:
            token = self.path.read_text().strip()
        except OSError as exc:
            token, problem = "", f"cannot be read: {exc}"
        else:
            problem = "is empty"
        if not token:
            if self._token:
                log.warning(
                    "worker token file %s %s; keeping the current token", self.path, problem
                )
                return
            raise ConfigError(
                f"the worker token file {self.path} {problem} (KILN_WORKER_TOKEN_FILE)"
            )
        if token != self._token:
            self._token = token
            self._expires_at = _expiry(token)
            self._metadata = (("authorization", f"Bearer {token}"),)


def _expiry(token: str) -> float:
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
        return float(claims["exp"])
    except (jwt.PyJWTError, KeyError, TypeError, ValueError):
        # Not a JWT we can read: rely on UNAUTHENTICATED answers to trigger a re-read.
        return math.inf


class JobContext:
    """What a handler gets: the job, its params, progress, cancellation, and its outputs.

    `canceled` is set whenever the worker stops the handler (its owner cancelled the job, the
    lease was lost, or the worker is shutting down), just before the handler's task is
    cancelled; code running in a thread, which task cancellation cannot reach, should poll it.
    """

    def __init__(self, lease: jobs_pb2.Lease, blobs: Callable[[], BlobStore]) -> None:
        self.job: jobs_pb2.Job = lease.job
        self.lease_id: str = lease.lease_id
        #: The W3C trace context the job was created in ("" when it was not traced).
        self.traceparent: str = lease.traceparent
        #: The job's params as plain JSON values (Struct numbers are floats).
        self.params: dict[str, Any] = json_format.MessageToDict(lease.job.params)
        self.canceled = asyncio.Event()
        self._progress = float(lease.job.progress)
        self._outputs: dict[str, jobs_pb2.JobOutput] = {}
        self._blobs = blobs

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def kind(self) -> str:
        return self.job.kind

    @property
    def tenant(self) -> str:
        """The tenant that owns the job; every resource the handler touches belongs to it."""
        return self.job.tenant

    @property
    def attempt(self) -> int:
        """1 on the first run; higher on a retry or after a lost worker."""
        return self.job.attempt

    @property
    def blobs(self) -> BlobStore:
        """The S3 store, for reading inputs; write outputs with `put_output`."""
        return self._blobs()

    def progress(self, fraction: float) -> None:
        """Records progress (0 to 1); the next heartbeat carries it to the job."""
        self._progress = min(1.0, max(0.0, float(fraction)))

    @property
    def reported_progress(self) -> float:
        return self._progress

    def output_key(self, name: str) -> str:
        """The object key output `name` must be stored at (for writers other than put_output;
        record the file with `record_output` afterwards)."""
        return output_key(self.job.id, name)

    async def put_output(
        self,
        name: str,
        data: bytes | bytearray | memoryview | AsyncIterable[bytes],
        content_type: str = "application/octet-stream",
    ) -> jobs_pb2.JobOutput:
        """Stores one output file at its deterministic key and records it for CompleteJob.

        Writing the same name again (in this attempt or a retried one) overwrites it.
        """
        key = output_key(self.job.id, name)
        if isinstance(data, bytes | bytearray | memoryview):
            put = await self._blobs().put_bytes(key, bytes(data), content_type)
        else:
            put = await self._blobs().put_stream(key, data, content_type)
        return self.record_output(name, size=put.size, content_type=content_type)

    def record_output(
        self, name: str, *, size: int, content_type: str = "application/octet-stream"
    ) -> jobs_pb2.JobOutput:
        """Lists a file already written at `output_key(name)` among the job's outputs."""
        output_key(self.job.id, name)  # refuses a name that could not be served
        output = jobs_pb2.JobOutput(name=name, content_type=content_type, size=size)
        self._outputs[name] = output
        return output

    @property
    def outputs(self) -> list[jobs_pb2.JobOutput]:
        return list(self._outputs.values())


@dataclass(eq=False)
class _Running:
    """One leased job in this process."""

    ctx: JobContext
    #: Monotonic time by which the lease has surely ended unless a heartbeat renewed it.
    lease_deadline: float
    runner: asyncio.Task[None] | None = None
    handler: asyncio.Task[Mapping[str, Any] | None] | None = None
    stop_reason: str | None = None
    #: The handler ended and its outcome is being reported: heartbeats and stops are moot.
    reporting: bool = False
    heartbeat_in_flight: bool = False


class _Refused(Exception):
    """The service refused one completion of a CompleteJobs batch."""

    def __init__(self, outcome: str, detail: str | None) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.detail = detail

    @classmethod
    def of(cls, result: jobs_pb2.CompleteJobsResult) -> _Refused:
        reason = result.error_reason
        if reason == JobCanceled.reason:
            return cls(_CANCELED, None)
        if reason in (LeaseLost.reason, NotFound.reason):
            return cls(_LEASE_LOST, None)
        if reason in (InvalidArgument.reason, MissingField.reason):
            return cls("invalid", result.error_message)
        return cls("error", None)


class _LeaseBackoff:
    """A lease loop's retry state: delays doubling to a cap, and one warning per outage (not
    one per retry)."""

    def __init__(self, target: str, stop_requested: asyncio.Event) -> None:
        self._target = target
        self._stop_requested = stop_requested
        self._delay = _BACKOFF_MIN
        self._failing = False

    async def failed(self, code: str) -> None:
        """Counts the failure and waits out the delay (less when the worker is stopping)."""
        metrics.LEASE_ERRORS.labels(code).inc()
        (log.debug if self._failing else log.warning)(
            "cannot lease jobs; retrying",
            extra={"code": code, "retry_in_s": self._delay, "target": self._target},
        )
        self._failing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_requested.wait(), self._delay)
        self._delay = min(self._delay * 2, _BACKOFF_MAX)

    def succeeded(self) -> None:
        if self._failing:
            log.info("leasing again", extra={"target": self._target})
        self._failing, self._delay = False, _BACKOFF_MIN


class Worker:
    """Leases and runs jobs of the registered kinds; see the module docstring."""

    def __init__(
        self,
        target: str,
        token_file: str | Path,
        handlers: Mapping[str, Handler] | None = None,
        *,
        concurrency: int = 4,
        lease_seconds: float = 30.0,
        heartbeat_seconds: float = 5.0,
        storage: StorageConfig | None = None,
        blobs: BlobStore | None = None,
        worker_id: str | None = None,
        poll_seconds: float = 20.0,
        stream: bool = True,
    ) -> None:
        if concurrency < 1:
            raise ConfigError("a worker needs a concurrency of at least 1")
        if lease_seconds <= 0 or heartbeat_seconds <= 0:
            raise ConfigError("lease and heartbeat periods must be positive")
        self.target = target
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.poll_seconds = min(poll_seconds, 60.0)  # the service's ceiling
        self.worker_id = worker_id or f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:6]}"
        self._tokens = TokenFile(token_file)
        self._handlers: dict[str, Handler] = dict(handlers or {})
        self._storage = storage
        self._blob_store = blobs
        self._owns_blobs = False
        # By (job id, lease id): after a lost lease the same job can come back to this worker
        # while its stopped first run is still winding down.
        self._running: dict[tuple[str, str], _Running] = {}
        self._slot_freed = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._stopped = asyncio.Event()
        self._stopping = False
        self._started = False
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._poll: asyncio.Task[Any] | None = None
        #: Lease and complete on one Work stream (False, or a jobs service without Work:
        #: LeaseJobs and CompleteJobs calls).
        self.use_stream = stream
        self._stream: WorkStream | None = None
        self._credit_step = max(1, concurrency // 4)
        self._lease_task: asyncio.Task[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._completions: GroupCommit[jobs_pb2.CompleteJobRequest, jobs_pb2.CompleteJobsResult] = (
            GroupCommit(self._complete_batch, max_batch=500)
        )
        self._lease_duration = _duration(lease_seconds)
        self._poll_wait = _duration(self.poll_seconds)

    @classmethod
    def from_config(
        cls,
        config: ServiceConfig,
        handlers: Mapping[str, Handler] | None = None,
        **overrides: Any,
    ) -> Worker:
        """A worker with the service's jobs target, token file, worker settings and S3."""
        settings: dict[str, Any] = {
            "concurrency": config.worker.concurrency,
            "lease_seconds": config.worker.lease_seconds,
            "heartbeat_seconds": config.worker.heartbeat_seconds,
            "stream": config.worker.stream,
            "storage": config.storage,
        }
        settings.update(overrides)
        return cls(config.jobs_target, config.worker.token_file, handlers, **settings)

    # --- registration ----------------------------------------------------------------------

    def register(self, kind: str, handler: Handler) -> None:
        """Runs `handler` for jobs of `kind`; before start() only."""
        if self._started:
            raise RuntimeError("register handlers before starting the worker")
        self._handlers[kind] = handler

    def handler(self, kind: str) -> Callable[[Handler], Handler]:
        """Decorator form of register()."""

        def decorate(fn: Handler) -> Handler:
            self.register(kind, fn)
            return fn

        return decorate

    @property
    def kinds(self) -> list[str]:
        return sorted(self._handlers)

    @property
    def running_jobs(self) -> list[str]:
        """Ids of the jobs this worker holds now."""
        return [job_id for job_id, _ in self._running]

    # --- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Starts leasing; answers at once (the work happens in background tasks)."""
        if self._started:
            raise RuntimeError("a worker starts once")
        if not self._handlers:
            raise ConfigError("a worker needs at least one handler")
        self._tokens.metadata()  # a missing token file fails here, not in a background task
        self._started = True
        self._channel = grpc.aio.insecure_channel(
            self.target, options=PEER_CHANNEL_OPTIONS, interceptors=tracing.client_interceptors()
        )
        self._stub = jobs_pb2_grpc.WorkerServiceStub(self._channel)
        self._lease_task = asyncio.create_task(self._lease_loop(), name="kiln-worker-lease")
        self._heartbeat_task = asyncio.create_task(
            self._heartbeat_loop(), name="kiln-worker-heartbeat"
        )
        log.info(
            "worker started",
            extra={"worker_id": self.worker_id, "kinds": self.kinds, "target": self.target},
        )

    async def stop(self, grace: float = 0.0) -> None:
        """Stops leasing, lets running jobs finish within `grace` seconds, then stops the rest
        and releases them to the queue. Safe to call more than once."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        self._stop_requested.set()
        self._slot_freed.set()
        try:
            if self._poll is not None:
                self._poll.cancel()
            if self._lease_task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._lease_task
            runners = self._runners()
            if runners and grace > 0:
                await asyncio.wait(runners, timeout=grace)
            for running in list(self._running.values()):
                self._stop_job(running, _SHUTDOWN)
            await self._wait_runners()
            if self._stream is not None:
                # Leases on their way when the stream closes get runners that give them back.
                await self._stream.close(_RELEASE_TIMEOUT)
                await self._wait_runners()
            background = [*self._side_tasks]
            if self._heartbeat_task is not None:
                background.append(self._heartbeat_task)
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self._channel is not None:
                await self._channel.close()
            if self._owns_blobs and self._blob_store is not None:
                await self._blob_store.close()
        finally:
            self._stopped.set()
            log.info("worker stopped", extra={"worker_id": self.worker_id})

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop(0.0)

    async def _wait_runners(self) -> None:
        runners = self._runners()
        if runners:
            _, pending = await asyncio.wait(runners, timeout=_RELEASE_TIMEOUT)
            for task in pending:
                # A handler that ignores cancellation: its lease expires on its own.
                log.error("a job handler did not stop; abandoning it", extra={"task": task})
                task.cancel()

    def _runners(self) -> set[asyncio.Task[None]]:
        return {r.runner for r in self._running.values() if r.runner is not None}

    def _blobs(self) -> BlobStore:
        if self._blob_store is None:
            if self._storage is None:
                raise ConfigError(
                    "this worker has no S3 settings, so handlers cannot store outputs"
                )
            self._blob_store = BlobStore(self._storage)
            self._owns_blobs = True
        return self._blob_store

    # --- calls -----------------------------------------------------------------------------

    async def _call(self, method: Any, request: Any, *, deadline: float) -> Any:
        """One RPC with the worker's token; an UNAUTHENTICATED answer re-reads the token file
        and tries once more (the file may hold a rotated token)."""
        try:
            return await method(request, metadata=self._tokens.metadata(), timeout=deadline)
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise
        self._tokens.reload()
        return await method(request, metadata=self._tokens.metadata(), timeout=deadline)

    # --- leasing ---------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        if self.use_stream and await self._stream_loop():
            return
        await self._unary_lease_loop()

    async def _stream_loop(self) -> bool:
        """Leases on Work streams until the worker stops (True), or answers False at once when
        the jobs service has no Work method (an older release: lease with unary calls)."""
        backoff = _LeaseBackoff(self.target, self._stop_requested)
        start = jobs_pb2.WorkStart(
            kinds=self.kinds, lease_duration=self._lease_duration, worker_id=self.worker_id
        )
        while not self._stopping:
            try:
                stream = await self._open_stream(start)
            except Exception as err:  # whatever it is, the worker must go on leasing
                if isinstance(err, grpc.aio.AioRpcError):
                    if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                        log.info("the jobs service has no Work stream; leasing with unary calls")
                        return False
                    code = err.code().name
                else:
                    log.exception("could not open a Work stream")
                    code = type(err).__name__
                await backoff.failed(code)
                continue
            backoff.succeeded()
            previous, self._stream = self._stream, stream
            if previous is not None:
                self._background(previous.close(_RELEASE_TIMEOUT))
            await self._grant_while_open(stream)
            if self._stopping:
                if stream.usable and stream.outstanding > 0:
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        await stream.grant(-stream.outstanding)
                return True
            if stream.usable:
                continue  # old enough to be replaced: the next one may reach another replica
            await backoff.failed(stream.error.code().name if stream.error is not None else "ENDED")
        return True

    async def _open_stream(self, start: jobs_pb2.WorkStart) -> WorkStream:
        try:
            return await WorkStream.open(
                self._stub, self._tokens.metadata(), start, self._start_job
            )
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise
        self._tokens.reload()
        return await WorkStream.open(self._stub, self._tokens.metadata(), start, self._start_job)

    async def _grant_while_open(self, stream: WorkStream) -> None:
        """Grants the stream credit for every free slot as slots free up, until the worker
        stops, the stream ends, or the stream has lived STREAM_MAX_SECONDS."""
        replace_at = time.monotonic() + STREAM_MAX_SECONDS
        while not self._stopping and stream.usable and time.monotonic() < replace_at:
            free = self.concurrency - len(self._running) - stream.outstanding
            # Credit goes out a few slots at a time while some is left: one message per
            # finished job would cost almost what the LeaseJobs call did.
            if free > 0 and (stream.outstanding == 0 or free >= self._credit_step):
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stream.grant(free)
                continue
            self._slot_freed.clear()
            await wait_either(self._slot_freed, stream.ended, replace_at - time.monotonic())

    def _background(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _unary_lease_loop(self) -> None:
        backoff = _LeaseBackoff(self.target, self._stop_requested)
        kinds = self.kinds
        while not self._stopping:
            free = self.concurrency - len(self._running)
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            request = jobs_pb2.LeaseJobsRequest(
                kinds=kinds,
                max_jobs=min(free, 100),
                lease_duration=self._lease_duration,
                wait=self._poll_wait,
                worker_id=self.worker_id,
            )
            # A task of its own, so stop() can cancel the open poll without cancelling this loop.
            poll = asyncio.ensure_future(
                self._call(self._stub.LeaseJobs, request, deadline=self.poll_seconds + 10.0)
            )
            self._poll = poll
            try:
                await asyncio.wait({poll})
            finally:
                self._poll = None
                if not poll.done():
                    poll.cancel()
            if poll.cancelled():
                continue  # stop() cancelled it; the loop condition ends the loop
            error = poll.exception()
            if error is not None:
                if self._stopping:
                    break
                code = (
                    error.code().name
                    if isinstance(error, grpc.aio.AioRpcError)
                    else type(error).__name__
                )
                await backoff.failed(code)
                continue
            backoff.succeeded()
            received = time.monotonic()
            for lease in poll.result().leases:
                self._start_job(lease, received)

    def _start_job(self, lease: jobs_pb2.Lease, received: float) -> None:
        running = _Running(
            ctx=JobContext(lease, self._blobs),
            lease_deadline=received + self.lease_seconds,
        )
        if self._stopping:
            # Leased as stop() began: give it back without running it.
            running.stop_reason = _SHUTDOWN
        self._running[(lease.job.id, lease.lease_id)] = running
        running.runner = asyncio.create_task(
            self._run_job(running), name=f"kiln-job-{lease.job.id}"
        )

    # --- running ---------------------------------------------------------------------------

    async def _run_job(self, running: _Running) -> None:
        ctx = running.ctx
        kind = ctx.kind
        try:
            if running.stop_reason == _SHUTDOWN:
                metrics.JOBS_FINISHED.labels(kind, await self._release(running)).inc()
                return
            handler = self._handlers.get(kind)
            if handler is None:  # the service gave us a kind we did not ask for
                await self._fail(running, f"no handler for job kind {kind!r}", retryable=False)
                return
            metrics.JOBS_STARTED.labels(kind).inc()
            metrics.JOBS_RUNNING.labels(kind).inc()
            # Started before the handler's task, which inherits it as its current span.
            traced = self._start_span(ctx) if tracing.enabled() else None
            outcome = "error"
            try:
                began = time.perf_counter()
                running.handler = asyncio.ensure_future(handler(ctx))
                try:
                    await asyncio.wait({running.handler})
                finally:
                    if not running.handler.done():  # this runner itself was cancelled
                        running.handler.cancel()
                    metrics.JOBS_RUNNING.labels(kind).dec()
                    metrics.HANDLER_SECONDS.labels(kind).observe(time.perf_counter() - began)
                running.reporting = True
                outcome = await self._settle(running, running.handler)
            finally:
                if traced is not None:
                    tracing.finish(
                        *traced,
                        error=outcome if outcome in _FAILED_OUTCOMES else None,
                        attributes={"kiln.job.outcome": outcome},
                    )
            metrics.JOBS_FINISHED.labels(kind, outcome).inc()
        except Exception:
            log.exception("worker error on a job", extra=self._log_fields(running))
        finally:
            self._running.pop((ctx.job_id, ctx.lease_id), None)
            self._slot_freed.set()

    async def _settle(
        self, running: _Running, handler: asyncio.Task[Mapping[str, Any] | None]
    ) -> str:
        """Reports how the handler ended; answers the outcome for the metrics."""
        reason = running.stop_reason
        if reason == _CANCELED:
            await self._remove_outputs(running)
            return "canceled"
        if reason == _LEASE_LOST:
            return "lease_lost"
        if handler.cancelled():
            if reason == _SHUTDOWN:
                return await self._release(running)
            return await self._fail(running, "internal error (handler cancelled)", retryable=True)
        error = handler.exception()
        if isinstance(error, JobFailed):
            return await self._fail(running, error.message, retryable=error.retryable)
        if error is not None:
            log.error("job handler raised", exc_info=error, extra=self._log_fields(running))
            return await self._fail(
                running, f"internal error ({type(error).__name__})", retryable=True
            )
        try:
            result = struct_pb2.Struct()
            result.update(dict(handler.result() or {}))
        except (TypeError, ValueError, AttributeError) as exc:
            # The same handler would build the same result again: no point retrying.
            log.error(
                "job handler returned a result that is not JSON-like",
                exc_info=exc,
                extra=self._log_fields(running),
            )
            return await self._fail(
                running, "internal error (the handler's result is not a JSON object)", False
            )
        return await self._complete(running, result)

    async def _complete(self, running: _Running, result: struct_pb2.Struct) -> str:
        ctx = running.ctx
        request = jobs_pb2.CompleteJobRequest(
            job_id=ctx.job_id,
            lease_id=ctx.lease_id,
            result=result,
            outputs=ctx.outputs,
            traceparent=tracing.current_traceparent(),
        )
        status, detail = await self._report(running, lambda: self._completions.submit(request))
        if status == "ok":
            return "succeeded"
        if status == _CANCELED:
            await self._remove_outputs(running)
            return "canceled"
        if status == "invalid":
            # A result the service refuses (too large, a bad output) would be refused again;
            # failing the job tells its owner instead of letting the lease run out.
            return await self._fail(running, f"the job's result was refused: {detail}", False)
        return status

    async def _fail(self, running: _Running, message: str, retryable: bool) -> str:
        ctx = running.ctx
        request = jobs_pb2.FailJobRequest(
            job_id=ctx.job_id,
            lease_id=ctx.lease_id,
            error=message[:_MAX_ERROR_CHARS] or "failed",
            retryable=retryable,
        )
        status, reply = await self._report(
            running, lambda: self._call(self._stub.FailJob, request, deadline=_REPORT_TIMEOUT)
        )
        if status == "ok":
            retried = reply.job.status == jobs_pb2.JOB_STATUS_QUEUED
            return "retried" if retried else "failed"
        if status == _CANCELED:
            await self._remove_outputs(running)
            return "canceled"
        return "error" if status == "invalid" else status

    async def _release(self, running: _Running) -> str:
        ctx = running.ctx
        request = jobs_pb2.ReleaseJobRequest(job_id=ctx.job_id, lease_id=ctx.lease_id)
        status, _ = await self._report(
            running, lambda: self._call(self._stub.ReleaseJob, request, deadline=_REPORT_TIMEOUT)
        )
        return "released" if status == "ok" else status

    async def _report(
        self, running: _Running, send: Callable[[], Awaitable[Any]]
    ) -> tuple[str, Any]:
        """Sends one report, again on transient errors while the lease may still hold:
        ("ok", reply), (canceled | lease_lost, None), ("invalid", details) or ("error", None)."""
        delay = 0.05
        while True:
            try:
                return "ok", await send()
            except _Refused as refused:  # one item of a batched report
                return refused.outcome, refused.detail
            except grpc.aio.AioRpcError as err:
                code = err.code()
                if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                    return self._ended_because(err), None
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    return "invalid", err.details()
                if code in _TRANSIENT and time.monotonic() + delay < running.lease_deadline:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                log.warning(
                    "could not report on a job",
                    extra={**self._log_fields(running), "code": code.name},
                )
                return "error", None

    async def _complete_batch(
        self, requests: Sequence[jobs_pb2.CompleteJobRequest]
    ) -> list[jobs_pb2.CompleteJobsResult | BaseException]:
        """Sends the completions gathered while the previous CompleteJobs call was in flight:
        a busy worker pays one RPC (or one message on its Work stream) for many jobs."""
        batch = jobs_pb2.CompleteJobsRequest(completions=requests)
        stream = self._stream
        if stream is not None and stream.usable:
            reply = await asyncio.wait_for(stream.complete(batch), _REPORT_TIMEOUT)
        else:
            reply = await self._call(self._stub.CompleteJobs, batch, deadline=_REPORT_TIMEOUT)
        return [
            result if result.HasField("job") else _Refused.of(result) for result in reply.results
        ]

    @staticmethod
    def _ended_because(err: grpc.aio.AioRpcError) -> str:
        """The lease is over: by cancellation (outputs go) or otherwise (outputs stay)."""
        info = error_info(err)
        return _CANCELED if info is not None and info.reason == JobCanceled.reason else _LEASE_LOST

    async def _remove_outputs(self, running: _Running) -> None:
        try:
            removed = await self._blobs().delete_prefix(output_prefix(running.ctx.job_id))
        except Exception as exc:
            # Retention purges the prefix later; a cancel must not fail on it.
            log.warning(
                "could not remove a cancelled job's outputs",
                extra={**self._log_fields(running), "error": repr(exc)},
            )
        else:
            if removed:
                log.info(
                    "removed a cancelled job's outputs",
                    extra={**self._log_fields(running), "removed": removed},
                )

    def _stop_job(self, running: _Running, reason: str) -> None:
        """Stops a handler (cancelled job, lost lease, shutdown); the runner reports."""
        if running.reporting or running.stop_reason is not None:
            return
        running.stop_reason = reason
        running.ctx.canceled.set()
        if running.handler is not None and not running.handler.done():
            running.handler.cancel()
        log.info("stopping a job", extra={**self._log_fields(running), "reason": reason})

    # --- heartbeats ------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        """Every period, one heartbeat per running job: a cancel reaches any job within a
        period, whenever it started. Each is its own task, so one slow reply never delays the
        others or the next tick."""
        next_tick = time.monotonic() + self.heartbeat_seconds
        while True:
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
            next_tick += self.heartbeat_seconds
            now = time.monotonic()
            if next_tick < now:  # the loop was starved; do not burst to catch up
                next_tick = now + self.heartbeat_seconds
            for running in list(self._running.values()):
                if (
                    running.handler is None
                    or running.handler.done()
                    or running.reporting
                    or running.stop_reason is not None
                    or running.heartbeat_in_flight
                ):
                    continue
                running.heartbeat_in_flight = True
                task = asyncio.create_task(self._heartbeat(running))
                self._side_tasks.add(task)
                task.add_done_callback(self._side_tasks.discard)

    async def _heartbeat(self, running: _Running) -> None:
        ctx = running.ctx
        sent = time.monotonic()
        try:
            reply = await self._call(
                self._stub.HeartbeatJob,
                jobs_pb2.HeartbeatJobRequest(
                    job_id=ctx.job_id,
                    lease_id=ctx.lease_id,
                    progress=ctx.reported_progress,
                    lease_duration=self._lease_duration,
                ),
                deadline=max(self.heartbeat_seconds, 1.0),
            )
        except grpc.aio.AioRpcError as err:
            if err.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                self._stop_job(running, self._ended_because(err))
            elif time.monotonic() >= running.lease_deadline:
                # Unheard for a whole lease: the job is back in the queue by now, and may be
                # running elsewhere.
                self._stop_job(running, _LEASE_LOST)
            else:
                log.debug(
                    "heartbeat failed; retrying next period",
                    extra={**self._log_fields(running), "code": err.code().name},
                )
            return
        finally:
            running.heartbeat_in_flight = False
        if reply.canceled:
            self._stop_job(running, _CANCELED)
        else:
            running.lease_deadline = sent + self.lease_seconds

    def _start_span(self, ctx: JobContext) -> tracing.Traced:
        """The job's CONSUMER span, in the trace of the call that created the job."""
        return tracing.begin(
            f"job {ctx.kind}",
            kind="CONSUMER",
            carrier={"traceparent": ctx.traceparent} if ctx.traceparent else {},
            attributes={
                "kiln.job.id": ctx.job_id,
                "kiln.job.kind": ctx.kind,
                "kiln.job.attempt": ctx.attempt,
                "kiln.tenant": ctx.tenant,
                "kiln.worker.id": self.worker_id,
            },
        )

    @staticmethod
    def _log_fields(running: _Running) -> dict[str, Any]:
        ctx = running.ctx
        return {"job_id": ctx.job_id, "kind": ctx.kind, "attempt": ctx.attempt}


# --- running a worker as a process --------------------------------------------------------


async def serve_worker(
    config: ServiceConfig, handlers: Mapping[str, Handler], **overrides: Any
) -> None:
    """Runs a worker until SIGTERM or SIGINT, then stops it with the configured grace."""
    worker = Worker.from_config(config, handlers, **overrides)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await worker.start()
    await stop.wait()
    log.info("stopping the worker", extra={"grace_seconds": config.shutdown_grace_seconds})
    await worker.stop(config.shutdown_grace_seconds)


def run_worker(
    config: ServiceConfig,
    handlers: Mapping[str, Handler],
    *,
    metrics_port: int | None = None,
    **overrides: Any,
) -> None:
    """Entry point of a worker process: logging, optional /metrics, `serve_worker` on uvloop."""
    import uvloop
    from prometheus_client import start_http_server

    from services.runtime.logs import configure_logging

    configure_logging(f"{config.name}-worker", config.log_level, config.log_format)
    tracing.configure(f"{config.name}-worker", config.tracing)
    if metrics_port is not None and metrics_port >= 0:
        start_http_server(metrics_port, addr=config.host)
    uvloop.run(serve_worker(config, handlers, **overrides))


def load_handlers(spec: str) -> Mapping[str, Handler]:
    """`package.module:NAME`: a mapping kind -> handler, or a callable answering one."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"handlers must be given as module:attribute, got {spec!r}")
    value: Any = getattr(importlib.import_module(module_name), attr)
    if not isinstance(value, Mapping) and callable(value):
        value = value()
    if not isinstance(value, Mapping) or not all(callable(h) for h in value.values()):
        raise ConfigError(f"{spec} is not a mapping of job kind to handler")
    return value


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m services.runtime.worker module:HANDLERS`: one worker process, configured by
    the same KILN_* variables as the service named by --service."""
    from services.runtime.config import load_service_config

    parser = argparse.ArgumentParser(prog="python -m services.runtime.worker")
    parser.add_argument("handlers", help="module:attribute naming a mapping kind -> handler")
    parser.add_argument("--service", default="render", choices=SERVICE_NAMES)
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--metrics-port", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        config = load_service_config(args.service)
        handlers = load_handlers(args.handlers)
    except ConfigError as exc:
        sys.exit(f"kiln worker: {exc.message}")
    overrides: dict[str, Any] = {}
    if args.concurrency is not None:
        overrides["concurrency"] = args.concurrency
    run_worker(config, handlers, metrics_port=args.metrics_port, **overrides)


if __name__ == "__main__":
    # Through the imported module, so handlers that import this module share its classes.
    from services.runtime.worker import main as _main

    _main()
