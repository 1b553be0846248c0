"""Clara.io's scene routes: scenes, import, export and render, onto SceneService (objects) and
RenderService (render); the jobs they create answer on Clara's job URL (`clara.py`).

- `GET /api/scenes` → `{"models": [Scene…]}` (`query`, `page`, `perPage`); `POST /api/scenes`
  creates (`{"name": …}`, JSON or a form) → 201 and the scene; `GET` / `PUT` / `DELETE
  /api/scenes/{id}`. Scene ids are UUIDs; another tenant's scene is unknown (404).
- `POST /api/scenes/{id}/import`: multipart files under any field names. `async` (query or
  form field) truthy → 202, `Location` the job URL, the job JSON; otherwise the request waits
  for the job (at most `SYNC_WAIT_SECONDS`, Clara's two minutes) and answers it: 200 and the
  job JSON when it succeeded, 422 and the job JSON (plus `message`) when it failed. A job
  still running at the limit answers 202 as if `async` had been asked. Other form fields are
  Clara's import options, kept with the job.
- `GET /api/scenes/{id}/export/{extension}` waits and answers the file's bytes; `POST` is
  async (202). `zip` (default true) and `centerScene` come from the query or the body.
- `GET /api/scenes/{id}/render` waits and answers the image's bytes (`url=true`: `{"url"}`,
  the output's job file URL); `POST` is async. `width`, `height`, `format`, `time`,
  `azimuthAngle`, `polarAngle`, `boundingRadius` come from the query or the body; Clara's
  V-Ray-only and WebGL-v2-only parameters are accepted and have no effect.
- `Accept: text/event-stream` on a synchronous call streams the job's events instead of
  waiting (Clara's SSE page).

Errors are Clara's `{"message", "field"?}`: 404 unknown scene, 422 a request the service
refuses (bad numbers, an unsupported export extension, an import without a model file, a
render of a scene without objects), 413 an import over the upload limit.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
from google.protobuf import field_mask_pb2, struct_pb2
from kiln.jobs.v1 import jobs_pb2
from kiln.objects.v1 import scenes_pb2
from kiln.render.v1 import render_pb2
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from gateway.apis import clara, jobs_views
from gateway.apis.jobs_views import TERMINAL
from gateway.apis.registry import ApiModule
from gateway.errors import ApiError, ErrorShapes, clara_shape
from gateway.jsonpb import JsonValue, json_response
from gateway.routing import Endpoint, RequestContext, endpoint, limited_request
from gateway.sse import wants_events

PREFIX = "/api/scenes"
SCENE_PATH = PREFIX + "/{sceneId}"
SCENE_SERVICE = "kiln.objects.v1.SceneService"
RENDER_SERVICE = "kiln.render.v1.RenderService"
#: Clara's synchronous calls time out after two minutes.
SYNC_WAIT_SECONDS = 120.0
UPLOAD_CHUNK_BYTES = 1024 * 1024
MAX_IMPORT_FIELDS = 100
MAX_IMPORT_FILES = 64
MAX_FIELD_BYTES = 64 * 1024
DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 500
MAX_PAGE = 1000
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
#: Clara's settable scene fields and their proto names.
_SCENE_FIELDS = {
    "name": "name",
    "description": "description",
    "public": "public",
    "license": "license",
    "allowPublicClone": "allow_public_clone",
}


def _unprocessable(message: str, field: str = "") -> ApiError:
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        message,
        reason="ERROR_REASON_INVALID_ARGUMENT",
        metadata={"field": field} if field else None,
    )


def _scene_id(context: RequestContext) -> str:
    scene_id = context.path_params["sceneId"]
    if not _UUID.match(scene_id):
        raise ApiError(
            grpc.StatusCode.NOT_FOUND,
            f"scene {scene_id[:64]!r} not found",
            reason="ERROR_REASON_NOT_FOUND",
            metadata={"field": "sceneId"},
        )
    return scene_id.lower()


def _iso(stamp: Any) -> str:
    return str(stamp.ToDatetime().strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z")


def scene_json(scene: scenes_pb2.Scene) -> dict[str, JsonValue]:
    """Clara's scene fields."""
    return {
        "_id": scene.id,
        "id": scene.id,
        "__v": max(0, scene.version - 1),
        "name": scene.name,
        "description": scene.description,
        "public": scene.public,
        "access": "public" if scene.public else "private",
        "license": scene.license or "none",
        "allowPublicClone": scene.allow_public_clone,
        "owner": scene.owner,
        "version": scene.version,
        "objects": scene.object_count,
        "createdAt": _iso(scene.create_time),
        "modifiedAt": _iso(scene.update_time),
    }


# --- parameters -----------------------------------------------------------------------------


def _flag(value: str, name: str) -> bool:
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise _unprocessable(f"{name} must be true or false, got {value[:40]!r}", name)


async def _body_params(context: RequestContext) -> dict[str, str]:
    """Parameters sent in a small body (JSON object, form-encoded, or multipart fields)."""
    content_type = context.request.headers.get("content-type", "").lower()
    raw = await context.read_body()
    if not raw.strip():
        return {}
    if content_type.startswith("application/json"):
        return {str(k): _text(v) for k, v in _json_object(raw).items()}
    if content_type.startswith("multipart/form-data"):
        form = await Request(context.request.scope, _replay(raw)).form(
            max_files=0, max_fields=MAX_IMPORT_FIELDS, max_part_size=MAX_FIELD_BYTES
        )
        try:
            return {k: v for k, v in form.items() if isinstance(v, str)}
        finally:
            await form.close()
    try:
        pairs = urllib.parse.parse_qsl(raw.decode(), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        raise _malformed("the body is neither JSON nor a form") from None
    return dict(pairs)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        decoded = json.loads(raw)
    except ValueError as exc:
        raise _malformed(f"the body is not valid JSON: {exc}") from None
    if not isinstance(decoded, dict):
        raise _malformed("the body must be a JSON object")
    return decoded


def _replay(raw: bytes) -> Any:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    return receive


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _malformed(message: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        message,
        reason="ERROR_REASON_MALFORMED_BODY",
        http_status=400,
    )


async def _params(context: RequestContext) -> dict[str, str]:
    """Query parameters, overridden by the body's (Clara: "in the query or the body")."""
    params = dict(context.request.query_params)
    if context.request.method == "POST":
        params.update(await _body_params(context))
    return params


def _number(params: Mapping[str, str], name: str) -> float | None:
    raw = params.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise _unprocessable(f"{name} must be a number, got {raw[:40]!r}", name) from None
    return value


def _integer(params: Mapping[str, str], name: str) -> int | None:
    value = _number(params, name)
    if value is None:
        return None
    if not value.is_integer() or abs(value) >= 2**31:
        raise _unprocessable(f"{name} must be a whole number", name)
    return int(value)


# --- scenes ---------------------------------------------------------------------------------


async def _scene_call(context: RequestContext, method: str, request: Any, reply: Any) -> Any:
    return await context.call("objects", f"/{SCENE_SERVICE}/{method}", request, reply)


def _scene_fields(body: Mapping[str, Any]) -> tuple[scenes_pb2.Scene, list[str]]:
    scene = scenes_pb2.Scene()
    paths: list[str] = []
    for key, sent in body.items():
        name = _SCENE_FIELDS.get(key)
        if name is None:
            continue  # Clara's other scene fields (owner, access, …) are not settable here.
        value = sent
        if name in ("public", "allow_public_clone"):
            if isinstance(value, str):
                value = _flag(value, key)
            if not isinstance(value, bool):
                raise _unprocessable(f"{key} must be true or false", key)
        elif not isinstance(value, str):
            raise _unprocessable(f"{key} must be a string", key)
        setattr(scene, name, value)
        paths.append(name)
    return scene, paths


async def _scene_body(context: RequestContext) -> dict[str, Any]:
    content_type = context.request.headers.get("content-type", "").lower()
    if content_type.startswith("application/json") or not content_type:
        raw = await context.read_body()
        return _json_object(raw) if raw.strip() else {}
    return dict(await _body_params(context))


async def list_scenes(context: RequestContext) -> Response:
    params = context.request.query_params
    per_page = _integer(params, "perPage") or DEFAULT_PER_PAGE
    page = _integer(params, "page") or 1
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise _unprocessable(f"perPage must be 1 to {MAX_PER_PAGE}", "perPage")
    if not 1 <= page <= MAX_PAGE:
        raise _unprocessable(f"page must be 1 to {MAX_PAGE}", "page")
    token = ""
    scenes: list[scenes_pb2.Scene] = []
    # Pages are keyset tokens underneath; Clara's page numbers walk them.
    for current in range(1, page + 1):
        reply = await _scene_call(
            context,
            "ListScenes",
            scenes_pb2.ListScenesRequest(
                page_size=per_page, page_token=token, query=params.get("query", "")
            ),
            scenes_pb2.ListScenesResponse,
        )
        if current == page:
            scenes = list(reply.scenes)
        token = reply.next_page_token
        if not token:
            break
    return json_response({"models": [scene_json(s) for s in scenes]})


async def create_scene(context: RequestContext) -> Response:
    scene, _ = _scene_fields(await _scene_body(context))
    request = scenes_pb2.CreateSceneRequest(
        scene=scene, request_id=context.request.headers.get("idempotency-key", "")[:128]
    )
    reply = await _scene_call(context, "CreateScene", request, scenes_pb2.CreateSceneResponse)
    location = f"{jobs_views.base_url(context.request)}{PREFIX}/{reply.scene.id}"
    return json_response(scene_json(reply.scene), status=201, headers={"Location": location})


async def get_scene(context: RequestContext) -> Response:
    request = scenes_pb2.GetSceneRequest(scene_id=_scene_id(context))
    reply = await _scene_call(context, "GetScene", request, scenes_pb2.GetSceneResponse)
    return json_response(scene_json(reply.scene))


async def update_scene(context: RequestContext) -> Response:
    scene_id = _scene_id(context)
    scene, paths = _scene_fields(await _scene_body(context))
    if not paths:
        raise _unprocessable("send at least one of: " + ", ".join(_SCENE_FIELDS), "body")
    request = scenes_pb2.UpdateSceneRequest(
        scene_id=scene_id, scene=scene, update_mask=field_mask_pb2.FieldMask(paths=paths)
    )
    reply = await _scene_call(context, "UpdateScene", request, scenes_pb2.UpdateSceneResponse)
    return json_response(scene_json(reply.scene))


async def delete_scene(context: RequestContext) -> Response:
    request = scenes_pb2.DeleteSceneRequest(scene_id=_scene_id(context))
    reply = await _scene_call(context, "DeleteScene", request, scenes_pb2.DeleteSceneResponse)
    return json_response(
        {
            "id": reply.scene_id,
            "deleted": True,
            "objects": reply.deleted_objects,
            "assets": reply.deleted_assets,
        }
    )


# --- jobs: async, sync, events --------------------------------------------------------------


async def _finish(
    context: RequestContext, job: jobs_pb2.Job, *, wait: bool, output: bool, url: bool = False
) -> Response:
    """How a Clara call answers the job it created (see the module)."""
    if not wait:
        return clara.accepted(context, job)
    if wants_events(context.request):
        return await clara.job_events(context, job.id)
    job = await jobs_views.wait_for_job(context, job, SYNC_WAIT_SECONDS)
    if job.status not in TERMINAL:
        return clara.accepted(context, job)
    body = clara.job_json(context.request, job)
    if job.status != jobs_views.SUCCEEDED:
        body["message"] = str(body.get("error") or f"the job ended {body['status']}")
        return json_response(body, status=422)
    if output and job.outputs:
        name = job.outputs[0].name
        if url:
            base = jobs_views.base_url(context.request)
            return json_response({"url": jobs_views.clara_file_url(base, job.id, name)})
        return await clara.output_response(context, job.id, name)
    return json_response(body)


# --- import ---------------------------------------------------------------------------------


async def import_files(context: RequestContext) -> Response:
    scene_id = _scene_id(context)
    content_type = context.request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "send the files as multipart/form-data (any field names)",
            reason="ERROR_REASON_MALFORMED_BODY",
            http_status=415,
        )
    request = await limited_request(context.request, context.gateway.limits.max_upload_bytes)
    try:
        form = await request.form(
            max_files=MAX_IMPORT_FILES, max_fields=MAX_IMPORT_FIELDS, max_part_size=MAX_FIELD_BYTES
        )
    except ApiError:
        raise
    except Exception as exc:
        raise _malformed(f"malformed multipart body: {exc}") from None
    try:
        uploads = [
            (key, value) for key, value in form.multi_items() if isinstance(value, UploadFile)
        ]
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        wait = not _flag(
            fields.pop("async", context.request.query_params.get("async", "")), "async"
        )
        if not uploads:
            raise _unprocessable("the import carries no files", "file")
        options = struct_pb2.Struct()
        options.update(fields)
        header = render_pb2.SubmitSceneImportRequest(
            header=render_pb2.SceneImportHeader(
                scene_id=scene_id,
                options=options,
                request_id=context.request.headers.get("idempotency-key", "")[:128],
            )
        )

        async def messages() -> AsyncIterator[render_pb2.SubmitSceneImportRequest]:
            yield header
            for key, upload in uploads:
                yield render_pb2.SubmitSceneImportRequest(
                    file=render_pb2.SceneImportFile(file_name=upload.filename or key, field=key)
                )
                while chunk := await upload.read(UPLOAD_CHUNK_BYTES):
                    yield render_pb2.SubmitSceneImportRequest(chunk=chunk)

        reply = await context.client_stream(
            "render",
            f"/{RENDER_SERVICE}/SubmitSceneImport",
            messages(),
            render_pb2.SubmitSceneImportResponse,
            deadline=SYNC_WAIT_SECONDS,
        )
    finally:
        await form.close()
    return await _finish(context, reply.job, wait=wait, output=False)


# --- export and render ----------------------------------------------------------------------


async def export_scene(context: RequestContext) -> Response:
    scene_id = _scene_id(context)
    params = await _params(context)
    request = render_pb2.SubmitSceneExportRequest(
        scene_id=scene_id,
        extension=context.path_params["extension"],
        center_scene=_flag(params.get("centerScene", ""), "centerScene"),
        request_id=context.request.headers.get("idempotency-key", "")[:128],
    )
    if params.get("zip", "").strip():
        request.zip = _flag(params["zip"], "zip")
    reply = await context.call(
        "render",
        f"/{RENDER_SERVICE}/SubmitSceneExport",
        request,
        render_pb2.SubmitSceneExportResponse,
    )
    return await _finish(context, reply.job, wait=context.request.method == "GET", output=True)


async def render_scene(context: RequestContext) -> Response:
    scene_id = _scene_id(context)
    params = await _params(context)
    request = render_pb2.SubmitSceneRenderRequest(
        scene_id=scene_id,
        format=params.get("format", "").strip(),
        request_id=context.request.headers.get("idempotency-key", "")[:128],
    )
    for name in ("width", "height", "time"):
        value = _integer(params, name)
        if value is None:
            continue
        if name != "time" and value < 1:
            raise _unprocessable(f"{name} must be a positive number of pixels", name)
        setattr(request, name, value)
    for name, attr in (
        ("azimuthAngle", "azimuth_angle"),
        ("polarAngle", "polar_angle"),
        ("boundingRadius", "bounding_radius"),
    ):
        number = _number(params, name)
        if number is not None:
            setattr(request, attr, number)
    url = _flag(params.get("url", ""), "url")
    reply = await context.call(
        "render",
        f"/{RENDER_SERVICE}/SubmitSceneRender",
        request,
        render_pb2.SubmitSceneRenderResponse,
    )
    return await _finish(
        context, reply.job, wait=context.request.method == "GET", output=True, url=url
    )


# --- registration ---------------------------------------------------------------------------


def register_shapes(shapes: ErrorShapes) -> None:
    shapes.register(clara_shape, path_prefix=PREFIX)


def endpoints() -> list[Endpoint]:
    objects, render = SCENE_SERVICE, RENDER_SERVICE
    return [
        endpoint("GET", PREFIX, list_scenes, service=objects, name="clara.ListScenes"),
        endpoint("POST", PREFIX, create_scene, service=objects, name="clara.CreateScene"),
        endpoint("GET", SCENE_PATH, get_scene, service=objects, name="clara.GetScene"),
        endpoint("PUT", SCENE_PATH, update_scene, service=objects, name="clara.UpdateScene"),
        endpoint("DELETE", SCENE_PATH, delete_scene, service=objects, name="clara.DeleteScene"),
        endpoint("POST", SCENE_PATH + "/import", import_files, service=render, name="clara.Import"),
        endpoint(
            "GET",
            SCENE_PATH + "/export/{extension}",
            export_scene,
            service=render,
            name="clara.Export",
        ),
        endpoint(
            "POST",
            SCENE_PATH + "/export/{extension}",
            export_scene,
            service=render,
            name="clara.ExportAsync",
        ),
        endpoint("GET", SCENE_PATH + "/render", render_scene, service=render, name="clara.Render"),
        endpoint(
            "POST", SCENE_PATH + "/render", render_scene, service=render, name="clara.RenderAsync"
        ),
    ]


API = ApiModule(
    name="clara_scenes",
    endpoints=endpoints,
    register_shapes=register_shapes,
    services=("objects", "render", "jobs"),
)
