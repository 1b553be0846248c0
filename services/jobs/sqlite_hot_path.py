"""SQLite's hot path: the calls every job makes, each one trip to a thread of plain sqlite3.

Through SQLAlchemy and aiosqlite, every statement hops to aiosqlite's thread and back several
times (cursor, execute, fetch, close) and every connection check-in adds a rollback, on top of
SQLAlchemy's statement building: create, lease, heartbeat, complete and a few GetJob polls made
about 19 statements and 170 thread hops per job, 11.5 ms of the event loop's CPU. Here each call
is one function run on a thread that owns its connection (a writer, and a reader for GetJob),
with fixed SQL strings (sqlite3 keeps them prepared): one hop per call. The statements and the
transitions they record are those of `store`; the writer wraps each change in BEGIN IMMEDIATE,
so it takes the write lock before reading and waits (busy timeout) rather than fails.

Other calls (cancel, fail, release, list, maintenance) stay on SQLAlchemy's engine: the same
file, in WAL mode, where each side waits for the other's write lock.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

from sqlalchemy.engine.url import make_url

from services.jobs.store import (
    CANCELED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    CompleteRow,
    JobRecord,
    NewJob,
    Transition,
    jobs,
)
from services.runtime.db import SQLITE_PRAGMAS, observe_sql

T = TypeVar("T")

_NAMES = tuple(c.name for c in jobs.c)
_COLUMNS = ", ".join(_NAMES)
_JSON = ("params", "result", "outputs")

_INSERT = f"""
INSERT INTO jobs (id, tenant, kind, status, progress, params, error, request_id, attempt,
                  max_attempts, run_after, worker, created_at, updated_at, version, traceparent)
VALUES (?, ?, ?, {QUEUED}, 0.0, ?, '', ?, 0, ?, ?, '', ?, ?, 1, ?)
ON CONFLICT DO NOTHING
RETURNING {_COLUMNS}
"""
_TRANSITION = "INSERT INTO job_transitions (job_id, status, at, reason) VALUES (?, ?, ?, ?)"
_CLAIM = f"""
UPDATE jobs SET status = {RUNNING}, attempt = attempt + 1, lease_id = ?, lease_expires_at = ?,
                lease_seconds = ?, worker = ?, started_at = COALESCE(started_at, ?),
                updated_at = ?, version = version + 1
WHERE seq IN (SELECT seq FROM jobs
              WHERE status = {QUEUED} AND kind IN ({{kinds}}) AND run_after <= ?
              ORDER BY seq LIMIT ?)
  AND status = {QUEUED}
RETURNING {_COLUMNS}
"""
# With per-tenant caps: a tenant's job of a capped kind is due only while fewer than the cap
# of that tenant's jobs of the kind run (store.claim's rule). The writer runs one statement at
# a time, so the count is exact; one job per claim, as the count is read before the update.
_CLAIM_CAPPED = f"""
UPDATE jobs SET status = {RUNNING}, attempt = attempt + 1, lease_id = ?, lease_expires_at = ?,
                lease_seconds = ?, worker = ?, started_at = COALESCE(started_at, ?),
                updated_at = ?, version = version + 1
WHERE seq IN (SELECT j.seq FROM jobs AS j
              WHERE j.status = {QUEUED} AND j.kind IN ({{kinds}}) AND j.run_after <= ?
                AND (j.kind NOT IN ({{capped}})
                     OR (SELECT count(*) FROM jobs AS peer
                         WHERE peer.status = {RUNNING} AND peer.tenant = j.tenant
                           AND peer.kind = j.kind) < CASE j.kind {{cases}} END)
              ORDER BY j.seq LIMIT 1)
  AND status = {QUEUED}
RETURNING {_COLUMNS}
"""
_LEASE = "SELECT lease_id, status, lease_seconds, progress FROM jobs WHERE id = ?"
_EXTEND = f"""
UPDATE jobs SET lease_expires_at = ?, progress = ?, updated_at = ?, version = version + 1
WHERE id = ? AND lease_id = ? AND status = {RUNNING}
"""
_COMPLETE = f"""
UPDATE jobs SET status = {SUCCEEDED}, progress = 1.0, result = ?, outputs = ?, error = '',
                ended_at = ?, updated_at = ?, version = version + 1
WHERE id = ? AND lease_id = ? AND status = {RUNNING}
RETURNING {_COLUMNS}
"""
_BY_ID = f"SELECT {_COLUMNS} FROM jobs WHERE tenant = ? AND id = ?"
_BY_SEQ = f"SELECT {_COLUMNS} FROM jobs WHERE tenant = ? AND seq = ?"
_HISTORY = "SELECT status, at, reason FROM job_transitions WHERE job_id = ? ORDER BY seq"

#: Heartbeat outcomes.
LEASE_LOST, LEASE_CANCELED, LEASE_EXTENDED = 0, 1, 2


def _record(row: Sequence[Any]) -> JobRecord:
    values = dict(zip(_NAMES, row, strict=True))
    for name in _JSON:
        raw = values[name]
        values[name] = json.loads(raw) if isinstance(raw, str) else raw
    return JobRecord.from_row(values)


def _run(conn: sqlite3.Connection, statement: str, args: Sequence[Any] = ()) -> list[Any]:
    started = time.perf_counter()
    try:
        return conn.execute(statement, args).fetchall()
    finally:
        observe_sql(statement, time.perf_counter() - started)


def _transaction(conn: sqlite3.Connection, begin: str, work: Callable[[], T]) -> T:
    _run(conn, begin)
    try:
        result = work()
    except BaseException:
        _run(conn, "ROLLBACK")
        raise
    _run(conn, "COMMIT")
    return result


class SqliteHotPath:
    """Create, claim, heartbeat, complete and get on two sqlite3 connections of their own."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._local = threading.local()
        self._writer = ThreadPoolExecutor(1, "kiln-jobs-sqlite-writer")
        self._reader = ThreadPoolExecutor(1, "kiln-jobs-sqlite-reader")

    @classmethod
    def for_url(cls, database_url: str) -> SqliteHotPath | None:
        """A hot path for a SQLite file database; None for PostgreSQL and in-memory SQLite
        (another connection would open another, empty database)."""
        url = make_url(database_url)
        if not url.drivername.startswith("sqlite") or url.database in (None, "", ":memory:"):
            return None
        return cls(url.database)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # Autocommit: the transactions are the explicit BEGINs below.
            conn = sqlite3.connect(self._path, timeout=30, isolation_level=None)
            for pragma in SQLITE_PRAGMAS:
                conn.execute(pragma)
            self._local.conn = conn
        return conn

    async def _call(self, executor: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(executor, fn)

    async def insert_jobs(self, items: Sequence[NewJob], now: float) -> dict[str, JobRecord]:
        """Inserts the jobs whose (tenant, request_id) is new, with their first transition;
        answers those inserted, by id."""

        def work() -> dict[str, JobRecord]:
            conn = self._conn()
            inserted: dict[str, JobRecord] = {}
            for i in items:
                args = (
                    i.id,
                    i.tenant,
                    i.kind,
                    json.dumps(i.params),
                    i.request_id or None,
                    i.max_attempts,
                    now,
                    now,
                    now,
                    i.traceparent or None,
                )
                for row in _run(conn, _INSERT, args):
                    inserted[row[1]] = _record(row)
            for job_id in inserted:
                _run(conn, _TRANSITION, (job_id, QUEUED, now, ""))
            return inserted

        return await self._call(self._writer, lambda: _transaction(self._conn(), _BEGIN_W, work))

    async def claim(
        self,
        *,
        kinds: Sequence[str],
        limit: int,
        lease_id: str,
        lease_seconds: float,
        worker: str,
        now: float,
        caps: Mapping[str, int] | None = None,
    ) -> list[JobRecord]:
        """Leases up to `limit` due queued jobs of `kinds`, oldest first; with `caps` (kind →
        most running jobs per tenant) one job, skipping tenants at their cap."""
        marks = ", ".join("?" * len(kinds))
        head = (lease_id, now + lease_seconds, lease_seconds, worker, now, now, *kinds, now)
        if caps:
            statement = _CLAIM_CAPPED.format(
                kinds=marks,
                capped=", ".join("?" * len(caps)),
                cases=" ".join("WHEN ? THEN ?" for _ in caps),
            )
            args: tuple[Any, ...] = (*head, *caps, *(v for pair in caps.items() for v in pair))
        else:
            statement = _CLAIM.format(kinds=marks)
            args = (*head, limit)

        def work() -> list[JobRecord]:
            conn = self._conn()
            records = sorted((_record(r) for r in _run(conn, statement, args)), key=_seq)
            for r in records:
                _run(conn, _TRANSITION, (r.id, RUNNING, now, worker))
            return records

        return await self._call(self._writer, lambda: _transaction(self._conn(), _BEGIN_W, work))

    async def heartbeat(
        self,
        job_id: str,
        lease_id: str,
        *,
        progress: float,
        seconds: Callable[[float], float],
        now: float,
    ) -> tuple[int, float, bool]:
        """Extends a running job's lease to now + seconds(its lease_seconds) and records
        progress; answers the outcome, the new lease end and whether progress changed."""

        def work() -> tuple[int, float, bool]:
            conn = self._conn()
            rows = _run(conn, _LEASE, (job_id,))
            if not rows or (rows[0][0] or "") != lease_id:
                return LEASE_LOST, now, False
            _, status, current_seconds, current_progress = rows[0]
            if status == CANCELED:
                return LEASE_CANCELED, now, False
            expires = now + seconds(current_seconds or 0.0)
            args = (expires, progress, now, job_id, lease_id)
            if conn.execute(_EXTEND, args).rowcount == 0:
                return LEASE_LOST, now, False
            return LEASE_EXTENDED, expires, progress != current_progress

        return await self._call(self._writer, lambda: _transaction(self._conn(), _BEGIN_W, work))

    async def complete(self, items: Sequence[CompleteRow], now: float) -> list[JobRecord | None]:
        """Finishes the items still leased by their lease ids, in order; None for the others
        (a report repeated within one batch finishes the job once: the first)."""

        def work() -> list[JobRecord | None]:
            conn = self._conn()
            results: list[JobRecord | None] = []
            for i in items:
                args = (json.dumps(i.result), json.dumps(i.outputs), now, now, i.job_id, i.lease_id)
                rows = _run(conn, _COMPLETE, args)
                results.append(_record(rows[0]) if rows else None)
            for record in results:
                if record is not None:
                    _run(conn, _TRANSITION, (record.id, SUCCEEDED, now, ""))
            return results

        return await self._call(self._writer, lambda: _transaction(self._conn(), _BEGIN_W, work))

    async def get(self, tenant: str, *, job_id: str | None, seq: int | None) -> JobRecord | None:
        """A job with its history, read in one snapshot."""

        def work() -> JobRecord | None:
            conn = self._conn()
            rows = (
                _run(conn, _BY_ID, (tenant, job_id))
                if job_id is not None
                else _run(conn, _BY_SEQ, (tenant, seq))
            )
            if not rows:
                return None
            record = _record(rows[0])
            history = tuple(
                Transition(int(s), float(at), reason or "")
                for s, at, reason in _run(conn, _HISTORY, (record.id,))
            )
            return replace(record, history=history)

        return await self._call(self._reader, lambda: _transaction(self._conn(), "BEGIN", work))

    async def close(self) -> None:
        def shut() -> None:
            conn = getattr(self._local, "conn", None)
            if conn is not None:
                conn.close()

        for executor in (self._writer, self._reader):
            await self._call(executor, shut)
            executor.shutdown(wait=False)


_BEGIN_W = "BEGIN IMMEDIATE"


def _seq(record: JobRecord) -> int:
    return record.seq
