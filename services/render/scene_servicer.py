"""RenderService: Clara's import, export and render requests, checked and queued as jobs.

Every request is checked in full before its job is queued, so a refused one queues nothing:
the scene must exist in the caller's tenant (asked of the objects service with the caller's
own token), an import must carry at least one model file within the budgets, an export must
name a format Kiln writes, a render sane dimensions and camera numbers. An import's files are
streamed into the temporary area (`tmp/{tenant}/import-…/`) as they arrive, never held whole;
the job names them, and the worker removes them once the import has ended.
"""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import AsyncIterator
from pathlib import PurePosixPath
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2
from kiln.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from kiln.objects.v1 import scenes_pb2, scenes_pb2_grpc
from kiln.render.v1 import render_pb2, render_pb2_grpc

from services.render.scene_kinds import EXPORT_KIND, IMPORT_KIND, RENDER_KIND, RenderParams
from services.render.scenes.formats import (
    MODEL_EXTENSIONS,
    ExportRefused,
    check_export,
    extension_of,
    safe_file_stem,
    unique_file_name,
)
from services.runtime.blob_keys import tmp_key
from services.runtime.config import ScenesConfig
from services.runtime.context import current_tenant
from services.runtime.errors import InvalidArgument, MissingField, TooLarge
from services.runtime.peers import call_peer, caller_credentials
from services.runtime.storage import BlobStore


def plain_file_name(raw: str, taken: set[str]) -> str:
    """The client's name as a safe plain base name, unique among `taken` (which it joins).
    Ordinary names pass unchanged: they matter (an OBJ names its MTL, an MTL its textures)."""
    name = PurePosixPath(unicodedata.normalize("NFC", raw).replace("\\", "/")).name
    stem, dot, extension = name.rpartition(".")
    if not dot:
        stem, extension = name, ""
    stem = safe_file_stem(stem, default="file", max_length=100)
    extension = safe_file_stem(extension, default="", max_length=16)
    return unique_file_name(stem, extension, taken)


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


class RenderServicer(render_pb2_grpc.RenderServiceServicer):
    def __init__(
        self,
        config: ScenesConfig,
        blobs: BlobStore,
        jobs: jobs_pb2_grpc.JobServiceStub,
        scenes: scenes_pb2_grpc.SceneServiceStub,
    ) -> None:
        self._config = config
        self._blobs = blobs
        self._jobs = jobs
        self._scenes = scenes

    async def SubmitSceneImport(
        self,
        request_iterator: AsyncIterator[render_pb2.SubmitSceneImportRequest],
        context: grpc.aio.ServicerContext,
    ) -> render_pb2.SubmitSceneImportResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "header":
            raise MissingField("the first message of an import must be its header", field="header")
        header = first.header
        await self._scene(context, header.scene_id)
        tenant = current_tenant()
        scope = f"import-{uuid.uuid4().hex}"
        files: list[dict[str, Any]] = []
        try:
            await self._receive_files(request_iterator, tenant, scope, files)
            if not files:
                raise MissingField("the import carries no files", field="file")
            if not any(extension_of(f["name"]) in MODEL_EXTENSIONS for f in files):
                raise InvalidArgument(
                    "the import holds no model file; Kiln imports "
                    + ", ".join(MODEL_EXTENSIONS)
                    + " (with .mtl materials, .bin buffers and image textures beside them)",
                    field="file",
                )
            params = {
                "sceneId": header.scene_id,
                "files": files,
                "options": json_format.MessageToDict(header.options),
            }
            job = await self._create_job(context, IMPORT_KIND, params, header.request_id)
        except BaseException:
            for f in files:
                await self._blobs.delete(f["key"])
            raise
        return render_pb2.SubmitSceneImportResponse(job=job)

    async def _receive_files(
        self,
        messages: AsyncIterator[render_pb2.SubmitSceneImportRequest],
        tenant: str,
        scope: str,
        files: list[dict[str, Any]],
    ) -> None:
        """Streams each file into its temporary key, appending its entry to `files` as soon
        as its key may hold bytes (so a failure can remove it)."""
        budget = self._config.max_import_bytes
        taken: set[str] = set()
        total = 0
        writer: Any = None
        entry: dict[str, Any] | None = None

        async def finish() -> None:
            nonlocal writer
            if writer is not None:
                await writer.__aexit__(None, None, None)
                assert entry is not None
                if writer.size == 0:
                    raise InvalidArgument(f"file {entry['name']!r} is empty", field="file")
                entry["size"] = writer.size
                writer = None

        try:
            async for message in messages:
                part = message.WhichOneof("part")
                if part == "file":
                    await finish()
                    if len(files) >= self._config.max_import_files:
                        raise TooLarge(
                            f"an import holds at most {self._config.max_import_files} files",
                            field="file",
                        )
                    name = plain_file_name(message.file.file_name, taken)
                    key = tmp_key(tenant, scope, f"file{len(files)}")
                    entry = {"name": name, "key": key, "size": 0, "field": message.file.field}
                    files.append(entry)
                    writer = self._blobs.writer(key)
                    await writer.__aenter__()
                elif part == "chunk":
                    if writer is None:
                        raise InvalidArgument("bytes came before a file header", field="file")
                    total += len(message.chunk)
                    if total > budget:
                        raise TooLarge(
                            f"the import exceeds {budget} bytes (KILN_SCENE_MAX_IMPORT_BYTES)",
                            field="file",
                        )
                    await writer.write(message.chunk)
                else:
                    raise InvalidArgument("only the first message may be a header", field="header")
            await finish()
        except BaseException as exc:
            if writer is not None:
                await writer.__aexit__(type(exc), exc, exc.__traceback__)
            raise

    async def SubmitSceneExport(
        self, request: render_pb2.SubmitSceneExportRequest, context: grpc.aio.ServicerContext
    ) -> render_pb2.SubmitSceneExportResponse:
        extension = request.extension.strip().lower()
        zip_output = request.zip if request.HasField("zip") else True
        try:
            check_export(extension, zip_output)
        except ExportRefused as exc:
            raise InvalidArgument(str(exc), field="extension") from None
        await self._scene(context, request.scene_id)
        params = {
            "sceneId": request.scene_id,
            "extension": extension,
            "zip": zip_output,
            "centerScene": request.center_scene,
        }
        job = await self._create_job(context, EXPORT_KIND, params, request.request_id)
        return render_pb2.SubmitSceneExportResponse(job=job)

    async def SubmitSceneRender(
        self, request: render_pb2.SubmitSceneRenderRequest, context: grpc.aio.ServicerContext
    ) -> render_pb2.SubmitSceneRenderResponse:
        params = RenderParams.from_request(request, self._config.max_render_pixels)
        scene = await self._scene(context, request.scene_id)
        if scene.object_count == 0:
            raise InvalidArgument(
                f"scene {request.scene_id} has no objects to render; import a model first",
                field="scene_id",
            )
        job = await self._create_job(
            context,
            RENDER_KIND,
            {"sceneId": request.scene_id, **params.to_json()},
            request.request_id,
        )
        return render_pb2.SubmitSceneRenderResponse(job=job)

    async def _scene(self, context: grpc.aio.ServicerContext, scene_id: str) -> scenes_pb2.Scene:
        if not scene_id:
            raise MissingField("scene_id is required", field="scene_id")
        answer = await call_peer(
            self._scenes.GetScene,
            scenes_pb2.GetSceneRequest(scene_id=scene_id),
            caller_credentials(context),
        )
        scene: scenes_pb2.Scene = answer.scene
        return scene

    async def _create_job(
        self, context: grpc.aio.ServicerContext, kind: str, params: dict[str, Any], request_id: str
    ) -> jobs_pb2.Job:
        created = await call_peer(
            self._jobs.CreateJob,
            jobs_pb2.CreateJobRequest(
                job=jobs_pb2.Job(kind=kind, params=_struct(params)), request_id=request_id
            ),
            caller_credentials(context),
        )
        job: jobs_pb2.Job = created.job
        return job
