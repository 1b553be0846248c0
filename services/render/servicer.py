"""ImageService: Claid's image edits over gRPC: sync, upload, async and batch.

Every request is checked in full before anything runs (`imaging.request`,
`render.batch`): a refused request is INVALID_ARGUMENT with every field's messages, queues no
job and fetches nothing. Async and batch edits become `image.edit` / `image.edit_batch` jobs
created with the caller's own token, so they belong to the caller's tenant; the job's seq_id is
Claid's integer task id.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2
from kiln.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from kiln.render.v1 import render_pb2, render_pb2_grpc

from services.render.batch import validate_batch_request
from services.render.edit_jobs import BATCH_KIND, EDIT_KIND
from services.render.editing import ImageEditor, SourceImage
from services.render.imaging.request import EditRequestInvalid, validate_edit_request
from services.runtime.context import current_tenant
from services.runtime.errors import InvalidArgument, MissingField
from services.runtime.peers import call_peer, caller_credentials

#: Stands in for an upload's input while its operations and output are checked.
_UPLOAD_INPUT = "storage://upload/file"


def _struct_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(message)


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def _sync_scope() -> str:
    # A synchronous edit has no job: a random folder keeps two calls' outputs apart.
    return uuid.uuid4().hex


class ImageServicer(render_pb2_grpc.ImageServiceServicer):
    def __init__(self, editor: ImageEditor, jobs: jobs_pb2_grpc.JobServiceStub) -> None:
        self._editor = editor
        self._jobs = jobs

    async def EditImage(
        self, request: render_pb2.EditImageRequest, context: grpc.aio.ServicerContext
    ) -> render_pb2.EditImageResponse:
        edit = validate_edit_request(_struct_dict(request.edit))
        data = await self._editor.edit(current_tenant(), edit, scope=_sync_scope(), mode="sync")
        return render_pb2.EditImageResponse(data=_struct(data))

    async def EditUploadedImage(
        self,
        request_iterator: AsyncIterator[render_pb2.EditUploadedImageRequest],
        context: grpc.aio.ServicerContext,
    ) -> render_pb2.EditUploadedImageResponse:
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("part") != "edit":
            raise MissingField("the first message must carry the edit", field="data")
        body = _struct_dict(first.edit.edit)
        if "input" in body:
            raise EditRequestInvalid({"input": ["an upload's input is the file; drop 'input'"]})
        edit = validate_edit_request({**body, "input": _UPLOAD_INPUT})
        data = bytearray()
        async for message in request_iterator:
            if message.WhichOneof("part") != "chunk":
                raise InvalidArgument("only the first message may carry the edit", field="data")
            data += message.chunk
            self._editor.check_upload_size(len(data))
        if not data:
            raise MissingField("the uploaded file is empty", field="file")
        source = SourceImage(data=bytes(data), name=first.edit.file_name)
        answer = await self._editor.edit(
            current_tenant(), edit, scope=_sync_scope(), mode="upload", source=source
        )
        return render_pb2.EditUploadedImageResponse(data=_struct(answer))

    async def SubmitEdit(
        self, request: render_pb2.SubmitEditRequest, context: grpc.aio.ServicerContext
    ) -> render_pb2.SubmitEditResponse:
        body = _struct_dict(request.edit)
        validate_edit_request(body)
        job = await self._create_job(context, EDIT_KIND, body, request.request_id)
        return render_pb2.SubmitEditResponse(job=job)

    async def SubmitBatchEdit(
        self, request: render_pb2.SubmitBatchEditRequest, context: grpc.aio.ServicerContext
    ) -> render_pb2.SubmitBatchEditResponse:
        body = _struct_dict(request.batch)
        validate_batch_request(body)
        job = await self._create_job(context, BATCH_KIND, body, request.request_id)
        return render_pb2.SubmitBatchEditResponse(job=job)

    async def _create_job(
        self,
        context: grpc.aio.ServicerContext,
        kind: str,
        body: dict[str, Any],
        request_id: str,
    ) -> jobs_pb2.Job:
        # The job keeps the body as sent: Claid's task view echoes it, and the worker checks
        # it again with its own code.
        created = await call_peer(
            self._jobs.CreateJob,
            jobs_pb2.CreateJobRequest(
                job=jobs_pb2.Job(kind=kind, params=_struct({"request": body})),
                request_id=request_id,
            ),
            caller_credentials(context),
        )
        job: jobs_pb2.Job = created.job
        return job
