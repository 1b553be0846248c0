"""Scene import (untrusted uploads, parsed in a child process within budgets) and export, on
real files written by `tests/render/meshes.py`.

Each import starts a child process (~0.4 s, most of it importing trimesh), so uploads are
combined where a test allows it: the round trips all start from one upload of three model
files (OBJ + MTL + JPEG, GLB, PLY), imported once for the module.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import sys
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import trimesh

from services.render.scenes import importing
from services.render.scenes.exporting import export_scene
from services.render.scenes.formats import CLARA_ONLY, SUPPORTED, ExportRefused, check_export
from services.render.scenes.importing import ImportBudget, ImportedScene, parse_upload
from services.render.scenes.model import Placed, SceneEmpty, SceneFileInvalid, SceneTooLarge
from tests.render import meshes

BUDGET = ImportBudget()


async def upload(
    folder: Path, files: dict[str, bytes | str], budget: ImportBudget = BUDGET
) -> ImportedScene:
    return await parse_upload(folder, written(folder, files), budget)


def written(folder: Path, files: dict[str, bytes | str]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    return meshes.write_files(folder, files)


def by_name(scene: ImportedScene) -> dict[str, Placed]:
    return {placed.name: placed for placed in scene.placed}


def triangle_soup(placed: Sequence[Placed]) -> np.ndarray:
    """Every triangle of the scene in world coordinates, in a canonical order (corners sorted
    within each triangle, then triangles sorted), whatever the vertex sharing or order."""
    triangles = np.concatenate(
        [
            trimesh.transform_points(item.mesh.vertices, item.transform)[item.mesh.faces]
            for item in placed
        ]
    )
    keys = np.round(triangles, 4)
    corners = np.lexsort((keys[..., 2], keys[..., 1], keys[..., 0]), axis=-1)
    triangles = np.take_along_axis(triangles, corners[..., None], axis=1).reshape(-1, 9)
    keys = np.round(triangles, 4)
    return triangles[np.lexsort(keys.T[::-1])]


def base_colour_image(placed: Placed) -> object:
    material = placed.mesh.visual.material
    return getattr(material, "baseColorTexture", None) or getattr(material, "image", None)


def unpacked(exported_name: str, data: bytes) -> dict[str, bytes | str]:
    if not exported_name.endswith(".zip"):
        return {exported_name: data}
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


# --- importing, format by format ------------------------------------------------------------


async def test_obj_with_mtl_and_jpeg_atlas(tmp_path: Path) -> None:
    scene = await upload(tmp_path, meshes.zebra_files())

    assert scene.source_format == "obj"
    objects = by_name(scene)
    assert sorted(objects) == ["Body", "Tail"]
    assert len(objects["Body"].mesh.faces) == 2 and len(objects["Tail"].mesh.faces) == 1
    body = objects["Body"]
    assert isinstance(body.mesh.visual, trimesh.visual.TextureVisuals)
    image = base_colour_image(body)
    assert image is not None
    for uv, colour in meshes.QUADRANTS.items():
        sampled = trimesh.visual.uv_to_color(np.array([uv]), image)[0][:3]
        assert np.abs(sampled.astype(int) - colour).max() < 24, (uv, sampled, colour)
    # the upload's JPEG, kept as it was, and used by the body only
    assert [(t.name, t.mime_type) for t in scene.textures] == [("zebra-atlas.jpg", "image/jpeg")]
    assert scene.textures[0].data == meshes.zebra_files()["zebra-atlas.jpg"]
    uses = {placed.name: used for placed, used in zip(scene.placed, scene.texture_of, strict=True)}
    assert uses == {"Body": [0], "Tail": []}
    assert all(np.array_equal(placed.transform, np.eye(4)) for placed in scene.placed)


@pytest.mark.parametrize("form", ["gltf", "glb"])
async def test_gltf_node_transforms_kept_exactly(tmp_path: Path, form: str) -> None:
    files = meshes.gltf_files() if form == "gltf" else {"quad.glb": meshes.quad_glb()}
    scene = await upload(tmp_path, files)

    assert scene.source_format == form
    objects = by_name(scene)
    assert sorted(objects) == ["Moved", "Nested", "Plain"]
    direct = trimesh.load_scene(str(tmp_path / f"quad.{form}"), process=False)
    for name, expected in meshes.expected_node_matrices().items():
        # bit for bit what trimesh computes in-process, and the matrix glTF describes
        assert np.array_equal(objects[name].transform, direct.graph[name][0])
        np.testing.assert_allclose(objects[name].transform, expected, atol=1e-12)
        assert len(objects[name].mesh.faces) == 2
        np.testing.assert_allclose(objects[name].mesh.vertices, meshes.QUAD_POSITIONS)
    # one texture (the three nodes share the mesh), PNG bytes as uploaded
    assert len(scene.textures) == 1 and scene.textures[0].mime_type == "image/png"
    assert scene.texture_of == [[0], [0], [0]]
    # each Placed owns its mesh, even where the file instanced one
    assert len({id(placed.mesh) for placed in scene.placed}) == 3


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("tetra.stl", meshes.stl_ascii()),
        ("tetra-binary.stl", meshes.stl_binary()),
        ("tetra.off", meshes.off_text()),
    ],
)
async def test_stl_and_off(tmp_path: Path, name: str, data: str | bytes) -> None:
    scene = await upload(tmp_path, {name: data})

    assert scene.source_format == name.rsplit(".", 1)[1]
    [placed] = scene.placed
    assert placed.name in ("tetra", "tetra-binary")
    assert len(placed.mesh.faces) == 4
    corners = placed.mesh.vertices[placed.mesh.faces]
    np.testing.assert_allclose(corners, meshes.TETRA_VERTICES[meshes.TETRA_FACES], atol=1e-6)


async def test_ply_keeps_vertex_colours(tmp_path: Path) -> None:
    scene = await upload(tmp_path, {"tetra.ply": meshes.ply_coloured()})

    [placed] = scene.placed
    assert placed.mesh.visual.kind == "vertex"
    for vertex, colour in zip(placed.mesh.vertices, placed.mesh.visual.vertex_colors, strict=True):
        index = int(np.argmin(np.linalg.norm(meshes.TETRA_VERTICES - vertex, axis=1)))
        assert list(colour) == list(meshes.TETRA_COLOURS[index])


async def test_fbx_with_texture(tmp_path: Path) -> None:
    atlas = meshes.atlas("PNG")
    scene = await upload(tmp_path, {"panel.fbx": meshes.fbx_ascii(), "fbx-atlas.png": atlas})

    assert scene.source_format == "fbx"
    [placed] = scene.placed
    assert placed.name == "Panel"
    assert len(placed.mesh.faces) == 2
    # assimp composes the matrix in float32
    np.testing.assert_allclose(placed.transform, meshes.fbx_expected_matrix(), atol=1e-6)
    assert [(t.name, t.data) for t in scene.textures] == [("fbx-atlas.png", atlas)]
    image = base_colour_image(placed)
    assert image is not None and image.size == (64, 64)


async def test_several_model_files_all_imported_main_first(tmp_path: Path) -> None:
    files = {**meshes.zebra_files(), "quad.glb": meshes.quad_glb(), "notes.txt": "hello"}
    scene = await upload(tmp_path, files)

    assert scene.source_format == "glb"  # glb comes before obj
    names = [placed.name for placed in scene.placed]
    assert sorted(names) == ["Body", "Moved", "Nested", "Plain", "Tail"]
    assert set(names[:3]) == {"Moved", "Nested", "Plain"}
    assert len(scene.textures) == 2


# --- exporting, and reading the exports back ------------------------------------------------


@pytest_asyncio.fixture(scope="module")
async def mixed(tmp_path_factory: pytest.TempPathFactory) -> ImportedScene:
    """Textured OBJ parts, three GLB nodes with transforms, a vertex-coloured PLY."""
    files = {
        **meshes.zebra_files(),
        "quad.glb": meshes.quad_glb(),
        "tetra.ply": meshes.ply_coloured(),
    }
    return await upload(tmp_path_factory.mktemp("mixed"), files)


@pytest.mark.parametrize(
    ("extension", "zip_output", "members"),
    [
        ("obj", True, ["scene.obj", "scene.mtl", "scene-texture-0.png", "scene-texture-1.png"]),
        ("obj", False, ["scene.obj"]),
        ("glb", True, ["scene.glb"]),
        ("glb", False, ["scene.glb"]),
        ("gltf", True, ["scene.gltf", "scene.bin", "scene-texture-0.png", "scene-texture-1.png"]),
        ("gltf", False, ["scene.gltf"]),
        ("ply", True, ["scene.ply"]),
        ("ply", False, ["scene.ply"]),
        (
            "stl",
            True,
            ["Moved.stl", "Nested.stl", "Plain.stl", "Tail.stl", "Body.stl", "tetra.stl"],
        ),
    ],
)
async def test_round_trip(
    tmp_path: Path,
    mixed: ImportedScene,
    extension: str,
    zip_output: bool,
    members: list[str],
) -> None:
    exported = export_scene(mixed.placed, extension, zip_output=zip_output)
    files = unpacked(exported.name, exported.data)
    assert exported.name == ("scene.zip" if zip_output else f"scene.{extension}")
    assert sorted(files) == sorted(members)

    scene = await upload(tmp_path, files)

    before, after = triangle_soup(mixed.placed), triangle_soup(scene.placed)
    assert after.shape == before.shape == (13, 9)
    np.testing.assert_allclose(after, before, atol=1e-5)
    textured = extension in ("glb", "gltf") or (extension == "obj" and zip_output)
    assert (len(scene.textures) > 0) == textured
    if extension in ("glb", "gltf"):
        # nodes stay nodes, with their transforms (not baked into the vertices)
        moved = by_name(scene)["Moved"]
        np.testing.assert_allclose(
            moved.transform, meshes.expected_node_matrices()["Moved"], atol=1e-6
        )
        np.testing.assert_allclose(moved.mesh.vertices, meshes.QUAD_POSITIONS)
    if extension == "ply":
        [joined] = scene.placed
        assert joined.mesh.visual.kind == "vertex"
        assert {(255, 0, 0), (255, 255, 0)} <= {
            tuple(c[:3]) for c in joined.mesh.visual.vertex_colors
        }


def test_obj_without_zip_has_no_material_library(mixed: ImportedScene) -> None:
    text = export_scene(mixed.placed, "obj", zip_output=False).data.decode()
    assert "mtllib" not in text and "usemtl" not in text
    assert [line.split()[1] for line in text.splitlines() if line.startswith("o ")] == [
        placed.name for placed in mixed.placed
    ]


def test_zips_are_deterministic(mixed: ImportedScene) -> None:
    for extension in SUPPORTED:
        first = export_scene(mixed.placed, extension)
        second = export_scene(list(mixed.placed), extension)
        assert first.data == second.data, extension
        with zipfile.ZipFile(io.BytesIO(first.data)) as archive:
            assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
            assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_DEFLATED}


def test_center_moves_the_bounding_box_centre_to_the_origin(mixed: ImportedScene) -> None:
    def centre(center: bool) -> np.ndarray:
        exported = export_scene(mixed.placed, "ply", zip_output=False, center=center)
        mesh = trimesh.load(io.BytesIO(exported.data), file_type="ply", process=False)
        return np.asarray(mesh.bounds.mean(axis=0))

    assert np.abs(centre(False)).max() > 1  # the scene is not centred to begin with
    np.testing.assert_allclose(centre(True), 0, atol=1e-9)
    # the nodes of a GLB move with it
    exported = export_scene(mixed.placed, "glb", zip_output=False, center=True)
    scene = trimesh.load_scene(io.BytesIO(exported.data), file_type="glb")
    np.testing.assert_allclose(scene.bounds.mean(axis=0), 0, atol=1e-9)


def test_stl_names_are_made_safe_and_unique(mixed: ImportedScene) -> None:
    mesh = mixed.placed[0].mesh
    hostile = ["../../etc/passwd", "", "CON", "Body", "body", "a\nb", "/abs/x.stl"]
    placed = [Placed(name=name, mesh=mesh, transform=np.eye(4)) for name in hostile]
    exported = export_scene(placed, "stl")
    names = list(unpacked(exported.name, exported.data))
    assert names == [
        "etc_passwd.stl",
        "object.stl",
        "CON_.stl",
        "Body.stl",
        "body-2.stl",
        "a_b.stl",
        "abs_x.stl",  # not abs_x.stl.stl
    ]


def test_export_refusals(mixed: ImportedScene) -> None:
    with pytest.raises(ExportRefused, match="stl export is always zipped; zip=false"):
        check_export("stl", zip_output=False)
    with pytest.raises(ExportRefused, match="supported: obj, glb, gltf, stl, ply"):
        check_export("3ds", zip_output=True)
    for extension in CLARA_ONLY:
        with pytest.raises(ExportRefused, match="supported: obj, glb, gltf, stl, ply"):
            export_scene(mixed.placed, extension)
    check_export(".GLB", zip_output=False)  # as Clara writes it, too
    empty = Placed("empty", trimesh.Trimesh(), np.eye(4))
    with pytest.raises(SceneEmpty):
        export_scene([empty], "glb")


# --- hostile and over-budget uploads --------------------------------------------------------


@pytest.mark.parametrize("name", ["junk.obj", "junk.glb", "junk.stl", "junk.ply", "junk.fbx"])
async def test_garbage_refused(tmp_path: Path, name: str) -> None:
    garbage = bytes(range(256)) * 40
    with pytest.raises(SceneFileInvalid, match=name) as raised:
        await upload(tmp_path, {name: garbage})
    assert not isinstance(raised.value, SceneTooLarge)
    assert str(tmp_path) not in str(raised.value)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"cut.glb": meshes.quad_glb()[:300]}, "cut.glb is not a readable GLB file"),
        (
            {"bad.obj": "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n"},
            "bad.obj is not a readable OBJ file",
        ),
        (
            {"nan.obj": "v 0 0 0\nv nan 0 0\nv 0 1 0\nf 1 2 3\n"},
            "nan.obj has vertices that are not finite",
        ),
        ({"empty.obj": ""}, "empty.obj contains no triangles"),
        ({"points.ply": meshes.ply_points()}, "points.ply contains no triangles"),
        ({"zebra-atlas.jpg": meshes.atlas()}, r"no 3D model file; supported: \.glb, \.gltf"),
        ({"fake.fbx": meshes.ZEBRA_OBJ}, "fake.fbx is not an FBX file"),
    ],
)
async def test_broken_files_refused(
    tmp_path: Path, files: dict[str, bytes | str], message: str
) -> None:
    with pytest.raises(SceneFileInvalid, match=message) as raised:
        await upload(tmp_path, files)
    assert not isinstance(raised.value, SceneTooLarge)


async def test_mtl_texture_outside_the_folder_is_not_read(tmp_path: Path) -> None:
    secret = meshes.atlas("PNG")
    (tmp_path / "secret.png").write_bytes(secret)
    for reference in ["../secret.png", str(tmp_path / "secret.png"), "-s 1 1 1 ../secret.png"]:
        mtl = meshes.ZEBRA_MTL.replace("map_Kd zebra-atlas.jpg", f"map_Kd {reference}")
        folder = tmp_path / f"upload-{len(reference)}"
        scene = await upload(folder, meshes.zebra_files(mtl))
        # the model loads, without the texture
        assert sorted(by_name(scene)) == ["Body", "Tail"]
        assert scene.textures == [], reference


async def test_gltf_references_outside_the_folder_are_not_read(tmp_path: Path) -> None:
    document, binary = meshes.quad_gltf(buffer_uri="../quad.bin", image_uri="quad-atlas.png")
    (tmp_path / "quad.bin").write_bytes(binary)
    with pytest.raises(SceneFileInvalid, match=re.escape("quad.gltf is not a readable GLTF file")):
        await upload(tmp_path / "a", {"quad.gltf": json.dumps(document)})
    document["buffers"][0]["uri"] = "http://127.0.0.1:9/quad.bin"
    with pytest.raises(SceneFileInvalid, match=re.escape("quad.gltf is not a readable GLTF file")):
        await upload(tmp_path / "b", {"quad.gltf": json.dumps(document)})

    # an image path leading out is ignored; a data: URI buffer is read in place
    (tmp_path / "atlas.png").write_bytes(meshes.atlas("PNG"))
    document, binary = meshes.quad_gltf(buffer_uri="x", image_uri="../atlas.png")
    document["buffers"][0]["uri"] = "data:application/octet-stream;base64," + (
        base64.b64encode(binary).decode()
    )
    scene = await upload(tmp_path / "c", {"quad.gltf": json.dumps(document)})
    assert len(scene.placed) == 3 and scene.textures == []


async def test_fbx_texture_outside_the_folder_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "fbx-atlas.png").write_bytes(meshes.atlas("PNG"))
    scene = await upload(tmp_path / "up", {"panel.fbx": meshes.fbx_ascii("../fbx-atlas.png")})
    [placed] = scene.placed
    assert scene.textures == []
    assert placed.mesh.visual.kind == "vertex"  # the FBX's own corner colours instead


async def test_budgets_before_parsing(tmp_path: Path) -> None:
    files = meshes.zebra_files()
    with pytest.raises(
        SceneTooLarge,
        match=re.escape("zebra.obj is 245 bytes, over the 100 bytes budget of one file"),
    ):
        await upload(tmp_path / "a", files, ImportBudget(max_file_bytes=100))
    with pytest.raises(SceneTooLarge, match="budget of one import"):
        await upload(tmp_path / "b", files, ImportBudget(max_total_bytes=1000))
    with pytest.raises(SceneTooLarge, match="at most 2 files, this one has 3"):
        await upload(tmp_path / "c", files, ImportBudget(max_files=2))


async def test_budgets_after_loading(tmp_path: Path) -> None:
    stl = {"grid.stl": meshes.grid_stl(2000)}
    with pytest.raises(
        SceneTooLarge, match=re.escape("grid.stl has 2,000 triangles, over the budget of 1,000")
    ):
        await upload(tmp_path / "a", stl, ImportBudget(max_triangles=1000))
    # instances count once per node
    glb = {"quad.glb": meshes.quad_glb()}
    with pytest.raises(SceneTooLarge, match="6 triangles, over the budget of 5"):
        await upload(tmp_path / "b", glb, ImportBudget(max_triangles=5))
    with pytest.raises(SceneTooLarge, match="3 meshes, over the budget of 2 objects"):
        await upload(tmp_path / "c", glb, ImportBudget(max_objects=2))
    with pytest.raises(SceneTooLarge, match=re.escape("zebra-atlas.jpg is 64 x 64 pixels")):
        await upload(tmp_path / "d", meshes.zebra_files(), ImportBudget(max_texture_pixels=4000))


def child_processes() -> set[tuple[int, str]]:
    """(pid, state) of this process's children, zombies included."""
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():
            children.add((int(entry.name), fields[0]))
    return children


async def test_time_budget_kills_the_child(tmp_path: Path) -> None:
    before = child_processes()
    started = time.monotonic()
    with pytest.raises(SceneTooLarge, match=r"reading grid.stl took longer than 0.05 s"):
        await upload(
            tmp_path, {"grid.stl": meshes.grid_stl(100_000)}, ImportBudget(max_seconds=0.05)
        )
    assert time.monotonic() - started < 2
    assert child_processes() - before == set()  # killed and reaped: no zombie
    assert sorted(os.listdir(tmp_path)) == ["grid.stl"]  # the child's directory is gone


async def test_memory_budget(tmp_path: Path) -> None:
    budget = ImportBudget(max_memory_bytes=300 * 1024**2)
    with pytest.raises(SceneTooLarge, match="needs more than 300 MiB of memory"):
        await upload(tmp_path, {"grid.stl": meshes.grid_stl(200_000)}, budget)


@pytest.mark.parametrize(
    ("model", "refusal", "message"),
    [
        ("sigsegv.obj", SceneFileInvalid, "sigsegv.obj could not be read (the parser crashed)"),
        ("sigxcpu.obj", SceneTooLarge, "reading sigxcpu.obj took more than 120 s"),
    ],
)
async def test_child_dying_of_a_signal(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    model: str,
    refusal: type[Exception],
    message: str,
) -> None:
    # this module stands in for the child: it dies of the signal its model file names
    monkeypatch.setattr(importing, "_CHILD_MODULE", __name__)
    with pytest.raises(refusal) as raised:
        await upload(tmp_path, {model: meshes.ZEBRA_OBJ})
    assert str(raised.value) == message


if __name__ == "__main__":
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    request = json.loads(sys.argv[1])
    os.kill(os.getpid(), getattr(signal, Path(request["models"][0]).stem.upper()))
