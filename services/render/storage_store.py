"""The `storages` table: named storages, one row each, every query scoped to a tenant."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.runtime.errors import AlreadyExists, NotFound

metadata = sa.MetaData()
_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")

storages = sa.Table(
    "storages",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("name", sa.String(50), nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("parameters", sa.JSON, nullable=False),
    sa.Column("create_time", sa.Double, nullable=False),
    sa.Column("update_time", sa.Double, nullable=False),
    sa.UniqueConstraint("tenant", "name", name="uq_storages_tenant_name"),
)


@dataclass(frozen=True)
class StorageRecord:
    """One stored storage, secrets included (never answered as is)."""

    id: int
    tenant: str
    name: str
    type: str
    parameters: dict[str, Any]


def _record(row: Any) -> StorageRecord:
    return StorageRecord(
        id=int(row.id),
        tenant=row.tenant,
        name=row.name,
        type=row.type,
        parameters=dict(row.parameters),
    )


def _taken(name: str) -> AlreadyExists:
    return AlreadyExists(f"a storage named {name!r} already exists", field="name")


class StorageStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(
        self, tenant: str, name: str, kind: str, parameters: dict[str, Any]
    ) -> StorageRecord:
        now = time.time()
        try:
            async with self.engine.begin() as conn:
                result = await conn.execute(
                    storages.insert().values(
                        tenant=tenant,
                        name=name,
                        type=kind,
                        parameters=parameters,
                        create_time=now,
                        update_time=now,
                    )
                )
                storage_id = int(result.inserted_primary_key[0])  # type: ignore[index]
        except IntegrityError:
            raise _taken(name) from None
        return StorageRecord(storage_id, tenant, name, kind, parameters)

    async def get(self, tenant: str, storage_id: int) -> StorageRecord:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(storages).where(
                        storages.c.tenant == tenant, storages.c.id == storage_id
                    )
                )
            ).first()
        if row is None:
            raise NotFound(f"storage {storage_id} not found", field="storage_id")
        return _record(row)

    async def by_name(self, tenant: str, name: str) -> StorageRecord | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(storages).where(storages.c.tenant == tenant, storages.c.name == name)
                )
            ).first()
        return None if row is None else _record(row)

    async def list(self, tenant: str) -> list[StorageRecord]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(storages).where(storages.c.tenant == tenant).order_by(storages.c.id)
            )
            return [_record(row) for row in rows]

    async def update(
        self, tenant: str, storage_id: int, name: str, kind: str, parameters: dict[str, Any]
    ) -> StorageRecord:
        try:
            async with self.engine.begin() as conn:
                result = await conn.execute(
                    storages.update()
                    .where(storages.c.tenant == tenant, storages.c.id == storage_id)
                    .values(name=name, type=kind, parameters=parameters, update_time=time.time())
                )
        except IntegrityError:
            raise _taken(name) from None
        if result.rowcount == 0:
            raise NotFound(f"storage {storage_id} not found", field="storage_id")
        return StorageRecord(storage_id, tenant, name, kind, parameters)

    async def delete(self, tenant: str, storage_id: int) -> None:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                storages.delete().where(storages.c.tenant == tenant, storages.c.id == storage_id)
            )
        if result.rowcount == 0:
            raise NotFound(f"storage {storage_id} not found", field="storage_id")
