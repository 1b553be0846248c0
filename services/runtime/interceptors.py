"""Server interceptors every Kiln service installs, outermost first:

1. `MetricsInterceptor`: RED metrics per RPC (rate, errors by code, duration).
2. `ContextInterceptor`: request id from `x-request-id` (or a new one), an access log line,
   and KilnError → gRPC status with ErrorInfo; unexpected exceptions become INTERNAL without
   leaking their text.
3. `AuthInterceptor`: verifies the Bearer token on every call except health and reflection,
   and puts the caller in the context for the handler.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from services.runtime.auth import TokenVerifier
from services.runtime.context import principal_var, request_id_var
from services.runtime.errors import AuthError, KilnError, MissingCredentials
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
Wrapper = Callable[[Behavior, bool, grpc.HandlerCallDetails], Behavior]


def _rpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


def _rewrap(handler: grpc.RpcMethodHandler, wrap: Wrapper, details: grpc.HandlerCallDetails) -> Any:
    """Returns `handler` with its behaviour passed through `wrap`, keeping its kind."""
    streaming = handler.response_streaming
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            wrap(handler.unary_unary, streaming, details),
            handler.request_deserializer,
            handler.response_serializer,
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            wrap(handler.unary_stream, streaming, details),
            handler.request_deserializer,
            handler.response_serializer,
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            wrap(handler.stream_unary, streaming, details),
            handler.request_deserializer,
            handler.response_serializer,
        )
    return grpc.stream_stream_rpc_method_handler(
        wrap(handler.stream_stream, streaming, details),
        handler.request_deserializer,
        handler.response_serializer,
    )


def _around(
    behavior: Behavior,
    streaming: bool,
    before: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
    after: Callable[[grpc.aio.ServicerContext, BaseException | None], Awaitable[None]],
) -> Behavior:
    """Wraps a unary or streaming behaviour with async hooks run before and after it."""
    if streaming:

        async def stream_behavior(
            request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            token = await before(request, context)
            error: BaseException | None = None
            try:
                result = behavior(request, context)
                if hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                else:
                    await result
            except BaseException as exc:
                error = exc
                raise
            finally:
                await after(context, error)
                del token

        return stream_behavior

    async def unary_behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
        token = await before(request, context)
        error: BaseException | None = None
        try:
            return await behavior(request, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            await after(context, error)
            del token

    return unary_behavior


def _code_of(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(code, int):
        return next(str(c.name) for c in grpc.StatusCode if c.value[0] == code)
    return "OK" if error is None else "UNKNOWN"


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every RPC by service, method, type and final status code."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        service, method = _split(handler_call_details.method)
        rpc_type = _rpc_type(handler)

        def wrap(behavior: Behavior, streaming: bool, _: grpc.HandlerCallDetails) -> Behavior:
            started: list[float] = []

            async def before(_request: Any, _context: grpc.aio.ServicerContext) -> None:
                RPC_STARTED.labels(service, method, rpc_type).inc()
                started.append(time.perf_counter())

            async def after(context: grpc.aio.ServicerContext, error: BaseException | None) -> None:
                RPC_SECONDS.labels(service, method, rpc_type).observe(
                    time.perf_counter() - started.pop()
                )
                RPC_HANDLED.labels(service, method, rpc_type, _code_of(context, error)).inc()

            return _around(behavior, streaming, before, after)

        return _rewrap(handler, wrap, handler_call_details)


class ContextInterceptor(grpc.aio.ServerInterceptor):
    """Sets the request id, logs each call once, and turns errors into rich statuses."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        metadata = dict(handler_call_details.invocation_metadata or ())
        quiet = method.startswith(UNAUTHENTICATED_PREFIXES)

        def wrap(behavior: Behavior, streaming: bool, _: grpc.HandlerCallDetails) -> Behavior:
            def log_call(context: grpc.aio.ServicerContext, started: float) -> None:
                if not quiet:
                    log.info(
                        "rpc",
                        extra={
                            "method": method,
                            "code": _code_of(context, None),
                            "ms": round((time.perf_counter() - started) * 1000, 2),
                        },
                    )

            if streaming:

                async def streamed(
                    request: Any, context: grpc.aio.ServicerContext
                ) -> AsyncIterator[Any]:
                    request_id_var.set(str(metadata.get("x-request-id") or uuid.uuid4().hex))
                    started = time.perf_counter()
                    try:
                        async for item in _guard_stream(behavior(request, context), context):
                            yield item
                    finally:
                        log_call(context, started)

                return streamed

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                request_id_var.set(str(metadata.get("x-request-id") or uuid.uuid4().hex))
                started = time.perf_counter()
                try:
                    return await _guard(behavior(request, context), context)
                finally:
                    log_call(context, started)

            return unary

        return _rewrap(handler, wrap, handler_call_details)


async def _abort(context: grpc.aio.ServicerContext, error: KilnError) -> None:
    status = to_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)


async def _guard(call: Awaitable[Any], context: grpc.aio.ServicerContext) -> Any:
    try:
        return await call
    except KilnError as exc:
        await _abort(context, exc)
    except (grpc.aio.AbortError, grpc.aio.AioRpcError, grpc.aio.UsageError):
        raise
    except NotImplementedError:
        # Generated base servicers raise it for RPCs a service does not serve yet.
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "method not implemented")
    except Exception:
        log.exception("unhandled error")
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")


async def _guard_stream(result: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    try:
        if hasattr(result, "__aiter__"):
            async for item in result:
                yield item
        else:
            await result
    except KilnError as exc:
        await _abort(context, exc)
    except (grpc.aio.AbortError, grpc.aio.AioRpcError, grpc.aio.UsageError):
        raise
    except NotImplementedError:
        # Generated base servicers raise it for RPCs a service does not serve yet.
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "method not implemented")
    except Exception:
        log.exception("unhandled error in a streaming call")
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses any call without a valid Bearer token; nothing trusts the network."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(UNAUTHENTICATED_PREFIXES):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        verifier = self._verifier

        def wrap(behavior: Behavior, streaming: bool, _: grpc.HandlerCallDetails) -> Behavior:
            def authenticate() -> None:
                header = str(metadata.get("authorization", ""))
                scheme, _, token = header.partition(" ")
                if not header:
                    raise MissingCredentials(
                        "missing credentials: send 'authorization: Bearer <token>'"
                    )
                if scheme.lower() != "bearer" or not token.strip():
                    raise AuthError("authorization must be 'Bearer <token>'")
                principal_var.set(verifier.verify(token.strip()))

            if streaming:

                async def streamed(
                    request: Any, context: grpc.aio.ServicerContext
                ) -> AsyncIterator[Any]:
                    authenticate()
                    result = behavior(request, context)
                    if hasattr(result, "__aiter__"):
                        async for item in result:
                            yield item
                    else:
                        await result

                return streamed

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                authenticate()
                return await behavior(request, context)

            return unary

        return _rewrap(handler, wrap, handler_call_details)
