"""Test 3D files written on the spot (nothing is downloaded), each small and exactly known.

- a textured OBJ (`zebra.obj` + `zebra.mtl` + `zebra-atlas.jpg`), the shape of Clara's seed
  example: a textured quad "Body" and a plain-coloured triangle "Tail";
- glTF 2.0 written by hand (JSON + one binary buffer), as `.gltf` with the buffer and texture
  as separate files or as one `.glb`: a textured quad used by several nodes, one of them
  translated, rotated and scaled, one nested below it;
- STL (ASCII and binary), PLY (with vertex colours, and points only), OFF: a tetrahedron;
- an ASCII FBX 7.4 (the text form Autodesk's SDK writes, which assimp reads): a coloured,
  UV-mapped quad under a translated, rotated, scaled model node, with a diffuse texture.

The atlas has four flat quadrants so a colour can be checked at a known UV whatever the codec
does to edges: with OBJ's convention (v up, image row 0 at v = 1), `QUADRANTS` maps a UV in
the middle of each quadrant to its colour.
"""

from __future__ import annotations

import io
import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)

QUADRANTS: dict[tuple[float, float], tuple[int, int, int]] = {
    (0.25, 0.75): RED,  # top left of the image
    (0.75, 0.75): GREEN,  # top right
    (0.25, 0.25): BLUE,  # bottom left
    (0.75, 0.25): WHITE,  # bottom right
}


def atlas_pixels(size: int = 64) -> np.ndarray:
    pixels = np.zeros((size, size, 3), np.uint8)
    half = size // 2
    pixels[:half, :half] = RED
    pixels[:half, half:] = GREEN
    pixels[half:, :half] = BLUE
    pixels[half:, half:] = WHITE
    return pixels


def atlas(image_format: str = "JPEG", size: int = 64) -> bytes:
    buffer = io.BytesIO()
    options = {"quality": 95} if image_format == "JPEG" else {}
    Image.fromarray(atlas_pixels(size)).save(buffer, format=image_format, **options)
    return buffer.getvalue()


# --- OBJ ------------------------------------------------------------------------------------

ZEBRA_OBJ = """\
# Clara's seed example in miniature: a textured body and a plain tail
mtllib zebra.mtl
o Body
v 0 0 0
v 1 0 0
v 1 1 0
v 0 1 0
vt 0 0
vt 1 0
vt 1 1
vt 0 1
usemtl Skin
f 1/1 2/2 3/3
f 1/1 3/3 4/4
o Tail
v 2 0 0
v 3 0 0
v 3 1 0
usemtl Tuft
f 5 6 7
"""

ZEBRA_MTL = """\
newmtl Skin
Kd 1 1 1
map_Kd zebra-atlas.jpg
newmtl Tuft
Kd 0.5 0.25 0.1
"""


def write_files(folder: Path, files: dict[str, bytes | str]) -> list[str]:
    """Writes `files` into `folder`; their names, in order."""
    for name, data in files.items():
        path = folder / name
        if isinstance(data, str):
            path.write_text(data)
        else:
            path.write_bytes(data)
    return list(files)


def zebra_files(mtl: str = ZEBRA_MTL) -> dict[str, bytes | str]:
    return {"zebra.obj": ZEBRA_OBJ, "zebra.mtl": mtl, "zebra-atlas.jpg": atlas("JPEG")}


# --- glTF -----------------------------------------------------------------------------------

QUAD_POSITIONS = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32)
# glTF's UVs start at the top of the image
QUAD_UVS = np.array([[0, 1], [1, 1], [1, 0], [0, 0]], np.float32)
QUAD_INDICES = np.array([0, 1, 2, 0, 2, 3], np.uint16)

ROTATION_Z_90 = [0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4)]  # x, y, z, w
MOVED_TRS = {"translation": [1.0, 2.0, 3.0], "rotation": ROTATION_Z_90, "scale": [2.0, 3.0, 4.0]}
NESTED_TRANSLATION = [0.0, 0.0, 5.0]
# column-major, as glTF writes a matrix: a translation by (-4, 0, 0) and a uniform scale of 0.5
PLAIN_MATRIX = [0.5, 0, 0, 0, 0, 0.5, 0, 0, 0, 0, 0.5, 0, -4, 0, 0, 1]


def trs_matrix(translation: list[float], rotation: list[float], scale: list[float]) -> np.ndarray:
    """The column-vector 4x4 matrix T * R * S of a glTF node."""
    x, y, z, w = rotation
    rot = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    matrix = np.eye(4)
    matrix[:3, :3] = rot * np.asarray(scale)
    matrix[:3, 3] = translation
    return matrix


def expected_node_matrices() -> dict[str, np.ndarray]:
    """The world matrix of each node of `quad_gltf`."""
    moved = trs_matrix(**MOVED_TRS)
    nested = np.eye(4)
    nested[:3, 3] = NESTED_TRANSLATION
    return {
        "Moved": moved,
        "Nested": moved @ nested,
        "Plain": np.asarray(PLAIN_MATRIX, np.float64).reshape(4, 4).T,
    }


def _padded(data: bytes, fill: bytes = b"\0") -> bytes:
    return data + fill * (-len(data) % 4)


def quad_gltf(
    *, buffer_uri: str | None, image_uri: str | None, embed_image: bytes | None = None
) -> tuple[dict[str, Any], bytes]:
    """A glTF document and its binary buffer: one textured quad mesh used by three nodes
    ("Moved" with translation, rotation and scale; "Nested", its child; "Plain" with a
    matrix). `buffer_uri` None makes the buffer the GLB's BIN chunk; `embed_image` puts the
    texture in the buffer, otherwise it is the file `image_uri`."""
    blobs = [
        QUAD_POSITIONS.tobytes(),
        QUAD_UVS.tobytes(),
        _padded(QUAD_INDICES.tobytes()),
    ]
    if embed_image is not None:
        blobs.append(_padded(embed_image))
    views, offset = [], 0
    for blob in blobs:
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(blob)})
        offset += len(blob)
    views[2]["byteLength"] = QUAD_INDICES.nbytes
    binary = b"".join(blobs)
    buffer: dict[str, Any] = {"byteLength": len(binary)}
    if buffer_uri is not None:
        buffer["uri"] = buffer_uri
    image: dict[str, Any]
    if embed_image is not None:
        views[3]["byteLength"] = len(embed_image)
        image = {"bufferView": 3, "mimeType": "image/png"}
    else:
        image = {"uri": image_uri}
    document: dict[str, Any] = {
        "asset": {"version": "2.0", "generator": "kiln tests"},
        "scene": 0,
        "scenes": [{"nodes": [0, 2]}],
        "nodes": [
            {"name": "Moved", "mesh": 0, "children": [1], **MOVED_TRS},
            {"name": "Nested", "mesh": 0, "translation": NESTED_TRANSLATION},
            {"name": "Plain", "mesh": 0, "matrix": PLAIN_MATRIX},
        ],
        "meshes": [
            {
                "name": "Quad",
                "primitives": [
                    {"attributes": {"POSITION": 0, "TEXCOORD_0": 1}, "indices": 2, "material": 0}
                ],
            }
        ],
        "materials": [
            {"name": "Atlas", "pbrMetallicRoughness": {"baseColorTexture": {"index": 0}}}
        ],
        "textures": [{"source": 0}],
        "images": [image],
        "accessors": [
            {
                "bufferView": 0,
                "componentType": 5126,
                "count": 4,
                "type": "VEC3",
                "min": [0, 0, 0],
                "max": [1, 1, 0],
            },
            {"bufferView": 1, "componentType": 5126, "count": 4, "type": "VEC2"},
            {"bufferView": 2, "componentType": 5123, "count": 6, "type": "SCALAR"},
        ],
        "bufferViews": views,
        "buffers": [buffer],
    }
    return document, binary


def glb(document: dict[str, Any], binary: bytes) -> bytes:
    """A GLB container of a document and its BIN chunk."""
    text = _padded(json.dumps(document).encode(), b" ")
    chunks = struct.pack("<II", len(text), 0x4E4F534A) + text
    chunks += struct.pack("<II", len(binary), 0x004E4942) + _padded(binary)
    return struct.pack("<III", 0x46546C67, 2, 12 + len(chunks)) + chunks


def gltf_files(
    stem: str = "quad", buffer_uri: str = "quad.bin", image_uri: str = "quad-atlas.png"
) -> dict[str, bytes | str]:
    """`quad.gltf` with its buffer and texture as separate files."""
    document, binary = quad_gltf(buffer_uri=buffer_uri, image_uri=image_uri)
    return {
        f"{stem}.gltf": json.dumps(document),
        "quad.bin": binary,
        "quad-atlas.png": atlas("PNG"),
    }


def quad_glb() -> bytes:
    document, binary = quad_gltf(buffer_uri=None, image_uri=None, embed_image=atlas("PNG", 8))
    return glb(document, binary)


# --- STL, PLY, OFF --------------------------------------------------------------------------

TETRA_VERTICES = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float64)
TETRA_FACES = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.int64)
TETRA_COLOURS = np.array(
    [[255, 0, 0, 255], [0, 255, 0, 255], [0, 0, 255, 255], [255, 255, 0, 255]], np.uint8
)


def _normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    corners = vertices[faces]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    return normals / np.linalg.norm(normals, axis=1, keepdims=True)


def stl_ascii(vertices: np.ndarray = TETRA_VERTICES, faces: np.ndarray = TETRA_FACES) -> str:
    lines = ["solid tetra"]
    for normal, corners in zip(_normals(vertices, faces), vertices[faces], strict=True):
        lines.append("  facet normal {} {} {}".format(*normal))
        lines.append("    outer loop")
        lines.extend("      vertex {} {} {}".format(*corner) for corner in corners)
        lines.append("    endloop")
        lines.append("  endfacet")
    lines.append("endsolid tetra")
    return "\n".join(lines) + "\n"


def stl_binary(vertices: np.ndarray = TETRA_VERTICES, faces: np.ndarray = TETRA_FACES) -> bytes:
    record = np.dtype([("normal", "<f4", 3), ("corners", "<f4", (3, 3)), ("attr", "<u2")])
    rows = np.zeros(len(faces), record)
    rows["normal"] = _normals(vertices, faces)
    rows["corners"] = vertices[faces]
    return b"kiln test".ljust(80, b" ") + struct.pack("<I", len(faces)) + rows.tobytes()


def grid_stl(triangles: int) -> bytes:
    """A binary STL of `triangles` small triangles in a row (for size and time budgets)."""
    base = np.arange(triangles, dtype=np.float64)
    vertices = np.zeros((triangles * 3, 3))
    vertices[0::3, 0] = base
    vertices[1::3, 0] = base + 1
    vertices[2::3, 0] = base
    vertices[2::3, 1] = 1
    faces = np.arange(triangles * 3).reshape(-1, 3)
    return stl_binary(vertices, faces)


def ply_coloured() -> str:
    header = [
        "ply",
        "format ascii 1.0",
        f"element vertex {len(TETRA_VERTICES)}",
        "property float x",
        "property float y",
        "property float z",
        "property uchar red",
        "property uchar green",
        "property uchar blue",
        "property uchar alpha",
        f"element face {len(TETRA_FACES)}",
        "property list uchar int vertex_indices",
        "end_header",
    ]
    rows = [
        " ".join(str(v) for v in [*vertex, *colour])
        for vertex, colour in zip(TETRA_VERTICES, TETRA_COLOURS, strict=True)
    ]
    rows += [" ".join(str(v) for v in [3, *face]) for face in TETRA_FACES]
    return "\n".join(header + rows) + "\n"


def ply_points() -> str:
    header = [
        "ply",
        "format ascii 1.0",
        f"element vertex {len(TETRA_VERTICES)}",
        "property float x",
        "property float y",
        "property float z",
        "end_header",
    ]
    return "\n".join(header + [" ".join(map(str, v)) for v in TETRA_VERTICES]) + "\n"


def off_text() -> str:
    rows = ["OFF", f"{len(TETRA_VERTICES)} {len(TETRA_FACES)} 0"]
    rows += [" ".join(map(str, v)) for v in TETRA_VERTICES]
    rows += [" ".join(str(v) for v in [3, *face]) for face in TETRA_FACES]
    return "\n".join(rows) + "\n"


# --- FBX ------------------------------------------------------------------------------------

FBX_TRANSLATION = (1.0, 2.0, 3.0)
FBX_ROTATION_DEGREES = (0.0, 0.0, 90.0)
FBX_SCALE = (2.0, 2.0, 2.0)


def fbx_expected_matrix() -> np.ndarray:
    """The world matrix of the FBX's model node: translate, then rotate 90° about z, then
    scale (FBX's Lcl properties, no pivots)."""
    matrix = np.array([[0.0, -2, 0, 1], [2, 0, 0, 2], [0, 0, 2, 3], [0, 0, 0, 1]])
    return matrix


def fbx_ascii(texture: str = "fbx-atlas.png") -> str:
    """An ASCII FBX 7.4 scene: one model node "Panel" holding a quad with UVs, per-corner
    colours and a material "Paint" whose diffuse colour is a texture file `texture`."""
    return f"""\
; FBX 7.4.0 project file
FBXHeaderExtension:  {{
	FBXHeaderVersion: 1003
	FBXVersion: 7400
	Creator: "kiln tests"
}}
GlobalSettings:  {{
	Version: 1000
	Properties70:  {{
		P: "UpAxis", "int", "Integer", "",1
		P: "UpAxisSign", "int", "Integer", "",1
		P: "FrontAxis", "int", "Integer", "",2
		P: "FrontAxisSign", "int", "Integer", "",1
		P: "CoordAxis", "int", "Integer", "",0
		P: "CoordAxisSign", "int", "Integer", "",1
		P: "UnitScaleFactor", "double", "Number", "",1
	}}
}}
Objects:  {{
	Geometry: 1000, "Geometry::Quad", "Mesh" {{
		Vertices: *12 {{
			a: 0,0,0,1,0,0,1,1,0,0,1,0
		}}
		PolygonVertexIndex: *4 {{
			a: 0,1,2,-4
		}}
		GeometryVersion: 124
		LayerElementColor: 0 {{
			Version: 101
			Name: "colours"
			MappingInformationType: "ByPolygonVertex"
			ReferenceInformationType: "Direct"
			Colors: *16 {{
				a: 1,0,0,1,0,1,0,1,0,0,1,1,1,1,1,1
			}}
		}}
		LayerElementUV: 0 {{
			Version: 101
			Name: "uv"
			MappingInformationType: "ByPolygonVertex"
			ReferenceInformationType: "Direct"
			UV: *8 {{
				a: 0,0,1,0,1,1,0,1
			}}
		}}
		LayerElementMaterial: 0 {{
			Version: 101
			Name: ""
			MappingInformationType: "AllSame"
			ReferenceInformationType: "IndexToDirect"
			Materials: *1 {{
				a: 0
			}}
		}}
		Layer: 0 {{
			Version: 100
			LayerElement:  {{
				Type: "LayerElementColor"
				TypedIndex: 0
			}}
			LayerElement:  {{
				Type: "LayerElementMaterial"
				TypedIndex: 0
			}}
			LayerElement:  {{
				Type: "LayerElementUV"
				TypedIndex: 0
			}}
		}}
	}}
	Model: 2000, "Model::Panel", "Mesh" {{
		Version: 232
		Properties70:  {{
			P: "Lcl Translation", "Lcl Translation", "", "A",{",".join(map(str, FBX_TRANSLATION))}
			P: "Lcl Rotation", "Lcl Rotation", "", "A",{",".join(map(str, FBX_ROTATION_DEGREES))}
			P: "Lcl Scaling", "Lcl Scaling", "", "A",{",".join(map(str, FBX_SCALE))}
		}}
	}}
	Material: 3000, "Material::Paint", "" {{
		Version: 102
		ShadingModel: "phong"
		Properties70:  {{
			P: "DiffuseColor", "Color", "", "A",1,0,0
		}}
	}}
	Texture: 4000, "Texture::Atlas", "" {{
		Type: "TextureVideoClip"
		Version: 202
		TextureName: "Texture::Atlas"
		FileName: "{texture}"
		RelativeFilename: "{texture}"
	}}
}}
Connections:  {{
	C: "OO",2000,0
	C: "OO",1000,2000
	C: "OO",3000,2000
	C: "OP",4000,3000, "DiffuseColor"
}}
"""
