"""Scenes: rendering through Kiln's async REST path against the raw moderngl code, and the
import of a 50 MB OBJ against trimesh loading it in this process.

- **render, raw** (the reference): a generated scene of eight textured UV spheres, 100,000
  triangles in all with 1024 px textures (`bench.render_raw.make_scene`), rendered at
  1280 x 720 by `Rasterizer.render_pixels` in this process (the GL context made once, the
  textures uploaded and the geometry prepared once, as the render service keeps them), then
  encoded as JPEG: seconds per frame, the median of `--frames` after a warm-up. Its frames
  alternate with Kiln's (one raw frame, then Kiln's two), so both see the machine in the same
  state; the same reference timed alone before the suite starts is kept in the JSON
  (`raw_before_the_suite`). Beside it, **raw, nothing kept**: every frame from scratch (uploads
  and preparation each time), what a one-shot script pays, timed before the suite starts.
- **render, kiln**: the `make up` layout (launcher, SQLite, SeaweedFS); the same scene imported
  once as a GLB through `POST /api/scenes/{id}/import`, then `POST /api/scenes/{id}/render?
  width=1280&height=720` (async: 202 and the job URL), the job URL polled every 20 ms until
  303, and its `Location` fetched: the JPEG. Seconds per frame is submit → image received,
  the median of `--frames` after a warm-up, one render at a time.
- **import**: a generated OBJ of about 50 MB (a textured grid, `v`/`vt`/`f` lines) imported
  synchronously through the same route (its files stream through the gateway into S3, the
  worker parses them in a child process, writes the GLB and commits): seconds, and the peak
  RSS of the parsing child and of the render process. The reference is `trimesh.load` of the
  same file in this process (what the child does first).

    python -m bench.render [--frames 10] [--triangles 100000] [--obj-mb 50]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import trimesh

from bench._report import Figure, report, with_ratios
from bench.archive import pid_of, vm_kb
from bench.gateway_overhead import suite_env
from bench.render_raw import RawFrames, make_scene, time_raw
from services.render.scenes.model import Placed

WIDTH, HEIGHT = 1280, 720
POLL_SECONDS = 0.02
AUTH = ("demo", "demo-secret")


def scene_glb(placed: list[Placed]) -> bytes:
    scene = trimesh.Scene()
    for p in placed:
        scene.add_geometry(p.mesh, node_name=p.name, transform=p.transform)
    data = scene.export(file_type="glb")
    assert isinstance(data, bytes)
    return data


def grid_obj(target_mb: float) -> bytes:
    """A textured height-field grid as OBJ text of about `target_mb` MB."""
    # One grid vertex costs about 127 bytes of OBJ (v, vt and two faces' worth of f).
    side = int((target_mb * 1e6 / 127) ** 0.5)
    out = io.StringIO()
    out.write("mtllib grid.mtl\no Grid\n")
    for j in range(side):
        for i in range(side):
            out.write(f"v {i * 0.01:.4f} {((i * 7 + j * 3) % 11) * 0.002:.4f} {j * 0.01:.4f}\n")
    for j in range(side):
        for i in range(side):
            out.write(f"vt {i / (side - 1):.5f} {j / (side - 1):.5f}\n")
    out.write("usemtl Grid\n")
    for j in range(side - 1):
        for i in range(side - 1):
            a = j * side + i + 1
            b, c, d = a + 1, a + side, a + side + 1
            out.write(f"f {a}/{a} {b}/{b} {d}/{d}\nf {a}/{a} {d}/{d} {c}/{c}\n")
    return out.getvalue().encode()


class Kiln:
    """The launcher's suite, detached."""

    def __init__(self) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="kiln-bench-render-"))
        self.env = {**suite_env(self.data_dir), "KILN_WORKER_CONCURRENCY": "1"}
        self.launcher = [sys.executable, "-m", "deploy.local.launcher"]
        self.base = f"http://127.0.0.1:{self.env['KILN_GATEWAY_PORT']}"

    def start(self) -> None:
        subprocess.run(
            [*self.launcher, "--detach"], env=self.env, check=True, stdout=subprocess.DEVNULL
        )

    def stop(self) -> None:
        subprocess.run(
            [*self.launcher, "--stop"], env=self.env, check=False, stdout=subprocess.DEVNULL
        )
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def render_pid(self) -> int:
        return pid_of(self.data_dir, "render")


async def new_scene(http: httpx.AsyncClient, name: str) -> str:
    created = await http.post("/api/scenes", json={"name": name}, auth=AUTH)
    return str(created.raise_for_status().json()["id"])


def _millis(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def job_phases(http: httpx.AsyncClient, job_id: str) -> tuple[float, float]:
    """(seconds queued, seconds running) of a finished job, from Scenario's statusHistory."""
    job = (await http.get(f"/v1/jobs/{job_id}", auth=AUTH)).raise_for_status().json()["job"]
    times = {step["status"]: _millis(step["date"]) for step in job["statusHistory"]}
    return (
        times["in-progress"] - times["queued"],
        times["success"] - times["in-progress"],
    )


async def render_once(
    http: httpx.AsyncClient, scene_id: str, *, events: bool = False
) -> tuple[float, int, str]:
    """One async render: POST, then the job URL until the job has ended (polled every 20 ms,
    or followed as Server-Sent Events with `events`), then the image. (seconds, bytes, job)"""
    started = time.perf_counter()
    accepted = await http.post(
        f"/api/scenes/{scene_id}/render",
        params={"width": WIDTH, "height": HEIGHT, "format": "jpeg"},
        auth=AUTH,
    )
    assert accepted.status_code == 202, accepted.text
    location = accepted.headers["location"]
    if events:
        file_url = await _follow_events(http, location)
    else:
        while True:
            polled = await http.get(location, auth=AUTH)
            if polled.status_code == 303:
                break
            assert polled.status_code == 200, polled.text
            await asyncio.sleep(POLL_SECONDS)
        if polled.json()["status"] != "ok":
            raise RuntimeError(f"render failed: {polled.json()}")
        file_url = polled.headers["location"]
    image = await http.get(file_url, auth=AUTH)
    data = image.raise_for_status().content
    assert data[:2] == b"\xff\xd8"
    return time.perf_counter() - started, len(data), str(accepted.json()["id"])


async def _follow_events(http: httpx.AsyncClient, location: str) -> str:
    """The job URL as Server-Sent Events until the job ends; the output's URL."""
    headers = {"Accept": "text/event-stream"}
    async with http.stream("GET", location, auth=AUTH, headers=headers) as stream:
        async for line in stream.aiter_lines():
            if not line.startswith("data:"):
                continue
            delta = json.loads(line[5:])
            if delta.get("status") in ("failed", "cancelled"):
                raise RuntimeError(f"render failed: {delta}")
            if delta.get("status") == "ok":
                return str(delta["files"][0]["url"])
    raise RuntimeError("the event stream ended before the job did")


async def kiln_side(
    kiln: Kiln, placed: list[Placed], frames: int, obj: bytes, raw: RawFrames
) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=kiln.base, timeout=600) as http:
        scene_id = await new_scene(http, "bench-render")
        imported = await http.post(
            f"/api/scenes/{scene_id}/import",
            files=[("file0", ("spheres.glb", scene_glb(placed)))],
            auth=AUTH,
        )
        assert imported.status_code == 200, imported.text
        await render_once(http, scene_id)  # warm-up: the GL context, first uploads
        seconds = []
        followed: list[float] = []
        queued: list[float] = []
        running: list[float] = []
        raw_seconds: list[float] = []
        size = 0
        for _ in range(frames):
            # The reference's frame right beside Kiln's: this VM's speed drifts within minutes.
            raw_seconds.append(raw.frame())
            elapsed, size, job_id = await render_once(http, scene_id)
            seconds.append(elapsed)
            wait, run = await job_phases(http, job_id)
            queued.append(wait)
            running.append(run)
            followed.append((await render_once(http, scene_id, events=True))[0])
        render_rss = vm_kb(kiln.render_pid(), "VmHWM")

        big = await new_scene(http, "bench-import")
        mtl = b"newmtl Grid\nKd 1 1 1\nmap_Kd grid.png\n"
        png = _png()
        started = time.perf_counter()
        response = await http.post(
            f"/api/scenes/{big}/import",
            files=[
                ("obj", ("grid.obj", obj)),
                ("mtl", ("grid.mtl", mtl)),
                ("img", ("grid.png", png)),
            ],
            auth=AUTH,
        )
        import_seconds = time.perf_counter() - started
        assert response.status_code == 200, response.text
        job = (await http.get(f"/v1/jobs/{response.json()['id']}", auth=AUTH)).json()["job"]
        return {
            "raw_frame_s": raw_seconds,
            "frame_s": seconds,
            "frame_events_s": followed,
            "job_queued_s": statistics.median(queued),
            "job_running_s": statistics.median(running),
            "jpeg_bytes": size,
            "render_process_peak_rss_mib": round(render_rss / 1024, 1),
            "import_s": import_seconds,
            "import_result": job["metadata"],
            "render_process_peak_rss_after_import_mib": round(
                vm_kb(kiln.render_pid(), "VmHWM") / 1024, 1
            ),
        }


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), (120, 160, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def raw_import(obj: bytes) -> tuple[float, float]:
    """Seconds and the peak RSS growth (MiB) of trimesh.load of the OBJ in this process."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "grid.obj"
        path.write_bytes(obj)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        loaded = trimesh.load(str(path), process=False)
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        del loaded
    return elapsed, (after - before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--triangles", type=int, default=100_000)
    parser.add_argument("--obj-mb", type=float, default=50.0)
    args = parser.parse_args()

    placed = make_scene(args.triangles)
    quiet = time_raw(placed, WIDTH, HEIGHT, frames=args.frames)
    quiet_frame = float(quiet["frame_median_s"]) + float(quiet["encode_jpeg_s"])
    fresh = time_raw(placed, WIDTH, HEIGHT, frames=args.frames, keep=False)
    fresh_frame = float(fresh["frame_median_s"]) + float(fresh["encode_jpeg_s"])
    obj = grid_obj(args.obj_mb)
    raw_import_s, raw_import_mib = raw_import(obj)
    print(f"raw: {quiet_frame:.3f} s/frame; trimesh.load {raw_import_s:.1f} s", file=sys.stderr)

    kiln = Kiln()
    raw = RawFrames(placed, WIDTH, HEIGHT)
    try:
        kiln.start()
        measured = asyncio.run(kiln_side(kiln, placed, args.frames, obj, raw))
    finally:
        raw.close()
        kiln.stop()
    raw_frame = statistics.median(measured["raw_frame_s"])
    kiln_frame = statistics.median(measured["frame_s"])
    case = f"{quiet['triangles']} tris 1280x720 JPEG"
    import_case = f"import {len(obj) / 1e6:.0f} MB OBJ"
    figures = with_ratios(
        [
            Figure(case, "raw moderngl", round(raw_frame * 1000, 1), "ms/frame"),
            Figure(case, "raw, nothing kept", round(fresh_frame * 1000, 1), "ms/frame"),
            Figure(case, "kiln async", round(kiln_frame * 1000, 1), "ms/frame"),
            Figure(
                case,
                "kiln async+SSE",
                round(statistics.median(measured["frame_events_s"]) * 1000, 1),
                "ms/frame",
            ),
        ],
        "raw moderngl",
    ) + with_ratios(
        [
            Figure(import_case, "trimesh.load", round(raw_import_s, 2), "s"),
            Figure(import_case, "kiln sync", round(measured["import_s"], 2), "s"),
        ],
        "trimesh.load",
    )
    result = measured["import_result"]
    figures.append(
        Figure("import peak RSS", "parse child", float(result.get("parsePeakRssMiB", 0)), "MiB")
    )
    figures.append(
        Figure(
            "import peak RSS",
            "render process",
            measured["render_process_peak_rss_after_import_mib"],
            "MiB",
        )
    )
    figures.append(Figure("import peak RSS", "trimesh.load", round(raw_import_mib, 1), "MiB"))
    report(
        "render",
        figures,
        {
            "raw_before_the_suite": dict(quiet),
            "raw_frame_s": [round(s, 4) for s in measured["raw_frame_s"]],
            "raw_nothing_kept": dict(fresh),
            "kiln_frame_s": [round(s, 4) for s in measured["frame_s"]],
            "kiln_job_queued_s_median": round(measured["job_queued_s"], 4),
            "kiln_job_running_s_median": round(measured["job_running_s"], 4),
            "jpeg_bytes": measured["jpeg_bytes"],
            "render_process_peak_rss_mib": measured["render_process_peak_rss_mib"],
            "import_result": result,
            "obj_bytes": len(obj),
            "cpu": os.cpu_count(),
            "run": uuid.uuid4().hex[:8],
        },
    )


if __name__ == "__main__":
    main()
