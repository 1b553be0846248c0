"""StorageService: the caller's named storages (Claid's `/v1/storage/storages`)."""

from __future__ import annotations

import grpc
from google.protobuf import json_format
from kiln.render.v1 import render_pb2, render_pb2_grpc

from services.render.storage_store import StorageRecord, StorageStore
from services.render.storages import STORAGE_TYPES, public_parameters, validate_storage
from services.runtime.config import StorageConfig
from services.runtime.context import current_tenant


def _message(record: StorageRecord) -> render_pb2.Storage:
    storage = render_pb2.Storage(id=record.id, name=record.name, type=record.type)
    storage.parameters.update(public_parameters(record))
    return storage


class StorageServicer(render_pb2_grpc.StorageServiceServicer):
    """The six storage RPCs over the table, each scoped to the caller's tenant (set by the auth
    interceptor): another tenant's id is NotFound, a taken name AlreadyExists."""

    def __init__(self, store: StorageStore, storage: StorageConfig) -> None:
        self._store = store
        self._own_bucket = storage.bucket

    def _checked(self, storage: render_pb2.Storage) -> tuple[str, str, dict[str, object]]:
        parameters = json_format.MessageToDict(storage.parameters)
        return validate_storage(storage.name, storage.type, parameters, self._own_bucket)

    async def ListStorageTypes(
        self, request: render_pb2.ListStorageTypesRequest, context: grpc.aio.ServicerContext
    ) -> render_pb2.ListStorageTypesResponse:
        """web_folder and s3. Claid also lists gcs, but Kiln cannot reach Google Cloud Storage
        from where it runs (no outside network), so it neither lists nor accepts it."""
        return render_pb2.ListStorageTypesResponse(types=STORAGE_TYPES)

    async def CreateStorage(
        self, request: render_pb2.CreateStorageRequest, context: grpc.aio.ServicerContext
    ) -> render_pb2.CreateStorageResponse:
        name, kind, parameters = self._checked(request.storage)
        record = await self._store.create(current_tenant(), name, kind, parameters)
        return render_pb2.CreateStorageResponse(storage=_message(record))

    async def ListStorages(
        self, request: render_pb2.ListStoragesRequest, context: grpc.aio.ServicerContext
    ) -> render_pb2.ListStoragesResponse:
        records = await self._store.list(current_tenant())
        return render_pb2.ListStoragesResponse(storages=[_message(r) for r in records])

    async def GetStorage(
        self, request: render_pb2.GetStorageRequest, context: grpc.aio.ServicerContext
    ) -> render_pb2.GetStorageResponse:
        record = await self._store.get(current_tenant(), request.id)
        return render_pb2.GetStorageResponse(storage=_message(record))

    async def UpdateStorage(
        self, request: render_pb2.UpdateStorageRequest, context: grpc.aio.ServicerContext
    ) -> render_pb2.UpdateStorageResponse:
        name, kind, parameters = self._checked(request.storage)
        record = await self._store.update(
            current_tenant(), request.storage.id, name, kind, parameters
        )
        return render_pb2.UpdateStorageResponse(storage=_message(record))

    async def DeleteStorage(
        self, request: render_pb2.DeleteStorageRequest, context: grpc.aio.ServicerContext
    ) -> render_pb2.DeleteStorageResponse:
        await self._store.delete(current_tenant(), request.id)
        return render_pb2.DeleteStorageResponse()
