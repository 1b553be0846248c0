"""Wires the objects service: database, bucket, servicers."""

from __future__ import annotations

from pathlib import Path

from kiln.objects.v1 import assets_pb2, assets_pb2_grpc

from services.objects.assets import AssetCatalog
from services.objects.servicer import AssetServicer
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
    catalog = AssetCatalog(AssetStore(db.sessionmaker(engine)), blobs)
    registration = servicers(
        (
            assets_pb2,
            "AssetService",
            assets_pb2_grpc.add_AssetServiceServicer_to_server,
            AssetServicer(catalog),
        ),
    )

    async def close() -> None:
        await engine.dispose()
        await blobs.close()

    registration.on_stop = [close]
    return registration
