"""SQL access: SQLAlchemy 2 async engines on SQLite (aiosqlite) or PostgreSQL (asyncpg), and
Alembic migrations owned by each service.

Each service keeps its migrations in `services/<name>/migrations/` and its own version table
(`alembic_version_<name>`), so services can share one PostgreSQL database without touching each
other's tables.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from prometheus_client import Histogram
from sqlalchemy import MetaData, event, text
from sqlalchemy.engine import Connection
from sqlalchemy.engine.url import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from services.runtime.errors import ConfigError

_SUPPORTED_DRIVERS = {"sqlite+aiosqlite", "postgresql+asyncpg"}

SQL_SECONDS = Histogram(
    "kiln_sql_query_seconds",
    "Time from a statement's dispatch to its result, by its first keyword (SELECT, INSERT, "
    "UPDATE, DELETE, WITH, ...; OTHER beyond a fixed set).",
    ["verb"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
# A fixed set of labels: a label per distinct statement would grow without bound.
_VERBS = frozenset(
    {"SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "BEGIN", "COMMIT", "ROLLBACK", "PRAGMA"}
    | {"CREATE", "ALTER", "DROP", "SAVEPOINT", "RELEASE", "LISTEN", "NOTIFY", "SET", "SHOW"}
)
_STARTED = "kiln_sql_started"
#: Every SQLite connection's settings (the jobs service's own sqlite3 connections too).
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=30000",
)


def statement_verb(statement: str) -> str:
    """The label of a statement: its first keyword when it is a known one, else OTHER."""
    head = statement.lstrip(" \t\n(").split(None, 1)
    verb = head[0].upper() if head else ""
    return verb if verb in _VERBS else "OTHER"


def observe_sql(statement: str, seconds: float) -> None:
    """Records one statement's latency (the raw asyncpg hot path calls this itself)."""
    SQL_SECONDS.labels(statement_verb(statement)).observe(seconds)


def _time_statements(engine: AsyncEngine) -> None:
    """Times every statement the engine runs, from cursor dispatch to result (or error)."""

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _before(conn: Any, *_: Any) -> None:
        conn.info[_STARTED] = time.perf_counter()

    @event.listens_for(engine.sync_engine, "after_cursor_execute")
    def _after(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        started = conn.info.pop(_STARTED, None)
        if started is not None:
            observe_sql(statement, time.perf_counter() - started)

    @event.listens_for(engine.sync_engine, "handle_error")
    def _failed(context: Any) -> None:
        conn = context.connection
        started = conn.info.pop(_STARTED, None) if conn is not None else None
        if started is not None and context.statement is not None:
            observe_sql(context.statement, time.perf_counter() - started)


def create_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """An engine for `url`; SQLite gets WAL, a busy timeout and enforced foreign keys."""
    parsed = make_url(url)
    if parsed.drivername not in _SUPPORTED_DRIVERS:
        raise ConfigError(
            f"unsupported database URL {parsed.drivername!r}: use sqlite+aiosqlite:///path "
            "or postgresql+asyncpg://user@host/db"
        )
    if parsed.drivername.startswith("sqlite"):
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, echo=echo, connect_args={"timeout": 30})
        _time_statements(engine)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            for pragma in SQLITE_PRAGMAS:
                cursor.execute(pragma)
            cursor.close()

        return engine
    engine = create_async_engine(url, echo=echo, pool_size=10, max_overflow=10, pool_pre_ping=True)
    _time_statements(engine)
    return engine


def postgres_dsn(database_url: str) -> str | None:
    """The plain DSN asyncpg takes (LISTEN/NOTIFY connections) for a PostgreSQL URL; None for
    SQLite, whose processes have no one to notify."""
    url = make_url(database_url)
    if not url.drivername.startswith("postgresql"):
        return None
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(service: str, migrations_dir: Path) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    cfg.attributes["version_table"] = f"alembic_version_{service}"
    return cfg


async def migrate(engine: AsyncEngine, service: str, migrations_dir: Path) -> None:
    """Upgrades the service's schema to the newest revision; safe to run on every start, and
    from several replicas at once: on PostgreSQL the upgrade holds a transaction-scoped advisory
    lock per service, so the replicas that start together take turns and all but the first
    find the schema current (without it, two would race to create the same tables)."""
    cfg = alembic_config(service, migrations_dir)

    def upgrade(connection: Connection) -> None:
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:name))"),
                {"name": f"kiln.migrate.{service}"},
            )
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")

    async with engine.begin() as conn:
        await conn.run_sync(upgrade)


def run_migrations(context: Any, target_metadata: MetaData) -> None:
    """The body of every service's migrations/env.py (`context` is alembic.context, an
    EnvironmentContext proxy): online migrations on the connection `migrate` passed in."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise ConfigError("migrations run through services.runtime.db.migrate, not the alembic CLI")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=context.config.attributes["version_table"],
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


@asynccontextmanager
async def migrated_engine(
    url: str, service: str, migrations_dir: Path
) -> AsyncIterator[AsyncEngine]:
    """An engine whose schema is up to date, disposed on exit (tests, one-shot tools)."""
    engine = create_engine(url)
    try:
        await migrate(engine, service, migrations_dir)
        yield engine
    finally:
        await engine.dispose()


def main() -> None:
    """`python -m services.runtime.db <service>`: migrate one service's database and exit
    (the Kubernetes migrations Job runs this)."""
    import argparse
    import importlib

    from services.runtime.config import load_service_config

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("service")
    args = parser.parse_args()
    config = load_service_config(args.service)
    module = importlib.import_module(f"services.{args.service}")
    migrations_dir = Path(module.__file__ or "").parent / "migrations"

    async def _run() -> None:
        async with migrated_engine(config.database_url, args.service, migrations_dir):
            pass

    asyncio.run(_run())


if __name__ == "__main__":
    main()
