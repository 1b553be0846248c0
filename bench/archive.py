"""Archives: Scenario's archive job against a raw S3 GET + PUT copy of the same bytes.

The `make up` layout (separate processes, SQLite, SeaweedFS) started by the launcher. Assets,
half JPEG-like (random bytes, stored) and half OBJ text (random vertices, normals and faces;
deflated), are uploaded through the gateway; then, in one run:

- **Kiln**: `POST /v1/assets/archive` with every asset, polled on `GET /v1/jobs/{jobId}` every
  0.1 s until success; MiB/s is input bytes over submit → success (`kiln`) and over the job's
  own in-progress → success steps (`kiln-worker`, the worker's time). The archive
  service's peak RSS is its process's VmHWM (it serves ArchiveService and runs the archive
  worker); its VmRSS is also sampled at every poll. The ZIP is then checked once through Range
  GETs on `archiveUrl`: its central directory lists every asset in order with its size, and
  one stored and one deflated member read back (CRC checked) equal the uploaded bytes.
- **raw S3 copy** (the reference): the minio SDK GETs each asset object in turn and streams it
  into one multipart PUT, in this process: the same bytes through S3 and back, no ZIP.

Kiln and raw alternate for `--rounds` rounds (3); each figure is the median. Peak RSS is
the archive process's VmHWM over all rounds. CPU seconds per side are printed (the archive
process and SeaweedFS for Kiln; this process and SeaweedFS for raw); `--profile FILE` records
round 1's archive process with py-spy (raw format, every thread, idle included).

    python -m bench.archive [--gigabytes 1] [--assets 500] [--rounds 3] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import io
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
from minio import Minio

from bench._report import Figure, report, with_ratios
from bench.gateway_overhead import suite_env
from services.runtime.blob_keys import asset_key
from services.runtime.config import load_service_config

MB = 1024 * 1024
DEMO = ("demo", "demo-secret")
OBJ_BLOCK = 8 * MB


@functools.cache
def obj_text() -> bytes:
    """8 MiB of plausible OBJ: random vertices, texture coordinates, normals and faces, so it
    deflates (to about 45 %) at the CPU cost real meshes have; a repeated line would deflate
    a hundred times faster and measure nothing."""
    rng = random.Random(3)
    lines: list[str] = []
    length = 0
    while length < OBJ_BLOCK:
        roll = rng.random()
        if roll < 0.45:
            line = "v {:.6f} {:.6f} {:.6f}\n".format(*(rng.uniform(-10, 10) for _ in range(3)))
        elif roll < 0.65:
            line = f"vt {rng.random():.6f} {rng.random():.6f}\n"
        elif roll < 0.8:
            line = "vn {:.4f} {:.4f} {:.4f}\n".format(*(rng.uniform(-1, 1) for _ in range(3)))
        else:
            a, b, c = (rng.randrange(1, 200_000) for _ in range(3))
            line = f"f {a}/{a}/{a} {b}/{b}/{b} {c}/{c}/{c}\n"
        lines.append(line)
        length += len(line)
    return "".join(lines).encode()[:OBJ_BLOCK]


def asset_bytes(index: int, size: int) -> tuple[str, bytes]:
    if index % 2 == 0:
        # Random bytes behind a JPEG marker: incompressible, as real photos are.
        noise = random.Random(index).randbytes(max(0, size - 4))
        return f"photo{index}.jpg", b"\xff\xd8\xff\xe0" + noise
    # Each model starts at its own place in the block; repeats sit 8 MiB apart, far beyond
    # deflate's 32 KiB window, so they compress no better than the block does.
    text = obj_text()
    start = (index * 104_729) % len(text)
    rotated = text[start:] + text[:start]
    return f"model{index}.obj", (rotated * (size // len(rotated) + 1))[:size]


def vm_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class _Concatenated(io.RawIOBase):
    """The raw reference's source: each object's GET stream in turn, read as one stream."""

    def __init__(self, client: Minio, bucket: str, keys: list[str]) -> None:
        super().__init__()
        self._client, self._bucket, self._keys = client, bucket, list(keys)
        self._current: Any = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            if self._current is None:
                if not self._keys:
                    return 0
                self._current = self._client.get_object(self._bucket, self._keys.pop(0))
            data = self._current.read(len(buffer))
            if data:
                buffer[: len(data)] = data
                return len(data)
            self._current.close()
            self._current.release_conn()
            self._current = None


class _Ranged(io.RawIOBase):
    """A presigned URL read as a seekable file through Range GETs: enough for `zipfile` to read
    the central directory and a few members without downloading the whole archive."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self._http = httpx.Client(timeout=60)
        self._url = url
        head = self._http.get(url, headers={"Range": "bytes=0-0"})
        head.raise_for_status()
        self.size = int(head.headers["content-range"].rsplit("/", 1)[1])
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}[whence]
        self._position = base + offset
        return self._position

    def readinto(self, buffer: Any) -> int:
        end = min(self.size, self._position + len(buffer)) - 1
        if end < self._position:
            return 0
        reply = self._http.get(self._url, headers={"Range": f"bytes={self._position}-{end}"})
        reply.raise_for_status()
        data = reply.content
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)

    def close(self) -> None:
        self._http.close()
        super().close()


def verify(url: str, ids: list[str], size: int) -> str:
    """Reads the ZIP's central directory through Range GETs and checks it lists every asset, in
    request order, with its size; then reads back one stored and one deflated member (zipfile
    checks their CRC) and compares their bytes with what was uploaded."""
    with _Ranged(url) as source, zipfile.ZipFile(io.BufferedReader(source, 1 * MB)) as archive:
        infos = archive.infolist()
        if len(infos) != len(ids):
            raise RuntimeError(f"the archive lists {len(infos)} members, not {len(ids)}")
        for info, asset_id in zip(infos, ids, strict=True):
            if not info.filename.startswith(asset_id) or info.file_size != size:
                raise RuntimeError(f"member {info.filename} ({info.file_size} B) is not {asset_id}")
        for index in (len(ids) - 2, len(ids) - 1):  # the last JPEG and the last OBJ
            info = infos[index]
            stored = info.compress_type == zipfile.ZIP_STORED
            if stored != (index % 2 == 0):
                raise RuntimeError(
                    f"member {info.filename}: compression method {info.compress_type}"
                )
            if archive.read(info) != asset_bytes(index, size)[1]:
                raise RuntimeError(f"member {info.filename} differs from the uploaded asset")
        return f"{len(infos)} members listed with their sizes, 2 read back identical"


def raw_copy(env: dict[str, str], keys: list[str]) -> float:
    storage = load_service_config("archive", env).storage
    client = Minio(
        f"127.0.0.1:{env['KILN_S3_PORT']}",  # the launcher gives the services this endpoint
        access_key=storage.access_key,
        secret_key=storage.secret_key,
        secure=False,
        region=storage.region,
    )
    started = time.perf_counter()
    client.put_object(
        storage.bucket,
        "bench/raw-copy.bin",
        io.BufferedReader(_Concatenated(client, storage.bucket, keys), 1 * MB),
        length=-1,
        part_size=storage.part_size,
    )
    seconds = time.perf_counter() - started
    client.remove_object(storage.bucket, "bench/raw-copy.bin")
    return seconds


async def upload_all(base: str, count: int, size: int) -> list[str]:
    ids: list[str] = [""] * count
    gate = asyncio.Semaphore(4)
    async with httpx.AsyncClient(base_url=base, auth=DEMO, timeout=300) as http:

        async def one(index: int) -> None:
            name, data = asset_bytes(index, size)
            async with gate:
                response = await http.post("/v1/assets", files={"file": (name, data)})
            response.raise_for_status()
            ids[index] = response.json()["asset"]["id"]

        await asyncio.gather(*(one(i) for i in range(count)))
    return ids


async def archive(base: str, ids: list[str], pid: int) -> tuple[float, dict[str, Any], int]:
    peak_rss = 0
    async with httpx.AsyncClient(base_url=base, auth=DEMO, timeout=60) as http:
        started = time.perf_counter()
        launched = await http.post(
            "/v1/assets/archive",
            json={"query": {"assetIds": ids}, "options": {"flat": True, "fileNameTemplate": ""}},
        )
        launched.raise_for_status()
        job_id = launched.json()["job"]["jobId"]
        while True:
            peak_rss = max(peak_rss, vm_kb(pid, "VmRSS"))
            job = (await http.get(f"/v1/jobs/{job_id}")).json()["job"]
            if job["status"] in {"success", "failure", "canceled"}:
                break
            await asyncio.sleep(0.1)
        seconds = time.perf_counter() - started
    if job["status"] != "success":
        raise RuntimeError(f"the archive job ended {job['status']}: {job}")
    return seconds, job, peak_rss


def in_progress_seconds(job: dict[str, Any]) -> float:
    """The worker's own time: from the job's in-progress step to its success step."""
    dates = {step["status"]: step["date"] for step in job["statusHistory"]}
    began, ended = (
        dt.datetime.fromisoformat(dates[s].replace("Z", "+00:00"))
        for s in ("in-progress", "success")
    )
    return (ended - began).total_seconds()


def pid_of(data_dir: Path, name: str) -> int:
    state = json.loads((data_dir / "kiln.json").read_text())
    for process in state.get("processes", []):
        if process.get("name") == name:
            return int(process["pid"])
    raise RuntimeError(f"no {name} process in {data_dir / 'kiln.json'}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_profile(pid: int, path: str) -> subprocess.Popen[bytes]:
    py_spy = str(Path(sys.executable).with_name("py-spy"))
    options = ["--threads", "--idle", "--rate", "200", "--format", "raw", "-o", path]
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def median(values: list[float]) -> float:
    return statistics.median(values)


async def run(
    env: dict[str, str], data_dir: Path, *, gigabytes: float, count: int, rounds: int, profile: str
) -> list[Figure]:
    base = f"http://127.0.0.1:{env['KILN_GATEWAY_PORT']}"
    size = int(gigabytes * 1024 * MB / count)
    total = size * count
    began = time.perf_counter()
    ids = await upload_all(base, count, size)
    print(f"uploaded {count} assets, {total / MB:.0f} MiB, in {time.perf_counter() - began:.1f} s")
    pid, s3_pid = pid_of(data_dir, "archive"), pid_of(data_dir, "s3")
    keys = [asset_key("demo", i) for i in ids]
    kiln, worker, raw, sampled = [], [], [], 0
    # Alternating rounds, so that a slow moment of the shared VM does not fall on one side only.
    for round_ in range(rounds):
        spy = None
        if profile and round_ == 0:
            spy = start_profile(pid, profile)
            await asyncio.sleep(1.0)  # py-spy attaches
        cpu = cpu_seconds(pid), cpu_seconds(s3_pid)
        seconds, job, rss = await archive(base, ids, pid)
        cpu = cpu_seconds(pid) - cpu[0], cpu_seconds(s3_pid) - cpu[1]
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        sampled = max(sampled, rss)
        metadata = job["metadata"]
        kiln.append(seconds)
        worker.append(in_progress_seconds(job))
        print(
            f"round {round_ + 1}: archive {metadata['members']} members, "
            f"{int(metadata['size']) / MB:.0f} MiB ZIP in {seconds:.1f} s from submit "
            f"({worker[-1]:.1f} s in progress); CPU s: archive process {cpu[0]:.1f}, "
            f"SeaweedFS {cpu[1]:.1f}; archive process VmHWM {vm_kb(pid, 'VmHWM') / 1024:.0f} MiB"
        )
        if round_ == 0:
            checked = await asyncio.to_thread(verify, metadata["archiveUrl"], ids, size)
            print(f"archive verified: {checked}")
        cpu = time.process_time(), cpu_seconds(s3_pid)
        raw.append(await asyncio.to_thread(raw_copy, env, keys))
        cpu = time.process_time() - cpu[0], cpu_seconds(s3_pid) - cpu[1]
        print(
            f"round {round_ + 1}: raw copy in {raw[-1]:.1f} s; CPU s: this process "
            f"{cpu[0]:.1f}, SeaweedFS {cpu[1]:.1f}"
        )
    hwm = vm_kb(pid, "VmHWM")
    print(
        f"archive process peak RSS (VmHWM) {hwm / 1024:.0f} MiB; VmRSS sampled every 0.1 s: "
        f"at most {sampled / 1024:.0f} MiB"
    )
    case = f"{total / MB:.0f} MiB, {count} assets"
    return [
        Figure(case, "raw-s3-copy", round(total / MB / median(raw), 1), "MiB/s"),
        Figure(case, "kiln", round(total / MB / median(kiln), 1), "MiB/s"),
        Figure(case, "kiln-worker", round(total / MB / median(worker), 1), "MiB/s"),
        Figure(f"{total / MB:.0f} MiB: worker peak RSS", "kiln", round(hwm / 1024, 1), "MiB"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--gigabytes", type=float, default=1.0)
    parser.add_argument("--assets", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3, help="Kiln / raw pairs; medians kept")
    parser.add_argument("--profile", default="", help="py-spy raw profile of round 1's archive")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="kiln-bench-archive-"))
    env = suite_env(data_dir)
    launcher = [sys.executable, "-m", "deploy.local.launcher"]
    subprocess.run([*launcher, "--detach"], env=env, check=True, stdout=subprocess.DEVNULL)
    try:
        figures = asyncio.run(
            run(
                env,
                data_dir,
                gigabytes=args.gigabytes,
                count=args.assets,
                rounds=args.rounds,
                profile=args.profile,
            )
        )
    finally:
        subprocess.run([*launcher, "--stop"], env=env, check=False, stdout=subprocess.DEVNULL)
        subprocess.run(["rm", "-rf", str(data_dir)], check=False)
    report(
        "archive" if args.gigabytes == 1 else f"archive_{args.gigabytes:g}gb",
        with_ratios(figures, "raw-s3-copy"),
        {
            "gigabytes": args.gigabytes,
            "assets": args.assets,
            "rounds": args.rounds,
            "figures": "medians over the rounds (Kiln, then raw, alternating)",
            "suite": "make up layout: separate processes, SQLite, SeaweedFS",
            "kiln": "POST /v1/assets/archive, polled every 0.1 s; submit -> success",
            "kiln-worker": "the job's statusHistory: in-progress -> success (worker time)",
            "reference": "minio SDK: GET each asset, one streamed multipart PUT",
        },
    )


if __name__ == "__main__":
    main()
