"""A scene (`list[Placed]`) → one output file, in the formats and shapes Clara's export has.

| extension | zip (default)                                   | zip=false                       |
|-----------|-------------------------------------------------|---------------------------------|
| obj       | `scene.zip`: `scene.obj`, `scene.mtl`, textures | `scene.obj` alone (no MTL)      |
| glb       | `scene.zip`: `scene.glb`                        | `scene.glb`                     |
| gltf      | `scene.zip`: `scene.gltf`, `scene.bin`, textures| `scene.gltf`, buffer embedded   |
| stl       | `scene.zip`: one binary STL per object          | refused (Clara's rule)          |
| ply       | `scene.zip`: `scene.ply`                        | `scene.ply`                     |

OBJ, STL and PLY hold no node hierarchy, so their meshes are written in world coordinates
(each object's transform applied); glTF and GLB keep one node per object with its transform.
PLY is one mesh: the objects joined, their colours (vertex, face, or sampled from the texture)
as vertex colours. `center=True` (Clara's centerScene) first moves the whole scene so the
centre of its world bounding box is the origin.

Every file name inside an output comes from names made safe (`formats.safe_file_stem`): object
names are the user's and may be anything (`../../etc/passwd`, `CON`, empty), and an archive
member with a path in it is a classic way to write outside the folder it is extracted to.
The OBJ and MTL are written here rather than by trimesh for the same reason: trimesh puts
object and material names into the text and into texture file names as they are.

Zips are deterministic (fixed member order and timestamps), so the same scene gives the same
bytes. Mime types: application/zip, model/gltf-binary, model/gltf+json, model/obj (IANA),
and application/ply (PLY has no registered type; this is what common tools send).

Exports are CPU work on the caller's thread (seconds for millions of triangles): an async
caller runs `export_scene` in a worker thread.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import trimesh

from services.render.scenes.formats import (
    check_export,
    normalized_extension,
    safe_file_stem,
    unique_file_name,
)
from services.render.scenes.model import GLB_MIME, Placed, SceneEmpty

ZIP_MIME = "application/zip"
GLTF_MIME = "model/gltf+json"
OBJ_MIME = "model/obj"
STL_MIME = "model/stl"
PLY_MIME = "application/ply"

# Zip members carry this date, so an export's bytes do not depend on when it ran.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
# Significant digits of coordinates in OBJ text: a float32 reads back exactly.
_DIGITS = 9


@dataclass(frozen=True)
class ExportFile:
    """One output file."""

    name: str
    """Its file name, e.g. `scene.zip`, `scene.glb`."""
    data: bytes
    mime_type: str


def export_scene(
    placed: Sequence[Placed],
    extension: str,
    *,
    zip_output: bool = True,
    center: bool = False,
    name: str = "scene",
) -> ExportFile:
    """The scene as one file in the format of `extension` (see the module's table).

    Raises `ExportRefused` (see `check_export`) and `SceneEmpty` when no object has a
    triangle; objects without triangles are left out.
    """
    check_export(extension, zip_output)
    extension = normalized_extension(extension)
    objects = [item for item in placed if len(item.mesh.faces) > 0]
    if not objects:
        raise SceneEmpty("the scene has no triangles to export")
    stem = safe_file_stem(name, "scene")
    transforms = [np.asarray(item.transform, dtype=np.float64) for item in objects]
    if center:
        shift = np.eye(4)
        shift[:3, 3] = -_world_bounds_centre(objects, transforms)
        transforms = [shift @ transform for transform in transforms]

    if extension == "obj":
        return _export_obj(objects, transforms, stem, zip_output)
    if extension == "glb":
        data = _scene(objects, transforms).export(file_type="glb")
        return _single(f"{stem}.glb", data, GLB_MIME, stem, zip_output)
    if extension == "gltf":
        return _export_gltf(objects, transforms, stem, zip_output)
    if extension == "stl":
        taken: set[str] = set()
        members = [
            (
                unique_file_name(_stem_without(item.name, ".stl"), "stl", taken),
                trimesh.exchange.stl.export_stl(_world_mesh(item, transform)),
            )
            for item, transform in zip(objects, transforms, strict=True)
        ]
        return ExportFile(f"{stem}.zip", _zip(members), ZIP_MIME)
    return _single(f"{stem}.ply", _ply(objects, transforms), PLY_MIME, stem, zip_output)


def _stem_without(name: str, extension: str) -> str:
    """A safe file stem of `name`, less `extension` if it ends so (`part.stl` → `part`)."""
    stem = safe_file_stem(name, "object")
    if stem.lower().endswith(extension) and len(stem) > len(extension):
        stem = stem[: -len(extension)]
    return stem


def _world_bounds_centre(objects: Sequence[Placed], transforms: Sequence[np.ndarray]) -> Any:
    lows, highs = [], []
    for item, transform in zip(objects, transforms, strict=True):
        points = trimesh.transform_points(np.asarray(item.mesh.vertices), transform)
        lows.append(points.min(axis=0))
        highs.append(points.max(axis=0))
    return (np.min(lows, axis=0) + np.max(highs, axis=0)) / 2


def _world_mesh(item: Placed, transform: np.ndarray) -> trimesh.Trimesh:
    """A copy of the object's mesh in world coordinates (a mirroring transform also flips the
    faces' winding, so normals keep pointing out)."""
    mesh = item.mesh.copy()
    mesh.apply_transform(transform)
    return mesh


def _single(name: str, data: bytes, mime_type: str, stem: str, zip_output: bool) -> ExportFile:
    if zip_output:
        return ExportFile(f"{stem}.zip", _zip([(name, data)]), ZIP_MIME)
    return ExportFile(name, data, mime_type)


def _zip(members: Sequence[tuple[str, bytes]]) -> bytes:
    """A zip of `members` in their order, with fixed dates and permissions."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for member, data in members:
            info = zipfile.ZipInfo(member, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()


# --- glTF and GLB ---------------------------------------------------------------------------


def _scene(objects: Sequence[Placed], transforms: Sequence[np.ndarray]) -> trimesh.Scene:
    """One node per object, carrying its transform, each with its own mesh."""
    scene = trimesh.Scene()
    taken: set[str] = set()
    for index, (item, transform) in enumerate(zip(objects, transforms, strict=True)):
        node = item.name or "object"
        if node in taken:
            node = f"{node}-{index}"
        taken.add(node)
        scene.add_geometry(
            item.mesh, node_name=node, geom_name=f"mesh-{index}", transform=transform
        )
    return scene


def _export_gltf(
    objects: Sequence[Placed], transforms: Sequence[np.ndarray], stem: str, zip_output: bool
) -> ExportFile:
    files = trimesh.exchange.gltf.export_gltf(
        _scene(objects, transforms), merge_buffers=True, embed_buffers=not zip_output
    )
    document = json.loads(files["model.gltf"])
    if not zip_output:
        return ExportFile(f"{stem}.gltf", _json_bytes(document), GLTF_MIME)
    buffer = b"".join(data for key, data in files.items() if key != "model.gltf")
    textures = _images_to_files(document, buffer, stem)
    buffer = _compact_buffer(document, buffer)
    if document.get("buffers"):
        document["buffers"] = [{"uri": f"{stem}.bin", "byteLength": len(buffer)}]
    members = [(f"{stem}.gltf", _json_bytes(document))]
    if document.get("buffers"):
        members.append((f"{stem}.bin", buffer))
    return ExportFile(f"{stem}.zip", _zip(members + textures), ZIP_MIME)


def _json_bytes(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


_IMAGE_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


def _images_to_files(document: dict[str, Any], buffer: bytes, stem: str) -> list[tuple[str, bytes]]:
    """Moves the images trimesh stored in the buffer out to files of their own (textures a
    user can open and edit), pointing each image at its file; their buffer views are left
    unused for `_compact_buffer`."""
    views = document.get("bufferViews", [])
    files: list[tuple[str, bytes]] = []
    for index, image in enumerate(document.get("images", [])):
        if "bufferView" not in image:
            continue
        view = views[image["bufferView"]]
        start = view.get("byteOffset", 0)
        extension = _IMAGE_EXTENSIONS.get(image.get("mimeType", ""), "png")
        name = f"{stem}-texture-{index}.{extension}"
        files.append((name, buffer[start : start + view["byteLength"]]))
        image.pop("bufferView")
        image["uri"] = name
    return files


def _compact_buffer(document: dict[str, Any], buffer: bytes) -> bytes:
    """The buffer without the views nothing refers to any more, the remaining views and their
    references renumbered and moved (4-byte aligned, as accessors need)."""
    views = document.get("bufferViews", [])
    used = {accessor["bufferView"] for accessor in document.get("accessors", [])}
    used |= {image["bufferView"] for image in document.get("images", []) if "bufferView" in image}
    kept = [index for index in range(len(views)) if index in used]
    renumber = {old: new for new, old in enumerate(kept)}
    parts: list[bytes] = []
    offset = 0
    new_views = []
    for old in kept:
        view = dict(views[old])
        start = view.get("byteOffset", 0)
        data = buffer[start : start + view["byteLength"]]
        view["byteOffset"] = offset
        new_views.append(view)
        padded = data + b"\0" * (-len(data) % 4)
        parts.append(padded)
        offset += len(padded)
    for holder in [*document.get("accessors", []), *document.get("images", [])]:
        if "bufferView" in holder:
            holder["bufferView"] = renumber[holder["bufferView"]]
    if new_views:
        document["bufferViews"] = new_views
    else:
        document.pop("bufferViews", None)
    return b"".join(parts)


# --- OBJ ------------------------------------------------------------------------------------

_OBJ_NAME_UNSAFE = re.compile(r"[\s#\x00-\x1f\x7f]+")


def _obj_name(name: str, taken: set[str]) -> str:
    """An object name OBJ can hold: one word, no comment mark; unique, so that importers that
    key objects by name keep them apart."""
    base = _OBJ_NAME_UNSAFE.sub("_", name).strip("_") or "object"
    candidate, number = base, 1
    while candidate in taken:
        number += 1
        candidate = f"{base}-{number}"
    taken.add(candidate)
    return candidate


def _rows(prefix: str, array: np.ndarray, value_format: str) -> str:
    """`prefix v0 v1 …` lines of a 2D array, built in one format call (fast for millions);
    `value_format` may take several values (`{}/{}`), consuming that many columns."""
    if len(array) == 0:
        return ""
    values = array.shape[1] // value_format.count("{")
    row = prefix + " " + " ".join([value_format] * values) + "\n"
    return (row * len(array)).format(*array.ravel().tolist())


def _base_colour(material: Any) -> tuple[Any, np.ndarray]:
    """A material's base colour image (or None) and RGBA colour (floats 0..1)."""
    image = getattr(material, "image", None)
    if image is None:
        image = getattr(material, "baseColorTexture", None)
    colour = getattr(material, "diffuse", None)
    if colour is None:
        colour = getattr(material, "baseColorFactor", None)
    rgba = np.ones(4) if colour is None else np.asarray(colour, dtype=np.float64).ravel()
    if rgba.max() > 1.0:
        rgba = rgba / 255.0
    if len(rgba) == 3:
        rgba = np.append(rgba, 1.0)
    return image, rgba[:4]


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _export_obj(
    objects: Sequence[Placed], transforms: Sequence[np.ndarray], stem: str, zip_output: bool
) -> ExportFile:
    materials: dict[tuple[str, str], str] = {}  # (texture digest, colour) → material name
    mtl_lines: list[str] = []
    textures: dict[str, str] = {}  # digest → file name
    texture_files: list[tuple[str, bytes]] = []
    chunks = [f"# {stem}: {len(objects)} objects, written by Kiln\n"]
    if zip_output:
        chunks.append(f"mtllib {stem}.mtl\n")
    names: set[str] = set()
    vertex_offset = uv_offset = 0
    for item, transform in zip(objects, transforms, strict=True):
        mesh = _world_mesh(item, transform)
        chunks.append(f"o {_obj_name(item.name, names)}\n")
        visual = mesh.visual
        vertices = np.asarray(mesh.vertices, dtype=np.float64)
        if visual.kind in ("vertex", "face"):
            colours = np.asarray(visual.vertex_colors, dtype=np.float64)[:, :3] / 255.0
            vertices = np.column_stack([vertices, colours])
        chunks.append(_rows("v", vertices, f"{{:.{_DIGITS}g}}"))
        uv = getattr(visual, "uv", None) if visual.kind == "texture" else None
        has_uv = uv is not None and len(uv) == len(mesh.vertices)
        if has_uv:
            chunks.append(_rows("vt", np.asarray(uv, dtype=np.float64), f"{{:.{_DIGITS}g}}"))
        if zip_output and visual.kind == "texture":
            image, rgba = _base_colour(visual.material)
            digest = ""
            if image is not None and has_uv:
                data = _png(image)
                digest = hashlib.sha256(data).hexdigest()
                if digest not in textures:
                    textures[digest] = f"{stem}-texture-{len(textures)}.png"
                    texture_files.append((textures[digest], data))
            key = (digest, " ".join(f"{value:.6g}" for value in rgba))
            if key not in materials:
                materials[key] = f"material-{len(materials)}"
                mtl_lines += [
                    f"newmtl {materials[key]}",
                    "Kd {:.6g} {:.6g} {:.6g}".format(*rgba[:3]),
                ]
                if rgba[3] < 1.0:
                    mtl_lines.append(f"d {rgba[3]:.6g}")
                if digest:
                    mtl_lines.append(f"map_Kd {textures[digest]}")
                mtl_lines.append("")
            chunks.append(f"usemtl {materials[key]}\n")
        faces = np.asarray(mesh.faces, dtype=np.int64) + 1
        if has_uv:
            # v and vt are numbered apart: objects without UVs add vertices but no vt
            corners = np.stack([faces + vertex_offset, faces + uv_offset], axis=2)
            chunks.append(_rows("f", corners.reshape(len(faces), 6), "{}/{}"))
            uv_offset += len(mesh.vertices)
        else:
            chunks.append(_rows("f", faces + vertex_offset, "{}"))
        vertex_offset += len(mesh.vertices)
    obj = "".join(chunks).encode()
    if not zip_output:
        return ExportFile(f"{stem}.obj", obj, OBJ_MIME)
    mtl = ("\n".join(mtl_lines) + "\n").encode()
    members = [(f"{stem}.obj", obj), (f"{stem}.mtl", mtl), *texture_files]
    return ExportFile(f"{stem}.zip", _zip(members), ZIP_MIME)


# --- PLY ------------------------------------------------------------------------------------


def _ply(objects: Sequence[Placed], transforms: Sequence[np.ndarray]) -> bytes:
    """One binary PLY of all objects joined in world coordinates; vertex colours when any
    object has colours or a texture (the others get trimesh's default grey)."""
    meshes = [
        _world_mesh(item, transform) for item, transform in zip(objects, transforms, strict=True)
    ]
    coloured = any(mesh.visual.kind in ("vertex", "face", "texture") for mesh in meshes)
    plain = []
    for mesh in meshes:
        if coloured and mesh.visual.kind == "texture":
            colours = mesh.visual.to_color().vertex_colors
        elif coloured:
            colours = mesh.visual.vertex_colors
        else:
            colours = None
        plain.append(
            trimesh.Trimesh(
                vertices=mesh.vertices,
                faces=mesh.faces,
                vertex_colors=colours,
                process=False,
                validate=False,
            )
        )
    joined = plain[0] if len(plain) == 1 else trimesh.util.concatenate(plain)
    data = trimesh.exchange.ply.export_ply(joined, encoding="binary", include_attributes=False)
    assert isinstance(data, bytes)
    return data
