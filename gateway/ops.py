"""Operational endpoints: `GET /health` (CLyman's documented route) and `GET /metrics`."""

from __future__ import annotations

from starlette.responses import Response

from gateway.jsonpb import json_response
from gateway.routing import Endpoint, RequestContext, endpoint

_SERVING = "SERVING"


async def health(context: RequestContext) -> Response:
    """200 `{"status": "up"}` only while every service answers SERVING; else 503 naming each."""
    gateway = context.gateway
    statuses = await gateway.upstreams.health(gateway.limits.health_timeout)
    headers = {"Cache-Control": "no-store"}
    if statuses and all(status == _SERVING for status in statuses.values()):
        return json_response({"status": "up"}, headers=headers)
    return json_response({"status": "down", "services": statuses}, status=503, headers=headers)


async def metrics(context: RequestContext) -> Response:
    """Prometheus text exposition of this gateway's registry."""
    registry = context.gateway.metrics
    return Response(registry.exposition(), media_type=registry.content_type)


def endpoints() -> list[Endpoint]:
    """The operational endpoints; public, since probes and scrapers carry no token."""
    return [
        endpoint("GET", "/health", health, public=True, name="health"),
        endpoint("GET", "/metrics", metrics, public=True, name="metrics"),
    ]
