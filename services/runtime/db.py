"""SQL access: SQLAlchemy 2 async engines on SQLite (aiosqlite) or PostgreSQL (asyncpg), and
Alembic migrations owned by each service.

Each service keeps its migrations in `services/<name>/migrations/` and its own version table
(`alembic_version_<name>`), so services can share one PostgreSQL database without touching each
other's tables.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
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

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_async_engine(url, echo=echo, pool_size=10, max_overflow=10, pool_pre_ping=True)


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
