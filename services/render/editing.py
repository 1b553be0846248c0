"""Image edits end to end: fetch the input, run the pipeline, store the output.

`ImageEditor` is what the render service's RPCs and its `image.edit` / `image.edit_batch` jobs
share:

- **Input**: an `http(s)` URL is fetched under the fetch policy (no loopback or private
  addresses unless `KILN_FETCH_ALLOWLIST` names them, a size cap, a timeout); a
  `storage://{name}/{path}` URI is read through the caller's named storage; an upload arrives
  as bytes. Anything that cannot be fetched is `InputUnreachable` (Claid's 400).
- **Edit**: `pipeline.edit_image` on a thread of the editor's own pool, at most
  `KILN_IMAGE_THREADS` at once per process: libvips and OpenCV release the GIL, so the event
  loop keeps serving while images are edited, and the pool bounds memory (each edit holds an
  image).
- **Output**: to `output.destination` when given (a storage folder or file, or a presigned
  http(s) PUT URL), else to the temporary area `tmp/{tenant}/{scope}/` of Kiln's bucket,
  answered as `tmp_url`, a presigned GET valid `KILN_IMAGE_TMP_URL_SECONDS` (24 h by default).
  `sweep_temporary` removes temporary results older than that.

Answers are Claid's objects: `{"input": InputObject, "output": OutputObject}`, the output with
`tmp_url`, or `object_key` / `object_bucket` / `object_uri` when it went to a storage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from prometheus_client import Counter, Gauge, Histogram

from services.render.imaging.fetch import FetchPolicy, fetch_url, put_url
from services.render.imaging.pipeline import EditedImage, EditLimits, edit_image
from services.render.storages import StorageResolver
from services.runtime.blob_keys import TMP_PREFIX, tmp_key
from services.runtime.config import ImagingConfig
from services.runtime.errors import TooLarge
from services.runtime.storage import BlobStore

log = logging.getLogger(__name__)

EDITS = Counter(
    "kiln_image_edits_total",
    "Image edits run, by how they were asked for and how they ended.",
    ["mode", "outcome"],
)
EDIT_SECONDS = Histogram(
    "kiln_image_edit_seconds",
    "Time the pipeline took for one image (decode, operations, encode).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
FETCH_SECONDS = Histogram(
    "kiln_image_fetch_seconds",
    "Time to fetch one input (URL or storage).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
INPUT_BYTES = Counter("kiln_image_input_bytes_total", "Bytes of input images read.")
OUTPUT_BYTES = Counter("kiln_image_output_bytes_total", "Bytes of edited images written.")
IN_PROGRESS = Gauge("kiln_image_edits_in_progress", "Images being edited now in this process.")
SWEPT = Counter("kiln_image_tmp_swept_total", "Temporary results removed after their lifetime.")

#: How often the temporary area is swept, at most (a shorter lifetime sweeps more often).
SWEEP_INTERVAL_SECONDS = 3600.0
_DEFAULT_STEM = "image"


@dataclass(frozen=True)
class SourceImage:
    """An input's bytes and the file name its output is named after."""

    data: bytes
    name: str


def output_name(input_name: str, ext: str) -> str:
    """The output's file name: the input's stem with the output format's extension."""
    stem = PurePosixPath(input_name).stem if input_name else ""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in stem).strip("._")
    return f"{(safe or _DEFAULT_STEM)[:150]}.{ext}"


def input_name(uri: str) -> str:
    """The last path segment of an input URI, as the file name outputs are named after."""
    path = urlsplit(uri).path if "://" in uri else uri
    return unquote(path.rsplit("/", 1)[-1])


class ImageEditor:
    """Fetches, edits and stores images for one render process."""

    def __init__(
        self,
        config: ImagingConfig,
        blobs: BlobStore,
        storages: StorageResolver,
    ) -> None:
        self.config = config
        self.blobs = blobs
        self.storages = storages
        self.policy = FetchPolicy.from_config(config)
        self.limits = EditLimits(
            max_input_megapixels=config.max_input_megapixels,
            max_output_megapixels=config.max_output_megapixels,
        )
        self._pool = ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix="edit")

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- the three steps -------------------------------------------------------------------

    async def fetch(self, tenant: str, uri: str) -> SourceImage:
        """The input's bytes: an http(s) URL under the fetch policy, or a storage object."""
        started = time.perf_counter()
        if uri.startswith("storage://"):
            fetched = await self.storages.read(tenant, uri, self.config.fetch_max_bytes)
        else:
            fetched = await fetch_url(uri, self.policy)
        FETCH_SECONDS.observe(time.perf_counter() - started)
        INPUT_BYTES.inc(len(fetched.data))
        return SourceImage(data=fetched.data, name=fetched.name or input_name(uri))

    def check_upload_size(self, size: int) -> None:
        if size > self.config.fetch_max_bytes:
            raise TooLarge(
                f"the uploaded file is larger than {self.config.fetch_max_bytes} bytes "
                "(KILN_FETCH_MAX_BYTES)",
                field="file",
            )

    async def run_pipeline(self, data: bytes, request: Mapping[str, Any]) -> EditedImage:
        """`edit_image` on the editor's pool; its errors (ImageInvalid, EditRequestInvalid)
        pass through."""
        loop = asyncio.get_running_loop()
        IN_PROGRESS.inc()
        started = time.perf_counter()
        try:
            return await loop.run_in_executor(self._pool, edit_image, data, request, self.limits)
        finally:
            IN_PROGRESS.dec()
            EDIT_SECONDS.observe(time.perf_counter() - started)

    async def store(
        self,
        tenant: str,
        request: Mapping[str, Any],
        edited: EditedImage,
        *,
        source_name: str,
        scope: str,
    ) -> dict[str, Any]:
        """Writes the output where the request says; answers Claid's OutputObject."""
        out = edited.output
        name = output_name(source_name, out.ext)
        destination = request["output"].get("destination")
        answer = out.to_json()
        OUTPUT_BYTES.inc(len(edited.data))
        if destination is None:
            key = tmp_key(tenant, scope, name)
            await self.blobs.put_bytes(key, edited.data, content_type=out.mime)
            answer["tmp_url"] = await self.blobs.presigned_get_url(
                key, expires_seconds=self.config.tmp_url_seconds
            )
        elif destination.startswith("storage://"):
            stored = await self.storages.write(tenant, destination, name, edited.data, out.mime)
            answer.update(
                object_key=stored.object_key,
                object_bucket=stored.object_bucket,
                object_uri=stored.object_uri,
            )
        else:
            await put_url(destination, edited.data, out.mime, self.policy)
        return answer

    # --- whole edits -------------------------------------------------------------------------

    async def edit(
        self,
        tenant: str,
        request: Mapping[str, Any],
        *,
        scope: str,
        mode: str,
        source: SourceImage | None = None,
    ) -> dict[str, Any]:
        """One validated request end to end → `{"input": …, "output": …}`. `source` is an
        uploaded file; otherwise `request["input"]` is fetched."""
        try:
            if source is None:
                source = await self.fetch(tenant, request["input"])
            edited = await self.run_pipeline(source.data, request)
            output = await self.store(tenant, request, edited, source_name=source.name, scope=scope)
        except BaseException:
            EDITS.labels(mode=mode, outcome="error").inc()
            raise
        EDITS.labels(mode=mode, outcome="ok").inc()
        return {"input": edited.input.to_json(), "output": output}

    # --- housekeeping ----------------------------------------------------------------------

    async def sweep_temporary(self) -> int:
        """Removes temporary results past their lifetime; answers how many."""
        removed = await self.blobs.delete_older_than(TMP_PREFIX, self.config.tmp_url_seconds)
        SWEPT.inc(removed)
        return removed

    async def sweep_forever(self) -> None:
        """Sweeps now and then every hour (or every quarter lifetime, if shorter)."""
        interval = min(SWEEP_INTERVAL_SECONDS, self.config.tmp_url_seconds / 4)
        while True:
            try:
                removed = await self.sweep_temporary()
                if removed:
                    log.info("removed %d expired temporary results", removed)
            except Exception:
                # A failed sweep is retried next time; it must never take the service down.
                log.warning("sweeping temporary results failed", exc_info=True)
            await asyncio.sleep(interval)
