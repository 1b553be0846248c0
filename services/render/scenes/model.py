"""The shape a scene takes between the objects service and the 3D code.

A scene is a list of `Placed` meshes. Each mesh is in its own (local) coordinates and carries
its look: `TextureVisuals` (UVs and a material, whose base colour texture is embedded) or
`ColorVisuals` (vertex or face colours). `transform` is the object's 4x4 world matrix in the
column-vector convention trimesh and CLyman share (translation in the last column), so
`transform.flatten()` is CLyman's row-major `transform` field and back.

A mesh is stored as one GLB asset (`mesh_to_glb`): geometry, UVs, colours, material and its
texture in one standard file any viewer opens, and which loads back to the same arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import trimesh

GLB_MIME = "model/gltf-binary"


class SceneFileInvalid(Exception):
    """A file that cannot become a scene (broken, unsupported, or empty); the message is for
    the caller and names the file, never a path on this machine."""


class SceneTooLarge(SceneFileInvalid):
    """A file over a size, triangle or time budget."""


class SceneEmpty(Exception):
    """A scene with no meshes to export or render."""


@dataclass(frozen=True)
class Placed:
    """One mesh of a scene, where it stands."""

    name: str
    """The object's name (file-name-safe only after `safe_name`)."""
    mesh: trimesh.Trimesh
    """Geometry in local coordinates, with its visuals."""
    transform: np.ndarray
    """4x4 float64 world matrix, column vectors: `transform.flatten()` is CLyman's form."""


def matrix_of(row_major: Sequence[float]) -> np.ndarray:
    """A 4x4 matrix from CLyman's 16 row-major numbers; identity when there are none."""
    if len(row_major) == 0:
        return np.eye(4)
    if len(row_major) != 16:
        raise ValueError(f"a transform has 16 numbers, got {len(row_major)}")
    return np.asarray(row_major, dtype=np.float64).reshape(4, 4)


def row_major(matrix: np.ndarray) -> list[float]:
    """CLyman's 16 numbers of a 4x4 matrix."""
    return [float(v) for v in np.asarray(matrix, dtype=np.float64).reshape(16)]


def mesh_to_glb(mesh: trimesh.Trimesh) -> bytes:
    """One mesh as a GLB file, its texture embedded."""
    data = trimesh.Scene(mesh).export(file_type="glb")
    assert isinstance(data, bytes)
    return data


def mesh_from_glb(data: bytes) -> trimesh.Trimesh:
    """The mesh of a GLB written by `mesh_to_glb` (several meshes are joined)."""
    try:
        loaded = trimesh.load(trimesh.util.wrap_as_stream(data), file_type="glb", process=False)
    except Exception as exc:
        raise SceneFileInvalid(f"a stored mesh is not a readable GLB ({exc})") from None
    if isinstance(loaded, trimesh.Trimesh):
        return loaded
    meshes = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh)]
    if not meshes:
        raise SceneFileInvalid("a stored mesh holds no triangles")
    return meshes[0] if len(meshes) == 1 else trimesh.util.concatenate(meshes)


def triangle_count(placed: Sequence[Placed]) -> int:
    return sum(len(p.mesh.faces) for p in placed)
