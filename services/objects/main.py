"""Wires the objects service: database, bucket, servicers."""

from __future__ import annotations

from pathlib import Path

from kiln.objects.v1 import (
    assets_pb2,
    assets_pb2_grpc,
    clyman_pb2,
    clyman_pb2_grpc,
    objects_pb2,
    objects_pb2_grpc,
)

from services.objects.assets import AssetCatalog
from services.objects.clyman import ClymanServicer
from services.objects.events import EventHub
from services.objects.object_store import ObjectStore
from services.objects.objects import ObjectCatalog
from services.objects.servicer import AssetServicer, ObjectServicer
from services.objects.store import AssetStore
from services.runtime import db
from services.runtime.config import ServiceConfig
from services.runtime.server import Registration, servicers
from services.runtime.storage import BlobStore

MIGRATIONS = Path(__file__).parent / "migrations"


async def build(config: ServiceConfig) -> Registration:
    engine = db.create_engine(config.database_url)
    await db.migrate(engine, "objects", MIGRATIONS)
    blobs = BlobStore(config.storage)
    await blobs.ensure_bucket()
    sessions = db.sessionmaker(engine)
    assets = AssetCatalog(AssetStore(sessions), blobs)
    events = EventHub()
    await events.start()
    objects = ObjectCatalog(ObjectStore(sessions), events)
    registration = servicers(
        (
            assets_pb2,
            "AssetService",
            assets_pb2_grpc.add_AssetServiceServicer_to_server,
            AssetServicer(assets),
        ),
        (
            objects_pb2,
            "ObjectService",
            objects_pb2_grpc.add_ObjectServiceServicer_to_server,
            ObjectServicer(objects),
        ),
        (
            clyman_pb2,
            "ClymanService",
            clyman_pb2_grpc.add_ClymanServiceServicer_to_server,
            ClymanServicer(objects),
        ),
    )

    async def close() -> None:
        await events.close()
        await engine.dispose()
        await blobs.close()

    registration.on_stop = [close]
    return registration
