"""Several jobs replicas on one PostgreSQL: no job runs twice, wake-ups cross replicas."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from services.jobs.jobs import JobQueue
from services.jobs.main import MIGRATIONS
from services.jobs.pg_hot_path import PgHotPath
from services.jobs.signals import Signals
from services.jobs.store import SUCCEEDED
from services.runtime import db
from services.runtime.config import JobsConfig
from tests.conftest import postgres_reachable, private_postgres_database

pytestmark = pytest.mark.postgres


@pytest.fixture
async def replicas() -> AsyncIterator[list[JobQueue]]:
    reason = postgres_reachable()
    if reason is not None:
        pytest.skip(reason)
    async with private_postgres_database() as url:
        engines = [db.create_engine(url) for _ in range(2)]
        await db.migrate(engines[0], "jobs", MIGRATIONS)
        await db.migrate(engines[1], "jobs", MIGRATIONS)  # a second replica starting: no-op
        queues: list[JobQueue] = []
        signals: list[Signals] = []
        for engine in engines:
            relay = Signals()
            hot_path = await PgHotPath.connect(str(db.postgres_dsn(url)), max_size=2)
            await relay.start(db.postgres_dsn(url), hot_path.notify_batch)
            signals.append(relay)
            queues.append(JobQueue(engine, relay, JobsConfig(), hot_path=hot_path))
        try:
            yield queues
        finally:
            for queue, relay, engine in zip(queues, signals, engines, strict=True):
                await queue.close()
                await relay.close()
                await engine.dispose()


async def test_no_job_is_leased_twice_across_replicas(replicas: list[JobQueue]) -> None:
    total = 300
    created = await asyncio.gather(
        *(replicas[i % 2].create("t", kind="test.race", params={"i": i}) for i in range(total))
    )
    leased: list[str] = []

    async def worker(queue: JobQueue) -> None:
        while True:
            records, lease_id = await queue.lease(
                kinds=["test.race"], max_jobs=7, lease_seconds=30, wait_seconds=0, worker="w"
            )
            if not records:
                return
            for record in records:
                leased.append(record.id)
                await queue.complete(record.id, lease_id, result={}, outputs=[])

    await asyncio.gather(*(worker(replicas[i % 2]) for i in range(8)))
    counts = Counter(leased)
    assert len(counts) == total
    assert max(counts.values()) == 1
    for record in created[:20]:
        assert (await replicas[1].get("t", job_id=record.id)).status == SUCCEEDED


async def test_a_job_created_on_one_replica_wakes_a_worker_waiting_on_another(
    replicas: list[JobQueue],
) -> None:
    waiter = asyncio.create_task(
        replicas[0].lease(
            kinds=["test.cross"], max_jobs=1, lease_seconds=5, wait_seconds=10, worker="w"
        )
    )
    await asyncio.sleep(0.3)
    started = time.monotonic()
    job = await replicas[1].create("t", kind="test.cross", params={})
    records, _ = await asyncio.wait_for(waiter, 5)
    assert [r.id for r in records] == [job.id]
    assert time.monotonic() - started < 0.5  # NOTIFY, not the one-second poll


async def test_a_watch_on_one_replica_sees_changes_made_on_another(
    replicas: list[JobQueue],
) -> None:
    job = await replicas[0].create("t", kind="test.watch", params={})
    statuses: list[int] = []

    async def watch() -> None:
        async for record in replicas[0].watch("t", job.id):
            statuses.append(record.status)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.1)
    started = time.monotonic()
    records, lease_id = await replicas[1].lease(
        kinds=["test.watch"], max_jobs=1, lease_seconds=5, wait_seconds=1, worker="w"
    )
    await replicas[1].complete(records[0].id, lease_id, result={}, outputs=[])
    await asyncio.wait_for(watcher, 5)
    assert statuses[-1] == SUCCEEDED
    assert time.monotonic() - started < 2.0  # notified, not the five-second re-read
