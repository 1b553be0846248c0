"""Server interceptors every Kiln service installs, outermost first:

1. `MetricsInterceptor`: RED metrics per RPC (rate, errors by code, duration).
2. `ContextInterceptor`: request id from `x-request-id` (or a new one), an access log line,
   and KilnError → gRPC status with ErrorInfo; unexpected exceptions become INTERNAL without
   leaking their text.
3. `AuthInterceptor`: verifies the Bearer token on every call except health and reflection,
   checks it holds the scope the method needs (`runtime.scopes`: PERMISSION_DENIED with
   INSUFFICIENT_SCOPE otherwise), and puts the caller in the context for the handler.

Each interceptor wraps a method's handler once and reuses the wrapped handler for every later
call (per-call state comes from the ServicerContext), so the cost per RPC is a dictionary
lookup plus the wrapper's own work, not a fresh handler each time.
"""

from __future__ import annotations

import abc
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from services.runtime.auth import WORKER_SCOPE, TokenVerifier
from services.runtime.context import principal_var, request_id_var
from services.runtime.errors import AuthError, KilnError, MissingCredentials, PermissionDenied
from services.runtime.scopes import required_scopes
from services.runtime.status import to_status

log = logging.getLogger("kiln.rpc")

# Probes and tooling must work without a token: health for Kubernetes, reflection for grpcurl.
UNAUTHENTICATED_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

# Names follow go-grpc-prometheus so existing dashboards work unchanged.
RPC_STARTED = Counter(
    "grpc_server_started_total",
    "RPCs started on the server.",
    ["grpc_service", "grpc_method", "grpc_type"],
)
RPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
)
RPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from an RPC's start to its end on the server.",
    ["grpc_service", "grpc_method", "grpc_type"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

Behavior = Callable[..., Any]
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]]
_CODE_NAMES = {code.value[0]: str(code.name) for code in grpc.StatusCode}


def _rpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


def _code_of(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(code, int):
        return _CODE_NAMES.get(code, "UNKNOWN")
    return "OK" if error is None else "UNKNOWN"


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return str(v)
    return ""


async def _iterate(result: Any) -> AsyncIterator[Any]:
    """A streaming behaviour's output, whether it yields or writes through the context."""
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    else:
        await result


class _WrappingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each method's handler once; subclasses say how to wrap a behaviour."""

    def __init__(self) -> None:
        self._wrapped: dict[tuple[str, int], grpc.RpcMethodHandler] = {}

    def applies_to(self, method: str) -> bool:
        return True

    @abc.abstractmethod
    def wrap(self, behavior: Behavior, streaming: bool, method: str, rpc_type: str) -> Behavior:
        """The behaviour to run instead of `behavior`, for one method."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not self.applies_to(method):
            return handler
        key = (method, id(handler))
        wrapped = self._wrapped.get(key)
        if wrapped is None:
            wrapped = self._rewrap(handler, method)
            self._wrapped[key] = wrapped
        return wrapped

    def _rewrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        rpc_type = _rpc_type(handler)
        streaming = bool(handler.response_streaming)
        for kind, factory in (
            ("unary_unary", grpc.unary_unary_rpc_method_handler),
            ("unary_stream", grpc.unary_stream_rpc_method_handler),
            ("stream_unary", grpc.stream_unary_rpc_method_handler),
            ("stream_stream", grpc.stream_stream_rpc_method_handler),
        ):
            behavior = getattr(handler, kind)
            if behavior is not None:
                return factory(
                    self.wrap(behavior, streaming, method, rpc_type),
                    handler.request_deserializer,
                    _deterministic(handler.response_serializer),
                )
        raise ValueError(f"handler of {method} has no behaviour")


def _serialize_deterministically(message: Any) -> bytes:
    return bytes(message.SerializeToString(deterministic=True))


def _deterministic(serializer: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """Responses serialized with map entries sorted by key, so one message has one encoding:
    Envoy's transcoder prints maps in wire order, and sorted is the order the gateway prints."""
    if serializer is None or serializer is _serialize_deterministically:
        return serializer
    if getattr(serializer, "__name__", "") != "SerializeToString":
        return serializer  # a hand-written serializer knows its own format
    return _serialize_deterministically


class MetricsInterceptor(_WrappingInterceptor):
    """Counts and times every RPC by service, method, type and final status code."""

    def wrap(self, behavior: Behavior, streaming: bool, method: str, rpc_type: str) -> Behavior:
        service, _, name = method.lstrip("/").rpartition("/")
        started_total = RPC_STARTED.labels(service, name, rpc_type)
        seconds = RPC_SECONDS.labels(service, name, rpc_type)

        def finish(
            context: grpc.aio.ServicerContext, began: float, error: BaseException | None
        ) -> None:
            seconds.observe(time.perf_counter() - began)
            RPC_HANDLED.labels(service, name, rpc_type, _code_of(context, error)).inc()

        if streaming:

            async def streamed(
                request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                started_total.inc()
                began, error = time.perf_counter(), None
                try:
                    async for item in _iterate(behavior(request, context)):
                        yield item
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    finish(context, began, error)

            return streamed

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started_total.inc()
            began, error = time.perf_counter(), None
            try:
                return await behavior(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                finish(context, began, error)

        return unary


class ContextInterceptor(_WrappingInterceptor):
    """Sets the request id, logs each call once, and turns errors into rich statuses."""

    def wrap(self, behavior: Behavior, streaming: bool, method: str, rpc_type: str) -> Behavior:
        quiet = method.startswith(UNAUTHENTICATED_PREFIXES)

        def begin(context: grpc.aio.ServicerContext) -> float:
            request_id_var.set(_metadata(context, "x-request-id") or uuid.uuid4().hex)
            return time.perf_counter()

        def log_call(context: grpc.aio.ServicerContext, began: float) -> None:
            if not quiet and log.isEnabledFor(logging.INFO):
                log.info(
                    "rpc",
                    extra={
                        "method": method,
                        "code": _code_of(context, None),
                        "ms": round((time.perf_counter() - began) * 1000, 2),
                    },
                )

        if streaming:

            async def streamed(
                request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                began = begin(context)
                try:
                    async for item in _guard_stream(behavior(request, context), context):
                        yield item
                finally:
                    log_call(context, began)

            return streamed

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            began = begin(context)
            try:
                return await _guard(behavior(request, context), context)
            finally:
                log_call(context, began)

        return unary


async def _abort(context: grpc.aio.ServicerContext, error: KilnError) -> None:
    status = to_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)


async def _abort_unexpected(context: grpc.aio.ServicerContext, error: Exception) -> None:
    if isinstance(error, NotImplementedError):
        # Generated base servicers raise it for RPCs a service does not serve yet.
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "method not implemented")
    log.error("unhandled error", exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


_PASS_THROUGH = (grpc.aio.AbortError, grpc.aio.AioRpcError, grpc.aio.UsageError)


async def _guard(call: Awaitable[Any], context: grpc.aio.ServicerContext) -> Any:
    try:
        return await call
    except KilnError as exc:
        await _abort(context, exc)
    except _PASS_THROUGH:
        raise
    except Exception as exc:
        await _abort_unexpected(context, exc)


async def _guard_stream(result: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    try:
        async for item in _iterate(result):
            yield item
    except KilnError as exc:
        await _abort(context, exc)
    except _PASS_THROUGH:
        raise
    except Exception as exc:
        await _abort_unexpected(context, exc)


class AuthInterceptor(_WrappingInterceptor):
    """Refuses any call without a valid Bearer token; nothing trusts the network."""

    def __init__(self, verifier: TokenVerifier) -> None:
        super().__init__()
        self._verifier = verifier

    def applies_to(self, method: str) -> bool:
        return not method.startswith(UNAUTHENTICATED_PREFIXES)

    def _authenticate(self, context: grpc.aio.ServicerContext, required: tuple[str, ...]) -> None:
        header = _metadata(context, "authorization")
        if not header:
            raise MissingCredentials("missing credentials: send 'authorization: Bearer <token>'")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("authorization must be 'Bearer <token>'")
        principal = self._verifier.verify(token.strip())
        if required and not any(
            principal.has_scope(s) if s != WORKER_SCOPE else principal.is_worker for s in required
        ):
            raise PermissionDenied(
                f"the token lacks the scope this call needs: {' or '.join(required)}",
                metadata={"scope": required[0]},
            )
        principal_var.set(principal)

    def wrap(self, behavior: Behavior, streaming: bool, method: str, rpc_type: str) -> Behavior:
        required = required_scopes(method)

        def authenticate(context: grpc.aio.ServicerContext) -> None:
            self._authenticate(context, required)

        if streaming:

            async def streamed(
                request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                authenticate(context)
                async for item in _iterate(behavior(request, context)):
                    yield item

            return streamed

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            authenticate(context)
            return await behavior(request, context)

        return unary
