"""Test images synthesized on the spot (nothing is downloaded): gradients, an object on a plain
or textured background for segmentation, stripes, a number plate, crafted headers."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pyvips


def gradient(width: int = 400, height: int = 300) -> pyvips.Image:
    """Red rises left to right, green top to bottom, blue along the diagonal."""
    x = pyvips.Image.xyz(width, height)
    red = x[0] * (255 / (width - 1))
    green = x[1] * (255 / (height - 1))
    blue = (x[0] + x[1]) * (255 / (width + height))
    return red.bandjoin([green, blue]).cast("uchar").copy(interpretation="srgb")


def _disc(width: int, height: int) -> np.ndarray:
    disc = np.zeros((height, width), np.uint8)
    cv2.circle(disc, (width // 2, height // 2), min(width, height) // 4, 1, -1)
    return disc.astype(bool)


def object_on_plain(width: int = 400, height: int = 300) -> pyvips.Image:
    """A textured, saturated red disc (radius a quarter of the short side) in the middle of a
    flat pale-grey background."""
    rng = np.random.default_rng(7)
    array = np.full((height, width, 3), 225, np.uint8)
    texture = np.clip(
        np.array([200, 30, 30]) + rng.integers(0, 60, (height, width, 1)), 0, 255
    ).astype(np.uint8)
    array[_disc(width, height)] = texture[_disc(width, height)]
    return pyvips.Image.new_from_array(array, interpretation="srgb")


def object_on_texture(width: int = 400, height: int = 300) -> pyvips.Image:
    """The same red disc over a fine grey checkerboard (lots of high frequencies), so a
    background blur has something to remove outside the object and the object's texture
    shows whether it was kept."""
    rng = np.random.default_rng(11)
    y, x = np.mgrid[0:height, 0:width]
    checks = np.where(((x // 3) + (y // 3)) % 2 == 0, 150, 205).astype(np.uint8)
    array = np.repeat(checks[:, :, None], 3, axis=2)
    texture = np.clip(
        np.array([200, 30, 30]) + rng.integers(0, 60, (height, width, 1)), 0, 255
    ).astype(np.uint8)
    array[_disc(width, height)] = texture[_disc(width, height)]
    return pyvips.Image.new_from_array(np.ascontiguousarray(array), interpretation="srgb")


def noisy(width: int = 400, height: int = 300, seed: int = 3) -> pyvips.Image:
    """A smooth gradient with strong grain."""
    rng = np.random.default_rng(seed)
    base = np.asarray(gradient(width, height).numpy()).astype(np.int16)
    grain = rng.normal(0, 18, (height, width, 1)).astype(np.int16)
    array = np.clip(base + grain, 0, 255).astype(np.uint8)
    return pyvips.Image.new_from_array(array, interpretation="srgb")


def plate_scene() -> tuple[pyvips.Image, tuple[int, int, int, int]]:
    """A grey 640x480 scene with a white number plate (black rim, black characters), and the
    plate's box (left, top, width, height)."""
    array = np.full((480, 640, 3), 90, np.uint8)
    x, y, w, h = 220, 300, 220, 52
    cv2.rectangle(array, (x, y), (x + w, y + h), (245, 245, 245), -1)
    cv2.rectangle(array, (x, y), (x + w, y + h), (10, 10, 10), 3)
    cv2.putText(array, "A123BC 77", (x + 10, y + 40), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (0, 0, 0), 4)
    return pyvips.Image.new_from_array(array, interpretation="srgb"), (x, y, w, h)


def encode(image: pyvips.Image, suffix: str = ".jpg", **options: object) -> bytes:
    return bytes(image.write_to_buffer(suffix, **options))


def bmp(image: pyvips.Image) -> bytes:
    array = np.asarray(image.numpy())
    code = cv2.COLOR_RGBA2BGRA if array.shape[2] == 4 else cv2.COLOR_RGB2BGR
    ok, encoded = cv2.imencode(".bmp", cv2.cvtColor(array, code))
    assert ok
    return encoded.tobytes()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` over one tiny IDAT: a pixel flood."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def bmp_claiming(width: int, height: int) -> bytes:
    """A BMP header (BITMAPINFOHEADER, 24-bit) claiming `width` x `height`, with no pixels."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


def pages(count: int, width: int = 64, height: int = 48, suffix: str = ".tif") -> bytes:
    """A multi-page file of `count` different pages."""
    x = pyvips.Image.xyz(width, height)
    frames = [
        (x[0] * (100 / width) + i * 15)
        .bandjoin([x[1] * (100 / height) + i * 10, x[0] * 0 + i * 20])
        .cast("uchar")
        for i in range(count)
    ]
    strip = pyvips.Image.arrayjoin(frames, across=1).copy(interpretation="srgb")
    strip.set_type(pyvips.GValue.gint_type, "page-height", height)
    return bytes(strip.write_to_buffer(suffix))
