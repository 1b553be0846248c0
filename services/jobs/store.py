"""The jobs tables and the statements the queue runs on them.

Times are epoch seconds in double-precision columns: the same comparisons on SQLite and
PostgreSQL, no time-zone conversions on the hot path. Every change bumps `version`, which
watchers use to tell a new state from one they have seen.

Claims use `FOR UPDATE SKIP LOCKED` on PostgreSQL, so replicas and workers claiming at once
never wait on each other's rows and never take the same job; SQLite has one writer at a time,
which gives the same guarantee without the clause (SQLAlchemy leaves it out there).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

metadata = sa.MetaData()

# Status numbers are kiln.jobs.v1.JobStatus values, so rows and protos need no mapping.
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = 1, 2, 3, 4, 5
TERMINAL = (SUCCEEDED, FAILED, CANCELED)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("id", sa.String(32), nullable=False, unique=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("status", sa.SmallInteger, nullable=False),
    sa.Column("progress", sa.Float, nullable=False, default=0.0),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("result", sa.JSON, nullable=True),
    sa.Column("outputs", sa.JSON, nullable=True),
    sa.Column("error", sa.Text, nullable=False, default=""),
    sa.Column("request_id", sa.String(128), nullable=True),
    sa.Column("attempt", sa.Integer, nullable=False, default=0),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("run_after", sa.Double, nullable=False),
    sa.Column("lease_id", sa.String(32), nullable=True),
    sa.Column("lease_expires_at", sa.Double, nullable=True),
    sa.Column("lease_seconds", sa.Double, nullable=True),
    sa.Column("worker", sa.String(128), nullable=False, default=""),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("started_at", sa.Double, nullable=True),
    sa.Column("ended_at", sa.Double, nullable=True),
    sa.Column("version", sa.Integer, nullable=False, default=1),
    # W3C traceparent of the call that created the job (tracing on), for the worker's span.
    sa.Column("traceparent", sa.String(64), nullable=True),
    # NULL request ids never collide (both databases treat NULLs as distinct).
    sa.UniqueConstraint("tenant", "request_id", name="uq_jobs_tenant_request_id"),
    sa.Index("ix_jobs_claim", "status", "kind", "run_after", "seq"),
    sa.Index("ix_jobs_lease", "status", "lease_expires_at"),
    sa.Index("ix_jobs_ended", "status", "ended_at"),
    sa.Index("ix_jobs_tenant_seq", "tenant", "seq"),
)

transitions = sa.Table(
    "job_transitions",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column(
        "job_id",
        sa.String(32),
        sa.ForeignKey("jobs.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("status", sa.SmallInteger, nullable=False),
    sa.Column("at", sa.Double, nullable=False),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Index("ix_job_transitions_job", "job_id", "seq"),
)

_JOB_COLUMNS = tuple(jobs.c)


@dataclass(frozen=True)
class Transition:
    status: int
    at: float
    reason: str


@dataclass(frozen=True)
class JobRecord:
    """One row of `jobs`, as the domain sees it."""

    seq: int
    id: str
    tenant: str
    kind: str
    status: int
    progress: float
    params: dict[str, Any]
    result: dict[str, Any] | None
    outputs: list[dict[str, Any]]
    error: str
    request_id: str
    attempt: int
    max_attempts: int
    run_after: float
    lease_id: str
    lease_expires_at: float | None
    lease_seconds: float | None
    worker: str
    created_at: float
    updated_at: float
    started_at: float | None
    ended_at: float | None
    version: int
    traceparent: str = ""
    history: tuple[Transition, ...] = ()

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_row(cls, row: Row[Any] | Mapping[str, Any]) -> JobRecord:
        m = row._mapping if isinstance(row, Row) else row
        return cls(
            seq=int(m["seq"]),
            id=m["id"],
            tenant=m["tenant"],
            kind=m["kind"],
            status=int(m["status"]),
            progress=float(m["progress"]),
            params=m["params"] or {},
            result=m["result"],
            outputs=m["outputs"] or [],
            error=m["error"] or "",
            request_id=m["request_id"] or "",
            attempt=int(m["attempt"]),
            max_attempts=int(m["max_attempts"]),
            run_after=float(m["run_after"]),
            lease_id=m["lease_id"] or "",
            lease_expires_at=m["lease_expires_at"],
            lease_seconds=m["lease_seconds"],
            worker=m["worker"] or "",
            created_at=float(m["created_at"]),
            updated_at=float(m["updated_at"]),
            started_at=m["started_at"],
            ended_at=m["ended_at"],
            version=int(m["version"]),
            traceparent=m["traceparent"] or "",
        )


@dataclass(frozen=True)
class NewJob:
    """A job to insert."""

    id: str
    tenant: str
    kind: str
    params: dict[str, Any]
    request_id: str
    max_attempts: int
    traceparent: str = ""


@dataclass(frozen=True)
class CompleteRow:
    """A worker's report that a job succeeded."""

    job_id: str
    lease_id: str
    result: dict[str, Any]
    outputs: list[dict[str, Any]]


def _insert(dialect: str) -> Any:
    # Both dialects spell "insert, skipping rows whose unique key exists" the same way.
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(jobs)


async def insert_jobs(
    conn: AsyncConnection, items: Sequence[NewJob], now: float
) -> dict[str, JobRecord]:
    """Inserts the jobs whose (tenant, request_id) is new; answers those inserted, by id."""
    if not items:
        return {}
    rows = [
        {
            "id": item.id,
            "tenant": item.tenant,
            "kind": item.kind,
            "status": QUEUED,
            "progress": 0.0,
            "params": item.params,
            "result": None,
            "outputs": None,
            "error": "",
            "request_id": item.request_id or None,
            "attempt": 0,
            "max_attempts": item.max_attempts,
            "run_after": now,
            "worker": "",
            "created_at": now,
            "updated_at": now,
            "version": 1,
            "traceparent": item.traceparent or None,
        }
        for item in items
    ]
    statement = _insert(conn.dialect.name).on_conflict_do_nothing()
    await conn.execute(statement, rows)
    ids = [item.id for item in items]
    found = await conn.execute(sa.select(*_JOB_COLUMNS).where(jobs.c.id.in_(ids)))
    inserted = {row.id: JobRecord.from_row(row) for row in found}
    await add_transitions(
        conn, [(item.id, QUEUED, now, "") for item in items if item.id in inserted]
    )
    return inserted


async def add_transitions(
    conn: AsyncConnection, entries: Iterable[tuple[str, int, float, str]]
) -> None:
    rows = [
        {"job_id": job_id, "status": status, "at": at, "reason": reason}
        for job_id, status, at, reason in entries
    ]
    if rows:
        await conn.execute(transitions.insert(), rows)


async def select_by_request_ids(
    conn: AsyncConnection, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], JobRecord]:
    """Existing jobs by (tenant, request_id)."""
    wanted = set(keys)
    if not wanted:
        return {}
    condition = sa.or_(
        *(sa.and_(jobs.c.tenant == t, jobs.c.request_id == r) for t, r in sorted(wanted))
    )
    result = await conn.execute(sa.select(*_JOB_COLUMNS).where(condition))
    records = [JobRecord.from_row(row) for row in result]
    return {(r.tenant, r.request_id): r for r in records}


async def select_jobs(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, JobRecord]:
    if not ids:
        return {}
    result = await conn.execute(sa.select(*_JOB_COLUMNS).where(jobs.c.id.in_(list(ids))))
    return {row.id: JobRecord.from_row(row) for row in result}


async def select_job(
    conn: AsyncConnection,
    tenant: str,
    *,
    job_id: str | None = None,
    seq: int | None = None,
    with_history: bool = True,
) -> JobRecord | None:
    query = sa.select(*_JOB_COLUMNS).where(jobs.c.tenant == tenant)
    query = (
        query.where(jobs.c.id == job_id) if job_id is not None else query.where(jobs.c.seq == seq)
    )
    row = (await conn.execute(query)).first()
    if row is None:
        return None
    record = JobRecord.from_row(row)
    if not with_history:
        return record
    histories = await select_histories(conn, [record.id])
    return _with_history(record, histories.get(record.id, ()))


async def select_histories(
    conn: AsyncConnection, ids: Sequence[str]
) -> dict[str, tuple[Transition, ...]]:
    if not ids:
        return {}
    result = await conn.execute(
        sa.select(
            transitions.c.job_id, transitions.c.status, transitions.c.at, transitions.c.reason
        )
        .where(transitions.c.job_id.in_(list(ids)))
        .order_by(transitions.c.seq)
    )
    histories: dict[str, list[Transition]] = {}
    for row in result:
        histories.setdefault(row.job_id, []).append(
            Transition(int(row.status), float(row.at), row.reason or "")
        )
    return {job_id: tuple(items) for job_id, items in histories.items()}


def _with_history(record: JobRecord, history: tuple[Transition, ...]) -> JobRecord:
    return replace(record, history=history)


async def list_jobs(
    conn: AsyncConnection,
    tenant: str,
    *,
    kind: str,
    status: int,
    before_seq: int | None,
    limit: int,
) -> list[JobRecord]:
    query = sa.select(*_JOB_COLUMNS).where(jobs.c.tenant == tenant)
    if kind:
        query = query.where(jobs.c.kind == kind)
    if status:
        query = query.where(jobs.c.status == status)
    if before_seq is not None:
        query = query.where(jobs.c.seq < before_seq)
    rows = (await conn.execute(query.order_by(jobs.c.seq.desc()).limit(limit))).all()
    records = [JobRecord.from_row(row) for row in rows]
    histories = await select_histories(conn, [r.id for r in records])
    return [_with_history(r, histories.get(r.id, ())) for r in records]


async def claim(
    conn: AsyncConnection,
    *,
    kinds: Sequence[str],
    limit: int,
    lease_id: str,
    lease_seconds: float,
    worker: str,
    now: float,
    caps: Mapping[str, int] | None = None,
) -> list[JobRecord]:
    """Leases up to `limit` due queued jobs of `kinds`, oldest first. With `caps` (kind → most
    running jobs per tenant), a tenant's job of a capped kind is skipped while the tenant
    has that many of the kind running."""
    conditions = [jobs.c.status == QUEUED, jobs.c.kind.in_(list(kinds)), jobs.c.run_after <= now]
    if caps:
        peer = jobs.alias("peer")
        running = (
            sa.select(sa.func.count())
            .select_from(peer)
            .where(
                peer.c.status == RUNNING,
                peer.c.tenant == jobs.c.tenant,
                peer.c.kind == jobs.c.kind,
            )
            .scalar_subquery()
        )
        cap = sa.case(*((jobs.c.kind == kind, n) for kind, n in caps.items()), else_=None)
        conditions.append(sa.or_(jobs.c.kind.not_in(list(caps)), running < cap))
    due = (
        sa.select(jobs.c.seq)
        .where(*conditions)
        .order_by(jobs.c.seq)
        .limit(limit)
        .with_for_update(skip_locked=True)
        # Materialized, so PostgreSQL runs it once: a subquery it re-ran per outer row would
        # skip the rows it had just locked and claim more than `limit` jobs.
        .cte("due")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    statement = (
        jobs.update()
        .where(jobs.c.seq.in_(sa.select(due.c.seq)), jobs.c.status == QUEUED)
        .values(
            status=RUNNING,
            attempt=jobs.c.attempt + 1,
            lease_id=lease_id,
            lease_expires_at=now + lease_seconds,
            lease_seconds=lease_seconds,
            worker=worker,
            started_at=sa.func.coalesce(jobs.c.started_at, now),
            updated_at=now,
            version=jobs.c.version + 1,
        )
        .returning(*_JOB_COLUMNS)
    )
    records = [JobRecord.from_row(row) for row in await conn.execute(statement)]
    records.sort(key=lambda r: r.seq)
    await add_transitions(conn, [(r.id, RUNNING, now, worker) for r in records])
    return records


async def update_leased(
    conn: AsyncConnection,
    job_id: str,
    lease_id: str,
    values: Mapping[str, Any],
    now: float,
) -> JobRecord | None:
    """Changes a job only while `lease_id` holds it and it runs; None when it does not."""
    statement = (
        jobs.update()
        .where(jobs.c.id == job_id, jobs.c.lease_id == lease_id, jobs.c.status == RUNNING)
        .values(**values, updated_at=now, version=jobs.c.version + 1)
        .returning(*_JOB_COLUMNS)
    )
    row = (await conn.execute(statement)).first()
    return None if row is None else JobRecord.from_row(row)


async def update_job(
    conn: AsyncConnection,
    job_id: str,
    *,
    expect_status: Sequence[int],
    values: Mapping[str, Any],
    now: float,
) -> JobRecord | None:
    """Changes a job only while it is in one of `expect_status`."""
    statement = (
        jobs.update()
        .where(jobs.c.id == job_id, jobs.c.status.in_(list(expect_status)))
        .values(**values, updated_at=now, version=jobs.c.version + 1)
        .returning(*_JOB_COLUMNS)
    )
    row = (await conn.execute(statement)).first()
    return None if row is None else JobRecord.from_row(row)


async def select_expired_leases(conn: AsyncConnection, now: float, limit: int) -> list[JobRecord]:
    query = (
        sa.select(*_JOB_COLUMNS)
        .where(jobs.c.status == RUNNING, jobs.c.lease_expires_at < now)
        .order_by(jobs.c.lease_expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [JobRecord.from_row(row) for row in await conn.execute(query)]


async def select_expired_jobs(conn: AsyncConnection, before: float, limit: int) -> list[str]:
    query = (
        sa.select(jobs.c.id)
        .where(jobs.c.status.in_(TERMINAL), jobs.c.ended_at < before)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [row.id for row in await conn.execute(query)]


async def delete_jobs(conn: AsyncConnection, ids: Sequence[str]) -> None:
    if ids:
        # Transitions first: SQLite enforces the cascade only with foreign keys on, and an
        # explicit delete does not depend on it.
        await conn.execute(transitions.delete().where(transitions.c.job_id.in_(list(ids))))
        await conn.execute(jobs.delete().where(jobs.c.id.in_(list(ids))))


async def earliest_run_after(conn: AsyncConnection, kinds: Sequence[str]) -> float | None:
    """When the next queued job of `kinds` becomes due (retries wait out their backoff)."""
    query = sa.select(sa.func.min(jobs.c.run_after)).where(
        jobs.c.status == QUEUED, jobs.c.kind.in_(list(kinds))
    )
    value = (await conn.execute(query)).scalar()
    return None if value is None else float(value)


async def count_by_status(conn: AsyncConnection) -> list[tuple[str, int, int, float]]:
    """(kind, status, count, earliest run_after) of the unfinished jobs, for the queue gauges:
    one pass over the claim index's leading columns."""
    query = (
        sa.select(jobs.c.kind, jobs.c.status, sa.func.count(), sa.func.min(jobs.c.run_after))
        .where(jobs.c.status.in_([QUEUED, RUNNING]))
        .group_by(jobs.c.kind, jobs.c.status)
    )
    return [(row[0], int(row[1]), int(row[2]), float(row[3])) for row in await conn.execute(query)]
