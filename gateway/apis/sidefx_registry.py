"""The functions SideFX's RPC endpoint (`POST /api/`) calls: `module.function` → a thin
mapping onto Kiln's gRPC services, with the signature the caller's `[args, kwargs]` bind to.

Each function is an async callable whose first parameter is the request's context; the rest
is its RPC signature. Arguments are bound with `inspect.Signature.bind` and checked against
the annotations (str, int, float, bool, dict, list, `RpcFile`, and `X | None`), so a wrong call
is a 400 naming the problem before anything runs. A function answers a JSON value, or a
`Response` streamed as `application/octet-stream` (binary results). File arguments arrive as
multipart parts named after the keyword (SideFX's client sends every `File` keyword that way);
a function taking `**files: RpcFile` accepts any number of them.

The README's table of functions is generated from this registry (`gateway.apis.sidefx_docs`,
run by `make docs-config`; `make lint` fails when it is stale).
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union

import grpc
import httpx
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message
from kiln.archive.v1 import archive_pb2
from kiln.objects.v1 import assets_pb2, objects_pb2, scenes_pb2
from kiln.render.v1 import render_pb2
from starlette.datastructures import UploadFile
from starlette.responses import Response, StreamingResponse

from gateway.apis import clara, jobs_views
from gateway.errors import ApiError
from gateway.routing import RequestContext

OCTET_STREAM = "application/octet-stream"
UPLOAD_CHUNK_BYTES = 1024 * 1024
#: Longest `jobs.wait` a call may ask for.
MAX_WAIT_SECONDS = 600.0


@dataclass(frozen=True)
class RpcFile:
    """A file argument: the multipart part sent for a keyword argument."""

    filename: str
    upload: UploadFile


RpcFunction = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Function:
    name: str
    call: RpcFunction
    signature: inspect.Signature
    """Without the leading context parameter."""
    hints: Mapping[str, Any]
    summary: str


REGISTRY: dict[str, Function] = {}


def rpc(name: str) -> Callable[[RpcFunction], RpcFunction]:
    """Registers `fn` as `name` (`module.function`)."""

    def register(fn: RpcFunction) -> RpcFunction:
        signature = inspect.signature(fn)
        params = list(signature.parameters.values())[1:]
        hints = typing.get_type_hints(fn)
        summary = " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split())
        REGISTRY[name] = Function(name, fn, signature.replace(parameters=params), hints, summary)
        return fn

    return register


class RpcCallError(Exception):
    """A call that cannot be made as sent (400), with the message for the caller."""


def type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(hint))
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    if hint is RpcFile:
        return "file"
    return getattr(hint, "__name__", str(hint))


def _matches(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(hint))
    if origin is not None:
        hint = origin
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def bind(function: Function, args: list[Any], kwargs: dict[str, Any]) -> inspect.BoundArguments:
    """The call's arguments bound to the function's signature and checked; RpcCallError."""
    try:
        bound = function.signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise RpcCallError(f"{function.name}(): {exc}") from None
    for name, value in bound.arguments.items():
        param = function.signature.parameters[name]
        hint = function.hints.get(name, Any)
        values = value.items() if param.kind is inspect.Parameter.VAR_KEYWORD else [(name, value)]
        for key, item in values:
            if not _matches(item, hint):
                raise RpcCallError(
                    f"{function.name}(): {key} must be {type_name(hint)}, got {type(item).__name__}"
                )
    return bound


async def call(context: RequestContext, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    function = REGISTRY.get(name)
    if function is None:
        raise LookupError(name)
    bound = bind(function, args, kwargs)
    return await function.call(context, *bound.args, **bound.kwargs)


# --- helpers ----------------------------------------------------------------------------------


def _json(message: Message) -> dict[str, Any]:
    value: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return value


def _struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    try:
        struct.update(value)
    except (ValueError, TypeError) as exc:
        raise RpcCallError(f"not a JSON object: {exc}") from None
    return struct


def _parse(value: Mapping[str, Any], message: Message, what: str) -> Any:
    try:
        return json_format.ParseDict(dict(value), message)
    except json_format.ParseError as exc:
        raise RpcCallError(f"{what}: {exc}") from None


async def _unary(
    context: RequestContext, service: str, method: str, request: Message, reply: type[Any]
) -> Any:
    target = service.split(".")[1]  # kiln.<service>.v1.X
    name = f"/{service}/{method}"
    return await context.call(target, name, request, reply)


_OBJECTS = "kiln.objects.v1.ObjectService"
_ASSETS = "kiln.objects.v1.AssetService"
_SCENES = "kiln.objects.v1.SceneService"
_RENDER = "kiln.render.v1.RenderService"
_IMAGES = "kiln.render.v1.ImageService"
_ARCHIVES = "kiln.archive.v1.ArchiveService"
_JOBS = "kiln.jobs.v1.JobService"
_PLACEMENT = ("translation", "euler_rotation", "quaternion_rotation", "scale", "transform")


def _object_input(fields: Mapping[str, Any]) -> tuple[objects_pb2.Object, Any]:
    placement = {k: v for k, v in fields.items() if k in _PLACEMENT}
    rest = {k: v for k, v in fields.items() if k not in _PLACEMENT}
    obj = _parse(rest, objects_pb2.Object(), "object fields")
    transform = _parse(placement, objects_pb2.TransformInput(), "placement") if placement else None
    return obj, transform


def _octet_stream(chunks: AsyncIterator[bytes], size: int | None, name: str) -> Response:
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    if size is not None:
        headers["Content-Length"] = str(size)
    return StreamingResponse(chunks, media_type=OCTET_STREAM, headers=headers)


# --- objects ----------------------------------------------------------------------------------


@rpc("objects.create")
async def objects_create(context: RequestContext, **fields: Any) -> dict[str, Any]:
    """Creates one object from CLyman's fields (name, type, scene, assets, translation,
    euler_rotation, quaternion_rotation, scale, transform, …); answers it with its key."""
    obj, placement = _object_input(fields)
    request = objects_pb2.CreateObjectsRequest(
        objects=[objects_pb2.ObjectInput(object=obj, placement=placement)]
    )
    reply = await _unary(
        context, _OBJECTS, "CreateObjects", request, objects_pb2.CreateObjectsResponse
    )
    return _json(reply.objects[0])


@rpc("objects.get")
async def objects_get(context: RequestContext, key: str) -> dict[str, Any]:
    """One object by key."""
    reply = await _unary(
        context,
        _OBJECTS,
        "GetObject",
        objects_pb2.GetObjectRequest(key=key),
        objects_pb2.GetObjectResponse,
    )
    return _json(reply.object)


@rpc("objects.update")
async def objects_update(context: RequestContext, key: str, **fields: Any) -> dict[str, Any]:
    """Changes the fields sent; the transform only when a placement field is sent; assets
    sent are appended (CLyman's update rules)."""
    obj, placement = _object_input(fields)
    request = objects_pb2.UpdateObjectRequest(key=key, update=obj, placement=placement)
    reply = await _unary(
        context, _OBJECTS, "UpdateObject", request, objects_pb2.UpdateObjectResponse
    )
    return _json(reply.object)


@rpc("objects.delete")
async def objects_delete(context: RequestContext, key: str) -> dict[str, Any]:
    """Deletes one object."""
    request = objects_pb2.DeleteObjectRequest(key=key)
    reply = await _unary(
        context, _OBJECTS, "DeleteObject", request, objects_pb2.DeleteObjectResponse
    )
    return {"key": reply.key}


@rpc("objects.query")
async def objects_query(
    context: RequestContext, filters: list[Any], limit: int = 10
) -> list[dict[str, Any]]:
    """CLyman's query: `filters` is a list of field objects, AND within one, OR across them."""
    parsed = []
    for index, item in enumerate(filters):
        if not isinstance(item, dict):
            raise RpcCallError(f"objects.query(): filters[{index}] must be an object")
        parsed.append(_parse(item, objects_pb2.ObjectFilter(), f"filters[{index}]"))
    request = objects_pb2.QueryObjectsRequest(filters=parsed, limit=limit)
    reply = await _unary(
        context, _OBJECTS, "QueryObjects", request, objects_pb2.QueryObjectsResponse
    )
    return [_json(o) for o in reply.objects]


@rpc("objects.lock")
async def objects_lock(
    context: RequestContext, key: str, device: str, lock_ttl_seconds: int = 0
) -> dict[str, Any]:
    """Takes the object's lock for a device (optionally with a lease in seconds)."""
    request = objects_pb2.LockObjectRequest(
        key=key, device=device, lock_ttl_seconds=lock_ttl_seconds
    )
    reply = await _unary(context, _OBJECTS, "LockObject", request, objects_pb2.LockObjectResponse)
    return _json(reply.object)


@rpc("objects.unlock")
async def objects_unlock(context: RequestContext, key: str, device: str) -> dict[str, Any]:
    """Releases the lock; only its holder can."""
    request = objects_pb2.UnlockObjectRequest(key=key, device=device)
    reply = await _unary(
        context, _OBJECTS, "UnlockObject", request, objects_pb2.UnlockObjectResponse
    )
    return _json(reply.object)


# --- assets -----------------------------------------------------------------------------------


@rpc("assets.upload")
async def assets_upload(
    context: RequestContext, file: RpcFile, metadata: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Stores the uploaded file (the `file` keyword, a multipart part) as an asset."""
    header = assets_pb2.UploadAssetRequest(
        header=assets_pb2.AssetHeader(file_name=file.filename, metadata=_struct(metadata or {}))
    )

    async def messages() -> AsyncIterator[assets_pb2.UploadAssetRequest]:
        yield header
        while chunk := await file.upload.read(UPLOAD_CHUNK_BYTES):
            yield assets_pb2.UploadAssetRequest(chunk=chunk)

    reply = await context.client_stream(
        "objects", f"/{_ASSETS}/UploadAsset", messages(), assets_pb2.UploadAssetResponse
    )
    return _json(reply.asset)


@rpc("assets.get")
async def assets_get(context: RequestContext, asset_id: str) -> dict[str, Any]:
    """One asset, with a presigned download URL."""
    request = assets_pb2.GetAssetRequest(asset_id=asset_id)
    reply = await _unary(context, _ASSETS, "GetAsset", request, assets_pb2.GetAssetResponse)
    return _json(reply.asset)


@rpc("assets.list")
async def assets_list(
    context: RequestContext, page_size: int = 50, page_token: str = "", kind: str = ""
) -> dict[str, Any]:
    """A page of the tenant's assets, newest first: `{assets, next_page_token}`."""
    request = assets_pb2.ListAssetsRequest(page_size=page_size, page_token=page_token, kind=kind)
    reply = await _unary(context, _ASSETS, "ListAssets", request, assets_pb2.ListAssetsResponse)
    return {"assets": [_json(a) for a in reply.assets], "next_page_token": reply.next_page_token}


@rpc("assets.delete")
async def assets_delete(context: RequestContext, asset_id: str) -> dict[str, Any]:
    """Deletes an asset and its bytes."""
    request = assets_pb2.DeleteAssetRequest(asset_id=asset_id)
    reply = await _unary(context, _ASSETS, "DeleteAsset", request, assets_pb2.DeleteAssetResponse)
    return {"asset_id": reply.asset_id}


@rpc("assets.download")
async def assets_download(context: RequestContext, asset_id: str) -> Response:
    """The asset's bytes, streamed (binary)."""
    request = assets_pb2.GetAssetRequest(asset_id=asset_id)
    reply = await _unary(context, _ASSETS, "GetAsset", request, assets_pb2.GetAssetResponse)
    asset = reply.asset
    client = httpx.AsyncClient(timeout=httpx.Timeout(60.0, read=None))
    stream = client.stream("GET", asset.url)
    response = await stream.__aenter__()
    if response.status_code != 200:
        await stream.__aexit__(None, None, None)
        await client.aclose()
        raise ApiError(grpc.StatusCode.UNAVAILABLE, f"the bytes of {asset_id} cannot be read now")

    async def chunks() -> AsyncIterator[bytes]:
        try:
            async for chunk in response.aiter_bytes(UPLOAD_CHUNK_BYTES):
                yield chunk
        finally:
            await stream.__aexit__(None, None, None)
            await client.aclose()

    name = str(asset.metadata["fileName"]) if "fileName" in asset.metadata else asset_id
    return _octet_stream(chunks(), asset.size, _plain(name) or asset_id)


def _plain(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._- " else "_" for ch in name)[:200]


# --- images -----------------------------------------------------------------------------------


@rpc("images.edit")
async def images_edit(context: RequestContext, request: dict[str, Any]) -> dict[str, Any]:
    """Claid's edit, synchronously: `request` is `{input, operations, output}`; answers
    `{input, output}` (the output's `tmp_url` when it has no destination)."""
    message = render_pb2.EditImageRequest(edit=_struct(request))
    reply = await _unary(context, _IMAGES, "EditImage", message, render_pb2.EditImageResponse)
    return jobs_views.struct_dict(reply.data)


# --- scenes -----------------------------------------------------------------------------------


def _scene_json(scene: scenes_pb2.Scene) -> dict[str, Any]:
    return _json(scene)


@rpc("scenes.create")
async def scenes_create(
    context: RequestContext,
    name: str = "",
    description: str = "",
    public: bool = False,
    license: str = "none",
) -> dict[str, Any]:
    """Creates an empty scene; answers it with its UUID."""
    scene = scenes_pb2.Scene(name=name, description=description, public=public, license=license)
    request = scenes_pb2.CreateSceneRequest(scene=scene)
    reply = await _unary(context, _SCENES, "CreateScene", request, scenes_pb2.CreateSceneResponse)
    return _scene_json(reply.scene)


@rpc("scenes.get")
async def scenes_get(context: RequestContext, scene_id: str) -> dict[str, Any]:
    """One scene."""
    request = scenes_pb2.GetSceneRequest(scene_id=scene_id)
    reply = await _unary(context, _SCENES, "GetScene", request, scenes_pb2.GetSceneResponse)
    return _scene_json(reply.scene)


@rpc("scenes.list")
async def scenes_list(
    context: RequestContext, query: str = "", page_size: int = 50, page_token: str = ""
) -> dict[str, Any]:
    """A page of the tenant's scenes, newest first: `{scenes, next_page_token}`."""
    request = scenes_pb2.ListScenesRequest(page_size=page_size, page_token=page_token, query=query)
    reply = await _unary(context, _SCENES, "ListScenes", request, scenes_pb2.ListScenesResponse)
    return {
        "scenes": [_scene_json(s) for s in reply.scenes],
        "next_page_token": reply.next_page_token,
    }


@rpc("scenes.delete")
async def scenes_delete(context: RequestContext, scene_id: str) -> dict[str, Any]:
    """Deletes a scene, its objects and the assets its imports created."""
    request = scenes_pb2.DeleteSceneRequest(scene_id=scene_id)
    reply = await _unary(context, _SCENES, "DeleteScene", request, scenes_pb2.DeleteSceneResponse)
    return _json(reply)


@rpc("scenes.import")
async def scenes_import(
    context: RequestContext, scene_id: str, options: dict[str, Any] | None = None, **files: RpcFile
) -> dict[str, Any]:
    """Imports the uploaded files (any keyword names: the model, its MTL, textures, buffers)
    into the scene; answers the `scene.import` job (wait with `jobs.wait`)."""
    if not files:
        raise RpcCallError("scenes.import(): send the files as file keyword arguments")
    header = render_pb2.SubmitSceneImportRequest(
        header=render_pb2.SceneImportHeader(scene_id=scene_id, options=_struct(options or {}))
    )

    async def messages() -> AsyncIterator[render_pb2.SubmitSceneImportRequest]:
        yield header
        for field_name, item in files.items():
            yield render_pb2.SubmitSceneImportRequest(
                file=render_pb2.SceneImportFile(file_name=item.filename, field=field_name)
            )
            while chunk := await item.upload.read(UPLOAD_CHUNK_BYTES):
                yield render_pb2.SubmitSceneImportRequest(chunk=chunk)

    reply = await context.client_stream(
        "render", f"/{_RENDER}/SubmitSceneImport", messages(), render_pb2.SubmitSceneImportResponse
    )
    return _json(reply.job)


@rpc("scenes.export")
async def scenes_export(
    context: RequestContext,
    scene_id: str,
    extension: str,
    zip: bool = True,
    center_scene: bool = False,
) -> dict[str, Any]:
    """Queues an export to obj, glb, gltf, stl or ply; answers the `scene.export` job (its
    output with `jobs.output`)."""
    request = render_pb2.SubmitSceneExportRequest(
        scene_id=scene_id, extension=extension, zip=zip, center_scene=center_scene
    )
    reply = await _unary(
        context, _RENDER, "SubmitSceneExport", request, render_pb2.SubmitSceneExportResponse
    )
    return _json(reply.job)


# The signature is the RPC's: callers pass these positionally or by keyword.
@rpc("scenes.render")
async def scenes_render(  # noqa: PLR0917
    context: RequestContext,
    scene_id: str,
    width: int = 800,
    height: int = 600,
    format: str = "jpeg",
    time: int | None = None,
    azimuth_angle: float | None = None,
    polar_angle: float | None = None,
    bounding_radius: float | None = None,
) -> dict[str, Any]:
    """Queues a render (jpeg or png; camera angles in radians); answers the `scene.render`
    job (the image with `jobs.output`)."""
    request = render_pb2.SubmitSceneRenderRequest(
        scene_id=scene_id, width=width, height=height, format=format
    )
    for name, value in (
        ("time", time),
        ("azimuth_angle", azimuth_angle),
        ("polar_angle", polar_angle),
        ("bounding_radius", bounding_radius),
    ):
        if value is not None:
            setattr(request, name, value)
    reply = await _unary(
        context, _RENDER, "SubmitSceneRender", request, render_pb2.SubmitSceneRenderResponse
    )
    return _json(reply.job)


# --- archives ---------------------------------------------------------------------------------


@rpc("archives.create")
async def archives_create(
    context: RequestContext,
    asset_ids: list[Any],
    file_name_template: str = "",
    flat: bool = False,
) -> dict[str, Any]:
    """Queues a ZIP of the assets (Scenario's archive); answers the `archive.create` job."""
    if not all(isinstance(i, str) for i in asset_ids):
        raise RpcCallError("archives.create(): asset_ids must be a list of strings")
    request = archive_pb2.CreateArchiveRequest(
        asset_ids=asset_ids, file_name_template=file_name_template, flat=flat
    )
    reply = await _unary(
        context, _ARCHIVES, "CreateArchive", request, archive_pb2.CreateArchiveResponse
    )
    return _json(reply.job)


# --- jobs -------------------------------------------------------------------------------------


@rpc("jobs.get")
async def jobs_get(context: RequestContext, job_id: str) -> dict[str, Any]:
    """One job: status, progress, result, outputs, history."""
    return _json(await jobs_views.get_job(context, job_id=job_id))


@rpc("jobs.wait")
async def jobs_wait(
    # `timeout` is the RPC's argument (how long to wait), not a deadline of this coroutine.
    context: RequestContext,
    job_id: str,
    timeout: float = 60.0,  # noqa: ASYNC109
) -> dict[str, Any]:
    """The job once it has ended, or as it stands after `timeout` seconds (at most 600)."""
    if not 0 <= timeout <= MAX_WAIT_SECONDS:
        raise RpcCallError(f"jobs.wait(): timeout must be 0 to {MAX_WAIT_SECONDS:.0f} seconds")
    job = await jobs_views.get_job(context, job_id=job_id)
    job = await jobs_views.wait_for_job(context, job, timeout)
    return _json(job)


@rpc("jobs.cancel")
async def jobs_cancel(context: RequestContext, job_id: str) -> dict[str, Any]:
    """Cancels a job that has not ended; answers it."""
    return _json(await jobs_views.cancel_job(context, job_id))


@rpc("jobs.output")
async def jobs_output(context: RequestContext, job_id: str, name: str | None = None) -> Response:
    """One output of a finished job (its first when `name` is not given), streamed (binary)."""
    if name is None:
        job = await jobs_views.get_job(context, job_id=job_id)
        if not job.outputs:
            raise ApiError(
                grpc.StatusCode.NOT_FOUND,
                f"job {job_id} has no output (yet); wait for it with jobs.wait",
                reason="ERROR_REASON_NOT_FOUND",
            )
        name = job.outputs[0].name
    response = await clara.output_response(context, job_id, name)
    # SideFX's client treats exactly this type as a binary result.
    response.headers["content-type"] = OCTET_STREAM
    return response
