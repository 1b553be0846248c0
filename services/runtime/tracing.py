"""OpenTelemetry tracing across gateway → service → worker, off unless KILN_TRACING names an
exporter.

Spans: each HTTP request the gateway serves (SERVER), each gRPC call a Kiln process serves
(SERVER) or makes (CLIENT, for unary-unary calls; streaming calls only carry the context on),
and each job a worker runs (CONSUMER). The W3C `traceparent` carries the context in HTTP
headers and gRPC metadata; the jobs service stores the creating call's on the job row and hands
it to the worker with the lease, so a job's run, however much later and on whatever replica,
joins the trace of the request that created it.

Off, tracing costs nothing on the request path: no interceptor is installed, no OpenTelemetry
module is imported, and the few call sites that could start a span test one attribute.

`configure()` runs once per process at start (`serve`, `run_worker`, the gateway's main); tests
that start servers in their own process leave it off.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from services.runtime.config import TracingConfig
from services.runtime.interceptors import (
    UNAUTHENTICATED_PREFIXES,
    Behavior,
    _code_of,
    _iterate,
    _WrappingInterceptor,
)

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
    from opentelemetry.trace import Span, Tracer
else:
    # Annotations only: importing OpenTelemetry waits until tracing is switched on.
    Span = Any

#: A span from `begin` and the context token `finish` restores.
Traced = tuple[Span, object]

log = logging.getLogger("kiln.tracing")

#: Codes that are the server's fault; the caller's (NOT_FOUND, INVALID_ARGUMENT, ...) are not
#: errors of the span (OpenTelemetry's semantic conventions for gRPC servers).
SERVER_ERROR_CODES = frozenset(
    {"UNKNOWN", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "DEADLINE_EXCEEDED", "UNIMPLEMENTED"}
)
_CODE_NUMBERS = {code.name: code.value[0] for code in grpc.StatusCode}
#: A worker's polls and heartbeats, every few seconds per worker and per running job: traced,
#: they would bury the requests' traces under their own. Neither side makes spans for them.
UNTRACED_METHODS = frozenset(
    {
        "/kiln.jobs.v1.WorkerService/LeaseJobs",
        "/kiln.jobs.v1.WorkerService/HeartbeatJob",
        # A worker's stream lives for minutes and serves every trace; its completions get
        # spans of their own (services/jobs/work_stream.py).
        "/kiln.jobs.v1.WorkerService/Work",
    }
)


class _State:
    """The process's tracer once configure() turned tracing on."""

    tracer: Tracer | None = None
    provider: Any = None


_state = _State()


def enabled() -> bool:
    """Whether this process traces (one attribute read: call sites test it before any work)."""
    return _state.tracer is not None


def tracer() -> Tracer:
    if _state.tracer is None:
        raise RuntimeError("tracing is off (KILN_TRACING)")
    return _state.tracer


def configure(service: str, config: TracingConfig) -> bool:
    """Sets up the SDK for this process when KILN_TRACING asks for it; answers whether tracing
    is on. `service` names the process (`kiln-<service>`) unless OTEL_SERVICE_NAME does."""
    if config.exporter == "off" or _state.tracer is not None:
        return _state.tracer is not None
    from opentelemetry import trace
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    # The standard OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over Kiln's default name.
    resource = Resource.create({"service.name": f"kiln-{service}"}).merge(
        OTELResourceDetector().detect()
    )
    # The sampler comes from OTEL_TRACES_SAMPLER (default: parent-based, always on).
    provider = TracerProvider(resource=resource)
    processor: SpanProcessor
    if config.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        processor = BatchSpanProcessor(OTLPSpanExporter())
    else:
        # Debugging exporters: written as each span ends, so nothing waits in a buffer.
        target = sys.stderr.fileno() if config.exporter == "console" else None
        processor = SimpleSpanProcessor(_json_lines_exporter(Path(config.file), target))
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    _state.provider = provider
    _state.tracer = trace.get_tracer("kiln")
    log.info("tracing on", extra={"exporter": config.exporter, "service": service})
    return True


def shutdown() -> None:
    """Flushes and stops the exporter (the end of a process)."""
    if _state.provider is not None:
        _state.provider.shutdown()
    _state.tracer = _state.provider = None


def _json_lines_exporter(path: Path, fd: int | None) -> SpanExporter:
    """Spans as JSON lines (OpenTelemetry's own span JSON, on one line), appended with one
    write each, so several processes can share a file without interleaving lines. Written to
    `fd` (stderr, for `console`) when given, else to `path`."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class JsonLines(SpanExporter):
        def __init__(self) -> None:
            self._owned = fd is None
            if fd is None:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            else:
                self._fd = fd
            self._lock = threading.Lock()

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            for each in spans:
                line = json.dumps(json.loads(each.to_json()), separators=(",", ":")) + "\n"
                with self._lock:
                    os.write(self._fd, line.encode())
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            if self._owned:
                os.close(self._fd)

    return JsonLines()


# --- propagation ---------------------------------------------------------------------------


def current_traceparent() -> str:
    """The W3C traceparent of the current span ("" when tracing is off or no span is
    recording): what a job stores so its worker joins the trace."""
    if _state.tracer is None:
        return ""
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent", "")


def extract(carrier: Mapping[str, str]) -> Context:
    """The context that headers or metadata carry (`traceparent`, `tracestate`)."""
    from opentelemetry import propagate

    return propagate.extract(carrier)


def _inject(metadata: Any, context: Context | None = None) -> Any:
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    if not carrier:
        return metadata
    merged = grpc.aio.Metadata() if metadata is None else grpc.aio.Metadata(*tuple(metadata))
    for key, value in carrier.items():
        merged.add(key, value)
    return merged


def begin(
    name: str,
    *,
    kind: str,
    carrier: Mapping[str, str] | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Traced:
    """Starts a span, child of the context `carrier` holds (else of the current one), and
    makes it current; `finish` ends it. For spans whose start and end sit in different
    callbacks (a middleware, an interceptor, a job runner)."""
    from opentelemetry import context as otel_context
    from opentelemetry import trace

    parent = extract(carrier) if carrier is not None else None
    started = tracer().start_span(
        name, context=parent, kind=trace.SpanKind[kind], attributes=dict(attributes or {})
    )
    token = otel_context.attach(trace.set_span_in_context(started, parent))
    return started, token


def start_linked(
    name: str, *, kind: str, traceparent: str, attributes: Mapping[str, Any] | None = None
) -> Span | None:
    """A span, child of `traceparent`, that is never made current (None when tracing is off):
    for work done for many traces at once, such as a batch of completions on one stream."""
    if _state.tracer is None:
        return None
    from opentelemetry import trace

    parent = extract({"traceparent": traceparent}) if traceparent else None
    return _state.tracer.start_span(
        name, context=parent, kind=trace.SpanKind[kind], attributes=dict(attributes or {})
    )


def set_error(started: Span, description: str) -> None:
    """Marks a span failed."""
    from opentelemetry.trace import Status, StatusCode

    started.set_status(Status(StatusCode.ERROR, description))


def finish(
    started: Span,
    token: object,
    *,
    error: str | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> None:
    """Ends a span from `begin` (an error description marks it failed) and restores the
    context that was current before it."""
    from opentelemetry import context as otel_context

    if attributes:
        started.set_attributes(dict(attributes))
    if error is not None:
        set_error(started, error)
    started.end()
    otel_context.detach(token)  # type: ignore[arg-type]


# --- gRPC ----------------------------------------------------------------------------------


class ServerTracingInterceptor(_WrappingInterceptor):
    """A SERVER span for every call (health, reflection and UNTRACED_METHODS aside), child of
    the caller's."""

    def applies_to(self, method: str) -> bool:
        return not method.startswith(UNAUTHENTICATED_PREFIXES) and method not in UNTRACED_METHODS

    def wrap(self, behavior: Behavior, streaming: bool, method: str, rpc_type: str) -> Behavior:
        service, _, name = method.lstrip("/").rpartition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}

        def start(context: grpc.aio.ServicerContext) -> Traced:
            carrier = {
                key: value
                for key, value in context.invocation_metadata() or ()
                if isinstance(value, str)
            }
            return begin(f"{service}/{name}", kind="SERVER", carrier=carrier, attributes=attributes)

        def end(
            started: Span,
            token: object,
            context: grpc.aio.ServicerContext,
            error: BaseException | None,
        ) -> None:
            code = _code_of(context, error)
            finish(
                started,
                token,
                error=code if code in SERVER_ERROR_CODES else None,
                attributes={"rpc.grpc.status_code": _CODE_NUMBERS.get(code, 2)},
            )

        if streaming:

            async def streamed(
                request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                started, token = start(context)
                error: BaseException | None = None
                try:
                    async for item in _iterate(behavior(request, context)):
                        yield item
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    end(started, token, context, error)

            return streamed

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started, token = start(context)
            error: BaseException | None = None
            try:
                return await behavior(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                end(started, token, context, error)

        return unary


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """[the tracing interceptor] when tracing is on, else []."""
    return [ServerTracingInterceptor()] if enabled() else []


class _ClientTracing:
    """Shared by the four client interceptors: a CLIENT span around unary-unary calls, and
    the context in the metadata of every call."""

    async def _unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        from opentelemetry import trace

        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        if method in UNTRACED_METHODS:
            return await continuation(details, request)
        service, _, name = method.lstrip("/").rpartition("/")
        started = tracer().start_span(
            f"{service}/{name}",
            kind=trace.SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        )
        code = "UNKNOWN"
        try:
            sent = details._replace(
                metadata=_inject(details.metadata, trace.set_span_in_context(started))
            )
            call = await continuation(sent, request)
            try:
                await call
                code = "OK"
            except grpc.aio.AioRpcError as err:
                code = err.code().name
            except BaseException:
                code = "CANCELLED"
                raise
            return call
        finally:
            started.set_attribute("rpc.grpc.status_code", _CODE_NUMBERS.get(code, 2))
            if code != "OK":
                set_error(started, code)
            started.end()

    async def _stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(details._replace(metadata=_inject(details.metadata)), request)


class _UnaryUnary(_ClientTracing, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._unary(continuation, details, request)


class _StreamUnary(_ClientTracing, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        # Not `_unary`: a caller writing to the call waits for this interceptor to return, so
        # awaiting the answer here would never end.
        return await self._stream(continuation, details, requests)


class _UnaryStream(_ClientTracing, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._stream(continuation, details, request)


class _StreamStream(_ClientTracing, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await self._stream(continuation, details, requests)


def client_interceptors() -> list[grpc.aio.ClientInterceptor] | None:
    """Interceptors for a channel: the four tracing ones when tracing is on, else None (a
    channel without interceptors takes grpc's direct path)."""
    if not enabled():
        return None
    return all_client_interceptors()


def all_client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """The four tracing client interceptors, one per call shape."""
    return [_UnaryUnary(), _StreamUnary(), _UnaryStream(), _StreamStream()]
