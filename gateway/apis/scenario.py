"""Scenario's routes that transcoding cannot express: the multipart upload and the job view.

`GET /v1/jobs/{jobId}` answers `{"job": {jobId, jobType, status, progress, metadata, createdAt,
updatedAt, statusHistory}}` from JobService.GetJob (`gateway.apis.jobs_views.scenario_job`);
an unknown id, or another tenant's, is 404.

`POST /v1/assets` takes multipart/form-data: optional text fields `name`, `prompt`, `seed`,
`generator`, `num` (an integer), which become the asset's metadata, and one file in the part
named `file`. The file streams into `AssetService/UploadAsset` as it arrives (a header
message, then chunks of at most 1 MiB): memory stays at about one chunk whatever the size.

Because the header message goes first, the text fields must come before the file part (as
browsers, curl in argument order, requests and httpx send them); a field after the file is
refused. Any failure cancels the call, so a refused or truncated upload stores nothing. An
`Idempotency-Key` header becomes the upload's request_id (AIP-155): a retried upload with the
same key answers the first asset.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass, field
from typing import Any

import grpc
from kiln.objects.v1 import assets_pb2
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.responses import Response

from gateway.apis import jobs_views
from gateway.apis.registry import ApiModule
from gateway.errors import ApiError
from gateway.jsonpb import json_response, message_to_json
from gateway.routing import Endpoint, RequestContext, body_too_large, endpoint

SERVICE = "kiln.objects.v1.AssetService"
_UPLOAD = f"/{SERVICE}/UploadAsset"
CHUNK_BYTES = 1024 * 1024
_TEXT_FIELDS = frozenset({"name", "prompt", "seed", "generator"})
_INTEGER_FIELDS = frozenset({"num"})
_FILE_FIELD = "file"
_MAX_FIELD_BYTES = 4096
_OVERHEAD_BYTES = 1024 * 1024
_MAX_IDEMPOTENCY_KEY = 128
_INTEGER = re.compile(r"-?\d{1,15}")


def _invalid(message: str, field: str | None = None) -> ApiError:
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        message,
        reason="ERROR_REASON_INVALID_FIELD",
        metadata={"field": field} if field else None,
    )


@dataclass
class _Part:
    name: str
    file_name: str | None
    content_type: str
    value: bytearray = field(default_factory=bytearray)


class _Upload:
    """One multipart request turned into one client-streaming call."""

    def __init__(self, context: RequestContext, boundary: bytes) -> None:
        self.context = context
        self.events: list[tuple[str, Any]] = []
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, str] = {}
        self.parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": lambda: self.events.append(("part_end", None)),
                "on_end": lambda: self.events.append(("end", None)),
            },
        )
        self.metadata: dict[str, Any] = {}
        self.part: _Part | None = None
        self.call: Any = None
        self.file_seen = False
        self.file_size = 0
        self.buffer = bytearray()
        self.complete = False

    # The parser's callbacks are synchronous: they only record events, which `run` then
    # handles with awaits (writes to the call) between two reads of the body.

    def _on_part_begin(self) -> None:
        self._headers = {}

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        name = self._header_name.decode("latin-1").strip().lower()
        self._headers[name] = self._header_value.decode("utf-8", "replace").strip()
        self._header_name.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        self.events.append(("part", dict(self._headers)))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.events.append(("data", data[start:end]))

    async def run(self, stack: contextlib.ExitStack) -> Response:
        # Fields, part headers and boundaries ride on top of the file; past this the body is
        # refused even if the file itself is within its limit (no endless preamble/epilogue).
        limit = self.context.gateway.limits.max_upload_bytes + _OVERHEAD_BYTES
        received = 0
        async for chunk in self.context.request.stream():
            received += len(chunk)
            if received > limit:
                raise body_too_large(limit)
            try:
                self.parser.write(chunk)
            except MultipartParseError as exc:
                raise _invalid(f"malformed multipart body: {exc}") from None
            await self._drain(stack)
        if not self.complete:
            raise _invalid("the multipart body ended before its closing boundary")
        if not self.file_seen:
            raise _invalid(f"missing the {_FILE_FIELD!r} file part", _FILE_FIELD)
        await self.call.done_writing()
        reply = await self.call
        return json_response(message_to_json(reply))

    async def _drain(self, stack: contextlib.ExitStack) -> None:
        events, self.events = self.events, []
        for kind, value in events:
            if kind == "part":
                await self._begin_part(value, stack)
            elif kind == "data":
                await self._data(value)
            elif kind == "part_end":
                await self._end_part()
            else:
                self.complete = True

    async def _begin_part(self, headers: dict[str, str], stack: contextlib.ExitStack) -> None:
        disposition, options = parse_options_header(headers.get("content-disposition", ""))
        if disposition != b"form-data" or b"name" not in options:
            raise _invalid("every part needs Content-Disposition: form-data; name=...")
        name = options[b"name"].decode("utf-8", "replace")
        file_name = options.get(b"filename")
        part = _Part(
            name=name,
            file_name=None if file_name is None else file_name.decode("utf-8", "replace"),
            content_type=headers.get("content-type", ""),
        )
        if name == _FILE_FIELD:
            if self.file_seen:
                raise _invalid("send one file per upload", _FILE_FIELD)
            self.file_seen = True
            await self._start_call(part, stack)
        elif name in _TEXT_FIELDS or name in _INTEGER_FIELDS:
            if self.file_seen:
                raise _invalid(f"field {name!r} must come before the file part", name)
            if name in self.metadata:
                raise _invalid(f"field {name!r} given twice", name)
        else:
            raise _invalid(
                f"unknown form field {name!r}; expected file, name, prompt, seed, generator, num",
                name,
            )
        self.part = part

    async def _data(self, data: bytes) -> None:
        part = self.part
        assert part is not None
        if part.name != _FILE_FIELD:
            part.value += data
            if len(part.value) > _MAX_FIELD_BYTES:
                raise _invalid(f"field {part.name!r} exceeds {_MAX_FIELD_BYTES} bytes", part.name)
            return
        self.file_size += len(data)
        limit = self.context.gateway.limits.max_upload_bytes
        if self.file_size > limit:
            raise body_too_large(limit)
        self.buffer += data
        while len(self.buffer) >= CHUNK_BYTES:
            await self._write(assets_pb2.UploadAssetRequest(chunk=bytes(self.buffer[:CHUNK_BYTES])))
            del self.buffer[:CHUNK_BYTES]

    async def _end_part(self) -> None:
        part, self.part = self.part, None
        assert part is not None
        if part.name == _FILE_FIELD:
            if self.buffer:
                await self._write(assets_pb2.UploadAssetRequest(chunk=bytes(self.buffer)))
                self.buffer.clear()
            return
        try:
            text = part.value.decode("utf-8")
        except UnicodeDecodeError:
            raise _invalid(f"field {part.name!r} is not UTF-8", part.name) from None
        if part.name in _INTEGER_FIELDS:
            if not _INTEGER.fullmatch(text.strip()):
                raise _invalid(f"field {part.name!r} must be an integer", part.name)
            self.metadata[part.name] = int(text.strip())
        else:
            self.metadata[part.name] = text

    async def _start_call(self, part: _Part, stack: contextlib.ExitStack) -> None:
        context = self.context
        key = context.request.headers.get("idempotency-key", "")
        if len(key) > _MAX_IDEMPOTENCY_KEY:
            raise _invalid(f"Idempotency-Key exceeds {_MAX_IDEMPOTENCY_KEY} characters")
        media = part.content_type.split(";", 1)[0].strip().lower()
        header = assets_pb2.AssetHeader(
            file_name=part.file_name or "",
            # octet-stream says nothing; an empty type lets the service guess from the name.
            mime_type="" if media in ("", "application/octet-stream") else media,
            request_id=key,
        )
        header.metadata.update(self.metadata)
        upstreams = context.gateway.upstreams
        stack.enter_context(upstreams.track(_UPLOAD, "client_stream"))
        method = upstreams.channel("objects").stream_unary(
            _UPLOAD,
            request_serializer=assets_pb2.UploadAssetRequest.SerializeToString,
            response_deserializer=assets_pb2.UploadAssetResponse.FromString,
        )
        self.call = method(
            metadata=context.metadata(), timeout=context.gateway.limits.upload_timeout
        )
        await self._write(assets_pb2.UploadAssetRequest(header=header))

    async def _write(self, message: Any) -> None:
        try:
            await self.call.write(message)
        except (asyncio.InvalidStateError, grpc.aio.AioRpcError, grpc.aio.UsageError):
            # The service ended the call early (it refused the upload): raise its status,
            # which the call carries whichever way the write found out.
            await self.call
            raise ApiError(grpc.StatusCode.INTERNAL, "the upload ended early") from None


async def upload_asset(context: RequestContext) -> Response:
    """`POST /v1/assets`: a multipart upload streamed into UploadAsset."""
    content_type = context.request.headers.get("content-type", "")
    media, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if media != b"multipart/form-data" or not boundary:
        raise ApiError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "send the upload as multipart/form-data with the file in a part named 'file'",
            reason="ERROR_REASON_INVALID_FIELD",
            http_status=415,
        )
    upload = _Upload(context, boundary)
    with contextlib.ExitStack() as stack:
        try:
            return await upload.run(stack)
        except BaseException:
            if upload.call is not None and not upload.call.done():
                # Cancelled, never half-closed: the service aborts its multipart upload.
                upload.call.cancel()
            raise


async def get_job(context: RequestContext) -> Response:
    """`GET /v1/jobs/{jobId}`: Scenario's view of any of the caller's jobs."""
    job = await jobs_views.get_job(context, job_id=context.path_params["jobId"])
    return json_response({"job": jobs_views.scenario_job(job)})


def endpoints() -> list[Endpoint]:
    """Scenario's asset adapter endpoints."""
    return [endpoint("POST", "/v1/assets", upload_asset, service=SERVICE, name="UploadAsset")]


def job_endpoints() -> list[Endpoint]:
    """Scenario's job view."""
    return [
        endpoint(
            "GET",
            "/v1/jobs/{jobId}",
            get_job,
            service=jobs_views.JOB_SERVICE,
            name="scenario.GetJob",
        )
    ]


API = ApiModule(name="scenario", endpoints=endpoints, services=("objects",))
#: Scenario's job view, apart from the asset routes because it calls another service.
JOBS_API = ApiModule(name="scenario-jobs", endpoints=job_endpoints, services=("jobs",))
