"""What one poll of a Claid task costs: `GET /v1/image/edit/async/{id}` of a DONE task, `--polls`
times one after another on the `make up` layout (as `bench/images.py` starts it), with each
service's CPU read from `/proc/<pid>/stat` before and after. The round trip is this client's;
the CPU is the gateway's and the jobs service's per poll. `bench/images.py` compares polling a
task with following it as Server-Sent Events; this is the per-request half of that difference.

    python -m bench.claid_poll [--polls 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

import httpx

from bench._report import Figure, percentile, report
from bench.archive import pid_of
from bench.images import PHOTO_CACHE, TARGET_WIDTH, Kiln, make_photo, polled, serve

SERVICES = ("gateway", "jobs")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU of `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(polls: int) -> list[Figure]:
    PHOTO_CACHE.mkdir(parents=True, exist_ok=True)
    photo = PHOTO_CACHE / "photo0.jpg"
    if not photo.exists():
        photo.write_bytes(make_photo(0))
    kiln = Kiln()
    kiln.start()
    server, port = serve(PHOTO_CACHE)
    try:
        base = f"http://127.0.0.1:{kiln.env['KILN_GATEWAY_PORT']}"
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            headers = {"Authorization": f"Bearer {await kiln.token(http)}"}
            body = {
                "input": f"http://127.0.0.1:{port}/{photo.name}",
                "operations": {"resizing": {"width": TARGET_WIDTH}},
                "output": {"format": "webp"},
            }
            accepted = await http.post("/v1/image/edit/async", json=body, headers=headers)
            path = f"/v1/image/edit/async/{accepted.raise_for_status().json()['data']['id']}"
            await polled(http, path, headers)
            pids = {name: pid_of(kiln.data_dir, name) for name in SERVICES}
            for _ in range(50):  # warm-up
                (await http.get(path, headers=headers)).raise_for_status()
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            latencies = []
            for _ in range(polls):
                started = time.perf_counter()
                (await http.get(path, headers=headers)).raise_for_status()
                latencies.append(time.perf_counter() - started)
            after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    finally:
        server.shutdown()
        kiln.stop()
    case = "one poll of a DONE task"
    figures = [
        Figure(
            case,
            "round trip",
            round(sum(latencies) / polls * 1000, 2),
            "ms",
            p50_ms=round(percentile(latencies, 0.5) * 1000, 2),
            p99_ms=round(percentile(latencies, 0.99) * 1000, 2),
        )
    ]
    for name in SERVICES:
        spent = (after[name] - before[name]) / polls * 1000
        figures.append(Figure(case, f"{name} CPU", round(spent, 2), "ms"))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--polls", type=int, default=500)
    args = parser.parse_args()
    if args.polls < 1:
        parser.error("--polls must be at least 1")
    figures = asyncio.run(run(args.polls))
    report(
        "claid_poll",
        figures,
        {"polls": args.polls, "cpu": "from /proc/<pid>/stat, per poll, after 50 warm-up polls"},
    )


if __name__ == "__main__":
    main()
