"""Per-request plumbing around every route: request id, RED metrics, the access log.

A pure ASGI middleware (no response buffering), so streamed uploads and downloads pass
through untouched.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

import grpc
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.core import Gateway
from gateway.errors import ApiError
from gateway.routing import SCOPE_REQUEST_ID, SCOPE_ROUTE, SCOPE_TENANT
from services.runtime import tracing
from services.runtime.context import principal_var, request_id_var

access_log = logging.getLogger("kiln.access")
log = logging.getLogger("kiln.gateway")

# An incoming id is echoed into logs, headers and gRPC metadata: keep it short and inert.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
UNMATCHED_ROUTE = "unmatched"


def incoming_request_id(scope: Scope) -> str | None:
    """The client's X-Request-Id when it is safe to reuse, else None."""
    value = Headers(scope=scope).get("x-request-id")
    if value and _REQUEST_ID.fullmatch(value):
        return value
    return None


class ObservabilityMiddleware:
    """Request id in and out, metrics by route template, one JSON access-log line."""

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = incoming_request_id(scope) or uuid.uuid4().hex
        scope[SCOPE_REQUEST_ID] = request_id
        id_token = request_id_var.set(request_id)
        principal_token = principal_var.set(None)
        metrics = self.gateway.metrics
        state = {"status": 500, "bytes": 0, "started": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
                MutableHeaders(scope=message)["X-Request-Id"] = request_id
            elif message["type"] == "http.response.body":
                state["bytes"] = int(state["bytes"]) + len(message.get("body", b""))
            await send(message)

        started = time.perf_counter()
        metrics.http_in_flight.inc()
        traced = _start_span(scope, request_id) if tracing.enabled() else None
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error outside a route")
            if not state["started"]:
                error = ApiError(grpc.StatusCode.INTERNAL, "internal error")
                response = self.gateway.shapes.render(error, scope["path"], method=scope["method"])
                await response(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            metrics.http_in_flight.dec()
            route = str(scope.get(SCOPE_ROUTE) or UNMATCHED_ROUTE)
            method = scope["method"]
            metrics.http_requests.labels(route, method, str(state["status"])).inc()
            metrics.http_seconds.labels(route, method).observe(elapsed)
            client = scope.get("client")
            trace_id = _end_span(traced, scope, route, int(state["status"]))
            access_log.info(
                "http",
                extra={
                    "request_id": request_id,
                    "method": method,
                    "path": scope["path"],
                    "route": route,
                    "status": state["status"],
                    "ms": round(elapsed * 1000, 2),
                    "bytes_out": state["bytes"],
                    "tenant": scope.get(SCOPE_TENANT, ""),
                    "remote": client[0] if client else "",
                    **trace_id,
                },
            )
            principal_var.reset(principal_token)
            request_id_var.reset(id_token)


_TRACE_HEADERS = (b"traceparent", b"tracestate")


def _start_span(scope: Scope, request_id: str) -> tracing.Traced:
    """The request's SERVER span, child of the client's `traceparent` when it sent one."""
    carrier = {
        key.decode("latin-1"): value.decode("latin-1")
        for key, value in scope.get("headers", ())
        if key in _TRACE_HEADERS
    }
    return tracing.begin(
        scope["method"],
        kind="SERVER",
        carrier=carrier,
        attributes={
            "http.request.method": scope["method"],
            "url.path": scope["path"],
            "kiln.request_id": request_id,
        },
    )


def _end_span(
    traced: tracing.Traced | None, scope: Scope, route: str, status: int
) -> dict[str, str]:
    """Ends the request's span, named by its route template; answers the access log's
    trace_id field (nothing when tracing is off)."""
    if traced is None:
        return {}
    span, token = traced
    span.update_name(f"{scope['method']} {route}")
    trace_id = format(span.get_span_context().trace_id, "032x")
    tracing.finish(
        span,
        token,
        error=str(status) if status >= 500 else None,
        attributes={"http.route": route, "http.response.status_code": status},
    )
    return {"trace_id": trace_id}


def http_exception_handler(gateway: Gateway) -> Callable[[Request, Exception], Awaitable[Response]]:
    """Renders Starlette's own HTTP errors (unknown route: 404) in the path's error shape."""

    async def handle(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            error = ApiError(
                grpc.StatusCode.NOT_FOUND,
                f"no route for {request.method} {request.url.path}",
                http_status=404,
            )
        else:
            error = ApiError(
                grpc.StatusCode.UNKNOWN,
                str(exc.detail),
                http_status=exc.status_code,
                headers=dict(exc.headers or {}),
            )
        return gateway.shapes.render(error, request.url.path, method=request.method)

    return handle
