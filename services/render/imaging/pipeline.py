"""Claid's image operations (api-spec §4.3) on libvips, with OpenCV where detection or
segmentation is needed.

`edit_image(data, request, limits)` takes the encoded input and a request normalized by
`imaging.request.validate_edit_request`, and answers the encoded output with Claid's input and
output objects; `probe_image(data, limits)` answers the input object from the header alone.
Both are synchronous and CPU-bound; libvips and OpenCV release the GIL and no state is shared
between calls (each detection loads its own Haar cascade, GrabCut's random seed is per thread
and fixed), so callers run them on threads (`asyncio.to_thread`), several at once, and the same
request on the same image always gives the same bytes.

Safety, before any pixel is decoded
-----------------------------------
* Only JPEG, PNG, WebP, GIF, TIFF, HEIF/AVIF (the libvips loaders libvips' own sniffing picks,
  checked against an allow-list) and BMP (OpenCV, after its header is read here) are accepted.
  SVG, PDF, matrix, CSV, raw vips and every other loader libvips has are refused, so no input
  can make the service render a document or read something it should not.
* The header's width x height (x the page count of a multi-page file) is checked against
  `max_input_megapixels` first: pixel floods and decompression bombs are refused without
  decoding them; only the first page (frame) of a multi-page file is edited. Decoding stops
  at the first error (`fail_on=error`), so a truncated or corrupt file is refused
  (ImageInvalid) instead of answered with grey pixels.
* The output size is checked against `max_output_megapixels` before anything is computed, and
  again before encoding.

Order of operations
-------------------
decode (EXIF orientation applied, shrink-on-load when the image gets smaller) →
`restorations.decompress` → resizing (growing with the `upscale` method) → crop or canvas →
`restorations.polish` → adjustments → background → privacy → padding → encode.

Decompression runs on the image as decoded: before any growth, so artefacts are not enlarged
first, and after a shrink-on-load, which already averages blocks away and leaves a fraction of
the pixels to clean. Memory stays near one decoded copy of the working image: libvips streams
the pipeline, and only operations that need to read the image twice hold it in memory.

Resizing (§4.3)
---------------
Never stretches. No width or height: unchanged. `crop` with one side: the other side keeps its
length and the image is scaled to cover the box and cropped (center, or `smart`: libvips'
attention-based smartcrop); with both: scaled to cover, then cropped. Any other fit with one
side: the other follows the aspect ratio. `bounds` fits inside the box, `cover` covers it,
`canvas` fits inside and centres the image on a box-sized canvas of the background colour.
Percentages are of the input's sides. (`outpaint` is refused by the request contract.) A crop
that grows the image crops at the input's scale first and grows only what it keeps.

Classical stand-ins for learned operations (no model weights can be fetched here)
--------------------------------------------------------------------------------
* `upscale` chooses how resizing resamples; images grow only through `resizing`, and an upscale
  with no growth changes nothing. Every name resamples with Lanczos-3, then: `smart_enhance` and
  `photo` (all versions) sharpen with an unsharp mask sized to the growth, `faces` smooths with
  an edge-preserving bilateral filter before a mild sharpen, `digital_art` flattens ringing in
  flat colour areas (bilateral) and sharpens lightly, `smart_resize` adds nothing. With no
  upscale, growth is bicubic and shrinking libvips' default (Lanczos-3 after shrink-on-load).
* `decompress` (JPEG artefacts): a bilateral filter, `moderate` (5 px, sigma 25) or `strong`
  (9 px, sigma 45). `auto` is `strong` for a JPEG whose quantization table estimates an IJG
  quality below 50, `moderate` for other JPEGs, and nothing for the other formats.
* `polish`: a bilateral filter matched to the noise measured in the image (Immerkaer's
  estimate), then an unsharp mask that leaves grain-sized differences alone (cored).
* `hdr`: CLAHE (contrast-limited adaptive histogram equalization) on the LAB lightness, mixed
  with the original by `intensity`; `stitching` (merging bracketed shots) is accepted and has
  no further effect on a single image.
* `exposure`: a gain in linear light, 2^(v/50) (±100 is ±2 stops). `saturation`: LCh chroma
  scaled by 1 + v/100 (-100 is grey). `contrast`: LCh lightness spread around mid-grey (x3 at
  +100, flat at -100). `sharpness`: an unsharp mask of amount 0.5 + v/25. All 0: untouched.
* `background.remove` / `background.blur`: GrabCut seeded with a rectangle inset from the
  borders (a little more for `products`, less at the sides and bottom for `cars`), on a copy at
  most 512 px long; the mask is cleaned of specks, scaled back and feathered. With
  `use_original_alpha` and an input with alpha, that alpha is the mask. If GrabCut finds no
  foreground the whole image is kept. `remove` makes the mask the alpha (`clipping` crops to
  its bounding box, so padding then measures from the object's edges); `blur` blurs the
  background by `level` (a sigma of 0.6, 1.2 or 2.4 % of the longer side; `regular` a
  Gaussian, `lens` a uniform disc as a lens draws out-of-focus light), normalized by the
  background's weight so the subject does not bleed into a halo, and keeps the subject sharp.
* `privacy.blur_car_plate`: OpenCV's Haar cascade for number plates on a reduced grey copy;
  every plate found (a little enlarged) is pixelated and smoothed beyond reading.
  `identity_crop`: the largest face the frontal-face cascade finds, cropped head-and-shoulders
  (3:4, 2.4 face widths); without a face the image is left uncropped. Large images are
  searched in overlapping tiles (and once at half size), which bounds OpenCV's memory.

Colours
-------
`background.color` fills what a removal, a canvas or padding leaves empty, and given without
`remove` it also fills the transparent areas of an input with alpha. Without it the fill is
transparent when the input had alpha or the background is removed and the output format holds
alpha (PNG, WebP, AVIF, TIFF), else white. JPEG output (and CMYK) flattens alpha onto it.

Output
------
jpeg (`quality`, `progressive` → interlaced), png (`compression` fast/optimal/best → zlib 1/6/9),
webp and avif (lossy `quality` or lossless), tiff (lossless: LZW; lossy: JPEG-in-TIFF, which
cannot hold alpha, so an image with alpha is written LZW). `metadata.dpi` is written where the
format has a resolution field (JPEG via EXIF, PNG, TIFF; WebP and AVIF have none).
`color_space: CMYK` converts with libvips' built-in CMYK profile and embeds it, whichever of
the four `color_profile` names is asked for (libvips ships one CMYK profile). Nothing else of
the input's metadata (EXIF, XMP, IPTC, GPS, ICC) is copied; inputs with an ICC profile are
converted to sRGB on load. (HEIC photos are HEVC-coded: the bundled libvips decodes AVIF but
has no HEVC decoder, so those are refused as undecodable.)

Errors: `ImageInvalid` for inputs refused, undecodable or over a limit (and for libvips errors
while the pipeline runs, which come from damaged pixel data the header did not show);
`EditRequestInvalid` at `operations.padding` for a pixel padding more than half the side.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyvips

from services.render.imaging import _codec, _ops
from services.render.imaging._codec import RGBA, Kind, Source
from services.render.imaging.request import EditRequestInvalid, Length, parse_padding
from services.runtime.errors import ImageInvalid

# Every operation here runs once: libvips' operation cache would only hold images in memory.
pyvips.cache_set_max(0)

__all__ = ["EditLimits", "EditedImage", "ImageObject", "edit_image", "probe_image"]


@dataclass(frozen=True)
class EditLimits:
    """Pixel limits of one edit."""

    max_input_megapixels: float = 100.0
    max_output_megapixels: float = 100.0


@dataclass(frozen=True)
class ImageObject:
    """Claid's InputObject (and the core of its OutputObject)."""

    ext: str
    mps: float
    mime: str
    format: str
    width: int
    height: int

    def to_json(self) -> dict[str, Any]:
        return {
            "ext": self.ext,
            "mps": self.mps,
            "mime": self.mime,
            "format": self.format,
            "width": self.width,
            "height": self.height,
        }


@dataclass(frozen=True)
class EditedImage:
    """The encoded output, with the objects describing input and output."""

    data: bytes
    input: ImageObject
    output: ImageObject


def _image_object(kind: Kind, width: int, height: int) -> ImageObject:
    return ImageObject(
        ext=kind.ext,
        mps=round(width * height / 1e6, 6),
        mime=kind.mime,
        format=kind.format,
        width=width,
        height=height,
    )


def probe_image(data: bytes, limits: EditLimits) -> ImageObject:
    """The input object from the header alone; ImageInvalid when the image is refused (not an
    accepted format, unreadable header, over `max_input_megapixels`)."""
    source = _codec.probe(data, limits.max_input_megapixels)
    return _image_object(source.kind, source.width, source.height)


# --- resizing plan --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """What resizing does: scale the whole image by `scale`, then crop or embed to `box`."""

    scale: float
    box: tuple[int, int]  # the final width, height
    mode: str  # "none" | "crop" | "canvas"
    smart: bool = False

    def scaled(self, width: int, height: int) -> tuple[int, int]:
        return _px(width * self.scale), _px(height * self.scale)


def _px(value: float) -> int:
    return max(1, round(value))


def _side(value: object, original: int) -> float | None:
    if value is None or value == "auto":
        return None
    if isinstance(value, str):  # "NN%": the request contract allows nothing else
        return original * int(value.removesuffix("%")) / 100
    if isinstance(value, int | float):
        return float(value)
    raise TypeError(f"resizing side {value!r} is not normalized")


def _plan(resizing: Mapping[str, Any], width: int, height: int) -> _Plan:
    fit = resizing["fit"]
    kind = fit["type"]
    w = _side(resizing["width"], width)
    h = _side(resizing["height"], height)
    if w is None and h is None:
        return _Plan(1.0, (width, height), "none")
    if kind == "crop":
        # One side given: the other keeps its length. Either way: cover the box, then crop.
        box_w = w if w is not None else float(width)
        box_h = h if h is not None else float(height)
        scale = max(box_w / width, box_h / height)
        return _Plan(scale, (_px(box_w), _px(box_h)), "crop", smart=fit.get("crop") == "smart")
    if w is None or h is None:
        # Any other fit with one side: the other side follows the aspect ratio.
        scale = w / width if w is not None else (h or 1.0) / height
        return _Plan(scale, (_px(width * scale), _px(height * scale)), "none")
    if kind == "cover":
        scale = max(w / width, h / height)
        return _Plan(scale, (_px(width * scale), _px(height * scale)), "none")
    scale = min(w / width, h / height)
    if kind == "bounds":
        return _Plan(scale, (_px(width * scale), _px(height * scale)), "none")
    return _Plan(scale, (_px(w), _px(h)), "canvas")


def _crop(image: pyvips.Image, width: int, height: int, smart: bool) -> pyvips.Image:
    width, height = min(width, image.width), min(height, image.height)
    if (width, height) == (image.width, image.height):
        return image
    if smart:
        # Smartcrop scores the whole image, then crops it: two reads.
        return _ops.settle(image).smartcrop(width, height, interesting="attention")
    return image.crop((image.width - width) // 2, (image.height - height) // 2, width, height)


def _resize(image: pyvips.Image, plan: _Plan, upscale: object, fill: RGBA) -> pyvips.Image:
    """The rest of resizing, on the image as loaded: at its final scale when it shrinks
    (shrink-on-load), at the input's size when it grows."""
    box_w, box_h = plan.box
    if plan.scale > 1.0:
        if plan.mode == "crop":
            # Crop first, at the input's scale, then grow only what is kept: a crop that is
            # long and thin must not grow the whole image to its length first.
            kept_w = min(image.width, _px(box_w / plan.scale))
            kept_h = min(image.height, _px(box_h / plan.scale))
            image = _crop(image, kept_w, kept_h, plan.smart)
            return _ops.resample(image, box_w, box_h, upscale)
        image = _ops.resample(image, *plan.scaled(image.width, image.height), upscale)
    if plan.mode == "crop":
        return _crop(image, box_w, box_h, plan.smart)
    if plan.mode == "canvas":
        left, top = (box_w - image.width) // 2, (box_h - image.height) // 2
        return _ops.embed_on_fill(image, (left, top), (box_w, box_h), fill)
    return image


# --- colours --------------------------------------------------------------------------------


def _fill_colour(color: object, alpha: bool, output_kind: str) -> RGBA:
    """The colour of areas left empty, as RGBA (alpha 0 when they stay transparent)."""
    if isinstance(color, str) and color.startswith("#"):
        return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16), 255
    if color == "transparent" or (alpha and output_kind in _codec.ALPHA_OUTPUTS):
        return 255, 255, 255, 0
    return 255, 255, 255, 255


def _background(image: pyvips.Image, background: Mapping[str, Any], fill: RGBA) -> pyvips.Image:
    remove = background["remove"]
    blur = background["blur"]
    use_alpha = bool(background.get("use_original_alpha"))
    if remove:
        options = remove if isinstance(remove, Mapping) else {}
        image = _ops.settle(image)  # segmented from a reduced copy, then cut at full size
        mask = _ops.settle(
            _ops.foreground_mask(image, str(options.get("category", "general")), use_alpha)
        )
        rgb, alpha = _ops.split_alpha(image)
        if alpha is not None and not use_alpha:
            # The input's own transparency stays transparent.
            mask = (mask.cast("float") * alpha.cast("float") / 255 + 0.5).cast("uchar")
        image = rgb.bandjoin(mask).copy(interpretation="srgb")
        if options.get("clipping"):
            image = _ops.clip_to(image, mask)
        return _codec.flatten(image, fill) if fill[3] == 255 else image
    if blur:
        options = blur if isinstance(blur, Mapping) else {"type": "regular", "level": "medium"}
        image = _ops.settle(image)
        mask = _ops.foreground_mask(image, str(options.get("category", "general")), use_alpha)
        image = _ops.blur_background(image, mask, options)
    if image.hasalpha() and "color" in background and fill[3] == 255:
        # A colour given without a removal fills what was transparent in the input.
        image = _codec.flatten(image, fill)
    return image


# --- padding --------------------------------------------------------------------------------


def _padding_px(length: Length, side: int) -> int:
    return round(side * length.value / 100) if length.unit == "%" else length.value


def _pad(image: pyvips.Image, padding: str, fill: RGBA) -> pyvips.Image:
    """The image shrunk into the area the padding leaves, centred there, on a canvas of its
    own size filled with the fill colour."""
    sides = parse_padding(padding)
    width, height = image.width, image.height
    top, bottom = _padding_px(sides.top, height), _padding_px(sides.bottom, height)
    left, right = _padding_px(sides.left, width), _padding_px(sides.right, width)
    if max(top, bottom) > height / 2 or max(left, right) > width / 2:
        raise EditRequestInvalid(
            {
                "operations.padding": [
                    f"padding '{padding}' is more than half of the {width}x{height} image "
                    "(it must be at most half of its side)"
                ]
            }
        )
    inner_w, inner_h = width - left - right, height - top - bottom
    if inner_w < 1 or inner_h < 1:
        raise EditRequestInvalid(
            {
                "operations.padding": [
                    f"padding '{padding}' leaves no room for the {width}x{height} image"
                ]
            }
        )
    scale = min(inner_w / width, inner_h / height)
    content = image.resize(scale) if scale < 1.0 else image
    x = left + (inner_w - content.width) // 2
    y = top + (inner_h - content.height) // 2
    return _ops.embed_on_fill(content, (x, y), (width, height), fill)


# --- the whole edit -------------------------------------------------------------------------


def _raise_if_over(width: int, height: int, limits: EditLimits) -> None:
    error = _codec.megapixels_error("output", width, height, limits.max_output_megapixels)
    if error is not None:
        raise error


def _run(
    data: bytes, source: Source, request: Mapping[str, Any], limits: EditLimits
) -> tuple[pyvips.Image, bytes]:
    operations = request["operations"]
    output = request["output"]
    restorations = operations["restorations"]
    background = operations["background"]
    upscale = restorations["upscale"]

    plan = _plan(operations["resizing"], source.width, source.height)
    _raise_if_over(*plan.box, limits)
    alpha = source.has_alpha or bool(background["remove"])
    fill = _fill_colour(background.get("color"), alpha, output["format"]["type"])

    # Shrinking happens on load; growing after decompression, with the upscale method.
    shrink = plan.scale < 1.0
    load_w, load_h = plan.scaled(source.width, source.height) if shrink else source.size
    image = _codec.load(data, source, load_w, load_h)
    level = _ops.decompress_level(
        restorations["decompress"], source.kind.format, source.jpeg_quality
    )
    image = _ops.decompress(image, level)
    image = _resize(image, plan, upscale, fill)
    if restorations["polish"]:
        image = _ops.polish(image)
    image = _ops.adjust(image, operations["adjustments"])
    image = _background(image, background, fill)
    image = _ops.privacy(image, operations["privacy"])
    if "padding" in operations:
        image = _pad(image, operations["padding"], fill)
    _raise_if_over(image.width, image.height, limits)
    return image, _codec.encode(image, output, fill)


def edit_image(data: bytes, request: Mapping[str, Any], limits: EditLimits) -> EditedImage:
    """Runs one normalized request (`validate_edit_request`'s answer) on one encoded image.

    Raises ImageInvalid (input refused, damaged or over a limit) or EditRequestInvalid (a
    request rule that depends on the image, such as a pixel padding)."""
    source = _codec.probe(data, limits.max_input_megapixels)
    try:
        image, encoded = _run(data, source, request, limits)
    except pyvips.Error as exc:
        # The header was read and accepted: what fails now is the pixel data (a truncated or
        # corrupt file surfaces only when the broken part is decoded).
        raise ImageInvalid(
            f"the input image is damaged or cannot be decoded: {_codec.first_line(exc)}",
            field="input",
        ) from None
    kind = _codec.OUTPUTS[request["output"]["format"]["type"]]
    return EditedImage(
        data=encoded,
        input=_image_object(source.kind, source.width, source.height),
        output=_image_object(kind, image.width, image.height),
    )
