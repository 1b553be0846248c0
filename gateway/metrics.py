"""Prometheus metrics of one gateway: HTTP RED metrics and upstream gRPC client metrics.

Each app owns its registry, so two gateways in one process (tests, benchmarks) never share
counters, and `/metrics` shows exactly this gateway, plus the few process-wide collectors the
gateway's own code feeds (SQL latency of the client store, rate-limit refusals), which live
in the default registry and are registered here too: the gateway has no other /metrics port.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from gateway.limits import LIMITED
from services.runtime.db import SQL_SECONDS

_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)


class GatewayMetrics:
    """The gateway's collectors, in a private registry."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        for shared in (SQL_SECONDS, LIMITED):
            self.registry.register(shared)
        self.http_requests = Counter(
            "http_requests_total",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_seconds = Histogram(
            "http_request_duration_seconds",
            "Time from a request's arrival to the end of its response.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.http_in_flight = Gauge(
            "http_requests_in_flight",
            "HTTP requests being served.",
            registry=self.registry,
        )
        # go-grpc-prometheus client names, so the services' dashboards read these too.
        self.grpc_started = Counter(
            "grpc_client_started_total",
            "RPCs the gateway started.",
            ["grpc_service", "grpc_method", "grpc_type"],
            registry=self.registry,
        )
        self.grpc_handled = Counter(
            "grpc_client_handled_total",
            "RPCs the gateway completed, by status code.",
            ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
            registry=self.registry,
        )
        self.grpc_seconds = Histogram(
            "grpc_client_handling_seconds",
            "Time from an RPC's start to its status, seen by the gateway.",
            ["grpc_service", "grpc_method", "grpc_type"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)
