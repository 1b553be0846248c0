"""Server-streaming gRPC methods served as Server-Sent Events (text/event-stream).

One generic adapter: an API module says how an HTTP request becomes the request message and
how each streamed message becomes an event; this module does the rest, the same way for every
stream (CLyman's object changes now, Clara's job events later):

- The response starts only once the service has sent its initial metadata (or failed): a
  service that registers its subscription before sending it, as the objects service does,
  guarantees that every change committed after the client saw the response headers is
  delivered. A failure before that point is an ordinary error response in the route's shape
  (401, 404, ...), with its HTTP status. A service that sends no early metadata delays the
  headers by `ready_timeout` at most.
- Each message is one event (`event:`, `id:`, `data:` lines). While nothing arrives, a comment
  line goes out every `heartbeat` seconds, so proxies keep the connection and a vanished
  client is noticed.
- The client going away cancels the gRPC call at once (the service frees its subscription).
- The stream ending with an error sends `event: error` whose data is the error in the route's
  shape (the body the same error would have had as a response), then the response ends. The
  stream ending normally just ends the response.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.errors import ApiError, ErrorRequest
from gateway.jsonpb import dumps
from gateway.routing import Handler, RequestContext
from gateway.upstream import service_key, split_method

log = logging.getLogger("kiln.gateway")

#: Seconds between heartbeat comments while a stream is idle.
DEFAULT_HEARTBEAT_SECONDS = 15.0
#: Longest wait for the service's initial metadata before the response starts regardless.
DEFAULT_READY_TIMEOUT_SECONDS = 5.0

MEDIA_TYPE = "text/event-stream"
_HEADERS = {
    "Cache-Control": "no-cache",
    # nginx (and proxies that honour it) would otherwise buffer the stream.
    "X-Accel-Buffering": "no",
}
HEARTBEAT = b": heartbeat\n\n"

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


def _field(value: str) -> str:
    # A line break would end the field and let the value forge others; none belongs there.
    return value.replace("\r", " ").replace("\n", " ")


@dataclass(frozen=True)
class SseEvent:
    """One event of a stream."""

    data: str
    """The payload, usually JSON; several lines become several `data:` lines."""
    event: str = ""
    """The event type (`event:`); clients get `message` when empty."""
    id: str = ""
    """The event id (`id:`), which browsers send back as Last-Event-ID on reconnect."""

    def encode(self) -> bytes:
        """The event in the text/event-stream wire format, blank line included."""
        lines = []
        if self.event:
            lines.append(f"event: {_field(self.event)}")
        if self.id:
            lines.append(f"id: {_field(self.id).replace(chr(0), '')}")
        lines.extend(f"data: {line}" for line in (self.data.splitlines() or [""]))
        return ("\n".join(lines) + "\n\n").encode()


@dataclass(frozen=True)
class SseComment(SseEvent):
    """A comment line (`: data`): no event for the client, bytes that keep the stream alive;
    what a stream sends for a message that changed nothing its client sees."""

    def encode(self) -> bytes:
        return f": {_field(self.data)}\n\n".encode()


@dataclass(frozen=True)
class ServerStream(Generic[Req, Resp]):
    """How one server-streaming method is served as SSE."""

    method: str
    """Full method path, `/kiln.objects.v1.ObjectService/Subscribe`."""
    request: Callable[[RequestContext], Req]
    """Builds the request message from the HTTP request; may raise ApiError (a 4xx)."""
    response_type: type[Resp]
    """Class of the streamed messages."""
    render: Callable[[Resp], SseEvent]
    """One streamed message as one event."""
    heartbeat: float = DEFAULT_HEARTBEAT_SECONDS
    ready_timeout: float = DEFAULT_READY_TIMEOUT_SECONDS

    @property
    def proto_service(self) -> str:
        return split_method(self.method)[0]


def wants_events(request: Request) -> bool:
    """Whether the request asks for Server-Sent Events (`Accept: text/event-stream`)."""
    return MEDIA_TYPE in request.headers.get("accept", "").lower()


def sse_handler(stream: ServerStream[Req, Resp]) -> Handler:
    """The endpoint handler serving `stream`."""
    kiln_service = service_key(stream.proto_service)
    if kiln_service is None:
        raise ValueError(f"{stream.method} is not in a kiln.<service>.v1 package")

    async def handle(context: RequestContext) -> Response:
        request = stream.request(context)
        upstreams = context.gateway.upstreams
        call = upstreams.server_stream(
            kiln_service, stream.method, request.SerializeToString(), metadata=context.metadata()
        )
        try:
            await _ready(call, stream.ready_timeout)
        except BaseException:
            call.cancel()
            raise
        return _SseResponse(call, _events(context, stream, call, kiln_service))

    return handle


class _SseResponse(StreamingResponse):
    """A streaming response that cancels its gRPC call however the response ends, even when
    the client left before the first event was read (the event generator never started)."""

    def __init__(self, call: grpc.aio.UnaryStreamCall, events: AsyncIterator[bytes]) -> None:
        super().__init__(events, media_type=MEDIA_TYPE, headers=_HEADERS)
        self.call = call

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.call.cancel()


def _consume(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log it as never retrieved


async def _ready(call: grpc.aio.UnaryStreamCall, wait_seconds: float) -> None:
    """Waits for the service's initial metadata; raises AioRpcError if the call failed."""
    metadata: asyncio.Future[object] = asyncio.ensure_future(call.initial_metadata())
    metadata.add_done_callback(_consume)
    # Not cancelled on timeout: it ends with the call, and cancelling it mid-wait would reach
    # into the call's core state for no gain.
    await asyncio.wait({metadata}, timeout=wait_seconds)
    if call.done() and await call.code() != grpc.StatusCode.OK:
        # Reading a failed call raises its AioRpcError (code, message, status details),
        # which the router renders as an ordinary error response.
        await call.read()


async def _events(
    context: RequestContext,
    stream: ServerStream[Req, Resp],
    call: grpc.aio.UnaryStreamCall,
    kiln_service: str,
) -> AsyncIterator[bytes]:
    upstreams = context.gateway.upstreams
    pending: asyncio.Future[object] | None = None
    with upstreams.track(stream.method, "server_stream") as outcome:
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(call.read())
                # Waiting on the read (not wait_for) keeps it alive across heartbeats:
                # cancelling a read would cancel the whole call.
                done, _ = await asyncio.wait({pending}, timeout=stream.heartbeat)
                if not done:
                    yield HEARTBEAT
                    continue
                raw, pending = pending.result(), None
                if raw is grpc.aio.EOF:
                    return
                assert isinstance(raw, bytes)
                yield stream.render(stream.response_type.FromString(raw)).encode()
        except grpc.aio.AioRpcError as exc:
            outcome.code = exc.code().name
            yield _error_event(context, ApiError.from_rpc_error(exc, kiln_service))
        except Exception:
            # A message the adapter could not render: end the stream in the route's format
            # rather than cutting it without a word.
            outcome.code = "INTERNAL"
            log.exception("stream failed", extra={"endpoint": context.endpoint.name})
            yield _error_event(context, ApiError(grpc.StatusCode.INTERNAL, "internal error"))
        finally:
            # Client gone (cancelled here), stream ended or failed: the call must not linger.
            if pending is not None:
                pending.cancel()
            call.cancel()


def _error_event(context: RequestContext, error: ApiError) -> bytes:
    request = context.request
    rendered = context.gateway.shapes.rendered(
        error,
        ErrorRequest(
            method=request.method,
            path=request.scope["path"],
            service=context.endpoint.service,
            operation=context.endpoint.name,
        ),
    )
    body = rendered.body if rendered.media_type == "application/json" else str(rendered.body)
    return SseEvent(event="error", data=dumps(body).decode()).encode()
