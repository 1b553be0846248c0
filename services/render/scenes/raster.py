"""Headless rendering of a scene to an image: moderngl on EGL (Mesa llvmpipe, or a GPU driver).

Threading. An OpenGL context is current on the thread that made it, so each `Rasterizer` owns one
single-worker executor; its thread creates the context on first use and runs every GL call for
the rasterizer's life. The work around the GL calls stays off that thread: `prepare_scene`
(numpy: world transforms, normals, interleaved vertex arrays, texture pixels) runs in the
caller's thread and encoding (pyvips) too, so the one GL thread only draws and reads back.
`render_async` hops: a worker thread prepares, the GL thread draws, a worker thread encodes; the
event loop never blocks.

Camera. An orbit camera looks at the centre of the scene's world-space bounding sphere: the
centre of the axis-aligned box of every transformed vertex that a triangle uses, its radius the
largest distance from that centre (or `Camera.bounding_radius`). The eye sits at
`centre + d * (sin(polar) sin(azimuth), cos(polar), sin(polar) cos(azimuth))`, up is +Y, and `d`
makes the sphere fit the narrower of the two fields of view with a 5% margin:
`d = 1.05 r / sin(fov / 2)`. Vertices are moved to the sphere's centre in float64 before they
become float32, so a scene far from the origin keeps its precision.

Look. Base colour = material factor (PBR `baseColorFactor`, or a `SimpleMaterial`'s `diffuse`)
x base colour texture at the UV x vertex colour (face colours become per-corner colours).
glTF UVs as trimesh holds them start at the bottom left of the image, a PIL image's first row
is its top, and texture row 0 is what OpenGL samples at v = 0, so the image is uploaded as it is
and the shader reads `1 - v`. Textures are mipmapped (trilinear), repeat, and are downscaled
past 4096 px. A `SimpleMaterial` made without a diffuse colour carries trimesh's default grey
(102), which darkens its texture here exactly as it does in the GLB trimesh exports. Lighting
is an ambient term plus a directional headlight, lit on both sides:
`colour * (0.35 + 0.65 |n . towards_camera|)`, so a face seen head-on shows its colour exactly
and no normal's sign matters (mirroring transforms, inconsistent winding). Vertex normals are
used where they are within 45 degrees of their face's normal, face normals elsewhere (a cube's
shared corners would otherwise shade it like a ball); a mesh needing face normals or carrying
face colours is drawn un-indexed, others with an index buffer. Alpha is ignored: everything is
opaque. A mesh with no colour at all is light grey (0.8).

Anti-aliasing. 4x MSAA into a multisample framebuffer, resolved with `copy_framebuffer`. On a
2-core machine with llvmpipe (LLVM 15, Mesa 22.3), 1280x720 of the bench scene
`bench.render_raw.make_scene(100_000)` (8 meshes, 100,352 triangles, eight 1024 px textures)
measured 0.15 s per frame with 4x MSAA and 0.11 s without (median of 10 after a warm-up frame of
0.3 s that compiles the shaders; about 0.045 s of each frame is `prepare_scene`; JPEG encoding
adds 0.005 s; creating the context 0.03 s). Well under 0.5 s, so MSAA stays on by default
(`Rasterizer(samples=0)` turns it off).

What is kept between renders. Framebuffers of the last size (up to `KEEP_TARGETS_PIXELS`);
textures, uploaded once per decoded image while it lives, up to a byte budget
(`_ResidentTextures`: upload and mipmaps were about 45 ms of that 0.15 s frame); and, for
meshes the caller declares `frozen` (never changed in place, as the render service's decoded
meshes are), the camera-independent geometry of the last scenes (`GeometryCache`: about 30 ms).
A scene drawn again at another camera or size then costs its draw alone. Buffers and vertex
arrays are made and released per render, and the context's `context_gc` mode lets a sweep after
each render find and release any GL object a bug dropped unreleased
(`Rasterizer.leaked_objects` counts them).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import logging
import math
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import moderngl
import numpy as np
import numpy.typing as npt
import pyvips
import trimesh
from PIL import Image

from services.render.scenes.model import Placed, SceneEmpty

log = logging.getLogger(__name__)

FORMATS = ("jpeg", "png")
JPEG_QUALITY = 90
MARGIN = 1.05
"""The bounding sphere fills 1 / MARGIN of the narrower field of view."""
AMBIENT = 0.35
DEFAULT_TEXTURE_CACHE_BYTES = 256 * 1024 * 1024
"""Textures kept uploaded between renders (`Rasterizer(texture_cache_bytes=...)`)."""
KEEP_TARGETS_PIXELS = 2048 * 2048
"""Framebuffers up to this size stay for the next render of the same size; larger ones (4x MSAA
at 4096 x 4096 is over 600 MB) are released at once."""
MAX_TEXTURE_PX = 4096
"""Larger textures are downscaled first: beyond this no output size shows the difference."""
_CREASE_COS = math.cos(math.radians(45.0))
_NO_COLOUR = (0.8, 0.8, 0.8, 1.0)
"""A mesh with no colour at all: light grey, distinct from both white and black backgrounds."""
_FLOATS_PER_VERTEX = 12  # position 3, normal 3, uv 2, colour 4
_VERTEX_FORMAT = "3f 3f 2f 4f"
_ATTRIBUTES = ("in_position", "in_normal", "in_uv", "in_color")

_VERTEX_SHADER = """
#version 330
uniform mat4 view_projection;
in vec3 in_position;
in vec3 in_normal;
in vec2 in_uv;
in vec4 in_color;
out vec3 v_normal;
out vec2 v_uv;
out vec4 v_color;
void main() {
    gl_Position = view_projection * vec4(in_position, 1.0);
    v_normal = in_normal;
    v_uv = in_uv;
    v_color = in_color;
}
"""

_FRAGMENT_SHADER = """
#version 330
uniform sampler2D base_texture;
uniform vec4 base_factor;
uniform vec3 towards_camera;
uniform float ambient;
in vec3 v_normal;
in vec2 v_uv;
in vec4 v_color;
out vec4 f_color;
void main() {
    vec3 colour = base_factor.rgb * v_color.rgb * texture(base_texture, v_uv).rgb;
    float n = length(v_normal);
    // Corners with opposite normals can interpolate to nothing: light such a spot fully.
    float facing = n > 1e-6 ? abs(dot(v_normal / n, towards_camera)) : 1.0;
    f_color = vec4(colour * (ambient + (1.0 - ambient) * facing), 1.0);
}
"""

T = TypeVar("T")


class _Releasable(Protocol):
    def release(self) -> None: ...


Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Camera:
    """Where the orbit camera stands; every field has a default that frames the whole scene."""

    azimuth: float | None = None
    """Radians around +Y, 0 on +Z, pi/2 on +X; None: pi/4."""
    polar: float | None = None
    """Radians from +Y (0 looks straight down), kept within (1e-3, pi - 1e-3); None: pi/3."""
    bounding_radius: float | None = None
    """Radius of the sphere to frame, around the scene's centre; None: the scene's own."""
    fov_degrees: float = 45.0
    """Vertical field of view."""

    def __post_init__(self) -> None:
        for name in ("azimuth", "polar", "bounding_radius"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"camera {name} must be a finite number")
        if self.bounding_radius is not None and self.bounding_radius <= 0:
            raise ValueError("camera bounding_radius must be positive")
        if not 0.0 < self.fov_degrees < 180.0:
            raise ValueError("camera fov_degrees must be between 0 and 180")


@dataclass(frozen=True)
class RenderSettings:
    """One image of a scene."""

    width: int
    height: int
    format: str
    """Either "jpeg" (quality 90) or "png"."""
    camera: Camera = field(default_factory=Camera)
    background: tuple[int, int, int] = (255, 255, 255)
    """RGB, 0-255. White by default: the usual backdrop of a product or catalogue picture."""

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError(f"an image is at least 1x1 pixels, not {self.width}x{self.height}")
        if self.format not in FORMATS:
            raise ValueError(f"unknown image format {self.format!r}: one of {', '.join(FORMATS)}")
        if len(self.background) != 3 or not all(0 <= c <= 255 for c in self.background):
            raise ValueError("background is three numbers from 0 to 255")


@dataclass(frozen=True)
class MeshArrays:
    """One mesh ready for the GPU: interleaved float32 vertices, optional uint32 indices."""

    vertices: npt.NDArray[np.float32]
    indices: npt.NDArray[np.uint32] | None
    base_factor: tuple[float, float, float, float]
    texture: npt.NDArray[np.uint8] | None
    """H x W x 4 RGBA, first row the image's top (sampled at 1 - v); meshes sharing an image
    share this array, and so one texture."""


@dataclass(frozen=True)
class PreparedScene:
    """Everything a draw needs, computed without GL."""

    meshes: tuple[MeshArrays, ...]
    view_projection: npt.NDArray[np.float32]
    """4x4, column-vector convention (transpose before writing to GL's column-major uniform)."""
    towards_camera: tuple[float, float, float]
    width: int
    height: int
    background: tuple[int, int, int]


# --- camera ---------------------------------------------------------------------------------


def _look_at(eye: Floats, target: Floats, up: Floats) -> Floats:
    forward = target - eye
    forward /= np.linalg.norm(forward)
    side = np.cross(forward, up)
    side /= np.linalg.norm(side)
    true_up = np.cross(side, forward)
    view = np.eye(4)
    view[0, :3], view[1, :3], view[2, :3] = side, true_up, -forward
    view[:3, 3] = -view[:3, :3] @ eye
    return view


def _perspective(fov_y: float, aspect: float, near: float, far: float) -> Floats:
    f = 1.0 / math.tan(fov_y / 2.0)
    projection = np.zeros((4, 4))
    projection[0, 0] = f / aspect
    projection[1, 1] = f
    projection[2, 2] = (far + near) / (near - far)
    projection[2, 3] = 2.0 * far * near / (near - far)
    projection[3, 2] = -1.0
    return projection


def camera_matrices(
    camera: Camera, scene_radius: float, width: int, height: int
) -> tuple[Floats, Floats]:
    """(view_projection, unit vector from the target towards the eye) for a scene centred on the
    origin whose vertices all lie within `scene_radius` of it."""
    azimuth = math.pi / 4 if camera.azimuth is None else camera.azimuth
    polar = math.pi / 3 if camera.polar is None else camera.polar
    polar = min(max(polar, 1e-3), math.pi - 1e-3)
    radius = scene_radius if camera.bounding_radius is None else camera.bounding_radius
    # A point (or nothing) has no size to frame: frame a unit sphere around it.
    radius = radius if radius > 0 else 1.0
    aspect = width / height
    fov_y = math.radians(camera.fov_degrees)
    fov_x = 2.0 * math.atan(math.tan(fov_y / 2.0) * aspect)
    distance = MARGIN * radius / math.sin(min(fov_x, fov_y) / 2.0)
    direction = np.array(
        [
            math.sin(polar) * math.sin(azimuth),
            math.cos(polar),
            math.sin(polar) * math.cos(azimuth),
        ]
    )
    eye = distance * direction
    view = _look_at(eye, np.zeros(3), np.array([0.0, 1.0, 0.0]))
    # The clip planes hold the whole scene, which may reach past a smaller framed sphere; the
    # near plane stays a little in front of the eye when the eye is inside the scene.
    reach = max(radius, scene_radius)
    far = (distance + reach) * 1.01
    near = max((distance - reach) * 0.99, far * 1e-4)
    return _perspective(fov_y, aspect, near, far) @ view, direction


# --- scene preparation (numpy, any thread) ----------------------------------------------------


@dataclass
class _WorldMesh:
    placed: Placed
    faces: npt.NDArray[np.int64]
    face_index: npt.NDArray[np.int64]
    """Which of the mesh's faces `faces` are (the drawable ones)."""
    world: Floats
    used: npt.NDArray[np.bool_]


def _rows_all(mask: Any) -> npt.NDArray[np.bool_]:
    return np.asarray(np.asarray(mask).all(axis=1), dtype=np.bool_)


def _world_meshes(placed: Sequence[Placed]) -> list[_WorldMesh]:
    meshes = []
    for item in placed:
        mesh = item.mesh
        vertices = np.asarray(mesh.vertices, dtype=np.float64).reshape(-1, 3)
        faces = np.asarray(mesh.faces, dtype=np.int64).reshape(-1, 3)
        if len(faces) == 0 or len(vertices) == 0:
            continue
        transform = np.asarray(item.transform, dtype=np.float64).reshape(4, 4)
        world = vertices @ transform[:3, :3].T + transform[:3, 3]
        if not np.array_equal(transform[3], [0.0, 0.0, 0.0, 1.0]):
            world = world / (vertices @ transform[3, :3] + transform[3, 3])[:, None]
        # Triangles with a vertex out of range or not finite cannot be drawn or framed.
        in_range = _rows_all((faces >= 0) & (faces < len(vertices)))
        finite = _rows_all(np.isfinite(world))
        drawable = in_range & _rows_all(finite[np.where(in_range[:, None], faces, 0)])
        face_index = np.flatnonzero(drawable)
        if len(face_index) == 0:
            continue
        faces = faces[face_index]
        used = np.zeros(len(vertices), dtype=np.bool_)
        used[faces.ravel()] = True
        meshes.append(_WorldMesh(item, faces, face_index, world, used))
    return meshes


def _unit(vectors: Floats) -> tuple[Floats, npt.NDArray[np.bool_]]:
    """Unit vectors and which were long enough (and finite) to have a direction."""
    length = np.linalg.norm(vectors, axis=-1)
    ok = np.isfinite(length) & (length > 1e-12)
    safe = np.where(ok, length, 1.0)
    return np.where(ok[..., None], vectors / safe[..., None], 0.0), ok


def _cofactor(matrix: Floats) -> Floats:
    """det(M) M^-T, which carries normals through M, defined even when M is singular."""
    c0, c1, c2 = matrix[:, 0], matrix[:, 1], matrix[:, 2]
    return np.stack([np.cross(c1, c2), np.cross(c2, c0), np.cross(c0, c1)], axis=1)


def _rgba_floats(value: Any, count: int) -> npt.NDArray[np.float64] | None:
    """Colours as (count, 4) floats in 0-1, from uint8 or float arrays of 3 or 4 channels."""
    if value is None:
        return None
    colours = np.asarray(value)
    if colours.ndim != 2 or colours.shape[0] != count or colours.shape[1] not in (3, 4):
        return None
    scaled = (
        colours.astype(np.float64) / 255.0
        if np.issubdtype(colours.dtype, np.integer)
        else colours.astype(np.float64)
    )
    if scaled.shape[1] == 3:
        scaled = np.concatenate([scaled, np.ones((count, 1))], axis=1)
    return np.nan_to_num(np.clip(scaled, 0.0, 1.0), nan=1.0)


def _factor(value: Any) -> tuple[float, float, float, float]:
    factor = _rgba_floats(None if value is None else np.asarray(value).reshape(1, -1), 1)
    if factor is None:
        return (1.0, 1.0, 1.0, 1.0)
    r, g, b, a = (float(c) for c in factor[0])
    return (r, g, b, a)


#: RGBA pixels of texture images already converted, while the image lives: a mesh drawn
#: again (the render service keeps decoded meshes between jobs) skips the conversion, a
#: fifth of a frame's preparation. PIL images are unhashable, so entries are keyed by id and
#: hold a weak reference that confirms the identity; a finalizer drops the entry with the
#: image, so the cache never keeps one alive.
_PIXELS: dict[int, tuple[weakref.ref[Image.Image], npt.NDArray[np.uint8] | None]] = {}
_PIXELS_LOCK = threading.Lock()


def _forget_pixels(key: int) -> None:
    with _PIXELS_LOCK:
        _PIXELS.pop(key, None)


def _texture_pixels(image: Any) -> npt.NDArray[np.uint8] | None:
    if not isinstance(image, Image.Image):
        return None
    key = id(image)
    with _PIXELS_LOCK:
        entry = _PIXELS.get(key)
    if entry is not None and entry[0]() is image:
        return entry[1]
    pixels = _convert_texture(image)
    with _PIXELS_LOCK:
        _PIXELS[key] = (weakref.ref(image), pixels)
    weakref.finalize(image, _forget_pixels, key)
    return pixels


def _convert_texture(image: Image.Image) -> npt.NDArray[np.uint8] | None:
    try:
        if max(image.size) > MAX_TEXTURE_PX:
            image = image.copy()
            image.thumbnail((MAX_TEXTURE_PX, MAX_TEXTURE_PX), Image.Resampling.LANCZOS)
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
    except (OSError, ValueError) as exc:
        log.warning("a texture could not be read, drawn without it: %s", exc)
        return None
    pixels = np.asarray(rgba, dtype=np.uint8)
    return pixels if pixels.size else None


@dataclass
class _Look:
    factor: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    image: Any = None
    uv: Floats | None = None
    vertex_colours: Floats | None = None
    face_colours: Floats | None = None


def _look(mesh: trimesh.Trimesh) -> _Look:
    visual = mesh.visual
    count = len(mesh.vertices)
    if isinstance(visual, trimesh.visual.texture.TextureVisuals):
        material = visual.material
        look = _Look()
        if isinstance(material, trimesh.visual.material.PBRMaterial):
            look.factor = _factor(material.baseColorFactor)
            look.image = material.baseColorTexture
        elif isinstance(material, trimesh.visual.material.SimpleMaterial):
            look.factor = _factor(material.diffuse)
            look.image = material.image
        elif material is not None:
            look.factor = _factor(getattr(material, "main_color", None))
        uv = visual.uv
        if uv is not None and np.shape(uv) == (count, 2):
            look.uv = np.nan_to_num(np.asarray(uv, dtype=np.float64))
        else:
            look.image = None
        # glTF COLOR_0 beside a texture: trimesh keeps it as a vertex attribute.
        look.vertex_colours = _rgba_floats(visual.vertex_attributes.get("color"), count)
        return look
    kind = getattr(visual, "kind", None)
    if kind == "face":
        return _Look(face_colours=_rgba_floats(visual.face_colors, len(mesh.faces)))
    if kind == "vertex":
        return _Look(vertex_colours=_rgba_floats(visual.vertex_colors, count))
    return _Look(factor=_NO_COLOUR)


def _mesh_arrays(
    item: _WorldMesh, centre: Floats, textures: dict[int, npt.NDArray[np.uint8] | None]
) -> MeshArrays:
    mesh = item.placed.mesh
    faces = item.faces
    look = _look(mesh)
    transform = np.asarray(item.placed.transform, dtype=np.float64).reshape(4, 4)

    corners = item.world[faces]
    face_normals, face_ok = _unit(
        np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    )
    # A degenerate triangle covers no pixel; any direction will do.
    face_normals[~face_ok] = (0.0, 1.0, 0.0)
    try:
        local_normals = np.asarray(mesh.vertex_normals, dtype=np.float64).reshape(-1, 3)
    except (ValueError, IndexError):
        local_normals = np.zeros((0, 3))
    if local_normals.shape == item.world.shape:
        vertex_normals, vertex_ok = _unit(local_normals @ _cofactor(transform[:3, :3]).T)
    else:
        vertex_normals = np.zeros_like(item.world)
        vertex_ok = np.zeros(len(item.world), dtype=np.bool_)
    corner_normals = vertex_normals[faces]
    agree = np.abs(np.einsum("fcj,fj->fc", corner_normals, face_normals)) >= _CREASE_COS
    smooth = vertex_ok[faces] & (agree | ~face_ok[:, None])

    count = len(item.world)
    positions = item.world - centre
    uv = look.uv if look.uv is not None else np.zeros((count, 2))
    # Sampled at 1 - v: see the module docstring.
    uv = np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1)
    colours = look.vertex_colours if look.vertex_colours is not None else np.ones((count, 4))

    if look.face_colours is None and bool(smooth.all()):
        vertices = np.empty((count, _FLOATS_PER_VERTEX), dtype=np.float32)
        vertices[:, 0:3] = positions
        vertices[:, 3:6] = vertex_normals
        vertices[:, 6:8] = uv
        vertices[:, 8:12] = colours
        indices: npt.NDArray[np.uint32] | None = faces.astype(np.uint32)
    else:
        flat = faces.ravel()
        normals = np.where(smooth[..., None], corner_normals, face_normals[:, None, :])
        vertices = np.empty((len(flat), _FLOATS_PER_VERTEX), dtype=np.float32)
        vertices[:, 0:3] = positions[flat]
        vertices[:, 3:6] = normals.reshape(-1, 3)
        vertices[:, 6:8] = uv[flat]
        if look.face_colours is not None:
            vertices[:, 8:12] = np.repeat(look.face_colours[item.face_index], 3, axis=0)
        else:
            vertices[:, 8:12] = colours[flat]
        indices = None

    key = id(look.image)
    if look.image is not None and key not in textures:
        textures[key] = _texture_pixels(look.image)
    texture = textures.get(key) if look.image is not None else None
    return MeshArrays(vertices, indices, look.factor, texture)


@dataclass(frozen=True)
class SceneGeometry:
    """What a scene's images share whatever the camera: its meshes centred on the origin."""

    meshes: tuple[MeshArrays, ...]
    radius: float
    """Every drawn vertex lies within this distance of the origin."""

    @property
    def nbytes(self) -> int:
        """Vertex and index bytes (texture pixels are shared, and counted where they are kept)."""
        return sum(
            m.vertices.nbytes + (0 if m.indices is None else m.indices.nbytes) for m in self.meshes
        )


def scene_geometry(placed: Sequence[Placed]) -> SceneGeometry:
    """The camera-independent part of preparing a scene; pure numpy, safe on any thread.

    Raises `SceneEmpty` when no mesh has a drawable triangle."""
    world = _world_meshes(placed)
    if not world:
        raise SceneEmpty("the scene has no triangles to render")
    used = [m.world[m.used] for m in world]
    low = np.min([u.min(axis=0) for u in used], axis=0)
    high = np.max([u.max(axis=0) for u in used], axis=0)
    centre = (low + high) / 2.0
    radius = max(float(np.linalg.norm(u - centre, axis=1).max()) for u in used)
    textures: dict[int, npt.NDArray[np.uint8] | None] = {}
    meshes = tuple(_mesh_arrays(m, centre, textures) for m in world)
    return SceneGeometry(meshes, radius)


class GeometryCache:
    """Prepared geometry of the scenes drawn lately, least recently used first, up to a byte
    budget: a scene drawn again from the same decoded meshes (the render service keeps them,
    `MeshCache`) at the same transforms skips its preparation, about a fifth of a frame.

    An entry is keyed by its meshes' identities and transforms and holds only weak references
    to the meshes: a mesh that is gone (or a new one at the same address) never matches, and
    entries whose meshes are gone are dropped at the next use. Thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: collections.OrderedDict[
            tuple[tuple[int, bytes], ...],
            tuple[tuple[weakref.ref[trimesh.Trimesh], ...], SceneGeometry],
        ] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def geometry(self, placed: Sequence[Placed]) -> SceneGeometry:
        """The scene's geometry, from the cache or prepared now (and kept if it fits)."""
        key = tuple(
            (id(p.mesh), np.asarray(p.transform, dtype=np.float64).tobytes()) for p in placed
        )
        with self._lock:
            # An entry whose meshes are gone can never match again, and it holds their arrays
            # (texture pixels included): drop it now, not when the budget runs out.
            self._drop_where(lambda _, e: any(r() is None for r in e[0]))
            entry = self._entries.get(key)
            if entry is not None and _same_meshes(entry[0], placed):
                self._entries.move_to_end(key)
                return entry[1]
        geometry = scene_geometry(placed)
        if geometry.nbytes <= self.max_bytes:
            refs = tuple(weakref.ref(p.mesh) for p in placed)
            with self._lock:
                self._drop_where(lambda k, _: k == key)
                self._entries[key] = (refs, geometry)
                self._bytes += geometry.nbytes
                while self._bytes > self.max_bytes:
                    self._drop(next(iter(self._entries)))
        return geometry

    @property
    def held_bytes(self) -> int:
        """Vertex and index bytes held."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def _drop_where(self, doomed: Callable[[Any, Any], bool]) -> None:
        for key in [k for k, e in self._entries.items() if doomed(k, e)]:
            self._drop(key)

    def _drop(self, key: tuple[tuple[int, bytes], ...]) -> None:
        _, geometry = self._entries.pop(key)
        self._bytes -= geometry.nbytes


def _same_meshes(refs: Sequence[weakref.ref[trimesh.Trimesh]], placed: Sequence[Placed]) -> bool:
    return all(ref() is item.mesh for ref, item in zip(refs, placed, strict=True))


def prepare_scene(
    placed: Sequence[Placed], settings: RenderSettings, cache: GeometryCache | None = None
) -> PreparedScene:
    """The scene as arrays for one image; pure numpy, safe on any thread.

    Raises `SceneEmpty` when no mesh has a drawable triangle."""
    geometry = scene_geometry(placed) if cache is None else cache.geometry(placed)
    view_projection, towards = camera_matrices(
        settings.camera, geometry.radius, settings.width, settings.height
    )
    return PreparedScene(
        meshes=geometry.meshes,
        view_projection=view_projection.astype(np.float32),
        towards_camera=(float(towards[0]), float(towards[1]), float(towards[2])),
        width=settings.width,
        height=settings.height,
        background=settings.background,
    )


# --- encoding ---------------------------------------------------------------------------------


def encode(pixels: npt.NDArray[np.uint8], image_format: str) -> bytes:
    """H x W x 3 pixels as a JPEG (quality 90) or PNG file."""
    if image_format not in FORMATS:
        raise ValueError(f"unknown image format {image_format!r}: one of {', '.join(FORMATS)}")
    height, width = pixels.shape[:2]
    image = pyvips.Image.new_from_memory(
        np.ascontiguousarray(pixels).data, width, height, 3, "uchar"
    )
    # keep=none: a render has no metadata worth writing (libvips would add an EXIF block).
    suffix = f".jpg[Q={JPEG_QUALITY},keep=none]" if image_format == "jpeg" else ".png[keep=none]"
    data = image.write_to_buffer(suffix)
    assert isinstance(data, bytes)
    return data


# --- the GL side --------------------------------------------------------------------------------


class _Targets:
    """The framebuffers of one image size, kept while the size repeats."""

    def __init__(self, ctx: moderngl.Context, size: tuple[int, int], samples: int) -> None:
        self.size = size
        self.samples = samples
        self._objects: list[_Releasable] = []
        self.resolved = self._framebuffer(ctx, size, 0)
        self.draw = self._framebuffer(ctx, size, samples) if samples else self.resolved

    def _framebuffer(
        self, ctx: moderngl.Context, size: tuple[int, int], samples: int
    ) -> moderngl.Framebuffer:
        colour = ctx.renderbuffer(size, 4, samples=samples)
        self._objects.append(colour)
        depth = ctx.depth_renderbuffer(size, samples=samples)
        self._objects.append(depth)
        framebuffer = ctx.framebuffer(color_attachments=[colour], depth_attachment=depth)
        self._objects.append(framebuffer)
        return framebuffer

    def release(self) -> None:
        for obj in reversed(self._objects):
            obj.release()
        self._objects.clear()


class Rasterizer:
    """Owns one EGL context on one dedicated thread (GL contexts are bound to the thread that
    made them). Thread-safe: renders from any thread queue up on that one."""

    def __init__(
        self,
        *,
        max_pixels: int = 4096 * 4096,
        backend: str = "egl",
        samples: int = 4,
        texture_cache_bytes: int = DEFAULT_TEXTURE_CACHE_BYTES,
    ) -> None:
        if max_pixels < 1:
            raise ValueError("max_pixels must be positive")
        if samples < 0:
            raise ValueError("samples must be 0 (no MSAA) or more")
        if texture_cache_bytes < 0:
            raise ValueError("texture_cache_bytes must be 0 (none) or more")
        self.max_pixels = max_pixels
        self._backend = backend
        self._samples = samples
        self._texture_cache_bytes = texture_cache_bytes
        self.geometry_cache = GeometryCache(texture_cache_bytes)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="kiln-gl"
        )
        self._closed = False
        self._lock = threading.Lock()
        self._gl: _GL | None = None
        """Created and used on the GL thread only."""
        self._leaked = 0

    # --- public ----------------------------------------------------------------------------

    def render_pixels(
        self, placed: Sequence[Placed], settings: RenderSettings, *, frozen: bool = False
    ) -> npt.NDArray[np.uint8]:
        """The scene as H x W x 3 RGB pixels, top row first. Blocks until drawn.

        `frozen`: the caller never changes these meshes in place (the render service's decoded
        meshes), so their prepared geometry may be kept and reused (`geometry_cache`)."""
        self._check(settings)
        prepared = prepare_scene(placed, settings, self.geometry_cache if frozen else None)
        return self._on_gl_thread(functools.partial(self._draw, prepared)).result()

    def render(
        self, placed: Sequence[Placed], settings: RenderSettings, *, frozen: bool = False
    ) -> bytes:
        """The scene as an encoded image (`settings.format`). Blocks until done."""
        return encode(self.render_pixels(placed, settings, frozen=frozen), settings.format)

    async def render_async(
        self, placed: Sequence[Placed], settings: RenderSettings, *, frozen: bool = False
    ) -> bytes:
        """`render` without blocking the event loop."""
        self._check(settings)
        loop = asyncio.get_running_loop()
        cache = self.geometry_cache if frozen else None
        prepared = await loop.run_in_executor(None, prepare_scene, placed, settings, cache)
        future = self._on_gl_thread(functools.partial(self._draw, prepared))
        pixels = await asyncio.wrap_future(future)
        return await loop.run_in_executor(None, encode, pixels, settings.format)

    def info(self) -> dict[str, str]:
        """The GL implementation in use (creates the context if it is not there yet)."""
        return self._on_gl_thread(self._info).result()

    @property
    def samples(self) -> int:
        """MSAA samples per pixel asked for (0: none); the driver may cap it."""
        return self._samples

    @property
    def leaked_objects(self) -> int:
        """GL objects found unreleased after renders (and then released): stays 0 unless a bug
        drops an object without releasing it."""
        return self._leaked

    def close(self) -> None:
        """Releases the context and stops the GL thread; renders after this raise."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            future = self._executor.submit(self._release_all)
        try:
            future.result()
        finally:
            self._executor.shutdown(wait=True)

    def __enter__(self) -> Rasterizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- any thread ------------------------------------------------------------------------

    def _check(self, settings: RenderSettings) -> None:
        pixels = settings.width * settings.height
        if pixels > self.max_pixels:
            raise ValueError(
                f"{settings.width}x{settings.height} is {pixels} pixels, over the limit of "
                f"{self.max_pixels}"
            )

    def _on_gl_thread(self, work: Callable[[], T]) -> concurrent.futures.Future[T]:
        with self._lock:
            if self._closed:
                raise RuntimeError("the rasterizer is closed")
            return self._executor.submit(work)

    # --- the GL thread ---------------------------------------------------------------------

    def _context(self) -> _GL:
        if self._gl is None:
            self._gl = _GL.create(self._backend, self._texture_cache_bytes)
        return self._gl

    @property
    def resident_textures(self) -> tuple[int, int]:
        """(textures, bytes) kept on the GL side between renders."""
        return self._on_gl_thread(self._resident).result()

    def _resident(self) -> tuple[int, int]:
        if self._gl is None:
            return (0, 0)
        return (len(self._gl.textures.entries), self._gl.textures.bytes)

    def _info(self) -> dict[str, str]:
        info = self._context().ctx.info
        return {key: str(info[key]) for key in ("GL_RENDERER", "GL_VERSION", "GL_VENDOR")}

    def _draw(self, prepared: PreparedScene) -> npt.NDArray[np.uint8]:
        gl = self._context()
        try:
            return gl.draw(prepared, self._samples)
        finally:
            leaked = _collect(gl.ctx)
            if leaked:
                self._leaked += leaked
                log.warning("released %d GL objects a render left behind", leaked)

    def _release_all(self) -> None:
        gl, self._gl = self._gl, None
        if gl is not None:
            gl.release()


@dataclass
class _ResidentTexture:
    pixels: weakref.ref[npt.NDArray[np.uint8]]
    """The pixels it was made from; dead once nothing else holds them (the image is gone)."""
    texture: moderngl.Texture
    nbytes: int


class _ResidentTextures:
    """Textures kept on the GL side between renders, least recently used first, up to a byte
    budget. Uploading a texture and building its mipmaps is most of a frame on llvmpipe (about
    6 ms per 1024 px texture here, against 3 ms to draw 12k triangles), and the render service
    draws the same decoded meshes again (`MeshCache`), so a texture is uploaded once per image.

    Keyed by the pixel array `_texture_pixels` keeps per image, checked through a weak
    reference: an entry never keeps an image's pixels alive, and one whose pixels are gone is
    released at the next render (GL objects can only be released on the GL thread)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.entries: collections.OrderedDict[int, _ResidentTexture] = collections.OrderedDict()
        self.bytes = 0

    def get(self, pixels: npt.NDArray[np.uint8]) -> moderngl.Texture | None:
        entry = self.entries.get(id(pixels))
        if entry is None or entry.pixels() is not pixels:
            return None
        self.entries.move_to_end(id(pixels))
        return entry.texture

    def keep(self, pixels: npt.NDArray[np.uint8], texture: moderngl.Texture) -> bool:
        """Keeps `texture` for `pixels` if it fits the budget; False: the caller releases it."""
        nbytes = _texture_bytes(pixels)
        if nbytes > self.max_bytes:
            return False
        self._drop(id(pixels))
        self.entries[id(pixels)] = _ResidentTexture(weakref.ref(pixels), texture, nbytes)
        self.bytes += nbytes
        return True

    def trim(self, in_use: set[int]) -> None:
        """Releases entries whose pixels are gone, then the least recently used until the
        budget holds, sparing the textures of the render in progress."""
        for key in [k for k, e in self.entries.items() if e.pixels() is None]:
            self._drop(key)
        for key in list(self.entries):
            if self.bytes <= self.max_bytes:
                break
            if key not in in_use:
                self._drop(key)

    def release(self) -> None:
        for key in list(self.entries):
            self._drop(key)

    def _drop(self, key: int) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry.nbytes
            entry.texture.release()


def _texture_bytes(pixels: npt.NDArray[np.uint8]) -> int:
    return pixels.nbytes * 4 // 3  # the mipmap chain adds a third


class _GL:
    """The context and what lives as long as it: the program, a white texture for untextured
    meshes, the framebuffers of the last image size, the resident textures."""

    def __init__(self, ctx: moderngl.Context, texture_cache_bytes: int = 0) -> None:
        self.ctx = ctx
        self.textures = _ResidentTextures(texture_cache_bytes)
        self.program = ctx.program(vertex_shader=_VERTEX_SHADER, fragment_shader=_FRAGMENT_SHADER)
        self.white = ctx.texture((1, 1), 4, b"\xff\xff\xff\xff")
        self.uniforms = {
            name: _uniform(self.program, name)
            for name in ("view_projection", "towards_camera", "ambient", "base_factor")
        }
        self.targets: _Targets | None = None

    @classmethod
    def create(cls, backend: str, texture_cache_bytes: int = 0) -> _GL:
        settings: dict[str, Any] = {"backend": backend}
        ctx = moderngl.create_context(require=330, standalone=True, **settings)
        # Wrappers dropped without release() land in ctx.objects, where `_collect` finds them.
        ctx.gc_mode = "context_gc"
        try:
            gl = cls(ctx, texture_cache_bytes)
        except BaseException:
            ctx.release()
            raise
        log.info("GL context: %s, %s", ctx.info.get("GL_RENDERER"), ctx.info.get("GL_VERSION"))
        return gl

    def targets_for(self, size: tuple[int, int], samples: int) -> _Targets:
        samples = min(samples, int(self.ctx.max_samples))
        if self.targets is None or self.targets.size != size or self.targets.samples != samples:
            if self.targets is not None:
                self.targets.release()
                self.targets = None
            info = self.ctx.info
            limit = min(int(info["GL_MAX_RENDERBUFFER_SIZE"]), *info["GL_MAX_VIEWPORT_DIMS"])
            if max(size) > limit:
                raise ValueError(f"{size[0]}x{size[1]} is over this GL's limit of {limit} px")
            self.targets = _Targets(self.ctx, size, samples)
        return self.targets

    def draw(self, prepared: PreparedScene, samples: int) -> npt.NDArray[np.uint8]:
        ctx = self.ctx
        targets = self.targets_for((prepared.width, prepared.height), samples)
        uniforms = self.uniforms
        owned: list[_Releasable] = []
        try:
            targets.draw.use()
            red, green, blue = (c / 255.0 for c in prepared.background)
            targets.draw.clear(red, green, blue, 1.0, depth=1.0)
            ctx.enable(moderngl.DEPTH_TEST)
            # Both sides of every face are drawn: meshes from files are not reliably closed or
            # consistently wound.
            ctx.disable(moderngl.CULL_FACE)
            uniforms["view_projection"].write(prepared.view_projection.T.tobytes())
            uniforms["towards_camera"].value = prepared.towards_camera
            uniforms["ambient"].value = AMBIENT
            in_use: set[int] = set()
            for mesh in prepared.meshes:
                texture = self.white
                if mesh.texture is not None:
                    texture = self._texture(mesh.texture, owned)
                    in_use.add(id(mesh.texture))
                vbo = ctx.buffer(mesh.vertices.tobytes())
                owned.append(vbo)
                ibo = None
                if mesh.indices is not None:
                    ibo = ctx.buffer(mesh.indices.tobytes())
                    owned.append(ibo)
                vao = ctx.vertex_array(
                    self.program,
                    [(vbo, _VERTEX_FORMAT, *_ATTRIBUTES)],
                    index_buffer=ibo,
                    index_element_size=4,
                )
                owned.append(vao)
                texture.use(0)
                uniforms["base_factor"].value = mesh.base_factor
                vao.render(moderngl.TRIANGLES)
            if targets.draw is not targets.resolved:
                ctx.copy_framebuffer(targets.resolved, targets.draw)
            data = targets.resolved.read(components=3, alignment=1)
        finally:
            for obj in reversed(owned):
                obj.release()
            self.textures.trim(in_use)
            if prepared.width * prepared.height > KEEP_TARGETS_PIXELS:
                targets.release()
                self.targets = None
        pixels = np.frombuffer(data, dtype=np.uint8).reshape(prepared.height, prepared.width, 3)
        # GL's first row is the bottom one.
        return np.ascontiguousarray(pixels[::-1])

    def _texture(self, pixels: npt.NDArray[np.uint8], owned: list[_Releasable]) -> moderngl.Texture:
        """The texture of `pixels`: resident, or uploaded now (and kept if it fits; textures
        that do not are released with the render's other objects)."""
        texture = self.textures.get(pixels)
        if texture is None:
            texture = _upload_texture(self.ctx, pixels)
            if not self.textures.keep(pixels, texture):
                owned.append(texture)
        return texture

    def release(self) -> None:
        try:
            self.textures.release()
            if self.targets is not None:
                self.targets.release()
            self.program.release()
            self.white.release()
            _collect(self.ctx)
        finally:
            self.targets = None
            self.ctx.release()


def _uniform(program: moderngl.Program, name: str) -> moderngl.Uniform:
    uniform = program[name]
    if not isinstance(uniform, moderngl.Uniform):
        raise TypeError(f"{name} is not a uniform of the program")
    return uniform


def _collect(ctx: moderngl.Context) -> int:
    """Releases what ctx.objects holds that is still alive, and how many that was.

    Explicitly released wrappers land there too, as `InvalidObject`s, which `ctx.gc()` would
    fail on (moderngl 5.13)."""
    objects = ctx.objects
    alive = 0
    while objects:
        obj = objects.popleft()
        if not isinstance(obj, moderngl.InvalidObject):
            obj.release()
            alive += 1
    return alive


def _upload_texture(ctx: moderngl.Context, pixels: npt.NDArray[np.uint8]) -> moderngl.Texture:
    height, width = pixels.shape[:2]
    texture = ctx.texture((width, height), 4, np.ascontiguousarray(pixels).tobytes())
    texture.repeat_x = True
    texture.repeat_y = True
    texture.build_mipmaps()
    texture.filter = (moderngl.LINEAR_MIPMAP_LINEAR, moderngl.LINEAR)
    return texture
