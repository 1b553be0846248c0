"""Fixtures of the gateway tests.

Transcoding is tested against a test-only service (`protos/kiln/testing/v1/echo.proto`),
compiled at session start into a descriptor set and served by a real grpc.aio server on a
loopback port: the gateway under test reads that descriptor set exactly as it reads Kiln's.
The end-to-end slice uses the shared `suite` (the four services, SeaweedFS) instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import grpc_tools
import httpx
import pytest
import uvicorn
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from grpc_tools import protoc
from starlette.applications import Starlette

from gateway.apis import oauth2
from gateway.app import build_app
from gateway.core import Limits
from services.runtime.auth import TokenSigner
from services.runtime.config import AuthConfig, GatewayConfig

HERE = Path(__file__).parent
REPO = HERE.parent.parent
ECHO_SERVICE = "kiln.testing.v1.EchoService"
DEMO_ID, DEMO_SECRET, DEMO_TENANT = "demo", "demo-secret", "tenant-demo"


@dataclasses.dataclass(frozen=True)
class EchoProtos:
    """The compiled test proto: its descriptor set file and message classes."""

    descriptor_set: Path
    pool: descriptor_pool.DescriptorPool

    def message(self, name: str) -> type[Message]:
        return message_factory.GetMessageClass(
            self.pool.FindMessageTypeByName(f"kiln.testing.v1.{name}")
        )


@pytest.fixture(scope="session")
def gw_protos(tmp_path_factory: pytest.TempPathFactory) -> EchoProtos:
    out = tmp_path_factory.mktemp("gw-protos") / "echo.binpb"
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    status = protoc.main(
        [
            "protoc",
            f"-I{HERE / 'protos'}",
            f"-I{REPO / 'protos'}",
            f"-I{well_known}",
            f"--descriptor_set_out={out}",
            "--include_imports",
            "--include_source_info",
            "kiln/testing/v1/echo.proto",
        ]
    )
    assert status == 0, "protoc failed on the test proto"
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return EchoProtos(descriptor_set=out, pool=pool)


class EchoServicer:
    """The test service's behaviour."""

    def __init__(self, protos: EchoProtos) -> None:
        self.protos = protos
        self.calls = 0
        self.counts_cancelled = 0
        """Count streams that ended because the client cancelled them."""
        self.counts_open = 0
        """Count streams running now."""

    async def echo(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.calls += 1
        response = self.protos.message("EchoResponse")()
        response.request.CopyFrom(request)
        for key, value in context.invocation_metadata() or ():
            if key in ("authorization", "x-request-id"):
                response.metadata[key] = value
        return response

    async def fail(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        details = []
        if request.reason:
            info = error_details_pb2.ErrorInfo(
                reason=request.reason, domain="kiln.dev", metadata={"field": "code"}
            )
            packed = any_pb2.Any()
            packed.Pack(info)
            details.append(packed)
        status = status_pb2.Status(code=request.code, message=request.message, details=details)
        await context.abort_with_status(rpc_status.to_status(status))

    async def sleep(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await asyncio.sleep(request.seconds)
        return self.protos.message("SleepResponse")()

    async def chat(self, requests: Any, context: grpc.aio.ServicerContext) -> Any:
        async for _ in requests:
            pass
        return self.protos.message("EchoResponse")()

    async def count(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        response = self.protos.message("CountResponse")
        if request.fail_code and not request.count:
            await context.abort(status_code(request.fail_code), request.fail_message)
        self.counts_open += 1
        try:
            # Tells the client the stream is set up, as the objects service's Subscribe does.
            await context.send_initial_metadata(())
            for n in range(1, request.count + 1):
                if n > 1:
                    await asyncio.sleep(request.interval)
                yield response(n=n)
            if request.fail_code:
                await context.abort(status_code(request.fail_code), request.fail_message)
            if request.hold:
                await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.counts_cancelled += 1
            raise
        finally:
            self.counts_open -= 1

    def handler(self) -> grpc.GenericRpcHandler:
        m = self.protos.message

        def unary(fn: Any, request: str, response: str) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn,
                request_deserializer=m(request).FromString,
                response_serializer=m(response).SerializeToString,
            )

        return grpc.method_handlers_generic_handler(
            ECHO_SERVICE,
            {
                "Echo": unary(self.echo, "EchoRequest", "EchoResponse"),
                "EchoInner": unary(self.echo, "EchoRequest", "EchoResponse"),
                "Fail": unary(self.fail, "FailRequest", "FailResponse"),
                "Sleep": unary(self.sleep, "SleepRequest", "SleepResponse"),
                "Chat": grpc.stream_unary_rpc_method_handler(
                    self.chat,
                    request_deserializer=m("EchoRequest").FromString,
                    response_serializer=m("EchoResponse").SerializeToString,
                ),
                "Count": grpc.unary_stream_rpc_method_handler(
                    self.count,
                    request_deserializer=m("CountRequest").FromString,
                    response_serializer=m("CountResponse").SerializeToString,
                ),
            },
        )


def status_code(number: int) -> grpc.StatusCode:
    """The grpc.StatusCode of a code number (the enum's values are (number, name) pairs)."""
    return next(code for code in grpc.StatusCode if code.value[0] == number)


@dataclasses.dataclass
class EchoServer:
    target: str
    servicer: EchoServicer
    health: health.aio.HealthServicer


@pytest.fixture(scope="session")
async def gw_echo(gw_protos: EchoProtos) -> AsyncIterator[EchoServer]:
    server = grpc.aio.server()
    servicer = EchoServicer(gw_protos)
    server.add_generic_rpc_handlers([servicer.handler()])
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    try:
        yield EchoServer(f"127.0.0.1:{port}", servicer, health_servicer)
    finally:
        await server.stop(0)


def closed_port_target() -> str:
    """A loopback address nothing listens on."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="session")
def gw_config(
    gw_protos: EchoProtos,
    gw_echo: EchoServer,
    jwt_keys: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> GatewayConfig:
    data_dir = tmp_path_factory.mktemp("gw-data")
    return GatewayConfig(
        host="127.0.0.1",
        port=0,
        database_url=f"sqlite+aiosqlite:///{data_dir / 'gateway.db'}",
        data_dir=data_dir,
        descriptor_set=gw_protos.descriptor_set,
        targets={"testing": gw_echo.target},
        auth=AuthConfig(
            issuer="kiln",
            private_key_file=str(jwt_keys[0]),
            public_key_files=str(jwt_keys[1]),
            token_ttl_seconds=43200,
        ),
        demo_client_id=DEMO_ID,
        demo_client_secret=DEMO_SECRET,
        demo_tenant=DEMO_TENANT,
        max_body_bytes=16 * 1024,
        max_upload_bytes=5 * 1024**3,
        call_timeout_seconds=30.0,
        shutdown_grace_seconds=10.0,
        log_level="WARNING",
        log_format="text",
    )


@asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """Runs the app's lifespan and yields an httpx client speaking ASGI to it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


class _TestServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Leave SIGINT to pytest: Ctrl-C stops the run, not only this server.
        yield


def suite_gateway_env(targets: dict[str, str], data: Path, **extra: str) -> dict[str, str]:
    """A gateway's environment over the session's services (`Suite.target_env()`): its own
    client database in `data`, the generated descriptor set, no demo client; `extra` on top."""
    return {
        **targets,
        "KILN_GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{data / 'gateway.db'}",
        "KILN_DESCRIPTOR_SET": str(REPO / "gen" / "kiln.binpb"),
        "KILN_DEMO_CLIENT_ID": "",
        **extra,
    }


@asynccontextmanager
async def live(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """Runs the app on uvicorn on a loopback port, lifespan included; yields a client for it.

    httpx's ASGI transport buffers whole responses, so streams (SSE) need a real server.
    """
    server = _TestServer(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            lifespan="on",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=1,
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()  # start-up failed: raise why
                raise AssertionError("uvicorn stopped during start-up")
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        await task


@pytest.fixture(scope="session")
def gw_app(gw_config: GatewayConfig) -> Starlette:
    # OAuth2 only: Scenario's upload needs the objects service, which the slice tests cover.
    return build_app(
        gw_config, apis=(oauth2.API,), limits=Limits(call_timeout=5.0, health_timeout=0.5)
    )


@pytest.fixture(scope="session")
async def gw_client(gw_app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(gw_app) as client:
        yield client


@pytest.fixture(scope="session")
def gw_auth(signer: TokenSigner) -> Callable[..., dict[str, str]]:
    """Authorization headers with a valid token: `gw_auth("tenant-a")`."""

    def make(tenant: str = "tenant-a", ttl: int = 3600) -> dict[str, str]:
        token, _ = signer.issue(client_id="tester", tenant=tenant, scopes=["*"], ttl_seconds=ttl)
        return {"Authorization": f"Bearer {token}"}

    return make


def grpc_code(name: str) -> int:
    """The integer of a google.rpc.Code by name."""
    return int(code_pb2.Code.Value(name))


def env_without_kiln() -> dict[str, str]:
    """The process environment minus any KILN_* variable (for subprocesses)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
