"""The SQL layer on both SQLite and PostgreSQL: migrations and the asset store."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import inspect, text

from services.objects.main import MIGRATIONS
from services.objects.store import AssetRecord, AssetStore
from services.runtime import db
from services.runtime.errors import ConfigError
from tests.conftest import postgres_reachable, private_postgres_database


def record(asset_id: str, tenant: str, *, at: int, request_id: str | None = None) -> AssetRecord:
    return AssetRecord(
        id=asset_id,
        tenant=tenant,
        file_name="f.png",
        mime_type="image/png",
        kind="image",
        size=5_000_000_000,  # beyond 32 bits: the column must be BIGINT
        sha256="0" * 64,
        metadata={"prompt": "a rock", "seed": 7},
        blob_key=f"tenants/{tenant}/assets/{asset_id}",
        request_id=request_id,
        created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=at),
    )


async def test_migrations_are_idempotent_and_versioned_per_service(database_url: str) -> None:
    engine = db.create_engine(database_url)
    try:
        await db.migrate(engine, "objects", MIGRATIONS)
        await db.migrate(engine, "objects", MIGRATIONS)  # a restart must not fail
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
            version = await conn.scalar(text("SELECT version_num FROM alembic_version_objects"))
        assert {
            "assets",
            "objects",
            "object_assets",
            "properties",
            "scenes",
            "scene_imports",
            "scene_assets",
            "alembic_version_objects",
        } <= tables
        assert version == "0003"
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_replicas_starting_together_migrate_one_at_a_time() -> None:
    """Four replicas of a service starting at once on an empty PostgreSQL database: each
    runs `migrate`, none fails on a table another is creating, and the schema ends current."""
    if (reason := postgres_reachable()) is not None:
        pytest.skip(reason)
    async with private_postgres_database() as url:
        engines = [db.create_engine(url) for _ in range(4)]
        try:
            await asyncio.gather(*(db.migrate(e, "objects", MIGRATIONS) for e in engines))
            async with engines[0].connect() as conn:
                versions = (
                    await conn.execute(text("SELECT version_num FROM alembic_version_objects"))
                ).all()
            assert [v for (v,) in versions] == ["0003"]
        finally:
            for engine in engines:
                await engine.dispose()


async def test_asset_store_is_tenant_scoped(database_url: str) -> None:
    async with db.migrated_engine(database_url, "objects", MIGRATIONS) as engine:
        store = AssetStore(db.sessionmaker(engine))
        for i in range(3):
            await store.insert(record(f"asset_a{i}", "t-a", at=i))
        await store.insert(record("asset_b0", "t-b", at=0))

        got = await store.get("t-a", "asset_a1")
        assert got is not None and got.size == 5_000_000_000
        assert got.metadata == {"prompt": "a rock", "seed": 7}
        assert got.created_at == dt.datetime(2026, 1, 1, 0, 0, 1, tzinfo=dt.UTC)
        assert await store.get("t-b", "asset_a1") is None

        newest = await store.list("t-a", limit=2, after=None, kind=None)
        assert [r.id for r in newest] == ["asset_a2", "asset_a1"]
        rest = await store.list(
            "t-a", limit=2, after=(newest[-1].created_at, newest[-1].id), kind=None
        )
        assert [r.id for r in rest] == ["asset_a0"]

        assert await store.delete("t-b", "asset_a0") is False
        assert await store.delete("t-a", "asset_a0") is True
        assert await store.get("t-a", "asset_a0") is None


async def test_request_id_is_unique_per_tenant(database_url: str) -> None:
    from services.objects.store import DuplicateRequest

    async with db.migrated_engine(database_url, "objects", MIGRATIONS) as engine:
        store = AssetStore(db.sessionmaker(engine))
        await store.insert(record("asset_1", "t-a", at=0, request_id="r"))
        await store.insert(record("asset_2", "t-b", at=0, request_id="r"))  # other tenant: fine
        with pytest.raises(DuplicateRequest) as dup:
            await store.insert(record("asset_3", "t-a", at=1, request_id="r"))
        assert dup.value.earlier.id == "asset_1"


def test_unsupported_database_urls_are_refused() -> None:
    with pytest.raises(ConfigError, match="unsupported database URL"):
        db.create_engine("mysql://root@localhost/kiln")
