"""Wires the jobs service: database, wake-up relay, queue maintenance, servicers."""

from __future__ import annotations

from pathlib import Path

from kiln.jobs.v1 import jobs_pb2, jobs_pb2_grpc

from services.jobs.jobs import JobQueue
from services.jobs.pg_hot_path import PgHotPath
from services.jobs.servicer import JobServicer, WorkerServicer
from services.jobs.signals import Signals
from services.jobs.sqlite_hot_path import SqliteHotPath
from services.runtime import db
from services.runtime.config import ServiceConfig
from services.runtime.server import Registration, servicers
from services.runtime.storage import BlobStore

MIGRATIONS = Path(__file__).parent / "migrations"


async def build(config: ServiceConfig) -> Registration:
    engine = db.create_engine(config.database_url)
    await db.migrate(engine, "jobs", MIGRATIONS)
    blobs = BlobStore(config.storage)
    await blobs.ensure_bucket()
    signals = Signals()
    dsn = db.postgres_dsn(config.database_url)
    hot_path = None if dsn is None else await PgHotPath.connect(dsn)
    await signals.start(dsn, None if hot_path is None else hot_path.notify_batch)
    queue = JobQueue(
        engine,
        signals,
        config.jobs,
        blobs,
        hot_path=hot_path,
        sqlite_path=SqliteHotPath.for_url(config.database_url),
    )
    queue.start_maintenance()
    registration = servicers(
        (
            jobs_pb2,
            "JobService",
            jobs_pb2_grpc.add_JobServiceServicer_to_server,
            JobServicer(queue),
        ),
        (
            jobs_pb2,
            "WorkerService",
            jobs_pb2_grpc.add_WorkerServiceServicer_to_server,
            WorkerServicer(queue),
        ),
    )

    async def close() -> None:
        # Signals first: it flushes notifications on the queue's pool and ends long polls.
        await signals.close()
        await queue.close()
        await engine.dispose()
        await blobs.close()

    registration.on_stop = [close]
    return registration
