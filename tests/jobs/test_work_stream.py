"""WorkerService.Work over real gRPC: credit bounds the leases, completions are answered in
order, bad streams are refused, a half-closed stream ends; and the worker library on both
protocols, including against a jobs service from before Work (a named fake: a proxy that
forwards only the unary WorkerService methods to the real service)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import pytest
from kiln.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from prometheus_client import REGISTRY

from services.jobs.jobs import JobQueue
from services.jobs.work_stream import WorkSession
from services.runtime._work_stream import WorkStream
from tests.conftest import bearer
from tests.jobs.test_worker import SUCCEEDED, JobsUnderTest, module_jobs_service, statuses


@pytest.fixture(scope="module")
async def service(request: pytest.FixtureRequest) -> AsyncIterator[JobsUnderTest]:
    async with module_jobs_service(request, "tenant-work") as running:
        yield running


@pytest.fixture
def kind() -> str:
    return f"w{uuid.uuid4().hex[:10]}.echo"


@pytest.fixture
async def workers(service: JobsUnderTest) -> AsyncIterator[jobs_pb2_grpc.WorkerServiceStub]:
    async with grpc.aio.insecure_channel(service.target) as channel:
        yield jobs_pb2_grpc.WorkerServiceStub(channel)


def worker_metadata(service: JobsUnderTest) -> tuple[tuple[str, str], ...]:
    return bearer(service.token_file.read_text().strip())


class Work:
    """One Work call, read one message at a time; a read that timed out stays pending and
    the next read takes its message (grpc.aio allows one read at a time)."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self._reading: asyncio.Future[Any] | None = None

    async def write(self, message: jobs_pb2.WorkRequest) -> None:
        await self.call.write(message)

    async def read(self, within: float = 5.0) -> Any:
        if self._reading is None:
            self._reading = asyncio.ensure_future(self.call.read())
        done, _ = await asyncio.wait({self._reading}, timeout=within)
        if not done:
            raise TimeoutError
        message, self._reading = self._reading.result(), None
        return message

    async def nothing_arrives(self, seconds: float = 0.3) -> None:
        with pytest.raises(TimeoutError):
            await self.read(seconds)

    async def leases(self, count: int) -> list[jobs_pb2.Lease]:
        found: list[jobs_pb2.Lease] = []
        while len(found) < count:
            message = await self.read()
            assert message is not grpc.aio.EOF
            assert message.WhichOneof("message") == "leased"
            found.extend(message.leased.leases)
        assert len(found) == count
        return found


async def open_work(
    workers: jobs_pb2_grpc.WorkerServiceStub, service: JobsUnderTest, kind: str
) -> Work:
    call = workers.Work(metadata=worker_metadata(service))
    await call.write(jobs_pb2.WorkRequest(start=jobs_pb2.WorkStart(kinds=[kind], worker_id="t")))
    await asyncio.wait_for(call.initial_metadata(), 5)
    return Work(call)


def complete(lease: jobs_pb2.Lease, n: int) -> jobs_pb2.CompleteJobRequest:
    request = jobs_pb2.CompleteJobRequest(job_id=lease.job.id, lease_id=lease.lease_id)
    request.result.update({"n": n})
    return request


async def test_leases_never_exceed_the_credit_and_follow_each_grant(
    service: JobsUnderTest, workers: jobs_pb2_grpc.WorkerServiceStub, kind: str
) -> None:
    created = [await service.create(kind, {"i": i}) for i in range(5)]
    work = await open_work(workers, service, kind)
    await work.nothing_arrives()  # no credit, no lease
    await work.write(jobs_pb2.WorkRequest(credit=2))
    first = await work.leases(2)
    assert [lease.job.id for lease in first] == [job.id for job in created[:2]]  # oldest first
    await work.nothing_arrives()
    await work.write(jobs_pb2.WorkRequest(credit=3))
    rest = await work.leases(3)
    assert sorted(lease.job.id for lease in rest) == sorted(job.id for job in created[2:])
    work.call.cancel()


async def test_a_job_created_while_credit_waits_is_pushed_without_a_new_request(
    service: JobsUnderTest, workers: jobs_pb2_grpc.WorkerServiceStub, kind: str
) -> None:
    work = await open_work(workers, service, kind)
    await work.write(jobs_pb2.WorkRequest(credit=1))
    await work.nothing_arrives()
    job = await service.create(kind)
    [lease] = await work.leases(1)
    assert lease.job.id == job.id and lease.lease_id
    assert (await service.get(job.id)).status == jobs_pb2.JOB_STATUS_RUNNING
    work.call.cancel()


async def test_completions_are_answered_in_the_order_sent(
    service: JobsUnderTest, workers: jobs_pb2_grpc.WorkerServiceStub, kind: str
) -> None:
    jobs = [await service.create(kind) for _ in range(3)]
    work = await open_work(workers, service, kind)
    await work.write(jobs_pb2.WorkRequest(credit=3))
    held = {lease.job.id: lease for lease in await work.leases(3)}
    first, second, third = (held[job.id] for job in jobs)
    stale = jobs_pb2.CompleteJobRequest(job_id=first.job.id, lease_id="lease_stale")
    await work.write(
        jobs_pb2.WorkRequest(
            complete=jobs_pb2.CompleteJobsRequest(completions=[complete(second, 2)])
        )
    )
    await work.write(
        jobs_pb2.WorkRequest(
            complete=jobs_pb2.CompleteJobsRequest(completions=[stale, complete(first, 1)])
        )
    )
    await work.write(
        jobs_pb2.WorkRequest(
            complete=jobs_pb2.CompleteJobsRequest(completions=[complete(third, 3)])
        )
    )
    answers = [await work.read() for _ in range(3)]

    assert [a.WhichOneof("message") for a in answers] == ["completed"] * 3
    assert [r.job.id for r in answers[0].completed.results] == [second.job.id]
    refused, done = answers[1].completed.results
    assert not refused.HasField("job") and refused.error_reason  # only its item fails
    assert done.job.id == first.job.id
    assert [r.job.id for r in answers[2].completed.results] == [third.job.id]
    for job in jobs:
        final = await service.get(job.id)
        assert final.status == SUCCEEDED and statuses(final)[-1] == SUCCEEDED
    work.call.cancel()


async def test_a_half_closed_stream_ends_and_leases_no_more(
    service: JobsUnderTest, workers: jobs_pb2_grpc.WorkerServiceStub, kind: str
) -> None:
    work = await open_work(workers, service, kind)
    await work.write(jobs_pb2.WorkRequest(credit=5))
    await work.nothing_arrives()
    await work.call.done_writing()
    assert await work.read() is grpc.aio.EOF
    assert await work.call.code() == grpc.StatusCode.OK
    job = await service.create(kind)
    await asyncio.sleep(0.3)
    assert (await service.get(job.id)).status == jobs_pb2.JOB_STATUS_QUEUED


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([jobs_pb2.WorkRequest(credit=1)], "begins with its start message"),
        ([jobs_pb2.WorkRequest(start=jobs_pb2.WorkStart())], "kinds"),
        (
            [
                jobs_pb2.WorkRequest(start=jobs_pb2.WorkStart(kinds=["x.y"])),
                jobs_pb2.WorkRequest(start=jobs_pb2.WorkStart(kinds=["x.y"])),
            ],
            "only credit and complete",
        ),
    ],
)
async def test_a_malformed_stream_is_invalid_argument(
    service: JobsUnderTest,
    workers: jobs_pb2_grpc.WorkerServiceStub,
    messages: list[jobs_pb2.WorkRequest],
    expected: str,
) -> None:
    call = workers.Work(iter(messages), metadata=worker_metadata(service))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in call:
            pass
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (refused.value.details() or "")


async def test_a_client_token_cannot_open_a_work_stream(
    service: JobsUnderTest, workers: jobs_pb2_grpc.WorkerServiceStub, kind: str
) -> None:
    start = jobs_pb2.WorkRequest(start=jobs_pb2.WorkStart(kinds=[kind]))
    call = workers.Work(iter([start]), metadata=service.client)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in call:
            pass
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


class _FailingQueue:
    """A fake JobQueue whose database fails under every claim."""

    async def lease(self, **_: Any) -> Any:
        raise RuntimeError("the database went away")


class _Written:
    """A fake ServicerContext that keeps what is written to it."""

    def __init__(self) -> None:
        self.messages: list[jobs_pb2.WorkResponse] = []

    async def write(self, message: jobs_pb2.WorkResponse) -> None:
        self.messages.append(message)


async def test_a_failed_claim_ends_the_stream_with_its_error() -> None:
    async def worker_side() -> AsyncIterator[jobs_pb2.WorkRequest]:
        yield jobs_pb2.WorkRequest(credit=1)
        await asyncio.sleep(30)  # the worker keeps its side open, waiting for leases

    async def no_completions(_: jobs_pb2.CompleteJobsRequest) -> jobs_pb2.CompleteJobsResponse:
        raise AssertionError("nothing was completed")

    session = WorkSession(
        cast(JobQueue, _FailingQueue()),
        jobs_pb2.WorkStart(kinds=["k.k"]),
        worker="w",
        lease_seconds=30,
        complete=no_completions,
        answer=lambda records, lease_id: jobs_pb2.LeaseJobsResponse(),
    )
    written = _Written()
    # Not a stream that stays open and leases nothing: it ends, so the worker opens another.
    with pytest.raises(RuntimeError, match="the database went away"):
        await asyncio.wait_for(session.run(worker_side(), cast(Any, written)), 5)
    assert written.messages == []


# --- the worker library on each protocol --------------------------------------------------------


def handled(method: str) -> float:
    return sum(
        REGISTRY.get_sample_value(
            "grpc_server_handled_total",
            {
                "grpc_service": "kiln.jobs.v1.WorkerService",
                "grpc_method": method,
                "grpc_type": kind,
                "grpc_code": "OK",
            },
        )
        or 0.0
        for kind in ("unary", "bidi_stream")
    )


def work_messages(kind: str) -> float:
    value = REGISTRY.get_sample_value("kiln_jobs_work_stream_messages_total", {"type": kind})
    return value or 0.0


@pytest.mark.parametrize("stream", [True, False])
async def test_the_worker_runs_jobs_on_either_protocol(
    service: JobsUnderTest, stream: bool
) -> None:
    prefix = f"p{uuid.uuid4().hex[:10]}"
    leases_before, leased_before = handled("LeaseJobs"), work_messages("leased")
    completed_before = work_messages("completed")
    async with service.worker(prefix, stream=stream, concurrency=4):
        jobs = [await service.create(f"{prefix}.echo", {"n": i}) for i in range(6)]
        finals = [await service.final(job.id) for job in jobs]
    assert [job.status for job in finals] == [SUCCEEDED] * 6
    if stream:
        assert work_messages("leased") > leased_before
        assert work_messages("completed") > completed_before
        assert handled("LeaseJobs") == leases_before
    else:
        assert handled("LeaseJobs") > leases_before
        assert work_messages("leased") == leased_before


async def test_the_worker_replaces_its_stream_and_keeps_running_jobs(
    service: JobsUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("services.runtime.worker.STREAM_MAX_SECONDS", 0.2)
    prefix = f"r{uuid.uuid4().hex[:10]}"
    streams_before = handled("Work")
    async with service.worker(prefix, concurrency=2):
        jobs = []
        for i in range(8):
            jobs.append(await service.create(f"{prefix}.echo", {"n": i}))
            await asyncio.sleep(0.1)
        finals = [await service.final(job.id) for job in jobs]
    assert [job.status for job in finals] == [SUCCEEDED] * 8
    assert [job.attempt for job in finals] == [1] * 8  # nothing released or re-run
    assert handled("Work") >= streams_before + 3  # replaced streams ended cleanly


async def test_a_jobs_service_without_work_is_served_with_unary_calls(
    service: JobsUnderTest,
) -> None:
    async with unary_only_proxy(service.target) as target:
        prefix = f"o{uuid.uuid4().hex[:10]}"
        older = JobsUnderTest(**{**service.__dict__, "target": target})
        async with older.worker(prefix):
            job = await service.create(f"{prefix}.echo", {"n": 1})
            assert (await service.final(job.id)).status == SUCCEEDED


# The fake: an older jobs release, whose WorkerService has every method but Work.
_UNARY_METHODS = (
    "LeaseJobs",
    "HeartbeatJob",
    "CompleteJob",
    "CompleteJobs",
    "FailJob",
    "ReleaseJob",
)


def _raw(data: bytes) -> bytes:
    return data


class unary_only_proxy:
    """A gRPC server forwarding WorkerService's unary methods, as bytes, to `target`."""

    def __init__(self, target: str) -> None:
        self._target = target

    async def __aenter__(self) -> str:
        self._channel = grpc.aio.insecure_channel(self._target)
        handlers = {name: self._forward(name) for name in _UNARY_METHODS}
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("kiln.jobs.v1.WorkerService", handlers),)
        )
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return f"127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        await self._server.stop(0)
        await self._channel.close()

    def _forward(self, name: str) -> grpc.RpcMethodHandler:
        upstream = self._channel.unary_unary(
            f"/kiln.jobs.v1.WorkerService/{name}",
            request_serializer=_raw,
            response_deserializer=_raw,
        )

        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                answer: bytes = await upstream(
                    request,
                    metadata=context.invocation_metadata(),
                    timeout=context.time_remaining(),
                )
            except grpc.aio.AioRpcError as err:
                await context.abort(err.code(), err.details() or "")
            return answer

        return grpc.unary_unary_rpc_method_handler(
            forward, request_deserializer=_raw, response_serializer=_raw
        )


class _ScriptedCall:
    """A fake grpc.aio stream-stream call: the test puts what it reads, it keeps what is
    written."""

    def __init__(self) -> None:
        self.reads: asyncio.Queue[Any] = asyncio.Queue()
        self.written: list[jobs_pb2.WorkRequest] = []

    async def write(self, message: jobs_pb2.WorkRequest) -> None:
        self.written.append(message)

    async def read(self) -> Any:
        return await self.reads.get()

    def done(self) -> bool:
        return False


async def test_an_answer_nobody_waits_for_any_more_keeps_the_stream_going() -> None:
    call = _ScriptedCall()
    stream = WorkStream(call, lambda lease, received: None)
    reader = asyncio.create_task(stream._read())
    first = asyncio.create_task(stream.complete(jobs_pb2.CompleteJobsRequest()))
    await asyncio.sleep(0.01)
    first.cancel()  # its caller timed out: the answer still comes, to no one
    second = asyncio.create_task(stream.complete(jobs_pb2.CompleteJobsRequest()))
    await asyncio.sleep(0.01)
    for n in (1, 2):
        answer = jobs_pb2.CompleteJobsResponse()
        answer.results.add(error_message=f"answer {n}")
        await call.reads.put(jobs_pb2.WorkResponse(completed=answer))

    got = await asyncio.wait_for(second, 5)

    assert got.results[0].error_message == "answer 2"  # answers stay matched by position
    assert stream.usable
    assert [m.WhichOneof("message") for m in call.written] == ["complete", "complete"]
    reader.cancel()
