"""/health, /metrics and the access log."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable

import httpx
import pytest
from grpc_health.v1 import health_pb2
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import build_app
from gateway.core import Limits
from services.runtime.config import GatewayConfig
from services.runtime.logs import JsonFormatter
from tests.gateway.conftest import EchoServer, closed_port_target, serving

Auth = Callable[..., dict[str, str]]


async def test_health_up_only_while_every_service_serves(
    gw_client: httpx.AsyncClient, gw_echo: EchoServer
) -> None:
    up = await gw_client.get("/health")
    assert up.status_code == 200 and up.json() == {"status": "up"}
    assert (await gw_client.get("/health/")).status_code == 200
    await gw_echo.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        down = await gw_client.get("/health")
    finally:
        await gw_echo.health.set("", health_pb2.HealthCheckResponse.SERVING)
    assert down.status_code == 503
    assert down.json() == {"status": "down", "services": {"testing": "NOT_SERVING"}}
    assert (await gw_client.get("/health")).status_code == 200


async def test_health_names_an_unreachable_service(gw_config: GatewayConfig) -> None:
    config = dataclasses.replace(
        gw_config, targets={**gw_config.targets, "jobs": closed_port_target()}
    )
    app = build_app(config, apis=(), limits=Limits(health_timeout=0.5))
    async with serving(app) as client:
        response = await client.get("/health")
    assert response.status_code == 503
    assert response.json() == {
        "status": "down",
        "services": {"testing": "SERVING", "jobs": "UNAVAILABLE"},
    }


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


async def test_metrics_count_by_route_template_and_upstream_code(
    gw_config: GatewayConfig, gw_auth: Auth
) -> None:
    app = build_app(gw_config, apis=())
    async with serving(app) as client:
        for asset in ("a", "b", "c"):
            assert (await client.get(f"/v1/echo/{asset}", headers=gw_auth())).status_code == 200
        assert (await client.get("/v1/fail/5", headers=gw_auth())).status_code == 404
        assert (await client.get("/v1/no/such/route")).status_code == 404
        metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    http = samples(text, "http_requests_total")
    assert http[(("method", "GET"), ("route", "/v1/echo/{id}"), ("status", "200"))] == 3
    assert http[(("method", "GET"), ("route", "/v1/fail/{code}"), ("status", "404"))] == 1
    # Unknown paths share one label: no cardinality from what clients make up.
    assert http[(("method", "GET"), ("route", "unmatched"), ("status", "404"))] == 1
    handled = samples(text, "grpc_client_handled_total")
    echo = (("grpc_code", "OK"), ("grpc_method", "Echo"))
    assert (
        handled[(*echo, ("grpc_service", "kiln.testing.v1.EchoService"), ("grpc_type", "unary"))]
        == 3
    )
    fail = (("grpc_code", "NOT_FOUND"), ("grpc_method", "Fail"))
    assert (
        handled[(*fail, ("grpc_service", "kiln.testing.v1.EchoService"), ("grpc_type", "unary"))]
        == 1
    )
    latency = samples(text, "http_request_duration_seconds_count")
    assert latency[(("method", "GET"), ("route", "/v1/echo/{id}"))] == 3


async def test_access_log_is_one_json_line_per_request(
    gw_client: httpx.AsyncClient, gw_auth: Auth, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="kiln.access"):
        await gw_client.get(
            "/v1/echo/logged", headers={**gw_auth("tenant-log"), "X-Request-Id": "log-1"}
        )
    records = [r for r in caplog.records if r.name == "kiln.access"]
    assert len(records) == 1
    line = json.loads(JsonFormatter("gateway").format(records[0]))
    assert line["msg"] == "http" and line["status"] == 200
    assert line["route"] == "/v1/echo/{id}" and line["path"] == "/v1/echo/logged"
    assert line["request_id"] == "log-1" and line["tenant"] == "tenant-log"
    assert line["ms"] >= 0 and line["method"] == "GET"
