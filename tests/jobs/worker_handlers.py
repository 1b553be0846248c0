"""Job handlers the worker tests run, in the test process and in worker subprocesses.

Behaviour comes from the job's params, so one set of handlers serves every test. Handlers
record what happened to them in module-level dicts (in-process tests read those) and, when
params name a `marker_dir`, in files there (subprocess tests read those).

`python -m services.runtime.worker tests.jobs.worker_handlers:handlers` loads `handlers()`,
which names the kinds `<KILN_TEST_KIND_PREFIX>.<behaviour>`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from services.runtime.errors import JobFailed
from services.runtime.worker import Handler, JobContext

#: (job id, attempt) -> monotonic time the handler started / was stopped.
STARTED: dict[tuple[str, int], float] = {}
STOPPED: dict[tuple[str, int], float] = {}


def _mark(ctx: JobContext, what: str) -> None:
    marker_dir = ctx.params.get("marker_dir")
    if marker_dir:
        path = Path(marker_dir) / f"{ctx.job_id}.{ctx.attempt}.{what}"
        path.write_text(f"{time.time()}\n")


def _started(ctx: JobContext) -> None:
    STARTED[(ctx.job_id, ctx.attempt)] = time.monotonic()
    _mark(ctx, "started")


async def _wait(ctx: JobContext, seconds: float) -> None:
    """Sleeps, recording when (and whether) the worker stopped us."""
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        STOPPED[(ctx.job_id, ctx.attempt)] = time.monotonic()
        _mark(ctx, "stopped")
        raise


async def echo(ctx: JobContext) -> dict[str, Any]:
    """Writes params["outputs"] ({name: text}) as outputs; answers the params."""
    _started(ctx)
    ctx.progress(0.5)
    for name, text in dict(ctx.params.get("outputs", {})).items():
        await ctx.put_output(name, str(text).encode(), "text/plain")
    return {"echo": ctx.params, "tenant": ctx.tenant, "attempt": ctx.attempt}


async def flaky(ctx: JobContext) -> dict[str, Any]:
    """Fails (retryably) until attempt params["succeed_on"]."""
    _started(ctx)
    if ctx.attempt < int(ctx.params.get("succeed_on", 2)):
        raise JobFailed(f"not yet (attempt {ctx.attempt})", retryable=True)
    return {"attempt": ctx.attempt}


async def fail(ctx: JobContext) -> None:
    _started(ctx)
    raise JobFailed(str(ctx.params.get("message", "bad input")))


async def crash(ctx: JobContext) -> None:
    _started(ctx)
    raise ValueError("secret internal detail /srv/kiln/db-password")


async def slow(ctx: JobContext) -> dict[str, Any]:
    """Writes a partial output, reports progress, then takes params["seconds"]."""
    await ctx.put_output("partial.bin", b"partial", "application/octet-stream")
    ctx.progress(0.25)
    _started(ctx)
    await _wait(ctx, float(ctx.params.get("seconds", 3600)))
    return {"slept": ctx.params.get("seconds", 3600)}


async def hang_first(ctx: JobContext) -> dict[str, Any]:
    """Attempt 1 writes out.txt and never ends; later attempts overwrite it and succeed."""
    await ctx.put_output("out.txt", f"attempt {ctx.attempt}".encode(), "text/plain")
    _started(ctx)
    if ctx.attempt == 1:
        await _wait(ctx, 3600)
    return {"attempt": ctx.attempt, "pid": os.getpid()}


BEHAVIOURS: dict[str, Handler] = {
    "echo": echo,
    "flaky": flaky,
    "fail": fail,
    "crash": crash,
    "slow": slow,
    "hang-first": hang_first,
}


def handlers(prefix: str | None = None) -> Mapping[str, Handler]:
    """{"<prefix>.<behaviour>": handler}; the prefix defaults to $KILN_TEST_KIND_PREFIX."""
    prefix = prefix or os.environ.get("KILN_TEST_KIND_PREFIX", "test.worker")
    return {f"{prefix}.{name}": handler for name, handler in BEHAVIOURS.items()}
