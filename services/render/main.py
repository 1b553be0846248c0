"""Wires the render service. Image editing arrives with #6 and scenes with #7; until then the
server runs with health, reflection and metrics, and its RPCs answer UNIMPLEMENTED."""

from __future__ import annotations

from kiln.render.v1 import render_pb2, render_pb2_grpc

from services.runtime.config import ServiceConfig
from services.runtime.server import Registration, servicers


async def build(config: ServiceConfig) -> Registration:
    del config
    return servicers(
        (
            render_pb2,
            "ImageService",
            render_pb2_grpc.add_ImageServiceServicer_to_server,
            render_pb2_grpc.ImageServiceServicer(),
        ),
        (
            render_pb2,
            "RenderService",
            render_pb2_grpc.add_RenderServiceServicer_to_server,
            render_pb2_grpc.RenderServiceServicer(),
        ),
    )
