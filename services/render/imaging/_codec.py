"""Decoding and encoding for the edit pipeline (`pipeline` documents the behaviour).

Reading an input happens in two steps, so nothing is decoded before it is judged:

1. `probe` looks at the bytes and the header only: the loader libvips would pick must be on
   the allow-list (or the bytes a BMP, which OpenCV decodes), and width x height x pages must be
   within the input limit;
2. `load` decodes, shrinking on load when the edit makes the image smaller, applying the EXIF
   orientation and converting to 8-bit sRGB (plus alpha when the input has one).

`encode` writes the output formats of §4.3 with their options, resolution and colour space.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import cv2
import numpy as np
import pyvips

from services.runtime.errors import ImageInvalid


class Kind(NamedTuple):
    """How Claid names a file format: extension, MIME type and PIL-style format name."""

    ext: str
    mime: str
    format: str


JPEG = Kind("jpg", "image/jpeg", "JPEG")
PNG = Kind("png", "image/png", "PNG")
WEBP = Kind("webp", "image/webp", "WEBP")
GIF = Kind("gif", "image/gif", "GIF")
TIFF = Kind("tiff", "image/tiff", "TIFF")
HEIC = Kind("heic", "image/heic", "HEIF")
AVIF = Kind("avif", "image/avif", "AVIF")
BMP = Kind("bmp", "image/bmp", "BMP")

#: The libvips loader classes an input may use. Everything else libvips can open (SVG, PDF,
#: matrix, CSV, raw vips, FITS, ImageMagick...) is refused: those loaders render documents,
#: follow references or read formats nobody sends as photos, and each is attack surface.
LOADERS: Mapping[str, Kind] = {
    "VipsForeignLoadJpegBuffer": JPEG,
    "VipsForeignLoadPngBuffer": PNG,
    "VipsForeignLoadWebpBuffer": WEBP,
    "VipsForeignLoadNsgifBuffer": GIF,
    "VipsForeignLoadTiffBuffer": TIFF,
    "VipsForeignLoadHeifBuffer": HEIC,  # AVIF too: told apart by the header's compression
}

OUTPUTS: Mapping[str, Kind] = {
    "jpeg": JPEG,
    "png": PNG,
    "webp": WEBP,
    "avif": AVIF,
    "tiff": TIFF,
}
#: Output formats that can carry an alpha channel.
ALPHA_OUTPUTS = frozenset({"png", "webp", "avif", "tiff"})
_PNG_COMPRESSION = {"fast": 1, "optimal": 6, "best": 9}
_ACCEPTED = "JPEG, PNG, WebP, GIF, TIFF, AVIF, HEIC or BMP"
# The load options every decode uses: stop at the first damaged byte instead of answering grey
# pixels. thumbnail_buffer ignores its `fail_on` keyword (libvips 8.18) but honours the
# loader option string, so the option travels that way.
_FAIL_ON_ERROR = "fail_on=error"

RGBA = tuple[int, int, int, int]


@dataclass(frozen=True)
class Source:
    """What the header says about an accepted input."""

    kind: Kind
    width: int  # as displayed, after the EXIF orientation
    height: int
    pages: int
    loader: str | None  # None: a BMP, decoded by OpenCV
    has_alpha: bool
    has_profile: bool
    #: The IJG quality a JPEG's luminance table corresponds to; None for other formats.
    jpeg_quality: int | None

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


def megapixels_error(
    what: str, width: int, height: int, limit: float, pages: int = 1
) -> ImageInvalid | None:
    """The ImageInvalid for an image of `width` x `height` (x `pages`) over `limit` megapixels,
    or without pixels; None when it is within the limit."""
    field = "input" if what == "input" else "output"
    if width < 1 or height < 1 or pages < 1:
        return ImageInvalid(f"the {what} image has no pixels ({width}x{height})", field=field)
    megapixels = width * height * pages / 1e6
    if megapixels <= limit:
        return None
    size = f"{width}x{height}" + (f", {pages} pages" if pages > 1 else "")
    return ImageInvalid(
        f"the {what} image is {megapixels:.1f} megapixels ({size}); the limit is {limit:g}",
        field=field,
    )


def first_line(exc: Exception) -> str:
    """libvips' own explanation: the last line of a pyvips.Error ("VipsJpeg: premature end of
    JPEG image"), not its "unable to call ..." preamble."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


# --- probing --------------------------------------------------------------------------------


def _loader_of(data: bytes) -> str | None:
    # pyvips has no wrapper for vips_foreign_find_load_buffer; it only sniffs magic bytes.
    pointer = pyvips.vips_lib.vips_foreign_find_load_buffer(data, len(data))
    if pointer == pyvips.ffi.NULL:
        return None
    return str(pyvips.ffi.string(pointer).decode())


def bmp_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a BMP's headers, or None when `data` is not a BMP."""
    if len(data) < 26 or data[:2] != b"BM":
        return None
    header_size = struct.unpack_from("<I", data, 14)[0]
    if header_size == 12:  # OS/2 BITMAPCOREHEADER: unsigned 16-bit sides
        width, height = struct.unpack_from("<HH", data, 18)
    elif header_size >= 40 and len(data) >= 26:
        # BITMAPINFOHEADER and later: signed, a negative height means top-down rows.
        width, height = struct.unpack_from("<ii", data, 18)
    else:
        return None
    return abs(int(width)), abs(int(height))


def probe(data: bytes, max_megapixels: float) -> Source:
    """The header of an accepted input; ImageInvalid for anything refused. No pixel data is
    decoded here."""
    if not data:
        raise ImageInvalid("the input image is empty (0 bytes)", field="input")
    loader = _loader_of(data)
    if loader is None:
        size = bmp_size(data)
        if size is None:
            raise ImageInvalid(
                f"the input is not an image Kiln can read ({_ACCEPTED})", field="input"
            )
        error = megapixels_error("input", size[0], size[1], max_megapixels)
        if error is not None:
            raise error
        return Source(BMP, size[0], size[1], 1, None, False, False, None)
    if loader not in LOADERS:
        name = loader.removeprefix("VipsForeignLoad").removesuffix("Buffer").removesuffix("Source")
        raise ImageInvalid(f"{name.upper()} input is not accepted; send {_ACCEPTED}", field="input")
    try:
        # Lazy: this parses the header; pixels are decoded only when something reads them.
        header = pyvips.Image.new_from_buffer(data, "", access="sequential", fail_on="error")
        fields = set(header.get_fields())
        width, height = header.width, header.height
        pages = int(header.get("n-pages")) if "n-pages" in fields else 1
        orientation = int(header.get("orientation")) if "orientation" in fields else 1
        has_alpha = bool(header.hasalpha())
        compression = header.get("heif-compression") if "heif-compression" in fields else ""
    except pyvips.Error as exc:
        raise ImageInvalid(
            f"the input image cannot be read: {first_line(exc)}", field="input"
        ) from None
    if orientation in (5, 6, 7, 8):  # the EXIF transposing orientations swap the sides
        width, height = height, width
    # Only the first page is ever decoded, but a file of many pages is refused all the same:
    # the limit bounds what a request may ask the loaders to walk through.
    error = megapixels_error("input", width, height, max_megapixels, pages)
    if error is not None:
        raise error
    kind = AVIF if compression == "av1" else LOADERS[loader]
    return Source(
        kind=kind,
        width=width,
        height=height,
        pages=pages,
        loader=loader,
        has_alpha=has_alpha,
        has_profile="icc-profile-data" in fields,
        jpeg_quality=jpeg_quality(data) if kind is JPEG else None,
    )


# The IJG (libjpeg) luminance quantization table at quality 50; its sum is what a file's table
# is compared with. The order does not matter for a sum.
_IJG_LUMINANCE_SUM = sum((
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
))  # fmt: skip


def jpeg_quality(data: bytes) -> int | None:
    """The IJG quality (1..100) whose scaling of the standard luminance table best matches the
    file's first table, from its DQT segment; None when there is none. Encoders other than
    libjpeg use other tables, so this is an estimate, good enough to tell q30 from q90."""
    position = 2
    if data[:2] != b"\xff\xd8":
        return None
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            position += 2
            continue
        if marker == 0xDA:  # start of scan: no table before it
            return None
        length = struct.unpack_from(">H", data, position + 2)[0]
        if marker == 0xDB:
            body = data[position + 4 : position + 2 + length]
            offset = 0
            while offset < len(body):
                precision, table = body[offset] >> 4, body[offset] & 0x0F
                size = 128 if precision else 64
                values = body[offset + 1 : offset + 1 + size]
                if len(values) < size:
                    return None
                if table == 0:
                    total: int = sum(struct.unpack(">64H", values) if precision else values)
                    scale = total * 100 / _IJG_LUMINANCE_SUM
                    quality = (200 - scale) / 2 if scale <= 100 else 5000 / scale
                    return max(1, min(100, round(quality)))
                offset += 1 + size
        position += 2 + length
    return None


# --- loading --------------------------------------------------------------------------------


def normalize(image: pyvips.Image) -> pyvips.Image:
    """8-bit sRGB: three bands, four with alpha (grey, 16-bit, CMYK and LAB inputs converted)."""
    if image.interpretation != "srgb" or image.format != "uchar":
        image = image.colourspace("srgb")
        if image.format != "uchar":
            image = image.cast("uchar")
    if image.bands == 1:
        image = image.bandjoin([image, image])
    elif image.bands == 2:  # grey + alpha
        image = image[0].bandjoin([image[0], image[0], image[1]])
    elif image.bands > 4:
        image = image[:4]
    return image.copy(interpretation="srgb")


def load(data: bytes, source: Source, width: int, height: int) -> pyvips.Image:
    """The input decoded at `width` x `height` (at most its own size), oriented and normalized.

    libvips' images are lazy: with `thumbnail_buffer` the file is decoded while the result is
    read, in one sequential pass, shrinking on load (JPEG's DCT scaling, WebP's and HEIF's
    scaled decode) so a 12 MP photo edited to 1000 px never exists at full size. A damaged file
    raises pyvips.Error when its broken part is read, wherever in the pipeline that is."""
    if source.loader is None:
        return _load_bmp(data, width, height)
    options: dict[str, Any] = {}
    if source.has_profile:
        # Bring images in another colour space (Adobe RGB, Display P3, CMYK) to sRGB: the
        # profile is not copied to the output, so the pixels must already be sRGB.
        options["export_profile"] = "srgb"
    image = pyvips.Image.thumbnail_buffer(
        data,
        width,
        height=height,
        size="force",
        option_string=_FAIL_ON_ERROR,
        **options,
    )
    return normalize(image)


def _load_bmp(data: bytes, width: int, height: int) -> pyvips.Image:
    # libvips (without ImageMagick) has no BMP loader; OpenCV's is small, and the header was
    # checked against the pixel limit before this point.
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.dtype != np.uint8:
        raise ImageInvalid("the BMP input cannot be decoded", field="input")
    if array.ndim == 2:
        array = cv2.cvtColor(array, cv2.COLOR_GRAY2RGB)
    elif array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA)
    else:
        array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    image = pyvips.Image.new_from_array(np.ascontiguousarray(array), interpretation="srgb")
    if (image.width, image.height) != (width, height):
        image = image.resize(width / image.width, vscale=height / image.height)
    return normalize(image)


# --- encoding -------------------------------------------------------------------------------


def flatten(image: pyvips.Image, fill: RGBA) -> pyvips.Image:
    """`image` without alpha, composed over the fill colour (white when the fill is
    transparent)."""
    if not image.hasalpha():
        return image
    background = list(fill[:3]) if fill[3] == 255 else [255, 255, 255]
    return image.flatten(background=background).cast("uchar").copy(interpretation="srgb")


def encode(image: pyvips.Image, output: Mapping[str, Any], fill: RGBA) -> bytes:
    """The encoded output. Metadata is not copied (`keep` none): EXIF, XMP, IPTC, GPS and the
    input's ICC profile stay behind; only a requested resolution and a CMYK profile go out."""
    fmt = output["format"]
    kind = fmt["type"]
    metadata = output.get("metadata") or {}
    cmyk = (metadata.get("color_space") or {}).get("type") == "CMYK"
    if kind not in ALPHA_OUTPUTS or cmyk:
        image = flatten(image, fill)
    # A fresh image without the loader's fields, so nothing of the input's leaks through the
    # few `keep` flags used below.
    image = image.copy()
    for name in image.get_fields():
        if name.startswith(("exif", "xmp", "iptc", "icc-profile", "orientation", "gif-", "png-")):
            image.remove(name)
    dpi = metadata.get("dpi")
    if dpi:
        image = image.copy(xres=dpi / 25.4, yres=dpi / 25.4)  # libvips counts pixels per mm
    keep = ["none"]
    if cmyk:
        # libvips' built-in CMYK profile (a SWOP-like coated one) for every profile name.
        image = image.icc_transform("cmyk", input_profile="srgb")
        keep = ["icc"]
    if kind == "jpeg":
        if dpi:
            keep = [*(k for k in keep if k != "none"), "exif"]  # JPEG's resolution is in EXIF
        return bytes(
            image.jpegsave_buffer(
                Q=fmt["quality"],
                interlace=bool(fmt["progressive"]),
                optimize_coding=True,
                keep="|".join(keep),
            )
        )
    if kind == "png":
        return bytes(
            image.pngsave_buffer(compression=_PNG_COMPRESSION[fmt["compression"]], keep=keep[0])
        )
    compression = fmt["compression"]
    lossless = compression["type"] == "lossless"
    quality = int(compression.get("quality", 75))
    if kind == "webp":
        if lossless:
            return bytes(image.webpsave_buffer(lossless=True, keep="none"))
        return bytes(image.webpsave_buffer(Q=quality, keep="none"))
    if kind == "avif":
        return bytes(
            image.heifsave_buffer(
                compression="av1", lossless=lossless, Q=quality, effort=2, keep="none"
            )
        )
    if lossless or image.hasalpha():
        # JPEG-in-TIFF cannot hold alpha (libvips drops it): a transparent image is written
        # LZW instead, losing no pixels rather than its transparency.
        return bytes(image.tiffsave_buffer(compression="lzw", predictor="horizontal", keep=keep[0]))
    return bytes(image.tiffsave_buffer(compression="jpeg", Q=quality, keep=keep[0]))
