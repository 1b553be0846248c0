"""CLyman's wire rules over the object catalog: its lenient JSON parse and its envelope.

CLyman (v2.0.x) ignores fields of the wrong type instead of rejecting the request, writes
strings only when non-empty and frame / timestamp only when set, and always writes transform
and assets (api-spec §5.2 to §5.6). Errors carry the operation's msg_type and the request's
transaction_id in ErrorInfo metadata, so the gateway can answer in CLyman's envelope.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Mapping
from dataclasses import replace
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format, struct_pb2
from kiln.objects.v1 import clyman_pb2, clyman_pb2_grpc

from services.objects.object_store import (
    PROPERTY_STRING_FIELDS,
    STRING_FIELDS,
    ObjectQuery,
    ObjectRecord,
    PropertyQuery,
    PropertyRecord,
)
from services.objects.objects import ObjectCatalog, ObjectPatch, PropertyPatch
from services.objects.transform import build_transform
from services.runtime.context import current_tenant
from services.runtime.errors import KilnError, MalformedBody

T = TypeVar("T")

# msg_type codes (CLyman clyman_utils.h).
OBJ_CRT, OBJ_UPD, OBJ_GET, OBJ_DEL, OBJ_QUERY, OBJ_LOCK, OBJ_UNLOCK = 0, 1, 2, 3, 4, 5, 6
PROP_CRT, PROP_UPD, PROP_GET, PROP_DEL, PROP_QUERY = 8, 9, 10, 11, 12
ASSET_ADD, ASSET_DEL = 13, 14
NO_ERROR = 100

INT32 = (-(2**31), 2**31 - 1)
HANDLE_COUNTS = {"translation": 3, "rotation": 4, "scale": 3}
HANDLE_STRINGS = ("left_type", "right_type")
HANDLE_NUMBERS = ("left_x", "left_y", "right_x", "right_y")
TRANSFORM_INPUTS = ("translation", "euler_rotation", "quaternion_rotation", "scale")


# --- parsing: CLyman ignores what has the wrong type ---------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _integer(value: Any) -> int | None:
    """An int32, from an int or an integral float (CLyman accepts 3.0 for 3); else None."""
    number = _number(value)
    if number is None or not number.is_integer() or not INT32[0] <= number <= INT32[1]:
        return None
    return int(number)


def _numbers(value: Any) -> list[float] | None:
    if not isinstance(value, list) or not value:
        return None
    numbers = [_number(v) for v in value]
    return None if any(n is None for n in numbers) else [n for n in numbers if n is not None]


def _strings(source: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, str]:
    return {name: source[name] for name in names if isinstance(source.get(name), str)}


def _handles(source: Mapping[str, Any]) -> dict[str, Any] | None:
    found: dict[str, Any] = {}
    for name, count in HANDLE_COUNTS.items():
        items = source.get(f"{name}_handle")
        if not isinstance(items, list) or not items:
            continue
        parsed = []
        for item in items[:count]:  # extra items are ignored, as CLyman does
            if not isinstance(item, dict):
                continue
            handle: dict[str, Any] = {
                k: item[k] for k in HANDLE_STRINGS if isinstance(item.get(k), str)
            }
            handle.update({k: n for k in HANDLE_NUMBERS if (n := _number(item.get(k))) is not None})
            parsed.append(handle)
        found[name] = parsed
    return found or None


def _transform(source: Mapping[str, Any]) -> list[float] | None:
    """The transform to store, or None when the request sent no transform input."""
    inputs = {name: _numbers(source.get(name)) for name in TRANSFORM_INPUTS}
    if any(v is not None for v in inputs.values()):
        return build_transform(**inputs)
    given = _numbers(source.get("transform"))
    if given is not None and len(given) == 16:
        return given
    return None


def parse_object(source: Mapping[str, Any]) -> tuple[dict[str, str], ObjectPatch]:
    """One object of a request: its strings and everything an update would change."""
    strings = _strings(source, STRING_FIELDS)
    assets = source.get("assets")
    patch = ObjectPatch(
        strings=strings,
        frame=_integer(source.get("frame")),
        timestamp=_integer(source.get("timestamp")),
        transform=_transform(source),
        add_assets=[a for a in assets if isinstance(a, str)] if isinstance(assets, list) else [],
        handles=_handles(source),
    )
    return strings, patch


def draft_object(source: Mapping[str, Any]) -> ObjectRecord:
    strings, patch = parse_object(source)
    record = ObjectRecord(
        key="",
        tenant="",
        frame=patch.frame,
        timestamp=patch.timestamp,
        transform=patch.transform or [],
        assets=patch.add_assets,
        handles=patch.handles,
    )
    # The owner is the lock holder: only a lock sets it.
    fields: dict[str, Any] = {k: v for k, v in strings.items() if k != "owner"}
    return replace(record, **fields)


def object_query(source: Mapping[str, Any]) -> ObjectQuery:
    strings, patch = parse_object(source)
    raw_frame = _integer(source.get("frame"))
    return ObjectQuery(
        strings={k: v for k, v in strings.items() if v},
        # A negative frame takes no part in the query, as in CLyman; absent means "no frame".
        frame=raw_frame,
        timestamp=patch.timestamp if patch.timestamp is not None and patch.timestamp > -1 else None,
        assets=patch.add_assets,
    )


def _values(source: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    items = source.get("values")
    if not isinstance(items, list) or not items:
        return None
    values = []
    for item in items[:4]:
        if not isinstance(item, dict) or (value := _number(item.get("value"))) is None:
            continue
        entry: dict[str, Any] = {"value": value}
        entry.update({k: item[k] for k in HANDLE_STRINGS if isinstance(item.get(k), str)})
        entry.update({k: n for k in HANDLE_NUMBERS if (n := _number(item.get(k))) is not None})
        values.append(entry)
    return values


def parse_property(source: Mapping[str, Any]) -> PropertyPatch:
    return PropertyPatch(
        strings=_strings(source, PROPERTY_STRING_FIELDS),
        frame=_integer(source.get("frame")),
        timestamp=_integer(source.get("timestamp")),
        values=_values(source),
    )


# --- writing: CLyman's envelope ------------------------------------------------------------


def write_object(record: ObjectRecord) -> clyman_pb2.ClymanObject:
    out = clyman_pb2.ClymanObject(key=record.key)
    for name in STRING_FIELDS:
        if value := getattr(record, name):
            setattr(out, name, value)
    if record.frame is not None:
        out.frame = record.frame
    if record.timestamp is not None:
        out.timestamp = record.timestamp
    for name in HANDLE_COUNTS:
        for handle in (record.handles or {}).get(name, []):
            getattr(out, f"{name}_handle").add(**handle)
    out.transform.extend(record.transform)
    out.assets.extend(record.assets)
    return out


def write_property(record: PropertyRecord) -> clyman_pb2.ClymanProperty:
    out = clyman_pb2.ClymanProperty(key=record.key)
    for name in PROPERTY_STRING_FIELDS:
        if value := getattr(record, name):
            setattr(out, name, value)
    if record.frame is not None:
        out.frame = record.frame
    if record.timestamp is not None:
        out.timestamp = record.timestamp
    for value in record.values:
        out.values.add(**value)
    return out


Envelope = TypeVar("Envelope", clyman_pb2.ObjectList, clyman_pb2.PropertyList)


def _success(answer: Envelope, transaction_id: str | None) -> Envelope:
    """Completes a success envelope: err_code 100, the count, the echoed transaction id."""
    answer.err_code = NO_ERROR
    answer.num_records = len(
        answer.objects if isinstance(answer, clyman_pb2.ObjectList) else answer.properties
    )
    if transaction_id:
        answer.transaction_id = transaction_id
    return answer


def _object_list(
    msg_type: int, records: list[ObjectRecord], transaction_id: str | None
) -> clyman_pb2.ObjectList:
    objects = [write_object(r) for r in records]
    return _success(clyman_pb2.ObjectList(msg_type=msg_type, objects=objects), transaction_id)


def _property_list(
    msg_type: int, records: list[PropertyRecord], transaction_id: str | None
) -> clyman_pb2.PropertyList:
    properties = [write_property(r) for r in records]
    return _success(
        clyman_pb2.PropertyList(msg_type=msg_type, properties=properties), transaction_id
    )


def _body(
    struct: struct_pb2.Struct, items: str
) -> tuple[dict[str, Any], list[dict[str, Any]], str | None]:
    body = json_format.MessageToDict(struct)
    raw = body.get(items)
    if raw is None:
        entries: list[dict[str, Any]] = []
    elif isinstance(raw, list):
        entries = [e for e in raw if isinstance(e, dict)]
    else:
        raise MalformedBody(f"{items} must be an array", field=items)
    transaction = body.get("transaction_id")
    return body, entries, transaction if isinstance(transaction, str) else None


async def _as(msg_type: int, transaction_id: str | None, call: Awaitable[T]) -> T:
    """Runs a catalog call; its errors carry the operation's msg_type and transaction id."""
    try:
        return await call
    except KilnError as error:
        error.metadata["msg_type"] = str(msg_type)
        if transaction_id:
            error.metadata["transaction_id"] = transaction_id
        raise


async def _acknowledge(msg_type: int, call: Awaitable[object]) -> clyman_pb2.ObjectList:
    """Runs a change CLyman answers with an empty envelope (delete, lock, unlock, assets)."""
    await _as(msg_type, None, call)
    return _object_list(msg_type, [], None)


class ClymanServicer(clyman_pb2_grpc.ClymanServiceServicer):
    """CLyman's Object and Property APIs, each call scoped to the caller's tenant."""

    def __init__(self, catalog: ObjectCatalog) -> None:
        self._catalog = catalog

    async def CreateObjects(
        self, request: clyman_pb2.ClymanBodyRequest, context: grpc.aio.ServicerContext
    ) -> clyman_pb2.ObjectList:
        _, entries, tx = _body(request.body, "objects")
        drafts = [draft_object(e) for e in entries]
        records = await _as(OBJ_CRT, tx, self._catalog.create(current_tenant(), drafts))
        return _object_list(OBJ_CRT, records, tx)

    async def UpdateObject(
        self, request: clyman_pb2.ClymanKeyedBodyRequest, context: grpc.aio.ServicerContext
    ) -> clyman_pb2.ObjectList:
        _, entries, tx = _body(request.body, "objects")
        _, patch = parse_object(entries[0] if entries else {})
        record = await _as(OBJ_UPD, tx, self._catalog.update(current_tenant(), request.key, patch))
        return _object_list(OBJ_UPD, [record], tx)

    async def GetObject(
        self, request: clyman_pb2.ClymanKeyRequest, context: grpc.aio.ServicerContext
    ) -> clyman_pb2.ObjectList:
        record = await _as(OBJ_GET, None, self._catalog.get(current_tenant(), request.key))
        return _object_list(OBJ_GET, [record], None)

    async def DeleteObject(
        self, request: clyman_pb2.ClymanKeyRequest, context: grpc.aio.ServicerContext
    ) -> clyman_pb2.ObjectList:
        return await _acknowledge(OBJ_DEL, self._catalog.delete(current_tenant(), request.key))

    async def QueryObjects(
        self, request: clyman_pb2.ClymanBodyRequest, context: grpc.aio.ServicerContext
    ) -> clyman_pb2.ObjectList:
        body, entries, tx = _body(request.body, "objects")
        queries = [object_query(e) for e in entries]
        limit = _integer(body.get("num_records"))
        records = await _as(OBJ_QUERY, tx, self._catalog.query(current_tenant(), queries, limit))
        return _object_list(OBJ_QUERY, records, tx)

    async def LockObject(
        self, request: clyman_pb2.ClymanLockRequest, context: grpc.aio.ServicerContext
    ) -> clyman_pb2.ObjectList:
        return await _acknowledge(
            OBJ_LOCK,
            self._catalog.lock(
                current_tenant(), request.key, request.device, request.lock_ttl_seconds
            ),
        )

    async def UnlockObject(
        self, request: clyman_pb2.ClymanLockRequest, context: grpc.aio.ServicerContext
    ) -> clyman_pb2.ObjectList:
        return await _acknowledge(
            OBJ_UNLOCK, self._catalog.unlock(current_tenant(), request.key, request.device)
        )

    async def AddAsset(
        self, request: clyman_pb2.ClymanAssetRequest, context: grpc.aio.ServicerContext
    ) -> clyman_pb2.ObjectList:
        return await _acknowledge(
            ASSET_ADD,
            self._catalog.add_asset(current_tenant(), request.object_key, request.asset_key),
        )

    async def RemoveAsset(
        self, request: clyman_pb2.ClymanAssetRequest, context: grpc.aio.ServicerContext
    ) -> clyman_pb2.ObjectList:
        return await _acknowledge(
            ASSET_DEL,
            self._catalog.remove_asset(current_tenant(), request.object_key, request.asset_key),
        )

    async def CreateProperties(
        self, request: clyman_pb2.ClymanBodyRequest, context: grpc.aio.ServicerContext
    ) -> clyman_pb2.PropertyList:
        _, entries, tx = _body(request.body, "properties")
        drafts = []
        for entry in entries:
            patch = parse_property(entry)
            record = PropertyRecord(
                key="",
                tenant="",
                frame=patch.frame,
                timestamp=patch.timestamp,
                values=patch.values or [],
            )
            fields: dict[str, Any] = dict(patch.strings)
            drafts.append(replace(record, **fields))
        records = await _as(PROP_CRT, tx, self._catalog.create_properties(current_tenant(), drafts))
        return _property_list(PROP_CRT, records, tx)

    async def UpdateProperty(
        self, request: clyman_pb2.ClymanKeyedBodyRequest, context: grpc.aio.ServicerContext
    ) -> clyman_pb2.PropertyList:
        _, entries, tx = _body(request.body, "properties")
        patch = parse_property(entries[0] if entries else {})
        record = await _as(
            PROP_UPD, tx, self._catalog.update_property(current_tenant(), request.key, patch)
        )
        return _property_list(PROP_UPD, [record], tx)

    async def GetProperty(
        self, request: clyman_pb2.ClymanKeyRequest, context: grpc.aio.ServicerContext
    ) -> clyman_pb2.PropertyList:
        record = await _as(
            PROP_GET, None, self._catalog.get_property(current_tenant(), request.key)
        )
        return _property_list(PROP_GET, [record], None)

    async def DeleteProperty(
        self, request: clyman_pb2.ClymanKeyRequest, context: grpc.aio.ServicerContext
    ) -> clyman_pb2.PropertyList:
        await _as(PROP_DEL, None, self._catalog.delete_property(current_tenant(), request.key))
        return _property_list(PROP_DEL, [], None)

    async def QueryProperties(
        self, request: clyman_pb2.ClymanBodyRequest, context: grpc.aio.ServicerContext
    ) -> clyman_pb2.PropertyList:
        body, entries, tx = _body(request.body, "properties")
        queries = []
        for entry in entries:
            patch = parse_property(entry)
            queries.append(
                PropertyQuery(
                    strings={k: v for k, v in patch.strings.items() if v},
                    frame=patch.frame,
                    timestamp=patch.timestamp,
                )
            )
        limit = _integer(body.get("num_records"))
        records = await _as(
            PROP_QUERY, tx, self._catalog.query_properties(current_tenant(), queries, limit)
        )
        return _property_list(PROP_QUERY, records, tx)
