"""The image pipeline on real encoded images, checked pixel by pixel.

The images are synthesized here (no downloads): gradients, an object on a plain background for
segmentation, a number plate drawn with OpenCV. Each test states what the pixels must show.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import cv2
import numpy as np
import pytest
import pyvips

from services.render.imaging import request as contract
from services.render.imaging.pipeline import (
    EditedImage,
    EditLimits,
    blur_regions,
    detect,
    edit_image,
    probe_image,
)
from services.render.imaging.request import EditRequestInvalid
from services.runtime.errors import ImageInvalid

LIMITS = EditLimits()


def gradient(width: int = 400, height: int = 300) -> pyvips.Image:
    x = pyvips.Image.xyz(width, height)
    red = x[0] * (255 / (width - 1))
    green = x[1] * (255 / (height - 1))
    blue = (x[0] + x[1]) * (255 / (width + height))
    return red.bandjoin([green, blue]).cast("uchar").copy(interpretation="srgb")


def object_on_plain(width: int = 400, height: int = 300) -> pyvips.Image:
    """A saturated red disc in the middle of a flat pale-grey background."""
    array = np.full((height, width, 3), 225, np.uint8)
    cv2.circle(array, (width // 2, height // 2), min(width, height) // 4, (200, 30, 30), -1)
    # Texture on the disc so a blur has something to remove there.
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 60, (height, width, 1), dtype=np.uint8)
    disc = np.zeros((height, width), np.uint8)
    cv2.circle(disc, (width // 2, height // 2), min(width, height) // 4, 1, -1)
    array = np.where(disc[:, :, None] == 1, np.clip(array + noise, 0, 255), array).astype(np.uint8)
    return pyvips.Image.new_from_array(array).copy(interpretation="srgb")


def striped(width: int = 400, height: int = 300) -> pyvips.Image:
    """High-frequency stripes everywhere: what a blur flattens."""
    x = pyvips.Image.xyz(width, height)[0]
    stripes = ((x % 8) < 4).ifthenelse(230, 20)
    return stripes.bandjoin([stripes, stripes]).cast("uchar").copy(interpretation="srgb")


def encode(image: pyvips.Image, suffix: str = ".jpg") -> bytes:
    return bytes(image.write_to_buffer(suffix))


def edit(
    data: bytes, operations: dict[str, Any], output: Any = None, limits: EditLimits = LIMITS
) -> EditedImage:
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


# --- resizing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resizing", "size"),
    [
        ({}, (400, 300)),
        ({"width": 200}, (200, 300)),  # crop, one side: the other side stays, cropped
        ({"height": 100}, (400, 100)),
        ({"width": 1000}, (1000, 300)),  # the seed's example grows the image, then crops
        ({"width": 200, "height": 200}, (200, 200)),  # crop, both: cover then crop
        ({"width": 200, "fit": "bounds"}, (200, 150)),  # other fits: the other side follows
        ({"width": 200, "height": 200, "fit": "bounds"}, (200, 150)),
        ({"width": 200, "height": 200, "fit": "cover"}, (267, 200)),
        ({"width": 500, "height": 500, "fit": "canvas"}, (500, 500)),
        ({"width": "50%", "height": "50%"}, (200, 150)),
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
    # The centre crop of a horizontal red ramp starts about a quarter of the way in.
    assert 55 < int(cropped[150, 0, 0]) < 75
    bounded = decoded(
        edit(encode(source), {"resizing": {"width": 100, "height": 300, "fit": "bounds"}})
    )
    assert bounded.width / bounded.height == pytest.approx(400 / 300, rel=0.02)


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


def test_canvas_of_an_image_with_alpha_stays_transparent_in_png() -> None:
    rgba = gradient().bandjoin(255).copy(interpretation="srgb")
    array = pixels(
        edit(
            encode(rgba, ".png"),
            {"resizing": {"width": 500, "height": 500, "fit": "canvas"}},
            "png",
        )
    )
    assert array.shape[2] == 4
    assert array[0, 0, 3] == 0 and array[250, 250, 3] == 255


def test_upscale_names_all_grow_the_image() -> None:
    data = encode(gradient(200, 150))
    for upscale in ("smart_enhance", "smart_resize", "faces", "digital_art", "photo"):
        result = edit(
            data,
            {"restorations": {"upscale": upscale}, "resizing": {"width": 400, "fit": "bounds"}},
        )
        assert (result.output.width, result.output.height) == (400, 300), upscale


# --- adjustments ----------------------------------------------------------------------------


def test_adjustments_shift_colours_as_asked() -> None:
    data = encode(gradient(), ".png")
    original = pixels(edit(data, {}, "png")).astype(float)
    grey = pixels(edit(data, {"adjustments": {"saturation": -100}}, "png")).astype(float)
    assert np.abs(grey[:, :, 0] - grey[:, :, 1]).max() <= 3
    assert np.abs(grey[:, :, 1] - grey[:, :, 2]).max() <= 3
    brighter = pixels(edit(data, {"adjustments": {"exposure": 60}}, "png")).astype(float)
    darker = pixels(edit(data, {"adjustments": {"exposure": -60}}, "png")).astype(float)
    assert brighter.mean() > original.mean() + 20 > darker.mean() + 40

    def lightness_spread(operations: dict[str, Any]) -> float:
        grey = cv2.cvtColor(pixels(edit(data, operations, "png")), cv2.COLOR_RGB2GRAY)
        return float(grey.astype(float).std())

    plain = lightness_spread({})
    assert lightness_spread({"adjustments": {"contrast": -80}}) < plain * 0.5
    assert lightness_spread({"adjustments": {"contrast": 60}}) > plain * 1.2
    assert np.array_equal(original, pixels(edit(data, {"adjustments": {"hdr": 0}}, "png")))


def test_sharpness_and_hdr_raise_local_contrast() -> None:
    soft = object_on_plain().gaussblur(2)
    data = encode(soft.cast("uchar"), ".png")

    def detail(result: EditedImage) -> float:
        grey = cv2.cvtColor(pixels(result), cv2.COLOR_RGB2GRAY)
        return float(cv2.Laplacian(grey, cv2.CV_64F).var())

    base = detail(edit(data, {}, "png"))
    assert detail(edit(data, {"adjustments": {"sharpness": 100}}, "png")) > base
    hdr = pixels(
        edit(encode(object_on_plain(), ".png"), {"adjustments": {"hdr": {"intensity": 100}}}, "png")
    )
    assert hdr.shape == (300, 400, 3)


def test_decompress_and_polish_smooth_blocky_input() -> None:
    blocky = encode(striped().gaussblur(1).cast("uchar"), ".jpg")
    noisy = pyvips.Image.new_from_buffer(blocky, "")
    rough = float(np.asarray(noisy.numpy()).astype(float).std())
    for operations in (
        {"restorations": {"decompress": "strong"}},
        {"restorations": {"decompress": "auto"}},
        {"restorations": {"polish": True}},
    ):
        result = edit(blocky, operations, "png")
        assert (result.output.width, result.output.height) == (400, 300)
    smoothed = pixels(edit(blocky, {"restorations": {"decompress": "strong"}}, "png"))
    assert float(smoothed.astype(float).std()) <= rough + 1


# --- background -----------------------------------------------------------------------------


def test_remove_makes_the_background_transparent_and_keeps_the_object() -> None:
    result = edit(encode(object_on_plain(), ".png"), {"background": {"remove": True}}, "png")
    array = pixels(result)
    assert array.shape == (300, 400, 4)
    assert array[150, 200, 3] > 200  # the disc's centre is opaque
    assert array[5, 5, 3] < 30 and array[290, 390, 3] < 30  # corners are gone


def test_remove_with_a_colour_and_clipping() -> None:
    data = encode(object_on_plain(), ".png")
    coloured = pixels(
        edit(data, {"background": {"remove": True, "color": "#0000ff"}}, "jpeg")
    ).astype(int)
    corner = coloured[5, 5]
    assert corner[2] > 200 and corner[0] < 60 and corner[1] < 60
    clipped = edit(data, {"background": {"remove": {"clipping": True}}}, "png")
    # The disc has a radius of 75 px: clipping leaves about its 150 px box.
    assert 120 <= clipped.output.width <= 190 and 120 <= clipped.output.height <= 190


def test_transparent_colour_without_alpha_output_is_refused_by_the_contract() -> None:
    with pytest.raises(EditRequestInvalid):
        edit(encode(gradient()), {"background": {"color": "transparent"}}, "jpeg")


def test_background_blur_softens_only_the_background() -> None:
    source = object_on_plain()
    data = encode(source, ".png")

    def energy(array: np.ndarray, rows: slice, cols: slice) -> float:
        grey = cv2.cvtColor(np.ascontiguousarray(array[rows, cols]), cv2.COLOR_RGB2GRAY)
        return float(cv2.Laplacian(grey, cv2.CV_64F).var())

    before = np.asarray(source.numpy())
    for blur in (True, {"type": "lens", "level": "high"}, {"type": "regular", "level": "low"}):
        after = pixels(edit(data, {"background": {"blur": blur}}, "png"))
        centre = (slice(130, 170), slice(180, 220))
        assert energy(after, *centre) > 0.5 * energy(before, *centre), blur


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
    assert tuple(array[150, 200]) != (255, 0, 255)


def test_four_pixel_paddings_land_on_their_sides() -> None:
    result = edit(
        encode(gradient(), ".png"),
        {"padding": "0px 100px 0px 0px", "background": {"color": "#000000"}},
        "png",
    )
    array = pixels(result)
    assert (array[:, 310:] == 0).all()  # the right 100 px (less rounding) are the fill
    assert array[:, :290].mean() > 20


def test_a_pixel_padding_larger_than_half_the_image_is_refused() -> None:
    with pytest.raises(EditRequestInvalid) as refused:
        edit(encode(gradient()), {"padding": "200px"})
    assert "operations.padding" in refused.value.details


# --- privacy --------------------------------------------------------------------------------


def plate_scene() -> tuple[pyvips.Image, tuple[int, int, int, int]]:
    array = np.full((480, 640, 3), 90, np.uint8)
    x, y, w, h = 220, 300, 220, 52
    cv2.rectangle(array, (x, y), (x + w, y + h), (245, 245, 245), -1)
    cv2.rectangle(array, (x, y), (x + w, y + h), (10, 10, 10), 3)
    cv2.putText(array, "A123BC 77", (x + 10, y + 40), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (0, 0, 0), 4)
    return pyvips.Image.new_from_array(array).copy(interpretation="srgb"), (x, y, w, h)


def test_blurring_a_region_destroys_its_detail_and_nothing_else() -> None:
    image, (x, y, w, h) = plate_scene()
    blurred = np.asarray(blur_regions(image, [(x, y, w, h)]).numpy())
    original = np.asarray(image.numpy())
    assert blurred[y : y + h, x : x + w].std() < original[y : y + h, x : x + w].std() * 0.6
    assert np.array_equal(blurred[:200], original[:200])


def test_blur_car_plate_blurs_what_the_cascade_finds() -> None:
    image, (x, y, w, h) = plate_scene()
    found = detect(image, "haarcascade_russian_plate_number.xml", min_neighbors=3)
    result = pixels(edit(encode(image, ".png"), {"privacy": {"blur_car_plate": True}}, "png"))
    original = np.asarray(image.numpy())
    # Whatever the cascade reports is blurred; outside those regions nothing changes.
    untouched = np.ones(original.shape[:2], bool)
    for fx, fy, fw, fh in found:
        untouched[max(0, fy) : fy + fh, max(0, fx) : fx + fw] = False
    assert np.array_equal(result[untouched], original[untouched])
    # The cascade finds the drawn plate, and its characters are no longer readable.
    assert any(
        fx <= x + w // 2 <= fx + fw and fy <= y + h // 2 <= fy + fh for fx, fy, fw, fh in found
    )
    plate = (slice(y + 8, y + h - 8), slice(x + 8, x + w - 8))
    assert result[plate].std() < original[plate].std() * 0.6


def test_identity_crop_without_a_face_leaves_the_image_whole() -> None:
    result = edit(encode(gradient()), {"privacy": {"identity_crop": True}})
    assert (result.output.width, result.output.height) == (400, 300)


# --- output ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "loader", "fmt", "ext"),
    [
        ("jpeg", "jpeg", "JPEG", "jpg"),
        ("png", "png", "PNG", "png"),
        ("webp", "webp", "WEBP", "webp"),
        ({"type": "webp", "compression": "lossless"}, "webp", "WEBP", "webp"),
        ("avif", "heif", "AVIF", "avif"),
        ("tiff", "tiff", "TIFF", "tiff"),
        ({"type": "tiff", "compression": {"type": "lossy", "quality": 60}}, "tiff", "TIFF", "tiff"),
    ],
)
def test_every_output_format_decodes_as_itself(
    output: Any, loader: str, fmt: str, ext: str
) -> None:
    result = edit(encode(gradient()), {}, {"format": output})
    image = decoded(result)
    assert image.get("vips-loader").startswith(loader)
    assert (image.width, image.height) == (400, 300)
    assert (result.output.format, result.output.ext) == (fmt, ext)


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
    cmyk = decoded(edit(data, {}, {"format": "jpeg", "metadata": {"color_space": "CMYK"}}))
    assert cmyk.bands == 4 and cmyk.interpretation == "cmyk"


def test_objects_describe_input_and_output() -> None:
    result = edit(encode(gradient(), ".png"), {"resizing": {"width": 200, "fit": "bounds"}}, "webp")
    assert result.input.to_json() == {
        "ext": "png",
        "mps": 0.12,
        "mime": "image/png",
        "format": "PNG",
        "width": 400,
        "height": 300,
    }
    assert result.output.to_json()["mps"] == 0.03


def test_exif_orientation_is_applied_and_metadata_dropped() -> None:
    rotated = gradient(400, 300).copy()
    rotated.set_type(pyvips.GValue.gint_type, "orientation", 6)
    data = bytes(rotated.jpegsave_buffer(keep="all"))
    result = edit(data, {})
    assert (result.input.width, result.input.height) == (300, 400)
    out = decoded(result)
    assert (out.width, out.height) == (300, 400)
    assert "orientation" not in out.get_fields() or out.get("orientation") == 1


def test_bmp_and_gif_inputs_are_read() -> None:
    bmp = cv2.imencode(".bmp", np.asarray(gradient().numpy())[:, :, ::-1].copy())[1].tobytes()
    assert probe_image(bmp, LIMITS).format == "BMP"
    assert edit(bmp, {"resizing": {"width": 100, "fit": "bounds"}}).output.width == 100
    gif = encode(gradient(), ".gif")
    assert probe_image(gif, LIMITS).to_json()["ext"] == "gif"


# --- refusals -------------------------------------------------------------------------------


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size over one tiny IDAT: a pixel flood."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "empty"),
        (b"\x00\x01garbage" * 100, "not an image"),
        (b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>", "Svg"),
        (b"%PDF-1.4\n" + b"0" * 100, "not an image"),
        (png_claiming(30_000, 30_000), "900.0 megapixels"),
    ],
)
def test_refused_inputs_say_why(data: bytes, says: str) -> None:
    with pytest.raises(ImageInvalid) as refused:
        edit(data, {})
    assert says in refused.value.message


def test_a_truncated_jpeg_is_refused_not_greyed() -> None:
    data = encode(gradient(800, 600))
    with pytest.raises(ImageInvalid):
        edit(data[: len(data) // 2], {})


def test_pixel_limits_apply_to_input_and_output() -> None:
    data = encode(gradient())
    with pytest.raises(ImageInvalid, match=r"limit is 0\.1"):
        edit(data, {}, limits=EditLimits(max_input_megapixels=0.1))
    with pytest.raises(ImageInvalid, match="output"):
        edit(
            data,
            {"resizing": {"width": "400%", "height": "400%"}},
            limits=EditLimits(max_output_megapixels=1),
        )
