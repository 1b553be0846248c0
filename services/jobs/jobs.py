"""The job queue: the state machine, leases, retries, watching and retention.

    create ──► QUEUED ──lease──► RUNNING ──complete──► SUCCEEDED
                 ▲  │              │  ├────fail (final)──► FAILED
                 │  │              │  └──lease expired on the last attempt──► FAILED
                 │  │              └──fail (retryable) / lease expired──► QUEUED (after backoff)
                 │  └──────cancel──────┬──► CANCELED
                 └───release───────────┘   (a running job's worker hears it at its heartbeat)

Every change is one transaction that also records the transition, and every worker call names
its lease: a worker whose lease ended (expired and given to another, or the job cancelled)
changes nothing. Creates and completions from concurrent callers are group-committed, one
transaction per batch, because those are the calls every job makes.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy.ext.asyncio import AsyncEngine

from services.jobs import store
from services.jobs.pg_hot_path import PgHotPath
from services.jobs.signals import Signals
from services.jobs.sqlite_hot_path import LEASE_CANCELED, LEASE_LOST, SqliteHotPath
from services.jobs.store import (
    CANCELED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    CompleteRow,
    JobRecord,
    NewJob,
    Transition,
)
from services.runtime.batching import GroupCommit
from services.runtime.blob_keys import check_output_name, output_key
from services.runtime.config import JobsConfig
from services.runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    JobCanceled,
    KilnError,
    LeaseLost,
    MissingField,
    NotFound,
)
from services.runtime.storage import BlobStore
from services.runtime.waiting import wait_either

log = logging.getLogger("kiln.jobs")

STATUS_NAMES = {
    QUEUED: "queued",
    RUNNING: "running",
    SUCCEEDED: "succeeded",
    FAILED: "failed",
    CANCELED: "canceled",
}

JOBS_CREATED = Counter("kiln_jobs_created_total", "Jobs created.", ["kind"])
JOBS_FINISHED = Counter("kiln_jobs_finished_total", "Jobs that ended.", ["kind", "status"])
JOBS_RETRIED = Counter(
    "kiln_jobs_retried_total", "Attempts that ended and queued the job again.", ["kind", "cause"]
)
JOBS_QUEUE = Gauge(
    "kiln_jobs_unfinished", "Unfinished jobs by kind and status.", ["kind", "status"]
)
OLDEST_QUEUED = Gauge(
    "kiln_jobs_oldest_queued_age_seconds",
    "How long the longest-waiting queued job of a kind has been due (since its create, or the "
    "end of its retry backoff); 0 when every queued job of the kind still waits out a backoff.",
    ["kind"],
)
SUBMIT_TO_START = Histogram(
    "kiln_jobs_submit_to_start_seconds",
    "From create (or the end of a retry's backoff) to a worker's lease.",
    ["kind"],
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

_KIND = re.compile(r"[a-z][a-z0-9._-]{0,63}")
MAX_REQUEST_ID = 128
MAX_TRACEPARENT = 64
#: Most jobs one BatchCreateJobs or CompleteJobs call carries.
MAX_BATCH = 1000
MAX_ATTEMPTS_LIMIT = 100
MAX_LEASE_BATCH = 100
MAX_WAIT_SECONDS = 60.0
DEFAULT_LEASE_SECONDS = 30.0
MAX_LEASE_SECONDS = 3600.0
DEFAULT_PAGE = 50
MAX_PAGE = 1000
#: An idle lease re-checks the table this often: jobs whose retry backoff ended on another
#: replica announce nothing.
LEASE_POLL_SECONDS = 1.0
#: A watcher re-reads its job at least this often, in case a notification was lost.
WATCH_POLL_SECONDS = 5.0
REAP_BATCH = 100
PURGE_BATCH = 200
#: Maintenance rounds between purges.
PURGE_EVERY = 60
#: Maintenance rounds between samples of the queue gauges (one GROUP BY on the claim index).
SAMPLE_EVERY = 5


#: (kind, params, request_id, max_attempts) of one job to create.
JobSpec = tuple[str, dict[str, Any], str, int]


def new_job_id() -> str:
    """ "job_" and 25 random letters and digits, like Scenario's ids."""
    while True:
        # token_urlsafe is one C call; dropping its two symbols keeps letters and digits.
        raw = secrets.token_urlsafe(24).replace("-", "").replace("_", "")
        if len(raw) >= 25:
            return "job_" + raw[:25]


def new_lease_id() -> str:
    return secrets.token_hex(16)


class _FastPath(Protocol):
    """The calls both databases' hot paths (`PgHotPath`, `SqliteHotPath`) serve alike."""

    async def insert_jobs(self, items: Sequence[NewJob], now: float) -> dict[str, JobRecord]: ...

    async def claim(
        self,
        *,
        kinds: Sequence[str],
        limit: int,
        lease_id: str,
        lease_seconds: float,
        worker: str,
        now: float,
    ) -> list[JobRecord]: ...

    async def close(self) -> None: ...


class JobQueue:
    """Jobs of every tenant in one database; client calls are scoped by the tenant passed in."""

    def __init__(
        self,
        engine: AsyncEngine,
        signals: Signals,
        config: JobsConfig,
        blobs: BlobStore | None = None,
        *,
        hot_path: PgHotPath | None = None,
        sqlite_path: SqliteHotPath | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self._hot = hot_path
        self._lite = sqlite_path
        #: What both hot paths do alike (create, claim, close); the rest differs per database.
        self._fast: _FastPath | None = hot_path or sqlite_path
        self._signals = signals
        self._config = config
        self._caps = config.tenant_caps()
        self._blobs = blobs
        self._clock = clock
        self._creates: GroupCommit[NewJob, JobRecord] = GroupCommit(self._create_batch)
        self._completions: GroupCommit[CompleteRow, JobRecord] = GroupCommit(self._complete_batch)
        self._maintenance: asyncio.Task[None] | None = None
        self._timers: set[asyncio.TimerHandle] = set()

    # --- clients -----------------------------------------------------------------------------

    async def create(
        self,
        tenant: str,
        *,
        kind: str,
        params: dict[str, Any],
        request_id: str = "",
        max_attempts: int = 0,
        traceparent: str = "",
    ) -> JobRecord:
        """Queues a job; `traceparent` (W3C) is the caller's trace, which the job's worker
        joins."""
        return await self._creates.submit(
            self._new_job(tenant, kind, params, request_id, max_attempts, traceparent=traceparent)
        )

    async def create_many(
        self, tenant: str, specs: Sequence[JobSpec], *, traceparent: str = ""
    ) -> list[JobRecord]:
        """Creates all of `specs` in one statement, or none when any is invalid (AIP-233)."""
        if not specs:
            raise MissingField("requests must hold at least one job", field="requests")
        if len(specs) > MAX_BATCH:
            raise InvalidArgument(
                f"at most {MAX_BATCH} jobs per batch, got {len(specs)}", field="requests"
            )
        items = [self._new_job(tenant, *spec, traceparent=traceparent) for spec in specs]
        results = await self._create_batch(items)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [r for r in results if isinstance(r, JobRecord)]

    def _new_job(
        self,
        tenant: str,
        kind: str,
        params: dict[str, Any],
        request_id: str,
        max_attempts: int,
        *,
        traceparent: str = "",
    ) -> NewJob:
        if not kind:
            raise MissingField("job.kind is required", field="job.kind")
        if not _KIND.fullmatch(kind):
            raise InvalidArgument(
                "job.kind must be lower-case letters, digits, '.', '_' or '-' (at most 64), "
                "starting with a letter",
                field="job.kind",
            )
        if len(request_id) > MAX_REQUEST_ID:
            raise InvalidArgument(
                f"request_id is longer than {MAX_REQUEST_ID} characters", field="request_id"
            )
        if not 0 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise InvalidArgument(
                f"job.max_attempts must be between 0 (the default) and {MAX_ATTEMPTS_LIMIT}",
                field="job.max_attempts",
            )
        return NewJob(
            id=new_job_id(),
            tenant=tenant,
            kind=kind,
            params=params,
            request_id=request_id,
            max_attempts=max_attempts or self._config.max_attempts,
            # Only a well-formed W3C value (55 characters) fits the column and means anything.
            traceparent=traceparent if len(traceparent) <= MAX_TRACEPARENT else "",
        )

    async def _create_batch(self, items: Sequence[NewJob]) -> list[JobRecord | BaseException]:
        now = self._clock()
        if self._fast is not None:
            inserted = await self._fast.insert_jobs(items, now)
            new_kinds = collections.Counter(i.kind for i in items if i.id in inserted)
            self._signals.publish(kinds=new_kinds)
            earlier: dict[tuple[str, str], JobRecord] = {}
            histories: dict[str, tuple[Transition, ...]] = {}
            if len(inserted) < len(items):
                async with self._engine.connect() as conn:
                    earlier, histories = await self._earlier(conn, items, inserted)
        else:
            async with self._engine.begin() as conn:
                inserted = await store.insert_jobs(conn, items, now)
                new_kinds = collections.Counter(i.kind for i in items if i.id in inserted)
                earlier, histories = await self._earlier(conn, items, inserted)
                await self._signals.announce(conn, kinds=new_kinds)
        self._signals.wake_local(kinds=new_kinds.keys(), limits=new_kinds)
        results: list[JobRecord | BaseException] = []
        for item in items:
            record = inserted.get(item.id)
            if record is not None:
                JOBS_CREATED.labels(item.kind).inc()
                results.append(replace(record, history=(Transition(QUEUED, now, ""),)))
                continue
            found = earlier.get((item.tenant, item.request_id))
            if found is None:  # a conflict on a row deleted since: vanishingly rare
                results.append(FailedPrecondition("request_id conflicts with a purged job"))
            else:
                results.append(replace(found, history=histories.get(found.id, ())))
        return results

    @staticmethod
    async def _earlier(
        conn: Any, items: Sequence[NewJob], inserted: dict[str, JobRecord]
    ) -> tuple[dict[tuple[str, str], JobRecord], dict[str, tuple[Transition, ...]]]:
        """The jobs that earlier requests with the same request_id created."""
        repeats = [(i.tenant, i.request_id) for i in items if i.id not in inserted]
        if not repeats:
            return {}, {}
        earlier = await store.select_by_request_ids(conn, repeats)
        histories = await store.select_histories(conn, [r.id for r in earlier.values()])
        return earlier, histories

    async def get(self, tenant: str, *, job_id: str = "", seq: int = 0) -> JobRecord:
        if not job_id and not seq:
            raise MissingField("job_id is required", field="job_id")
        if self._lite is not None:
            record = await self._lite.get(
                tenant, job_id=job_id or None, seq=None if job_id else seq
            )
        else:
            async with self._engine.connect() as conn:
                record = await store.select_job(
                    conn, tenant, job_id=job_id or None, seq=None if job_id else seq
                )
        if record is None:
            raise NotFound(f"job {job_id or seq} not found", field="job_id")
        return record

    async def list_jobs(
        self, tenant: str, *, kind: str, status: int, page_size: int, page_token: str
    ) -> tuple[list[JobRecord], str]:
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative", field="page_size")
        limit = min(page_size or DEFAULT_PAGE, MAX_PAGE)
        before = _decode_page_token(page_token) if page_token else None
        async with self._engine.connect() as conn:
            records = await store.list_jobs(
                conn, tenant, kind=kind, status=status, before_seq=before, limit=limit + 1
            )
        more = len(records) > limit
        records = records[:limit]
        token = _encode_page_token(records[-1].seq) if more and records else ""
        return records, token

    async def cancel(self, tenant: str, job_id: str) -> JobRecord:
        current = await self.get(tenant, job_id=job_id)
        if current.status == CANCELED:
            return current
        if current.terminal:
            raise FailedPrecondition(
                f"job {job_id} already ended ({STATUS_NAMES[current.status]}); "
                "only queued or running jobs can be cancelled"
            )
        now = self._clock()
        async with self._engine.begin() as conn:
            # The lease stays on the row: the worker's next heartbeat learns of the cancel.
            record = await store.update_job(
                conn,
                job_id,
                expect_status=[QUEUED, RUNNING],
                values={"status": CANCELED, "ended_at": now},
                now=now,
            )
            if record is not None:
                await store.add_transitions(
                    conn, [(job_id, CANCELED, now, "cancelled by its owner")]
                )
                await self._signals.announce(conn, job_ids=[job_id])
        if record is None:  # it changed meanwhile: answer by its state now
            return await self.cancel(tenant, job_id)
        JOBS_FINISHED.labels(record.kind, "canceled").inc()
        self._signals.wake_local(job_ids=[job_id])
        return await self.get(tenant, job_id=job_id)

    async def watch(self, tenant: str, job_id: str) -> AsyncIterator[JobRecord]:
        """The job now, then after each change, ending with its final state."""
        with self._signals.job_waiter(job_id) as changed:
            # Registered before the first read, so no change can slip between the two.
            record = await self.get(tenant, job_id=job_id)
            yield record
            seen = record.version
            while not record.terminal:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), WATCH_POLL_SECONDS)
                changed.clear()
                record = await self.get(tenant, job_id=job_id)
                if record.version != seen:
                    seen = record.version
                    yield record

    async def open_output(
        self, tenant: str, job_id: str, name: str
    ) -> tuple[dict[str, Any], AsyncIterator[bytes]]:
        """An output's description and its bytes."""
        if not name:
            raise MissingField("name is required", field="name")
        check_output_name(name)
        record = await self.get(tenant, job_id=job_id)
        output = next((o for o in record.outputs if o.get("name") == name), None)
        if output is None or record.status != SUCCEEDED:
            raise NotFound(f"job {job_id} has no output named {name!r}", field="name")
        if self._blobs is None:
            raise FailedPrecondition("this jobs replica has no blob store")
        stream = self._blobs.get_stream(output_key(job_id, name))
        return output, stream

    # --- workers -----------------------------------------------------------------------------

    async def lease(
        self,
        *,
        kinds: Sequence[str],
        max_jobs: int,
        lease_seconds: float,
        wait_seconds: float,
        worker: str,
        stop: asyncio.Event | None = None,
    ) -> tuple[list[JobRecord], str]:
        """Claims due jobs, waiting up to `wait_seconds` for some; answers them and the lease id.
        A `stop` set while it waits ends the wait with no jobs (a claim under way finishes)."""
        kinds = [k for k in dict.fromkeys(kinds) if k]
        if not kinds:
            raise MissingField("kinds must name at least one job kind", field="kinds")
        if max_jobs < 0 or lease_seconds < 0 or wait_seconds < 0:
            raise InvalidArgument("max_jobs, lease_duration and wait must not be negative")
        limit = min(max_jobs or 1, MAX_LEASE_BATCH)
        lease_seconds = min(lease_seconds or DEFAULT_LEASE_SECONDS, MAX_LEASE_SECONDS)
        deadline = time.monotonic() + min(wait_seconds, MAX_WAIT_SECONDS)
        lease_id = new_lease_id()
        with self._signals.kinds_waiter(kinds) as queued:
            while True:
                queued.clear()
                now = self._clock()
                claimed = await self._claim(
                    kinds,
                    limit=limit,
                    lease_id=lease_id,
                    lease_seconds=lease_seconds,
                    worker=worker,
                    now=now,
                )
                if claimed:
                    self._signals.wake_local(job_ids=[r.id for r in claimed])
                    for record in claimed:
                        SUBMIT_TO_START.labels(record.kind).observe(
                            max(0.0, now - record.run_after)
                        )
                    return claimed, lease_id
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (stop is not None and stop.is_set()):
                    return [], lease_id
                if stop is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(queued.wait(), min(remaining, LEASE_POLL_SECONDS))
                else:
                    await wait_either(queued, stop, min(remaining, LEASE_POLL_SECONDS))

    async def _claim(
        self,
        kinds: Sequence[str],
        *,
        limit: int,
        lease_id: str,
        lease_seconds: float,
        worker: str,
        now: float,
    ) -> list[JobRecord]:
        arguments: dict[str, Any] = {
            "kinds": kinds,
            "limit": limit,
            "lease_id": lease_id,
            "lease_seconds": lease_seconds,
            "worker": worker[:128],
            "now": now,
        }
        caps = {kind: self._caps[kind] for kind in kinds if kind in self._caps}
        if caps and self._lite is None:
            # One job per claim: the running counts the cap is checked against are read
            # before the claim, so a batch could start several of one tenant's jobs at once.
            # On PostgreSQL the general statement serves the capped (expensive) kinds; SQLite's
            # hot path checks caps in its own claim, below.
            arguments["limit"] = 1
            async with self._engine.begin() as conn:
                claimed = await store.claim(conn, **arguments, caps=caps)
                if claimed and self._hot is None:
                    await self._signals.announce(conn, job_ids=[r.id for r in claimed])
            if claimed and self._hot is not None:
                # As the hot path's own claims do (its notifications go through its pool).
                self._signals.publish(job_ids=[r.id for r in claimed])
            return claimed
        if self._fast is not None:
            if self._lite is not None:
                claimed = await self._lite.claim(**arguments, caps=caps)
            else:
                claimed = await self._fast.claim(**arguments)
            # Nothing to send on SQLite: it has no other replica (Signals knows none).
            self._signals.publish(job_ids=[r.id for r in claimed])
            return claimed
        async with self._engine.begin() as conn:
            claimed = await store.claim(conn, **arguments)
            if claimed:
                await self._signals.announce(conn, job_ids=[r.id for r in claimed])
        return claimed

    async def heartbeat(
        self, job_id: str, lease_id: str, *, progress: float, lease_seconds: float
    ) -> tuple[bool, float]:
        """Extends the lease; answers (cancelled, lease end)."""
        _check_lease_ref(job_id, lease_id)
        if not 0.0 <= progress <= 1.0:
            raise InvalidArgument("progress must be between 0 and 1", field="progress")
        now = self._clock()

        def seconds_for(current: float | None) -> float:
            return min(lease_seconds or current or DEFAULT_LEASE_SECONDS, 3600)

        if self._lite is not None:
            outcome, expires, moved = await self._lite.heartbeat(
                job_id, lease_id, progress=progress, seconds=seconds_for, now=now
            )
            if outcome == LEASE_LOST:
                raise LeaseLost(f"the lease on job {job_id} has ended")
            if outcome == LEASE_CANCELED:
                return True, now
            if moved:
                self._signals.wake_local(job_ids=[job_id])
            return False, expires
        async with self._engine.begin() as conn:
            current = (await store.select_jobs(conn, [job_id])).get(job_id)
            if current is None or current.lease_id != lease_id:
                raise LeaseLost(f"the lease on job {job_id} has ended")
            if current.status == CANCELED:
                return True, now
            seconds = seconds_for(current.lease_seconds)
            values: dict[str, Any] = {"lease_expires_at": now + seconds}
            if progress != current.progress:
                values["progress"] = progress
            record = await store.update_leased(conn, job_id, lease_id, values, now)
            if record is None:
                raise LeaseLost(f"the lease on job {job_id} has ended")
            if "progress" in values:
                await self._signals.announce(conn, job_ids=[job_id])
        if "progress" in values:
            self._signals.wake_local(job_ids=[job_id])
        return False, now + seconds

    async def complete(
        self,
        job_id: str,
        lease_id: str,
        *,
        result: dict[str, Any],
        outputs: list[dict[str, Any]],
    ) -> JobRecord:
        row = _completion(job_id, lease_id, result, outputs)
        return await self._completions.submit(row)

    async def complete_many(
        self, completions: Sequence[tuple[str, str, dict[str, Any], list[dict[str, Any]]]]
    ) -> list[JobRecord | KilnError]:
        """Finishes several jobs in one statement; each item succeeds or fails on its own."""
        if not completions:
            raise MissingField("completions must hold at least one", field="completions")
        if len(completions) > MAX_BATCH:
            raise InvalidArgument(f"at most {MAX_BATCH} completions per call", field="completions")
        outcomes: list[JobRecord | KilnError | None] = []
        valid: list[CompleteRow] = []
        for job_id, lease_id, result, outputs in completions:
            try:
                valid.append(_completion(job_id, lease_id, result, outputs))
                outcomes.append(None)  # filled from the batch below
            except KilnError as exc:
                outcomes.append(exc)
        finished = iter(await self._complete_batch(valid) if valid else [])
        merged: list[JobRecord | KilnError] = []
        for outcome in outcomes:
            if outcome is not None:
                merged.append(outcome)
                continue
            done = next(finished)
            if isinstance(done, (JobRecord, KilnError)):
                merged.append(done)
            else:  # the batch functions only answer Kiln errors per item
                merged.append(LeaseLost(str(done)))
        return merged

    async def _complete_batch(
        self, items: Sequence[CompleteRow]
    ) -> list[JobRecord | BaseException]:
        now = self._clock()
        results: list[JobRecord | BaseException] = []
        if self._hot is not None:
            finished = await self._hot.complete(items, now)
            self._signals.publish(job_ids=list(finished))
            refused: list[CompleteRow] = []
            for item in items:
                # A report repeated within one batch finished the job once: the first wins.
                record = finished.get(item.job_id)
                if record is None or record.lease_id != item.lease_id:
                    record = None
                    refused.append(item)
                else:
                    del finished[item.job_id]
                results.append(record or LeaseLost(""))
            if refused:
                async with self._engine.connect() as conn:
                    reasons = {
                        id(item): await self._lease_refusal(conn, item.job_id, item.lease_id)
                        for item in refused
                    }
                results = [
                    reasons[id(item)] if isinstance(result, LeaseLost) else result
                    for item, result in zip(items, results, strict=True)
                ]
        elif self._lite is not None:
            for item, record in zip(items, await self._lite.complete(items, now), strict=True):
                if record is None:
                    async with self._engine.connect() as conn:
                        results.append(await self._lease_refusal(conn, item.job_id, item.lease_id))
                else:
                    results.append(record)
        else:
            async with self._engine.begin() as conn:
                for item in items:
                    record = await store.update_leased(
                        conn,
                        item.job_id,
                        item.lease_id,
                        {
                            "status": SUCCEEDED,
                            "progress": 1.0,
                            "result": item.result,
                            "outputs": item.outputs,
                            "error": "",
                            "ended_at": now,
                        },
                        now,
                    )
                    results.append(
                        record or await self._lease_refusal(conn, item.job_id, item.lease_id)
                    )
                done = [r for r in results if isinstance(r, JobRecord)]
                await store.add_transitions(conn, [(r.id, SUCCEEDED, now, "") for r in done])
                await self._signals.announce(conn, job_ids=[r.id for r in done])
        done = [r for r in results if isinstance(r, JobRecord)]
        self._signals.wake_local(job_ids=[r.id for r in done])
        for record in done:
            JOBS_FINISHED.labels(record.kind, "succeeded").inc()
        return results

    async def fail(self, job_id: str, lease_id: str, *, error: str, retryable: bool) -> JobRecord:
        _check_lease_ref(job_id, lease_id)
        if not error:
            raise MissingField("error is required", field="error")
        now = self._clock()
        async with self._engine.begin() as conn:
            current = (await store.select_jobs(conn, [job_id])).get(job_id)
            if current is None or current.lease_id != lease_id or current.status != RUNNING:
                raise await self._lease_refusal(conn, job_id, lease_id)
            record, reason = await self._end_attempt(conn, current, error[:4000], retryable, now)
        self._after_attempt(record)
        del reason
        return record

    async def release(self, job_id: str, lease_id: str) -> JobRecord:
        _check_lease_ref(job_id, lease_id)
        now = self._clock()
        async with self._engine.begin() as conn:
            current = (await store.select_jobs(conn, [job_id])).get(job_id)
            if current is None or current.lease_id != lease_id or current.status != RUNNING:
                raise await self._lease_refusal(conn, job_id, lease_id)
            record = await store.update_leased(
                conn,
                job_id,
                lease_id,
                {
                    "status": QUEUED,
                    "attempt": max(0, current.attempt - 1),
                    "run_after": now,
                    **_NO_LEASE,
                },
                now,
            )
            if record is None:
                raise await self._lease_refusal(conn, job_id, lease_id)
            await store.add_transitions(conn, [(job_id, QUEUED, now, "released by its worker")])
            await self._signals.announce(conn, kinds=[record.kind], job_ids=[job_id])
        self._signals.wake_local(kinds=[record.kind], job_ids=[job_id])
        return record

    async def _lease_refusal(self, conn: Any, job_id: str, lease_id: str) -> Exception:
        current = (await store.select_jobs(conn, [job_id])).get(job_id)
        if current is not None and current.status == CANCELED and current.lease_id == lease_id:
            return JobCanceled(f"job {job_id} was cancelled by its owner")
        return LeaseLost(f"the lease on job {job_id} has ended")

    async def _end_attempt(
        self, conn: Any, current: JobRecord, error: str, retryable: bool, now: float
    ) -> tuple[JobRecord, str]:
        """Queues the job again with backoff while attempts remain, else fails it."""
        if retryable and current.attempt < current.max_attempts:
            delay = self.backoff(current.attempt)
            values: dict[str, Any] = {
                "status": QUEUED,
                "run_after": now + delay,
                "error": error,
                **_NO_LEASE,
            }
            status, reason = QUEUED, f"retry in {delay:g} s after: {error}"
        else:
            values = {"status": FAILED, "error": error, "ended_at": now, **_NO_LEASE}
            status, reason = FAILED, error
        record = await store.update_job(
            conn, current.id, expect_status=[RUNNING], values=values, now=now
        )
        if record is None:
            raise LeaseLost(f"the lease on job {current.id} has ended")
        await store.add_transitions(conn, [(current.id, status, now, reason[:4000])])
        await self._signals.announce(conn, job_ids=[current.id])
        return record, reason

    def _after_attempt(self, record: JobRecord) -> None:
        self._signals.wake_local(job_ids=[record.id])
        if record.status == QUEUED:
            JOBS_RETRIED.labels(record.kind, "error").inc()
            self._wake_when_due(record)
        else:
            JOBS_FINISHED.labels(record.kind, STATUS_NAMES[record.status]).inc()

    def _wake_when_due(self, record: JobRecord) -> None:
        """Wakes this replica's waiting workers when a retry's backoff ends."""
        loop = asyncio.get_running_loop()
        delay = max(0.0, record.run_after - self._clock())
        kind = record.kind

        def wake() -> None:
            self._timers.discard(handle)
            self._signals.wake_local(kinds=[kind])

        handle = loop.call_later(delay, wake)
        self._timers.add(handle)

    def backoff(self, attempt: int) -> float:
        """Delay before the retry that follows attempt number `attempt` (1-based)."""
        base = self._config.backoff_seconds * (2 ** max(0, attempt - 1))
        return float(min(base, self._config.backoff_max_seconds))

    # --- maintenance -------------------------------------------------------------------------

    async def reap(self) -> int:
        """Requeues (or fails, on the last attempt) jobs whose lease expired; answers how many."""
        now = self._clock()
        ended: list[JobRecord] = []
        async with self._engine.begin() as conn:
            for current in await store.select_expired_leases(conn, now, REAP_BATCH):
                error = (
                    f"lease expired: worker {current.worker or '?'} stopped heartbeating "
                    f"(attempt {current.attempt} of {current.max_attempts})"
                )
                if current.error and current.attempt >= current.max_attempts:
                    error = f"{error}; earlier error: {current.error}"
                record, _ = await self._end_attempt(conn, current, error, True, now)
                ended.append(record)
        for record in ended:
            if record.status == QUEUED:
                JOBS_RETRIED.labels(record.kind, "lease_expired").inc()
                self._signals.wake_local(job_ids=[record.id])
                self._wake_when_due(record)
            else:
                self._after_attempt(record)
        return len(ended)

    async def purge(self) -> int:
        """Deletes finished jobs past their retention, with their files; answers how many."""
        before = self._clock() - self._config.retention_seconds
        async with self._engine.begin() as conn:
            ids = await store.select_expired_jobs(conn, before, PURGE_BATCH)
            if self._blobs is not None:
                for job_id in ids:
                    # Files first: a failure leaves the row, so the next purge tries again.
                    await self._blobs.delete_prefix(f"jobs/{job_id}/")
            await store.delete_jobs(conn, ids)
        return len(ids)

    async def sample_queue(self) -> None:
        """Refreshes the queue gauges: depth per kind and status, and the oldest due job's
        time of arrival, whose age is computed when Prometheus scrapes (so it keeps growing
        between samples, as a stuck queue's does)."""
        async with self._engine.connect() as conn:
            counts = await store.count_by_status(conn)
        JOBS_QUEUE.clear()
        OLDEST_QUEUED.clear()
        for kind, status, count, earliest in counts:
            JOBS_QUEUE.labels(kind, STATUS_NAMES[status]).set(count)
            if status == QUEUED:
                OLDEST_QUEUED.labels(kind).set_function(_age_since(self._clock, earliest))

    def start_maintenance(self) -> None:
        self._maintenance = asyncio.create_task(self._maintain(), name="kiln-jobs-maintenance")

    async def _maintain(self) -> None:
        rounds = 0
        while True:
            try:
                while await self.reap() == REAP_BATCH:
                    pass
                if rounds % PURGE_EVERY == 0:
                    while await self.purge() == PURGE_BATCH:
                        pass
                if rounds % SAMPLE_EVERY == 0:
                    await self.sample_queue()
            except Exception:  # a database hiccup must not end maintenance for good
                log.exception("jobs maintenance failed; retrying next round")
            rounds += 1
            await asyncio.sleep(self._config.reap_interval_seconds)

    async def close(self) -> None:
        """Stops maintenance and closes the hot path's pool or connections (the queue owns
        them)."""
        if self._fast is not None:
            await self._fast.close()
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance


_NO_LEASE: dict[str, Any] = {
    "lease_id": None,
    "lease_expires_at": None,
    "worker": "",
}


def _age_since(clock: Callable[[], float], due: float) -> Callable[[], float]:
    """Seconds since `due` by `clock`, read when Prometheus scrapes; 0 before it."""
    return lambda: max(0.0, clock() - due)


def _completion(
    job_id: str, lease_id: str, result: dict[str, Any], outputs: list[dict[str, Any]]
) -> CompleteRow:
    _check_lease_ref(job_id, lease_id)
    names = [str(o.get("name", "")) for o in outputs]
    for name in names:
        check_output_name(name)
    if len(set(names)) != len(names):
        raise InvalidArgument("output names must be unique within a job", field="outputs")
    return CompleteRow(job_id, lease_id, result, outputs)


def _check_lease_ref(job_id: str, lease_id: str) -> None:
    if not job_id:
        raise MissingField("job_id is required", field="job_id")
    if not lease_id:
        raise MissingField("lease_id is required", field="lease_id")


def _encode_page_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def _decode_page_token(token: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        prefix, _, value = raw.partition(":")
        if prefix != "seq":
            raise ValueError(raw)
        return int(value)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument(
            "page_token is not one this service issued", field="page_token"
        ) from None
