"""Request fields bound from path variables and query parameters.

Each `name=value` pair of the URL names a field by its dotted path (proto names or JSON names
at every level) and becomes the field's proto3 JSON value; json_format then does the typed
conversion and range checks, so a query parameter accepts exactly what the same field would
accept in a JSON body, plus the unquoted forms a URL needs (`true`, `1`, enum names).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

# Well-known messages whose proto3 JSON form is a string, so a URL can carry them.
_STRING_MESSAGES = frozenset(
    {
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
        "google.protobuf.Value",
    }
)
_WRAPPERS = frozenset(
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)
# strconv.ParseBool's spellings, as grpc-gateway accepts them.
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


class FieldPathError(ValueError):
    """A path or query parameter that cannot be bound to the request message."""


@dataclass(frozen=True)
class FieldRef:
    """A resolved dotted field path: the field descriptors from the root message down."""

    fields: tuple[FieldDescriptor, ...]

    @property
    def canonical(self) -> str:
        """The path in proto field names, `a.b`."""
        return ".".join(f.name for f in self.fields)

    @property
    def leaf(self) -> FieldDescriptor:
        return self.fields[-1]

    def within(self, other: str) -> bool:
        """True when this path is `other` or lies under it (both canonical)."""
        mine = self.canonical
        return mine == other or mine.startswith(other + ".")


def _is_map(field: FieldDescriptor) -> bool:
    message = field.message_type
    return message is not None and message.GetOptions().map_entry


def _is_repeated(field: FieldDescriptor) -> bool:
    # protobuf 7 spells it `is_repeated`; `label` is deprecated there.
    repeated: bool = field.is_repeated
    return repeated


def _message_name(field: FieldDescriptor) -> str:
    message = field.message_type
    return "" if message is None else str(message.full_name)


def _is_leaf_message(field: FieldDescriptor) -> bool:
    name = _message_name(field)
    return name in _STRING_MESSAGES or name in _WRAPPERS


def _lookup(message: Descriptor, name: str) -> FieldDescriptor | None:
    found: FieldDescriptor | None = message.fields_by_name.get(name)
    if found is not None:
        return found
    return next((f for f in message.fields if f.json_name == name), None)


def resolve(message: Descriptor, dotted: str) -> FieldRef | None:
    """Resolves `a.b.c` from `message`; None when some name is not a field there.

    Raises FieldPathError when the path goes through a field that is not a singular message.
    """
    fields: list[FieldDescriptor] = []
    names = dotted.split(".")
    current: Descriptor = message
    for index, name in enumerate(names):
        field = _lookup(current, name)
        if field is None:
            return None
        fields.append(field)
        if index == len(names) - 1:
            break
        child = field.message_type
        if child is None or _is_leaf_message(field) or _is_repeated(field):
            raise FieldPathError(
                f"{dotted!r} goes through {field.name!r}, which is not a singular message"
            )
        current = child
    return FieldRef(tuple(fields))


def check_bindable(ref: FieldRef, *, repeated_ok: bool) -> None:
    """Raises FieldPathError unless a URL string can set the field `ref` names."""
    leaf = ref.leaf
    if _is_map(leaf):
        raise FieldPathError(f"map field {ref.canonical!r} cannot be set from the URL")
    if leaf.type == FieldDescriptor.TYPE_MESSAGE and not _is_leaf_message(leaf):
        raise FieldPathError(f"message field {ref.canonical!r} cannot be set from the URL")
    if _is_repeated(leaf) and not repeated_ok:
        raise FieldPathError(f"repeated field {ref.canonical!r} cannot be a path variable")


def _scalar(field: FieldDescriptor, raw: str, name: str) -> Any:
    kind = field.type
    if field.message_type is not None and _message_name(field) in _WRAPPERS:
        kind = field.message_type.fields_by_name["value"].type
    if kind == FieldDescriptor.TYPE_BOOL:
        if raw in _TRUE:
            return True
        if raw in _FALSE:
            return False
        raise FieldPathError(f"{name}: {raw!r} is not a boolean (true or false)")
    # Every other type's proto3 JSON accepts the string form; json_format checks it.
    return raw


def json_value(ref: FieldRef, values: Sequence[str], name: str) -> Any:
    """The proto3 JSON value of the field from its URL strings (one per repeated key)."""
    check_bindable(ref, repeated_ok=True)
    if _is_repeated(ref.leaf):
        return [_scalar(ref.leaf, raw, name) for raw in values]
    if len(values) != 1:
        raise FieldPathError(f"{name}: {ref.canonical!r} takes one value, got {len(values)}")
    return _scalar(ref.leaf, values[0], name)


def assign(target: dict[str, Any], ref: FieldRef, value: Any) -> None:
    """Sets `value` at the field's JSON path inside `target`, creating parents."""
    node = target
    for field in ref.fields[:-1]:
        child = node.setdefault(field.json_name, {})
        if not isinstance(child, dict):
            raise FieldPathError(f"{ref.canonical!r} conflicts with a value for its parent")
        node = child
    if isinstance(node.get(ref.leaf.json_name), dict):
        raise FieldPathError(f"{ref.canonical!r} conflicts with values for its fields")
    node[ref.leaf.json_name] = value
