"""gRPC status → HTTP status and error bodies; pluggable shapes; transport failures."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import grpc
import httpx
import pytest

from gateway.apis import oauth2
from gateway.app import build_app
from gateway.core import Limits
from gateway.errors import (
    ApiError,
    ErrorRequest,
    ErrorShapes,
    RenderedError,
    RequestShape,
    oauth2_shape,
)
from services.runtime.config import GatewayConfig
from tests.gateway.conftest import ECHO_SERVICE, closed_port_target, serving

Auth = Callable[..., dict[str, str]]

# grpc-gateway v2's table, written out independently of the code under test.
TABLE = [
    ("CANCELLED", 1, 499),
    ("UNKNOWN", 2, 500),
    ("INVALID_ARGUMENT", 3, 400),
    ("DEADLINE_EXCEEDED", 4, 504),
    ("NOT_FOUND", 5, 404),
    ("ALREADY_EXISTS", 6, 409),
    ("PERMISSION_DENIED", 7, 403),
    ("RESOURCE_EXHAUSTED", 8, 429),
    ("FAILED_PRECONDITION", 9, 400),
    ("ABORTED", 10, 409),
    ("OUT_OF_RANGE", 11, 400),
    ("UNIMPLEMENTED", 12, 501),
    ("INTERNAL", 13, 500),
    ("UNAVAILABLE", 14, 503),
    ("DATA_LOSS", 15, 500),
    ("UNAUTHENTICATED", 16, 401),
]


@pytest.mark.parametrize(("name", "code", "http"), TABLE)
async def test_status_table(
    gw_client: httpx.AsyncClient, gw_auth: Auth, name: str, code: int, http: int
) -> None:
    response = await gw_client.get(
        f"/v1/fail/{code}",
        params={"message": f"failed with {name}", "reason": "ERROR_REASON_INVALID_FIELD"},
        headers=gw_auth(),
    )
    assert response.status_code == http
    body = response.json()
    assert body["code"] == code
    # A status with details comes from a service on purpose: its message reaches the client.
    assert body["message"] == f"failed with {name}"
    assert body["details"] == [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "ERROR_REASON_INVALID_FIELD",
            "domain": "kiln.dev",
            "metadata": {"field": "code"},
        }
    ]
    if http == 401:
        # The service refused the token the gateway forwarded.
        assert response.headers["www-authenticate"] == 'Bearer realm="kiln", error="invalid_token"'


async def test_status_without_details_keeps_a_service_message(
    gw_client: httpx.AsyncClient, gw_auth: Auth
) -> None:
    response = await gw_client.get(
        "/v1/fail/5", params={"message": "no such thing"}, headers=gw_auth()
    )
    assert response.status_code == 404
    assert response.json() == {"code": 5, "message": "no such thing", "details": []}


async def test_transport_failures_hide_internal_addresses(gw_config: GatewayConfig) -> None:
    down = dataclasses.replace(gw_config, targets={"testing": closed_port_target()})
    app = build_app(down, apis=(oauth2.API,), limits=Limits(call_timeout=2.0))
    async with serving(app) as client:
        token = (
            await client.post("/oauth2/application_token", auth=("demo", "demo-secret"))
        ).json()["access_token"]
        response = await client.get("/v1/echo/x", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 503
    body = response.json()
    assert body["code"] == 14
    assert body["message"] == "the testing service is unavailable; retry later"
    assert "127.0.0.1" not in response.text


async def test_deadline_is_504(gw_config: GatewayConfig, gw_auth: Auth) -> None:
    app = build_app(gw_config, apis=(), limits=Limits(call_timeout=0.2))
    async with serving(app) as client:
        response = await client.get("/v1/sleep?seconds=2", headers=gw_auth())
        fast = await client.get("/v1/sleep?seconds=0", headers=gw_auth())
    assert response.status_code == 504
    assert response.json()["code"] == 4
    assert fast.status_code == 200 and fast.json() == {}


async def test_shapes_plug_in_by_service_and_by_prefix(
    gw_config: GatewayConfig, gw_auth: Auth
) -> None:
    def envelope(error: ApiError) -> RenderedError:
        return RenderedError(
            status=error.http_status,
            body={"err_code": error.http_status, "err_msg": error.message},
        )

    shapes = ErrorShapes()
    shapes.register(envelope, service="kiln.testing.v1.EchoService")
    shapes.register(oauth2_shape, path_prefix="/v1/files")
    app = build_app(gw_config, apis=(), shapes=shapes)
    async with serving(app) as client:
        by_service = await client.get("/v1/fail/5?message=gone", headers=gw_auth())
        # Unauthenticated errors on a route of that service use its shape too.
        unauthenticated = await client.get("/v1/fail/5")
        # The service wins over the path prefix; an unknown route under the prefix uses it.
        unrouted = await client.post("/v1/files")
    assert by_service.status_code == 404
    assert by_service.json() == {"err_code": 404, "err_msg": "gone"}
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["err_code"] == 401
    assert unauthenticated.headers["www-authenticate"] == 'Bearer realm="kiln"'
    assert unrouted.status_code == 404
    assert unrouted.json()["error"] == "invalid_request"


def test_prefixes_match_whole_segments() -> None:
    shapes = ErrorShapes()
    shapes.register(oauth2_shape, path_prefix="/oauth2/")
    assert shapes.for_request("/oauth2/token") is oauth2_shape
    assert shapes.for_request("/oauth2") is oauth2_shape
    assert shapes.for_request("/oauth2x/token") is shapes.default
    with pytest.raises(ValueError, match="exactly one"):
        shapes.register(oauth2_shape)


async def test_a_failing_shape_falls_back_to_the_default(
    gw_config: GatewayConfig, gw_auth: Auth
) -> None:
    def broken(error: ApiError) -> RenderedError:
        raise RuntimeError("bug in a shape")

    shapes = ErrorShapes()
    shapes.register(broken, path_prefix="/v1")
    app = build_app(gw_config, apis=(), shapes=shapes)
    async with serving(app) as client:
        response = await client.get("/v1/fail/9?message=precondition", headers=gw_auth())
    assert response.status_code == 400
    assert response.json() == {"code": 9, "message": "precondition", "details": []}


def test_api_error_defaults() -> None:
    error = ApiError(grpc.StatusCode.NOT_FOUND, "gone", reason="ERROR_REASON_NOT_FOUND")
    assert error.http_status == 404
    assert error.details[0]["reason"] == "ERROR_REASON_NOT_FOUND"
    assert ApiError(grpc.StatusCode.INTERNAL, "x", http_status=418).http_status == 418


async def test_request_aware_shapes_see_the_operation_and_choose_the_status(
    gw_config: GatewayConfig, gw_auth: Auth
) -> None:
    def teapot(error: ApiError, request: ErrorRequest) -> RenderedError:
        # A status grpc-gateway's table has no code for, as CLyman's 423 is.
        status = 418 if error.code == grpc.StatusCode.NOT_FOUND else error.http_status
        return RenderedError(
            status=status,
            body={"method": request.method, "operation": request.operation},
            headers={"X-Shape": "teapot"},
        )

    shapes = ErrorShapes()
    shapes.register(RequestShape(teapot), service=ECHO_SERVICE)
    shapes.register(RequestShape(teapot), path_prefix="/v1/nowhere")
    app = build_app(gw_config, apis=(), shapes=shapes)
    async with serving(app) as client:
        failed = await client.get("/v1/fail/5?message=gone", headers=gw_auth())
        wrong_method = await client.patch("/v1/fail/5", headers=gw_auth())
        unrouted = await client.delete("/v1/nowhere/at/all")
    assert failed.status_code == 418
    assert failed.headers["x-shape"] == "teapot"
    assert failed.json() == {"method": "GET", "operation": f"/{ECHO_SERVICE}/Fail"}
    # No endpoint for the method: no operation, and the 405 keeps its Allow header.
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "GET"
    assert wrong_method.json() == {"method": "PATCH", "operation": ""}
    assert unrouted.status_code == 418
    assert unrouted.json() == {"method": "DELETE", "operation": ""}
