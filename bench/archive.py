"""Archives: Scenario's archive job against a raw S3 GET + PUT copy of the same bytes.

The `make up` layout (separate processes, SQLite, SeaweedFS) started by the launcher. Assets,
half JPEG-like (random bytes, stored) and half OBJ text (deflated), are uploaded through the
gateway; then, in one run:

- **Kiln**: `POST /v1/assets/archive` with every asset, polled on `GET /v1/jobs/{jobId}` every
  0.1 s until success; MB/s is input bytes over submit → success. The archive service's peak
  RSS is its process's VmHWM (it serves ArchiveService and runs the archive worker).
- **raw S3 copy** (the reference): the minio SDK GETs each asset object in turn and streams it
  into one multipart PUT, in this process: the same bytes through S3 and back, no ZIP.

    python -m bench.archive [--gigabytes 1] [--assets 500]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import subprocess
import sys
import tempfile
import time
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
OBJ_LINE = b"v 0.123456 1.234567 2.345678\nvn 0.0 0.0 1.0\nf 1//1 2//2 3//3\n"


def asset_bytes(index: int, size: int) -> tuple[str, bytes]:
    if index % 2 == 0:
        # Random bytes behind a JPEG marker: incompressible, as real photos are.
        noise = random.Random(index).randbytes(max(0, size - 4))
        return f"photo{index}.jpg", b"\xff\xd8\xff\xe0" + noise
    lines = OBJ_LINE * (size // len(OBJ_LINE) + 1)
    return f"model{index}.obj", lines[:size]


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


def archive_pid(data_dir: Path) -> int:
    state = json.loads((data_dir / "kiln.json").read_text())
    for process in state.get("processes", state.get("children", [])):
        if process.get("name") == "archive":
            return int(process["pid"])
    raise RuntimeError(f"no archive process in {data_dir / 'kiln.json'}")


async def run(env: dict[str, str], data_dir: Path, gigabytes: float, count: int) -> list[Figure]:
    base = f"http://127.0.0.1:{env['KILN_GATEWAY_PORT']}"
    size = int(gigabytes * 1024 * MB / count)
    total = size * count
    began = time.perf_counter()
    ids = await upload_all(base, count, size)
    print(f"uploaded {count} assets, {total / MB:.0f} MiB, in {time.perf_counter() - began:.1f} s")
    pid = archive_pid(data_dir)
    seconds, job, sampled_rss = await archive(base, ids, pid)
    hwm = vm_kb(pid, "VmHWM")
    metadata = job["metadata"]
    print(
        f"archive: {metadata.get('members')} members, {int(metadata.get('size', 0)) / MB:.0f} MiB "
        f"ZIP; archive process peak RSS {hwm / 1024:.0f} MiB (sampled {sampled_rss / 1024:.0f})"
    )
    keys = [asset_key("demo", i) for i in ids]
    raw_seconds = await asyncio.to_thread(raw_copy, env, keys)
    case = f"{count} assets, {total / MB:.0f} MiB"
    return [
        Figure(case, "raw-s3-copy", round(total / MB / raw_seconds, 1), "MiB/s"),
        Figure(case, "kiln", round(total / MB / seconds, 1), "MiB/s"),
        Figure(f"{case}: worker peak RSS", "kiln", round(hwm / 1024, 1), "MiB"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--gigabytes", type=float, default=1.0)
    parser.add_argument("--assets", type=int, default=500)
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="kiln-bench-archive-"))
    env = suite_env(data_dir)
    launcher = [sys.executable, "-m", "deploy.local.launcher"]
    subprocess.run([*launcher, "--detach"], env=env, check=True, stdout=subprocess.DEVNULL)
    try:
        figures = asyncio.run(run(env, data_dir, args.gigabytes, args.assets))
    finally:
        subprocess.run([*launcher, "--stop"], env=env, check=False, stdout=subprocess.DEVNULL)
        subprocess.run(["rm", "-rf", str(data_dir)], check=False)
    report(
        "archive" if args.gigabytes == 1 else f"archive_{args.gigabytes:g}gb",
        with_ratios(figures, "raw-s3-copy"),
        {
            "gigabytes": args.gigabytes,
            "assets": args.assets,
            "suite": "make up layout: separate processes, SQLite, SeaweedFS",
            "kiln": "POST /v1/assets/archive, polled every 0.1 s; submit -> success",
            "reference": "minio SDK: GET each asset, one streamed multipart PUT",
        },
    )


if __name__ == "__main__":
    main()
