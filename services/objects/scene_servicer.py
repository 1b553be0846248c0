"""SceneService: scenes over gRPC, and the import commit and content reads of the render
workers (which act for a job's tenant, see `runtime.context.acting_tenant`)."""

from __future__ import annotations

import grpc
from google.protobuf import json_format
from kiln.objects.v1 import scenes_pb2, scenes_pb2_grpc

from services.objects.object_store import STRING_FIELDS, ObjectRecord
from services.objects.objects import to_proto
from services.objects.scene_store import SceneRecord
from services.objects.scenes import ImportedAssetDraft, SceneCatalog, SceneFields
from services.runtime.context import acting_tenant, current_principal, current_tenant
from services.runtime.errors import InvalidArgument

#: Proto field names of the settable scene fields.
_MASK_FIELDS = {"name", "description", "public", "license", "allow_public_clone"}


def scene_proto(record: SceneRecord) -> scenes_pb2.Scene:
    scene = scenes_pb2.Scene(
        id=record.id,
        name=record.name,
        description=record.description,
        public=record.public,
        license=record.license,
        allow_public_clone=record.allow_public_clone,
        owner=record.owner,
        version=record.version,
        object_count=record.object_count,
    )
    scene.create_time.FromDatetime(record.created_at)
    scene.update_time.FromDatetime(record.updated_at)
    return scene


def _fields(scene: scenes_pb2.Scene) -> SceneFields:
    return SceneFields(
        name=scene.name,
        description=scene.description,
        public=scene.public,
        license=scene.license,
        allow_public_clone=scene.allow_public_clone,
    )


def _draft_object(message: scenes_pb2.ImportedObject) -> ObjectRecord:
    obj = message.object
    strings = {name: getattr(obj, name) for name in STRING_FIELDS if name not in ("owner", "scene")}
    return ObjectRecord(
        key="",
        tenant="",
        **strings,
        frame=obj.frame if obj.HasField("frame") else None,
        timestamp=obj.timestamp if obj.HasField("timestamp") else None,
        transform=list(obj.transform),
        assets=list(obj.assets),
    )


class SceneServicer(scenes_pb2_grpc.SceneServiceServicer):
    def __init__(self, catalog: SceneCatalog) -> None:
        self._catalog = catalog

    async def CreateScene(
        self, request: scenes_pb2.CreateSceneRequest, context: grpc.aio.ServicerContext
    ) -> scenes_pb2.CreateSceneResponse:
        principal = current_principal()
        record = await self._catalog.create(
            principal.tenant, principal.client_id, _fields(request.scene), request.request_id
        )
        return scenes_pb2.CreateSceneResponse(scene=scene_proto(record))

    async def GetScene(
        self, request: scenes_pb2.GetSceneRequest, context: grpc.aio.ServicerContext
    ) -> scenes_pb2.GetSceneResponse:
        record = await self._catalog.get(current_tenant(), request.scene_id)
        return scenes_pb2.GetSceneResponse(scene=scene_proto(record))

    async def ListScenes(
        self, request: scenes_pb2.ListScenesRequest, context: grpc.aio.ServicerContext
    ) -> scenes_pb2.ListScenesResponse:
        records, token = await self._catalog.page(
            current_tenant(),
            page_size=request.page_size,
            page_token=request.page_token,
            query=request.query,
        )
        return scenes_pb2.ListScenesResponse(
            scenes=[scene_proto(r) for r in records], next_page_token=token
        )

    async def UpdateScene(
        self, request: scenes_pb2.UpdateSceneRequest, context: grpc.aio.ServicerContext
    ) -> scenes_pb2.UpdateSceneResponse:
        names = list(request.update_mask.paths)
        unknown = [n for n in names if n not in _MASK_FIELDS]
        if unknown:
            raise InvalidArgument(
                f"update_mask names fields that cannot change: {', '.join(unknown)}",
                field="update_mask",
            )
        record = await self._catalog.update(
            current_tenant(), request.scene_id, _fields(request.scene), names
        )
        return scenes_pb2.UpdateSceneResponse(scene=scene_proto(record))

    async def DeleteScene(
        self, request: scenes_pb2.DeleteSceneRequest, context: grpc.aio.ServicerContext
    ) -> scenes_pb2.DeleteSceneResponse:
        objects, assets = await self._catalog.delete(current_tenant(), request.scene_id)
        return scenes_pb2.DeleteSceneResponse(
            scene_id=request.scene_id, deleted_objects=objects, deleted_assets=assets
        )

    async def CommitImport(
        self, request: scenes_pb2.CommitImportRequest, context: grpc.aio.ServicerContext
    ) -> scenes_pb2.CommitImportResponse:
        tenant = acting_tenant(context.invocation_metadata())
        assets = [
            ImportedAssetDraft(
                id=a.id,
                file_name=a.file_name,
                mime_type=a.mime_type,
                size=a.size,
                sha256=a.sha256,
                metadata=json_format.MessageToDict(a.metadata),
            )
            for a in request.assets
        ]
        committed = await self._catalog.commit_import(
            tenant,
            request.scene_id,
            request.import_id,
            assets,
            [_draft_object(o) for o in request.objects],
        )
        return scenes_pb2.CommitImportResponse(
            objects=[to_proto(o) for o in committed.objects], asset_ids=committed.asset_ids
        )

    async def GetSceneContent(
        self, request: scenes_pb2.GetSceneContentRequest, context: grpc.aio.ServicerContext
    ) -> scenes_pb2.GetSceneContentResponse:
        tenant = acting_tenant(context.invocation_metadata())
        scene, objects, assets = await self._catalog.content(tenant, request.scene_id)
        answer = scenes_pb2.GetSceneContentResponse(
            scene=scene_proto(scene), objects=[to_proto(o) for o in objects]
        )
        for asset in assets:
            item = answer.assets.add(
                id=asset.id, blob_key=asset.blob_key, mime_type=asset.mime_type, size=asset.size
            )
            item.metadata.update(asset.metadata)
        return answer
