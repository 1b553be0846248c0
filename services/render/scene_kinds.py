"""The scene jobs' kinds, their checked render parameters and their metrics: what the request
side (`scene_servicer`) and the workers (`scene_jobs`) share. Nothing here loads the 3D stack
(trimesh, scipy, moderngl: about 60 MiB of a render process), so a process that only edits
images never holds it: `scene_stack.SceneStack` imports `scene_jobs` on the first scene job.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kiln.render.v1 import render_pb2
from prometheus_client import Counter, Histogram

from services.runtime.errors import InvalidArgument

IMPORT_KIND = "scene.import"
EXPORT_KIND = "scene.export"
RENDER_KIND = "scene.render"
SCENE_KINDS = (IMPORT_KIND, EXPORT_KIND, RENDER_KIND)
MAX_SIDE = 8192
DEFAULT_WIDTH = 800
DEFAULT_HEIGHT = 600
FORMATS = {"jpeg": "jpeg", "jpg": "jpeg", "png": "png"}

SCENE_JOB_SECONDS = Histogram(
    "kiln_scene_job_seconds",
    "Time a scene job's handler ran, by kind and outcome.",
    ["kind", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
IMPORTED_TRIANGLES = Counter("kiln_scene_import_triangles_total", "Triangles imported.")
RENDERED_FRAMES = Counter("kiln_scene_renders_total", "Frames rendered.", ["format"])


def _finite(value: float, name: str) -> float:
    if not math.isfinite(value):
        raise InvalidArgument(f"{name} must be a finite number", field=name)
    return value


@dataclass(frozen=True)
class RenderParams:
    """A render's size, format, frame and camera, checked."""

    width: int
    height: int
    format: str
    time: int | None = None
    azimuth: float | None = None
    polar: float | None = None
    bounding_radius: float | None = None

    @classmethod
    def from_request(
        cls, request: render_pb2.SubmitSceneRenderRequest, max_pixels: int
    ) -> RenderParams:
        width = request.width or DEFAULT_WIDTH
        height = request.height or DEFAULT_HEIGHT
        for name, side in (("width", width), ("height", height)):
            if not 1 <= side <= MAX_SIDE:
                raise InvalidArgument(f"{name} must be 1 to {MAX_SIDE} pixels", field=name)
        if width * height > max_pixels:
            raise InvalidArgument(
                f"{width}x{height} exceeds {max_pixels} pixels (KILN_RENDER_MAX_PIXELS)",
                field="width",
            )
        fmt = FORMATS.get((request.format or "jpeg").strip().lower())
        if fmt is None:
            raise InvalidArgument("format must be jpeg or png", field="format")
        radius = None
        if request.HasField("bounding_radius"):
            radius = _finite(request.bounding_radius, "boundingRadius")
            if radius <= 0:
                raise InvalidArgument("boundingRadius must be > 0", field="boundingRadius")
        return cls(
            width=width,
            height=height,
            format=fmt,
            time=request.time if request.HasField("time") else None,
            azimuth=(
                _finite(request.azimuth_angle, "azimuthAngle")
                if request.HasField("azimuth_angle")
                else None
            ),
            polar=(
                _finite(request.polar_angle, "polarAngle")
                if request.HasField("polar_angle")
                else None
            ),
            bounding_radius=radius,
        )

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"width": self.width, "height": self.height, "format": self.format}
        for name, value in (
            ("time", self.time),
            ("azimuthAngle", self.azimuth),
            ("polarAngle", self.polar),
            ("boundingRadius", self.bounding_radius),
        ):
            if value is not None:
                body[name] = value
        return body

    @classmethod
    def from_json(cls, params: Mapping[str, Any]) -> RenderParams:
        def number(name: str) -> float | None:
            value = params.get(name)
            return None if value is None else float(value)

        frame = params.get("time")
        return cls(
            width=int(params["width"]),
            height=int(params["height"]),
            format=str(params["format"]),
            time=None if frame is None else int(frame),
            azimuth=number("azimuthAngle"),
            polar=number("polarAngle"),
            bounding_radius=number("boundingRadius"),
        )
