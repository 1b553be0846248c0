"""Image editing: Kiln's async REST path against the raw pyvips pipeline and thumbor 7.8.

Twenty photo-like 12 MP JPEGs (4000 x 3000, quality 90, synthesized with a fixed seed: smooth
gradients, shapes and film-grain noise, 3 to 6 MB each, as camera photos are) are served by a
loopback HTTP server. Each way resizes every photo to 1000 px wide, sharpens it and encodes
WebP (quality 75), fetching its input over HTTP, two images in flight at a time for every way
(`--in-flight` sets another number, for all three alike):

- **raw** (the reference): in this process, a thread per image in flight: httpx GET →
  `pyvips.Image.thumbnail_buffer(data, 1000)` → an unsharp mask of radius 1 and amount 1.5
  (`image + 1.5 * (image - gaussblur(1))`) → `webpsave_buffer(Q=75)`. The same libvips calls
  Kiln makes, with nothing around them.
- **kiln**: the `make up` layout (launcher, SQLite, SeaweedFS) plus a second render process, each
  with `KILN_IMAGE_THREADS=1` and `KILN_WORKER_CONCURRENCY=1`: two render workers, one edit each.
  `POST /v1/image/edit/async` with `{"resizing": {"width": 1000, "fit": "bounds"},
  "adjustments": {"sharpness": 25}}` (Claid's default fit, `crop`, would keep the height and
  crop; sharpness 25 is the unsharp mask above) and WebP output, polled on
  `GET /v1/image/edit/async/{id}` every 50 ms until DONE, then the output fetched from its
  `tmp_url` and checked (1000 px wide WebP). Latency is submit → output fetched.
- **kiln-sse**: the same suite and request, the task followed instead of polled: its view as
  Server-Sent Events (`Accept: text/event-stream` on the same URL, Kiln's addition to Claid's
  API) until DONE.
- **thumbor** 7.8.0 from PyPI, in its own virtualenv (`bench/.venv-thumbor`, created on first
  use), two server processes behind a round-robin client (thumbor's own `--processes` forks
  share one port; two servers make the two workers explicit):
  `/unsafe/1000x0/filters:sharpen(1.5,1,false):quality(75):format(webp)/127.0.0.1:PORT/photoN.jpg`.

The ways alternate for `--rounds` rounds (3); images/s and latency percentiles are medians
over rounds. Peak RSS per worker is each worker process's VmHWM over the whole run (for raw,
this process).

    python -m bench.images [--rounds 3] [--images 20] [--in-flight 2]
                           [--only raw,kiln,kiln-sse,thumbor]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import functools
import http.server
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyvips

from bench._report import Figure, percentile, report, with_ratios
from bench.archive import pid_of, vm_kb
from bench.gateway_overhead import suite_env
from deploy.local.seaweed import free_port

WIDTH, HEIGHT = 4000, 3000
TARGET_WIDTH = 1000
IN_FLIGHT = 2
"""Images in flight at a time, for every way alike (`--in-flight`)."""
POLL_SECONDS = 0.05
#: Generated photos are kept here between runs (bench/results/ is not committed).
PHOTO_CACHE = Path(__file__).parent / "results" / "photos"
SHARPNESS = 25  # Kiln's sharpness 25 is an unsharp mask of amount 1.5, as raw and thumbor
THUMBOR_VERSION = "7.8.0"
THUMBOR_VENV = Path(__file__).parent / ".venv-thumbor"
KILN_RENDER_ENV = {"KILN_IMAGE_THREADS": "1", "KILN_WORKER_CONCURRENCY": "1"}


# --- inputs ---------------------------------------------------------------------------------


def make_photo(index: int) -> bytes:
    """A 12 MP photo-like JPEG: a smooth scene, shapes, grain; different per index."""
    rng = np.random.default_rng(index)
    x = pyvips.Image.xyz(WIDTH, HEIGHT)
    a, b, c = (float(v) for v in rng.uniform(0.02, 0.06, 3))
    red = (x[0] * a + x[1] * b).sin() * 60 + 120
    green = (x[1] * c).cos() * 50 + 110 + x[0] * (40 / WIDTH)
    blue = ((x[0] - WIDTH / 2) ** 2 + (x[1] - HEIGHT / 2) ** 2) ** 0.5 * (120 / WIDTH) + 60
    scene = red.bandjoin([green, blue])
    for _ in range(12):
        cx, cy = rng.integers(0, WIDTH), rng.integers(0, HEIGHT)
        radius = float(rng.integers(100, 700))
        colour = [float(v) for v in rng.integers(0, 255, 3)]
        disc = ((x[0] - cx) ** 2 + (x[1] - cy) ** 2) < radius**2
        scene = disc.ifthenelse(colour, scene, blend=False)
    grain = pyvips.Image.gaussnoise(WIDTH, HEIGHT, sigma=9, mean=0)
    photo = (scene + grain).cast("uchar").copy(interpretation="srgb")
    return bytes(photo.jpegsave_buffer(Q=90))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        del format, args


def serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, int]:
    handler = functools.partial(_Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


async def in_flight(
    count: int, one: Callable[[int], Awaitable[float]], lanes: int
) -> tuple[float, list[float]]:
    """Runs `one(i)` for every image, `lanes` at a time; answers wall time and latencies."""
    queue = list(range(count))
    latencies: list[float] = []

    async def lane() -> None:
        while queue:
            latencies.append(await one(queue.pop(0)))

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(lanes)))
    return time.perf_counter() - started, latencies


def check_webp(data: bytes) -> None:
    image = pyvips.Image.new_from_buffer(data, "")
    if image.width != TARGET_WIDTH or not image.get("vips-loader").startswith("webp"):
        raise RuntimeError(f"expected a {TARGET_WIDTH} px WebP, got {image.width} px")


# --- raw ------------------------------------------------------------------------------------


def raw_edit(data: bytes) -> bytes:
    image = pyvips.Image.thumbnail_buffer(data, TARGET_WIDTH)
    image = image + (image - image.gaussblur(1.0, precision="integer")) * 1.5
    image = image.cast("uchar").copy(interpretation="srgb")
    return bytes(image.webpsave_buffer(Q=75))


async def raw_round(
    urls: list[str], pool: concurrent.futures.Executor, lanes: int
) -> tuple[float, list[float]]:
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(timeout=60) as http:

        async def one(i: int) -> float:
            started = time.perf_counter()
            data = (await http.get(urls[i])).raise_for_status().content
            out = await loop.run_in_executor(pool, raw_edit, data)
            check_webp(out)
            return time.perf_counter() - started

        return await in_flight(len(urls), one, lanes)


# --- kiln -----------------------------------------------------------------------------------


def _finished(data: dict[str, Any]) -> bool:
    if data["status"] == "ERROR":
        raise RuntimeError(f"task {data['id']} failed: {data['errors']}")
    return bool(data["status"] == "DONE")


async def polled(http: httpx.AsyncClient, path: str, headers: dict[str, str]) -> dict[str, Any]:
    """The task view once DONE, polled every POLL_SECONDS, as Claid's clients do."""
    while True:
        body = (await http.get(path, headers=headers)).raise_for_status().json()
        data: dict[str, Any] = body["data"]
        if _finished(data):
            return data
        await asyncio.sleep(POLL_SECONDS)


async def followed(http: httpx.AsyncClient, path: str, headers: dict[str, str]) -> dict[str, Any]:
    """The task view once DONE, followed as Server-Sent Events (docs/apis/claid.md)."""
    events = {**headers, "Accept": "text/event-stream"}
    async with http.stream("GET", path, headers=events) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                data: dict[str, Any] = json.loads(line.removeprefix("data: "))["data"]
                if _finished(data):
                    return data
    raise RuntimeError(f"{path}: the event stream ended before the task was DONE")


class Kiln:
    """The launcher's suite plus a second render process."""

    def __init__(self) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="kiln-bench-images-"))
        self.env = {
            **suite_env(self.data_dir),
            **KILN_RENDER_ENV,
            "KILN_FETCH_ALLOWLIST": "127.0.0.1",
        }
        self.launcher = [sys.executable, "-m", "deploy.local.launcher"]
        self.second: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        subprocess.run(
            [*self.launcher, "--detach"], env=self.env, check=True, stdout=subprocess.DEVNULL
        )
        second_env = {
            **self.env,
            "KILN_RENDER_PORT": str(free_port()),
            "KILN_RENDER_METRICS_PORT": str(free_port()),
            "KILN_S3_ENDPOINT": f"127.0.0.1:{self.env['KILN_S3_PORT']}",
        }
        self.second = subprocess.Popen(
            [sys.executable, "-m", "services.render"],
            env=second_env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.data_dir / "render-2.log", "wb"),  # noqa: SIM115
        )
        wait_port(int(second_env["KILN_RENDER_PORT"]))

    def pids(self) -> list[int]:
        assert self.second is not None
        return [pid_of(self.data_dir, "render"), self.second.pid]

    def stop(self) -> None:
        if self.second is not None:
            self.second.send_signal(signal.SIGTERM)
            self.second.wait(30)
        subprocess.run(
            [*self.launcher, "--stop"], env=self.env, check=False, stdout=subprocess.DEVNULL
        )
        shutil.rmtree(self.data_dir, ignore_errors=True)

    async def token(self, http: httpx.AsyncClient) -> str:
        reply = await http.post("/oauth2/application_token", auth=("demo", "demo-secret"))
        return str(reply.raise_for_status().json()["access_token"])

    async def round(self, urls: list[str], lanes: int, follow: bool) -> tuple[float, list[float]]:
        base = f"http://127.0.0.1:{self.env['KILN_GATEWAY_PORT']}"
        async with (
            httpx.AsyncClient(base_url=base, timeout=60) as http,
            httpx.AsyncClient(timeout=60) as anonymous,
        ):
            headers = {"Authorization": f"Bearer {await self.token(http)}"}

            async def one(i: int) -> float:
                started = time.perf_counter()
                body = {
                    "input": urls[i],
                    "operations": {
                        "resizing": {"width": TARGET_WIDTH, "fit": "bounds"},
                        "adjustments": {"sharpness": SHARPNESS},
                    },
                    "output": {"format": "webp"},
                }
                accepted = await http.post("/v1/image/edit/async", json=body, headers=headers)
                task = accepted.raise_for_status().json()["data"]["id"]
                path = f"/v1/image/edit/async/{task}"
                until_done = followed if follow else polled
                data = await until_done(http, path, headers)
                out = await anonymous.get(data["result"]["output_object"]["tmp_url"])
                check_webp(out.raise_for_status().content)
                return time.perf_counter() - started

            return await in_flight(len(urls), one, lanes)


def wait_port(port: int, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {within} s")


# --- thumbor --------------------------------------------------------------------------------


class Thumbor:
    """Two thumbor servers (one worker each), requested round-robin."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ports = [free_port(), free_port()]
        self.processes: list[subprocess.Popen[bytes]] = []

    def install(self) -> Path:
        binary = THUMBOR_VENV / "bin" / "thumbor"
        if not binary.exists():
            subprocess.run([sys.executable, "-m", "venv", str(THUMBOR_VENV)], check=True)
            subprocess.run(
                [str(THUMBOR_VENV / "bin" / "pip"), "install", "-q", f"thumbor=={THUMBOR_VERSION}"],
                check=True,
            )
        return binary

    def start(self) -> None:
        binary = self.install()
        config = self.workdir / "thumbor.conf"
        config.write_text(
            "\n".join(
                [
                    "ALLOW_UNSAFE_URL = True",
                    "LOADER = 'thumbor.loaders.http_loader'",
                    "STORAGE = 'thumbor.storages.no_storage'",
                    "RESULT_STORAGE = None",
                    "QUALITY = 75",
                    "WEBP_QUALITY = 75",
                    "AUTO_WEBP = False",
                    "HTTP_LOADER_DEFAULT_USER_AGENT = 'bench'",
                    "MAX_SOURCE_SIZE = 0",
                    "ENGINE_THREADPOOL_SIZE = 0",
                ]
            )
        )
        for port in self.ports:
            self.processes.append(
                subprocess.Popen(
                    [str(binary), "-p", str(port), "-c", str(config), "-l", "warning"],
                    stdout=subprocess.DEVNULL,
                    stderr=open(self.workdir / f"thumbor-{port}.log", "wb"),  # noqa: SIM115
                )
            )
        for port in self.ports:
            wait_port(port)

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def stop(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            process.wait(30)

    async def round(self, urls: list[str], lanes: int) -> tuple[float, list[float]]:
        async with httpx.AsyncClient(timeout=120) as http:

            async def one(i: int) -> float:
                started = time.perf_counter()
                port = self.ports[i % len(self.ports)]
                source = urls[i].removeprefix("http://")
                path = (
                    f"/unsafe/{TARGET_WIDTH}x0/filters:sharpen(1.5,1,false):quality(75)"
                    f":format(webp)/{source}"
                )
                out = await http.get(f"http://127.0.0.1:{port}{path}")
                check_webp(out.raise_for_status().content)
                return time.perf_counter() - started

            return await in_flight(len(urls), one, lanes)


# --- the run --------------------------------------------------------------------------------


async def run(
    ways: list[str], images: int, rounds: int, lanes: int
) -> tuple[list[Figure], dict[str, Any]]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-images-"))
    notes: dict[str, Any] = {}
    kiln: Kiln | None = None
    thumbor: Thumbor | None = None
    server = None
    pool = concurrent.futures.ThreadPoolExecutor(lanes)
    try:
        started = time.perf_counter()
        sizes = []
        PHOTO_CACHE.mkdir(parents=True, exist_ok=True)
        for i in range(images):
            cached = PHOTO_CACHE / f"photo{i}.jpg"
            if not cached.exists():
                cached.write_bytes(make_photo(i))
            data = cached.read_bytes()
            sizes.append(len(data))
            (workdir / f"photo{i}.jpg").write_bytes(data)
        print(
            f"made {images} photos in {time.perf_counter() - started:.0f} s, "
            f"{statistics.mean(sizes) / 1e6:.1f} MB on average",
            file=sys.stderr,
        )
        notes["photo_mb_mean"] = round(statistics.mean(sizes) / 1e6, 2)
        server, port = serve(workdir)
        urls = [f"http://127.0.0.1:{port}/photo{i}.jpg" for i in range(images)]
        rounds_of: dict[str, Callable[[], Awaitable[tuple[float, list[float]]]]] = {}
        if "raw" in ways:
            rounds_of["raw"] = functools.partial(raw_round, urls, pool, lanes)
        if "kiln" in ways:
            kiln = Kiln()
            kiln.start()
            rounds_of["kiln"] = functools.partial(kiln.round, urls, lanes, False)
        if "kiln-sse" in ways:
            if kiln is None:
                kiln = Kiln()
                kiln.start()
            rounds_of["kiln-sse"] = functools.partial(kiln.round, urls, lanes, True)
        if "thumbor" in ways:
            thumbor = Thumbor(workdir)
            thumbor.start()
            rounds_of["thumbor"] = functools.partial(thumbor.round, urls, lanes)
        walls: dict[str, list[float]] = {name: [] for name in rounds_of}
        p50s: dict[str, list[float]] = {name: [] for name in rounds_of}
        p99s: dict[str, list[float]] = {name: [] for name in rounds_of}
        for one_round in rounds_of.values():
            await one_round()  # warm-up: imports, connections, first decodes
        for _ in range(rounds):
            for name, one_round in rounds_of.items():
                wall, latencies = await one_round()
                walls[name].append(wall)
                p50s[name].append(percentile(latencies, 0.5))
                p99s[name].append(percentile(latencies, 0.99))
                print(f"{name}: {images / wall:.2f} images/s", file=sys.stderr)
        case = f"{images} photos 12 MP -> 1000 px + sharpen -> WebP, {lanes} in flight"
        figures: list[Figure] = []
        for name in rounds_of:
            figures.append(
                Figure(
                    case,
                    name,
                    round(images / statistics.median(walls[name]), 2),
                    "images/s",
                    p50_ms=round(statistics.median(p50s[name]) * 1000, 1),
                    p99_ms=round(statistics.median(p99s[name]) * 1000, 1),
                )
            )
        peaks = {"raw": [vm_kb(os.getpid(), "VmHWM")]} if "raw" in rounds_of else {}
        if kiln is not None:
            peaks["kiln"] = [vm_kb(pid, "VmHWM") for pid in kiln.pids()]
        if thumbor is not None:
            peaks["thumbor"] = [vm_kb(pid, "VmHWM") for pid in thumbor.pids()]
        for name, values in peaks.items():
            figures.append(Figure("peak RSS per worker", name, round(max(values) / 1024, 1), "MiB"))
            notes[f"{name}_peak_rss_mib"] = [round(v / 1024, 1) for v in values]
        return figures, notes
    finally:
        pool.shutdown()
        if server is not None:
            server.shutdown()
        if kiln is not None:
            kiln.stop()
        if thumbor is not None:
            thumbor.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--only", default="raw,kiln,kiln-sse,thumbor", help="comma-separated ways")
    parser.add_argument(
        "--in-flight", type=int, default=IN_FLIGHT, help="images in flight, for every way alike"
    )
    args = parser.parse_args()
    ways = [w.strip() for w in args.only.split(",") if w.strip()]
    if args.in_flight < 1:
        parser.error("--in-flight must be at least 1")
    figures, notes = asyncio.run(run(ways, args.images, args.rounds, args.in_flight))
    throughput = [f for f in figures if f.unit == "images/s"]
    memory = [f for f in figures if f.unit == "MiB"]
    reference = "raw" if "raw" in ways else ways[0]
    report(
        "images",
        with_ratios(throughput, reference) + memory,
        {
            **notes,
            "images": args.images,
            "rounds": args.rounds,
            "in_flight": args.in_flight,
            "figures": "medians over the rounds (after one warm-up round each)",
            "raw": "pyvips thumbnail_buffer + sharpen + webpsave, a thread per image in flight, "
            "this process",
            "kiln": "POST /v1/image/edit/async, polled every 50 ms, output fetched; 2 render "
            "processes with KILN_IMAGE_THREADS=1, KILN_WORKER_CONCURRENCY=1",
            "kiln-sse": "as kiln, the task followed as Server-Sent Events instead of polled",
            "thumbor": f"thumbor {THUMBOR_VERSION}, 2 servers, HTTP loader, round-robin",
        },
    )


if __name__ == "__main__":
    main()
