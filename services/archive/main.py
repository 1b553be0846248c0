"""Wires the archive service. Archives arrive with #5; until then the server runs with health,
reflection and metrics, and ArchiveService answers UNIMPLEMENTED."""

from __future__ import annotations

from kiln.archive.v1 import archive_pb2, archive_pb2_grpc

from services.runtime.config import ServiceConfig
from services.runtime.server import Registration, servicers


async def build(config: ServiceConfig) -> Registration:
    del config
    return servicers(
        (
            archive_pb2,
            "ArchiveService",
            archive_pb2_grpc.add_ArchiveServiceServicer_to_server,
            archive_pb2_grpc.ArchiveServiceServicer(),
        ),
    )
