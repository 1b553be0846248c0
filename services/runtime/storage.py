"""Blob storage on any S3 endpoint through the `minio` SDK, from asyncio without blocking it.

The SDK is synchronous, so every call runs on a dedicated thread pool. Streams cross the thread
boundary through a bounded queue: memory stays at one multipart part plus a few chunks whatever
the object's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import io
import queue
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import S3Error
from prometheus_client import Counter, Histogram

from services.runtime.config import StorageConfig
from services.runtime.errors import NotFound, StorageError

T = TypeVar("T")
CHUNK_BYTES = 1024 * 1024
_QUEUE_DEPTH = 4
#: Put into a QueueReader's queue to end the stream it feeds.
END_OF_STREAM = object()

S3_SECONDS = Histogram(
    "kiln_s3_operation_seconds",
    "Time of one S3 SDK call, by operation (the SDK method: put_object, get_object, read, "
    "stat_object, remove_object, remove_prefix, ...) and outcome (ok, not_found, error).",
    ["operation", "outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120),
)
S3_BYTES = Counter(
    "kiln_s3_bytes_total",
    "Bytes moved to and from S3 through the blob store, by direction (read, written).",
    ["direction"],
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchObject", "NoSuchBucket"})


def timed_call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Calls one S3 SDK method (blocking) and records its latency under the method's name.
    Every S3 call goes through here: BlobStore's own, and those of code that drives the SDK
    on its own threads (the archive's ZIP stream)."""
    operation = getattr(fn, "__name__", "call")
    started, outcome = time.perf_counter(), "error"
    try:
        result = fn(*args, **kwargs)
        outcome = "ok"
        return result
    except S3Error as err:
        outcome = "not_found" if err.code in _NOT_FOUND_CODES else "error"
        raise
    finally:
        S3_SECONDS.labels(operation, outcome).observe(time.perf_counter() - started)


@dataclass(frozen=True)
class BlobInfo:
    """What S3 knows of one stored object."""

    key: str
    size: int
    etag: str
    content_type: str


@dataclass(frozen=True)
class PutResult:
    """The outcome of a streamed upload."""

    key: str
    size: int
    sha256: str
    etag: str


class QueueReader(io.RawIOBase):
    """A file-like the SDK reads on its thread, fed chunk by chunk through `queue`: bytes, then
    END_OF_STREAM; an exception put there is raised to the reader (the SDK then aborts its
    multipart upload)."""

    def __init__(self) -> None:
        super().__init__()
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=_QUEUE_DEPTH)
        self._buffer = bytearray()
        self._done = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while not self._done and (size < 0 or len(self._buffer) < size):
            item = self.queue.get()
            if item is END_OF_STREAM:
                self._done = True
            elif isinstance(item, BaseException):
                self._done = True
                raise item
            else:
                self._buffer += item
        if size < 0 or size >= len(self._buffer):
            data = bytes(self._buffer)
            self._buffer.clear()
        else:
            data = bytes(self._buffer[:size])
            del self._buffer[:size]
        return data


class BlobWriter:
    """Streams one object into S3 (multipart beyond one part); aborts the upload on error.

    Use as `async with store.writer(key) as w: await w.write(chunk)`.
    """

    def __init__(self, store: BlobStore, key: str, content_type: str) -> None:
        self._store = store
        self.key = key
        self._content_type = content_type
        self._reader = QueueReader()
        self._sha = hashlib.sha256()
        self.size = 0
        self._upload: asyncio.Future[Any] | None = None

    async def __aenter__(self) -> BlobWriter:
        self._upload = self._store._submit(
            self._store.client.put_object,
            self._store.bucket,
            self.key,
            self._reader,
            length=-1,
            part_size=self._store.config.part_size,
            content_type=self._content_type,
        )
        return self

    async def write(self, data: bytes) -> None:
        if not data:
            return
        assert self._upload is not None, "use BlobWriter as an async context manager"
        if self._upload.done():
            # The upload thread failed early; surface its error instead of blocking forever.
            await self._upload
        self._sha.update(data)
        self.size += len(data)
        S3_BYTES.labels("written").inc(len(data))
        await self._put(bytes(data))
        if self._upload.done():
            await self._upload

    async def _put(self, item: Any) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._blocking_put, item)

    def _blocking_put(self, item: Any) -> None:
        # A bare put() would block forever once the upload thread has died with a full queue.
        upload = self._upload
        while True:
            try:
                self._reader.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                if upload is not None and upload.done():
                    return

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._upload is not None
        if exc is not None:
            # The SDK aborts the multipart upload when its reader raises.
            await self._put(StorageError(f"upload of {self.key} abandoned: {exc!r}"))
            # The original error is the one to report; the upload's own failure follows from it.
            with contextlib.suppress(Exception):
                await self._upload
            return
        await self._put(END_OF_STREAM)
        try:
            result = await self._upload
        except S3Error as err:
            raise StorageError(f"S3 rejected the upload of {self.key}: {err.code}") from err
        self.result = PutResult(
            key=self.key, size=self.size, sha256=self._sha.hexdigest(), etag=str(result.etag)
        )


class BlobStore:
    """One bucket on one S3 endpoint."""

    def __init__(self, config: StorageConfig, *, max_threads: int = 16) -> None:
        self.config = config
        self.bucket = config.bucket
        http = urllib3.PoolManager(
            maxsize=max_threads,
            timeout=urllib3.Timeout(connect=5, read=60),
            retries=urllib3.Retry(
                total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
        )
        self.client = Minio(
            config.endpoint,
            access_key=config.access_key,
            secret_key=config.secret_key,
            secure=config.secure,
            region=config.region,
            http_client=http,
        )
        # Presigned URLs are signed for the host clients will use; signing needs no network
        # because the region is given.
        self._presigner = (
            Minio(
                config.public_endpoint,
                access_key=config.access_key,
                secret_key=config.secret_key,
                secure=config.secure,
                region=config.region,
            )
            if config.public_endpoint
            else self.client
        )
        self._executor = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="s3")

    def _submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        """Runs one SDK call on the pool, timed (see `timed_call`)."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, lambda: timed_call(fn, *args, **kwargs))

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await self._submit(fn, *args, **kwargs)
        except S3Error as err:
            if err.code in {"NoSuchKey", "NoSuchObject"}:
                raise NotFound(f"blob {args[1] if len(args) > 1 else ''} not found") from err
            raise StorageError(f"S3 error {err.code}: {err.message}") from err
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise StorageError(f"S3 unreachable at {self.config.endpoint}: {err}") from err

    async def ensure_bucket(self) -> None:
        """Creates the bucket when missing; racing replicas are fine."""
        if await self._call(self.client.bucket_exists, self.bucket):
            return
        try:
            await self._call(self.client.make_bucket, self.bucket)
        except StorageError:
            if not await self._call(self.client.bucket_exists, self.bucket):
                raise

    def writer(self, key: str, content_type: str = "application/octet-stream") -> BlobWriter:
        return BlobWriter(self, key, content_type)

    async def put_stream(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        content_type: str = "application/octet-stream",
        *,
        max_bytes: int | None = None,
    ) -> PutResult:
        """Streams chunks into `key`; beyond `max_bytes` the upload is aborted."""
        from services.runtime.errors import TooLarge

        async with self.writer(key, content_type) as w:
            async for chunk in chunks:
                if max_bytes is not None and w.size + len(chunk) > max_bytes:
                    raise TooLarge(f"upload exceeds {max_bytes} bytes")
                await w.write(chunk)
        return w.result

    async def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> PutResult:
        S3_BYTES.labels("written").inc(len(data))
        await self._call(
            self.client.put_object,
            self.bucket,
            key,
            io.BytesIO(data),
            len(data),
            content_type=content_type,
        )
        return PutResult(key=key, size=len(data), sha256=hashlib.sha256(data).hexdigest(), etag="")

    async def get_stream(
        self, key: str, *, offset: int = 0, length: int = 0, chunk_size: int = CHUNK_BYTES
    ) -> AsyncIterator[bytes]:
        """Yields the object's bytes; raises NotFound before the first chunk when absent."""
        response = await self._call(
            self.client.get_object, self.bucket, key, offset=offset, length=length
        )
        try:
            while True:
                chunk = await self._call(response.read, chunk_size)
                if not chunk:
                    break
                S3_BYTES.labels("read").inc(len(chunk))
                yield chunk
        finally:
            response.close()
            response.release_conn()

    async def get_bytes(self, key: str) -> bytes:
        return b"".join([chunk async for chunk in self.get_stream(key)])

    async def stat(self, key: str) -> BlobInfo | None:
        try:
            info = await self._call(self.client.stat_object, self.bucket, key)
        except NotFound:
            return None
        return BlobInfo(
            key=key,
            size=int(info.size or 0),
            etag=str(info.etag),
            content_type=str(info.content_type),
        )

    async def delete(self, key: str) -> None:
        await self._call(self.client.remove_object, self.bucket, key)

    async def delete_prefix(self, prefix: str) -> int:
        """Removes every object whose key starts with `prefix`; answers how many."""
        return await self._remove_under(prefix, None)

    async def delete_older_than(self, prefix: str, age_seconds: float) -> int:
        """Removes the objects under `prefix` last written more than `age_seconds` ago;
        answers how many (the sweep of temporary results)."""
        return await self._remove_under(
            prefix, dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age_seconds)
        )

    async def _remove_under(self, prefix: str, written_before: dt.datetime | None) -> int:
        if not prefix.endswith("/"):
            # A bare "jobs/1" would also match "jobs/10/…".
            raise ValueError(f"prefix {prefix!r} must end with '/'")

        def remove_prefix() -> int:
            names = [
                obj.object_name
                for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
                if obj.object_name
                and (
                    written_before is None
                    or (obj.last_modified is not None and obj.last_modified < written_before)
                )
            ]
            if not names:
                return 0
            errors = list(self.client.remove_objects(self.bucket, (DeleteObject(n) for n in names)))
            if errors:
                raise OSError(f"could not remove {len(errors)} objects under {prefix}: {errors[0]}")
            return len(names)

        return await self._call(remove_prefix)

    async def presigned_get_url(
        self,
        key: str,
        *,
        expires_seconds: int | None = None,
        download_name: str | None = None,
    ) -> str:
        """A URL anyone can GET until it expires; no credentials needed."""
        headers = None
        if download_name:
            safe = download_name.replace('"', "").replace("\\", "")
            headers = {"response-content-disposition": f'attachment; filename="{safe}"'}
        expires = dt.timedelta(seconds=expires_seconds or self.config.presign_expiry_seconds)
        return await self._call(
            self._presigner.presigned_get_object,
            self.bucket,
            key,
            expires=expires,
            response_headers=headers,
        )

    async def presigned_put_url(self, key: str, *, expires_seconds: int | None = None) -> str:
        expires = dt.timedelta(seconds=expires_seconds or self.config.presign_expiry_seconds)
        return await self._call(
            self._presigner.presigned_put_object, self.bucket, key, expires=expires
        )

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
