"""ArchiveService: checks an archive request against the caller's assets and queues its job.

Everything that can refuse the request is checked here, before any job exists: the count, the
template, and every asset id (read through AssetService with the caller's own token, so only
the caller's assets can be archived). The job then carries every member's name, key and size,
so the worker needs no further access to the objects service.
"""

from __future__ import annotations

import grpc
from google.protobuf import struct_pb2
from kiln.archive.v1 import archive_pb2, archive_pb2_grpc
from kiln.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from kiln.objects.v1 import assets_pb2, assets_pb2_grpc

from services.archive.archiver import KIND, MAX_ASSETS, members_for
from services.runtime.context import current_tenant
from services.runtime.errors import InvalidArgument, MissingField
from services.runtime.peers import call_peer, caller_credentials

MAX_TEMPLATE = 500
MAX_ASSET_ID = 128


class ArchiveServicer(archive_pb2_grpc.ArchiveServiceServicer):
    def __init__(
        self, assets: assets_pb2_grpc.AssetServiceStub, jobs: jobs_pb2_grpc.JobServiceStub
    ) -> None:
        self._assets = assets
        self._jobs = jobs

    async def CreateArchive(
        self, request: archive_pb2.CreateArchiveRequest, context: grpc.aio.ServicerContext
    ) -> archive_pb2.CreateArchiveResponse:
        ids = list(dict.fromkeys(request.asset_ids))
        if not ids:
            raise MissingField("query.assetIds must name at least one asset", field="assetIds")
        if len(ids) > MAX_ASSETS:
            raise InvalidArgument(
                f"at most {MAX_ASSETS} assets per archive, got {len(ids)}", field="assetIds"
            )
        for asset_id in ids:
            if not asset_id or len(asset_id) > MAX_ASSET_ID:
                raise InvalidArgument(f"{asset_id[:40]!r} is not an asset id", field="assetIds")
        template = request.file_name_template
        if len(template) > MAX_TEMPLATE:
            raise InvalidArgument(
                f"fileNameTemplate is longer than {MAX_TEMPLATE} characters",
                field="fileNameTemplate",
            )
        credentials = caller_credentials(context)
        found = await call_peer(
            self._assets.BatchGetAssets,
            assets_pb2.BatchGetAssetsRequest(asset_ids=ids),
            credentials,
        )
        members = members_for(current_tenant(), found.assets, template=template, flat=request.flat)
        params = struct_pb2.Struct()
        params.update(
            {
                "query": {"assetIds": ids},
                "options": {"flat": request.flat, "fileNameTemplate": template},
                "members": members,
            }
        )
        created = await call_peer(
            self._jobs.CreateJob,
            jobs_pb2.CreateJobRequest(
                job=jobs_pb2.Job(kind=KIND, params=params), request_id=request.request_id
            ),
            credentials,
        )
        return archive_pb2.CreateArchiveResponse(job=created.job)
