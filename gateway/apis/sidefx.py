"""SideFX's Web API: `POST /api/` with the form field `json` = `["module.function", [args],
{kwargs}]` (seed 001), form-encoded, or multipart when files are sent (each file keyword a
part named after it). Tokens come from `/oauth2/application_token` (`gateway.apis.oauth2`).

Answers: `200` with the function's JSON result, or `200` `application/octet-stream` streamed
for binary results (`assets.download`, `jobs.output`). Errors have a plain-text body, as
SideFX's client reads them: `404` an unknown function, `400` a malformed call or wrong
arguments (naming the problem), `401` missing, bad or expired tokens (with
`WWW-Authenticate`), `403`, `404` unknown ids (another tenant's included), `409`, `413` a body
over the limits, `429` with `Retry-After`, `500` without a traceback. The functions live in
`gateway.apis.sidefx_registry`.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
from starlette.datastructures import UploadFile
from starlette.responses import Response

from gateway.apis import sidefx_registry
from gateway.apis.registry import ApiModule
from gateway.apis.sidefx_registry import RpcCallError, RpcFile
from gateway.errors import ApiError, ErrorShapes, RenderedError
from gateway.jsonpb import json_response
from gateway.routing import Endpoint, RequestContext, endpoint, limited_request

PATH = "/api"
MAX_FILES = 64
MAX_FIELD_BYTES = 8 * 1024 * 1024


def _bad_call(message: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        message,
        reason="ERROR_REASON_MALFORMED_BODY",
        http_status=400,
    )


def sidefx_shape(error: ApiError) -> RenderedError:
    """SideFX's error body: the message as plain text, with the status the error maps to
    (422-style refusals are 400 here: SideFX's client knows 400)."""
    status = error.http_status
    if status == 422:
        status = 400
    return RenderedError(
        status=status,
        body=error.message + "\n",
        headers=error.headers,
        media_type="text/plain; charset=utf-8",
    )


def _decode_call(raw: str) -> tuple[str, list[Any], dict[str, Any]]:
    try:
        call = json.loads(raw)
    except ValueError as exc:
        raise _bad_call(f"the json field is not valid JSON: {exc}") from None
    if not isinstance(call, list) or not 1 <= len(call) <= 3:
        raise _bad_call('json must be ["module.function", [args], {kwargs}]')
    name = call[0]
    args = call[1] if len(call) > 1 else []
    kwargs = call[2] if len(call) > 2 else {}
    if not isinstance(name, str) or not name:
        raise _bad_call("json[0] must be the function's name, module.function")
    if not isinstance(args, list):
        raise _bad_call("json[1] must be a list of positional arguments")
    if not isinstance(kwargs, dict):
        raise _bad_call("json[2] must be an object of keyword arguments")
    return name, args, kwargs


async def _form(context: RequestContext) -> tuple[str, dict[str, RpcFile], Any]:
    """The `json` field, the file parts by name, and the form to close afterwards."""
    media = context.request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media == "multipart/form-data":
        request = await limited_request(context.request, context.gateway.limits.max_upload_bytes)
        max_fields = 16
    elif media in ("application/x-www-form-urlencoded", ""):
        request = await limited_request(context.request, context.gateway.config.max_body_bytes)
        max_fields = 16
    else:
        raise ApiError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "send the json field form-encoded, or as multipart/form-data with files",
            http_status=415,
        )
    try:
        form = await request.form(
            max_files=MAX_FILES, max_fields=max_fields, max_part_size=MAX_FIELD_BYTES
        )
    except ApiError:
        raise
    except Exception as exc:
        raise _bad_call(f"malformed form body: {exc}") from None
    files: dict[str, RpcFile] = {}
    raw: str | None = None
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key in files:
                await form.close()
                raise _bad_call(f"the file keyword {key!r} came twice")
            files[key] = RpcFile(filename=value.filename or "unnamed.bin", upload=value)
        elif key == "json":
            raw = value
        else:
            await form.close()
            raise _bad_call(f"unknown form field {key!r}: send json, and files as parts")
    if raw is None:
        await form.close()
        raise _bad_call('missing the json field: json=["module.function", [args], {kwargs}]')
    return raw, files, form


async def rpc_call(context: RequestContext) -> Response:
    raw, files, form = await _form(context)
    try:
        name, args, kwargs = _decode_call(raw)
        clash = sorted(set(files) & set(kwargs))
        if clash:
            raise _bad_call(f"{', '.join(clash)} sent both as a file and in json")
        try:
            result = await sidefx_registry.call(context, name, args, {**kwargs, **files})
        except LookupError:
            raise ApiError(
                grpc.StatusCode.NOT_FOUND,
                f"unknown API function {name!r}",
                reason="ERROR_REASON_NOT_FOUND",
            ) from None
        except RpcCallError as exc:
            raise _bad_call(str(exc)) from None
    except BaseException:
        await form.close()
        raise
    if isinstance(result, Response):
        # The form (and its spooled files) is no longer needed once streaming starts.
        await form.close()
        return result
    await form.close()
    return json_response(result)


def register_shapes(shapes: ErrorShapes) -> None:
    # /api/scenes and /api/jobs are Clara's and keep their shape (the longer prefix wins).
    shapes.register(sidefx_shape, path_prefix="/api")


def endpoints() -> list[Endpoint]:
    # The trailing slash of SideFX's /api/ is accepted like every route's.
    return [endpoint("POST", PATH, rpc_call, name="sidefx.Call")]


API = ApiModule(
    name="sidefx",
    endpoints=endpoints,
    register_shapes=register_shapes,
    services=("objects", "jobs", "render", "archive"),
)
