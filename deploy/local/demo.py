"""`make demo`: one tour of Kiln against the suite `make up` runs, through the Python SDK.

It generates a textured model (a kiln: a domed, chequered shell on a plinth, as OBJ + MTL +
PNG texture), creates a scene, imports the model, renders it, edits the render (resize onto a
coloured background, as WebP), uploads the render and the edit as assets, archives both, and
prints every job and URL it used. Each step waits on its job's event stream, so the demo also
shows how long each one took.

The suite is found the way `make up` finds its settings (the same KILN_* variables: gateway
port, demo client); `--url`, `--client-id` and `--client-secret` point it anywhere else.
Exit status: 0 when every step succeeded, 1 when one failed (the step is named), 2 when
there is no suite to talk to.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from kiln_sdk import AsyncClient, KilnError

MODEL_NAME = "kiln"
RENDER_SIZE = (960, 720)
EDIT_WIDTH = 640
EDIT_BACKGROUND = "#f4efe6"


# -- the model -----------------------------------------------------------------------------


def kiln_model(segments: int = 48, rings: int = 24) -> dict[str, bytes]:
    """OBJ + MTL + PNG of a kiln: a dome on a cylinder on a box plinth, UV-mapped onto a
    chequered brick texture. Made here so the demo needs no file from anywhere."""
    vertices: list[tuple[float, float, float]] = []
    uvs: list[tuple[float, float]] = []
    faces: list[tuple[int, int, int]] = []

    def grid(points: list[list[tuple[float, float, float]]], v0: float, v1: float) -> None:
        # A (rows x columns) patch of points, joined into quads split into two triangles.
        base = len(vertices)
        rows, cols = len(points), len(points[0])
        for r, row in enumerate(points):
            for c, point in enumerate(row):
                vertices.append(point)
                uvs.append((c / (cols - 1), v0 + (v1 - v0) * r / (rows - 1)))
        for r in range(rows - 1):
            for c in range(cols - 1):
                a = base + r * cols + c
                b, d, e = a + 1, a + cols, a + cols + 1
                faces.extend(((a, b, e), (a, e, d)))

    def ring(radius: float, y: float) -> list[tuple[float, float, float]]:
        return [
            (
                radius * math.cos(2 * math.pi * i / segments),
                y,
                -radius * math.sin(2 * math.pi * i / segments),
            )
            for i in range(segments + 1)
        ]

    # The walls (a cylinder), then the dome (a quarter circle swept round), then the plinth.
    grid([ring(1.0, y) for y in np.linspace(0.2, 1.2, 6)], 0.0, 0.45)
    dome = [ring(math.cos(a), 1.2 + 0.9 * math.sin(a)) for a in np.linspace(0, math.pi / 2, rings)]
    grid(dome, 0.45, 1.0)
    half = 1.3
    corners = [(-half, -half), (half, -half), (half, half), (-half, half), (-half, -half)]
    grid([[(x, y, z) for x, z in corners] for y in (0.2, 0.0)], 0.0, 0.1)
    grid([[(x, 0.2, z) for x, z in corners], [(0.0, 0.2, 0.0)] * len(corners)], 0.0, 0.05)

    obj = io.StringIO()
    obj.write(f"mtllib {MODEL_NAME}.mtl\no Kiln\n")
    obj.writelines(f"v {x:.5f} {y:.5f} {z:.5f}\n" for x, y, z in vertices)
    obj.writelines(f"vt {u:.5f} {v:.5f}\n" for u, v in uvs)
    obj.write("usemtl Brick\n")
    obj.writelines(f"f {a + 1}/{a + 1} {b + 1}/{b + 1} {c + 1}/{c + 1}\n" for a, b, c in faces)
    mtl = f"newmtl Brick\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nmap_Kd {MODEL_NAME}-brick.png\n"
    return {
        f"{MODEL_NAME}.obj": obj.getvalue().encode(),
        f"{MODEL_NAME}.mtl": mtl.encode(),
        f"{MODEL_NAME}-brick.png": brick_texture(),
    }


def brick_texture(size: int = 256) -> bytes:
    """Staggered red-brown bricks with light mortar lines, as PNG."""
    y, x = np.mgrid[0:size, 0:size]
    course = y // 16
    offset = (course % 2) * 16
    mortar = (y % 16 < 2) | ((x + offset) % 32 < 2)
    shade = ((course * 7 + (x + offset) // 32 * 13) % 5) * 9
    pixels = np.zeros((size, size, 3), np.uint8)
    pixels[..., 0] = np.where(mortar, 220, 150 + shade)
    pixels[..., 1] = np.where(mortar, 214, 62 + shade // 2)
    pixels[..., 2] = np.where(mortar, 200, 40)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="PNG")
    return out.getvalue()


# -- the tour -------------------------------------------------------------------------------


@dataclass
class Tour:
    """What the demo used, printed at the end (and as JSON with --json)."""

    base_url: str
    steps: list[dict[str, Any]] = field(default_factory=list)

    def record(self, step: str, started: float, **used: Any) -> None:
        entry = {"step": step, "seconds": round(time.monotonic() - started, 2), **used}
        self.steps.append(entry)
        print(
            f"  {step:<8} {entry['seconds']:>6.2f} s  "
            + "  ".join(f"{k}={v}" for k, v in used.items())
        )

    def job_url(self, job_id: str) -> str:
        return f"{self.base_url}/api/jobs/{job_id}"


class StepFailed(Exception):
    """A step of the tour failed; the message names it."""


def write_model(work: Path) -> list[Path]:
    """Writes the generated model's files into `work`; the OBJ first."""
    files = []
    for name, data in kiln_model().items():
        (work / name).write_bytes(data)
        files.append(work / name)
    return files


async def tour(kiln: AsyncClient, files: list[Path], *, job_timeout: float) -> Tour:
    """Every step of the demo, each recorded with what it used; StepFailed names a failure."""
    result = Tour(kiln.base_url)
    work = files[0].parent
    step = "model"

    async def wait(job: dict[str, Any]) -> dict[str, Any]:
        return await kiln.jobs.wait(str(job["id"]), timeout=job_timeout)

    try:
        sizes = ", ".join(f"{p.name} {p.stat().st_size // 1024} KiB" for p in files)
        result.record(step, time.monotonic(), files=sizes)

        step, started = "scene", time.monotonic()
        scene = await kiln.scenes.create(f"demo-{int(time.time())}", description="make demo")
        scene_id = str(scene["id"])
        result.record(step, started, scene=scene_id, url=f"{kiln.base_url}/api/scenes/{scene_id}")

        step, started = "import", time.monotonic()
        job = await wait(await kiln.scenes.import_files(scene_id, files))
        result.record(step, started, job=job["id"], job_url=result.job_url(job["id"]))

        step, started = "render", time.monotonic()
        width, height = RENDER_SIZE
        job = await wait(
            await kiln.scenes.render(
                scene_id, width=width, height=height, format="png", polarAngle=1.15
            )
        )
        render_path = work / "render.png"
        await kiln.jobs.output(str(job["id"]), render_path)
        result.record(
            step, started, job=job["id"], job_url=result.job_url(job["id"]), file=render_path
        )

        step, started = "edit", time.monotonic()
        edit = await kiln.images.edit_upload(
            render_path,
            {
                "operations": {
                    "resizing": {"width": EDIT_WIDTH, "fit": "bounds"},
                    "background": {"remove": True, "color": EDIT_BACKGROUND},
                },
                "output": {
                    "format": {"type": "webp", "compression": {"type": "lossy", "quality": 85}}
                },
            },
        )
        edited_url = str(edit["output"]["tmp_url"])
        edited_path = work / "render-edited.webp"
        await kiln.download(edited_url, edited_path)
        result.record(
            step,
            started,
            size=f"{edit['output']['width']}x{edit['output']['height']}",
            format=edit["output"]["format"],
            tmp_url=edited_url,
        )

        step, started = "upload", time.monotonic()
        assets = [
            await kiln.assets.upload(path, name=path.name) for path in (render_path, edited_path)
        ]
        for asset in assets:
            result.record(step, started, asset=asset["id"], url=asset["url"])

        step, started = "archive", time.monotonic()
        archive = await kiln.archives.create([str(a["id"]) for a in assets], flat=True)
        job = await wait(archive)
        download = await kiln.json("GET", f"/v1/assets/download/{archive['id']}")
        archive_path = work / "demo.zip"
        await kiln.download(str(download["downloadUrl"]), archive_path)
        result.record(step, started, job=job["id"], url=download["downloadUrl"])
    except (KilnError, httpx.HTTPError, OSError, KeyError) as exc:
        raise StepFailed(f"step {step!r} failed: {type(exc).__name__}: {exc}") from exc
    return result


# -- the command ----------------------------------------------------------------------------


def _defaults(environ: dict[str, str]) -> tuple[str, str, str]:
    """The gateway URL and demo client of the suite `make up` runs with these variables."""
    from deploy.local.launcher import load_settings

    settings = load_settings(environ)
    return settings.gateway_url, settings.demo_client_id, settings.demo_client_secret


async def _run(args: argparse.Namespace, files: list[Path]) -> Tour:
    async with AsyncClient(args.url, args.client_id, args.client_secret) as kiln:
        return await tour(kiln, files, job_timeout=args.timeout)


def main(argv: Sequence[str] | None = None) -> int:
    url, client_id, secret = _defaults(dict(os.environ))
    root = argparse.ArgumentParser(prog="make demo", description=__doc__.split("\n\n")[0])
    root.add_argument("--url", default=url)
    root.add_argument("--client-id", default=client_id)
    root.add_argument("--client-secret", default=secret)
    root.add_argument("--out", help="where the files go (default: a new temporary folder)")
    root.add_argument("--timeout", type=float, default=300.0, help="longest wait on one job")
    root.add_argument("--json", action="store_true", help="print what was used as JSON too")
    args = root.parse_args(argv)
    if not args.client_id:
        print("make demo: no demo client (KILN_DEMO_CLIENT_ID is empty); pass --client-id")
        return 2
    try:
        httpx.get(f"{args.url}/health", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        print(
            f"make demo: no Kiln answers at {args.url} ({exc}); start it first with `make up`"
            " (or `make start` to run it in the background)",
            file=sys.stderr,
        )
        return 2
    work = Path(args.out or tempfile.mkdtemp(prefix="kiln-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"Kiln demo against {args.url} (files in {work})")
    try:
        result = asyncio.run(_run(args, write_model(work)))
    except StepFailed as exc:
        print(f"make demo: {exc}", file=sys.stderr)
        return 1
    print("Demo done: every job and URL above is live until the suite is stopped.")
    if args.json:
        print(json.dumps({"base_url": result.base_url, "steps": result.steps}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
