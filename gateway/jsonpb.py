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
from typing import Any, TypeAlias

from google.protobuf import json_format
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
    return json_format.MessageToDict(
        message,
        always_print_fields_with_no_presence=True,
        preserving_proto_field_name=False,
        descriptor_pool=pool,
    )


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
