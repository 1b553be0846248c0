"""Uploaded 3D files (untrusted) → a scene of `Placed` meshes, within budgets.

Why a child process: the parsers (trimesh's Python loaders, assimp's C++ FBX reader, Pillow's
image decoders) run on bytes anyone can upload. A crash, a runaway allocation or an endless
loop in one of them must cost a child process, not the render service and the other calls it
is serving. So the parse runs in `python -m services.render.scenes._parse_child`:

- under RLIMIT_AS (`max_memory_bytes`), so a hostile file cannot exhaust the host's memory
  (the child sees a MemoryError, or dies, and the import is refused);
- under RLIMIT_CPU (a backstop a little over `max_seconds`) and killed by the parent when the
  wall-clock budget `max_seconds` is over (this budget includes the child's start, ~0.5 s);
- with no core dumps and an environment reduced to what Python needs, so the service's
  secrets (database, storage, token keys) are not in the process that reads hostile files.

What the other budgets protect: file count and sizes are checked here, from `stat`, before
anything is parsed (a parse costs memory and time proportional to its input); triangles,
objects (mesh nodes) and texture pixels are counted by the child right after loading and
before anything heavier (decoding textures, writing meshes), since a small file can describe
a huge scene (instancing, a tiny PNG declaring 60000 x 60000 pixels).

How references are confined: the child reads only the uploaded files. Every name a model
refers to (an OBJ's `mtllib`, an MTL's `map_Kd`, a glTF buffer or image URI, an FBX texture
file name) must be the plain name of one of the uploaded files: a name with a path separator,
`..`, a drive or URL scheme, or one that was not uploaded, is refused without touching the
file system. A refused reference counts as missing, the same as a reference to a file the user
did not upload: the model loads without that texture or material (a glTF without its buffer
cannot load and is refused as invalid). `data:` URIs (base64) are decoded in place; nothing
is ever fetched from the network.

Several model files in one import (say `chair.obj` and `table.glb`): all are imported, each
contributing its mesh nodes, the main one first. The main one is chosen by extension priority
(`MODEL_EXTENSIONS`: glb, gltf, fbx, obj, ply, stl, off) and gives `source_format`; the other
files (MTL, textures, buffers, unknown extensions) are resources, read only when referenced.

How the result comes back: the child writes into a fresh directory inside the upload folder
one GLB per distinct mesh (`model.mesh_to_glb`: geometry, UVs, colours, material and texture
in one standard file), the texture images, and last a JSON manifest (node names, world
transforms as 16 row-major numbers, which GLB and textures each node uses), or a JSON error
(kind and message) when it refuses the upload. The parent trusts only the manifest's shape,
reads the files back into an `ImportedScene` and removes the directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import shutil
import signal
import stat
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

from services.render.scenes.formats import MODEL_EXTENSIONS, extension_of, is_plain_name
from services.render.scenes.model import (
    Placed,
    SceneFileInvalid,
    SceneTooLarge,
    matrix_of,
    mesh_from_glb,
)

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
ERROR_NAME = "error.json"
CHILD_LOG_NAME = "child.log"

# The repository root, so `python -m services.render.scenes._parse_child` imports from it.
_REPO_ROOT = Path(__file__).resolve().parents[3]
_CHILD_MODULE = "services.render.scenes._parse_child"
# Most of the child's log kept for the service's own log on a failure.
_CHILD_LOG_TAIL = 4000


@dataclass(frozen=True)
class ImportBudget:
    """What one import may cost. The defaults match `ScenesConfig`'s."""

    max_file_bytes: int = 256 * 1024**2
    """One uploaded file."""
    max_total_bytes: int = 512 * 1024**2
    """All files of one import together."""
    max_files: int = 64
    max_triangles: int = 5_000_000
    """Triangles of the whole scene, an instanced mesh counted once per node using it."""
    max_seconds: float = 120.0
    """Wall time of the parse, the child process's start included."""
    max_memory_bytes: int = 4 * 1024**3
    """RLIMIT_AS of the parsing child."""
    max_objects: int = 10_000
    """Mesh nodes (future `Placed`s) of the scene: each becomes an object of its own."""
    max_texture_pixels: int = 8192 * 8192
    """Width x height of any one texture image, checked before it is decoded."""


@dataclass(frozen=True)
class Texture:
    """One texture image of an import."""

    name: str
    """A safe plain file name (letters, digits, `.`, `_`, `-`), unique within the import."""
    data: bytes
    """The encoded image: the uploaded JPEG or PNG bytes as they were, other images as PNG."""
    mime_type: str


@dataclass(frozen=True)
class ImportedNode:
    """One mesh node of an upload, as the parse stored it."""

    name: str
    transform: np.ndarray
    """4x4 world matrix (column vectors; `row_major` is CLyman's form)."""
    mesh_key: str
    """The stored mesh it shows: nodes with the same key are instances of one mesh."""
    glb: bytes
    """That mesh as a GLB (`model.mesh_to_glb`), visuals and texture embedded."""
    triangles: int
    textures: list[int]
    """Indices into `ImportedScene.textures` of the images its material uses."""


@dataclass(frozen=True)
class ImportedScene:
    """What an upload holds: its nodes with their meshes as stored GLB bytes, so a caller that
    only stores them (the import job) never decodes a mesh; `placed` decodes on first use."""

    nodes: list[ImportedNode]
    textures: list[Texture]
    """The distinct texture images the meshes use, each once."""
    source_format: str
    """The main model file's format: one of `MODEL_EXTENSIONS`."""
    parse_peak_rss_bytes: int = 0
    """The parsing child's peak resident memory."""

    @property
    def texture_of(self) -> list[list[int]]:
        """For each node, the indices into `textures` of the images its material uses."""
        return [node.textures for node in self.nodes]

    @property
    def triangles(self) -> int:
        return sum(node.triangles for node in self.nodes)

    @functools.cached_property
    def placed(self) -> list[Placed]:
        """One per node: its world matrix and its mesh (in local coordinates, with visuals).
        Instances get their own copy, so changing one object's mesh cannot change another's."""
        loaded: dict[str, trimesh.Trimesh] = {}
        placed: list[Placed] = []
        for node in self.nodes:
            mesh = loaded.get(node.mesh_key)
            if mesh is None:
                mesh = loaded[node.mesh_key] = mesh_from_glb(node.glb)
            else:
                mesh = mesh.copy()
            placed.append(Placed(name=node.name, mesh=mesh, transform=node.transform))
        return placed


def model_files(files: Sequence[str]) -> list[str]:
    """The model files among `files`, the main one first (by extension priority, then in the
    order given)."""
    models = [name for name in files if extension_of(name) in MODEL_EXTENSIONS]
    return sorted(models, key=lambda name: MODEL_EXTENSIONS.index(extension_of(name)))


def describe_bytes(size: float) -> str:
    """A size for a message: `900 bytes`, `9.5 MiB`, `4 GiB`."""
    if size < 1024**2:
        return f"{size:,.0f} bytes"
    if size < 1024**3:
        return f"{size / 1024**2:.4g} MiB"
    return f"{size / 1024**3:.4g} GiB"


def check_upload(folder: Path, files: Sequence[str], budget: ImportBudget) -> list[str]:
    """The upload's model files, main first, after the checks that need no parse: names,
    count, sizes (`SceneTooLarge`), at least one model file (`SceneFileInvalid`)."""
    if len(files) > budget.max_files:
        raise SceneTooLarge(
            f"an import holds at most {budget.max_files} files, this one has {len(files)}"
        )
    if len(set(files)) != len(files):
        raise SceneFileInvalid("the same file name appears twice in one import")
    total = 0
    for name in files:
        if not is_plain_name(name):
            raise SceneFileInvalid(f"{name!r} is not a plain file name")
        try:
            info = (folder / name).lstat()
        except FileNotFoundError:
            raise SceneFileInvalid(f"{name} was not uploaded") from None
        if not stat.S_ISREG(info.st_mode):
            raise SceneFileInvalid(f"{name} is not a plain file")
        if info.st_size > budget.max_file_bytes:
            raise SceneTooLarge(
                f"{name} is {describe_bytes(info.st_size)}, over the "
                f"{describe_bytes(budget.max_file_bytes)} budget of one file"
            )
        total += info.st_size
    if total > budget.max_total_bytes:
        raise SceneTooLarge(
            f"the files of this import are {describe_bytes(total)} together, over the "
            f"{describe_bytes(budget.max_total_bytes)} budget of one import"
        )
    models = model_files(files)
    if not models:
        supported = ", ".join(f".{extension}" for extension in MODEL_EXTENSIONS)
        raise SceneFileInvalid(f"the upload holds no 3D model file; supported: {supported}")
    return models


async def parse_upload(folder: Path, files: Sequence[str], budget: ImportBudget) -> ImportedScene:
    """The scene the uploaded `files` (already written into the private directory `folder`
    under these plain names) describe, parsed in a child process within `budget`.

    Raises `SceneTooLarge` for an upload over a budget (size, files, triangles, objects,
    texture pixels, time, memory) and `SceneFileInvalid` for one that is broken, empty (no
    triangles) or holds no model file; the messages name the uploaded files, never a path.
    """
    folder, models, out = _prepare(folder, files, budget)
    try:
        await _run_child(folder, out, files, models, budget)
        return await asyncio.to_thread(_read_result, out, models)
    finally:
        await asyncio.to_thread(shutil.rmtree, out, True)


def _prepare(
    folder: Path, files: Sequence[str], budget: ImportBudget
) -> tuple[Path, list[str], Path]:
    """The upload's absolute folder (the child runs with the repository as its working
    directory), its model files (`check_upload`), and a fresh directory for the result."""
    folder = folder.resolve()
    models = check_upload(folder, files, budget)
    return folder, models, Path(tempfile.mkdtemp(prefix=".parsed-", dir=folder))


def _child_environment() -> dict[str, str]:
    """What the child needs of the environment: where Python finds the code, and single
    threaded numeric libraries (each BLAS or OpenMP thread reserves address space, which
    counts against RLIMIT_AS, and a parse gains nothing from them)."""
    paths = [str(_REPO_ROOT)]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    environment = {
        "PYTHONPATH": os.pathsep.join(paths),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
    }
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        environment[variable] = "1"
    return environment


async def _run_child(
    folder: Path, out: Path, files: Sequence[str], models: list[str], budget: ImportBudget
) -> None:
    """Runs the parse; returns when it wrote a manifest, raises its refusal otherwise."""
    request = {
        "folder": str(folder),
        "out": str(out),
        "files": list(files),
        "models": models,
        "budget": asdict(budget),
    }
    main = models[0]
    child_log = os.open(out / CHILD_LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            _CHILD_MODULE,
            json.dumps(request),
            cwd=_REPO_ROOT,
            env=_child_environment(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=child_log,
        )
    finally:
        os.close(child_log)
    try:
        returncode = await asyncio.wait_for(process.wait(), timeout=budget.max_seconds)
    except TimeoutError:
        raise SceneTooLarge(f"reading {main} took longer than {budget.max_seconds:g} s") from None
    finally:
        # On a timeout, and when the caller is cancelled, the child must not outlive the
        # call: kill it and reap it (no zombie), even if the wait is cancelled again.
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await asyncio.shield(process.wait())

    error = _read_json(out / ERROR_NAME)
    if error is not None:
        kind, message = error.get("kind"), str(error.get("message", ""))
        raise (SceneTooLarge if kind == "too_large" else SceneFileInvalid)(message)
    if returncode == 0 and (out / MANIFEST_NAME).is_file():
        return
    log.warning(
        "scene import child failed",
        extra={"returncode": returncode, "child_log": _log_tail(out / CHILD_LOG_NAME)},
    )
    if returncode == -signal.SIGXCPU:  # the CPU-time backstop
        raise SceneTooLarge(f"reading {main} took more than {math.ceil(budget.max_seconds)} s")
    if returncode == -signal.SIGKILL:  # the CPU hard limit, or the kernel out of memory
        raise SceneTooLarge(f"reading {main} needed more memory or time than an import may use")
    if returncode < 0:
        raise SceneFileInvalid(f"{main} could not be read (the parser crashed)")
    raise SceneFileInvalid(f"{main} could not be read")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _log_tail(path: Path) -> str:
    try:
        with open(path, "rb") as file:
            file.seek(max(0, file.seek(0, os.SEEK_END) - _CHILD_LOG_TAIL))
            return file.read().decode(errors="replace")
    except OSError:
        return ""


def _read_result(out: Path, models: list[str]) -> ImportedScene:
    """The `ImportedScene` of a child's manifest (see `_parse_child.write_result`)."""
    manifest = _read_json(out / MANIFEST_NAME)
    try:
        assert manifest is not None
        textures = [
            Texture(
                name=str(entry["name"]),
                data=(out / _plain(entry["file"])).read_bytes(),
                mime_type=str(entry["mime_type"]),
            )
            for entry in manifest["textures"]
        ]
        meshes = {
            str(key): (out / _plain(file)).read_bytes() for key, file in manifest["meshes"].items()
        }
        triangles = {str(key): int(n) for key, n in manifest["triangles"].items()}
        nodes: list[ImportedNode] = []
        for node in manifest["nodes"]:
            key = str(node["mesh"])
            used = [int(index) for index in node["textures"]]
            if any(not 0 <= index < len(textures) for index in used):
                raise ValueError("a texture index out of range")
            nodes.append(
                ImportedNode(
                    name=str(node["name"]),
                    transform=matrix_of(node["transform"]),
                    mesh_key=key,
                    glb=meshes[key],
                    triangles=triangles[key],
                    textures=used,
                )
            )
    except (AssertionError, KeyError, TypeError, ValueError, OSError) as exc:
        # The child is our own code: a bad manifest is a bug, not the user's file.
        log.error("scene import child wrote an unreadable result: %r", exc)
        raise SceneFileInvalid(f"{models[0]} could not be read") from None
    return ImportedScene(
        nodes=nodes,
        textures=textures,
        source_format=extension_of(models[0]),
        parse_peak_rss_bytes=int(manifest.get("peak_rss_bytes", 0)),
    )


def _plain(name: object) -> str:
    """A file name of the manifest, which must be plain (the child writes only those)."""
    if not isinstance(name, str) or not is_plain_name(name):
        raise ValueError(f"not a plain file name: {name!r}")
    return name
