"""Calls between Kiln processes spread over every replica a target resolves to."""

from __future__ import annotations

import asyncio
import collections

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime.peers import PEER_CHANNEL_OPTIONS


class CountingHealth(health_pb2_grpc.HealthServicer):
    def __init__(self, name: str, seen: collections.Counter[str]) -> None:
        self.name, self.seen = name, seen

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        self.seen[self.name] += 1
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


async def test_calls_reach_every_replica_of_a_target() -> None:
    """Two replicas behind one target (as a headless Service's DNS name resolves to each pod):
    gRPC's default policy would send every call to the first; Kiln's channels use them all."""
    seen: collections.Counter[str] = collections.Counter()
    servers, ports = [], []
    for name in ("replica-a", "replica-b"):
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(CountingHealth(name, seen), server)
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        servers.append(server)
    target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports)
    try:
        async with grpc.aio.insecure_channel(target, options=PEER_CHANNEL_OPTIONS) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            await channel.channel_ready()
            # round_robin connects to every address; wait until both subchannels are up.
            for _ in range(50):
                for _ in range(10):
                    await stub.Check(health_pb2.HealthCheckRequest())
                if len(seen) == 2:
                    break
                await asyncio.sleep(0.05)
        assert set(seen) == {"replica-a", "replica-b"}, seen
    finally:
        await asyncio.gather(*(server.stop(None) for server in servers))
