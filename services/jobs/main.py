"""Wires the jobs service. Its RPCs arrive with the jobs issue (#4); until then the server runs
with health, reflection and metrics, and JobService answers UNIMPLEMENTED."""

from __future__ import annotations

from kiln.jobs.v1 import jobs_pb2, jobs_pb2_grpc

from services.runtime.config import ServiceConfig
from services.runtime.server import Registration, servicers


async def build(config: ServiceConfig) -> Registration:
    del config
    return servicers(
        (
            jobs_pb2,
            "JobService",
            jobs_pb2_grpc.add_JobServiceServicer_to_server,
            jobs_pb2_grpc.JobServiceServicer(),
        ),
    )
