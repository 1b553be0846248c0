"""What a scene import reads and an export writes, and the file names both make: cheap checks
for the request side, which does not load the 3D stack (trimesh, scipy), and the rules the
import and export modules follow.

File names inside an upload or an output come from users (`../../etc/passwd`, `CON`, empty);
`is_plain_name` says whether a name may be used as it is, `safe_file_stem` makes any name safe.
"""

from __future__ import annotations

import re

MODEL_EXTENSIONS = ("glb", "gltf", "fbx", "obj", "ply", "stl", "off")
"""The model formats an import reads, in the order the main model file is chosen."""

SUPPORTED = ("obj", "glb", "gltf", "stl", "ply")
"""The extensions Kiln exports."""
CLARA_ONLY = ("babylon", "blend", "fbx", "dae", "json", "threejs", "x3d", "v2bundle")
"""Extensions Clara lists and Kiln does not produce: refused with their own message."""


class ExportRefused(ValueError):
    """An export that cannot be made; the message is for the caller."""


def normalized_extension(extension: str) -> str:
    return extension.strip().lower().removeprefix(".")


def check_export(extension: str, zip_output: bool) -> None:
    """Refuses (`ExportRefused`) an extension Kiln does not export and STL without zip; cheap,
    for before a job is queued."""
    normalized = normalized_extension(extension)
    supported = ", ".join(SUPPORTED)
    if normalized in CLARA_ONLY:
        raise ExportRefused(
            f"export to .{normalized} is not supported by Kiln; supported: {supported}"
        )
    if normalized not in SUPPORTED:
        raise ExportRefused(f"unsupported export extension {extension!r}; supported: {supported}")
    if normalized == "stl" and not zip_output:
        raise ExportRefused("stl export is always zipped; zip=false is not supported")


_PLAIN_NAME = re.compile(r"[^/\\:\x00-\x1f]+")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
# Names Windows reserves whatever the extension; a file called so cannot be created there.
_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL"]
    + [f"COM{i}" for i in range(1, 10)]
    + [f"LPT{i}" for i in range(1, 10)]
)


def is_plain_name(name: str) -> bool:
    """Whether `name` names a file directly inside a folder: no separator (either kind), no
    drive or URL scheme (`:`), no control character, not `.` or `..`."""
    return bool(_PLAIN_NAME.fullmatch(name)) and name not in (".", "..")


def safe_file_stem(name: str, default: str = "object", max_length: int = 64) -> str:
    """`name` made into a file name stem safe on any system: only letters, digits, `.`, `_`
    and `-`; no leading dot (hidden files, `..`); not a name Windows reserves; never empty."""
    stem = _UNSAFE_CHARS.sub("_", name).strip("._-")[:max_length].strip("._-")
    if not stem:
        return default
    if stem.split(".")[0].upper() in _WINDOWS_RESERVED:
        return f"{stem}_"
    return stem


def unique_file_name(stem: str, extension: str, taken: set[str]) -> str:
    """`stem.extension` (`stem` when there is no extension), or `stem-2.extension`, …,
    whichever is not in `taken` (compared without case, as case-insensitive file systems and
    zip tools do); the name is added to `taken`."""
    suffix = f".{extension}" if extension else ""
    name = f"{stem}{suffix}"
    number = 1
    while name.lower() in taken:
        number += 1
        name = f"{stem}-{number}{suffix}"
    taken.add(name.lower())
    return name


def extension_of(name: str) -> str:
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""
