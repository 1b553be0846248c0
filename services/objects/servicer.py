"""gRPC surface of the objects service: translates messages to the domain and back."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf import json_format
from kiln.objects.v1 import assets_pb2, assets_pb2_grpc

from services.objects.assets import AssetCatalog, UploadHeader
from services.objects.store import AssetRecord
from services.runtime.context import current_tenant
from services.runtime.errors import InvalidArgument


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
