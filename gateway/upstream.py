"""The gateway's side of gRPC: one shared channel per service, calls with metrics, health.

Requests and responses cross this module as serialized bytes: transcoding owns the message
classes (built from the descriptor set), so the channel needs no generated code.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2

from gateway.metrics import GatewayMetrics
from services.runtime import tracing
from services.runtime.errors import ConfigError
from services.runtime.peers import PEER_CHANNEL_OPTIONS

Metadata = Sequence[tuple[str, str]]

# Matches the services' own cap; bodies larger than this travel as streams, never as one message.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def service_key(full_name: str | None) -> str | None:
    """The Kiln service behind a proto name: `kiln.objects.v1.AssetService` → `objects`.

    Protos live in packages `kiln.<service>.v1`, so the package names the process.
    """
    parts = (full_name or "").split(".")
    if len(parts) >= 3 and parts[0] == "kiln" and parts[1]:
        return parts[1]
    return None


@dataclass
class CallOutcome:
    """The final code `Upstreams.track` records; a caller that handles a failure itself
    (a stream turning it into an error event) sets `code` so the metrics still see it."""

    code: str = "OK"


def split_method(method: str) -> tuple[str, str]:
    """`/pkg.Service/Method` → (`pkg.Service`, `Method`)."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


class Upstreams:
    """Channels to the services, opened once in the app's lifespan and shared by all requests."""

    def __init__(self, targets: Mapping[str, str], metrics: GatewayMetrics) -> None:
        self.targets = dict(targets)
        self._metrics = metrics
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._unary: dict[tuple[str, str], grpc.aio.UnaryUnaryMultiCallable] = {}
        self._server_streams: dict[tuple[str, str], grpc.aio.UnaryStreamMultiCallable] = {}

    async def open(self) -> None:
        """Creates the channels; they connect lazily, so a service may start after the gateway."""
        options = [
            *PEER_CHANNEL_OPTIONS,
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        for service, target in self.targets.items():
            self._channels[service] = grpc.aio.insecure_channel(
                target, options=options, interceptors=tracing.client_interceptors()
            )

    async def close(self, grace: float | None = None) -> None:
        """Closes every channel; in-flight calls get `grace` seconds, then are cancelled."""
        channels, self._channels = self._channels, {}
        self._unary.clear()
        self._server_streams.clear()
        await asyncio.gather(*(channel.close(grace) for channel in channels.values()))

    def channel(self, service: str) -> grpc.aio.Channel:
        """The shared channel of a service (`objects`, `jobs`, ...)."""
        try:
            return self._channels[service]
        except KeyError:
            if service not in self.targets:
                raise ConfigError(f"no target configured for the {service} service") from None
            raise RuntimeError(
                "the gateway's channels are not open (lifespan not started)"
            ) from None

    @contextlib.contextmanager
    def track(self, method: str, rpc_type: str) -> Iterator[CallOutcome]:
        """Counts and times one call of `method` (`/pkg.Service/Method`) by its final code.

        An exception that is not an RpcError means the gateway abandoned the call: CANCELLED.
        Otherwise the code is the yielded outcome's, OK unless the caller set another.
        """
        service, name = split_method(method)
        self._metrics.grpc_started.labels(service, name, rpc_type).inc()
        started = time.perf_counter()
        outcome = CallOutcome()
        try:
            yield outcome
        except grpc.RpcError as exc:
            status = exc.code() if callable(getattr(exc, "code", None)) else None
            outcome.code = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
            raise
        except BaseException:
            outcome.code = "CANCELLED"
            raise
        finally:
            self._metrics.grpc_seconds.labels(service, name, rpc_type).observe(
                time.perf_counter() - started
            )
            self._metrics.grpc_handled.labels(service, name, rpc_type, outcome.code).inc()

    async def unary(
        self,
        service: str,
        method: str,
        request: bytes,
        *,
        metadata: Metadata,
        deadline: float,
    ) -> bytes:
        """Calls a unary method with a serialized request, `deadline` seconds at most.

        Raises grpc.aio.AioRpcError when the call fails.
        """
        key = (service, method)
        call = self._unary.get(key)
        if call is None:
            # No (de)serializers: bytes pass through untouched.
            call = self._unary[key] = self.channel(service).unary_unary(method)
        with self.track(method, "unary"):
            response: bytes = await call(request, metadata=tuple(metadata), timeout=deadline)
        return response

    def server_stream(
        self,
        service: str,
        method: str,
        request: bytes,
        *,
        metadata: Metadata,
        deadline: float | None = None,
    ) -> grpc.aio.UnaryStreamCall:
        """Starts a server-streaming call with a serialized request; messages arrive as bytes.

        No deadline by default: a subscription lives as long as its client. The caller owns
        the call: it must cancel it when it stops reading, and `track` it for the metrics.
        """
        key = (service, method)
        call = self._server_streams.get(key)
        if call is None:
            call = self._server_streams[key] = self.channel(service).unary_stream(method)
        stream: grpc.aio.UnaryStreamCall = call(request, metadata=tuple(metadata), timeout=deadline)
        return stream

    async def health(self, deadline: float) -> dict[str, str]:
        """Each service's overall health (`grpc.health.v1`, service ""), checked concurrently.

        Values are serving-status names (`SERVING`, `NOT_SERVING`) or, when the check itself
        failed, the gRPC code (`UNAVAILABLE`, `DEADLINE_EXCEEDED`).
        """
        request = health_pb2.HealthCheckRequest(service="").SerializeToString()

        async def check(service: str) -> str:
            try:
                raw = await self.channel(service).unary_unary(_HEALTH_CHECK)(
                    request, timeout=deadline
                )
            except grpc.aio.AioRpcError as exc:
                return str(exc.code().name)
            status = health_pb2.HealthCheckResponse.FromString(raw).status
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(status))

        names = list(self.targets)
        results = await asyncio.gather(*(check(name) for name in names))
        return dict(zip(names, results, strict=True))
