"""SQL storage of asset records. Every query is scoped by tenant; no call crosses tenants."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Index,
    String,
    UniqueConstraint,
    and_,
    delete,
    or_,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


@dataclass(frozen=True)
class AssetRecord:
    """One stored asset."""

    id: str
    tenant: str
    file_name: str
    mime_type: str
    kind: str
    size: int
    sha256: str
    metadata: dict[str, Any]
    blob_key: str
    request_id: str | None
    created_at: dt.datetime


class Base(DeclarativeBase):
    pass


class AssetRow(Base):
    __tablename__ = "assets"
    __table_args__ = (
        UniqueConstraint("tenant", "request_id", name="uq_assets_tenant_request_id"),
        Index("ix_assets_tenant_created", "tenant", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), nullable=False)
    file_name: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    mime_type: Mapped[str] = mapped_column(String(255), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, nullable=False)
    blob_key: Mapped[str] = mapped_column(String(512), nullable=False)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)


def _record(row: AssetRow) -> AssetRecord:
    created = row.created_at
    if created.tzinfo is None:  # SQLite drops the zone; every stored time is UTC
        created = created.replace(tzinfo=dt.UTC)
    return AssetRecord(
        id=row.id,
        tenant=row.tenant,
        file_name=row.file_name,
        mime_type=row.mime_type,
        kind=row.kind,
        size=row.size,
        sha256=row.sha256,
        metadata=dict(row.meta),
        blob_key=row.blob_key,
        request_id=row.request_id,
        created_at=created,
    )


#: The record of an asset row.
record_of = _record


def asset_values(record: AssetRecord) -> dict[str, Any]:
    """The column values of a record, for an INSERT."""
    return {
        "id": record.id,
        "tenant": record.tenant,
        "file_name": record.file_name,
        "mime_type": record.mime_type,
        "kind": record.kind,
        "size": record.size,
        "sha256": record.sha256,
        "meta": record.metadata,
        "blob_key": record.blob_key,
        "request_id": record.request_id,
        "created_at": record.created_at,
    }


class AssetStore:
    """Asset rows in the objects service's database."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def insert(self, record: AssetRecord) -> AssetRecord:
        """Stores a new record; a concurrent upload with the same request id wins instead."""
        row = AssetRow(**asset_values(record))
        try:
            async with self._sessions.begin() as session:
                session.add(row)
        except IntegrityError:
            if record.request_id is None:
                raise
            earlier = await self.by_request_id(record.tenant, record.request_id)
            if earlier is None:
                raise
            raise DuplicateRequest(earlier) from None
        return record

    async def get(self, tenant: str, asset_id: str) -> AssetRecord | None:
        async with self._sessions() as session:
            row = await session.scalar(
                select(AssetRow).where(AssetRow.tenant == tenant, AssetRow.id == asset_id)
            )
            return _record(row) if row else None

    async def get_many(self, tenant: str, asset_ids: Sequence[str]) -> dict[str, AssetRecord]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(AssetRow).where(AssetRow.tenant == tenant, AssetRow.id.in_(asset_ids))
            )
            return {row.id: _record(row) for row in rows}

    async def by_request_id(self, tenant: str, request_id: str) -> AssetRecord | None:
        async with self._sessions() as session:
            row = await session.scalar(
                select(AssetRow).where(AssetRow.tenant == tenant, AssetRow.request_id == request_id)
            )
            return _record(row) if row else None

    async def list(
        self, tenant: str, *, limit: int, after: tuple[dt.datetime, str] | None, kind: str | None
    ) -> list[AssetRecord]:
        """Newest first, keyset-paged on (created_at, id)."""
        query = select(AssetRow).where(AssetRow.tenant == tenant)
        if kind:
            query = query.where(AssetRow.kind == kind)
        if after is not None:
            created, asset_id = after
            query = query.where(
                or_(
                    AssetRow.created_at < created,
                    and_(AssetRow.created_at == created, AssetRow.id < asset_id),
                )
            )
        query = query.order_by(AssetRow.created_at.desc(), AssetRow.id.desc()).limit(limit)
        async with self._sessions() as session:
            return [_record(row) for row in await session.scalars(query)]

    async def delete(self, tenant: str, asset_id: str) -> bool:
        async with self._sessions.begin() as session:
            result = await session.execute(
                delete(AssetRow).where(AssetRow.tenant == tenant, AssetRow.id == asset_id)
            )
            return bool(getattr(result, "rowcount", 0))


class DuplicateRequest(Exception):
    """Another upload with the same request id was recorded first; carries its record."""

    def __init__(self, earlier: AssetRecord) -> None:
        super().__init__(earlier.id)
        self.earlier = earlier
