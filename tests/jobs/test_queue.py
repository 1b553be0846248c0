"""The job queue against real SQLite and PostgreSQL: states, leases, retries, idempotency."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.jobs.jobs import JobQueue
from services.jobs.main import MIGRATIONS
from services.jobs.pg_hot_path import PgHotPath
from services.jobs.signals import Signals
from services.jobs.sqlite_hot_path import SqliteHotPath
from services.jobs.store import CANCELED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobRecord
from services.runtime import db
from services.runtime.config import JobsConfig
from services.runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    JobCanceled,
    LeaseLost,
    MissingField,
    NotFound,
)

FAST = JobsConfig(max_attempts=3, backoff_seconds=0.05, backoff_max_seconds=0.2)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    async with db.migrated_engine(database_url, "jobs", MIGRATIONS) as migrated:
        yield migrated


async def open_queue(
    engine: AsyncEngine, database_url: str, config: JobsConfig = FAST
) -> tuple[JobQueue, Signals]:
    """The queue as the service builds it: on PostgreSQL, with its hot path."""
    signals = Signals()
    dsn = db.postgres_dsn(database_url)
    hot_path = None if dsn is None else await PgHotPath.connect(dsn, max_size=2)
    await signals.start(dsn, None if hot_path is None else hot_path.notify_batch)
    sqlite_path = SqliteHotPath.for_url(database_url)
    return JobQueue(engine, signals, config, hot_path=hot_path, sqlite_path=sqlite_path), signals


@pytest.fixture
async def queue(engine: AsyncEngine, database_url: str) -> AsyncIterator[JobQueue]:
    jobs, signals = await open_queue(engine, database_url)
    yield jobs
    await jobs.close()
    await signals.close()


async def lease_one(queue: JobQueue, kind: str = "test.echo", **kw: float) -> tuple[str, str]:
    records, lease_id = await queue.lease(
        kinds=[kind],
        max_jobs=1,
        lease_seconds=kw.get("lease_seconds", 30.0),
        wait_seconds=kw.get("wait_seconds", 2.0),
        worker="w1",
    )
    assert len(records) == 1
    return records[0].id, lease_id


async def test_a_job_runs_its_whole_course_with_history(queue: JobQueue) -> None:
    created = await queue.create("t1", kind="test.echo", params={"n": 1})
    assert created.status == QUEUED and created.seq > 0 and created.id.startswith("job_")
    job_id, lease_id = await lease_one(queue)
    assert job_id == created.id
    running = await queue.get("t1", job_id=job_id)
    assert running.status == RUNNING and running.attempt == 1
    cancelled, _ = await queue.heartbeat(job_id, lease_id, progress=0.5, lease_seconds=10)
    assert not cancelled
    assert (await queue.get("t1", job_id=job_id)).progress == 0.5
    done = await queue.complete(
        job_id,
        lease_id,
        result={"answer": 42},
        outputs=[{"name": "out.txt", "content_type": "text/plain", "size": 3}],
    )
    assert done.status == SUCCEEDED
    final = await queue.get("t1", seq=created.seq)
    assert final.result == {"answer": 42} and final.progress == 1.0
    assert [t.status for t in final.history] == [QUEUED, RUNNING, SUCCEEDED]
    assert final.ended_at is not None
    with pytest.raises(LeaseLost):
        await queue.complete(job_id, lease_id, result={}, outputs=[])


async def test_other_tenants_cannot_see_or_cancel_a_job(queue: JobQueue) -> None:
    job = await queue.create("t1", kind="test.echo", params={})
    with pytest.raises(NotFound):
        await queue.get("t2", job_id=job.id)
    with pytest.raises(NotFound):
        await queue.get("t2", seq=job.seq)
    with pytest.raises(NotFound):
        await queue.cancel("t2", job.id)
    listed, _ = await queue.list_jobs("t2", kind="", status=0, page_size=10, page_token="")
    assert job.id not in {r.id for r in listed}


async def test_concurrent_creates_with_one_request_id_make_one_job(queue: JobQueue) -> None:
    records = await asyncio.gather(
        *(
            queue.create("t1", kind="test.echo", params={"i": i}, request_id="same-key")
            for i in range(200)
        )
    )
    assert len({r.id for r in records}) == 1
    listed, _ = await queue.list_jobs(
        "t1", kind="test.echo", status=0, page_size=500, page_token=""
    )
    assert len([r for r in listed if r.request_id == "same-key"]) == 1
    # The key is per tenant.
    other = await queue.create("t2", kind="test.echo", params={}, request_id="same-key")
    assert other.id != records[0].id


async def test_listing_pages_newest_first_and_filters(queue: JobQueue) -> None:
    ids = [(await queue.create("t3", kind="test.list", params={})).id for _ in range(5)]
    await queue.create("t3", kind="test.other", params={})
    page, token = await queue.list_jobs(
        "t3", kind="test.list", status=0, page_size=2, page_token=""
    )
    assert [r.id for r in page] == ids[::-1][:2] and token
    rest: list[str] = [r.id for r in page]
    while token:
        page, token = await queue.list_jobs(
            "t3", kind="test.list", status=0, page_size=2, page_token=token
        )
        rest += [r.id for r in page]
    assert rest == ids[::-1]
    queued, _ = await queue.list_jobs("t3", kind="", status=QUEUED, page_size=50, page_token="")
    assert len(queued) == 6
    with pytest.raises(InvalidArgument):
        await queue.list_jobs("t3", kind="", status=0, page_size=2, page_token="garbage!")


async def test_bad_input_is_refused_and_changes_nothing(queue: JobQueue) -> None:
    with pytest.raises(MissingField):
        await queue.create("t4", kind="", params={})
    with pytest.raises(InvalidArgument):
        await queue.create("t4", kind="../etc", params={})
    with pytest.raises(InvalidArgument):
        await queue.create("t4", kind="ok", params={}, request_id="x" * 129)
    with pytest.raises(InvalidArgument):
        await queue.create("t4", kind="ok", params={}, max_attempts=1000)
    listed, _ = await queue.list_jobs("t4", kind="", status=0, page_size=10, page_token="")
    assert listed == []
    with pytest.raises(MissingField):
        await queue.lease(kinds=[], max_jobs=1, lease_seconds=1, wait_seconds=0, worker="w")
    with pytest.raises(MissingField):
        await queue.heartbeat("job_x", "", progress=0, lease_seconds=0)
    job = await queue.create("t4", kind="test.bad", params={})
    job_id, lease_id = await lease_one(queue, "test.bad")
    assert job_id == job.id
    with pytest.raises(InvalidArgument):
        await queue.heartbeat(job_id, lease_id, progress=1.5, lease_seconds=0)
    with pytest.raises(InvalidArgument):
        await queue.complete(job_id, lease_id, result={}, outputs=[{"name": "../escape"}])
    with pytest.raises(InvalidArgument):
        await queue.complete(job_id, lease_id, result={}, outputs=[{"name": "a"}, {"name": "a"}])
    with pytest.raises(LeaseLost):
        await queue.complete(job_id, "not-the-lease", result={}, outputs=[])
    assert (await queue.get("t4", job_id=job_id)).status == RUNNING


async def test_retryable_failures_back_off_then_fail_with_the_last_error(
    engine: AsyncEngine, database_url: str
) -> None:
    slow = replace(FAST, backoff_seconds=0.6, backoff_max_seconds=1.0)
    queue, signals = await open_queue(engine, database_url, slow)
    try:
        await _retry_then_fail(queue)
    finally:
        await queue.close()
        await signals.close()


async def _retry_then_fail(queue: JobQueue) -> None:
    job = await queue.create("t5", kind="test.flaky", params={}, max_attempts=2)
    job_id, lease_id = await lease_one(queue, "test.flaky")
    retried = await queue.fail(job_id, lease_id, error="timeout 1", retryable=True)
    assert retried.status == QUEUED and retried.run_after > retried.updated_at + 0.5
    # Not before its backoff: an immediate lease finds nothing.
    early, _ = await queue.lease(
        kinds=["test.flaky"], max_jobs=1, lease_seconds=5, wait_seconds=0, worker="w"
    )
    assert early == []
    job_id2, lease_id2 = await lease_one(queue, "test.flaky", wait_seconds=3.0)
    assert job_id2 == job.id
    failed = await queue.fail(job_id2, lease_id2, error="timeout 2", retryable=True)
    assert failed.status == FAILED and failed.error == "timeout 2" and failed.attempt == 2
    history = (await queue.get("t5", job_id=job.id)).history
    assert [t.status for t in history] == [QUEUED, RUNNING, QUEUED, RUNNING, FAILED]
    assert "timeout 1" in history[2].reason


async def test_a_final_error_fails_at_once(queue: JobQueue) -> None:
    await queue.create("t6", kind="test.final", params={}, max_attempts=5)
    job_id, lease_id = await lease_one(queue, "test.final")
    failed = await queue.fail(job_id, lease_id, error="bad input image", retryable=False)
    assert failed.status == FAILED and failed.attempt == 1


async def test_an_expired_lease_requeues_then_fails_on_the_last_attempt(queue: JobQueue) -> None:
    job = await queue.create("t7", kind="test.crash", params={}, max_attempts=2)
    job_id, lease_id = await lease_one(queue, "test.crash", lease_seconds=0.1)
    await asyncio.sleep(0.2)
    assert await queue.reap() == 1
    requeued = await queue.get("t7", job_id=job.id)
    assert requeued.status == QUEUED and "lease expired" in requeued.error
    with pytest.raises(LeaseLost):
        await queue.heartbeat(job_id, lease_id, progress=0.1, lease_seconds=1)
    job_id2, lease_id2 = await lease_one(queue, "test.crash", lease_seconds=0.1)
    assert job_id2 == job.id
    assert lease_id2 != lease_id
    await asyncio.sleep(0.2)
    assert await queue.reap() == 1
    final = await queue.get("t7", job_id=job.id)
    assert final.status == FAILED and "attempt 2 of 2" in final.error


async def test_cancel_ends_queued_at_once_and_running_at_the_heartbeat(queue: JobQueue) -> None:
    queued = await queue.create("t8", kind="test.cancel", params={})
    cancelled = await queue.cancel("t8", queued.id)
    assert cancelled.status == CANCELED and cancelled.history[-1].status == CANCELED
    assert (await queue.cancel("t8", queued.id)).status == CANCELED  # idempotent
    empty, _ = await queue.lease(
        kinds=["test.cancel"], max_jobs=1, lease_seconds=5, wait_seconds=0, worker="w"
    )
    assert empty == []

    running = await queue.create("t8", kind="test.cancel", params={})
    job_id, lease_id = await lease_one(queue, "test.cancel")
    assert job_id == running.id
    assert (await queue.cancel("t8", job_id)).status == CANCELED
    told, _ = await queue.heartbeat(job_id, lease_id, progress=0.2, lease_seconds=5)
    assert told
    with pytest.raises(JobCanceled):
        await queue.complete(job_id, lease_id, result={}, outputs=[])
    assert (await queue.get("t8", job_id=job_id)).status == CANCELED

    done = await queue.create("t8", kind="test.cancel", params={})
    job_id, lease_id = await lease_one(queue, "test.cancel")
    await queue.complete(job_id, lease_id, result={}, outputs=[])
    with pytest.raises(FailedPrecondition):
        await queue.cancel("t8", done.id)


async def test_release_requeues_without_spending_an_attempt(queue: JobQueue) -> None:
    job = await queue.create("t9", kind="test.release", params={}, max_attempts=1)
    job_id, lease_id = await lease_one(queue, "test.release")
    released = await queue.release(job_id, lease_id)
    assert released.status == QUEUED and released.attempt == 0
    job_id2, _ = await lease_one(queue, "test.release", wait_seconds=0.5)
    assert job_id2 == job.id
    assert (await queue.get("t9", job_id=job.id)).attempt == 1


async def test_a_waiting_lease_wakes_when_a_job_arrives(queue: JobQueue) -> None:
    waiter = asyncio.create_task(
        queue.lease(kinds=["test.wake"], max_jobs=1, lease_seconds=5, wait_seconds=5, worker="w")
    )
    await asyncio.sleep(0.2)
    assert not waiter.done()
    started = time.monotonic()
    job = await queue.create("t10", kind="test.wake", params={})
    records, _ = await asyncio.wait_for(waiter, 3)
    assert [r.id for r in records] == [job.id]
    assert time.monotonic() - started < 0.5  # a wake-up, not the poll


async def test_watch_yields_each_change_and_ends_with_the_final_state(queue: JobQueue) -> None:
    job = await queue.create("t11", kind="test.watch", params={})
    seen: list[tuple[int, float]] = []

    async def watch() -> None:
        async for record in queue.watch("t11", job.id):
            seen.append((record.status, record.progress))

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.05)
    job_id, lease_id = await lease_one(queue, "test.watch")
    await asyncio.sleep(0.05)
    await queue.heartbeat(job_id, lease_id, progress=0.5, lease_seconds=5)
    await asyncio.sleep(0.05)
    await queue.complete(job_id, lease_id, result={}, outputs=[])
    await asyncio.wait_for(watcher, 3)
    assert seen[0] == (QUEUED, 0.0)
    assert (RUNNING, 0.5) in seen
    assert seen[-1] == (SUCCEEDED, 1.0)


async def test_retention_purges_finished_jobs_only(engine: AsyncEngine, database_url: str) -> None:
    queue, signals = await open_queue(engine, database_url, replace(FAST, retention_seconds=0))
    try:
        finished = await queue.create("t12", kind="test.purge", params={})
        job_id, lease_id = await lease_one(queue, "test.purge")
        await queue.complete(job_id, lease_id, result={}, outputs=[])
        waiting = await queue.create("t12", kind="test.purge", params={})
        await asyncio.sleep(0.01)
        assert await queue.purge() >= 1
        with pytest.raises(NotFound):
            await queue.get("t12", job_id=finished.id)
        assert (await queue.get("t12", job_id=waiting.id)).status == QUEUED
    finally:
        await queue.close()
        await signals.close()


async def test_a_batch_create_is_all_or_nothing_and_keeps_request_ids(queue: JobQueue) -> None:
    first = await queue.create("t13", kind="test.batch", params={}, request_id="k1")
    records = await queue.create_many(
        "t13",
        [
            ("test.batch", {"i": 0}, "", 0),
            ("test.batch", {"i": 1}, "k1", 0),  # an earlier request: answers that job
            ("test.batch", {"i": 2}, "k2", 0),
            ("test.batch", {"i": 3}, "k2", 0),  # repeated within the batch: one job
        ],
    )
    assert records[1].id == first.id
    assert records[2].id == records[3].id
    assert len({r.id for r in records}) == 3
    assert [r.params for r in records] == [{"i": 0}, {}, {"i": 2}, {"i": 2}]
    with pytest.raises(InvalidArgument):
        await queue.create_many("t14", [("test.batch", {}, "", 0), ("BAD KIND", {}, "", 0)])
    listed, _ = await queue.list_jobs("t14", kind="", status=0, page_size=10, page_token="")
    assert listed == []


async def test_completions_in_one_call_each_have_their_own_outcome(queue: JobQueue) -> None:
    for _ in range(3):
        await queue.create("t15", kind="test.many", params={})
    records, lease_id = await queue.lease(
        kinds=["test.many"], max_jobs=3, lease_seconds=30, wait_seconds=1, worker="w"
    )
    assert len(records) == 3
    await queue.cancel("t15", records[1].id)
    outcomes = await queue.complete_many(
        [
            (records[0].id, lease_id, {"n": 0}, []),
            (records[1].id, lease_id, {}, []),
            (records[2].id, "wrong-lease", {}, []),
            (records[2].id, lease_id, {}, [{"name": "../x"}]),
            (records[2].id, lease_id, {"n": 2}, []),
        ]
    )
    assert isinstance(outcomes[0], JobRecord) and outcomes[0].status == SUCCEEDED
    assert isinstance(outcomes[1], JobCanceled)
    assert isinstance(outcomes[2], LeaseLost)
    assert isinstance(outcomes[3], InvalidArgument)
    assert isinstance(outcomes[4], JobRecord) and outcomes[4].result == {"n": 2}


async def test_a_tenant_cap_holds_its_jobs_while_others_run(
    engine: AsyncEngine, database_url: str
) -> None:
    capped = replace(FAST, tenant_concurrency="test.heavy=1")
    queue, signals = await open_queue(engine, database_url, capped)
    try:
        first = await queue.create("tenant-a", kind="test.heavy", params={"n": 1})
        second = await queue.create("tenant-a", kind="test.heavy", params={"n": 2})
        other = await queue.create("tenant-b", kind="test.heavy", params={"n": 3})
        free = await queue.create("tenant-a", kind="test.light", params={})

        async def lease(kind: str) -> list[str]:
            records, _ = await queue.lease(
                kinds=[kind], max_jobs=10, lease_seconds=30, wait_seconds=0, worker="w"
            )
            return [r.id for r in records]

        assert await lease("test.heavy") == [first.id]  # one per claim for a capped kind
        assert await lease("test.heavy") == [other.id]  # A is at its cap; B is not
        assert await lease("test.heavy") == []  # A's second waits
        assert await lease("test.light") == [free.id]  # uncapped kinds are not held
        running = await queue.get("tenant-a", job_id=first.id)
        await queue.complete(first.id, running.lease_id, result={}, outputs=[])
        assert await lease("test.heavy") == [second.id]  # A's slot freed
    finally:
        await queue.close()
        await signals.close()


async def test_a_lease_of_capped_and_free_kinds_skips_only_the_held_tenant(
    engine: AsyncEngine, database_url: str
) -> None:
    capped = replace(FAST, tenant_concurrency="test.heavy=2")
    queue, signals = await open_queue(engine, database_url, capped)
    try:
        heavy = [await queue.create("tenant-a", kind="test.heavy", params={}) for _ in range(3)]
        light = await queue.create("tenant-a", kind="test.light", params={})
        other = await queue.create("tenant-b", kind="test.heavy", params={})

        async def lease() -> list[str]:
            records, _ = await queue.lease(
                kinds=["test.heavy", "test.light"],
                max_jobs=10,
                lease_seconds=30,
                wait_seconds=0,
                worker="w",
            )
            return [r.id for r in records]

        leased = [await lease() for _ in range(5)]
        # Oldest first, one per claim; A's third heavy job waits behind its cap of two.
        assert leased == [[heavy[0].id], [heavy[1].id], [light.id], [other.id], []]
        running = await queue.get("tenant-a", job_id=heavy[2].id)
        assert running.status == QUEUED
    finally:
        await queue.close()
        await signals.close()


def test_tenant_caps_are_checked() -> None:
    assert JobsConfig(tenant_concurrency="a=1, b = 2,").tenant_caps() == {"a": 1, "b": 2}
    for bad in ("a", "a=0", "=3", "a=x"):
        with pytest.raises(Exception, match="KILN_JOBS_TENANT_CONCURRENCY"):
            JobsConfig(tenant_concurrency=bad).tenant_caps()


async def test_a_completion_repeated_in_one_batch_finishes_the_job_once(queue: JobQueue) -> None:
    created = await queue.create("t16", kind="test.twice", params={"image": None})
    job_id, lease_id = await lease_one(queue, "test.twice")
    first, second = await queue.complete_many(
        [(job_id, lease_id, {"n": 1}, []), (job_id, lease_id, {"n": 2}, [])]
    )
    assert isinstance(first, JobRecord) and first.status == SUCCEEDED
    assert isinstance(second, LeaseLost)
    final = await queue.get("t16", seq=created.seq)
    assert final.params == {"image": None} and final.outputs == []
    assert [t.status for t in final.history] == [QUEUED, RUNNING, SUCCEEDED]
