"""gRPC surfaces of the objects service (assets, objects): messages to the domain and back.
CLyman's REST-shaped service is in clyman.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format
from kiln.objects.v1 import assets_pb2, assets_pb2_grpc, objects_pb2, objects_pb2_grpc
from prometheus_client import Counter

from services.objects.assets import AssetCatalog, UploadHeader
from services.objects.object_store import STRING_FIELDS, ObjectQuery, ObjectRecord
from services.objects.objects import ObjectCatalog, ObjectPatch, to_proto
from services.objects.store import AssetRecord
from services.objects.transform import build_transform
from services.runtime.context import current_tenant
from services.runtime.errors import InvalidArgument, KilnError
from services.runtime.status import grpc_code_for

#: How many updates of one StreamUpdates stream may be unanswered; the stream reads no
#: further until the oldest is answered.
STREAM_UPDATES_IN_FLIGHT = 64
STREAMED_UPDATES = Counter(
    "kiln_object_streamed_updates_total",
    "Updates answered on StreamUpdates streams, by the answer's gRPC code.",
    ["code"],
)


def _to_proto(record: AssetRecord, url: str) -> assets_pb2.Asset:
    asset = assets_pb2.Asset(
        id=record.id,
        url=url,
        mime_type=record.mime_type,
        kind=record.kind,
        size=record.size,
        sha256=record.sha256,
    )
    asset.metadata.update(record.metadata)
    asset.created_at.FromDatetime(record.created_at)
    return asset


class AssetServicer(assets_pb2_grpc.AssetServiceServicer):
    """AssetService over an AssetCatalog; every call is scoped to the caller's tenant."""

    def __init__(self, catalog: AssetCatalog) -> None:
        self._catalog = catalog

    async def UploadAsset(
        self,
        request_iterator: AsyncIterator[assets_pb2.UploadAssetRequest],
        context: grpc.aio.ServicerContext,
    ) -> assets_pb2.UploadAssetResponse:
        tenant = current_tenant()
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgument(
                "the first message of an upload must be its header", field="header"
            )
        header = UploadHeader(
            file_name=first.header.file_name,
            mime_type=first.header.mime_type,
            metadata=json_format.MessageToDict(first.header.metadata),
            request_id=first.header.request_id,
        )

        async def chunks() -> AsyncIterator[bytes]:
            async for message in request_iterator:
                if message.WhichOneof("part") != "chunk":
                    raise InvalidArgument("only the first message may be a header", field="header")
                yield message.chunk

        record = await self._catalog.upload(tenant, header, chunks())
        url = await self._catalog.download_url(record)
        return assets_pb2.UploadAssetResponse(asset=_to_proto(record, url))

    async def GetAsset(
        self, request: assets_pb2.GetAssetRequest, context: grpc.aio.ServicerContext
    ) -> assets_pb2.GetAssetResponse:
        record = await self._catalog.get(current_tenant(), request.asset_id)
        url = await self._catalog.download_url(record)
        return assets_pb2.GetAssetResponse(asset=_to_proto(record, url))

    async def BatchGetAssets(
        self, request: assets_pb2.BatchGetAssetsRequest, context: grpc.aio.ServicerContext
    ) -> assets_pb2.BatchGetAssetsResponse:
        records = await self._catalog.get_many(current_tenant(), list(request.asset_ids))
        urls = [await self._catalog.download_url(r) for r in records]
        return assets_pb2.BatchGetAssetsResponse(
            assets=[_to_proto(r, url) for r, url in zip(records, urls, strict=True)]
        )

    async def ListAssets(
        self, request: assets_pb2.ListAssetsRequest, context: grpc.aio.ServicerContext
    ) -> assets_pb2.ListAssetsResponse:
        page = await self._catalog.list(
            current_tenant(),
            page_size=request.page_size,
            page_token=request.page_token,
            kind=request.kind,
        )
        assets = [_to_proto(r, await self._catalog.download_url(r)) for r in page.records]
        return assets_pb2.ListAssetsResponse(assets=assets, next_page_token=page.next_page_token)

    async def DeleteAsset(
        self, request: assets_pb2.DeleteAssetRequest, context: grpc.aio.ServicerContext
    ) -> assets_pb2.DeleteAssetResponse:
        await self._catalog.delete(current_tenant(), request.asset_id)
        return assets_pb2.DeleteAssetResponse(asset_id=request.asset_id)


def _patch(request: objects_pb2.UpdateObjectRequest) -> ObjectPatch:
    update = request.update
    return ObjectPatch(
        strings=_strings(update),
        frame=update.frame if update.HasField("frame") else None,
        timestamp=update.timestamp if update.HasField("timestamp") else None,
        transform=_placement(request.placement, request.HasField("placement")),
        add_assets=list(update.assets),
        handles=_handles(update),
    )


def _placement(spec: objects_pb2.TransformInput, present: bool) -> list[float] | None:
    """The transform a TransformInput asks for, or None when none was given."""
    if not present:
        return None
    if len(spec.transform) == 16 and not any(
        (spec.translation, spec.euler_rotation, spec.quaternion_rotation, spec.scale)
    ):
        return list(spec.transform)
    return build_transform(
        translation=list(spec.translation) or None,
        euler_rotation=list(spec.euler_rotation) or None,
        quaternion_rotation=list(spec.quaternion_rotation) or None,
        scale=list(spec.scale) or None,
    )


def _handles(obj: objects_pb2.Object) -> dict[str, Any] | None:
    found = {
        name: [json_format.MessageToDict(h, preserving_proto_field_name=True) for h in handles]
        for name, handles in (
            ("translation", obj.translation_handle),
            ("rotation", obj.rotation_handle),
            ("scale", obj.scale_handle),
        )
        if handles
    }
    return found or None


def _strings(obj: objects_pb2.Object) -> dict[str, str]:
    return {name: getattr(obj, name) for name in STRING_FIELDS if getattr(obj, name)}


class ObjectServicer(objects_pb2_grpc.ObjectServiceServicer):
    """The idiomatic ObjectService over the same catalog as CLyman's REST surface."""

    def __init__(self, catalog: ObjectCatalog) -> None:
        self._catalog = catalog

    async def CreateObjects(
        self, request: objects_pb2.CreateObjectsRequest, context: grpc.aio.ServicerContext
    ) -> objects_pb2.CreateObjectsResponse:
        drafts = []
        for item in request.objects:
            obj = item.object
            fields: dict[str, Any] = {k: v for k, v in _strings(obj).items() if k != "owner"}
            drafts.append(
                ObjectRecord(
                    key="",
                    tenant="",
                    frame=obj.frame if obj.HasField("frame") else None,
                    timestamp=obj.timestamp if obj.HasField("timestamp") else None,
                    transform=_placement(item.placement, item.HasField("placement")) or [],
                    assets=list(obj.assets),
                    handles=_handles(obj),
                    **fields,
                )
            )
        records = await self._catalog.create(current_tenant(), drafts)
        return objects_pb2.CreateObjectsResponse(objects=[to_proto(r) for r in records])

    async def GetObject(
        self, request: objects_pb2.GetObjectRequest, context: grpc.aio.ServicerContext
    ) -> objects_pb2.GetObjectResponse:
        record = await self._catalog.get(current_tenant(), request.key)
        return objects_pb2.GetObjectResponse(object=to_proto(record))

    async def UpdateObject(
        self, request: objects_pb2.UpdateObjectRequest, context: grpc.aio.ServicerContext
    ) -> objects_pb2.UpdateObjectResponse:
        record = await self._catalog.update(current_tenant(), request.key, _patch(request))
        return objects_pb2.UpdateObjectResponse(object=to_proto(record))

    async def StreamUpdates(
        self,
        request_iterator: AsyncIterator[objects_pb2.StreamUpdatesRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        tenant = current_tenant()
        # Updates run as they arrive, so those of different objects share a group commit;
        # `answers` keeps them in the order sent; `room` bounds how many are unanswered.
        answers: asyncio.Queue[asyncio.Task[objects_pb2.StreamUpdatesResponse] | None] = (
            asyncio.Queue()
        )
        room = asyncio.Semaphore(STREAM_UPDATES_IN_FLIGHT)
        latest: dict[str, asyncio.Task[objects_pb2.StreamUpdatesResponse]] = {}

        async def apply(
            item: objects_pb2.StreamUpdatesRequest,
            after: asyncio.Task[objects_pb2.StreamUpdatesResponse] | None,
        ) -> objects_pb2.StreamUpdatesResponse:
            request = item.update
            if after is not None:
                await asyncio.wait((after,))  # the same object's previous update first
            try:
                if not item.HasField("update"):
                    raise InvalidArgument("update is required", field="update")
                record = await self._catalog.update(tenant, request.key, _patch(request))
            except KilnError as error:
                STREAMED_UPDATES.labels(grpc_code_for(error).name).inc()
                return objects_pb2.StreamUpdatesResponse(
                    key=request.key,
                    code=grpc_code_for(error).value[0],
                    reason=error.reason,
                    message=error.message,
                )
            finally:
                if latest.get(request.key) is asyncio.current_task():
                    del latest[request.key]
            STREAMED_UPDATES.labels("OK").inc()
            return objects_pb2.StreamUpdatesResponse(key=request.key, object=to_proto(record))

        async def read() -> None:
            try:
                async for item in request_iterator:
                    await room.acquire()
                    key = item.update.key
                    task = asyncio.create_task(apply(item, latest.get(key)))
                    latest[key] = task
                    answers.put_nowait(task)
            except Exception:
                answers.put_nowait(None)  # answer what arrived, then fail the call
                raise
            answers.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (task := await answers.get()) is not None:
                await context.write(await task)
                room.release()
            await reader  # raises what ended the request stream, if it failed
        finally:
            reader.cancel()
            while not answers.empty():
                left = answers.get_nowait()
                if left is not None:
                    left.cancel()

    async def DeleteObject(
        self, request: objects_pb2.DeleteObjectRequest, context: grpc.aio.ServicerContext
    ) -> objects_pb2.DeleteObjectResponse:
        record = await self._catalog.delete(current_tenant(), request.key)
        return objects_pb2.DeleteObjectResponse(key=record.key)

    async def QueryObjects(
        self, request: objects_pb2.QueryObjectsRequest, context: grpc.aio.ServicerContext
    ) -> objects_pb2.QueryObjectsResponse:
        queries = [
            ObjectQuery(
                strings={name: getattr(f, name) for name in STRING_FIELDS if getattr(f, name)},
                frame=f.frame if f.HasField("frame") else None,
                timestamp=f.timestamp if f.HasField("timestamp") else None,
                assets=list(f.assets),
            )
            for f in request.filters
        ]
        records = await self._catalog.query(current_tenant(), queries, request.limit or None)
        return objects_pb2.QueryObjectsResponse(objects=[to_proto(r) for r in records])

    async def LockObject(
        self, request: objects_pb2.LockObjectRequest, context: grpc.aio.ServicerContext
    ) -> objects_pb2.LockObjectResponse:
        record = await self._catalog.lock(
            current_tenant(), request.key, request.device, request.lock_ttl_seconds
        )
        return objects_pb2.LockObjectResponse(object=to_proto(record))

    async def UnlockObject(
        self, request: objects_pb2.UnlockObjectRequest, context: grpc.aio.ServicerContext
    ) -> objects_pb2.UnlockObjectResponse:
        record = await self._catalog.unlock(current_tenant(), request.key, request.device)
        return objects_pb2.UnlockObjectResponse(object=to_proto(record))

    async def AddObjectAsset(
        self, request: objects_pb2.AddObjectAssetRequest, context: grpc.aio.ServicerContext
    ) -> objects_pb2.AddObjectAssetResponse:
        record = await self._catalog.add_asset(
            current_tenant(), request.object_key, request.asset_key
        )
        return objects_pb2.AddObjectAssetResponse(object=to_proto(record))

    async def RemoveObjectAsset(
        self, request: objects_pb2.RemoveObjectAssetRequest, context: grpc.aio.ServicerContext
    ) -> objects_pb2.RemoveObjectAssetResponse:
        record = await self._catalog.remove_asset(
            current_tenant(), request.object_key, request.asset_key
        )
        return objects_pb2.RemoveObjectAssetResponse(object=to_proto(record))

    async def Subscribe(
        self, request: objects_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> None:
        # Writes, not yields: each event is one await per stream instead of a pass through
        # every interceptor's generator, and it goes as bytes made once for all streams
        # (add_object_service gives Subscribe a serializer that sends bytes as they are).
        events = self._catalog.events.subscribe_wire(current_tenant(), request.scene)
        # Initial metadata tells the client the subscription is registered: every change
        # committed after it arrives is delivered.
        await context.send_initial_metadata(())
        async for wire in events:
            await context.write(wire)


def _as_bytes(message: Any) -> bytes:
    """Subscribe's response serializer: a SubscribeResponse already serialised goes as is."""
    return message if isinstance(message, bytes) else bytes(message.SerializeToString())


class _Handlers:
    """Collects what the generated add_..._to_server registers, so one handler can change."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}
        self.service = ""

    def add_generic_rpc_handlers(self, _handlers: Any) -> None:
        pass

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.service, self.handlers = service, handlers


def add_object_service(servicer: ObjectServicer, server: grpc.aio.Server) -> None:
    """The generated registration of ObjectService, with Subscribe sending bytes."""
    found = _Handlers()
    objects_pb2_grpc.add_ObjectServiceServicer_to_server(servicer, found)
    handlers = dict(found.handlers)
    handlers["Subscribe"] = grpc.unary_stream_rpc_method_handler(
        servicer.Subscribe,
        request_deserializer=objects_pb2.SubscribeRequest.FromString,
        response_serializer=_as_bytes,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(found.service, handlers),)
    )
    server.add_registered_method_handlers(found.service, handlers)
