"""The child process that parses an upload (`python -m services.render.scenes._parse_child
REQUEST`); `importing.parse_upload` starts it and reads back what it writes.

It sets its own limits first (address space, CPU time, no core dumps), before it imports the
parsers, so everything that touches the upload runs under them; setting them here rather than
in a `preexec_fn` keeps the parent free of fork-time callbacks, which are unsafe in a threaded
server. Then it loads each model file (trimesh for OBJ, glTF, GLB, STL, PLY, OFF; assimp for
FBX) with every reference confined to the uploaded files (`confined_resolver`), checks the
result (finite numbers, faces inside their vertex lists, triangle, object and texture budgets)
and writes it: one GLB per distinct mesh, the texture images, and `manifest.json` last. A
refusal is written to `error.json` instead, its message naming uploaded files only.

REQUEST is a JSON object: `folder` (the upload), `out` (where to write, inside `folder`),
`files` (the uploaded names), `models` (the model files, main first) and `budget` (the fields
of `importing.ImportBudget`).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import resource
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The child's exit status when it refused the upload (its reason is in ERROR_NAME).
EXIT_REFUSED = 3
# Kept equal to importing's names (imported there with trimesh, too early here).
ERROR_NAME = "error.json"


class Refusal(Exception):
    """The upload is refused: `kind` is "invalid" or "too_large"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def set_limits(budget: dict[str, Any]) -> None:
    """The child's resource limits, never above the ones it inherited."""

    def lower(limit: int, wanted: int) -> None:
        _, hard = resource.getrlimit(limit)
        if hard != resource.RLIM_INFINITY:
            wanted = min(wanted, hard)
        resource.setrlimit(limit, (wanted, wanted))

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    lower(resource.RLIMIT_AS, int(budget["max_memory_bytes"]))
    # A backstop should the parent fail to kill us at the wall-clock budget: SIGXCPU (which
    # ends the process) one CPU second after it.
    cpu_seconds = math.ceil(float(budget["max_seconds"])) + 1
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        cpu_seconds = min(cpu_seconds, hard - 1)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))


def main(argv: list[str]) -> int:
    request = json.loads(argv[1])
    out = Path(request["out"])
    models: list[str] = request["models"]
    budget: dict[str, Any] = request["budget"]
    set_limits(budget)
    memory = f"{int(budget['max_memory_bytes']) // 1024**2:,} MiB"
    try:
        try:
            # the parsers, imported under the limits: a budget too small for them shows here
            import numpy  # noqa: F401
            import trimesh  # noqa: F401
            from PIL import Image
        except (ImportError, MemoryError):
            raise Refusal(
                "too_large", f"the parser cannot start within the memory budget of {memory}"
            ) from None
        # Pillow's own bomb check would make trimesh drop a huge texture silently; the
        # budget is checked on every texture's header instead (`check_textures`), before
        # anything is decoded, and RLIMIT_AS holds whatever slips through.
        Image.MAX_IMAGE_PIXELS = None
        try:
            parsed = parse(
                folder=Path(request["folder"]),
                uploaded=frozenset(request["files"]),
                models=models,
                budget=budget,
            )
            check_textures(parsed, budget)
            write_result(parsed, out)
        except MemoryError:
            raise Refusal(
                "too_large", f"reading {models[0]} needs more than {memory} of memory"
            ) from None
    except Refusal as refusal:
        error = {"kind": refusal.kind, "message": refusal.message}
        (out / ERROR_NAME).write_text(json.dumps(error))
        return EXIT_REFUSED
    return 0


# --- loading --------------------------------------------------------------------------------


@dataclass
class Mesh:
    """One distinct mesh of the scene (nodes may share it)."""

    key: str
    mesh: Any  # trimesh.Trimesh
    textures: list[int] = field(default_factory=list)


@dataclass
class Node:
    name: str
    mesh: Mesh
    transform: Any  # 4x4 numpy array


@dataclass
class Parsed:
    meshes: list[Mesh] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    textures: list[TextureImage] = field(default_factory=list)


@dataclass
class TextureImage:
    name: str
    image: Any  # PIL.Image.Image, not decoded yet


def _reason(exc: BaseException, folder: Path) -> str:
    """An exception's message for the caller: one line, short, no path of this machine."""
    text = str(exc).replace(str(folder) + os.sep, "").replace(str(folder), "")
    text = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return text[:160]


def parse(
    folder: Path, uploaded: frozenset[str], models: list[str], budget: dict[str, Any]
) -> Parsed:
    import numpy as np

    parsed = Parsed()
    triangles = 0
    for model in models:
        extension = model.rsplit(".", 1)[-1].lower()
        try:
            if extension == "fbx":
                nodes = load_fbx(folder, model, uploaded)
            else:
                nodes = load_with_trimesh(folder, model, extension, uploaded)
        except (Refusal, MemoryError):
            raise
        except Exception as exc:
            raise Refusal(
                "invalid",
                f"{model} is not a readable {extension.upper()} file ({_reason(exc, folder)})",
            ) from None
        meshes_of_file: dict[int, Mesh] = {}
        for name, transform, mesh in nodes:
            if len(mesh.faces) == 0:
                continue
            if id(mesh) not in meshes_of_file:
                check_mesh(mesh, model)
                meshes_of_file[id(mesh)] = Mesh(key=f"mesh-{len(parsed.meshes)}", mesh=mesh)
                parsed.meshes.append(meshes_of_file[id(mesh)])
            if not np.isfinite(transform).all():
                raise Refusal("invalid", f"{model} places {name!r} with a non-finite transform")
            parsed.nodes.append(Node(name, meshes_of_file[id(mesh)], transform))
            triangles += len(mesh.faces)
        if not meshes_of_file:
            raise Refusal("invalid", f"{model} contains no triangles")
        if triangles > budget["max_triangles"]:
            holder = model if len(models) == 1 else "the models of this import"
            raise Refusal(
                "too_large",
                f"{holder} has {triangles:,} triangles, over the budget of "
                f"{budget['max_triangles']:,}",
            )
        if len(parsed.nodes) > budget["max_objects"]:
            raise Refusal(
                "too_large",
                f"{model} has {len(parsed.nodes):,} meshes, over the budget of "
                f"{budget['max_objects']:,} objects",
            )
    collect_textures(parsed)
    return parsed


def check_mesh(mesh: Any, model: str) -> None:
    """Refuses what would render wrong or crash later: non-finite positions, faces that are
    not triangles of the mesh's own vertices."""
    import numpy as np

    faces, vertices = np.asarray(mesh.faces), np.asarray(mesh.vertices)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
        raise Refusal("invalid", f"{model} holds a mesh that is not made of triangles")
    if not np.issubdtype(faces.dtype, np.integer):
        raise Refusal("invalid", f"{model} holds faces that are not vertex indices")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise Refusal("invalid", f"{model} has faces pointing past its {len(vertices):,} vertices")
    if not np.isfinite(vertices).all():
        raise Refusal("invalid", f"{model} has vertices that are not finite numbers (NaN, inf)")


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0]


def load_with_trimesh(
    folder: Path, model: str, extension: str, uploaded: frozenset[str]
) -> list[tuple[str, Any, Any]]:
    """(node name, world matrix, mesh) of each mesh node of a file trimesh reads."""
    import trimesh

    options: dict[str, Any] = {}
    if extension == "obj":
        # one mesh per object and material, named after both
        options = {"split_objects": True, "group_material": True}
    scene = trimesh.load_scene(
        str(folder / model),
        file_type=extension,
        resolver=confined_resolver(folder, uploaded, model),
        process=False,
        **options,
    )
    nodes = []
    for node in scene.graph.nodes_geometry:
        transform, geometry_name = scene.graph[node]
        geometry = scene.geometry.get(geometry_name)
        if not isinstance(geometry, trimesh.Trimesh):
            continue  # points, lines: nothing to render
        name = str(node)
        material = getattr(geometry.visual, "material", None)
        material_name = getattr(material, "name", None)
        if extension == "obj" and material_name and name.endswith(f"_{material_name}"):
            # trimesh names an OBJ part `{object}_{material}`: the object is the name
            name = name[: -len(material_name) - 1] or name
        if name in (model, "geometry") or not name:
            name = _stem(model)
        nodes.append((name, transform, geometry))
    return nodes


# Assimp picks its reader by extension and then by content, so a file named .fbx holding
# another format could reach a reader with its own file look-ups (OBJ's mtllib): only FBX's
# own signatures go to assimp.
_FBX_BINARY_MAGIC = b"Kaydara FBX Binary"
_FBX_ASCII_MARK = b"FBXHeaderExtension"


def load_fbx(folder: Path, model: str, uploaded: frozenset[str]) -> list[tuple[str, Any, Any]]:
    """(node name, world matrix, mesh) of each mesh of each node of an FBX file (assimp),
    triangulated, with normals, UVs, vertex colours and the diffuse colour or texture."""
    import assimp_py
    import numpy as np
    import trimesh

    with open(folder / model, "rb") as file:
        head = file.read(4096)
    if not (head.startswith(_FBX_BINARY_MAGIC) or _FBX_ASCII_MARK in head):
        raise Refusal("invalid", f"{model} is not an FBX file")
    flags = (
        assimp_py.Process_Triangulate
        | assimp_py.Process_SortByPType
        | assimp_py.Process_JoinIdenticalVertices
        | assimp_py.Process_ValidateDataStructure
    )
    scene = assimp_py.import_file(str(folder / model), flags)
    resolver = confined_resolver(folder, uploaded, model)
    meshes: dict[int, Any] = {}

    def mesh_at(index: int) -> Any:
        if index not in meshes:
            meshes[index] = _assimp_mesh(
                scene.meshes[index], scene.materials, resolver, np, trimesh
            )
        return meshes[index]

    nodes = []
    # iterative: a hostile file may nest nodes deeper than Python's recursion limit
    stack = [(scene.root_node, np.eye(4))]
    while stack:
        node, parent = stack.pop()
        world = parent @ np.asarray(node.transformation, dtype=np.float64).reshape(4, 4)
        for index in node.mesh_indices:
            mesh = mesh_at(index)
            if mesh is not None:
                name = node.name or scene.meshes[index].name or _stem(model)
                nodes.append((name, world, mesh))
        stack.extend((child, world) for child in reversed(node.children))
    return nodes


def _assimp_mesh(
    source: Any, materials: list[dict[str, Any]], resolver: Any, np: Any, trimesh: Any
) -> Any:
    """A trimesh mesh of an assimp mesh; None for points and lines."""
    if source.num_faces == 0 or source.num_indices != 3 * source.num_faces:
        return None
    vertices = np.asarray(source.vertices, dtype=np.float64).reshape(-1, 3)
    faces = np.asarray(source.indices, dtype=np.int64).reshape(-1, 3)
    normals = None
    if source.normals is not None and len(source.normals) == vertices.size:
        normals = np.asarray(source.normals, dtype=np.float64).reshape(-1, 3)
    uv = None
    if source.texcoords and source.num_uv_components:
        components = int(source.num_uv_components[0])
        if components >= 2 and len(source.texcoords[0]) == len(vertices) * components:
            uv = np.asarray(source.texcoords[0], dtype=np.float64).reshape(-1, components)[:, :2]
    colours = None
    if source.colors and len(source.colors[0]) == len(vertices) * 4:
        rgba = np.asarray(source.colors[0], dtype=np.float64).reshape(-1, 4)
        colours = np.clip(np.round(np.nan_to_num(rgba) * 255), 0, 255).astype(np.uint8)

    material = (
        materials[source.material_index] if 0 <= source.material_index < len(materials) else {}
    )
    diffuse = material.get("COLOR_DIFFUSE") or [0.8, 0.8, 0.8]
    diffuse_rgba = np.clip(np.round(np.nan_to_num([*diffuse[:3], 1.0]) * 255), 0, 255)
    image = None
    for reference in material.get("TEXTURES", {}).get(1, []):  # 1: aiTextureType_DIFFUSE
        image = resolver.image(str(reference))
        if image is not None:
            break

    visual: Any
    if image is not None and uv is not None:
        simple = trimesh.visual.material.SimpleMaterial(
            image=image, diffuse=diffuse_rgba.astype(np.uint8), name=material.get("NAME")
        )
        visual = trimesh.visual.TextureVisuals(uv=uv, material=simple)
    elif colours is not None:
        visual = trimesh.visual.ColorVisuals(vertex_colors=colours)
    else:
        visual = trimesh.visual.ColorVisuals(
            vertex_colors=np.tile(diffuse_rgba.astype(np.uint8), (len(vertices), 1))
        )
    return trimesh.Trimesh(
        vertices=vertices,
        faces=faces,
        vertex_normals=normals,
        visual=visual,
        process=False,
        validate=False,
    )


def _candidates(reference: str) -> Iterator[str]:
    """The names a reference may mean: as written, percent-decoded (glTF URIs), and its last
    word (an MTL map line's options come first: `map_Kd -s 2 2 1 wood.jpg`)."""
    reference = reference.strip()
    yield reference
    yield urllib.parse.unquote(reference)
    words = reference.split()
    if len(words) > 1:
        yield words[-1]


def confined_resolver(folder: Path, uploaded: frozenset[str], model: str) -> Any:
    """trimesh's file resolver restricted to the uploaded files: a name is served only when
    it is the plain name of one of them (see `formats.is_plain_name`); anything else (a
    path, `..`, an absolute name, a URL, a file not uploaded) is refused unread, as missing.
    """
    return _define_confined_resolver()(folder, uploaded, model)


# The class is made on first use, so that trimesh is imported only once the limits are set.
@functools.cache
def _define_confined_resolver() -> Any:
    import trimesh
    from PIL import Image

    from services.render.scenes.formats import is_plain_name

    class Confined(trimesh.resolvers.FilePathResolver):
        def __init__(self, folder: Path, uploaded: frozenset[str], model: str) -> None:
            super().__init__(str(folder / model))
            self.folder = folder
            self.uploaded = uploaded

        def resolve(self, reference: str) -> str | None:
            for candidate in _candidates(reference):
                if is_plain_name(candidate) and candidate in self.uploaded:
                    return candidate
            print(f"refused reference {reference!r}", file=sys.stderr)
            return None

        def get(self, name: str) -> bytes:
            plain = self.resolve(name)
            if plain is None:
                raise FileNotFoundError(f"{name!r} is not one of the uploaded files")
            # O_NOFOLLOW: the parent checked the uploads are plain files; a link swapped in
            # since must not lead out of the folder.
            descriptor = os.open(self.folder / plain, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(descriptor, "rb") as file:
                return file.read()

        def image(self, name: str) -> Any:
            """The image file `name` refers to, opened (not decoded), or None."""
            try:
                image = Image.open(io.BytesIO(self.get(name)))
            except Exception:  # Pillow's plugins raise more than OSError on broken images
                return None
            image.info["file_path"] = self.resolve(name)
            return image

        def keys(self) -> Iterator[str]:
            return iter(sorted(self.uploaded))

        def namespaced(self, namespace: str) -> Any:
            raise FileNotFoundError("an upload has no folders")

        def write(self, name: str, data: Any) -> None:
            raise PermissionError("an upload is read only")

    return Confined


# --- textures -------------------------------------------------------------------------------

_TEXTURE_SLOTS = (
    "image",
    "baseColorTexture",
    "metallicRoughnessTexture",
    "normalTexture",
    "emissiveTexture",
    "occlusionTexture",
)


def _images_of(mesh: Any) -> Iterator[tuple[str, Any]]:
    material = getattr(mesh.visual, "material", None)
    if material is None:
        return
    for slot in _TEXTURE_SLOTS:
        image = getattr(material, slot, None)
        # an image without a format was made by trimesh (a placeholder for a material it
        # could not load), not read from the upload
        if image is not None and getattr(image, "format", None):
            yield slot, image


def collect_textures(parsed: Parsed) -> None:
    """Each distinct image the meshes use, once (the same object, or the same bytes), with a
    name from the file it came from, else its material and slot."""
    by_object: dict[int, int] = {}
    by_digest: dict[str, int] = {}
    for mesh in parsed.meshes:
        material = getattr(mesh.mesh.visual, "material", None)
        for slot, image in _images_of(mesh.mesh):
            index = by_object.get(id(image))
            if index is None:
                original = _original_bytes(image)
                digest = hashlib.sha256(original).hexdigest() if original else None
                index = by_digest.get(digest) if digest else None
                if index is None:
                    index = len(parsed.textures)
                    source = image.info.get("file_path") if hasattr(image, "info") else None
                    name = (
                        str(source)
                        if source
                        else f"{getattr(material, 'name', None) or 'texture'}-{slot}"
                    )
                    parsed.textures.append(TextureImage(name=name, image=image))
                    if digest:
                        by_digest[digest] = index
                by_object[id(image)] = index
            if index not in mesh.textures:
                mesh.textures.append(index)


# Image formats kept as uploaded (MPO: the JPEG variant many cameras write); others become PNG.
_KEPT_FORMATS = ("JPEG", "MPO", "PNG")
_JPEG_FORMATS = ("JPEG", "MPO")


def _original_bytes(image: Any) -> bytes | None:
    """The encoded bytes an undecoded JPEG or PNG was opened from, when trimesh opened it
    from memory (it does for every texture it loads), else None."""
    stream = getattr(image, "fp", None)
    if getattr(image, "format", None) in _KEPT_FORMATS and isinstance(stream, io.BytesIO):
        return stream.getvalue()
    return None


def check_textures(parsed: Parsed, budget: dict[str, Any]) -> None:
    """Refuses a texture over the pixel budget, from its header (nothing decoded yet)."""
    limit = int(budget["max_texture_pixels"])
    for texture in parsed.textures:
        width, height = texture.image.size
        if width * height > limit:
            raise Refusal(
                "too_large",
                f"the texture {texture.name} is {width} x {height} pixels, over the budget "
                f"of {limit:,} pixels per texture",
            )


# --- the result -----------------------------------------------------------------------------


def write_result(parsed: Parsed, out: Path) -> None:
    from services.render.scenes.formats import safe_file_stem, unique_file_name
    from services.render.scenes.importing import MANIFEST_NAME
    from services.render.scenes.model import mesh_to_glb, row_major

    textures = []
    taken: set[str] = set()
    for index, texture in enumerate(parsed.textures):
        data = _original_bytes(texture.image)
        if data is not None and texture.image.format in _JPEG_FORMATS:
            extension, mime_type = "jpg", "image/jpeg"
        else:
            extension, mime_type = "png", "image/png"
            if data is None:
                buffer = io.BytesIO()
                texture.image.save(buffer, format="PNG")
                data = buffer.getvalue()
        file = f"texture-{index}.{extension}"
        (out / file).write_bytes(data)
        name = unique_file_name(safe_file_stem(_stem(texture.name), "texture"), extension, taken)
        textures.append({"name": name, "file": file, "mime_type": mime_type})
    meshes = {}
    triangles = {}
    for mesh in parsed.meshes:
        meshes[mesh.key] = f"{mesh.key}.glb"
        triangles[mesh.key] = len(mesh.mesh.faces)
        (out / meshes[mesh.key]).write_bytes(mesh_to_glb(mesh.mesh))
    nodes = [
        {
            "name": node.name,
            "mesh": node.mesh.key,
            "transform": row_major(node.transform),
            "textures": node.mesh.textures,
        }
        for node in parsed.nodes
    ]
    # ru_maxrss is in KiB on Linux: the parse's own peak, which the job reports.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    manifest = {
        "meshes": meshes,
        "triangles": triangles,
        "nodes": nodes,
        "textures": textures,
        "peak_rss_bytes": peak,
    }
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
