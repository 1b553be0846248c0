"""Shared measuring and output: a timed request loop, percentiles, a table, a JSON file."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Figure:
    """One measured row: what ran, how it did, and its ratio to the reference row."""

    case: str
    variant: str
    value: float
    unit: str
    p50_ms: float | None = None
    p99_ms: float | None = None
    ratio: float | None = None


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def rate_figure(
    case: str, variant: str, rate: float, samples: Sequence[float], unit: str, *, digits: int = 2
) -> Figure:
    """A throughput row with the p50 / p99 of its latency samples (seconds)."""
    return Figure(
        case=case,
        variant=variant,
        value=round(rate, 1),
        unit=unit,
        p50_ms=round(percentile(samples, 0.5) * 1000, digits),
        p99_ms=round(percentile(samples, 0.99) * 1000, digits),
    )


async def measure(
    call: Callable[[], Awaitable[object]], requests: int, concurrency: int, *, warmup: int = 100
) -> tuple[float, list[float]]:
    """Runs `call` `requests` times from `concurrency` workers: (requests/s, latencies in s)."""
    for _ in range(warmup):
        await call()
    latencies: list[float] = []
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            began = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return requests / (time.perf_counter() - began), latencies


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


def with_ratios(figures: list[Figure], reference: str) -> list[Figure]:
    """Adds value / reference value for each case, the reference being the named variant."""
    base = {f.case: f.value for f in figures if f.variant == reference}
    out = []
    for f in figures:
        ref = base.get(f.case)
        ratio = round(f.value / ref, 3) if ref else None
        out.append(Figure(**{**asdict(f), "ratio": ratio}))
    return out


def report(name: str, figures: list[Figure], notes: dict[str, Any]) -> Path:
    """Prints a table and writes bench/results/<name>.json."""
    print(f"\n{name}")
    columns = ("case", "variant", "value", "unit", "p50 ms", "p99 ms", "ratio")
    header = "{:<28} {:<14} {:>12} {:<8} {:>8} {:>8} {:>6}".format(*columns)
    print(header)
    print("-" * len(header))
    for f in figures:
        p50 = f"{f.p50_ms:.2f}" if f.p50_ms is not None else "-"
        p99 = f"{f.p99_ms:.2f}" if f.p99_ms is not None else "-"
        ratio = f"{f.ratio:.2f}" if f.ratio is not None else "-"
        value = f"{f.value:.1f}"
        print(f"{f.case:<28} {f.variant:<14} {value:>12} {f.unit:<8} {p50:>8} {p99:>8} {ratio:>6}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(
        json.dumps(
            {
                "benchmark": name,
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "notes": notes,
                "figures": [asdict(f) for f in figures],
            },
            indent=2,
        )
    )
    return path
