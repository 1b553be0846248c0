"""Wires the render service: ImageService, StorageService and RenderService for requests; the
workers of `image.edit`, `image.edit_batch` and the scene jobs (`scene.import`, `scene.export`,
`scene.render`, their 3D stack loaded on the first scene job); the sweep of temporary results."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from kiln.jobs.v1 import jobs_pb2_grpc
from kiln.objects.v1 import scenes_pb2_grpc
from kiln.render.v1 import render_pb2, render_pb2_grpc

from services.render.edit_jobs import edit_handlers
from services.render.editing import ImageEditor
from services.render.scene_servicer import RenderServicer
from services.render.scene_stack import SceneStack
from services.render.servicer import ImageServicer
from services.render.storages import open_storages
from services.render.storages_servicer import StorageServicer
from services.runtime import tracing
from services.runtime.config import ServiceConfig
from services.runtime.peers import PEER_CHANNEL_OPTIONS
from services.runtime.server import Registration, servicers
from services.runtime.storage import BlobStore
from services.runtime.worker import TokenFile, Worker


async def build(config: ServiceConfig) -> Registration:
    jobs = grpc.aio.insecure_channel(
        config.jobs_target, options=PEER_CHANNEL_OPTIONS, interceptors=tracing.client_interceptors()
    )
    objects = grpc.aio.insecure_channel(
        config.objects_target,
        options=PEER_CHANNEL_OPTIONS,
        interceptors=tracing.client_interceptors(),
    )
    scenes = scenes_pb2_grpc.SceneServiceStub(objects)
    blobs = BlobStore(config.storage)
    await blobs.ensure_bucket()
    storages = await open_storages(config)
    editor = ImageEditor(config.imaging, blobs, storages.resolver)
    token = TokenFile(config.worker.token_file)
    scene_stack = SceneStack(config.scenes, blobs, scenes, token.metadata)
    handlers = {**edit_handlers(editor), **scene_stack.handlers()}
    worker = Worker.from_config(config, handlers, blobs=blobs)
    # The worker leases in the background, reconnecting until the jobs service is up.
    await worker.start()
    sweeper = asyncio.create_task(editor.sweep_forever(), name="tmp-sweeper")
    registration = servicers(
        (
            render_pb2,
            "ImageService",
            render_pb2_grpc.add_ImageServiceServicer_to_server,
            ImageServicer(editor, jobs_pb2_grpc.JobServiceStub(jobs)),
        ),
        (
            render_pb2,
            "StorageService",
            render_pb2_grpc.add_StorageServiceServicer_to_server,
            StorageServicer(storages.store, config.storage),
        ),
        (
            render_pb2,
            "RenderService",
            render_pb2_grpc.add_RenderServiceServicer_to_server,
            RenderServicer(config.scenes, blobs, jobs_pb2_grpc.JobServiceStub(jobs), scenes),
        ),
    )

    async def close() -> None:
        # Running edits get the grace period, then are released to another replica.
        await worker.stop(config.shutdown_grace_seconds)
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await editor.close()
        await storages.close()
        scene_stack.close()
        await objects.close()
        await jobs.close()
        await blobs.close()

    registration.on_stop = [close]
    return registration
