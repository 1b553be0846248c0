"""The generic server-stream → SSE adapter, against the echo service's Count stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from google.protobuf.message import Message

from gateway.apis import oauth2
from gateway.apis.registry import ApiModule
from gateway.app import build_app
from gateway.core import Limits
from gateway.jsonpb import dumps
from gateway.routing import RequestContext, endpoint
from gateway.sse import ServerStream, SseEvent, sse_handler
from services.runtime.config import GatewayConfig
from tests.gateway.conftest import ECHO_SERVICE, EchoProtos, EchoServer, live
from tests.gateway.sse_client import EventReader

Auth = Callable[..., dict[str, str]]
COUNT = f"/{ECHO_SERVICE}/Count"
HEARTBEAT = 0.05


def count_api(protos: EchoProtos, render: Callable[[Any], SseEvent] | None = None) -> ApiModule:
    """`GET /v1/count?count=&interval=&fail_code=&fail_message=&hold=` as SSE."""

    def request(context: RequestContext) -> Message:
        query = context.request.query_params
        return protos.message("CountRequest")(
            count=int(query.get("count", "0")),
            interval=float(query.get("interval", "0")),
            fail_code=int(query.get("fail_code", "0")),
            fail_message=query.get("fail_message", ""),
            hold=query.get("hold") == "true",
        )

    def numbered(message: Any) -> SseEvent:
        return SseEvent(event="count", id=str(message.n), data=dumps({"n": message.n}).decode())

    stream = ServerStream(
        method=COUNT,
        request=request,
        response_type=protos.message("CountResponse"),
        render=render or numbered,
        heartbeat=HEARTBEAT,
    )
    return ApiModule(
        name="count",
        endpoints=lambda: [
            endpoint("GET", "/v1/count", sse_handler(stream), service=ECHO_SERVICE, name=COUNT)
        ],
        services=("testing",),
    )


@pytest.fixture(scope="module")
async def sse_client(
    gw_config: GatewayConfig, gw_protos: EchoProtos
) -> AsyncIterator[httpx.AsyncClient]:
    app = build_app(
        gw_config, apis=(oauth2.API, count_api(gw_protos)), limits=Limits(call_timeout=5.0)
    )
    async with live(app) as client:
        yield client


async def eventually(check: Callable[[], bool], seconds: float = 3.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_messages_arrive_as_events_in_order_then_the_stream_ends(
    sse_client: httpx.AsyncClient, gw_auth: Auth
) -> None:
    async with sse_client.stream("GET", "/v1/count?count=3", headers=gw_auth()) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        reader = EventReader(response)
        events = await reader.take(3)
        assert await reader.next() is None  # the upstream stream ended: so does the response
    assert [(e.event, e.id, e.json()) for e in events] == [
        ("count", "1", {"n": 1}),
        ("count", "2", {"n": 2}),
        ("count", "3", {"n": 3}),
    ]


async def test_an_idle_stream_sends_heartbeat_comments(
    sse_client: httpx.AsyncClient, gw_auth: Auth
) -> None:
    async with sse_client.stream(
        "GET", "/v1/count?count=2&interval=0.3", headers=gw_auth()
    ) as response:
        reader = EventReader(response)
        first, second = await reader.take(2)
    assert (first.id, second.id) == ("1", "2")
    # 0.3 s between the messages, a heartbeat every 0.05 s: several comments in between.
    assert len(reader.comments) >= 2
    assert set(reader.comments) == {"heartbeat"}


async def test_the_client_leaving_cancels_the_upstream_call(
    sse_client: httpx.AsyncClient, gw_auth: Auth, gw_echo: EchoServer
) -> None:
    cancelled = gw_echo.servicer.counts_cancelled
    async with sse_client.stream("GET", "/v1/count?count=1&hold=true", headers=gw_auth()) as r:
        assert (await EventReader(r).take(1))[0].id == "1"
        assert gw_echo.servicer.counts_open >= 1
    # Closing the response closes the connection; the service sees its stream cancelled.
    await eventually(lambda: gw_echo.servicer.counts_cancelled == cancelled + 1)
    await eventually(lambda: gw_echo.servicer.counts_open == 0)
    metrics = (await sse_client.get("/metrics")).text
    assert (
        'grpc_client_handled_total{grpc_code="CANCELLED",grpc_method="Count",'
        'grpc_service="kiln.testing.v1.EchoService",grpc_type="server_stream"}'
    ) in metrics


async def test_a_failure_before_the_stream_is_an_ordinary_error_response(
    sse_client: httpx.AsyncClient, gw_auth: Auth
) -> None:
    missing = await sse_client.get("/v1/count?fail_code=5&fail_message=no+such+thing")
    assert missing.status_code == 401  # credentials first
    failed = await sse_client.get(
        "/v1/count?fail_code=5&fail_message=no+such+thing", headers=gw_auth()
    )
    assert failed.status_code == 404
    assert failed.headers["content-type"] == "application/json"
    assert failed.json() == {"code": 5, "message": "no such thing", "details": []}


async def test_a_failure_during_the_stream_is_an_error_event(
    sse_client: httpx.AsyncClient, gw_auth: Auth
) -> None:
    async with sse_client.stream(
        "GET", "/v1/count?count=2&fail_code=8&fail_message=too+slow", headers=gw_auth()
    ) as response:
        assert response.status_code == 200
        reader = EventReader(response)
        events = await reader.take(3)
        assert await reader.next() is None
    assert [e.id for e in events[:2]] == ["1", "2"]
    assert events[2].event == "error"
    # In the route's error shape: grpc-gateway's here.
    assert events[2].json() == {"code": 8, "message": "too slow", "details": []}


async def test_a_message_the_adapter_cannot_render_ends_with_an_internal_error(
    gw_config: GatewayConfig, gw_protos: EchoProtos, gw_auth: Auth, gw_echo: EchoServer
) -> None:
    def fragile(message: Any) -> SseEvent:
        if message.n == 2:
            raise ValueError("cannot render")
        return SseEvent(data=str(message.n))

    app = build_app(gw_config, apis=(count_api(gw_protos, fragile),))
    async with (
        live(app) as client,
        client.stream("GET", "/v1/count?count=3&hold=true", headers=gw_auth()) as response,
    ):
        reader = EventReader(response)
        first, error = await reader.take(2)
        assert await reader.next() is None
    assert (first.event, first.data) == ("message", "1")
    assert error.event == "error"
    assert error.json()["message"] == "internal error"
    await eventually(lambda: gw_echo.servicer.counts_open == 0)


def test_event_encoding() -> None:
    assert SseEvent(data='{"a":1}', event="created", id="k:1").encode() == (
        b'event: created\nid: k:1\ndata: {"a":1}\n\n'
    )
    # Several data lines; a line break cannot forge a field through the event or id.
    assert SseEvent(data="a\nb", event="x\ndata: forged", id="1\r\n2").encode() == (
        b"event: x data: forged\nid: 1  2\ndata: a\ndata: b\n\n"
    )
    assert SseEvent(data="").encode() == b"data: \n\n"
