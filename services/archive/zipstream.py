"""A ZIP streamed from S3 objects into one S3 multipart upload, in flat memory.

One thread reads each member from S3 and writes it through `zipfile` into a bounded pipe; the
SDK's multipart upload reads the pipe on another thread. A third sends each next member's GET
while the current one streams. Nothing is ever held whole: memory is
the pipe (a few chunks) plus the upload's one part buffer, whatever the archive's size. Because
the output is not seekable, `zipfile` writes each member's sizes and CRC in a data descriptor
after its bytes, and ZIP64 records wherever sizes or offsets pass 4 GiB.

Members that are already compressed (JPEG, PNG, WebP, GLB, ZIP…) are stored; text-like ones
(OBJ, MTL, glTF JSON…) are deflated at level 1, which keeps most of the saving at a fraction
of the CPU. Cancelling (or any error) aborts the multipart upload: no partial archive remains.
"""

from __future__ import annotations

import contextlib
import io
import queue
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from services.runtime.errors import StorageError
from services.runtime.storage import END_OF_STREAM, BlobStore, QueueReader, timed_call

CHUNK = 1024 * 1024
#: Deflate only what compresses: text formats 3D pipelines exchange.
_DEFLATE_EXTENSIONS = frozenset(
    {
        ".obj", ".mtl", ".gltf", ".json", ".txt", ".csv", ".svg", ".xml", ".dae", ".x3d",
        ".ply", ".stl", ".off", ".usda", ".md", ".html", ".yaml", ".yml",
    }
)  # fmt: skip
_DEFLATE_TYPES = ("text/", "application/json", "model/gltf+json", "image/svg")


def should_deflate(name: str, mime_type: str) -> bool:
    lowered = name.lower()
    dot = lowered.rfind(".")
    if dot >= 0 and lowered[dot:] in _DEFLATE_EXTENSIONS:
        return True
    return mime_type.startswith(_DEFLATE_TYPES)


@dataclass(frozen=True)
class Member:
    """One file of the archive: its name inside, and where its bytes are."""

    name: str
    key: str
    size: int
    deflate: bool


@dataclass(frozen=True)
class ZipResult:
    key: str
    size: int
    members: int


class Cancelled(Exception):
    """The job was cancelled while its archive was being written."""


class _Sink(io.RawIOBase):
    """What `zipfile` writes to: coalesces its many small writes into CHUNK-sized pieces."""

    def __init__(self, pipe: QueueReader, upload_failed: Callable[[], bool]) -> None:
        super().__init__()
        self._pipe = pipe
        self._upload_failed = upload_failed
        self._pending = bytearray()
        self.written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._pending += view
        self.written += len(view)
        if len(self._pending) >= CHUNK:
            self._send(bytes(self._pending))
            self._pending.clear()
        return len(view)

    def flush(self) -> None:
        return None

    def finish(self) -> None:
        if self._pending:
            self._send(bytes(self._pending))
            self._pending.clear()

    def _send(self, item: Any) -> None:
        while True:
            try:
                self._pipe.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                if self._upload_failed():
                    raise StorageError("the archive upload stopped") from None


def write_zip(
    store: BlobStore,
    key: str,
    members: Sequence[Member],
    *,
    progress: Callable[[int], None],
    cancelled: threading.Event,
    content_type: str = "application/zip",
) -> ZipResult:
    """Writes the archive to `key`; blocking, so run it in a thread.

    `progress` is called with the bytes of member data written so far (at most every 0.2 s);
    setting `cancelled` stops the stream and aborts the upload (raising Cancelled).
    """
    pipe = QueueReader()
    upload: dict[str, Any] = {}

    def upload_thread() -> None:
        try:
            upload["result"] = timed_call(
                store.client.put_object,
                store.bucket,
                key,
                pipe,
                length=-1,
                part_size=store.config.part_size,
                content_type=content_type,
            )
        except BaseException as exc:  # handed to the writer, which reports it
            upload["error"] = exc

    uploader = threading.Thread(target=upload_thread, name="kiln-archive-upload", daemon=True)
    uploader.start()
    sink = _Sink(pipe, lambda: "error" in upload)
    done = 0
    reported = 0.0
    # One GET ahead: the next member's request is sent, and its response headers awaited, on
    # another thread while this member streams, so S3's time to first byte (about 10 ms a
    # member here, a third of a 500-member archive's time) overlaps the copy and the deflate.
    # Only the headers are read ahead; the body waits in the socket, so memory stays flat.
    fetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kiln-archive-get")
    ahead: Future[Any] | None = None

    def fetch(index: int) -> Future[Any] | None:
        if index >= len(members):
            return None
        return fetcher.submit(timed_call, store.client.get_object, store.bucket, members[index].key)

    try:
        ahead = fetch(0)
        with zipfile.ZipFile(sink, "w", allowZip64=True) as archive:
            for index, member in enumerate(members):
                info = zipfile.ZipInfo(member.name, date_time=time.localtime()[:6])
                info.compress_type = zipfile.ZIP_DEFLATED if member.deflate else zipfile.ZIP_STORED
                info._compresslevel = 1  # type: ignore[attr-defined]  # public only from 3.13
                info.file_size = member.size
                info.external_attr = 0o644 << 16
                assert ahead is not None
                response = ahead.result()
                ahead = fetch(index + 1)
                try:
                    with archive.open(
                        info, "w", force_zip64=member.size >= zipfile.ZIP64_LIMIT
                    ) as out:
                        for chunk in response.stream(CHUNK):
                            if cancelled.is_set():
                                raise Cancelled("archive cancelled")
                            out.write(chunk)
                            done += len(chunk)
                            now = time.monotonic()
                            if now - reported >= 0.2:
                                reported = now
                                progress(done)
                finally:
                    response.close()
                    response.release_conn()
        sink.finish()
    except BaseException as exc:
        # The SDK aborts the multipart upload when its reader raises.
        _feed(pipe, StorageError(f"archive {key} abandoned: {exc!r}"), uploader)
        uploader.join(30)
        raise
    finally:
        _discard(ahead)
        fetcher.shutdown(wait=False)
    _feed(pipe, END_OF_STREAM, uploader)
    uploader.join()
    if "error" in upload:
        raise StorageError(f"the archive upload failed: {upload['error']!r}") from upload["error"]
    progress(done)
    return ZipResult(key=key, size=sink.written, members=len(members))


def _discard(ahead: Future[Any] | None) -> None:
    """Closes a GET read ahead and never streamed (the archive failed or was cancelled)."""
    if ahead is None:
        return
    with contextlib.suppress(BaseException):
        response = ahead.result(timeout=60)
        response.close()
        response.release_conn()


def _feed(pipe: QueueReader, item: Any, uploader: threading.Thread) -> None:
    while uploader.is_alive():
        try:
            pipe.queue.put(item, timeout=0.2)
            return
        except queue.Full:
            continue
