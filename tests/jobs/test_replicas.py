"""Several jobs replicas on one PostgreSQL: no job runs twice, wake-ups cross replicas."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from services.jobs.jobs import JobQueue
from services.jobs.main import MIGRATIONS
from services.jobs.pg_hot_path import PgHotPath
from services.jobs.signals import CHANNEL, Signals, decode
from services.jobs.store import SUCCEEDED
from services.runtime import db
from services.runtime.config import JobsConfig
from tests.conftest import postgres_reachable, private_postgres_database

pytestmark = pytest.mark.postgres


Start = Callable[..., Awaitable[JobQueue]]


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[str, Start]]:
    """A private database and a function that starts one more replica on it."""
    reason = postgres_reachable()
    if reason is not None:
        pytest.skip(reason)
    async with private_postgres_database() as url:
        started: list[tuple[JobQueue, Signals, Any]] = []

        async def start(**signals_options: float) -> JobQueue:
            engine = db.create_engine(url)
            await db.migrate(engine, "jobs", MIGRATIONS)  # a second replica starting: no-op
            relay = Signals(**signals_options)
            hot_path = await PgHotPath.connect(str(db.postgres_dsn(url)), max_size=2)
            await relay.start(db.postgres_dsn(url), hot_path.notify_batch)
            queue = JobQueue(engine, relay, JobsConfig(), hot_path=hot_path)
            started.append((queue, relay, engine))
            return queue

        try:
            yield url, start
        finally:
            for queue, relay, engine in started:
                await queue.close()
                await relay.close()
                await engine.dispose()


@pytest.fixture
async def replicas(cluster: tuple[str, Start]) -> list[JobQueue]:
    _, start = cluster
    return [await start(), await start()]


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


async def test_a_lone_replica_notifies_nobody(cluster: tuple[str, Start]) -> None:
    """Job notifications cost a replica about 7 % of its CPU per job: one alone sends none,
    only its presence."""
    url, start = cluster
    heard: list[str] = []
    listener = await asyncpg.connect(str(db.postgres_dsn(url)))
    try:
        # Not a replica: it listens without announcing itself.
        await listener.add_listener(CHANNEL, lambda _c, _p, _ch, payload: heard.append(payload))
        queue = await start()
        created = await queue.create("t", kind="test.alone", params={})
        records, lease_id = await queue.lease(
            kinds=["test.alone"], max_jobs=1, lease_seconds=5, wait_seconds=1, worker="w"
        )
        await queue.complete(records[0].id, lease_id, result={}, outputs=[])
        await asyncio.sleep(0.3)
    finally:
        await listener.close()
    assert [r.id for r in records] == [created.id]
    decoded = [decode(p) for p in heard]
    assert decoded and all(d is not None and d[1] == ["!hello"] and not d[2] for d in decoded)


async def test_replicas_started_one_after_the_other_wake_each_other_at_once(
    cluster: tuple[str, Start],
) -> None:
    """The first replica, alone so far, notified nobody; the second still finds the job
    queued before it started, and each replica learns of the other within milliseconds
    (the hello and its answer), not at the next periodic announcement."""
    _, start = cluster
    first = await start(announce_seconds=60)
    early = await first.create("t", kind="test.late", params={})
    second = await start(announce_seconds=60)
    records, _ = await second.lease(
        kinds=["test.late"], max_jobs=5, lease_seconds=5, wait_seconds=0, worker="w"
    )
    assert [r.id for r in records] == [early.id]
    await asyncio.sleep(0.2)
    for waiting, creating in ((first, second), (second, first)):
        waiter = asyncio.create_task(
            waiting.lease(
                kinds=["test.late"], max_jobs=1, lease_seconds=5, wait_seconds=10, worker="w"
            )
        )
        await asyncio.sleep(0.2)
        started = time.monotonic()
        job = await creating.create("t", kind="test.late", params={})
        records, _ = await asyncio.wait_for(waiter, 5)
        assert [r.id for r in records] == [job.id]
        assert time.monotonic() - started < 0.5  # NOTIFY, not the one-second poll


async def test_a_replica_not_heard_from_is_forgotten_until_it_speaks_again(
    cluster: tuple[str, Start],
) -> None:
    _, start = cluster
    first = await start(announce_seconds=0.3, peer_ttl_seconds=1.0)
    second = await start(announce_seconds=60, peer_ttl_seconds=1.0)
    await asyncio.sleep(0.2)
    assert first._signals.has_peers() and second._signals.has_peers()
    # The second replica says nothing for a minute; the first keeps announcing itself.
    await asyncio.sleep(1.3)
    assert not first._signals.has_peers()
    assert first._signals.payloads(kinds=["test.k"]) == []
    assert second._signals.has_peers()
    # Any message from it (here a job's notification) marks it alive again.
    await second.create("t", kind="test.k", params={})
    await asyncio.sleep(0.2)
    assert first._signals.has_peers()
