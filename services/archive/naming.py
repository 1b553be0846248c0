"""Member names for archives: Scenario's `fileNameTemplate`, made safe and unique.

A template substitutes `<assetId>`, `<prompt>`, `<num>`, `<generator>` and `<seed>` from the
asset; unknown tokens stay as written. Whatever the template and the metadata hold, the result
is one plain file name: no path separators, no `..`, no control or reserved characters, at most
`MAX_NAME` characters, with the asset's own extension. Names that collide get ` (2)`, ` (3)`, ….
With `flat` false, members go into one folder per asset kind (`image/`, `3d/`, …).
"""

from __future__ import annotations

import mimetypes
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

MAX_NAME = 150
_TOKEN = re.compile(r"<(assetId|prompt|num|generator|seed)>")
# Path separators, Windows-reserved characters and every control character.
_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]+')
_SPACES = re.compile(r"\s+")
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,10}")
_WINDOWS_RESERVED = re.compile(r"(?i)(con|prn|aux|nul|com[1-9]|lpt[1-9])(\..*)?")
_FOLDERS = {"image", "3d", "archive", "text", "video", "audio"}


@dataclass(frozen=True)
class NamedAsset:
    """What naming needs of an asset."""

    id: str
    kind: str
    mime_type: str
    metadata: Mapping[str, Any]


def extension_of(asset: NamedAsset) -> str:
    """The asset's own extension: from its uploaded file name, else from its MIME type."""
    file_name = str(asset.metadata.get("fileName", "") or "")
    suffix = PurePosixPath(file_name.replace("\\", "/")).suffix
    if suffix and _EXTENSION.fullmatch(suffix):
        return suffix.lower()
    guessed = mimetypes.guess_extension(asset.mime_type or "") or ""
    return {".jpe": ".jpg", ".jpeg": ".jpg"}.get(guessed, guessed)


def render(template: str, asset: NamedAsset) -> str:
    """The template with the asset's values substituted (missing values become empty)."""

    def value(match: re.Match[str]) -> str:
        token = match.group(1)
        if token == "assetId":
            return asset.id
        raw = asset.metadata.get(token)
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)  # metadata travels as protobuf Struct, whose numbers are doubles
        return "" if raw is None else str(raw)

    return _TOKEN.sub(value, template)


def safe_stem(text: str) -> str:
    """`text` as a harmless file-name stem ("" when nothing usable is left)."""
    text = unicodedata.normalize("NFC", text)
    text = _UNSAFE.sub("_", text)
    text = _SPACES.sub(" ", text).strip(" .")
    while ".." in text:
        text = text.replace("..", ".")
    if _WINDOWS_RESERVED.fullmatch(text):
        text = "_" + text
    return text[:MAX_NAME].rstrip(" .")


def member_names(
    assets: Iterable[NamedAsset], *, template: str = "", flat: bool = True
) -> list[str]:
    """One unique, safe member name per asset, in order."""
    taken: set[str] = set()
    names: list[str] = []
    for asset in assets:
        stem = safe_stem(render(template, asset)) if template else ""
        if not stem:
            stem = safe_stem(asset.id) or "asset"
        extension = extension_of(asset)
        if extension and stem.lower().endswith(extension):
            stem = stem[: -len(extension)] or stem
        folder = "" if flat else f"{asset.kind if asset.kind in _FOLDERS else 'other'}/"
        name = f"{folder}{stem}{extension}"
        count = 1
        while name.lower() in taken:
            count += 1
            name = f"{folder}{stem} ({count}){extension}"
        taken.add(name.lower())
        names.append(name)
    return names
