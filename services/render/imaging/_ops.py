"""The pixel operations of the edit pipeline (`pipeline` documents what each one does).

Every operation takes and returns an 8-bit sRGB `pyvips.Image`, with alpha as a fourth band
when there is one; alpha passes through colour operations untouched.

Memory: libvips images are lazy and the pipeline's source is read once, top to bottom. An
operation that must read its input more than once (a mask computed from a reduced copy, then
applied to the full image) first `settle`s it in memory; work done in NumPy happens on reduced
copies (segmentation, detection, large blurs) or in place on one array (the bilateral filter).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import cv2
import numpy as np
import pyvips

from services.render.imaging._codec import RGBA

Box = tuple[int, int, int, int]  # left, top, width, height


# --- helpers --------------------------------------------------------------------------------


def settle(image: pyvips.Image) -> pyvips.Image:
    """`image` computed into memory, so it can be read again (a no-op for memory images)."""
    return image.copy_memory()


def split_alpha(image: pyvips.Image) -> tuple[pyvips.Image, pyvips.Image | None]:
    if image.hasalpha():
        return image[:3], image[3]
    return image, None


def join_alpha(rgb: pyvips.Image, alpha: pyvips.Image | None) -> pyvips.Image:
    rgb = rgb.cast("uchar").copy(interpretation="srgb")
    return rgb if alpha is None else rgb.bandjoin(alpha.cast("uchar"))


def to_array(image: pyvips.Image) -> np.ndarray:
    """The pixels as a (writable) uint8 array, computing the image once."""
    return np.asarray(image.numpy(), dtype=np.uint8)


def from_array(array: np.ndarray) -> pyvips.Image:
    """A memory image over `array`'s buffer (no copy)."""
    array = np.ascontiguousarray(array)
    interpretation = "srgb" if array.ndim == 3 and array.shape[2] >= 3 else "b-w"
    return pyvips.Image.new_from_array(array, interpretation=interpretation)


def shrunk(image: pyvips.Image, max_side: int) -> tuple[pyvips.Image, float]:
    """A copy of `image` at most `max_side` pixels long, and the scale it was taken at."""
    scale = min(1.0, max_side / max(image.width, image.height))
    return (image.resize(scale) if scale < 1.0 else image), scale


def exactly(image: pyvips.Image, width: int, height: int) -> pyvips.Image:
    """`image`, a pixel or so off `width` x `height` after a resize, cropped or extended to
    exactly that size."""
    if (image.width, image.height) == (width, height):
        return image
    image = image.crop(0, 0, min(image.width, width), min(image.height, height))
    if (image.width, image.height) != (width, height):
        image = image.embed(0, 0, width, height, extend="copy")
    return image


def stretched(image: pyvips.Image, width: int, height: int) -> pyvips.Image:
    """`image` resized to exactly `width` x `height` (a reduced copy brought back)."""
    if (image.width, image.height) == (width, height):
        return image
    grown = image.resize(width / image.width, vscale=height / image.height, kernel="linear")
    return exactly(grown, width, height)


# --- resampling and restorations ------------------------------------------------------------


def sharpen(image: pyvips.Image, amount: float, sigma: float = 1.0) -> pyvips.Image:
    """An unsharp mask on the colour bands: `image + amount * (image - gaussblur(sigma))`.

    Integer Gaussian and arithmetic keep it at a few milliseconds a megapixel, a tenth of
    libvips' `sharpen`, which converts to LAB and back."""
    if amount <= 0:
        return image
    rgb, alpha = split_alpha(image)
    blurred = rgb.gaussblur(sigma, precision="integer")
    return join_alpha(rgb + (rgb - blurred) * amount, alpha)


def _in_strips(array: np.ndarray, reach: int, filter_: Callable[[np.ndarray], np.ndarray]) -> None:
    """Applies a neighbourhood filter of radius `reach` to `array` in place, a band of rows at
    a time, so only one full-size array exists (the filter's output is a band)."""
    height = array.shape[0]
    step = max(256, 4 * reach)
    above: np.ndarray | None = None  # the original rows just above the current band
    for top in range(0, height, step):
        bottom = min(height, top + step)
        below = array[bottom : min(height, bottom + reach)]
        parts = [p for p in (above, array[top:bottom], below) if p is not None]
        block = np.concatenate(parts) if len(parts) > 1 else array[top:bottom].copy()
        start = 0 if above is None else len(above)
        # Keep the band's last original rows for the next band before they are overwritten.
        above = array[max(top, bottom - reach) : bottom].copy()
        array[top:bottom] = filter_(block)[start : start + bottom - top]


def _bilateral_in_place(array: np.ndarray, diameter: int, sigma: float) -> None:
    _in_strips(
        array,
        diameter // 2 + 1,
        lambda block: cv2.bilateralFilter(block, diameter, sigma, sigma),
    )


def _colours(image: pyvips.Image) -> tuple[np.ndarray, pyvips.Image | None]:
    """The colour bands as an array of their own, and the alpha band (still an image)."""
    if image.hasalpha():
        image = settle(image)  # read twice: for the colours, then for the alpha
    rgb, alpha = split_alpha(image)
    return to_array(rgb), alpha


def bilateral(image: pyvips.Image, diameter: int, sigma: float) -> pyvips.Image:
    """An edge-preserving smoothing (OpenCV's bilateral filter): flat areas lose noise and
    compression blocks, edges stay."""
    array, alpha = _colours(image)
    _bilateral_in_place(array, diameter, sigma)
    return join_alpha(from_array(array), alpha)


def noise_sigma(array: np.ndarray) -> float:
    """The standard deviation of an image's noise (Immerkaer's fast estimate: the mean
    absolute response of a Laplacian difference that cancels smooth structure), measured on a
    central crop of at most 768 x 768."""
    height, width = array.shape[:2]
    top, left = max(0, (height - 768) // 2), max(0, (width - 768) // 2)
    crop = np.ascontiguousarray(array[top : top + 768, left : left + 768, :3])
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.float32)
    if min(grey.shape) < 3:
        return 0.0
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    response = np.abs(cv2.filter2D(grey, -1, kernel)[1:-1, 1:-1])
    return float(np.sqrt(np.pi / 2) * response.mean() / 6)


def resample(image: pyvips.Image, width: int, height: int, upscale: object) -> pyvips.Image:
    """`image` grown to `width` x `height` (the only way an image grows), by plain
    interpolation or the `upscale` method's classical stand-in."""
    scale = width / image.width
    vscale = height / image.height
    if upscale is None:
        # Claid: with no upscale model, plain interpolation.
        return exactly(image.resize(scale, vscale=vscale, kernel="cubic"), width, height)
    name = upscale if isinstance(upscale, str) else "photo"
    grown = exactly(image.resize(scale, vscale=vscale, kernel="lanczos3"), width, height)
    # An edge blurred over `scale` pixels needs an unsharp mask of about that radius.
    sigma = min(2.5, max(0.8, 0.5 * max(scale, vscale)))
    if name == "smart_resize":
        return grown  # the sharpest plain kernel, nothing added
    if name == "faces":
        # Smooth skin first (a bilateral keeps the features' edges), then a mild sharpen.
        return sharpen(bilateral(grown, 7, 25), 0.6, sigma)
    if name == "digital_art":
        # Flat colour areas and hard edges: flatten the ringing in flat areas, sharpen lightly.
        return sharpen(bilateral(grown, 5, 35), 0.5, sigma)
    return sharpen(grown, 1.0, sigma)  # smart_enhance and photo (every version)


#: decompress level -> bilateral (diameter, sigma)
DECOMPRESS = {"moderate": (5, 25.0), "strong": (9, 45.0)}
#: Below this estimated JPEG quality, `decompress: auto` works as `strong`.
LOW_JPEG_QUALITY = 50


def decompress_level(level: object, kind: str, jpeg_quality: int | None) -> str | None:
    """What `decompress` does for an input: `auto` is strong for a JPEG of low estimated
    quality, moderate for other JPEGs, and nothing for the other formats."""
    if level is None:
        return None
    if level == "auto":
        if kind != "JPEG":
            return None
        if jpeg_quality is not None and jpeg_quality < LOW_JPEG_QUALITY:
            return "strong"
        return "moderate"
    return str(level)


def decompress(image: pyvips.Image, level: str | None) -> pyvips.Image:
    if level is None:
        return image
    diameter, sigma = DECOMPRESS[level]
    return bilateral(image, diameter, sigma)


#: Polish's unsharp mask: radius (sigma) and amount where an edge stands clear of the noise.
_POLISH_SIGMA = 1.5
_POLISH_AMOUNT = 0.7


def _polish_block(block: np.ndarray, diameter: int, sigma: float, threshold: float) -> np.ndarray:
    smooth = cv2.bilateralFilter(block, diameter, sigma, sigma).astype(np.float32)
    detail = smooth - cv2.GaussianBlur(smooth, (0, 0), _POLISH_SIGMA)
    # A soft threshold (a "cored" unsharp mask): differences the size of the remaining grain
    # are left alone, edges get the full amount.
    strength = np.abs(detail).max(axis=2, keepdims=True)
    gain = np.clip((strength - threshold) / threshold, 0.0, 1.0) * _POLISH_AMOUNT
    return np.asarray(np.clip(smooth + detail * gain + 0.5, 0, 255), dtype=np.uint8)


def polish(image: pyvips.Image) -> pyvips.Image:
    """A light denoise matched to the noise measured in the image (a bilateral filter whose
    colour sigma is 2.5 noise sigmas, within 15..60), then an unsharp mask (radius 1.5) that
    leaves grain-sized differences alone and lifts edges."""
    array, alpha = _colours(image)
    noise = noise_sigma(array)
    sigma = min(60.0, max(15.0, 2.5 * noise))
    diameter = 5 if noise < 6 else 7
    threshold = max(2.0, 0.6 * noise)
    reach = diameter // 2 + 3 * round(_POLISH_SIGMA) + 2
    _in_strips(array, reach, lambda block: _polish_block(block, diameter, sigma, threshold))
    return join_alpha(from_array(array), alpha)


# --- adjustments ----------------------------------------------------------------------------


def adjust(image: pyvips.Image, adjustments: Mapping[str, Any]) -> pyvips.Image:
    hdr = adjustments["hdr"]
    intensity = int(hdr["intensity"] if isinstance(hdr, Mapping) else hdr)
    exposure = int(adjustments["exposure"])
    saturation = int(adjustments["saturation"])
    contrast = int(adjustments["contrast"])
    sharpness = int(adjustments["sharpness"])
    if not any((intensity, exposure, saturation, contrast, sharpness)):
        return image
    if intensity:
        image = settle(image)  # CLAHE reads the lightness, then the colours again
    rgb, alpha = split_alpha(image)
    if intensity:
        rgb = clahe(rgb, intensity / 100)
    if exposure:
        # In linear light, as a camera's exposure: +100 is two stops brighter, -100 two darker.
        rgb = (rgb.colourspace("scrgb") * 2 ** (exposure / 50)).colourspace("srgb")
    if saturation or contrast:
        lch = rgb.colourspace("lch")
        lightness, chroma, hue = lch[0], lch[1], lch[2]
        if saturation:
            chroma = chroma * (1 + saturation / 100)  # -100: no chroma at all, grey
        if contrast:
            # Lightness spread around mid-grey; +100 triples it, -100 flattens to grey.
            slope = 1 + contrast / 100 if contrast < 0 else 1 + contrast / 50
            lightness = (lightness - 50) * slope + 50
        rgb = lightness.bandjoin([chroma, hue]).copy(interpretation="lch").colourspace("srgb")
    if sharpness:
        # 0.5 + s/25: sharpness 25 is the unsharp mask of amount 1.5 the benchmark compares.
        rgb = sharpen(rgb.cast("uchar").copy(interpretation="srgb"), 0.5 + sharpness / 25)
    return join_alpha(rgb, alpha)


def clahe(rgb: pyvips.Image, blend: float) -> pyvips.Image:
    """Local contrast (HDR look): CLAHE on the LAB lightness, mixed with the original lightness
    by `blend`; the colour (a, b) is untouched. `rgb` must be in memory (read twice)."""
    lab = rgb.colourspace("lab")
    lightness = to_array((lab[0] * 2.55 + 0.5).cast("uchar"))
    tiles = max(2, min(16, round(max(lightness.shape) / 128)))
    equalized = cv2.createCLAHE(clipLimit=2.5, tileGridSize=(tiles, tiles)).apply(lightness)
    del lightness
    target = from_array(equalized).cast("float") / 2.55
    mixed = lab[0] + (target - lab[0]) * blend
    return mixed.bandjoin([lab[1], lab[2]]).copy(interpretation="lab").colourspace("srgb")


# --- background -----------------------------------------------------------------------------

#: GrabCut's graph cut grows faster than the pixel count: on a grainy 12 MP photo it takes
#: 4-12 s at 800 px and 1-2 s at 512, and the mask is feathered when scaled back anyway.
GRABCUT_MAX_SIDE = 512
GRABCUT_ITERATIONS = 3
#: The GrabCut rectangle's inset from each border (top, right, bottom, left), in parts of the
#: side. Products sit centred with room around them; cars are wide, fill the frame's width and
#: stand on the bottom.
_GRABCUT_INSETS = {
    "general": (0.05, 0.05, 0.05, 0.05),
    "products": (0.07, 0.07, 0.07, 0.07),
    "cars": (0.10, 0.03, 0.03, 0.03),
}
#: Foreground specks smaller than this part of the image are dropped from the mask.
_MIN_COMPONENT = 0.002


def foreground_mask(
    image: pyvips.Image, category: str = "general", use_alpha: bool = False
) -> pyvips.Image:
    """A 0..255 mask of the foreground, the size of `image`.

    GrabCut on a copy at most `GRABCUT_MAX_SIDE` long, seeded with a rectangle inset from the
    borders (by category), cleaned of specks, scaled back and feathered. With `use_alpha`, an
    input's own alpha is the mask. If GrabCut finds nothing, everything is foreground: an
    unchanged image is a better answer than an empty one."""
    if use_alpha and image.hasalpha():
        return image[3]
    rgb, _ = split_alpha(image)
    small, _ = shrunk(rgb, GRABCUT_MAX_SIDE)
    # A little blur takes grain and JPEG noise out of the colour models (and the graph cut).
    array = cv2.GaussianBlur(to_array(small)[:, :, ::-1], (0, 0), 0.8)
    height, width = array.shape[:2]
    top, right, bottom, left = _GRABCUT_INSETS.get(category, _GRABCUT_INSETS["general"])
    x0, y0 = max(1, round(width * left)), max(1, round(height * top))
    x1, y1 = width - max(1, round(width * right)), height - max(1, round(height * bottom))
    mask = np.zeros((height, width), np.uint8)
    models = (np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64))
    # GrabCut seeds its colour models with k-means on OpenCV's per-thread RNG: a fixed seed
    # makes the same image give the same mask on every call and every thread.
    cv2.setRNGSeed(0x6B696C6E)
    cv2.grabCut(
        array,
        mask,
        (x0, y0, x1 - x0, y1 - y0),
        *models,
        GRABCUT_ITERATIONS,
        cv2.GC_INIT_WITH_RECT,
    )
    binary = np.where((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD), 255, 0).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, kernel)
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    for label in range(1, count):
        if stats[label, cv2.CC_STAT_AREA] < _MIN_COMPONENT * width * height:
            binary[labels == label] = 0
    if not binary.any():
        binary[:] = 255
    full = stretched(from_array(binary), rgb.width, rgb.height)
    feather = max(0.6, max(rgb.width, rgb.height) / 1500)
    return full.gaussblur(feather).cast("uchar")


#: Background blur strength by level, as a Gaussian sigma in parts of the longer side.
BLUR_SIGMA = {"low": 0.006, "medium": 0.012, "high": 0.024}
#: Large blurs are computed on a copy reduced so the blur is about this many pixels wide: a
#: blurred image has no detail to lose by being enlarged again, and a sigma of 96 px on 12 MP
#: would cost seconds and a full-size float copy.
_SMALL_SIGMA = 3.0


def blur_background(
    image: pyvips.Image, mask: pyvips.Image, blur: Mapping[str, Any]
) -> pyvips.Image:
    """The background (where `mask` is low) blurred, the foreground kept sharp.

    `regular` is a Gaussian; `lens` a uniform disc, as an out-of-focus lens draws highlights.
    The blur is normalized by the background's own weight, so the foreground's colours do not
    bleed into a halo around it. `image` must be in memory."""
    rgb, alpha = split_alpha(image)
    side = max(rgb.width, rgb.height)
    sigma = max(1.5, BLUR_SIGMA[str(blur["level"])] * side)
    factor = max(1.0, sigma / _SMALL_SIGMA)
    small = rgb.resize(1 / factor) if factor > 1.0 else rgb
    small_mask = stretched(mask, small.width, small.height)
    colours = to_array(small).astype(np.float32)
    weight = 1.0 - to_array(small_mask).astype(np.float32) / 255
    reach = sigma / factor
    if blur["type"] == "lens":
        radius = max(2, round(reach * 1.5))
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        kernel = disc.astype(np.float32) / float(disc.sum())

        def spread(array: np.ndarray) -> np.ndarray:
            return np.asarray(cv2.filter2D(array, -1, kernel, borderType=cv2.BORDER_REFLECT))
    else:

        def spread(array: np.ndarray) -> np.ndarray:
            return np.asarray(cv2.GaussianBlur(array, (0, 0), reach))

    total = spread(weight)
    blurred = spread(colours * weight[:, :, None]) / np.maximum(total, 1e-3)[:, :, None]
    # Deep inside the foreground there is no background to average: a plain blur there (it
    # is hidden under the sharp foreground anyway).
    plain = spread(colours)
    blurred = np.where((total > 0.02)[:, :, None], blurred, plain)
    small_blurred = from_array(np.clip(blurred + 0.5, 0, 255).astype(np.uint8))
    background = stretched(small_blurred, rgb.width, rgb.height)
    keep = mask.cast("float") / 255
    mixed = rgb.cast("float") * keep + background.cast("float") * (1 - keep)
    return join_alpha(mixed + 0.5, alpha)


def clip_to(image: pyvips.Image, mask: pyvips.Image) -> pyvips.Image:
    """`image` cropped to the bounding box of the mask's foreground."""
    left, top, width, height = (mask > 127).find_trim(threshold=0.5, background=[0])
    if width < 1 or height < 1:
        return image
    return image.crop(left, top, width, height)


def with_fill_bands(image: pyvips.Image, fill: RGBA) -> pyvips.Image:
    """`image` with an (opaque) alpha band when the fill is transparent, so embedding can leave
    the new area empty."""
    if fill[3] < 255 and not image.hasalpha():
        return image.bandjoin(255).copy(interpretation="srgb")
    return image


def fill_pixel(image: pyvips.Image, fill: RGBA) -> list[int]:
    return list(fill) if image.hasalpha() else list(fill[:3])


def embed_on_fill(
    image: pyvips.Image, at: tuple[int, int], size: tuple[int, int], fill: RGBA
) -> pyvips.Image:
    """`image` placed at `at` (left, top) on a canvas of `size` filled with the fill colour."""
    image = with_fill_bands(image, fill)
    return image.embed(*at, *size, extend="background", background=fill_pixel(image, fill))


# --- privacy --------------------------------------------------------------------------------

#: Detection runs on a grey copy at most this long: the cascades' smallest windows (about
#: 24 px) still find a plate or a face a couple of percent of a 12 MP photo wide.
DETECT_MAX_SIDE = 1280
#: OpenCV's cascade builds every level of its image pyramid at once, about 90 bytes a pixel
#: (130 MB for 1280 x 960), so a large copy is searched in overlapping tiles of this side for
#: small objects, and once more at half size for the large ones.
DETECT_TILE = 640
_DETECT_OVERLAP = 160
PLATE_CASCADE = "haarcascade_russian_plate_number.xml"
FACE_CASCADE = "haarcascade_frontalface_default.xml"


def _cascade(name: str) -> cv2.CascadeClassifier:
    # A classifier per call, not a cached one: it keeps its pyramid buffers (tens of MB) for
    # as long as it lives, and OpenCV does not promise that one is safe to share between
    # threads. Loading the XML costs 2 to 20 ms, next to a detection's hundreds.
    classifier = cv2.CascadeClassifier(cv2.data.haarcascades + name)  # type: ignore[attr-defined]
    if classifier.empty():
        raise RuntimeError(f"OpenCV's cascade {name} is missing from this installation")
    return classifier


def _tiles(length: int) -> list[int]:
    """Tile origins along one side: tiles of DETECT_TILE overlapping by _DETECT_OVERLAP."""
    if length <= DETECT_TILE:
        return [0]
    step = DETECT_TILE - _DETECT_OVERLAP
    starts = list(range(0, length - DETECT_TILE, step))
    return [*starts, length - DETECT_TILE]


def _search(
    classifier: cv2.CascadeClassifier,
    grey: np.ndarray,
    min_neighbors: int,
    min_size: tuple[int, int],
    max_size: tuple[int, int] = (0, 0),
) -> list[Box]:
    found = classifier.detectMultiScale(
        grey,
        scaleFactor=1.08,
        minNeighbors=min_neighbors,
        minSize=min_size,
        maxSize=max_size,
    )
    return [(int(x), int(y), int(w), int(h)) for (x, y, w, h) in (found if len(found) else [])]


def detect(
    image: pyvips.Image,
    cascade_name: str,
    min_neighbors: int = 4,
    min_size: tuple[int, int] = (24, 12),
) -> list[Box]:
    """Regions (left, top, width, height), in `image`'s pixels, that the Haar cascade finds.

    An object smaller than the tiles' overlap lies whole in some tile; a larger one is found
    by the half-size pass. One found twice is reported twice (blurring or choosing the largest
    does not mind)."""
    rgb, _ = split_alpha(image)
    small, scale = shrunk(rgb, DETECT_MAX_SIDE)
    grey = cv2.equalizeHist(cv2.cvtColor(to_array(small), cv2.COLOR_RGB2GRAY))
    classifier = _cascade(cascade_name)
    height, width = grey.shape
    if max(width, height) <= DETECT_TILE:
        found = _search(classifier, grey, min_neighbors, min_size)
    else:
        found = []
        limit = (_DETECT_OVERLAP, _DETECT_OVERLAP)
        for top in _tiles(height):
            for left in _tiles(width):
                tile = grey[top : top + DETECT_TILE, left : left + DETECT_TILE]
                found += [
                    (x + left, y + top, w, h)
                    for x, y, w, h in _search(classifier, tile, min_neighbors, min_size, limit)
                ]
        half = cv2.resize(grey, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
        large = (max(min_size[0], _DETECT_OVERLAP // 2), max(min_size[1], _DETECT_OVERLAP // 4))
        found += [
            (2 * x, 2 * y, 2 * w, 2 * h)
            for x, y, w, h in _search(classifier, half, min_neighbors, large)
        ]
    return [
        (round(x / scale), round(y / scale), round(w / scale), round(h / scale))
        for x, y, w, h in found
    ]


def blur_regions(image: pyvips.Image, regions: list[Box], grow: float = 0.1) -> pyvips.Image:
    """Each region (enlarged by `grow` of its size on every side, to take the plate's rim)
    blurred beyond reading: pixelated to about six blocks across its height, then smoothed.
    `image` must be in memory when there is more than one region."""
    for x, y, w, h in regions:
        dx, dy = round(w * grow), round(h * grow)
        left, top = max(0, x - dx), max(0, y - dy)
        width = min(x + w + dx, image.width) - left
        height = min(y + h + dy, image.height) - top
        if width < 2 or height < 2:
            continue
        patch = image.crop(left, top, width, height)
        block = max(2, min(width, height) // 6)
        coarse = patch.resize(1 / block, kernel="linear")
        smooth = stretched(coarse, width, height).gaussblur(max(1.0, block / 2))
        image = image.insert(smooth.cast("uchar"), left, top)
    return image


def identity_box(width: int, height: int, face: Box) -> Box:
    """A head-and-shoulders box (3:4, 2.4 face widths wide, starting 0.7 face heights above
    the face) around `face`, kept inside a `width` x `height` image."""
    x, y, w, h = face
    box_w = min(width, round(w * 2.4))
    box_h = min(height, round(box_w * 4 / 3))
    left = min(max(0, round(x + w / 2 - box_w / 2)), width - box_w)
    top = min(max(0, round(y - h * 0.7)), height - box_h)
    return left, top, box_w, box_h


def privacy(image: pyvips.Image, options: Mapping[str, Any]) -> pyvips.Image:
    """Number plates blurred, then the identity crop (left whole when no face is found)."""
    if options["blur_car_plate"] or options["identity_crop"]:
        image = settle(image)  # read by the detector, then again to blur or crop
    if options["blur_car_plate"]:
        plates = detect(image, PLATE_CASCADE, min_neighbors=3)
        if plates:
            image = settle(blur_regions(image, plates))
    if options["identity_crop"]:
        faces = detect(image, FACE_CASCADE, min_neighbors=5, min_size=(24, 24))
        if faces:
            largest = max(faces, key=lambda face: face[2] * face[3])
            image = image.crop(*identity_box(image.width, image.height, largest))
    return image
