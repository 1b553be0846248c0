"""The image pipeline on real encoded images, checked pixel by pixel.

The images are synthesized in `tests/render/images.py` (no downloads): gradients, an object on
a plain or textured background for segmentation, a number plate drawn with OpenCV, crafted
headers. Each test states what the pixels must show.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any

import cv2
import numpy as np
import pytest
import pyvips

from services.render.imaging import _codec, _ops
from services.render.imaging import request as contract
from services.render.imaging.pipeline import (
    EditedImage,
    EditLimits,
    ImageObject,
    edit_image,
    probe_image,
)
from services.render.imaging.request import EditRequestInvalid
from services.runtime.errors import ImageInvalid
from tests.render.images import (
    bmp,
    bmp_claiming,
    encode,
    gradient,
    noisy,
    object_on_plain,
    object_on_texture,
    pages,
    plate_scene,
    png_claiming,
)

LIMITS = EditLimits()


def edit(
    data: bytes, operations: dict[str, Any], output: Any = None, limits: EditLimits = LIMITS
) -> EditedImage:
    """`edit_image` on the normalized form of a request, as the service calls it."""
    body: dict[str, Any] = {"input": "https://images.example/in.jpg", "operations": operations}
    if isinstance(output, str):
        output = {"format": output}  # a bare string would be a destination
    if output is not None:
        body["output"] = output
    return edit_image(data, contract.validate_edit_request(body), limits)


def decoded(result: EditedImage) -> pyvips.Image:
    return pyvips.Image.new_from_buffer(result.data, "")


def pixels(result: EditedImage) -> np.ndarray:
    return np.asarray(decoded(result).numpy())


def detail(array: np.ndarray) -> float:
    """High-frequency energy: the variance of the Laplacian of the grey image."""
    grey = cv2.cvtColor(np.ascontiguousarray(array[:, :, :3]), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


# --- resizing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resizing", "size"),
    [
        ({}, (400, 300)),  # no width or height: unchanged
        ({"width": 200}, (200, 300)),  # crop, one side: the other side stays, cropped
        ({"height": 100}, (400, 100)),
        ({"width": 1000}, (1000, 300)),  # grows to cover 1000 x 300, then crops
        ({"width": 200, "height": 200}, (200, 200)),  # crop, both: cover then crop
        ({"width": "50%", "height": "50%"}, (200, 150)),
        ({"width": "200%"}, (800, 300)),  # crop keeps the height
        ({"width": 20_000, "height": 2}, (20_000, 2)),  # cropped before it grows
        ({"width": 200, "fit": "bounds"}, (200, 150)),  # other fits: the other side follows
        ({"height": 150, "fit": "cover"}, (200, 150)),
        ({"width": 200, "fit": "canvas"}, (200, 150)),
        ({"width": 200, "height": 200, "fit": "bounds"}, (200, 150)),
        ({"width": 200, "height": 200, "fit": "cover"}, (267, 200)),
        ({"width": 500, "height": 500, "fit": "canvas"}, (500, 500)),
        ({"width": "200%", "height": "auto", "fit": "bounds"}, (800, 600)),
        ({"width": 200, "height": 200, "fit": {"type": "crop", "crop": "smart"}}, (200, 200)),
    ],
)
def test_every_fit_gives_the_documented_size(
    resizing: dict[str, Any], size: tuple[int, int]
) -> None:
    result = edit(encode(gradient()), {"resizing": resizing} if resizing else {})
    assert (result.output.width, result.output.height) == size
    image = decoded(result)
    assert (image.width, image.height) == size


def test_crop_keeps_the_centre_and_bounds_never_stretches() -> None:
    source = gradient()
    cropped = pixels(edit(encode(source, ".png"), {"resizing": {"width": 200}}, "png"))
    # The centre crop of a horizontal red ramp starts a quarter of the way in (red ~64).
    assert 55 < int(cropped[150, 0, 0]) < 75
    bounded = decoded(
        edit(encode(source), {"resizing": {"width": 100, "height": 300, "fit": "bounds"}})
    )
    assert bounded.width / bounded.height == pytest.approx(400 / 300, rel=0.02)


def test_smart_crop_keeps_the_interesting_part() -> None:
    array = np.full((300, 400, 3), 128, np.uint8)
    cv2.circle(array, (60, 150), 40, (255, 0, 0), -1)  # the only thing to look at, far left
    data = encode(pyvips.Image.new_from_array(array, interpretation="srgb"), ".png")
    crop = {"width": 150, "height": 300, "fit": {"type": "crop", "crop": "smart"}}
    smart = pixels(edit(data, {"resizing": crop}, "png"))
    centre = pixels(edit(data, {"resizing": {"width": 150, "height": 300}}, "png"))
    assert (smart[:, :, 0] > 200).sum() > 3000  # the red disc is in the smart crop
    assert (centre[:, :, 0] > 200).sum() == 0  # and not in the centre crop


def test_canvas_fills_with_the_background_colour() -> None:
    result = edit(
        encode(gradient()),
        {
            "resizing": {"width": 500, "height": 500, "fit": "canvas"},
            "background": {"color": "#00ff00"},
        },
        "png",
    )
    array = pixels(result)
    assert array.shape == (500, 500, 3)
    assert tuple(array[0, 0]) == (0, 255, 0) and tuple(array[499, 499]) == (0, 255, 0)
    assert tuple(array[250, 250]) != (0, 255, 0)


def test_canvas_is_white_by_default_and_transparent_for_alpha_inputs() -> None:
    canvas = {"resizing": {"width": 500, "height": 500, "fit": "canvas"}}
    white = pixels(edit(encode(gradient()), canvas, "png"))
    assert white.shape == (500, 500, 3) and tuple(white[0, 0]) == (255, 255, 255)
    rgba = gradient().bandjoin(255).copy(interpretation="srgb")
    array = pixels(edit(encode(rgba, ".png"), canvas, "png"))
    assert array.shape[2] == 4
    assert array[0, 0, 3] == 0 and array[250, 250, 3] == 255
    # JPEG cannot be transparent: the canvas of the same input is white there.
    flat = pixels(edit(encode(rgba, ".png"), canvas, "jpeg")).astype(int)
    assert flat.shape[2] == 3 and flat[2, 2].min() > 245


def test_upscale_names_all_grow_the_image_and_sharpen() -> None:
    data = encode(object_on_plain(200, 150), ".png")
    grow = {"width": 400, "fit": "bounds"}
    plain = pixels(edit(data, {"resizing": grow}, "png"))
    for upscale in ("smart_enhance", "smart_resize", "faces", "digital_art", "photo"):
        result = edit(data, {"restorations": {"upscale": upscale}, "resizing": grow}, "png")
        assert (result.output.width, result.output.height) == (400, 300), upscale
    enhanced = pixels(
        edit(data, {"restorations": {"upscale": "smart_enhance"}, "resizing": grow}, "png")
    )
    assert detail(enhanced) > detail(plain) * 1.1
    versioned = {"type": "photo", "version": "3"}
    photo = edit(data, {"restorations": {"upscale": versioned}, "resizing": grow}, "png")
    assert photo.output.width == 400


def test_upscale_without_growth_changes_nothing() -> None:
    data = encode(gradient(), ".png")
    same = pixels(edit(data, {"restorations": {"upscale": "smart_enhance"}}, "png"))
    assert np.array_equal(same, np.asarray(gradient().numpy()))


def test_exif_orientation_is_applied_before_resizing() -> None:
    rotated = gradient(400, 300).copy()
    rotated.set_type(pyvips.GValue.gint_type, "orientation", 6)
    data = bytes(rotated.jpegsave_buffer(keep="all"))
    result = edit(data, {})
    assert (result.input.width, result.input.height) == (300, 400)
    out = decoded(result)
    assert (out.width, out.height) == (300, 400)
    assert "orientation" not in out.get_fields() or out.get("orientation") == 1
    # Orientation 6 turns the image clockwise: the left column (red 0) becomes the top row.
    top = pixels(edit(data, {"resizing": {"width": 150, "fit": "bounds"}}, "png"))
    assert top.shape == (200, 150, 3)
    assert top[0, :, 0].mean() < 30 and top[-1, :, 0].mean() > 220


# --- restorations ---------------------------------------------------------------------------


def test_jpeg_quality_is_estimated_from_the_quantization_table() -> None:
    for quality in (20, 50, 75, 95):
        data = encode(gradient(), ".jpg", Q=quality)
        assert _codec.jpeg_quality(data) == pytest.approx(quality, abs=2)
    assert _codec.jpeg_quality(encode(gradient(), ".png")) is None


def test_decompress_auto_depends_on_the_input() -> None:
    assert _ops.decompress_level("auto", "JPEG", 30) == "strong"
    assert _ops.decompress_level("auto", "JPEG", 90) == "moderate"
    assert _ops.decompress_level("auto", "PNG", None) is None
    assert _ops.decompress_level("moderate", "PNG", None) == "moderate"
    assert _ops.decompress_level(None, "JPEG", 10) is None
    png = encode(gradient(), ".png")
    assert np.array_equal(
        pixels(edit(png, {"restorations": {"decompress": "auto"}}, "png")),
        pixels(edit(png, {}, "png")),
    )


def test_decompress_smooths_jpeg_blocks_and_polish_removes_noise() -> None:
    blocky = encode(object_on_plain(), ".jpg", Q=8)
    plain = detail(pixels(edit(blocky, {}, "png")))
    moderate = detail(pixels(edit(blocky, {"restorations": {"decompress": "moderate"}}, "png")))
    strong = detail(pixels(edit(blocky, {"restorations": {"decompress": "strong"}}, "png")))
    assert strong < moderate < plain
    auto = detail(pixels(edit(blocky, {"restorations": {"decompress": "auto"}}, "png")))
    assert auto == pytest.approx(strong)  # quality 8 is low: auto works as strong
    # Polish: grain (sigma 18 over a clean gradient) goes down, soft edges get crisper.
    clean = np.asarray(gradient().numpy()).astype(float)
    grainy = np.asarray(noisy().numpy()).astype(float)
    polished = pixels(
        edit(encode(noisy(), ".png"), {"restorations": {"polish": True}}, "png")
    ).astype(float)
    assert np.abs(polished - clean).mean() < np.abs(grainy - clean).mean() * 0.9
    soft = encode(object_on_plain().gaussblur(1.5).cast("uchar"), ".png")
    crisp = pixels(edit(soft, {"restorations": {"polish": True}}, "png"))
    assert detail(crisp) > detail(pixels(edit(soft, {}, "png"))) * 1.3


def test_decompress_before_growth_keeps_working() -> None:
    blocky = encode(object_on_plain(200, 150), ".jpg", Q=10)
    result = edit(
        blocky,
        {
            "restorations": {"decompress": "strong", "upscale": "photo", "polish": True},
            "resizing": {"width": 400, "fit": "bounds"},
        },
        "png",
    )
    assert (result.output.width, result.output.height) == (400, 300)


# --- adjustments ----------------------------------------------------------------------------


def test_adjustments_shift_colours_as_asked() -> None:
    data = encode(gradient(), ".png")
    original = pixels(edit(data, {}, "png")).astype(float)
    grey = pixels(edit(data, {"adjustments": {"saturation": -100}}, "png")).astype(float)
    assert np.abs(grey[:, :, 0] - grey[:, :, 1]).max() <= 3
    assert np.abs(grey[:, :, 1] - grey[:, :, 2]).max() <= 3
    vivid = pixels(edit(data, {"adjustments": {"saturation": 60}}, "png")).astype(float)
    assert vivid.std(axis=2).mean() > original.std(axis=2).mean() * 1.2
    brighter = pixels(edit(data, {"adjustments": {"exposure": 60}}, "png")).astype(float)
    darker = pixels(edit(data, {"adjustments": {"exposure": -60}}, "png")).astype(float)
    assert brighter.mean() > original.mean() + 20 > darker.mean() + 40

    def lightness_spread(operations: dict[str, Any]) -> float:
        grey = cv2.cvtColor(pixels(edit(data, operations, "png")), cv2.COLOR_RGB2GRAY)
        return float(grey.astype(float).std())

    plain = lightness_spread({})
    assert lightness_spread({"adjustments": {"contrast": -80}}) < plain * 0.5
    assert lightness_spread({"adjustments": {"contrast": 60}}) > plain * 1.2
    zeros = {"hdr": 0, "exposure": 0, "saturation": 0, "contrast": 0, "sharpness": 0}
    assert np.array_equal(original, pixels(edit(data, {"adjustments": zeros}, "png")))


def test_sharpness_and_hdr_raise_local_contrast() -> None:
    soft = encode(object_on_plain().gaussblur(2).cast("uchar"), ".png")
    base = detail(pixels(edit(soft, {}, "png")))
    assert detail(pixels(edit(soft, {"adjustments": {"sharpness": 100}}, "png"))) > base * 1.5
    assert detail(pixels(edit(soft, {"adjustments": {"sharpness": 20}}, "png"))) > base
    # A dull, low-contrast scene: HDR spreads its lightness locally, more with intensity.
    dull = encode((gradient() * 0.2 + 100).cast("uchar").copy(interpretation="srgb"), ".png")

    def spread(operations: dict[str, Any]) -> float:
        array = pixels(edit(dull, operations, "png"))
        return float(cv2.cvtColor(array, cv2.COLOR_RGB2GRAY).astype(float).std())

    flat = spread({})
    half = spread({"adjustments": {"hdr": 50}})
    full = spread({"adjustments": {"hdr": {"intensity": 100, "stitching": True}}})
    assert flat < half < full


def test_adjustments_leave_alpha_alone() -> None:
    rgba = gradient().bandjoin(pyvips.Image.xyz(400, 300)[0] * 0.6).cast("uchar")
    data = encode(rgba.copy(interpretation="srgb"), ".png")
    result = pixels(edit(data, {"adjustments": {"saturation": -100, "exposure": 30}}, "png"))
    assert result.shape[2] == 4
    assert np.array_equal(result[:, :, 3], np.asarray(rgba.numpy())[:, :, 3])


# --- background -----------------------------------------------------------------------------


def test_remove_makes_the_background_transparent_and_keeps_the_object() -> None:
    result = edit(encode(object_on_plain(), ".png"), {"background": {"remove": True}}, "png")
    array = pixels(result)
    assert array.shape == (300, 400, 4)
    assert array[150, 200, 3] > 200  # the disc's centre is opaque
    assert array[5, 5, 3] < 30 and array[290, 390, 3] < 30  # corners are gone
    assert array[150, 40, 3] < 30  # so is the background beside the disc
    for kind in ("webp", "avif", "tiff"):
        image = decoded(
            edit(encode(object_on_plain(), ".png"), {"background": {"remove": True}}, kind)
        )
        assert image.hasalpha(), kind


def test_remove_fills_with_a_colour_or_white_and_clips() -> None:
    data = encode(object_on_plain(), ".png")
    coloured = pixels(
        edit(data, {"background": {"remove": True, "color": "#0000ff"}}, "jpeg")
    ).astype(int)
    corner = coloured[5, 5]
    assert corner[2] > 200 and corner[0] < 60 and corner[1] < 60
    white = pixels(edit(data, {"background": {"remove": True}}, "jpeg")).astype(int)
    assert white.shape[2] == 3 and white[5, 5].min() > 245
    assert white[150, 200, 0] > 150 and white[150, 200, 1] < 120  # the red disc stays
    clipped = edit(data, {"background": {"remove": {"clipping": True}}}, "png")
    # The disc has a radius of 75 px: clipping leaves about its 150 px box.
    assert 130 <= clipped.output.width <= 175 and 130 <= clipped.output.height <= 175


def test_remove_categories_and_original_alpha() -> None:
    data = encode(object_on_plain(), ".png")
    for category in ("cars", "products"):
        array = pixels(edit(data, {"background": {"remove": {"category": category}}}, "png"))
        assert array[150, 200, 3] > 200 and array[5, 5, 3] < 30, category
    # With use_original_alpha, the input's alpha is the mask: no segmentation at all.
    alpha = (pyvips.Image.xyz(400, 300)[0] < 200).ifthenelse(255, 0).cast("uchar")
    rgba = gradient().bandjoin(alpha).copy(interpretation="srgb")
    result = pixels(
        edit(
            encode(rgba, ".png"),
            {"background": {"remove": True, "use_original_alpha": True}},
            "png",
        )
    )
    assert np.array_equal(result[:, :, 3], np.asarray(alpha.numpy()))


def test_segmentation_is_repeatable() -> None:
    data = encode(object_on_plain(), ".png")
    first = edit(data, {"background": {"remove": True}}, "png").data
    assert edit(data, {"background": {"remove": True}}, "png").data == first


def test_a_colour_alone_fills_transparent_areas() -> None:
    alpha = (pyvips.Image.xyz(400, 300)[0] < 200).ifthenelse(255, 0).cast("uchar")
    rgba = gradient().bandjoin(alpha).copy(interpretation="srgb")
    array = pixels(edit(encode(rgba, ".png"), {"background": {"color": "#ff0000"}}, "png"))
    assert array.shape[2] == 3
    assert tuple(array[150, 300]) == (255, 0, 0)  # was transparent
    assert tuple(array[150, 100]) != (255, 0, 0)  # was opaque: the gradient


def test_transparent_colour_without_alpha_output_is_refused_by_the_contract() -> None:
    with pytest.raises(EditRequestInvalid):
        edit(encode(gradient()), {"background": {"color": "transparent"}}, "jpeg")


def test_background_blur_softens_only_the_background() -> None:
    source = object_on_texture()
    data = encode(source, ".png")
    before = np.asarray(source.numpy())
    centre = (slice(120, 180), slice(170, 230))  # inside the disc (radius 75)
    corner = (slice(0, 60), slice(0, 80))  # background
    energies = {}
    for name, blur in (
        ("default", True),
        ("low", {"level": "low"}),
        ("high", {"level": "high"}),
        ("lens", {"type": "lens", "level": "medium"}),
    ):
        after = pixels(edit(data, {"background": {"blur": blur}}, "png"))
        assert after.shape == (300, 400, 3)
        assert detail(after[centre]) > 0.7 * detail(before[centre]), name
        energies[name] = detail(after[corner])
        assert energies[name] < 0.2 * detail(before[corner]), name
    assert energies["high"] < energies["low"]


# --- padding --------------------------------------------------------------------------------


def test_padding_keeps_the_size_and_fills_the_margins() -> None:
    result = edit(
        encode(gradient(), ".png"),
        {"padding": "10%", "background": {"color": "#ff00ff"}},
        "png",
    )
    array = pixels(result)
    assert array.shape == (300, 400, 3)
    assert tuple(array[5, 200]) == (255, 0, 255)  # top margin (30 px)
    assert tuple(array[150, 10]) == (255, 0, 255)  # left margin (40 px)
    assert tuple(array[295, 200]) == (255, 0, 255) and tuple(array[150, 395]) == (255, 0, 255)
    assert tuple(array[150, 200]) != (255, 0, 255)


def test_four_pixel_paddings_land_on_their_sides() -> None:
    result = edit(
        encode(gradient(), ".png"),
        {"padding": "0px 100px 0px 0px", "background": {"color": "#000000"}},
        "png",
    )
    array = pixels(result)
    assert array.shape == (300, 400, 3)
    assert (array[:, 310:] == 0).all()  # the right 100 px (less centring) are the fill
    assert array[:, :290].mean() > 20


def test_padding_of_an_alpha_image_is_transparent_and_measures_from_a_clipped_object() -> None:
    rgba = gradient().bandjoin(255).copy(interpretation="srgb")
    array = pixels(edit(encode(rgba, ".png"), {"padding": "20px"}, "png"))
    assert array.shape == (300, 400, 4) and array[5, 5, 3] == 0 and array[150, 200, 3] == 255
    clipped = edit(
        encode(object_on_plain(), ".png"),
        {"background": {"remove": {"clipping": True}}, "padding": "10%"},
        "png",
    )
    # The padding is laid around the clipped object: the output has the clipped size.
    assert 130 <= clipped.output.width <= 175
    edge = pixels(clipped)
    assert edge[2, edge.shape[1] // 2, 3] == 0


def test_a_pixel_padding_larger_than_half_the_image_is_refused() -> None:
    with pytest.raises(EditRequestInvalid) as refused:
        edit(encode(gradient()), {"padding": "200px"})
    assert "operations.padding" in refused.value.details
    assert "half" in refused.value.details["operations.padding"][0]
    with pytest.raises(EditRequestInvalid) as refused:
        edit(encode(gradient()), {"padding": "0px 150px"})  # 150 + 150 of a 300 px height
    assert "operations.padding" in refused.value.details


# --- privacy --------------------------------------------------------------------------------


def test_blurring_a_region_destroys_its_detail_and_nothing_else() -> None:
    image, (x, y, w, h) = plate_scene()
    blurred = np.asarray(_ops.blur_regions(image, [(x, y, w, h)]).numpy())
    original = np.asarray(image.numpy())
    assert blurred[y : y + h, x : x + w].std() < original[y : y + h, x : x + w].std() * 0.6
    assert np.array_equal(blurred[:250], original[:250])


def test_blur_car_plate_blurs_what_the_cascade_finds() -> None:
    image, (x, y, w, h) = plate_scene()
    found = _ops.detect(image, _ops.PLATE_CASCADE, min_neighbors=3)
    # The cascade fires on the synthetic plate (white, black rim, black characters).
    assert any(
        fx <= x + w // 2 <= fx + fw and fy <= y + h // 2 <= fy + fh for fx, fy, fw, fh in found
    )
    result = pixels(edit(encode(image, ".png"), {"privacy": {"blur_car_plate": True}}, "png"))
    original = np.asarray(image.numpy())
    plate = (slice(y + 8, y + h - 8), slice(x + 8, x + w - 8))
    assert result[plate].std() < original[plate].std() * 0.6
    # Far from any plate found, nothing changes.
    assert np.array_equal(result[:200], original[:200])


def test_identity_crop_box_and_crop() -> None:
    assert _ops.identity_box(1000, 1000, (450, 300, 100, 100)) == (380, 230, 240, 320)
    assert _ops.identity_box(300, 200, (0, 0, 200, 200)) == (0, 0, 300, 200)  # clamped
    result = edit(encode(gradient()), {"privacy": {"identity_crop": True}})
    assert (result.output.width, result.output.height) == (400, 300)  # no face: uncropped


def test_identity_crop_crops_around_the_largest_face(monkeypatch: pytest.MonkeyPatch) -> None:
    faces = {_ops.FACE_CASCADE: [(10, 10, 20, 20), (180, 120, 50, 50)]}
    monkeypatch.setattr(_ops, "detect", lambda image, name, **_: faces.get(name, []))
    result = edit(encode(gradient(), ".png"), {"privacy": {"identity_crop": True}}, "png")
    left, top, width, height = _ops.identity_box(400, 300, (180, 120, 50, 50))
    assert (result.output.width, result.output.height) == (width, height)
    assert np.array_equal(
        pixels(result), np.asarray(gradient().numpy())[top : top + height, left : left + width]
    )


# --- output ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "loader", "fmt", "ext", "mime"),
    [
        ("jpeg", "jpeg", "JPEG", "jpg", "image/jpeg"),
        ("png", "png", "PNG", "png", "image/png"),
        ({"type": "png", "compression": "fast"}, "png", "PNG", "png", "image/png"),
        ("webp", "webp", "WEBP", "webp", "image/webp"),
        ({"type": "webp", "compression": "lossless"}, "webp", "WEBP", "webp", "image/webp"),
        ("avif", "heif", "AVIF", "avif", "image/avif"),
        ({"type": "avif", "compression": "lossless"}, "heif", "AVIF", "avif", "image/avif"),
        ("tiff", "tiff", "TIFF", "tiff", "image/tiff"),
        (
            {"type": "tiff", "compression": {"type": "lossy", "quality": 60}},
            "tiff",
            "TIFF",
            "tiff",
            "image/tiff",
        ),
    ],
)
def test_every_output_format_decodes_as_itself(
    output: Any, loader: str, fmt: str, ext: str, mime: str
) -> None:
    result = edit(encode(gradient(200, 150)), {}, {"format": output})
    image = decoded(result)
    assert image.get("vips-loader").startswith(loader)
    assert (image.width, image.height) == (200, 150)
    assert (result.output.format, result.output.ext, result.output.mime) == (fmt, ext, mime)


def test_lossless_outputs_keep_the_pixels() -> None:
    data = encode(gradient(200, 150), ".png")
    original = np.asarray(gradient(200, 150).numpy())
    for output in (
        "png",
        {"type": "webp", "compression": "lossless"},
        "tiff",
    ):
        assert np.array_equal(pixels(edit(data, {}, {"format": output})), original), output


def test_jpeg_options_dpi_and_cmyk() -> None:
    data = encode(gradient())
    progressive = decoded(edit(data, {}, {"format": {"type": "jpeg", "progressive": True}}))
    baseline = decoded(edit(data, {}, {"format": {"type": "jpeg", "progressive": False}}))
    assert progressive.get("interlaced") == 1
    assert "interlaced" not in baseline.get_fields() or baseline.get("interlaced") == 0
    small = len(edit(data, {}, {"format": {"type": "jpeg", "quality": 10}}).data)
    large = len(edit(data, {}, {"format": {"type": "jpeg", "quality": 95}}).data)
    assert small < large
    for kind in ("jpeg", "png", "tiff"):
        dpi = decoded(edit(data, {}, {"format": kind, "metadata": {"dpi": 300}}))
        assert dpi.xres * 25.4 == pytest.approx(300, abs=1), kind
        assert dpi.yres * 25.4 == pytest.approx(300, abs=1), kind
    for kind in ("jpeg", "tiff"):
        space = {"type": "CMYK", "color_profile": "ISO_Coated"}
        cmyk = decoded(edit(data, {}, {"format": kind, "metadata": {"color_space": space}}))
        assert cmyk.bands == 4 and cmyk.interpretation == "cmyk", kind
        assert "icc-profile-data" in cmyk.get_fields(), kind
    both = decoded(
        edit(data, {}, {"format": "jpeg", "metadata": {"dpi": 150, "color_space": "CMYK"}})
    )
    assert both.bands == 4 and both.xres * 25.4 == pytest.approx(150, abs=1)


def test_alpha_is_flattened_for_jpeg_and_kept_by_lossy_tiff() -> None:
    alpha = (pyvips.Image.xyz(400, 300)[0] < 200).ifthenelse(255, 0).cast("uchar")
    data = encode(gradient().bandjoin(alpha).copy(interpretation="srgb"), ".png")
    flat = pixels(edit(data, {}, "jpeg")).astype(int)
    assert flat.shape[2] == 3 and flat[150, 300].min() > 245  # transparent became white
    lossy = {"type": "tiff", "compression": {"type": "lossy", "quality": 50}}
    tiff = pixels(edit(data, {}, {"format": lossy}))
    assert tiff.shape[2] == 4 and tiff[150, 300, 3] == 0


def test_metadata_is_not_copied() -> None:
    tagged = gradient().copy()
    tagged.set_type(pyvips.GValue.gstr_type, "exif-ifd0-Artist", "someone")
    tagged.set_type(pyvips.GValue.gstr_type, "exif-ifd0-Copyright", "someone else")
    data = bytes(tagged.jpegsave_buffer(keep="all"))
    assert "exif-data" in pyvips.Image.new_from_buffer(data, "").get_fields()
    for kind in ("jpeg", "png", "webp", "tiff"):
        fields = decoded(edit(data, {}, kind)).get_fields()
        assert not [name for name in fields if name.startswith(("exif", "xmp", "iptc"))], kind


# --- inputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: encode(gradient(), ".jpg"), ("jpg", "image/jpeg", "JPEG")),
        (lambda: encode(gradient(), ".png"), ("png", "image/png", "PNG")),
        (lambda: encode(gradient(), ".webp"), ("webp", "image/webp", "WEBP")),
        (lambda: encode(gradient(), ".gif"), ("gif", "image/gif", "GIF")),
        (lambda: encode(gradient(), ".tif"), ("tiff", "image/tiff", "TIFF")),
        (lambda: encode(gradient(), ".avif"), ("avif", "image/avif", "AVIF")),
        (lambda: bmp(gradient()), ("bmp", "image/bmp", "BMP")),
    ],
)
def test_every_input_format_is_probed_and_edited(make: Any, expected: tuple[str, ...]) -> None:
    data = make()
    probed = probe_image(data, LIMITS)
    assert (probed.ext, probed.mime, probed.format) == expected
    assert (probed.width, probed.height, probed.mps) == (400, 300, 0.12)
    result = edit(data, {"resizing": {"width": 100, "fit": "bounds"}}, "png")
    assert result.input == probed
    array = pixels(result)
    assert array.shape[:2] == (75, 100)
    # The gradient survives every decoder: red rises left to right.
    assert array[37, 95, 0] > array[37, 5, 0] + 150


def test_bmp_with_alpha_and_an_icc_tagged_cmyk_jpeg_come_out_srgb() -> None:
    rgba = gradient().bandjoin(128).copy(interpretation="srgb")
    array = pixels(edit(bmp(rgba), {}, "png"))
    assert array.shape == (300, 400, 4) and (array[:, :, 3] == 128).all()
    cmyk = gradient().icc_transform("cmyk", input_profile="srgb")
    data = bytes(cmyk.jpegsave_buffer(Q=95, keep="icc"))
    result = pixels(edit(data, {}, "png")).astype(int)
    assert result.shape == (300, 400, 3)
    assert np.abs(result - np.asarray(gradient().numpy()).astype(int)).mean() < 12


def test_image_objects() -> None:
    result = edit(encode(gradient(), ".png"), {"resizing": {"width": 200, "fit": "bounds"}}, "webp")
    assert isinstance(result.input, ImageObject)
    assert result.input.to_json() == {
        "ext": "png",
        "mps": 0.12,
        "mime": "image/png",
        "format": "PNG",
        "width": 400,
        "height": 300,
    }
    assert result.output.to_json() == {
        "ext": "webp",
        "mps": 0.03,
        "mime": "image/webp",
        "format": "WEBP",
        "width": 200,
        "height": 150,
    }
    odd = probe_image(encode(gradient(333, 777), ".png"), LIMITS)
    assert odd.mps == 0.258741  # rounded to six decimals


def test_edits_run_safely_on_threads_at_once() -> None:
    cases: list[tuple[bytes, dict[str, Any], str]] = [
        (encode(object_on_plain(), ".png"), {"background": {"remove": True}}, "png"),
        (encode(plate_scene()[0]), {"privacy": {"blur_car_plate": True}}, "jpeg"),
        (encode(gradient()), {"adjustments": {"hdr": 60, "sharpness": 30}}, "webp"),
        (encode(noisy()), {"restorations": {"decompress": "strong"}}, "png"),
    ] * 2
    serial = [edit(*case).data for case in cases]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda case: edit(*case).data, cases))
    assert parallel == serial


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "empty"),
        (b"\x00\x01garbage" * 100, "not an image"),
        (bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)), "not an image"),
        (b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>", "SVG input"),
        (b"%PDF-1.4\n" + b"0" * 100, "not an image"),
        (b"2 2\n1 2\n3 4\n", "not an image"),  # a libvips matrix file
        (png_claiming(30_000, 30_000), "900.0 megapixels (30000x30000); the limit is 100"),
        (bmp_claiming(20_000, 20_000), "400.0 megapixels"),
    ],
)
def test_refused_inputs_say_why(data: bytes, says: str) -> None:
    with pytest.raises(ImageInvalid) as refused:
        probe_image(data, LIMITS)
    assert says in refused.value.message
    with pytest.raises(ImageInvalid):
        edit(data, {})


def test_every_page_of_a_multi_page_file_counts() -> None:
    limits = EditLimits(max_input_megapixels=1)
    for suffix in (".tif", ".gif", ".webp"):
        assert probe_image(pages(5, 400, 300, suffix), limits).height == 300  # 0.6 MP
        with pytest.raises(ImageInvalid, match=r"1\.2 megapixels \(400x300, 10 pages\)"):
            probe_image(pages(10, 400, 300, suffix), limits)
    # Only the first page is edited.
    result = edit(pages(5, 400, 300), {}, "png")
    assert (result.output.width, result.output.height) == (400, 300)


def test_a_pixel_flood_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("decoded a refused image")

    monkeypatch.setattr(_codec, "load", no_decoding)
    with pytest.raises(ImageInvalid, match=r"900\.0 megapixels"):
        edit(png_claiming(30_000, 30_000), {"resizing": {"width": 100, "fit": "bounds"}})


@pytest.mark.parametrize("resizing", [{}, {"width": 100, "fit": "bounds"}])
@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_files_are_refused_not_greyed(resizing: dict[str, Any], suffix: str) -> None:
    data = encode(noisy(800, 600), suffix)
    truncated = data[: len(data) // 2]
    probe_image(truncated, LIMITS)  # the header is intact
    with pytest.raises(ImageInvalid, match="damaged or cannot be decoded"):
        edit(truncated, {"resizing": resizing} if resizing else {})


def test_pixel_limits_apply_to_input_and_output() -> None:
    data = encode(gradient())
    with pytest.raises(ImageInvalid, match=r"the limit is 0\.1"):
        edit(data, {}, limits=EditLimits(max_input_megapixels=0.1))
    with pytest.raises(ImageInvalid, match=r"output image is 1\.9 megapixels"):
        edit(
            data,
            {"resizing": {"width": "400%", "height": "400%"}},
            limits=EditLimits(max_output_megapixels=1),
        )
    assert edit(data, {}, limits=EditLimits(max_input_megapixels=0.12)).output.width == 400
