"""The grpc.aio server bootstrap every Kiln service uses.

`serve()` builds the server with health, reflection, the interceptors and a /metrics port, runs
the service's start-up (migrations, bucket), and on SIGTERM or SIGINT marks every service
NOT_SERVING, stops accepting calls, and lets in-flight ones finish within the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from services.runtime import tracing
from services.runtime.auth import TokenVerifier
from services.runtime.config import ServiceConfig
from services.runtime.interceptors import AuthInterceptor, ContextInterceptor, MetricsInterceptor
from services.runtime.logs import configure_logging

log = logging.getLogger("kiln.server")

# Generous enough for a 1 MiB upload chunk plus framing; large bodies are streamed, never sent
# as one message.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
#: How long a client connection lives before the server asks the client to reconnect.
MAX_CONNECTION_AGE_MS = 5 * 60 * 1000


@dataclass
class Registration:
    """What a service adds to the server: its servicers and the names reflection should list."""

    add_to_server: Sequence[Callable[[grpc.aio.Server], None]]
    """Functions like `add_FooServiceServicer_to_server` bound to a servicer."""
    service_names: Sequence[str]
    """Full names of the services, e.g. `kiln.objects.v1.AssetService`."""
    on_stop: Sequence[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """Closers run after the server stopped (database engines, channels)."""


@dataclass
class RunningServer:
    """A started server: its bound ports and the handles to stop it."""

    server: grpc.aio.Server
    port: int
    metrics_port: int
    health: health.aio.HealthServicer
    registration: Registration
    _metrics_httpd: Any = None

    async def stop(self, grace: float) -> None:
        """Graceful stop: NOT_SERVING first so balancers drain, then stop with a grace period."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for closer in self.registration.on_stop:
            await closer()
        if self._metrics_httpd is not None:
            self._metrics_httpd.shutdown()


async def start(
    config: ServiceConfig,
    registration: Registration,
    *,
    verifier: TokenVerifier | None = None,
) -> RunningServer:
    """Starts the server and returns once it is serving; port 0 binds a free port."""
    verifier = verifier or TokenVerifier.from_files(
        config.auth.public_key_files, issuer=config.auth.issuer
    )
    server = grpc.aio.server(
        interceptors=[
            MetricsInterceptor(),
            # Nothing when tracing is off; when on, its span covers the call's auth and errors.
            *tracing.server_interceptors(),
            ContextInterceptor(),
            AuthInterceptor(verifier),
        ],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
            # Clients reconnect (and resolve the Service again) at least this often, so a
            # scaled-up replica gets calls; calls in flight, streams included, run on.
            ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
        ],
    )
    for add in registration.add_to_server:
        add(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [*registration.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
    port = server.add_insecure_port(f"{config.host}:{config.grpc_port}")
    if port == 0:
        raise OSError(f"cannot bind gRPC port {config.host}:{config.grpc_port}")
    await server.start()

    metrics_httpd = None
    metrics_port = -1
    if config.metrics_port >= 0:
        metrics_httpd, thread = start_http_server(config.metrics_port, addr=config.host)
        del thread
        metrics_port = int(metrics_httpd.server_port)

    for name in ("", *registration.service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "serving",
        extra={"grpc_port": port, "metrics_port": metrics_port, "services": list(names)},
    )
    return RunningServer(
        server=server,
        port=port,
        metrics_port=metrics_port,
        health=health_servicer,
        registration=registration,
        _metrics_httpd=metrics_httpd,
    )


async def serve(
    config: ServiceConfig,
    build: Callable[[ServiceConfig], Awaitable[Registration]],
) -> None:
    """Runs one service until SIGTERM or SIGINT, then shuts it down gracefully."""
    configure_logging(config.name, config.log_level, config.log_format)
    tracing.configure(config.name, config.tracing)
    registration = await build(config)
    running = await start(config, registration)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping", extra={"grace_seconds": config.shutdown_grace_seconds})
    await running.stop(config.shutdown_grace_seconds)
    tracing.shutdown()
    log.info("stopped")


def run(config: ServiceConfig, build: Callable[[ServiceConfig], Awaitable[Registration]]) -> None:
    """Entry point of `python -m services.<name>`: `serve` on uvloop."""
    import uvloop

    uvloop.run(serve(config, build))


@contextlib.asynccontextmanager
async def running(
    config: ServiceConfig,
    registration: Registration,
    *,
    verifier: TokenVerifier | None = None,
) -> AsyncIterator[RunningServer]:
    """Starts a server for the length of a `with` block (tests, benchmarks)."""
    server = await start(config, registration, verifier=verifier)
    try:
        yield server
    finally:
        await server.stop(0)


def servicers(
    *entries: tuple[Any, str, Callable[[Any, grpc.aio.Server], None], Any],
) -> Registration:
    """A Registration from (pb2 module, service name, add_..._to_server, servicer) entries."""
    return Registration(
        add_to_server=[functools.partial(_add, add, servicer) for _, _, add, servicer in entries],
        service_names=[
            module.DESCRIPTOR.services_by_name[name].full_name for module, name, _, _ in entries
        ],
    )


def _add(
    add: Callable[[Any, grpc.aio.Server], None], servicer: Any, server: grpc.aio.Server
) -> None:
    add(servicer, server)
