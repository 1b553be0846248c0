"""The `archive.create` job: members chosen at request time, one ZIP written by a worker.

The handler runs the blocking ZIP stream on a thread of its own and bridges the two worlds:
progress (bytes written over bytes in all) goes to the job's heartbeat, and a cancelled job
sets the stream's cancel flag, then waits for the thread to abort its multipart upload before
the worker removes the job's outputs. The result's `archiveUrl` is a presigned GET that needs
no credentials and lasts KILN_PRESIGN_EXPIRY_SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format
from kiln.objects.v1 import assets_pb2
from prometheus_client import Counter, Histogram

from services.archive.naming import NamedAsset, member_names
from services.archive.zipstream import Member, ZipResult, should_deflate, write_zip
from services.runtime.blob_keys import asset_key
from services.runtime.errors import JobFailed
from services.runtime.worker import JobContext

ARCHIVES_WRITTEN = Counter("kiln_archives_written_total", "Archives completed.")
ARCHIVE_INPUT_BYTES = Counter(
    "kiln_archive_input_bytes_total", "Bytes of assets read into completed archives."
)
ARCHIVE_OUTPUT_BYTES = Counter("kiln_archive_output_bytes_total", "Bytes of ZIP written.")
ARCHIVE_SECONDS = Histogram(
    "kiln_archive_seconds",
    "Time to stream one archive.",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
)

KIND = "archive.create"
ARCHIVE_NAME = "archive.zip"
MAX_ASSETS = 1000


def members_for(
    tenant: str, assets: Iterable[assets_pb2.Asset], *, template: str, flat: bool
) -> list[dict[str, Any]]:
    """The archive's members, in request order, as the job's params carry them."""
    found = list(assets)
    named = [
        NamedAsset(
            id=a.id,
            kind=a.kind,
            mime_type=a.mime_type,
            metadata=json_format.MessageToDict(a.metadata),
        )
        for a in found
    ]
    names = member_names(named, template=template, flat=flat)
    return [
        {
            "assetId": a.id,
            "name": name,
            "key": asset_key(tenant, a.id),
            "size": int(a.size),
            "deflate": should_deflate(name, a.mime_type),
        }
        for a, name in zip(found, names, strict=True)
    ]


def _members(params: dict[str, Any]) -> list[Member]:
    try:
        return [
            Member(
                name=str(m["name"]),
                key=str(m["key"]),
                size=int(m["size"]),
                deflate=bool(m["deflate"]),
            )
            for m in params["members"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise JobFailed(f"the archive job's members are malformed: {exc!r}") from exc


async def create_archive(ctx: JobContext) -> dict[str, Any]:
    members = _members(ctx.params)
    total = sum(m.size for m in members)
    loop = asyncio.get_running_loop()
    cancelled = threading.Event()

    def progress(done: int) -> None:
        loop.call_soon_threadsafe(ctx.progress, done / total if total else 1.0)

    key = ctx.output_key(ARCHIVE_NAME)
    stream = loop.run_in_executor(
        None,
        functools.partial(
            write_zip, ctx.blobs, key, members, progress=progress, cancelled=cancelled
        ),
    )
    started = loop.time()
    try:
        result: ZipResult = await asyncio.shield(stream)
    except asyncio.CancelledError:
        # The thread runs on: stop it and wait for the upload to be aborted, so nothing is
        # left behind once the worker clears the job's outputs.
        cancelled.set()
        with contextlib.suppress(Exception):
            await stream
        raise
    ARCHIVE_SECONDS.observe(loop.time() - started)
    ARCHIVES_WRITTEN.inc()
    ARCHIVE_INPUT_BYTES.inc(total)
    ARCHIVE_OUTPUT_BYTES.inc(result.size)
    ctx.record_output(ARCHIVE_NAME, size=result.size, content_type="application/zip")
    url = await ctx.blobs.presigned_get_url(key, download_name=ARCHIVE_NAME)
    return {
        "archiveUrl": url,
        "assetIds": [str(m.get("assetId", "")) for m in ctx.params.get("members", [])],
        "size": result.size,
        "members": result.members,
    }


HANDLERS = {KIND: create_archive}
