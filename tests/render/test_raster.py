"""The scene rasterizer on real GL (moderngl on EGL: Mesa llvmpipe here), checked by its pixels.

Meshes come from trimesh (a cube, an icosphere, a hand-made quad with UVs) and textures from
PIL, so each test knows what must land where: the camera frames and centres the scene, a
texture's left stays left and its top stays top, colours and transforms count, and the same
scene gives the same bytes. One rasterizer (one GL context) serves the module.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import io
import math
from collections.abc import Iterator

import numpy as np
import pytest
import trimesh
from PIL import Image

from services.render.scenes import raster
from services.render.scenes.model import Placed, SceneEmpty
from services.render.scenes.raster import Camera, Rasterizer, RenderSettings

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
RED = (255, 0, 0)
BLUE = (0, 0, 255)
GREEN = (0, 255, 0)
YELLOW = (255, 255, 0)
TOLERANCE = 12
FRONT = Camera(azimuth=0.0, polar=math.pi / 2)
"""On +Z looking down -Z: +X is right, +Y is up in the image."""
GREY = round(0.8 * 255)
"""What an uncoloured mesh shows where it faces the camera."""


@pytest.fixture(scope="module")
def rasterizer() -> Iterator[Rasterizer]:
    with Rasterizer(max_pixels=2048 * 2048) as rasterizer:
        yield rasterizer


def placed(mesh: trimesh.Trimesh, transform: np.ndarray | None = None) -> Placed:
    return Placed("mesh", mesh, np.eye(4) if transform is None else transform)


def translation(x: float, y: float, z: float) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, 3] = (x, y, z)
    return matrix


def settings(
    camera: Camera | None = None,
    size: tuple[int, int] = (200, 200),
    background: tuple[int, int, int] = WHITE,
    image_format: str = "png",
) -> RenderSettings:
    return RenderSettings(
        size[0], size[1], image_format, camera=camera or Camera(), background=background
    )


def quad_geometry() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 2 x 2 square in the XY plane facing +Z; UV (0, 0) at its bottom left (-1, -1)."""
    vertices = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], dtype=np.float64)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float64)
    return vertices, faces, uv


def textured_quad(image: Image.Image, factor: tuple[int, ...] = (255, 255, 255, 255)) -> Placed:
    vertices, faces, uv = quad_geometry()
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=image, baseColorFactor=factor)
    mesh.visual = trimesh.visual.texture.TextureVisuals(uv=uv, material=material)
    return placed(mesh)


def halves(first: tuple[int, int, int], second: tuple[int, int, int], axis: int) -> Image.Image:
    """A 64 x 64 image: `first` on its left (axis 1) or top (axis 0) half, `second` on the
    other."""
    pixels = np.empty((64, 64, 3), dtype=np.uint8)
    if axis == 1:
        pixels[:, :32], pixels[:, 32:] = first, second
    else:
        pixels[:32], pixels[32:] = first, second
    return Image.fromarray(pixels, mode="RGB")


def covered(pixels: np.ndarray, background: tuple[int, int, int] = WHITE) -> np.ndarray:
    """Where something was drawn."""
    difference = np.abs(pixels.astype(np.int16) - np.array(background, dtype=np.int16))
    return np.asarray(difference.max(axis=2) > 8)


def at(pixels: np.ndarray, x: float, y: float) -> np.ndarray:
    """The pixel at a fraction of the width (from the left) and height (from the top)."""
    height, width = pixels.shape[:2]
    return np.asarray(pixels[int(y * height), int(x * width)], dtype=int)


def assert_colour(actual: np.ndarray, expected: tuple[int, int, int]) -> None:
    assert np.abs(actual - np.array(expected)).max() <= TOLERANCE, (actual, expected)


def box() -> Placed:
    return placed(trimesh.creation.box())


# --- framing -------------------------------------------------------------------------------------


def test_a_cube_fills_the_middle_and_leaves_the_corners(rasterizer: Rasterizer) -> None:
    pixels = rasterizer.render_pixels([box()], settings())
    assert pixels.shape == (200, 200, 3)
    assert pixels.dtype == np.uint8
    mask = covered(pixels)
    assert mask[95:105, 95:105].all()
    for corner in (pixels[:3, :3], pixels[:3, -3:], pixels[-3:, :3], pixels[-3:, -3:]):
        assert (corner == WHITE).all()
    # The bounding sphere fills ~95% of the frame; the cube's outline from above a corner is
    # a hexagon of about half the image.
    assert 0.35 < mask.mean() < 0.6


def test_a_scene_far_from_the_origin_is_centred(rasterizer: Rasterizer) -> None:
    pixels = rasterizer.render_pixels(
        [placed(trimesh.creation.box(), translation(100, 50, -30))], settings()
    )
    ys, xs = np.nonzero(covered(pixels))
    assert len(xs) > 0.3 * 200 * 200
    assert abs(xs.mean() / 200 - 0.5) < 0.03
    assert abs(ys.mean() / 200 - 0.5) < 0.03


def test_a_larger_bounding_radius_makes_the_model_smaller(rasterizer: Rasterizer) -> None:
    areas = [
        covered(rasterizer.render_pixels([box()], settings(Camera(bounding_radius=r)))).mean()
        for r in (None, 2.0, 4.0)
    ]
    assert areas[0] > areas[1] > areas[2] > 0
    # The silhouette's size goes as 1 / radius: twice the radius, a quarter of the area.
    assert 3.0 < areas[1] / areas[2] < 5.0


def test_objects_on_both_sides_are_both_framed(rasterizer: Rasterizer) -> None:
    scene = [
        placed(trimesh.creation.box(extents=(2, 2, 2)), translation(-5, 0, 0)),
        placed(trimesh.creation.icosphere(subdivisions=2), translation(5, 0, 0)),
    ]
    mask = covered(rasterizer.render_pixels(scene, settings(FRONT, size=(320, 160))))
    assert mask[:, :160].mean() > 0.01
    assert mask[:, 160:].mean() > 0.01
    # The gap between them stays empty, and nothing touches the image's border.
    assert not mask[:, 150:170].any()
    assert not mask[0].any() and not mask[-1].any()
    assert not mask[:, 0].any() and not mask[:, -1].any()


def test_a_wide_image_fits_the_scene_in_its_height_and_a_tall_one_in_its_width(
    rasterizer: Rasterizer,
) -> None:
    sphere = placed(trimesh.creation.icosphere(subdivisions=3))
    wide = covered(rasterizer.render_pixels([sphere], settings(FRONT, size=(300, 100))))
    tall = covered(rasterizer.render_pixels([sphere], settings(FRONT, size=(100, 300))))
    for mask in (wide, tall):
        rows, columns = np.nonzero(mask)
        span = min(np.ptp(rows), np.ptp(columns)) + 1
        assert 80 <= span <= 97, span
        assert not mask[0].any() and not mask[-1].any()
        assert not mask[:, 0].any() and not mask[:, -1].any()


def test_the_camera_straight_above_still_sees_the_scene(rasterizer: Rasterizer) -> None:
    for polar in (0.0, math.pi):
        mask = covered(rasterizer.render_pixels([box()], settings(Camera(polar=polar))))
        assert mask[95:105, 95:105].all()


def test_transforms_are_honoured(rasterizer: Rasterizer) -> None:
    fixed = Camera(azimuth=0.3, polar=1.2, bounding_radius=3.0)
    scale = np.diag([2.0, 2.0, 2.0, 1.0])
    one = covered(rasterizer.render_pixels([box()], settings(fixed))).mean()
    two = covered(
        rasterizer.render_pixels([placed(trimesh.creation.box(), scale)], settings(fixed))
    ).mean()
    assert 3.4 < two / one < 4.6
    # A rotation too: a box long in X, turned a quarter about +Y, is long across the image.
    long = trimesh.creation.box(extents=(4.0, 1.0, 1.0))
    turn = trimesh.transformations.rotation_matrix(math.pi / 2, (0, 1, 0))
    for transform, wider in ((np.eye(4), True), (turn, False)):
        mask = covered(
            rasterizer.render_pixels(
                [placed(long, transform)], settings(Camera(azimuth=0.0, polar=math.pi / 2))
            )
        )
        rows, columns = np.nonzero(mask)
        assert bool(np.ptp(columns) > 2 * np.ptp(rows)) is wider


# --- look ----------------------------------------------------------------------------------------


def test_a_texture_is_not_mirrored_left_to_right(rasterizer: Rasterizer) -> None:
    pixels = rasterizer.render_pixels(
        [textured_quad(halves(RED, BLUE, axis=1))], settings(FRONT, background=BLACK)
    )
    assert_colour(at(pixels, 0.35, 0.5), RED)
    assert_colour(at(pixels, 0.65, 0.5), BLUE)
    assert_colour(at(pixels, 0.02, 0.5), BLACK)


def test_a_texture_is_not_upside_down(rasterizer: Rasterizer) -> None:
    pixels = rasterizer.render_pixels(
        [textured_quad(halves(GREEN, YELLOW, axis=0))], settings(FRONT, background=BLACK)
    )
    assert_colour(at(pixels, 0.5, 0.35), GREEN)
    assert_colour(at(pixels, 0.5, 0.65), YELLOW)


def test_the_base_colour_factor_tints_the_texture(rasterizer: Rasterizer) -> None:
    white = Image.new("RGB", (8, 8), WHITE)
    pixels = rasterizer.render_pixels(
        [textured_quad(white, factor=(255, 128, 0, 255))], settings(FRONT, background=BLACK)
    )
    assert_colour(at(pixels, 0.5, 0.5), (255, 128, 0))


def test_a_simple_material_multiplies_its_diffuse_and_image(rasterizer: Rasterizer) -> None:
    vertices, faces, uv = quad_geometry()
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
    material = trimesh.visual.material.SimpleMaterial(
        image=halves(RED, BLUE, axis=1), diffuse=(255, 255, 255, 255)
    )
    mesh.visual = trimesh.visual.texture.TextureVisuals(uv=uv, material=material)
    pixels = rasterizer.render_pixels([placed(mesh)], settings(FRONT, background=BLACK))
    assert_colour(at(pixels, 0.35, 0.5), RED)
    assert_colour(at(pixels, 0.65, 0.5), BLUE)
    material.diffuse = (128, 128, 128, 255)
    darker = rasterizer.render_pixels([placed(mesh)], settings(FRONT, background=BLACK))
    assert_colour(at(darker, 0.35, 0.5), (128, 0, 0))


def test_vertex_colours_are_honoured(rasterizer: Rasterizer) -> None:
    vertices, faces, _ = quad_geometry()
    green = trimesh.Trimesh(
        vertices=vertices, faces=faces, vertex_colors=[(0, 200, 0, 255)] * 4, process=False
    )
    pixels = rasterizer.render_pixels([placed(green)], settings(FRONT, background=BLACK))
    assert_colour(at(pixels, 0.5, 0.5), (0, 200, 0))

    left_red_right_blue = [(*RED, 255), (*BLUE, 255), (*BLUE, 255), (*RED, 255)]
    mixed = trimesh.Trimesh(
        vertices=vertices, faces=faces, vertex_colors=left_red_right_blue, process=False
    )
    pixels = rasterizer.render_pixels([placed(mixed)], settings(FRONT, background=BLACK))
    left, middle, right = at(pixels, 0.25, 0.5), at(pixels, 0.5, 0.5), at(pixels, 0.75, 0.5)
    assert left[0] > 200 and left[2] < 55
    assert right[2] > 200 and right[0] < 55
    assert abs(int(middle[0]) - int(middle[2])) < 25


def test_face_colours_are_honoured(rasterizer: Rasterizer) -> None:
    vertices, faces, _ = quad_geometry()
    # Face 0 is the lower right triangle of the square, face 1 the upper left.
    mesh = trimesh.Trimesh(
        vertices=vertices, faces=faces, face_colors=[(*RED, 255), (*BLUE, 255)], process=False
    )
    pixels = rasterizer.render_pixels([placed(mesh)], settings(FRONT, background=BLACK))
    assert_colour(at(pixels, 0.62, 0.62), RED)
    assert_colour(at(pixels, 0.38, 0.38), BLUE)


def test_an_uncoloured_cube_is_shaded_flat_face_by_face(rasterizer: Rasterizer) -> None:
    # The cube shares its 8 corners among faces; their averaged normals would shade each face
    # as a gradient. Seen head-on, the front face must be one flat colour.
    pixels = rasterizer.render_pixels([box()], settings(FRONT, background=BLACK))
    front = pixels[80:120, 80:120].astype(int)
    assert np.abs(front - GREY).max() <= 2


def test_a_sphere_is_shaded_smoothly_and_lit_from_the_camera(rasterizer: Rasterizer) -> None:
    sphere = placed(trimesh.creation.icosphere(subdivisions=3))
    pixels = rasterizer.render_pixels([sphere], settings(FRONT, background=BLACK))
    centre = at(pixels, 0.5, 0.5)
    assert_colour(centre, (GREY, GREY, GREY))
    row = pixels[100, :, 0].astype(int)
    drawn = np.nonzero(row)[0]
    # Darker towards the rim; no step between neighbours (facets would make steps).
    assert row[drawn[0] + 3] < centre[0] - 40
    inner = row[drawn[0] + 3 : drawn[-1] - 3]
    assert np.abs(np.diff(inner)).max() <= 8


def test_the_background_colour_is_used(rasterizer: Rasterizer) -> None:
    pixels = rasterizer.render_pixels([box()], settings(background=(10, 20, 30)))
    assert (pixels[0, 0] == (10, 20, 30)).all()
    assert (pixels[-1, -1] == (10, 20, 30)).all()


def test_nearer_surfaces_hide_farther_ones(rasterizer: Rasterizer) -> None:
    near_red = trimesh.creation.box(extents=(1, 1, 0.1))
    near_red.visual.face_colors = (*RED, 255)
    far_blue = trimesh.creation.box(extents=(2, 2, 0.1))
    far_blue.visual.face_colors = (*BLUE, 255)
    scene = [placed(near_red, translation(0, 0, 1)), placed(far_blue, translation(0, 0, -1))]
    for order in (scene, scene[::-1]):
        pixels = rasterizer.render_pixels(order, settings(FRONT, background=BLACK))
        assert_colour(at(pixels, 0.5, 0.5), RED)


def test_msaa_smooths_edges_and_can_be_turned_off(rasterizer: Rasterizer) -> None:
    white = trimesh.creation.box()
    white.visual.face_colors = (255, 255, 255, 255)
    scene = [placed(white, trimesh.transformations.rotation_matrix(0.3, (0, 0, 1)))]
    smooth = rasterizer.render_pixels(scene, settings(FRONT, background=BLACK))
    with Rasterizer(samples=0) as aliased_rasterizer:
        aliased = aliased_rasterizer.render_pixels(scene, settings(FRONT, background=BLACK))
    # A flat white face on black: without MSAA every pixel is one or the other.
    assert set(np.unique(aliased)) == {0, 255}
    in_between = (smooth > 20) & (smooth < 235)
    assert in_between.any(axis=2).sum() > 100


# --- determinism and output ----------------------------------------------------------------------


def textured_scene() -> list[Placed]:
    rng = np.random.default_rng(7)
    noise = Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8), mode="RGB")
    sphere = trimesh.creation.icosphere(subdivisions=3)
    uv = np.stack([np.arctan2(sphere.vertices[:, 0], sphere.vertices[:, 2]), sphere.vertices[:, 1]])
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=noise)
    sphere.visual = trimesh.visual.texture.TextureVisuals(uv=uv.T, material=material)
    return [placed(sphere), placed(trimesh.creation.box(), translation(1.5, 0.2, 0))]


def test_the_same_scene_gives_the_same_bytes(rasterizer: Rasterizer) -> None:
    scene = textured_scene()
    first = rasterizer.render_pixels(scene, settings())
    second = rasterizer.render_pixels(scene, settings())
    assert first.tobytes() == second.tobytes()
    assert rasterizer.render(scene, settings()) == rasterizer.render(scene, settings())


def test_png_holds_exactly_the_rendered_pixels(rasterizer: Rasterizer) -> None:
    scene = textured_scene()
    data = rasterizer.render(scene, settings(size=(160, 90)))
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert decoded.shape == (90, 160, 3)
    assert np.array_equal(decoded, rasterizer.render_pixels(scene, settings(size=(160, 90))))


def test_jpeg_output_has_the_asked_size(rasterizer: Rasterizer) -> None:
    data = rasterizer.render([box()], settings(size=(120, 70), image_format="jpeg"))
    assert data[:2] == b"\xff\xd8"
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        assert image.size == (120, 70)


async def test_render_async_gives_the_same_image(rasterizer: Rasterizer) -> None:
    scene = [box()]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        data = await rasterizer.render_async(scene, settings())
    finally:
        task.cancel()
    assert data == rasterizer.render(scene, settings())
    # The loop kept running while the image was made.
    assert ticks > 1


def test_renders_from_many_threads_queue_on_the_gl_thread(rasterizer: Rasterizer) -> None:
    scene = textured_scene()
    expected = rasterizer.render_pixels(scene, settings()).tobytes()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(lambda _: rasterizer.render_pixels(scene, settings()).tobytes(), range(8))
        )
    assert all(result == expected for result in results)


def test_repeated_renders_release_their_gl_objects(rasterizer: Rasterizer) -> None:
    scene = textured_scene()
    sizes = [(64, 64), (80, 60)]
    for index in range(20):
        rasterizer.render_pixels(scene, settings(size=sizes[index % 2]))
    assert rasterizer.leaked_objects == 0


def test_a_gl_object_a_render_drops_is_found_and_released(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What makes the test above able to fail: a draw that forgets a buffer is counted.
    draw = raster._GL.draw

    def leaky_draw(gl: raster._GL, prepared: raster.PreparedScene, samples: int) -> np.ndarray:
        gl.ctx.buffer(reserve=64)
        return draw(gl, prepared, samples)

    with Rasterizer() as leaky:
        leaky.render_pixels([box()], settings(size=(16, 16)))
        monkeypatch.setattr(raster._GL, "draw", leaky_draw)
        leaky.render_pixels([box()], settings(size=(16, 16)))
        leaky.render_pixels([box()], settings(size=(16, 16)))
        assert leaky.leaked_objects == 2


def test_large_framebuffers_are_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raster, "KEEP_TARGETS_PIXELS", 32 * 32)
    with Rasterizer() as small_keeper:
        small_keeper.render_pixels([box()], settings(size=(32, 32)))
        assert small_keeper._gl is not None and small_keeper._gl.targets is not None
        small_keeper.render_pixels([box()], settings(size=(33, 32)))
        assert small_keeper._gl.targets is None


def test_info_names_the_gl_implementation(rasterizer: Rasterizer) -> None:
    info = rasterizer.info()
    assert info["GL_RENDERER"]
    assert info["GL_VERSION"]


# --- errors --------------------------------------------------------------------------------------


def test_an_empty_scene_is_refused(rasterizer: Rasterizer) -> None:
    with pytest.raises(SceneEmpty):
        rasterizer.render_pixels([], settings())
    no_triangles = trimesh.Trimesh(vertices=np.zeros((3, 3)), faces=np.zeros((0, 3), dtype=int))
    with pytest.raises(SceneEmpty):
        rasterizer.render([placed(no_triangles)], settings())


@pytest.mark.parametrize(
    ("width", "height", "image_format"),
    [(0, 100, "png"), (100, 0, "png"), (-5, 100, "jpeg"), (100, 100, "gif")],
)
def test_bad_settings_are_refused(width: int, height: int, image_format: str) -> None:
    with pytest.raises(ValueError):
        RenderSettings(width, height, image_format)


def test_too_many_pixels_are_refused(rasterizer: Rasterizer) -> None:
    with pytest.raises(ValueError, match="pixels"):
        rasterizer.render_pixels([box()], settings(size=(4096, 4096)))
    # The limit is the rasterizer's own.
    rasterizer.render_pixels([box()], settings(size=(2048, 1)))


def test_a_closed_rasterizer_refuses_work() -> None:
    closed = Rasterizer()
    closed.render_pixels([box()], settings(size=(8, 8)))
    closed.close()
    closed.close()
    with pytest.raises(RuntimeError):
        closed.render_pixels([box()], settings(size=(8, 8)))


# --- what is kept between renders --------------------------------------------------------------


def counting_uploads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    uploads: list[int] = []
    upload = raster._upload_texture

    def counted(ctx: object, pixels: np.ndarray) -> object:
        uploads.append(id(pixels))
        return upload(ctx, pixels)  # type: ignore[arg-type]

    monkeypatch.setattr(raster, "_upload_texture", counted)
    return uploads


def test_a_texture_is_uploaded_once_while_its_image_lives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uploads = counting_uploads(monkeypatch)
    quad = textured_quad(halves(RED, BLUE, axis=1))
    with Rasterizer() as keeper:
        first = keeper.render_pixels([quad], settings(FRONT))
        again = keeper.render_pixels([quad], settings(FRONT, size=(120, 80)))
        assert len(uploads) == 1
        assert keeper.resident_textures == (1, 64 * 64 * 4 * 4 // 3)
        assert_colour(at(first, 0.35, 0.5), RED)
        assert_colour(at(again, 0.65, 0.5), BLUE)
        # The image gone (its mesh dropped), the texture is released at the next render.
        del quad, first, again
        gc.collect()  # trimesh's visuals and meshes refer to each other
        keeper.render_pixels([box()], settings(size=(16, 16)))
        assert keeper.resident_textures == (0, 0)
        assert keeper.leaked_objects == 0


def test_textures_beyond_the_budget_are_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    uploads = counting_uploads(monkeypatch)
    one_texture = 64 * 64 * 4 * 4 // 3
    red, blue = textured_quad(halves(RED, RED, 1)), textured_quad(halves(BLUE, BLUE, 1))
    with Rasterizer(texture_cache_bytes=one_texture) as keeper:
        assert_colour(at(keeper.render_pixels([red], settings(FRONT)), 0.5, 0.5), RED)
        assert_colour(at(keeper.render_pixels([blue], settings(FRONT)), 0.5, 0.5), BLUE)
        assert keeper.resident_textures == (1, one_texture)  # blue replaced red
        assert_colour(at(keeper.render_pixels([blue], settings(FRONT)), 0.5, 0.5), BLUE)
        assert len(uploads) == 2
        assert keeper.leaked_objects == 0
    with Rasterizer(texture_cache_bytes=0) as forgetful:
        forgetful.render_pixels([red], settings(FRONT))
        forgetful.render_pixels([red], settings(FRONT))
        assert forgetful.resident_textures == (0, 0)
        assert len(uploads) == 4
        assert forgetful.leaked_objects == 0


def test_frozen_scenes_reuse_their_geometry(monkeypatch: pytest.MonkeyPatch) -> None:
    prepared: list[int] = []
    geometry = raster.scene_geometry

    def counted(items: list[Placed]) -> raster.SceneGeometry:
        prepared.append(len(items))
        return geometry(items)

    monkeypatch.setattr(raster, "scene_geometry", counted)
    mesh = trimesh.creation.box()
    with Rasterizer() as keeper:
        uncached = keeper.render_pixels([placed(mesh)], settings())
        keeper.render_pixels([placed(mesh)], settings())
        assert len(prepared) == 2 and len(keeper.geometry_cache) == 0  # not frozen: no reuse
        first = keeper.render_pixels([placed(mesh)], settings(), frozen=True)
        second = keeper.render_pixels([placed(mesh)], settings(), frozen=True)
        assert len(prepared) == 3
        assert np.array_equal(first, uncached) and np.array_equal(second, uncached)
        # Another transform is another scene: prepared again, and drawn where it now stands.
        moved = keeper.render_pixels(
            [placed(mesh), placed(mesh, translation(3, 0, 0))], settings(FRONT), frozen=True
        )
        assert len(prepared) == 4 and len(keeper.geometry_cache) == 2
        assert covered(moved)[:, :60].any() and covered(moved)[:, -60:].any()
        # A new mesh object never matches an old entry, even with equal geometry.
        keeper.render_pixels([placed(trimesh.creation.box())], settings(), frozen=True)
        assert len(prepared) == 5


def test_the_geometry_budget_evicts_the_least_recent() -> None:
    small, large = trimesh.creation.box(), trimesh.creation.icosphere(subdivisions=3)
    budget = raster.scene_geometry([placed(large)]).nbytes
    cache = raster.GeometryCache(budget)
    cache.geometry([placed(small)])
    assert len(cache) == 1
    cache.geometry([placed(large)])  # pushes the box out: both do not fit
    assert len(cache) == 1 and cache.held_bytes == budget
    too_big = raster.GeometryCache(budget - 1)
    assert too_big.geometry([placed(large)]).nbytes == budget  # prepared, not kept
    assert len(too_big) == 0 and too_big.held_bytes == 0


def test_geometry_of_meshes_that_are_gone_is_dropped_at_the_next_use() -> None:
    cache = raster.GeometryCache(1 << 30)
    kept, dropped = trimesh.creation.box(), trimesh.creation.icosphere()
    cache.geometry([placed(kept)])
    cache.geometry([placed(dropped)])
    assert len(cache) == 2
    del dropped
    gc.collect()
    cache.geometry([placed(kept)])  # a hit: nothing new is stored, the dead entry still goes
    assert len(cache) == 1
    assert cache.held_bytes == raster.scene_geometry([placed(kept)]).nbytes
