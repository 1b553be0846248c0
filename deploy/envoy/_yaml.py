"""A small YAML writer for generated configuration: block style, keys in the order given.

The generated files are read by people in reviews and diffs, so they are block YAML rather than
JSON; PyYAML would do it too, but it is untyped here and its output depends on its version.
Strings that YAML could read as anything else (numbers, booleans, nulls, flow syntax) are
written double-quoted, in JSON's escaping, which YAML reads the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

_PLAIN = re.compile(r"[A-Za-z_/.][A-Za-z0-9_/.%@+=-]*")
# Words a YAML 1.1 reader (PyYAML, and Envoy's yaml-cpp via its own rules) takes as non-strings.
_RESERVED = frozenset(
    {"true", "false", "yes", "no", "on", "off", "y", "n", "null", "nan", "inf", ".nan", ".inf"}
)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if _PLAIN.fullmatch(value) and value.lower() not in _RESERVED:
            return value
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"cannot write {type(value).__name__} as YAML: {value!r}")


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, Mapping | list | tuple)


def _inline(value: Any) -> str | None:
    """The value on its key's line: a scalar, or an empty mapping or sequence."""
    if _is_scalar(value):
        return _scalar(value)
    if isinstance(value, Mapping) and not value:
        return "{}"
    if isinstance(value, list | tuple) and not value:
        return "[]"
    return None


def _mapping(value: Mapping[str, Any], indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    for key, item in value.items():
        name = _scalar(str(key))
        inline = _inline(item)
        if inline is not None:
            lines.append(f"{pad}{name}: {inline}")
        elif isinstance(item, Mapping):
            lines.append(f"{pad}{name}:")
            lines.extend(_mapping(item, indent + 2))
        else:
            lines.append(f"{pad}{name}:")
            lines.extend(_sequence(item, indent + 2))
    return lines


def _sequence(value: Sequence[Any], indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    for item in value:
        inline = _inline(item)
        if inline is not None:
            lines.append(f"{pad}- {inline}")
        elif isinstance(item, Mapping):
            nested = _mapping(item, indent + 2)
            lines.append(f"{pad}- {nested[0].lstrip()}")
            lines.extend(nested[1:])
        else:
            raise TypeError("sequences of sequences are not written")
    return lines


def dumps(document: Mapping[str, Any]) -> str:
    """`document` as block YAML, ending with a newline."""
    return "\n".join(_mapping(document, 0)) + "\n"
