"""Wires the objects service: database, bucket, servicers (assets, objects, CLyman, scenes)."""

from __future__ import annotations

from pathlib import Path

from kiln.objects.v1 import (
    assets_pb2,
    assets_pb2_grpc,
    clyman_pb2,
    clyman_pb2_grpc,
    objects_pb2,
    scenes_pb2,
    scenes_pb2_grpc,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.objects.assets import AssetCatalog
from services.objects.clyman import ClymanServicer
from services.objects.events import EventHub
from services.objects.object_store import ObjectStore
from services.objects.objects import ObjectCatalog
from services.objects.scene_servicer import SceneServicer
from services.objects.scene_store import SceneStore
from services.objects.scenes import SceneCatalog
from services.objects.servicer import AssetServicer, ObjectServicer, add_object_service
from services.objects.store import AssetStore
from services.objects.udp import EventCipher, UdpIngress
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
    events = EventHub(queue_size=config.objects_subscriber_queue)
    objects = ObjectCatalog(ObjectStore(sessions), events)
    # PostgreSQL: LISTEN/NOTIFY to the other replicas; SQLite: this process only.
    await events.start(config.database_url, objects.resolve_event)
    scenes = SceneCatalog(SceneStore(sessions), objects, blobs)
    udp = await start_udp(config, objects, events, sessions)
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
            add_object_service,
            ObjectServicer(objects),
        ),
        (
            clyman_pb2,
            "ClymanService",
            clyman_pb2_grpc.add_ClymanServiceServicer_to_server,
            ClymanServicer(objects),
        ),
        (
            scenes_pb2,
            "SceneService",
            scenes_pb2_grpc.add_SceneServiceServicer_to_server,
            SceneServicer(scenes),
        ),
    )

    async def close() -> None:
        if udp is not None:
            await udp.close()
        await events.close()
        await objects.close()
        await engine.dispose()
        await blobs.close()

    registration.on_stop = [close]
    return registration


async def start_udp(
    config: ServiceConfig,
    objects: ObjectCatalog,
    events: EventHub,
    sessions: async_sessionmaker[AsyncSession],
) -> UdpIngress | None:
    """CLyman's UDP Events API, when KILN_OBJECTS_UDP_PORT is on."""
    if config.objects_udp_port < 0:
        return None
    cipher = (
        EventCipher.from_hex(config.objects_udp_aes_key, config.objects_udp_aes_iv)
        if config.objects_udp_aes_key
        else None
    )
    udp = UdpIngress(objects, events, sessions, tenant=config.objects_udp_tenant, cipher=cipher)
    await udp.start(config.objects_udp_host or config.host, config.objects_udp_port)
    return udp
