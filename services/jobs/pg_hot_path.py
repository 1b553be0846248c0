"""PostgreSQL's hot path: create, claim and complete as one statement each, on raw asyncpg.

Every job is created, claimed and completed once, so these three calls set the queue's
throughput. Through SQLAlchemy each costs several statements (the change, its transition row,
a read-back) and several hundred microseconds of statement building per statement; here each
is a single data-modifying CTE that changes the rows, records the transitions and returns the
rows, sent as a prepared statement on a pool of plain asyncpg connections. A single statement
is atomic on its own, so no explicit transaction is needed.

SQLite keeps the portable statements in `store`; the tests run both paths.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from services.jobs.signals import CHANNEL
from services.jobs.store import CompleteRow, JobRecord, NewJob
from services.runtime.db import observe_sql

_COLUMNS = (
    "seq, id, tenant, kind, status, progress, params, result, outputs, error, request_id, "
    "attempt, max_attempts, run_after, lease_id, lease_expires_at, lease_seconds, worker, "
    "created_at, updated_at, started_at, ended_at, version, traceparent"
)

_INSERT = f"""
WITH ins AS (
    INSERT INTO jobs (id, tenant, kind, status, progress, params, error, request_id, attempt,
                      max_attempts, run_after, worker, created_at, updated_at, version,
                      traceparent)
    SELECT v.id, v.tenant, v.kind, 1, 0, v.params::json, '', NULLIF(v.request_id, ''), 0,
           v.max_attempts, $7, '', $7, $7, 1, NULLIF(v.traceparent, '')
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[],
                $8::text[])
         WITH ORDINALITY AS v(id, tenant, kind, params, request_id, max_attempts, traceparent,
                              n)
    ORDER BY v.n
    ON CONFLICT (tenant, request_id) DO NOTHING
    RETURNING {_COLUMNS}
), history AS (
    INSERT INTO job_transitions (job_id, status, at, reason)
    SELECT id, 1, $7, '' FROM ins ORDER BY seq
)
SELECT {_COLUMNS} FROM ins
"""

_CLAIM = f"""
WITH due AS MATERIALIZED (
    SELECT seq FROM jobs
    WHERE status = 1 AND kind = ANY($1::text[]) AND run_after <= $6
    ORDER BY seq
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE jobs SET status = 2, attempt = attempt + 1, lease_id = $3,
                    lease_expires_at = $6 + $4, lease_seconds = $4, worker = $5,
                    started_at = COALESCE(started_at, $6), updated_at = $6,
                    version = version + 1
    WHERE seq IN (SELECT seq FROM due) AND status = 1
    RETURNING {_COLUMNS}
), history AS (
    INSERT INTO job_transitions (job_id, status, at, reason)
    SELECT id, 2, $6, $5 FROM claimed ORDER BY seq
)
SELECT {_COLUMNS} FROM claimed ORDER BY seq
"""

_COMPLETE = f"""
WITH done AS (
    UPDATE jobs SET status = 3, progress = 1, result = v.result::json,
                    outputs = v.outputs::json, error = '', ended_at = $5, updated_at = $5,
                    version = jobs.version + 1
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
         AS v(id, lease_id, result, outputs)
    WHERE jobs.id = v.id AND jobs.lease_id = v.lease_id AND jobs.status = 2
    RETURNING {", ".join("jobs." + c.strip() for c in _COLUMNS.split(","))}
), history AS (
    INSERT INTO job_transitions (job_id, status, at, reason)
    SELECT id, 3, $5, '' FROM done ORDER BY seq
)
SELECT {_COLUMNS} FROM done
"""


class _Connection(asyncpg.Connection):
    def get_reset_query(self) -> str:
        # The pool resets a connection on every release (a round trip per statement here);
        # these connections never LISTEN, lock or change settings, so there is nothing to reset.
        return ""


async def _init_connection(conn: Any) -> None:
    # json columns come back decoded, as SQLAlchemy's JSON type gives them.
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class PgHotPath:
    """The three hot statements on a small asyncpg pool of their own."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def _fetch(self, statement: str, *args: Any) -> list[Any]:
        # Outside SQLAlchemy, so its statement timing does not see these: time them here.
        started = time.perf_counter()
        try:
            rows: list[Any] = await self._pool.fetch(statement, *args)
        finally:
            observe_sql(statement, time.perf_counter() - started)
        return rows

    @classmethod
    async def connect(cls, dsn: str, *, max_size: int = 8) -> PgHotPath:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=1,
            max_size=max_size,
            init=_init_connection,
            connection_class=_Connection,
        )
        return cls(pool)

    async def insert_jobs(self, items: Sequence[NewJob], now: float) -> dict[str, JobRecord]:
        """Inserts the jobs whose (tenant, request_id) is new, with their first transition;
        answers those inserted, by id."""
        rows = await self._fetch(
            _INSERT,
            [i.id for i in items],
            [i.tenant for i in items],
            [i.kind for i in items],
            [json.dumps(i.params) for i in items],
            [i.request_id for i in items],
            [i.max_attempts for i in items],
            now,
            [i.traceparent for i in items],
        )
        return {row["id"]: JobRecord.from_row(row) for row in rows}

    async def claim(
        self,
        *,
        kinds: Sequence[str],
        limit: int,
        lease_id: str,
        lease_seconds: float,
        worker: str,
        now: float,
    ) -> list[JobRecord]:
        rows = await self._fetch(_CLAIM, list(kinds), limit, lease_id, lease_seconds, worker, now)
        return [JobRecord.from_row(row) for row in rows]

    async def complete(self, items: Sequence[CompleteRow], now: float) -> dict[str, JobRecord]:
        """Finishes the items still leased by their lease ids; answers those, by id."""
        rows = await self._fetch(
            _COMPLETE,
            [i.job_id for i in items],
            [i.lease_id for i in items],
            [json.dumps(i.result) for i in items],
            [json.dumps(i.outputs) for i in items],
            now,
        )
        return {row["id"]: JobRecord.from_row(row) for row in rows}

    async def notify_batch(self, payloads: Sequence[str]) -> None:
        """Sends job notifications on the jobs channel, in order."""
        if payloads:
            await self._pool.execute(
                "SELECT pg_notify($1, p) FROM unnest($2::text[]) WITH ORDINALITY AS t(p, n) "
                "ORDER BY n",
                CHANNEL,
                list(payloads),
            )

    async def close(self) -> None:
        await self._pool.close()
