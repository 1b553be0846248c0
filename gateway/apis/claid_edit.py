"""Claid.ai's image editing routes, on the render service's ImageService and StorageService.

Under both `/v1-beta1` and `/v1`:

- `POST …/image/edit`: a synchronous edit → `{"data": {"input": InputObject, "output":
  OutputObject}}`.
- `POST …/image/edit/async` → `{"data": {id, status: "ACCEPTED", result_url, created_at,
  request, errors, result}}`; `GET …/image/edit/async/{task_id}` (`gateway.apis.claid`) then
  shows the task.

Under `/v1` only (as Claid serves them):

- `POST /v1/image/edit/upload`: multipart/form-data with the image in `file` and
  `{operations, output}` as a JSON string in `data` → the synchronous answer.
- `POST /v1/image/edit/batch` → the accepted batch; `GET /v1/image/edit/batch/{task_id}` →
  `{"data": {id, status, result_url, created_at, request, errors, results: [{input_object,
  output_object}]}}`.
- `/v1/storage/storage-types` (GET), `/v1/storage/storages` (GET, POST) and
  `/v1/storage/storages/{storage_id}` (GET, PUT, DELETE): named storages, each answered as
  `{"data": {id, name, type, parameters}}` (the secret key is never answered).

The bodies are passed on as sent (a Struct): the render service checks every rule and answers
every field's problems at once, which Claid's shape renders as 422 / "9000" with
`error_details`. A body that is not JSON is 400. An `Idempotency-Key` header becomes the job's
request_id.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import struct_pb2
from kiln.jobs.v1 import jobs_pb2
from kiln.render.v1 import render_pb2
from starlette.datastructures import UploadFile
from starlette.responses import Response

from gateway.apis import claid, jobs_views
from gateway.apis.jobs_views import CLAID_PREFIXES, CLAID_TASK_PATH
from gateway.apis.registry import ApiModule
from gateway.errors import ApiError, claid_shape
from gateway.jsonpb import json_response, loads
from gateway.routing import Endpoint, RequestContext, endpoint, limited_request

IMAGE_SERVICE = "kiln.render.v1.ImageService"
STORAGE_SERVICE = "kiln.render.v1.StorageService"
BATCH_KIND = "image.edit_batch"
BATCH_PATH = "/v1/image/edit/batch"
#: A synchronous edit fetches, decodes, edits and stores a whole image: more than a plain
#: call's deadline on a large one.
EDIT_DEADLINE_SECONDS = 120.0
UPLOAD_CHUNK_BYTES = 1024 * 1024
_MAX_IDEMPOTENCY_KEY = 128
_MAX_DATA_FIELD_BYTES = 1024 * 1024


def _invalid(message: str, field: str, *, status: int | None = None) -> ApiError:
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        message,
        reason="ERROR_REASON_INVALID_FIELD",
        metadata={"field": field},
        http_status=status,
    )


def _malformed(message: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        message,
        reason="ERROR_REASON_MALFORMED_BODY",
        metadata={"field": "body"},
    )


def _decode_json(raw: bytes, what: str) -> Any:
    try:
        return loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _malformed(f"{what} is not valid JSON: {exc}") from None


def _struct(value: Any, field: str) -> struct_pb2.Struct:
    """The body as a Struct; a body that is not an object is the service's to refuse, with
    Claid's wording, so it travels wrapped."""
    struct = struct_pb2.Struct()
    if not isinstance(value, dict):
        raise ApiError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "Input should be a valid dictionary",
            reason="ERROR_REASON_INVALID_FIELD",
            metadata={"field": field},
        )
    struct.update(value)
    return struct


def _request_id(context: RequestContext) -> str:
    key = context.request.headers.get("idempotency-key", "")
    if len(key) > _MAX_IDEMPOTENCY_KEY:
        raise _invalid(
            f"Idempotency-Key is longer than {_MAX_IDEMPOTENCY_KEY} characters", "Idempotency-Key"
        )
    return key


async def _call(
    context: RequestContext,
    service: str,
    method: str,
    request: Any,
    reply: type[Any],
    *,
    deadline: float | None = None,
) -> Any:
    return await context.call("render", f"/{service}/{method}", request, reply, deadline=deadline)


# --- edits ----------------------------------------------------------------------------------


async def edit_image(context: RequestContext) -> Response:
    """`POST …/image/edit` → `{"data": {"input", "output"}}`."""
    body = _decode_json(await context.read_body(), "the body")
    request = render_pb2.EditImageRequest(edit=_struct(body, "body"))
    reply = await _call(
        context,
        IMAGE_SERVICE,
        "EditImage",
        request,
        render_pb2.EditImageResponse,
        deadline=EDIT_DEADLINE_SECONDS,
    )
    return json_response({"data": jobs_views.struct_dict(reply.data)})


def submit_handler(prefix: str) -> Callable[[RequestContext], Awaitable[Response]]:
    async def submit_edit(context: RequestContext) -> Response:
        """`POST {prefix}/image/edit/async` → the accepted task."""
        body = _decode_json(await context.read_body(), "the body")
        request = render_pb2.SubmitEditRequest(
            edit=_struct(body, "body"), request_id=_request_id(context)
        )
        reply = await _call(
            context, IMAGE_SERVICE, "SubmitEdit", request, render_pb2.SubmitEditResponse
        )
        return claid.task_response(context, reply.job, prefix)

    return submit_edit


async def upload_edit(context: RequestContext) -> Response:
    """`POST /v1/image/edit/upload`: `file` + `data` (JSON) → `{"data": {"input", "output"}}`.

    The form is read whole first (files spool to disk past 1 MiB): `data` may come after the
    file, and the service needs the edit before the bytes."""
    content_type = context.request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "send multipart/form-data with a `file` part and a `data` part",
            reason="ERROR_REASON_MALFORMED_BODY",
            http_status=415,
        )
    limit = context.gateway.limits.max_upload_bytes
    request = await limited_request(context.request, limit)
    try:
        form = await request.form(max_files=1, max_fields=1, max_part_size=_MAX_DATA_FIELD_BYTES)
    except ApiError:
        raise
    except Exception as exc:
        # Starlette's parser refuses malformed bodies and excess parts with a plain exception.
        raise _malformed(f"malformed multipart body: {exc}") from None
    try:
        for key in form:
            if key not in ("file", "data"):
                raise _invalid(f"unknown form field {key!r}; expected file and data", key)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise _invalid("missing the 'file' part (the image)", "file")
        data = form.get("data")
        if data is None:
            edit: Any = {}
        elif isinstance(data, str):
            edit = _decode_json(data.encode(), "the data field")
        else:
            raise _invalid("the data part is a JSON string, not a file", "data")
        header = render_pb2.EditUploadedImageRequest(
            edit=render_pb2.UploadedEdit(
                edit=_struct(edit, "data"), file_name=upload.filename or ""
            )
        )
        reply = await _stream_upload(context, header, upload)
    finally:
        await form.close()
    return json_response({"data": jobs_views.struct_dict(reply.data)})


async def _stream_upload(
    context: RequestContext, header: render_pb2.EditUploadedImageRequest, upload: UploadFile
) -> render_pb2.EditUploadedImageResponse:
    async def messages() -> AsyncIterator[render_pb2.EditUploadedImageRequest]:
        yield header
        while chunk := await upload.read(UPLOAD_CHUNK_BYTES):
            yield render_pb2.EditUploadedImageRequest(chunk=chunk)

    return await context.client_stream(
        "render",
        f"/{IMAGE_SERVICE}/EditUploadedImage",
        messages(),
        render_pb2.EditUploadedImageResponse,
        deadline=EDIT_DEADLINE_SECONDS,
    )


# --- batches --------------------------------------------------------------------------------


def batch_view(job: jobs_pb2.Job, base: str) -> dict[str, Any]:
    """`{"data": {id, status, result_url, created_at, request, errors, results}}`: the task view
    with every input's result, and one error per input that failed."""
    view = jobs_views.claid_task(job, base, "/v1")
    data: dict[str, Any] = dict(view["data"])
    data["result_url"] = f"{base}{BATCH_PATH}/{job.seq_id}"
    result = jobs_views.struct_dict(job.result)
    data.pop("result", None)
    data["results"] = result.get("results", []) if job.status == jobs_views.SUCCEEDED else []
    errors = list(data.get("errors") or [])
    for failed in result.get("errors", []) or []:
        if isinstance(failed, dict):
            errors.append(
                {
                    "error": failed.get("error"),
                    "created_at": failed.get("created_at"),
                    "input_object": None,
                    "input": failed.get("input"),
                }
            )
    data["errors"] = errors
    return {"data": data}


async def submit_batch(context: RequestContext) -> Response:
    """`POST /v1/image/edit/batch` → the accepted batch."""
    body = _decode_json(await context.read_body(), "the body")
    request = render_pb2.SubmitBatchEditRequest(
        batch=_struct(body, "body"), request_id=_request_id(context)
    )
    reply = await _call(
        context, IMAGE_SERVICE, "SubmitBatchEdit", request, render_pb2.SubmitBatchEditResponse
    )
    return json_response(batch_view(reply.job, jobs_views.base_url(context.request)))


async def get_batch(context: RequestContext) -> Response:
    """`GET /v1/image/edit/batch/{task_id}`; 404 "Batch image edit pipeline not found"."""
    task_id = claid.parse_task_id(context.path_params["task_id"])
    try:
        job = await claid.get_task_job(context, task_id, kind=BATCH_KIND)
    except ApiError as exc:
        if exc.code == grpc.StatusCode.NOT_FOUND:
            raise ApiError(
                grpc.StatusCode.NOT_FOUND,
                "Batch image edit pipeline not found",
                reason="ERROR_REASON_NOT_FOUND",
            ) from None
        raise
    return json_response(batch_view(job, jobs_views.base_url(context.request)))


# --- storages -------------------------------------------------------------------------------


def _storage_json(storage: render_pb2.Storage) -> dict[str, Any]:
    return {
        "id": storage.id,
        "name": storage.name,
        "type": storage.type,
        "parameters": jobs_views.struct_dict(storage.parameters),
    }


def _storage_id(context: RequestContext) -> int:
    raw = context.path_params["storage_id"]
    if not raw.isdigit() or len(raw) > 18:
        raise _invalid("value is not a valid integer", "storage_id", status=422)
    return int(raw)


async def _storage_body(context: RequestContext) -> render_pb2.Storage:
    body = _decode_json(await context.read_body(), "the body")
    if not isinstance(body, dict):
        raise _invalid("the body must be an object {name, type, parameters}", "body")
    for key in body:
        if key not in ("name", "type", "parameters"):
            raise _invalid("Extra inputs are not permitted", str(key))
    name, kind, parameters = body.get("name"), body.get("type"), body.get("parameters", {})
    if not isinstance(name, str):
        raise _invalid("name is required and must be a string", "name")
    if not isinstance(kind, str):
        raise _invalid("type is required and must be a string", "type")
    if not isinstance(parameters, dict):
        raise _invalid("parameters must be an object", "parameters")
    storage = render_pb2.Storage(name=name, type=kind)
    storage.parameters.update(parameters)
    return storage


async def storage_types(context: RequestContext) -> Response:
    reply = await _call(
        context,
        STORAGE_SERVICE,
        "ListStorageTypes",
        render_pb2.ListStorageTypesRequest(),
        render_pb2.ListStorageTypesResponse,
    )
    return json_response({"data": list(reply.types)})


async def list_storages(context: RequestContext) -> Response:
    reply = await _call(
        context,
        STORAGE_SERVICE,
        "ListStorages",
        render_pb2.ListStoragesRequest(),
        render_pb2.ListStoragesResponse,
    )
    return json_response({"data": [_storage_json(s) for s in reply.storages]})


async def create_storage(context: RequestContext) -> Response:
    request = render_pb2.CreateStorageRequest(storage=await _storage_body(context))
    reply = await _call(
        context, STORAGE_SERVICE, "CreateStorage", request, render_pb2.CreateStorageResponse
    )
    return json_response({"data": _storage_json(reply.storage)})


async def get_storage(context: RequestContext) -> Response:
    request = render_pb2.GetStorageRequest(id=_storage_id(context))
    reply = await _call(
        context, STORAGE_SERVICE, "GetStorage", request, render_pb2.GetStorageResponse
    )
    return json_response({"data": _storage_json(reply.storage)})


async def update_storage(context: RequestContext) -> Response:
    storage_id = _storage_id(context)
    storage = await _storage_body(context)
    storage.id = storage_id
    request = render_pb2.UpdateStorageRequest(storage=storage)
    reply = await _call(
        context, STORAGE_SERVICE, "UpdateStorage", request, render_pb2.UpdateStorageResponse
    )
    return json_response({"data": _storage_json(reply.storage)})


async def delete_storage(context: RequestContext) -> Response:
    request = render_pb2.DeleteStorageRequest(id=_storage_id(context))
    await _call(
        context, STORAGE_SERVICE, "DeleteStorage", request, render_pb2.DeleteStorageResponse
    )
    return Response(status_code=204)


def register_shapes(shapes: Any) -> None:
    """Claid's envelope on its storage routes too (`/v1-beta1` and `/v1/image` are
    `gateway.apis.claid`'s)."""
    shapes.register(claid_shape, path_prefix="/v1/storage")


def endpoints() -> list[Endpoint]:
    routes: list[Endpoint] = []
    for prefix in CLAID_PREFIXES:
        routes += [
            endpoint(
                "POST",
                f"{prefix}/image/edit",
                edit_image,
                service=IMAGE_SERVICE,
                name=f"claid.EditImage{prefix}",
            ),
            endpoint(
                "POST",
                f"{prefix}{CLAID_TASK_PATH}",
                submit_handler(prefix),
                service=IMAGE_SERVICE,
                name=f"claid.SubmitEdit{prefix}",
            ),
        ]
    storages = "/v1/storage/storages"
    routes += [
        endpoint(
            "POST", "/v1/image/edit/upload", upload_edit, service=IMAGE_SERVICE, name="claid.Upload"
        ),
        endpoint("POST", BATCH_PATH, submit_batch, service=IMAGE_SERVICE, name="claid.SubmitBatch"),
        endpoint(
            "GET",
            f"{BATCH_PATH}/{{task_id}}",
            get_batch,
            service=jobs_views.JOB_SERVICE,
            name="claid.GetBatch",
        ),
        endpoint(
            "GET",
            "/v1/storage/storage-types",
            storage_types,
            service=STORAGE_SERVICE,
            name="claid.StorageTypes",
        ),
        endpoint("GET", storages, list_storages, service=STORAGE_SERVICE, name="claid.Storages"),
        endpoint(
            "POST", storages, create_storage, service=STORAGE_SERVICE, name="claid.CreateStorage"
        ),
        endpoint(
            "GET",
            f"{storages}/{{storage_id}}",
            get_storage,
            service=STORAGE_SERVICE,
            name="claid.GetStorage",
        ),
        endpoint(
            "PUT",
            f"{storages}/{{storage_id}}",
            update_storage,
            service=STORAGE_SERVICE,
            name="claid.UpdateStorage",
        ),
        endpoint(
            "DELETE",
            f"{storages}/{{storage_id}}",
            delete_storage,
            service=STORAGE_SERVICE,
            name="claid.DeleteStorage",
        ),
    ]
    return routes


API = ApiModule(
    name="claid-edit",
    endpoints=endpoints,
    register_shapes=register_shapes,
    services=("render", "jobs"),
)
