"""Scene rendering, raw: a generated textured scene through `Rasterizer` in this process.

`make_scene` builds a deterministic scene of about the asked number of triangles: eight UV
spheres at the corners of a cube, each with its own transform (position, turn about +Y, size)
and its own procedural texture (a checker over a colour gradient, seeded) embedded as a glTF
PBR base colour texture: what an imported, textured object looks like to the renderer.
`time_raw` times `Rasterizer.render_pixels` on it (prepare, draw, read back; no encoding) after
one warm-up frame, with the context's creation timed apart, and encoding the last frame as JPEG
apart too.
"""

from __future__ import annotations

import math
import statistics
import time

import numpy as np
import numpy.typing as npt
import trimesh
from PIL import Image

from services.render.scenes.model import Placed, triangle_count
from services.render.scenes.raster import (
    DEFAULT_TEXTURE_CACHE_BYTES,
    Camera,
    Rasterizer,
    RenderSettings,
    encode,
)

SPHERES = 8
SPACING = 2.5


def uv_sphere(rows: int, columns: int, radius: float = 1.0) -> trimesh.Trimesh:
    """A UV sphere with a texture seam: (rows + 1) x (columns + 1) vertices, 2 rows columns
    triangles (those touching the poles have no area)."""
    polar = np.linspace(0.0, math.pi, rows + 1)
    azimuth = np.linspace(0.0, 2.0 * math.pi, columns + 1)
    p, a = np.meshgrid(polar, azimuth, indexing="ij")
    vertices = radius * np.stack(
        [np.sin(p) * np.sin(a), np.cos(p), np.sin(p) * np.cos(a)], axis=-1
    ).reshape(-1, 3)
    uv = np.stack(
        [a / (2.0 * math.pi), 1.0 - p / math.pi],
        axis=-1,
    ).reshape(-1, 2)
    i, j = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
    top_left = (i * (columns + 1) + j).ravel()
    top_right = top_left + 1
    bottom_left = top_left + columns + 1
    bottom_right = bottom_left + 1
    faces = np.concatenate(
        [
            np.stack([top_left, bottom_left, bottom_right], axis=1),
            np.stack([top_left, bottom_right, top_right], axis=1),
        ]
    )
    normals = vertices / radius
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, vertex_normals=normals, process=False)
    mesh.visual = trimesh.visual.texture.TextureVisuals(uv=uv)
    return mesh


def texture(size: int, rng: np.random.Generator) -> Image.Image:
    """A checker of 16 x 16 squares over a two-colour gradient, colours drawn from `rng`."""
    start, end = rng.integers(40, 256, size=(2, 3))
    t = np.linspace(0.0, 1.0, size)[None, :, None]
    gradient = start * (1.0 - t) + end * t
    ramp = np.broadcast_to(gradient, (size, size, 3))
    cells = (np.arange(size) * 16 // size)[:, None] + (np.arange(size) * 16 // size)[None, :]
    checker = np.where((cells % 2 == 0)[..., None], 1.0, 0.55)
    pixels: npt.NDArray[np.uint8] = np.clip(ramp * checker, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def make_scene(triangles: int = 100_000, texture_px: int = 1024, seed: int = 0) -> list[Placed]:
    """Eight textured UV spheres of about `triangles` triangles in all; the same for a seed."""
    rng = np.random.default_rng(seed)
    per_sphere = max(triangles // SPHERES, 8)
    # A sphere has 2 rows columns triangles; columns = 2 rows keeps its quads square-ish.
    rows = max(2, round(math.sqrt(per_sphere / 4.0)))
    placed = []
    for index in range(SPHERES):
        mesh = uv_sphere(rows, 2 * rows)
        mesh.visual.material = trimesh.visual.material.PBRMaterial(
            baseColorTexture=texture(texture_px, rng),
            baseColorFactor=[255, 255, 255, 255],
        )
        angle = float(rng.uniform(0.0, 2.0 * math.pi))
        scale = float(rng.uniform(0.7, 1.0))
        transform = np.eye(4)
        transform[:3, :3] = scale * np.array(
            [
                [math.cos(angle), 0.0, math.sin(angle)],
                [0.0, 1.0, 0.0],
                [-math.sin(angle), 0.0, math.cos(angle)],
            ]
        )
        corner = [(index >> axis) & 1 for axis in range(3)]
        transform[:3, 3] = [SPACING * (c - 0.5) for c in corner]
        placed.append(Placed(f"sphere-{index}", mesh, transform))
    return placed


class RawFrames:
    """The reference kept open to time one frame at a time (drawn and encoded as JPEG, the
    context, textures and geometry kept as the render service keeps them), so its frames can
    alternate with another variant's and both see the machine in the same state."""

    def __init__(
        self, placed: list[Placed], width: int = 1280, height: int = 720, samples: int = 4
    ) -> None:
        self._placed = placed
        self._settings = RenderSettings(width, height, "jpeg", camera=Camera())
        self._rasterizer = Rasterizer(
            samples=samples, texture_cache_bytes=DEFAULT_TEXTURE_CACHE_BYTES
        )
        self.frame()  # warm-up: the context, the uploads, the prepared geometry

    def frame(self) -> float:
        """Seconds for one frame: draw, read back, encode."""
        started = time.perf_counter()
        encode(self._rasterizer.render_pixels(self._placed, self._settings, frozen=True), "jpeg")
        return time.perf_counter() - started

    def close(self) -> None:
        self._rasterizer.close()


def time_raw(
    placed: list[Placed],
    width: int = 1280,
    height: int = 720,
    frames: int = 10,
    samples: int = 4,
    *,
    keep: bool = True,
) -> dict[str, float | int | str]:
    """Seconds per frame of `Rasterizer.render_pixels` (median of `frames` after one warm-up),
    the context's setup, and a JPEG encoding of the frame, all in this process.

    `keep`: what stays between frames, as in the render service: textures uploaded once, the
    scene's geometry prepared once (its meshes are `frozen`). False: every frame from scratch
    (the rasterizer before it kept anything)."""
    settings = RenderSettings(width, height, "jpeg", camera=Camera())
    started = time.perf_counter()
    rasterizer = Rasterizer(
        samples=samples, texture_cache_bytes=DEFAULT_TEXTURE_CACHE_BYTES if keep else 0
    )
    try:
        info = rasterizer.info()
        setup = time.perf_counter() - started
        started = time.perf_counter()
        pixels = rasterizer.render_pixels(placed, settings, frozen=keep)
        warm_up = time.perf_counter() - started
        seconds = []
        for _ in range(frames):
            started = time.perf_counter()
            pixels = rasterizer.render_pixels(placed, settings, frozen=keep)
            seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
        encode(pixels, "jpeg")
        jpeg = time.perf_counter() - started
    finally:
        rasterizer.close()
    return {
        "renderer": info["GL_RENDERER"],
        "width": width,
        "height": height,
        "triangles": triangle_count(placed),
        "samples": samples,
        "keep": keep,
        "frames": frames,
        "setup_s": setup,
        "warm_up_s": warm_up,
        "frame_median_s": statistics.median(seconds),
        "frame_min_s": min(seconds),
        "frame_max_s": max(seconds),
        "encode_jpeg_s": jpeg,
    }
