"""Claid's image operations (api-spec §4.3) on libvips, with OpenCV where detection or
segmentation is needed.

`edit_image(data, request, limits)` takes the encoded input and a request normalized by
`imaging.request.validate_edit_request`, and answers the encoded output with Claid's input and
output objects. It is synchronous and CPU-bound; libvips and OpenCV release the GIL, so callers
run it on threads (`asyncio.to_thread`), several at once.

Safety, before any pixel is decoded
-----------------------------------
* Only JPEG, PNG, WebP, GIF, TIFF, HEIF/AVIF (libvips' loaders) and BMP (OpenCV, after its
  header is read here) are accepted; SVG, PDF and every other loader libvips has are refused,
  so no input can make the service fetch or render anything.
* The header's width x height is checked against `max_input_megapixels` first: pixel floods and
  decompression bombs are refused without decoding them. Decoding fails on the first error
  (`fail_on="error"`), so a truncated file is refused instead of answered with grey pixels.
* The output is checked against `max_output_megapixels` before it is computed.

Order of operations
-------------------
decode (EXIF orientation applied) → resizing (shrink-on-load when the image gets smaller) →
`restorations.decompress` → `restorations.polish` → adjustments → background → privacy →
padding → encode. Decompression runs after a shrink (the shrink itself averages artefacts
away, and the cleanup costs a fraction) and before a growth.

Classical stand-ins for learned operations (no model weights can be fetched here)
--------------------------------------------------------------------------------
* `upscale` chooses how resizing resamples; images grow only through `resizing`. Every name
  resamples with Lanczos-3, then: `smart_enhance` and `photo` sharpen (unsharp mask on
  lightness), `faces` smooths with an edge-preserving bilateral filter before a mild sharpen,
  `digital_art` sharpens harder (flat colours, hard edges), `smart_resize` adds nothing. With
  no upscale, resizing uses plain interpolation (bilinear growth, libvips' default shrink).
* `decompress` (JPEG artefacts): a bilateral filter, moderate or strong; `auto` is moderate for
  JPEG inputs and nothing for lossless ones.
* `polish`: a light bilateral filter then a light sharpen.
* `hdr`: CLAHE (contrast-limited adaptive histogram equalization) on lightness, blended by
  intensity; `stitching` is accepted and has no further effect.
* `background.remove` / `background.blur`: GrabCut seeded with a rectangle inset from the
  borders, on a copy at most 800 px long, its mask scaled back and feathered (with
  `use_original_alpha` and an input with alpha, that alpha is the mask). The `category` does
  not change the method.
* `privacy.blur_car_plate`: OpenCV's Haar cascade for number plates; every plate found is
  blurred beyond reading. `identity_crop`: the largest face found by the frontal-face cascade,
  cropped head-and-shoulders (3:4); without a face the image is left uncropped.

Colours: `background.color` fills what a removal, a canvas or padding leaves empty; without it
the fill is transparent when the input had alpha or the background was removed and the output
format holds alpha (PNG, WebP, AVIF, TIFF), else white. JPEG output flattens alpha onto it.
`metadata.dpi` is written where the format has a resolution field (JPEG, PNG, TIFF).
`color_space: CMYK` converts with libvips' built-in CMYK profile, whichever of the four
`color_profile` names is asked for (libvips ships one). Other metadata (EXIF, XMP, GPS) is not
copied to the output.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import pyvips

from services.render.imaging.request import EditRequestInvalid, parse_padding
from services.runtime.errors import ImageInvalid

# Operations are one-shot: libvips' operation cache would only hold images in memory.
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


# --- formats --------------------------------------------------------------------------------

#: libvips loader class → (ext, mime, FORMAT). Anything else is refused.
_LOADERS: Mapping[str, tuple[str, str, str]] = {
    "VipsForeignLoadJpegBuffer": ("jpg", "image/jpeg", "JPEG"),
    "VipsForeignLoadPngBuffer": ("png", "image/png", "PNG"),
    "VipsForeignLoadWebpBuffer": ("webp", "image/webp", "WEBP"),
    "VipsForeignLoadNsgifBuffer": ("gif", "image/gif", "GIF"),
    "VipsForeignLoadTiffBuffer": ("tiff", "image/tiff", "TIFF"),
    "VipsForeignLoadHeifBuffer": ("heic", "image/heic", "HEIF"),
}
_AVIF = ("avif", "image/avif", "AVIF")
_BMP = ("bmp", "image/bmp", "BMP")
_OUTPUTS: Mapping[str, tuple[str, str, str]] = {
    "jpeg": ("jpg", "image/jpeg", "JPEG"),
    "png": ("png", "image/png", "PNG"),
    "webp": ("webp", "image/webp", "WEBP"),
    "avif": _AVIF,
    "tiff": ("tiff", "image/tiff", "TIFF"),
}
_ALPHA_OUTPUTS = frozenset({"png", "webp", "avif", "tiff"})
_PNG_COMPRESSION = {"fast": 1, "optimal": 6, "best": 9}
_WHITE = (255, 255, 255)


def _object(kind: tuple[str, str, str], width: int, height: int) -> ImageObject:
    ext, mime, fmt = kind
    return ImageObject(
        ext=ext,
        mps=round(width * height / 1e6, 6),
        mime=mime,
        format=fmt,
        width=width,
        height=height,
    )


def _loader_of(data: bytes) -> str | None:
    pointer = pyvips.vips_lib.vips_foreign_find_load_buffer(data, len(data))
    if pointer == pyvips.ffi.NULL:
        return None
    return str(pyvips.ffi.string(pointer).decode())


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 26 or data[:2] != b"BM":
        return None
    header_size = struct.unpack_from("<I", data, 14)[0]
    if header_size == 12:  # OS/2 BITMAPCOREHEADER
        width, height = struct.unpack_from("<HH", data, 18)
    else:
        width, height = struct.unpack_from("<ii", data, 18)
    return abs(int(width)), abs(int(height))


def _check_pixels(width: int, height: int, limit: float, what: str) -> None:
    megapixels = width * height / 1e6
    if width < 1 or height < 1:
        raise ImageInvalid(f"the {what} image has no pixels ({width}x{height})", field="input")
    if megapixels > limit:
        raise ImageInvalid(
            f"the {what} image is {megapixels:.1f} megapixels ({width}x{height}); "
            f"the limit is {limit:g}",
            field="input" if what == "input" else "output",
        )


@dataclass(frozen=True)
class _Source:
    kind: tuple[str, str, str]
    width: int  # as displayed, after EXIF orientation
    height: int
    loader: str | None  # None: BMP through OpenCV
    has_alpha: bool


def _probe(data: bytes, limits: EditLimits) -> _Source:
    if not data:
        raise ImageInvalid("the input is empty", field="input")
    loader = _loader_of(data)
    if loader is None:
        size = _bmp_size(data)
        if size is None:
            raise ImageInvalid(
                "the input is not an image Kiln can read (JPEG, PNG, WebP, GIF, TIFF, AVIF, "
                "HEIC or BMP)",
                field="input",
            )
        _check_pixels(*size, limits.max_input_megapixels, "input")
        return _Source(_BMP, size[0], size[1], None, has_alpha=False)
    if loader not in _LOADERS:
        name = loader.removeprefix("VipsForeignLoad").removesuffix("Buffer")
        raise ImageInvalid(f"{name} input is not accepted; send a raster image", field="input")
    try:
        header = pyvips.Image.new_from_buffer(data, "", access="sequential")
        width, height = header.width, header.height
        orientation = header.get("orientation") if "orientation" in header.get_fields() else 1
        has_alpha = bool(header.hasalpha())
        compression = (
            header.get("heif-compression") if "heif-compression" in header.get_fields() else ""
        )
    except pyvips.Error as exc:
        raise ImageInvalid(f"the input image cannot be read: {_first_line(exc)}") from None
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    _check_pixels(width, height, limits.max_input_megapixels, "input")
    kind = _AVIF if compression == "av1" else _LOADERS[loader]
    return _Source(kind, width, height, loader, has_alpha)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[-1].strip() if text else type(exc).__name__


def probe_image(data: bytes, limits: EditLimits) -> ImageObject:
    """The input object from the header alone; ImageInvalid when the image is refused."""
    source = _probe(data, limits)
    return _object(source.kind, source.width, source.height)


# --- geometry -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """What resizing does: scale the whole image, then crop or embed to the final box."""

    scale: float
    box: tuple[int, int]  # final width, height
    mode: str  # "none" | "crop" | "embed"
    smart: bool = False


def _side(value: object, original: int) -> float | None:
    if value == "auto" or value is None:
        return None
    if isinstance(value, str) and value.endswith("%"):
        return original * int(value[:-1]) / 100
    return float(value)  # type: ignore[arg-type]


def _plan(resizing: Mapping[str, Any], width: int, height: int) -> _Plan:
    fit = resizing["fit"]
    kind = fit["type"]
    w = _side(resizing["width"], width)
    h = _side(resizing["height"], height)
    if w is None and h is None:
        return _Plan(1.0, (width, height), "none")
    if kind == "crop":
        # One side given: the other keeps its length, and the image covers the box.
        box_w = w if w is not None else float(width)
        box_h = h if h is not None else float(height)
        scale = max(box_w / width, box_h / height)
        return _Plan(scale, (_px(box_w), _px(box_h)), "crop", smart=fit.get("crop") == "smart")
    if w is None or h is None:
        # Any other fit with one side: the other follows the aspect ratio.
        scale = w / width if w is not None else h / height  # type: ignore[operator]
        return _Plan(scale, (_px(width * scale), _px(height * scale)), "none")
    if kind == "cover":
        scale = max(w / width, h / height)
        return _Plan(scale, (_px(width * scale), _px(height * scale)), "none")
    scale = min(w / width, h / height)
    if kind == "bounds":
        return _Plan(scale, (_px(width * scale), _px(height * scale)), "none")
    return _Plan(scale, (_px(w), _px(h)), "embed")  # canvas


def _px(value: float) -> int:
    return max(1, round(value))


# --- decode and resize ----------------------------------------------------------------------


def _normalize(image: pyvips.Image) -> pyvips.Image:
    """8-bit sRGB, with alpha when the input has one."""
    alpha = image.hasalpha()
    if image.interpretation not in ("srgb",) or image.format != "uchar":
        image = image.colourspace("srgb")
        if image.format != "uchar":
            image = image.cast("uchar")
    if image.bands == 2 or (alpha and image.bands < 4):
        image = image[0].bandjoin([image[0], image[0], image[1]])
    elif image.bands == 1:
        image = image.bandjoin([image, image])
    elif image.bands > 4:
        image = image[:4] if alpha else image[:3]
    return image.copy(interpretation="srgb")


def _decode(data: bytes, source: _Source, plan: _Plan, upscale: object) -> pyvips.Image:
    target_w = _px(source.width * plan.scale)
    target_h = _px(source.height * plan.scale)
    try:
        if source.loader is None:
            array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if array is None:
                raise ImageInvalid("the BMP input cannot be decoded", field="input")
            image = pyvips.Image.new_from_array(np.ascontiguousarray(array[:, :, ::-1]))
            image = image.copy(interpretation="srgb")
            if plan.scale != 1.0:
                image = image.resize(plan.scale, kernel=_kernel(plan.scale, upscale))
            return _normalize(image)
        if plan.scale < 1.0:
            # Shrink-on-load: JPEG, WebP and HEIF decode straight at a fraction of their
            # size, which is most of the speed and memory of a downscale.
            image = pyvips.Image.thumbnail_buffer(
                data,
                target_w,
                height=target_h,
                size="force",
                fail_on="error",
            )
            return _normalize(image).copy_memory()
        image = pyvips.Image.new_from_buffer(data, "", fail_on="error").autorot()
        image = _normalize(image)
        if plan.scale != 1.0:
            image = image.resize(plan.scale, kernel=_kernel(plan.scale, upscale))
        return image.copy_memory()
    except pyvips.Error as exc:
        raise ImageInvalid(
            f"the input image cannot be decoded: {_first_line(exc)}", field="input"
        ) from None


def _kernel(scale: float, upscale: object) -> str:
    if upscale is not None:
        return "lanczos3"
    return "linear" if scale > 1.0 else "lanczos3"


def _finish_geometry(image: pyvips.Image, plan: _Plan, fill: tuple[int, ...]) -> pyvips.Image:
    box_w, box_h = plan.box
    if plan.mode == "crop":
        box_w, box_h = min(box_w, image.width), min(box_h, image.height)
        if plan.smart:
            return image.smartcrop(box_w, box_h, interesting="attention")
        left = (image.width - box_w) // 2
        top = (image.height - box_h) // 2
        return image.crop(left, top, box_w, box_h)
    if plan.mode == "embed":
        image = _with_fill_bands(image, fill)
        left = (box_w - image.width) // 2
        top = (box_h - image.height) // 2
        return image.embed(
            left, top, box_w, box_h, extend="background", background=_fill(image, fill)
        )
    return image


def _upscale_finish(image: pyvips.Image, upscale: object, scale: float) -> pyvips.Image:
    if upscale is None or scale <= 1.0:
        return image
    name = upscale if isinstance(upscale, str) else "photo"
    if name == "smart_resize":
        return image
    if name == "faces":
        image = _bilateral(image, 5, 30)
        return _sharpen(image, 0.8)
    if name == "digital_art":
        return _sharpen(image, 2.5)
    return _sharpen(image, 1.5)  # smart_enhance, photo


# --- pixel operations -----------------------------------------------------------------------


def _split_alpha(image: pyvips.Image) -> tuple[pyvips.Image, pyvips.Image | None]:
    if image.hasalpha():
        return image[:3], image[3]
    return image, None


def _join_alpha(rgb: pyvips.Image, alpha: pyvips.Image | None) -> pyvips.Image:
    rgb = rgb.cast("uchar").copy(interpretation="srgb")
    return rgb if alpha is None else rgb.bandjoin(alpha.cast("uchar"))


def _to_array(image: pyvips.Image) -> np.ndarray:
    return np.asarray(image.numpy(), dtype=np.uint8)


def _from_array(array: np.ndarray) -> pyvips.Image:
    image = pyvips.Image.new_from_array(np.ascontiguousarray(array))
    return image.copy(interpretation="srgb" if image.bands >= 3 else "b-w")


def _bilateral(image: pyvips.Image, diameter: int, sigma: float) -> pyvips.Image:
    rgb, alpha = _split_alpha(image)
    filtered = cv2.bilateralFilter(_to_array(rgb), diameter, sigma, sigma)
    return _join_alpha(_from_array(filtered), alpha)


def _sharpen(image: pyvips.Image, amount: float) -> pyvips.Image:
    """An unsharp mask, radius 1: `image + amount * (image - blurred)` on the colour bands.

    Integer Gaussian and arithmetic keep it at a few milliseconds a megapixel, a tenth of
    libvips' `sharpen`, which converts to LAB and back."""
    if amount <= 0:
        return image
    rgb, alpha = _split_alpha(image)
    blurred = rgb.gaussblur(1.0, precision="integer")
    return _join_alpha(rgb + (rgb - blurred) * amount, alpha)


def _decompress(image: pyvips.Image, level: object, source: _Source) -> pyvips.Image:
    if level is None:
        return image
    if level == "auto":
        if source.kind[2] != "JPEG":
            return image
        level = "moderate"
    if level == "strong":
        return _bilateral(image, 9, 45)
    return _bilateral(image, 5, 25)


def _adjust(image: pyvips.Image, adjustments: Mapping[str, Any]) -> pyvips.Image:
    hdr = adjustments["hdr"]
    intensity = hdr["intensity"] if isinstance(hdr, Mapping) else hdr
    exposure = adjustments["exposure"]
    saturation = adjustments["saturation"]
    contrast = adjustments["contrast"]
    sharpness = adjustments["sharpness"]
    if not any((intensity, exposure, saturation, contrast, sharpness)):
        return image
    rgb, alpha = _split_alpha(image)
    if intensity:
        rgb = _clahe(rgb, intensity / 100)
    if exposure:
        # Exposure works in linear light: +100 is two stops brighter, -100 two darker.
        linear = rgb.colourspace("scrgb") * (2 ** (exposure / 50))
        rgb = linear.colourspace("srgb")
    if saturation or contrast:
        lch = rgb.colourspace("lch")
        lightness, chroma, hue = lch[0], lch[1], lch[2]
        if saturation:
            chroma = chroma * (1 + saturation / 100)
        if contrast:
            slope = 1 + contrast / 100 if contrast < 0 else 1 + contrast / 50
            lightness = (lightness - 50) * slope + 50
        rgb = lightness.bandjoin([chroma, hue]).copy(interpretation="lch").colourspace("srgb")
    if sharpness:
        rgb = _sharpen(rgb.cast("uchar").copy(interpretation="srgb"), 0.5 + sharpness / 25)
    return _join_alpha(rgb, alpha)


def _clahe(rgb: pyvips.Image, blend: float) -> pyvips.Image:
    array = _to_array(rgb.cast("uchar"))
    lab = cv2.cvtColor(array, cv2.COLOR_RGB2LAB)
    tiles = max(2, min(16, round(max(array.shape[:2]) / 128)))
    clahe = cv2.createCLAHE(clipLimit=2.5, tileGridSize=(tiles, tiles))
    lab[:, :, 0] = clahe.apply(lab[:, :, 0])
    equalized = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    mixed = cv2.addWeighted(equalized, blend, array, 1 - blend, 0)
    return _from_array(mixed)


# --- background -----------------------------------------------------------------------------

GRABCUT_MAX_SIDE = 800


def foreground_mask(image: pyvips.Image, use_alpha: bool = False) -> pyvips.Image:
    """A 0..255 mask of the foreground, the size of `image`: GrabCut on a ≤ 800 px copy seeded
    with a rectangle inset 5 % from every border, scaled back and feathered."""
    if use_alpha and image.hasalpha():
        return image[3]
    rgb, _ = _split_alpha(image)
    scale = min(1.0, GRABCUT_MAX_SIDE / max(rgb.width, rgb.height))
    small = rgb.resize(scale) if scale < 1.0 else rgb
    array = _to_array(small)[:, :, ::-1].copy()
    height, width = array.shape[:2]
    inset_x, inset_y = max(1, round(width * 0.05)), max(1, round(height * 0.05))
    rect = (inset_x, inset_y, width - 2 * inset_x, height - 2 * inset_y)
    mask = np.zeros((height, width), np.uint8)
    background = np.zeros((1, 65), np.float64)
    foreground = np.zeros((1, 65), np.float64)
    cv2.grabCut(array, mask, rect, background, foreground, 3, cv2.GC_INIT_WITH_RECT)
    binary = np.where((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD), 255, 0).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, kernel)
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, kernel)
    small_mask = pyvips.Image.new_from_array(binary).copy(interpretation="b-w")
    full = small_mask.resize(rgb.width / width, vscale=rgb.height / height, kernel="linear")
    full = full.crop(0, 0, min(full.width, rgb.width), min(full.height, rgb.height))
    if (full.width, full.height) != (rgb.width, rgb.height):
        full = full.embed(0, 0, rgb.width, rgb.height, extend="copy")
    feather = max(0.6, max(rgb.width, rgb.height) / 1500)
    return full.gaussblur(feather).cast("uchar")


_BLUR_SIGMA = {"low": 0.006, "medium": 0.012, "high": 0.024}


def _blur_background(
    image: pyvips.Image, mask: pyvips.Image, blur: Mapping[str, Any]
) -> pyvips.Image:
    rgb, alpha = _split_alpha(image)
    side = max(rgb.width, rgb.height)
    sigma = max(1.5, _BLUR_SIGMA[blur["level"]] * side)
    if blur["type"] == "lens":
        radius = max(2, round(sigma * 1.5))
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        kernel = disc.astype(np.float32) / disc.sum()
        blurred = _from_array(cv2.filter2D(_to_array(rgb), -1, kernel))
    else:
        blurred = rgb.gaussblur(sigma)
    weight = mask.cast("float") / 255
    mixed = rgb.cast("float") * weight + blurred.cast("float") * (1 - weight)
    return _join_alpha(mixed, alpha)


def _background(image: pyvips.Image, background: Mapping[str, Any]) -> pyvips.Image:
    remove = background["remove"]
    blur = background["blur"]
    use_alpha = bool(background.get("use_original_alpha"))
    if remove:
        mask = foreground_mask(image, use_alpha)
        rgb, alpha = _split_alpha(image)
        if alpha is not None:
            mask = (mask.cast("float") * alpha.cast("float") / 255).cast("uchar")
        image = rgb.bandjoin(mask).copy(interpretation="srgb")
        if isinstance(remove, Mapping) and remove.get("clipping"):
            image = _clip_to(image, mask)
        return image
    if blur:
        options = blur if isinstance(blur, Mapping) else {"type": "regular", "level": "medium"}
        return _blur_background(image, foreground_mask(image, use_alpha), options)
    return image


def _clip_to(image: pyvips.Image, mask: pyvips.Image) -> pyvips.Image:
    left, top, width, height = (mask > 127).find_trim(threshold=0.5, background=[0])
    if width < 1 or height < 1:
        return image
    return image.crop(left, top, width, height)


def _fill_colour(color: object, has_alpha: bool, output_kind: str) -> tuple[int, ...]:
    """The colour of empty areas, as RGBA (the alpha 0 when they stay transparent)."""
    if isinstance(color, str) and color.startswith("#"):
        rgb = tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))
        return (*rgb, 255)
    if color == "transparent" or (has_alpha and output_kind in _ALPHA_OUTPUTS):
        return (255, 255, 255, 0)
    return (*_WHITE, 255)


def _with_fill_bands(image: pyvips.Image, fill: tuple[int, ...]) -> pyvips.Image:
    """Adds an opaque alpha when the fill is transparent, so embedding can leave it empty."""
    if fill[3] < 255 and not image.hasalpha():
        return image.bandjoin(255).copy(interpretation="srgb")
    return image


def _fill(image: pyvips.Image, fill: tuple[int, ...]) -> list[int]:
    return list(fill) if image.hasalpha() else list(fill[:3])


# --- privacy --------------------------------------------------------------------------------

DETECT_MAX_SIDE = 1280


def _cascade(name: str) -> cv2.CascadeClassifier:
    classifier = cv2.CascadeClassifier(cv2.data.haarcascades + name)  # type: ignore[attr-defined]
    if classifier.empty():
        raise RuntimeError(f"OpenCV's cascade {name} is missing from this installation")
    return classifier


def detect(
    image: pyvips.Image, cascade_name: str, min_neighbors: int = 4
) -> list[tuple[int, int, int, int]]:
    """Regions (left, top, width, height) in `image`'s pixels that the Haar cascade finds."""
    rgb, _ = _split_alpha(image)
    scale = min(1.0, DETECT_MAX_SIDE / max(rgb.width, rgb.height))
    small = rgb.resize(scale) if scale < 1.0 else rgb
    grey = cv2.cvtColor(_to_array(small), cv2.COLOR_RGB2GRAY)
    grey = cv2.equalizeHist(grey)
    found = _cascade(cascade_name).detectMultiScale(
        grey, scaleFactor=1.08, minNeighbors=min_neighbors, minSize=(24, 12)
    )
    return [
        (round(x / scale), round(y / scale), round(w / scale), round(h / scale))
        for (x, y, w, h) in (found if len(found) else [])
    ]


def blur_regions(image: pyvips.Image, regions: list[tuple[int, int, int, int]]) -> pyvips.Image:
    """Blurs each region beyond reading (pixelated, then smoothed)."""
    for x, y, w, h in regions:
        left, top = max(0, x), max(0, y)
        width = min(w, image.width - left)
        height = min(h, image.height - top)
        if width < 2 or height < 2:
            continue
        patch = image.crop(left, top, width, height)
        block = max(2, min(width, height) // 6)
        coarse = patch.resize(1 / block, kernel="linear")
        smooth = coarse.resize(width / coarse.width, vscale=height / coarse.height, kernel="linear")
        smooth = smooth.crop(0, 0, width, height).gaussblur(max(1.0, block / 2))
        image = image.insert(smooth.cast("uchar"), left, top)
    return image


def _privacy(image: pyvips.Image, privacy: Mapping[str, Any]) -> pyvips.Image:
    if privacy["blur_car_plate"]:
        plates = detect(image, "haarcascade_russian_plate_number.xml", min_neighbors=3)
        image = blur_regions(image, plates)
    if privacy["identity_crop"]:
        faces = detect(image, "haarcascade_frontalface_default.xml", min_neighbors=5)
        if faces:
            image = _identity_crop(image, max(faces, key=lambda f: f[2] * f[3]))
    return image


def _identity_crop(image: pyvips.Image, face: tuple[int, int, int, int]) -> pyvips.Image:
    x, y, w, h = face
    width = min(image.width, round(w * 2.4))
    height = min(image.height, round(width * 4 / 3))
    left = min(max(0, round(x + w / 2 - width / 2)), image.width - width)
    top = min(max(0, round(y - h * 0.7)), image.height - height)
    return image.crop(left, top, width, height)


# --- padding --------------------------------------------------------------------------------


def _padding(image: pyvips.Image, padding: str, fill: tuple[int, ...]) -> pyvips.Image:
    sides = parse_padding(padding)
    width, height = image.width, image.height

    def pixels(length: Any, side: int) -> int:
        return round(side * length.value / 100) if length.unit == "%" else int(length.value)

    top, bottom = pixels(sides.top, height), pixels(sides.bottom, height)
    right, left = pixels(sides.right, width), pixels(sides.left, width)
    if max(top, bottom) > height / 2 or max(left, right) > width / 2:
        raise EditRequestInvalid(
            {
                "operations.padding": [
                    f"padding {padding!r} is more than half of the {width}x{height} image"
                ]
            }
        )
    inner_w, inner_h = width - left - right, height - top - bottom
    if inner_w < 1 or inner_h < 1:
        raise EditRequestInvalid(
            {"operations.padding": [f"padding {padding!r} leaves no room for the image"]}
        )
    scale = min(inner_w / width, inner_h / height)
    content = image.resize(scale) if scale < 1.0 else image
    content = _with_fill_bands(content, fill)
    x = left + (inner_w - content.width) // 2
    y = top + (inner_h - content.height) // 2
    return content.embed(x, y, width, height, extend="background", background=_fill(content, fill))


# --- encode ---------------------------------------------------------------------------------


def _strip_metadata(image: pyvips.Image) -> pyvips.Image:
    image = image.copy()
    for name in image.get_fields():
        if name.startswith(("exif", "xmp", "iptc", "icc-profile", "orientation", "gif-", "png-")):
            image.remove(name)
    return image


def _flatten(image: pyvips.Image, fill: tuple[int, ...]) -> pyvips.Image:
    if not image.hasalpha():
        return image
    background = list(fill[:3]) if fill[3] == 255 else list(_WHITE)
    return image.flatten(background=background).cast("uchar").copy(interpretation="srgb")


def _encode(image: pyvips.Image, output: Mapping[str, Any], fill: tuple[int, ...]) -> bytes:
    fmt = output["format"]
    kind = fmt["type"]
    metadata = output.get("metadata", {})
    space = metadata.get("color_space", {"type": "RGB"})
    if kind not in _ALPHA_OUTPUTS or space["type"] == "CMYK":
        image = _flatten(image, fill)
    image = _strip_metadata(image)
    dpi = metadata.get("dpi")
    if dpi:
        image = image.copy(xres=dpi / 25.4, yres=dpi / 25.4)
    if space["type"] == "CMYK":
        image = image.icc_transform("cmyk", input_profile="srgb")
    keep = "icc" if space["type"] == "CMYK" else "none"
    try:
        if kind == "jpeg":
            # EXIF is where JPEG keeps a resolution; it is rebuilt from the stripped image.
            return bytes(
                image.jpegsave_buffer(
                    Q=fmt["quality"],
                    interlace=fmt["progressive"],
                    optimize_coding=True,
                    keep="exif" if dpi else keep,
                )
            )
        if kind == "png":
            return bytes(
                image.pngsave_buffer(compression=_PNG_COMPRESSION[fmt["compression"]], keep=keep)
            )
        compression = fmt["compression"]
        lossless = compression["type"] == "lossless"
        quality = compression.get("quality", 75)
        if kind == "webp":
            if lossless:
                return bytes(image.webpsave_buffer(lossless=True, keep=keep))
            return bytes(image.webpsave_buffer(Q=quality, keep=keep))
        if kind == "avif":
            return bytes(
                image.heifsave_buffer(
                    compression="av1", lossless=lossless, Q=quality, effort=2, keep=keep
                )
            )
        if lossless:
            return bytes(image.tiffsave_buffer(compression="lzw", keep=keep))
        return bytes(image.tiffsave_buffer(compression="jpeg", Q=quality, keep=keep))
    except pyvips.Error as exc:
        raise ImageInvalid(
            f"the output cannot be encoded: {_first_line(exc)}", field="output"
        ) from None


# --- the whole edit -------------------------------------------------------------------------


def edit_image(data: bytes, request: Mapping[str, Any], limits: EditLimits) -> EditedImage:
    """Runs one normalized request on one encoded image."""
    source = _probe(data, limits)
    operations = request["operations"]
    output = request["output"]
    kind = output["format"]["type"]
    restorations = operations["restorations"]
    upscale = restorations["upscale"]
    background = operations["background"]
    plan = _plan(operations["resizing"], source.width, source.height)
    final_w, final_h = plan.box
    _check_pixels(final_w, final_h, limits.max_output_megapixels, "output")
    keeps_alpha = source.has_alpha or bool(background["remove"])
    fill = _fill_colour(background.get("color"), keeps_alpha, kind)

    image = _decode(data, source, plan, upscale)
    if plan.scale > 1.0:
        image = _upscale_finish(image, upscale, plan.scale)
    image = _decompress(image, restorations["decompress"], source)
    image = _finish_geometry(image, plan, fill)
    if restorations["polish"]:
        image = _sharpen(_bilateral(image, 5, 20), 1.0)
    image = _adjust(image, operations["adjustments"])
    image = _background(image, background)
    color = background.get("color")
    if (
        image.hasalpha()
        and isinstance(color, str)
        and color.startswith("#")
        and not background["remove"]
    ):
        # A colour with no removal fills what was transparent in the input.
        image = _flatten(image, fill)
    elif background["remove"] and fill[3] == 255:
        image = _flatten(image, fill)
    image = _privacy(image, operations["privacy"])
    if "padding" in operations:
        image = _padding(image, operations["padding"], fill)
    _check_pixels(image.width, image.height, limits.max_output_megapixels, "output")
    encoded = _encode(image, output, fill)
    return EditedImage(
        data=encoded,
        input=_object(source.kind, source.width, source.height),
        output=_object(_OUTPUTS[kind], image.width, image.height),
    )
