"""JSON ⇄ protobuf with the gateway's one set of options.

Output uses proto3 JSON with lowerCamelCase (or `json_name`) keys and **emits fields at their
default values** (`0`, `""`, `false`, `[]`), so every documented field is present in every
answer, as clients written against the source APIs expect. Fields with presence (messages,
`optional`, oneof members) appear only when set. int64 stays a string, as proto3 JSON
requires; protos use int32/double where a document shows a number. Doubles that hold an
integer print without a fraction (`1`, not `1.0`), as Go's protojson and Envoy print them.

Input accepts proto field names and JSON names alike and refuses unknown fields.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import Message
from starlette.responses import Response

JsonValue: TypeAlias = Any
"""A value `json.loads` can produce (mypy cannot express the recursive union usefully)."""

_MAX_EXACT_FLOAT = 2**53


def message_to_json(message: Message, pool: DescriptorPool | None = None) -> JsonValue:
    """A message as a JSON-ready value, with the gateway's output options.

    `pool` resolves the types inside `google.protobuf.Any` fields (default: the default pool).
    """
    value = json_format.MessageToDict(
        message,
        always_print_fields_with_no_presence=True,
        preserving_proto_field_name=False,
        descriptor_pool=pool,
    )
    return _canonical(value, cast(Descriptor, message.DESCRIPTOR))


# Key order. json_format writes set fields before fields at their default, and map entries
# (Struct's too) in hash order, so the same message could print two ways. Kiln's answers are
# canonical instead, the order Envoy's transcoder prints the same message in (the edge and the
# gateway answer the same bytes): fields in declaration order, map and Struct keys sorted, as
# protobuf's deterministic serialization sorts them (integer keys by value).

_STRUCT = "google.protobuf.Struct"
_VALUE = "google.protobuf.Value"
_LIST = "google.protobuf.ListValue"
#: Well-known types whose JSON is not an object of their fields, or holds nothing to order.
_OPAQUE = frozenset(
    {
        "google.protobuf.Any",
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
        "google.protobuf.Empty",
        "google.protobuf.DoubleValue",
        "google.protobuf.FloatValue",
        "google.protobuf.Int64Value",
        "google.protobuf.UInt64Value",
        "google.protobuf.Int32Value",
        "google.protobuf.UInt32Value",
        "google.protobuf.BoolValue",
        "google.protobuf.StringValue",
        "google.protobuf.BytesValue",
    }
)
_INTEGER_KEYS = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


@dataclass(frozen=True)
class _Field:
    name: str
    """The JSON key."""
    message: Descriptor | None
    """The type to descend into: the field's message, or a map's value message."""
    is_map: bool
    integer_keys: bool


_PLANS: dict[str, tuple[_Field, ...]] = {}


def _plan(descriptor: Descriptor) -> tuple[_Field, ...]:
    plan = _PLANS.get(descriptor.full_name)
    if plan is None:
        fields = []
        for field in descriptor.fields:
            target = field.message_type
            is_map = False
            integer_keys = False
            if target is not None and target.GetOptions().map_entry:
                is_map = True
                integer_keys = target.fields_by_name["key"].type in _INTEGER_KEYS
                target = target.fields_by_name["value"].message_type
            fields.append(_Field(field.json_name, target, is_map, integer_keys))
        plan = _PLANS[descriptor.full_name] = tuple(fields)
    return plan


def _canonical(value: JsonValue, descriptor: Descriptor | None) -> JsonValue:
    if descriptor is None or value is None:
        return value
    kind = descriptor.full_name
    if kind in _OPAQUE:
        return value
    if kind in (_STRUCT, _VALUE, _LIST):
        return _sorted_json(value)
    if isinstance(value, list):
        return [_canonical(item, descriptor) for item in value]
    if not isinstance(value, dict):
        return value
    ordered: dict[str, JsonValue] = {}
    for field in _plan(descriptor):
        if field.name not in value:
            continue
        item = value[field.name]
        if field.is_map:
            keys = sorted(item, key=int) if field.integer_keys else sorted(item)
            item = {key: _canonical(item[key], field.message) for key in keys}
        elif field.message is not None:
            item = _canonical(item, field.message)
        ordered[field.name] = item
    if len(ordered) != len(value):  # keys no field names ("@type" and the like) keep their place
        ordered.update((k, v) for k, v in value.items() if k not in ordered)
    return ordered


def _sorted_json(value: JsonValue) -> JsonValue:
    if isinstance(value, dict):
        return {key: _sorted_json(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_json(item) for item in value]
    return value


def parse_into(value: JsonValue, message: Message, pool: DescriptorPool | None = None) -> None:
    """Merges a decoded JSON value into `message`; raises json_format.ParseError."""
    json_format.ParseDict(value, message, ignore_unknown_fields=False, descriptor_pool=pool)


def _normalise(value: JsonValue) -> JsonValue:
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < _MAX_EXACT_FLOAT:
            return int(value)
        return value
    if isinstance(value, dict):
        return {key: _normalise(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_normalise(item) for item in value]
    return value


def dumps(value: JsonValue) -> bytes:
    """Compact UTF-8 JSON, integral doubles printed as integers."""
    return json.dumps(
        _normalise(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False
    ).encode()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads(raw: bytes) -> JsonValue:
    """Strict JSON: UTF-8 only, no NaN/Infinity literals; raises ValueError."""
    text = raw.decode("utf-8")
    return json.loads(text, parse_constant=_refuse_constant)


def json_response(
    value: JsonValue, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON response rendered with `dumps`."""
    return Response(
        dumps(value), status_code=status, headers=dict(headers or {}), media_type="application/json"
    )
