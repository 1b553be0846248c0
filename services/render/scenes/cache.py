"""Decoded meshes kept between renders and exports of the same scene.

A mesh asset's bytes never change under its key: asset ids are never reused (an import's
derived ids are only written again by a retry of the same job, with the same bytes), so a
decoded mesh stays right for as long as its key and size do. Rendering a scene again then
skips the S3 reads, the GLB parse and the texture decode, which cost about as much as the
rasterization itself. The cache is bounded by an estimate of the decoded bytes (arrays plus
texture pixels) and drops the least recently used meshes first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import trimesh
from prometheus_client import Counter, Gauge

CACHE_LOOKUPS = Counter("kiln_scene_mesh_cache_total", "Mesh cache lookups.", ["outcome"])
CACHE_BYTES = Gauge("kiln_scene_mesh_cache_bytes", "Estimated bytes of the cached meshes.")


def decoded_bytes(mesh: trimesh.Trimesh) -> int:
    """About what the mesh holds in memory, its texture decoded."""
    total = int(np.asarray(mesh.vertices).nbytes + np.asarray(mesh.faces).nbytes)
    visual: Any = mesh.visual
    uv = getattr(visual, "uv", None)
    if uv is not None:
        total += int(np.asarray(uv).nbytes)
    material = getattr(visual, "material", None)
    image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
    if image is not None:
        image.load()  # decode now, once, rather than on every render
        total += image.width * image.height * len(image.getbands())
    return total


class MeshCache:
    """Meshes by (blob key, size), at most `max_bytes` of them (estimated); thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, int], tuple[trimesh.Trimesh, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str, size: int) -> trimesh.Trimesh | None:
        with self._lock:
            entry = self._entries.get((key, size))
            if entry is None:
                CACHE_LOOKUPS.labels("miss").inc()
                return None
            self._entries.move_to_end((key, size))
            CACHE_LOOKUPS.labels("hit").inc()
            return entry[0]

    def put(self, key: str, size: int, mesh: trimesh.Trimesh) -> None:
        cost = decoded_bytes(mesh)
        if cost > self._max_bytes:
            return
        with self._lock:
            old = self._entries.pop((key, size), None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[(key, size)] = (mesh, cost)
            self._bytes += cost
            while self._bytes > self._max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped
            CACHE_BYTES.set(self._bytes)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            CACHE_BYTES.set(0)
