"""SQL storage of CLyman objects and properties. Every statement is scoped by tenant.

Writes are single statements with RETURNING (SQLite >= 3.35 and PostgreSQL both have it), so
the row a change produced is the row its event carries. Read-modify-write changes (updates,
asset edits) are optimistic: the UPDATE names the version it read and is retried when another
writer got there first, which keeps per-object versions gap-free and strictly increasing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    and_,
    bindparam,
    delete,
    exists,
    insert,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.elements import ColumnElement

from services.objects.store import Base

STRING_FIELDS = ("name", "type", "subtype", "owner", "scene", "parent", "asset_sub_id")
PROPERTY_STRING_FIELDS = ("name", "parent", "asset_sub_id", "scene")


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:  # SQLite drops the zone; all times are UTC
        return value.replace(tzinfo=dt.UTC)
    return value


def assets_text(assets: Sequence[str]) -> str:
    """Canonical text of an asset list, for CLyman's "several assets = equal" query rule."""
    return json.dumps(list(assets), separators=(",", ":"))


class ObjectRow(Base):
    __tablename__ = "objects"
    __table_args__ = tuple(
        Index(f"ix_objects_tenant_{name}", "tenant", name)
        for name in (*STRING_FIELDS, "frame", "timestamp", "assets_text")
    )

    key: Mapped[str] = mapped_column(String(24), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), nullable=False)
    name: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    type: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    subtype: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    owner: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    scene: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    parent: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    asset_sub_id: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    frame: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    timestamp: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    transform: Mapped[list[float]] = mapped_column(JSON, nullable=False)
    assets: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    assets_text: Mapped[str] = mapped_column(Text, nullable=False)
    handles: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    lock_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class ObjectAssetRow(Base):
    """One asset key of one object: makes "has this asset" an indexed lookup."""

    __tablename__ = "object_assets"
    __table_args__ = (Index("ix_object_assets_asset", "asset_key", "object_key"),)

    object_key: Mapped[str] = mapped_column(
        String(24), ForeignKey("objects.key", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    asset_key: Mapped[str] = mapped_column(String(255), nullable=False)


class PropertyRow(Base):
    __tablename__ = "properties"
    __table_args__ = tuple(
        Index(f"ix_properties_tenant_{name}", "tenant", name)
        for name in (*PROPERTY_STRING_FIELDS, "frame", "timestamp")
    )

    key: Mapped[str] = mapped_column(String(24), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), nullable=False)
    name: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    parent: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    asset_sub_id: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    scene: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    frame: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    timestamp: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    values: Mapped[list[dict[str, Any]]] = mapped_column(JSON, nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)


@dataclass(frozen=True)
class ObjectRecord:
    """One stored object."""

    key: str
    tenant: str
    name: str = ""
    type: str = ""
    subtype: str = ""
    owner: str = ""
    scene: str = ""
    parent: str = ""
    asset_sub_id: str = ""
    frame: int | None = None
    timestamp: int | None = None
    transform: list[float] = field(default_factory=list)
    assets: list[str] = field(default_factory=list)
    handles: dict[str, Any] | None = None
    """{"translation": [...3], "rotation": [...4], "scale": [...3]} of handle dicts."""
    lock_expires_at: dt.datetime | None = None
    version: int = 1
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    updated_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


@dataclass(frozen=True)
class PropertyRecord:
    """One stored property."""

    key: str
    tenant: str
    name: str = ""
    parent: str = ""
    asset_sub_id: str = ""
    scene: str = ""
    frame: int | None = None
    timestamp: int | None = None
    values: list[dict[str, Any]] = field(default_factory=list)
    version: int = 1
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    updated_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


@dataclass(frozen=True)
class ObjectQuery:
    """One CLyman query object: every set field must match."""

    strings: dict[str, str] = field(default_factory=dict)
    frame: int | None = None
    """None: only objects without a frame; negative: any frame; else that frame."""
    timestamp: int | None = None
    assets: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PropertyQuery:
    """One property query: non-empty strings, and frame / timestamp only when given."""

    strings: dict[str, str] = field(default_factory=dict)
    frame: int | None = None
    timestamp: int | None = None


_OBJECT_COLUMNS = [c.key for c in ObjectRow.__table__.columns]
_PROPERTY_COLUMNS = [c.key for c in PropertyRow.__table__.columns]


def _object(row: Any) -> ObjectRecord:
    values = {name: getattr(row, name) for name in _OBJECT_COLUMNS if name != "assets_text"}
    for name in ("lock_expires_at", "created_at", "updated_at"):
        values[name] = _utc(values[name])
    values["transform"] = list(values["transform"])
    values["assets"] = list(values["assets"])
    return ObjectRecord(**values)


#: The record of a row (an ORM row or a result row with the table's columns).
object_from_row = _object


def _property(row: Any) -> PropertyRecord:
    values = {name: getattr(row, name) for name in _PROPERTY_COLUMNS}
    for name in ("created_at", "updated_at"):
        values[name] = _utc(values[name])
    values["values"] = list(values["values"])
    return PropertyRecord(**values)


def _object_values(record: ObjectRecord) -> dict[str, Any]:
    values = {name: getattr(record, name) for name in _OBJECT_COLUMNS if name != "assets_text"}
    values["assets_text"] = assets_text(record.assets)
    return values


#: The column values of a record, for an INSERT.
object_values = _object_values


# The hot statements are built once with bind parameters: building a SQLAlchemy statement
# costs more than running it, and these run on every read and write of an object.
_OBJECTS: Table = ObjectRow.__table__  # type: ignore[assignment]
_MUTABLE = [c for c in _OBJECT_COLUMNS if c not in ("key", "tenant", "created_at")]
_GET_OBJECT = select(_OBJECTS).where(
    _OBJECTS.c.tenant == bindparam("b_tenant"), _OBJECTS.c.key == bindparam("b_key")
)
_REPLACE_OBJECT = (
    update(_OBJECTS)
    .where(
        _OBJECTS.c.tenant == bindparam("b_tenant"),
        _OBJECTS.c.key == bindparam("b_key"),
        _OBJECTS.c.version == bindparam("b_version"),
    )
    .values({name: bindparam(name) for name in _MUTABLE})
    .returning(*_OBJECTS.c)
)


#: The columns an overwrite may set: never the lock (owner), assets or handles, whose new
#: value depends on the stored one.
OVERWRITABLE = (
    "name",
    "type",
    "subtype",
    "scene",
    "parent",
    "asset_sub_id",
    "frame",
    "timestamp",
    "transform",
)


@dataclass(frozen=True)
class FieldWrite:
    """An overwrite of some OVERWRITABLE columns of one object, made at `now`."""

    tenant: str
    key: str
    values: dict[str, Any]
    now: dt.datetime


_INT64 = range(-(1 << 63), 1 << 63)


def _out_of_range(write: FieldWrite) -> ValueError | None:
    for name in ("frame", "timestamp"):
        value = write.values.get(name)
        if value is not None and value not in _INT64:
            return ValueError(f"{name} {value} does not fit in 64 bits")
    return None


def _overwrite_row(write: FieldWrite, sqlite: bool) -> dict[str, Any]:
    now = write.now.astimezone(dt.UTC)
    row: dict[str, Any] = {
        **write.values,
        "key": write.key,
        "tenant": write.tenant,
        # SQLite keeps times as text in SQLAlchemy's layout (without the zone: always UTC).
        "now": now.strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else now.isoformat(),
    }
    return row


# Overwrites of any number of objects as one statement whose text never changes: the writes
# travel as one JSON array, a column absent from a write is NULL there and keeps its stored
# value (no overwritable column is ever set to NULL: an update that leaves a field out keeps
# it). A fixed text is parsed and planned once per connection, whatever the batch's size.
_RETURNING = ", ".join(f'"{name}"' for name in _OBJECT_COLUMNS)
_SQL_TYPES = {"frame": "bigint", "timestamp": "bigint", "transform": "json", "now": "timestamptz"}
_OVERWRITE_POSTGRES = (
    text(
        "UPDATE objects AS o SET "
        + ", ".join(f'"{n}" = COALESCE(v."{n}", o."{n}")' for n in OVERWRITABLE)
        + ', version = o.version + 1, updated_at = v."now" '
        "FROM json_to_recordset(CAST(:rows AS json)) AS v("
        + ", ".join(
            f'"{n}" {_SQL_TYPES.get(n, "text")}' for n in ("key", "tenant", *OVERWRITABLE, "now")
        )
        + ") WHERE o.tenant = v.tenant AND o.key = v.key RETURNING "
        + ", ".join(f'o."{name}"' for name in _OBJECT_COLUMNS)
    )
    .bindparams(bindparam("rows", type_=Text))
    .columns(*_OBJECTS.c)
)
# SQLite: `->` keeps JSON (the transform), `->>` gives SQL values; FROM tables may not appear
# in RETURNING, and v's columns are prefixed so no name there is ambiguous.
_OVERWRITE_SQLITE = (
    text(
        "UPDATE objects SET "
        + ", ".join(f'"{n}" = COALESCE(v."v_{n}", objects."{n}")' for n in OVERWRITABLE)
        + ', version = objects.version + 1, updated_at = v."v_now" FROM (SELECT '
        + ", ".join(
            f"j.value {'->' if n == 'transform' else '->>'} '$.{n}' AS \"v_{n}\""
            for n in ("key", "tenant", *OVERWRITABLE, "now")
        )
        + " FROM json_each(:rows) AS j) AS v "
        'WHERE objects.tenant = v."v_tenant" AND objects.key = v."v_key" RETURNING ' + _RETURNING
    )
    .bindparams(bindparam("rows", type_=Text))
    .columns(*_OBJECTS.c)
)


class VersionConflict(Exception):
    """Another writer changed the object after it was read; read again and retry."""


class ObjectStore:
    """Objects and properties in the objects service's database."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        engine = sessions.kw.get("bind")
        if not isinstance(engine, AsyncEngine):
            raise TypeError("the sessions must be bound to an AsyncEngine")
        self._engine = engine
        self._sqlite = engine.dialect.name == "sqlite"
        self._writer: AsyncConnection | None = None
        self._writer_lock = asyncio.Lock()

    # --- objects ---------------------------------------------------------------------------

    async def insert_objects(self, records: Sequence[ObjectRecord]) -> None:
        """Stores every record in one transaction: all or none."""
        async with self._sessions.begin() as session:
            await session.execute(insert(ObjectRow), [_object_values(r) for r in records])
            links = [
                {"object_key": r.key, "position": i, "asset_key": a}
                for r in records
                for i, a in enumerate(r.assets)
            ]
            if links:
                await session.execute(insert(ObjectAssetRow), links)

    async def get_object(self, tenant: str, key: str) -> ObjectRecord | None:
        async with self._sessions() as session:
            row = (await session.execute(_GET_OBJECT, {"b_tenant": tenant, "b_key": key})).first()
            return _object(row) if row else None

    async def replace_object(self, before: ObjectRecord, after: ObjectRecord) -> ObjectRecord:
        """Writes `after` if the row is still at `before.version`; raises VersionConflict."""
        values = _object_values(replace(after, version=before.version + 1))
        params = {name: values[name] for name in _MUTABLE}
        params.update(b_tenant=before.tenant, b_key=before.key, b_version=before.version)
        async with self._sessions.begin() as session:
            row = (await session.execute(_REPLACE_OBJECT, params)).first()
            if row is None:
                raise VersionConflict(before.key)
            if after.assets != before.assets:
                await session.execute(
                    delete(ObjectAssetRow).where(ObjectAssetRow.object_key == before.key)
                )
                if after.assets:
                    await session.execute(
                        insert(ObjectAssetRow),
                        [
                            {"object_key": before.key, "position": i, "asset_key": a}
                            for i, a in enumerate(after.assets)
                        ],
                    )
            return _object(row)

    async def set_fields(
        self, tenant: str, key: str, values: dict[str, Any], now: dt.datetime
    ) -> ObjectRecord | None:
        """Overwrites the given columns and takes the next version; None: no such object."""
        [stored] = await self.set_fields_many([FieldWrite(tenant, key, values, now)])
        if isinstance(stored, Exception):
            raise stored
        return stored

    async def set_fields_many(
        self, writes: Sequence[FieldWrite]
    ) -> list[ObjectRecord | Exception | None]:
        """Applies every write, in order, with no read first: an update that only replaces
        fields cannot conflict with anything. Answers, per write, its stored row, None where
        the object does not exist, or the error that refused it (and only it).

        One statement carries every write to distinct objects; a second write to the same
        object goes in a later statement, so it applies after the first and takes the version
        after it. Each statement is its own transaction: atomic, durable when it returns."""
        for write in writes:
            unknown = set(write.values) - set(OVERWRITABLE)
            if unknown:
                raise ValueError(f"not overwritable: {sorted(unknown)}")
        stored: list[ObjectRecord | Exception | None] = [None] * len(writes)
        rounds: list[list[int]] = []
        last_round: dict[str, int] = {}
        for index, write in enumerate(writes):
            refused = _out_of_range(write)
            if refused is not None:
                # SQLite would store it as a float, not refuse it: refused here on both.
                stored[index] = refused
                continue
            position = last_round.get(write.key, -1) + 1
            if position == len(rounds):
                rounds.append([])
            rounds[position].append(index)
            last_round[write.key] = position
        for indexes in rounds:
            try:
                rows = await self._overwrite([writes[i] for i in indexes])
            except Exception as exc:
                if len(indexes) == 1 or getattr(exc, "connection_invalidated", False):
                    # Lost mid-statement, it may or may not have committed: not retried.
                    for i in indexes:
                        stored[i] = exc
                    continue
                # One write the database refuses (a value too long, say) fails the whole
                # statement, which changed nothing: each alone, so it fails only itself.
                for i in indexes:
                    try:
                        stored[i] = (await self._overwrite([writes[i]])).get(writes[i].key)
                    except Exception as alone:
                        stored[i] = alone
                continue
            for i in indexes:
                stored[i] = rows.get(writes[i].key)
        return stored

    async def _overwrite(self, writes: Sequence[FieldWrite]) -> dict[str, ObjectRecord]:
        """One overwrite statement as its own transaction (PostgreSQL: autocommit, one round
        trip, no BEGIN / COMMIT)."""
        async with self._writer_lock:
            if self._sqlite:
                # SQLite takes no network round trip to check a pooled connection out, and an
                # aiosqlite connection held open would keep its thread (and the process) alive.
                # A plain transaction: switching a pooled connection to autocommit and back
                # costs more thread hops than BEGIN and COMMIT.
                async with self._engine.begin() as connection:
                    return await self._run_overwrite(connection, writes)
            # PostgreSQL: the pool pings every connection it hands out, a round trip as dear
            # as the statement; overwrites keep one connection instead, one batch at a time.
            if self._writer is None:
                connection = await self._engine.connect()
                await connection.execution_options(isolation_level="AUTOCOMMIT")
                self._writer = connection
            try:
                return await self._run_overwrite(self._writer, writes)
            except DBAPIError as exc:
                if exc.connection_invalidated:
                    await self._drop_writer()
                raise
            except Exception:
                # Not the statement's own error: the connection may be anywhere in its
                # exchange with the server; start again on a fresh one.
                await self._drop_writer()
                raise

    async def _run_overwrite(
        self, connection: AsyncConnection, writes: Sequence[FieldWrite]
    ) -> dict[str, ObjectRecord]:
        rows = json.dumps(
            [_overwrite_row(write, self._sqlite) for write in writes], separators=(",", ":")
        )
        statement = _OVERWRITE_SQLITE if self._sqlite else _OVERWRITE_POSTGRES
        result = await connection.execute(statement, {"rows": rows})
        return {row.key: _object(row) for row in result}

    async def _drop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):
                await writer.close()

    async def close(self) -> None:
        """Returns the connection kept for overwrites (before the engine is disposed)."""
        async with self._writer_lock:
            await self._drop_writer()

    async def delete_object(self, tenant: str, key: str) -> ObjectRecord | None:
        async with self._sessions.begin() as session:
            await session.execute(delete(ObjectAssetRow).where(ObjectAssetRow.object_key == key))
            row = (
                await session.execute(
                    delete(ObjectRow)
                    .where(ObjectRow.tenant == tenant, ObjectRow.key == key)
                    .returning(*ObjectRow.__table__.columns)
                )
            ).first()
            return _object(row) if row else None

    async def try_lock(
        self, tenant: str, key: str, device: str, now: dt.datetime, expires: dt.datetime | None
    ) -> ObjectRecord | None:
        """Takes the lock in one statement: free, or lapsed. None when someone else holds it
        (or the object does not exist)."""
        async with self._sessions.begin() as session:
            row = (
                await session.execute(
                    update(ObjectRow)
                    .where(
                        ObjectRow.tenant == tenant,
                        ObjectRow.key == key,
                        or_(
                            ObjectRow.owner == "",
                            and_(
                                ObjectRow.lock_expires_at.is_not(None),
                                ObjectRow.lock_expires_at <= now,
                            ),
                        ),
                    )
                    .values(
                        owner=device,
                        lock_expires_at=expires,
                        version=ObjectRow.version + 1,
                        updated_at=now,
                    )
                    .returning(*ObjectRow.__table__.columns)
                )
            ).first()
            return _object(row) if row else None

    async def try_unlock(
        self, tenant: str, key: str, device: str, now: dt.datetime
    ) -> ObjectRecord | None:
        """Releases the lock only for its holder; None otherwise."""
        async with self._sessions.begin() as session:
            row = (
                await session.execute(
                    update(ObjectRow)
                    .where(
                        ObjectRow.tenant == tenant,
                        ObjectRow.key == key,
                        ObjectRow.owner == device,
                        ObjectRow.owner != "",
                    )
                    .values(
                        owner="",
                        lock_expires_at=None,
                        version=ObjectRow.version + 1,
                        updated_at=now,
                    )
                    .returning(*ObjectRow.__table__.columns)
                )
            ).first()
            return _object(row) if row else None

    async def query_objects(
        self, tenant: str, queries: Sequence[ObjectQuery], limit: int
    ) -> list[ObjectRecord]:
        """CLyman's rules: AND within a query, OR across them, at most `limit` rows."""
        if not queries or limit <= 0:
            return []
        clauses = [and_(true(), *self._object_conditions(q)) for q in queries]
        statement = (
            select(ObjectRow)
            .where(ObjectRow.tenant == tenant, or_(*clauses))
            .order_by(ObjectRow.key)
            .limit(limit)
        )
        async with self._sessions() as session:
            return [_object(row) for row in await session.scalars(statement)]

    @staticmethod
    def _object_conditions(query: ObjectQuery) -> list[ColumnElement[bool]]:
        conditions: list[ColumnElement[bool]] = [
            getattr(ObjectRow, name) == value for name, value in query.strings.items() if value
        ]
        # CLyman's frame rule: without a frame, only objects stored without one match; a
        # negative frame takes no part in the query.
        if query.frame is None:
            conditions.append(ObjectRow.frame.is_(None))
        elif query.frame >= 0:
            conditions.append(ObjectRow.frame == query.frame)
        if query.timestamp is not None:
            conditions.append(ObjectRow.timestamp == query.timestamp)
        if len(query.assets) == 1:
            conditions.append(
                exists().where(
                    ObjectAssetRow.object_key == ObjectRow.key,
                    ObjectAssetRow.asset_key == query.assets[0],
                )
            )
        elif len(query.assets) > 1:
            conditions.append(ObjectRow.assets_text == assets_text(query.assets))
        return conditions

    # --- properties ------------------------------------------------------------------------

    async def insert_properties(self, records: Sequence[PropertyRecord]) -> None:
        async with self._sessions.begin() as session:
            await session.execute(
                insert(PropertyRow),
                [{name: getattr(r, name) for name in _PROPERTY_COLUMNS} for r in records],
            )

    async def get_property(self, tenant: str, key: str) -> PropertyRecord | None:
        async with self._sessions() as session:
            row = await session.scalar(
                select(PropertyRow).where(PropertyRow.tenant == tenant, PropertyRow.key == key)
            )
            return _property(row) if row else None

    async def replace_property(
        self, before: PropertyRecord, after: PropertyRecord
    ) -> PropertyRecord:
        values = {name: getattr(after, name) for name in _PROPERTY_COLUMNS}
        values["version"] = before.version + 1
        for fixed in ("key", "tenant", "created_at"):
            values.pop(fixed)
        async with self._sessions.begin() as session:
            row = (
                await session.execute(
                    update(PropertyRow)
                    .where(
                        PropertyRow.tenant == before.tenant,
                        PropertyRow.key == before.key,
                        PropertyRow.version == before.version,
                    )
                    .values(**values)
                    .returning(*PropertyRow.__table__.columns)
                )
            ).first()
            if row is None:
                raise VersionConflict(before.key)
            return _property(row)

    async def delete_property(self, tenant: str, key: str) -> PropertyRecord | None:
        async with self._sessions.begin() as session:
            row = (
                await session.execute(
                    delete(PropertyRow)
                    .where(PropertyRow.tenant == tenant, PropertyRow.key == key)
                    .returning(*PropertyRow.__table__.columns)
                )
            ).first()
            return _property(row) if row else None

    async def query_properties(
        self, tenant: str, queries: Sequence[PropertyQuery], limit: int
    ) -> list[PropertyRecord]:
        if not queries or limit <= 0:
            return []
        clauses = []
        for q in queries:
            conditions: list[ColumnElement[bool]] = [
                getattr(PropertyRow, name) == value for name, value in q.strings.items() if value
            ]
            if q.frame is not None:
                conditions.append(PropertyRow.frame == q.frame)
            if q.timestamp is not None:
                conditions.append(PropertyRow.timestamp == q.timestamp)
            clauses.append(and_(true(), *conditions))
        statement = (
            select(PropertyRow)
            .where(PropertyRow.tenant == tenant, or_(*clauses))
            .order_by(PropertyRow.key)
            .limit(limit)
        )
        async with self._sessions() as session:
            return [_property(row) for row in await session.scalars(statement)]
