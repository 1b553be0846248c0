"""SQL storage of scenes, the imports committed into them and the assets those created.

A scene's objects are rows of `objects` whose `scene` column is its id; this module owns the
scene rows and the two tables that make an import all-or-nothing and a scene delete complete:
`scene_imports` (one row per committed import, so a retried commit answers the first) and
`scene_assets` (the assets an import created, removed with the scene). Every statement is
scoped by tenant.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from services.objects.object_store import (
    ObjectAssetRow,
    ObjectRecord,
    ObjectRow,
    object_from_row,
    object_values,
)
from services.objects.store import AssetRecord, AssetRow, Base, asset_values, record_of


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


class SceneRow(Base):
    __tablename__ = "scenes"
    __table_args__ = (
        UniqueConstraint("tenant", "request_id", name="uq_scenes_tenant_request_id"),
        Index("ix_scenes_tenant_created", "tenant", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), nullable=False)
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False)
    public: Mapped[bool] = mapped_column(Boolean, nullable=False)
    license: Mapped[str] = mapped_column(String(32), nullable=False)
    allow_public_clone: Mapped[bool] = mapped_column(Boolean, nullable=False)
    owner: Mapped[str] = mapped_column(String(255), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class SceneImportRow(Base):
    __tablename__ = "scene_imports"

    scene_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    import_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), nullable=False)
    object_keys: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    asset_ids: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class SceneAssetRow(Base):
    __tablename__ = "scene_assets"

    scene_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    asset_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), nullable=False)


@dataclass(frozen=True)
class SceneRecord:
    """One stored scene."""

    id: str
    tenant: str
    name: str = ""
    description: str = ""
    public: bool = False
    license: str = "none"
    allow_public_clone: bool = False
    owner: str = ""
    version: int = 1
    request_id: str | None = None
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    updated_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    object_count: int = 0
    """Counted when read; not a column."""


_SCENE_COLUMNS = [c.key for c in SceneRow.__table__.columns]


def _scene(row: SceneRow, object_count: int = 0) -> SceneRecord:
    values: dict[str, Any] = {name: getattr(row, name) for name in _SCENE_COLUMNS}
    values["created_at"] = _utc(values["created_at"])
    values["updated_at"] = _utc(values["updated_at"])
    return SceneRecord(**values, object_count=object_count)


@dataclass(frozen=True)
class CommittedImport:
    """What one import created: its objects and asset ids, in the order it sent them."""

    objects: list[ObjectRecord]
    asset_ids: list[str]
    first_time: bool
    """False when this import had been committed before (a retry)."""


@dataclass(frozen=True)
class DeletedScene:
    objects: list[ObjectRecord]
    assets: list[AssetRecord]


class DuplicateScene(Exception):
    """A create with a request id that an earlier create used; carries that scene."""

    def __init__(self, earlier: SceneRecord) -> None:
        super().__init__(earlier.id)
        self.earlier = earlier


class SceneStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def insert(self, record: SceneRecord) -> SceneRecord:
        values = {name: getattr(record, name) for name in _SCENE_COLUMNS}
        try:
            async with self._sessions.begin() as session:
                await session.execute(insert(SceneRow), [values])
        except IntegrityError:
            if record.request_id is None:
                raise
            earlier = await self.by_request_id(record.tenant, record.request_id)
            if earlier is None:
                raise
            raise DuplicateScene(earlier) from None
        return record

    async def by_request_id(self, tenant: str, request_id: str) -> SceneRecord | None:
        async with self._sessions() as session:
            row = await session.scalar(
                select(SceneRow).where(SceneRow.tenant == tenant, SceneRow.request_id == request_id)
            )
            return None if row is None else _scene(row, await self._count(session, tenant, row.id))

    async def get(self, tenant: str, scene_id: str) -> SceneRecord | None:
        async with self._sessions() as session:
            row = await session.scalar(
                select(SceneRow).where(SceneRow.tenant == tenant, SceneRow.id == scene_id)
            )
            return None if row is None else _scene(row, await self._count(session, tenant, row.id))

    @staticmethod
    async def _count(session: AsyncSession, tenant: str, scene_id: str) -> int:
        count = await session.scalar(
            select(func.count())
            .select_from(ObjectRow)
            .where(ObjectRow.tenant == tenant, ObjectRow.scene == scene_id)
        )
        return int(count or 0)

    async def page(
        self, tenant: str, *, limit: int, after: tuple[dt.datetime, str] | None, query: str
    ) -> list[SceneRecord]:
        """Newest first, keyset-paged on (created_at, id)."""
        statement = select(SceneRow).where(SceneRow.tenant == tenant)
        if query:
            pattern = (
                "%"
                + query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                + "%"
            )
            statement = statement.where(func.lower(SceneRow.name).like(pattern, escape="\\"))
        if after is not None:
            created, scene_id = after
            statement = statement.where(
                or_(
                    SceneRow.created_at < created,
                    and_(SceneRow.created_at == created, SceneRow.id < scene_id),
                )
            )
        statement = statement.order_by(SceneRow.created_at.desc(), SceneRow.id.desc()).limit(limit)
        async with self._sessions() as session:
            rows = list(await session.scalars(statement))
            counts: dict[str, int] = {}
            if rows:
                counted = await session.execute(
                    select(ObjectRow.scene, func.count())
                    .where(ObjectRow.tenant == tenant, ObjectRow.scene.in_([r.id for r in rows]))
                    .group_by(ObjectRow.scene)
                )
                counts = {scene: int(n) for scene, n in counted.all()}
            return [_scene(row, counts.get(row.id, 0)) for row in rows]

    async def update(
        self, tenant: str, scene_id: str, values: dict[str, Any], now: dt.datetime
    ) -> SceneRecord | None:
        async with self._sessions.begin() as session:
            changed = await session.execute(
                update(SceneRow)
                .where(SceneRow.tenant == tenant, SceneRow.id == scene_id)
                .values(**values, version=SceneRow.version + 1, updated_at=now)
            )
            if not getattr(changed, "rowcount", 0):
                return None
        return await self.get(tenant, scene_id)

    async def commit_import(
        self,
        tenant: str,
        scene_id: str,
        import_id: str,
        *,
        assets: Sequence[AssetRecord],
        objects: Sequence[ObjectRecord],
        now: dt.datetime,
    ) -> CommittedImport | None:
        """Stores the assets, the objects, the import and the scene's new version in one
        transaction. None when the scene does not exist."""
        async with self._sessions.begin() as session:
            earlier = await session.scalar(
                select(SceneImportRow).where(
                    SceneImportRow.tenant == tenant,
                    SceneImportRow.scene_id == scene_id,
                    SceneImportRow.import_id == import_id,
                )
            )
            if earlier is not None:
                keys = list(earlier.object_keys)
                rows = await session.scalars(
                    select(ObjectRow).where(ObjectRow.tenant == tenant, ObjectRow.key.in_(keys))
                )
                found = {row.key: object_from_row(row) for row in rows}
                return CommittedImport(
                    [found[k] for k in keys if k in found], list(earlier.asset_ids), False
                )
            bumped = await session.execute(
                update(SceneRow)
                .where(SceneRow.tenant == tenant, SceneRow.id == scene_id)
                .values(version=SceneRow.version + 1, updated_at=now)
            )
            if not getattr(bumped, "rowcount", 0):
                return None
            if assets:
                await session.execute(insert(AssetRow), [asset_values(a) for a in assets])
                await session.execute(
                    insert(SceneAssetRow),
                    [{"scene_id": scene_id, "asset_id": a.id, "tenant": tenant} for a in assets],
                )
            if objects:
                await session.execute(insert(ObjectRow), [object_values(o) for o in objects])
                links = [
                    {"object_key": o.key, "position": i, "asset_key": a}
                    for o in objects
                    for i, a in enumerate(o.assets)
                ]
                if links:
                    await session.execute(insert(ObjectAssetRow), links)
            session.add(
                SceneImportRow(
                    scene_id=scene_id,
                    import_id=import_id,
                    tenant=tenant,
                    object_keys=[o.key for o in objects],
                    asset_ids=[a.id for a in assets],
                    created_at=now,
                )
            )
        return CommittedImport(list(objects), [a.id for a in assets], True)

    async def content(
        self, tenant: str, scene_id: str
    ) -> tuple[SceneRecord, list[ObjectRecord], list[AssetRecord]] | None:
        """The scene, its objects in key order, and the tenant's assets they name."""
        async with self._sessions() as session:
            row = await session.scalar(
                select(SceneRow).where(SceneRow.tenant == tenant, SceneRow.id == scene_id)
            )
            if row is None:
                return None
            objects = [
                object_from_row(o)
                for o in await session.scalars(
                    select(ObjectRow)
                    .where(ObjectRow.tenant == tenant, ObjectRow.scene == scene_id)
                    .order_by(ObjectRow.key)
                )
            ]
            wanted = sorted({a for o in objects for a in o.assets})
            assets: list[AssetRecord] = []
            for start in range(0, len(wanted), 500):
                assets.extend(
                    record_of(a)
                    for a in await session.scalars(
                        select(AssetRow).where(
                            AssetRow.tenant == tenant, AssetRow.id.in_(wanted[start : start + 500])
                        )
                    )
                )
            return _scene(row, len(objects)), objects, assets

    async def delete(self, tenant: str, scene_id: str) -> DeletedScene | None:
        """Removes the scene, its objects and the assets its imports created, at once."""
        async with self._sessions.begin() as session:
            gone = await session.execute(
                delete(SceneRow)
                .where(SceneRow.tenant == tenant, SceneRow.id == scene_id)
                .returning(SceneRow.id)
            )
            if gone.first() is None:
                return None
            keys = list(
                await session.scalars(
                    select(ObjectRow.key).where(
                        ObjectRow.tenant == tenant, ObjectRow.scene == scene_id
                    )
                )
            )
            objects: list[ObjectRecord] = []
            for start in range(0, len(keys), 500):
                batch = keys[start : start + 500]
                await session.execute(
                    delete(ObjectAssetRow).where(ObjectAssetRow.object_key.in_(batch))
                )
                rows = await session.execute(
                    delete(ObjectRow)
                    .where(ObjectRow.tenant == tenant, ObjectRow.key.in_(batch))
                    .returning(*ObjectRow.__table__.columns)
                )
                objects.extend(object_from_row(r) for r in rows)
            asset_ids = list(
                await session.scalars(
                    select(SceneAssetRow.asset_id).where(
                        SceneAssetRow.tenant == tenant, SceneAssetRow.scene_id == scene_id
                    )
                )
            )
            assets: list[AssetRecord] = []
            for start in range(0, len(asset_ids), 500):
                batch = asset_ids[start : start + 500]
                assets.extend(
                    record_of(a)
                    for a in await session.scalars(
                        select(AssetRow).where(AssetRow.tenant == tenant, AssetRow.id.in_(batch))
                    )
                )
                await session.execute(
                    delete(AssetRow).where(AssetRow.tenant == tenant, AssetRow.id.in_(batch))
                )
            await session.execute(
                delete(SceneAssetRow).where(
                    SceneAssetRow.tenant == tenant, SceneAssetRow.scene_id == scene_id
                )
            )
            await session.execute(
                delete(SceneImportRow).where(
                    SceneImportRow.tenant == tenant, SceneImportRow.scene_id == scene_id
                )
            )
        return DeletedScene(objects, assets)
