"""Wires the archive service: ArchiveService for requests, and the `archive.create` worker."""

from __future__ import annotations

import grpc
from kiln.archive.v1 import archive_pb2, archive_pb2_grpc
from kiln.jobs.v1 import jobs_pb2_grpc
from kiln.objects.v1 import assets_pb2_grpc

from services.archive.archiver import HANDLERS
from services.archive.servicer import ArchiveServicer
from services.runtime import tracing
from services.runtime.config import ServiceConfig
from services.runtime.peers import PEER_CHANNEL_OPTIONS
from services.runtime.server import Registration, servicers
from services.runtime.storage import BlobStore
from services.runtime.worker import Worker


async def build(config: ServiceConfig) -> Registration:
    objects = grpc.aio.insecure_channel(
        config.objects_target,
        options=PEER_CHANNEL_OPTIONS,
        interceptors=tracing.client_interceptors(),
    )
    jobs = grpc.aio.insecure_channel(
        config.jobs_target, options=PEER_CHANNEL_OPTIONS, interceptors=tracing.client_interceptors()
    )
    blobs = BlobStore(config.storage)
    await blobs.ensure_bucket()
    worker = Worker.from_config(config, HANDLERS, blobs=blobs)
    # The worker leases in the background, reconnecting until the jobs service is up.
    await worker.start()
    registration = servicers(
        (
            archive_pb2,
            "ArchiveService",
            archive_pb2_grpc.add_ArchiveServiceServicer_to_server,
            ArchiveServicer(
                assets_pb2_grpc.AssetServiceStub(objects), jobs_pb2_grpc.JobServiceStub(jobs)
            ),
        ),
    )

    async def close() -> None:
        # Running archives get the grace period, then are released to another replica.
        await worker.stop(config.shutdown_grace_seconds)
        await objects.close()
        await jobs.close()
        await blobs.close()

    registration.on_stop = [close]
    return registration
