"""The scene jobs' handlers for the render worker, with the 3D stack loaded on first use.

`scene_jobs` and the rasterizer import trimesh, scipy and moderngl: about 60 MiB of a render
process's memory and half a second of its start. A process that only edits images never needs
them, so `SceneStack` registers the scene kinds when the worker starts and imports what runs them
when the first scene job arrives, in a thread, so the event loop goes on serving meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from kiln.objects.v1 import scenes_pb2_grpc

from services.render.scene_kinds import SCENE_KINDS
from services.runtime.config import ScenesConfig
from services.runtime.storage import BlobStore
from services.runtime.worker import Handler, JobContext

if TYPE_CHECKING:
    from services.render.scene_jobs import SceneWorkshop


class SceneStack:
    """The scene kinds' handlers; the first one called builds the `SceneWorkshop` behind all."""

    def __init__(
        self,
        config: ScenesConfig,
        blobs: BlobStore,
        scenes: scenes_pb2_grpc.SceneServiceStub,
        worker_metadata: Callable[[], tuple[tuple[str, str], ...]],
    ) -> None:
        self._config = config
        self._blobs = blobs
        self._scenes = scenes
        self._worker_metadata = worker_metadata
        self._workshop: SceneWorkshop | None = None
        self._handlers: dict[str, Handler] = {}
        self._loading = asyncio.Lock()

    @property
    def loaded(self) -> bool:
        """Whether a scene job has run here, so the 3D stack is in memory."""
        return self._workshop is not None

    def handlers(self) -> dict[str, Handler]:
        return {kind: self._handler(kind) for kind in SCENE_KINDS}

    def _handler(self, kind: str) -> Handler:
        async def run(ctx: JobContext) -> Mapping[str, Any] | None:
            handlers = self._handlers or await self._load()
            return await handlers[kind](ctx)

        return run

    async def _load(self) -> dict[str, Handler]:
        async with self._loading:
            if self._workshop is None:
                workshop = await asyncio.to_thread(self._build)
                self._handlers = dict(workshop.handlers())
                self._workshop = workshop
        return self._handlers

    def _build(self) -> SceneWorkshop:
        # Imported here, not at the top: this is what a process without scene jobs never loads.
        from services.render.scene_jobs import SceneWorkshop
        from services.render.scenes.raster import Rasterizer

        # The GL context is made on first render, on the rasterizer's own thread.
        rasterizer = Rasterizer(
            max_pixels=self._config.max_render_pixels,
            backend=self._config.gl_backend,
            texture_cache_bytes=self._config.texture_cache_bytes,
        )
        return SceneWorkshop(
            self._config, self._blobs, self._scenes, self._worker_metadata, rasterizer
        )

    def close(self) -> None:
        """Releases the GL context, if a render made one."""
        if self._workshop is not None:
            self._workshop.rasterizer.close()
