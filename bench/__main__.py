"""`make bench`: runs every benchmark in turn; each prints its table and writes
bench/results/<name>.json. Figures go to docs/performance.md with the command behind each."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = [
    "bench.grpc_overhead",
    "bench.gateway_overhead",
    "bench.edge",
    "bench.s3_throughput",
    "bench.objects",
    "bench.jobs",
    "bench.archive",
    "bench.images",
    "bench.claid_poll",
    "bench.render",
]


def main() -> None:
    failed = [name for name in BENCHMARKS if subprocess.call([sys.executable, "-m", name]) != 0]
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
