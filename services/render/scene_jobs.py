"""The `scene.import`, `scene.export` and `scene.render` jobs on the render workers.

- **import**: the uploaded files (in the temporary area) are copied to a private folder and
  parsed in a child process under the budgets (`scenes.importing`). Every mesh becomes a GLB
  asset and every texture an image asset, written to their final S3 keys first; then one
  `CommitImport` call records the assets and the objects (one per mesh node: name, type
  `Mesh`, its world transform in CLyman's row-major form, its asset ids) in one transaction.
  Nothing is visible before the commit, so an import is never half done. Asset ids derive
  from the job id, so a retried attempt overwrites the same keys and the commit, idempotent
  on the job id, cannot import twice. A file that cannot be imported fails the job at once
  (another attempt would fail the same way) and removes what was written.
- **export** / **render**: the scene's objects and their mesh assets are read back
  (`GetSceneContent`), each GLB placed with its object's current transform, so a transform
  changed through CLyman's API shows in the next render. The file or image is the job's one
  output, which Clara's job URL redirects to.

The workers act for each job's tenant: their own token plus `x-kiln-tenant` (objects service,
`acting_tenant`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import trimesh
from google.protobuf import json_format
from kiln.objects.v1 import objects_pb2, scenes_pb2, scenes_pb2_grpc

from services.render.scene_kinds import (
    EXPORT_KIND,
    IMPORT_KIND,
    IMPORTED_TRIANGLES,
    RENDER_KIND,
    RENDERED_FRAMES,
    SCENE_JOB_SECONDS,
    RenderParams,
)
from services.render.scenes.cache import MeshCache
from services.render.scenes.exporting import export_scene
from services.render.scenes.formats import ExportRefused
from services.render.scenes.importing import ImportBudget, ImportedScene, parse_upload
from services.render.scenes.model import (
    GLB_MIME,
    Placed,
    SceneEmpty,
    SceneFileInvalid,
    matrix_of,
    mesh_from_glb,
    row_major,
)
from services.render.scenes.raster import Camera, Rasterizer, RenderSettings
from services.runtime.blob_keys import asset_key
from services.runtime.config import ScenesConfig
from services.runtime.context import TENANT_HEADER
from services.runtime.errors import InvalidArgument, JobFailed, NotFound
from services.runtime.status import from_call
from services.runtime.storage import BlobStore
from services.runtime.worker import JobContext

log = logging.getLogger("kiln.render.scenes")

_PEER_DEADLINE_SECONDS = 60.0


def _settings(params: RenderParams) -> RenderSettings:
    return RenderSettings(
        width=params.width,
        height=params.height,
        format=params.format,
        camera=Camera(
            azimuth=params.azimuth, polar=params.polar, bounding_radius=params.bounding_radius
        ),
    )


def derived_asset_id(job_id: str, role: str, index: int) -> str:
    """The id of an import's `index`th asset of `role`: the same in every attempt."""
    digest = hashlib.sha256(f"{job_id}/{role}/{index}".encode()).digest()
    return "asset_" + base64.urlsafe_b64encode(digest).decode()[:22]


class SceneWorkshop:
    """What the scene jobs share: the bucket, the objects service, the renderer, budgets."""

    def __init__(
        self,
        config: ScenesConfig,
        blobs: BlobStore,
        scenes: scenes_pb2_grpc.SceneServiceStub,
        worker_metadata: Callable[[], tuple[tuple[str, str], ...]],
        rasterizer: Rasterizer,
    ) -> None:
        self._config = config
        self._blobs = blobs
        self._scenes = scenes
        self._worker_metadata = worker_metadata
        self.rasterizer = rasterizer
        self._meshes = MeshCache(config.mesh_cache_bytes)
        self._budget = ImportBudget(
            max_file_bytes=config.max_import_bytes,
            max_total_bytes=config.max_import_bytes,
            max_files=config.max_import_files,
            max_triangles=config.max_triangles,
            max_seconds=config.import_seconds,
            max_memory_bytes=config.import_memory_bytes,
        )

    def handlers(self) -> dict[str, Callable[[JobContext], Awaitable[Mapping[str, Any] | None]]]:
        return {
            IMPORT_KIND: self._timed(IMPORT_KIND, self.run_import),
            EXPORT_KIND: self._timed(EXPORT_KIND, self.run_export),
            RENDER_KIND: self._timed(RENDER_KIND, self.run_render),
        }

    @staticmethod
    def _timed(
        kind: str, handler: Callable[[JobContext], Awaitable[dict[str, Any]]]
    ) -> Callable[[JobContext], Awaitable[Mapping[str, Any] | None]]:
        async def run(ctx: JobContext) -> Mapping[str, Any] | None:
            started, outcome = time.monotonic(), "error"
            try:
                result = await handler(ctx)
                outcome = "ok"
                return result
            except JobFailed:
                outcome = "failed"
                raise
            finally:
                SCENE_JOB_SECONDS.labels(kind, outcome).observe(time.monotonic() - started)

        return run

    async def _call(self, method: Any, request: Any, tenant: str) -> Any:
        metadata = (*self._worker_metadata(), (TENANT_HEADER, tenant))
        try:
            return await method(request, metadata=metadata, timeout=_PEER_DEADLINE_SECONDS)
        except grpc.aio.AioRpcError as err:
            raise from_call(err) from None

    # --- import ----------------------------------------------------------------------------

    async def run_import(self, ctx: JobContext) -> dict[str, Any]:
        params = json_format.MessageToDict(ctx.job.params)
        scene_id = str(params.get("sceneId", ""))
        files: list[dict[str, Any]] = list(params.get("files", []))
        if not scene_id or not files:
            raise JobFailed("the job names no scene or no files")
        written: list[str] = []
        try:
            with tempfile.TemporaryDirectory(prefix="kiln-import-") as tmp:
                folder = Path(tmp)
                for entry in files:
                    await self._download(entry["key"], folder / entry["name"])
                ctx.progress(0.2)
                try:
                    imported = await parse_upload(
                        folder, [entry["name"] for entry in files], self._budget
                    )
                except SceneFileInvalid as exc:
                    raise JobFailed(str(exc)) from None
            ctx.progress(0.6)
            assets, objects = await self._store_import(ctx, scene_id, imported, written)
            ctx.progress(0.9)
            committed = await self._call(
                self._scenes.CommitImport,
                scenes_pb2.CommitImportRequest(
                    scene_id=scene_id, import_id=ctx.job_id, assets=assets, objects=objects
                ),
                ctx.tenant,
            )
        except (JobFailed, InvalidArgument, NotFound) as exc:
            # Final: nothing was committed, so nothing may stay behind.
            await self._remove(written)
            await self._remove([entry["key"] for entry in files])
            if isinstance(exc, JobFailed):
                raise
            raise JobFailed(getattr(exc, "message", str(exc))) from None
        await self._remove([entry["key"] for entry in files])
        triangles = imported.triangles
        IMPORTED_TRIANGLES.inc(triangles)
        return {
            "sceneId": scene_id,
            "format": imported.source_format,
            "objects": [o.key for o in committed.objects],
            "assets": list(committed.asset_ids),
            "triangles": triangles,
            "parsePeakRssMiB": round(imported.parse_peak_rss_bytes / 2**20, 1),
        }

    async def _download(self, key: str, path: Path) -> None:
        with path.open("wb") as out:
            async for chunk in self._blobs.get_stream(key):
                out.write(chunk)

    async def _store_import(
        self, ctx: JobContext, scene_id: str, imported: ImportedScene, written: list[str]
    ) -> tuple[list[scenes_pb2.ImportedAsset], list[scenes_pb2.ImportedObject]]:
        assets: list[scenes_pb2.ImportedAsset] = []
        texture_ids: list[str] = []
        for index, texture in enumerate(imported.textures):
            asset_id = derived_asset_id(ctx.job_id, "texture", index)
            assets.append(
                await self._put_asset(
                    ctx.tenant,
                    asset_id=asset_id,
                    file_name=texture.name,
                    data=texture.data,
                    mime_type=texture.mime_type,
                    metadata={"role": "texture"},
                    written=written,
                )
            )
            texture_ids.append(asset_id)
        objects: list[scenes_pb2.ImportedObject] = []
        # One asset per stored mesh: instanced nodes share theirs, as they did in the file.
        mesh_ids: dict[str, str] = {}
        for index, node in enumerate(imported.nodes):
            name = node.name or f"mesh{index}"
            known = mesh_ids.get(node.mesh_key)
            if known is not None:
                asset_id = known
            else:
                asset_id = mesh_ids[node.mesh_key] = derived_asset_id(
                    ctx.job_id, "mesh", len(mesh_ids)
                )
                assets.append(
                    await self._put_asset(
                        ctx.tenant,
                        asset_id=asset_id,
                        file_name=f"{_file_stem(name, index)}.glb",
                        data=node.glb,
                        mime_type=GLB_MIME,
                        metadata={"role": "mesh", "triangles": node.triangles},
                        written=written,
                    )
                )
            objects.append(
                scenes_pb2.ImportedObject(
                    object=objects_pb2.Object(
                        name=name[:255],
                        type="Mesh",
                        transform=row_major(node.transform),
                        assets=[asset_id, *(texture_ids[t] for t in node.textures)],
                    )
                )
            )
            ctx.progress(0.6 + 0.3 * (index + 1) / max(1, len(imported.nodes)))
        return assets, objects

    async def _put_asset(
        self,
        tenant: str,
        *,
        asset_id: str,
        file_name: str,
        data: bytes,
        mime_type: str,
        metadata: dict[str, Any],
        written: list[str],
    ) -> scenes_pb2.ImportedAsset:
        key = asset_key(tenant, asset_id)
        written.append(key)
        put = await self._blobs.put_bytes(key, data, mime_type)
        asset = scenes_pb2.ImportedAsset(
            id=asset_id, file_name=file_name, mime_type=mime_type, size=put.size, sha256=put.sha256
        )
        asset.metadata.update(metadata)
        return asset

    async def _remove(self, keys: Sequence[str]) -> None:
        for key in keys:
            with contextlib.suppress(Exception):
                await self._blobs.delete(key)

    # --- export and render -----------------------------------------------------------------

    async def load_scene(
        self, tenant: str, scene_id: str, frame: int | None = None
    ) -> list[Placed]:
        """The scene's meshes where their objects stand. Objects with a frame appear only at
        that frame (`time`); objects without one always."""
        content = await self._call(
            self._scenes.GetSceneContent,
            scenes_pb2.GetSceneContentRequest(scene_id=scene_id),
            tenant,
        )
        meshes = {a.id: a for a in content.assets if a.mime_type == GLB_MIME}
        placed: list[Placed] = []
        for obj in content.objects:
            if obj.HasField("frame") and obj.frame != frame:
                continue
            for asset_id in obj.assets:
                asset = meshes.get(asset_id)
                if asset is None:
                    continue
                try:
                    mesh = await self._mesh(asset.blob_key, asset.size)
                    transform = matrix_of(list(obj.transform))
                except (SceneFileInvalid, ValueError):
                    # One bad asset (uploaded by hand and named on an object) must not make
                    # the whole scene unrenderable.
                    log.warning("skipping an unreadable mesh", extra={"asset": asset_id})
                    continue
                placed.append(Placed(name=obj.name or obj.key, mesh=mesh, transform=transform))
        return placed

    async def _mesh(self, blob_key: str, size: int) -> trimesh.Trimesh:
        mesh = self._meshes.get(blob_key, size)
        if mesh is None:
            data = await self._blobs.get_bytes(blob_key)
            mesh = await asyncio.to_thread(mesh_from_glb, data)
            await asyncio.to_thread(self._meshes.put, blob_key, size, mesh)
        return mesh

    async def run_export(self, ctx: JobContext) -> dict[str, Any]:
        params = json_format.MessageToDict(ctx.job.params)
        scene_id = str(params.get("sceneId", ""))
        placed = await self._scene_or_fail(ctx.tenant, scene_id, None)
        ctx.progress(0.4)
        try:
            exported = await asyncio.to_thread(
                export_scene,
                placed,
                str(params.get("extension", "")),
                zip_output=bool(params.get("zip", True)),
                center=bool(params.get("centerScene", False)),
            )
        except (ExportRefused, SceneEmpty) as exc:
            raise JobFailed(str(exc) or "the scene has no meshes to export") from None
        ctx.progress(0.9)
        await ctx.put_output(exported.name, exported.data, exported.mime_type)
        return {"sceneId": scene_id, "file": exported.name, "size": len(exported.data)}

    async def run_render(self, ctx: JobContext) -> dict[str, Any]:
        params = json_format.MessageToDict(ctx.job.params)
        scene_id = str(params.get("sceneId", ""))
        try:
            render = RenderParams.from_json(params)
        except (KeyError, ValueError, TypeError) as exc:
            raise JobFailed(f"the job's render parameters are malformed ({exc})") from None
        placed = await self._scene_or_fail(ctx.tenant, scene_id, render.time)
        ctx.progress(0.4)
        try:
            # Decoded meshes are shared through the mesh cache and never changed in place.
            image = await self.rasterizer.render_async(placed, _settings(render), frozen=True)
        except SceneEmpty:
            raise JobFailed(f"scene {scene_id} has no meshes to render") from None
        ext = "jpg" if render.format == "jpeg" else "png"
        await ctx.put_output(f"render.{ext}", image, f"image/{render.format}")
        RENDERED_FRAMES.labels(render.format).inc()
        return {"sceneId": scene_id, "width": render.width, "height": render.height}

    async def _scene_or_fail(self, tenant: str, scene_id: str, frame: int | None) -> list[Placed]:
        try:
            placed = await self.load_scene(tenant, scene_id, frame)
        except NotFound:
            raise JobFailed(f"scene {scene_id} not found") from None
        if not placed:
            raise JobFailed(f"scene {scene_id} has no meshes")
        return placed


def _file_stem(name: str, index: int) -> str:
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:80].strip("_")
    return stem or f"mesh{index}"
