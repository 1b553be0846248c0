"""`GET /v1/object/events?scene=`: object changes as Server-Sent Events, in order."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.apis import clyman as clyman_api
from gateway.apis import oauth2
from tests.clyman.conftest import Clyman, start_clyman
from tests.conftest import Suite
from tests.gateway.sse_client import EventReader

HEARTBEAT = 0.1


@pytest.fixture(scope="module")
async def clyman(suite: Suite, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Clyman]:
    # CLyman's API with a short heartbeat, so the test sees one without waiting 15 s.
    quick = dataclasses.replace(
        clyman_api.API, endpoints=lambda: clyman_api.endpoints(heartbeat=HEARTBEAT)
    )
    async for running in start_clyman(
        suite, tmp_path_factory.mktemp("clyman-events"), apis=(oauth2.API, quick)
    ):
        yield running


async def test_changes_arrive_in_order_as_events(clyman: Clyman) -> None:
    client = clyman.client
    scene = f"scene-{uuid.uuid4().hex[:6]}"
    async with client.stream("GET", "/v1/object/events", params={"scene": scene}) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        # The headers mean the subscription is registered: every change from now on arrives.
        reader = EventReader(stream)
        elsewhere = await client.post(
            "/v1/object", json={"objects": [{"name": "other", "scene": "another-scene"}]}
        )
        assert elsewhere.status_code == 200
        created = await client.post(
            "/v1/object",
            json={"objects": [{"name": "watched", "scene": scene, "translation": [0, 0, 1]}]},
        )
        key = created.json()["objects"][0]["key"]
        steps = [
            ("POST", f"/v1/object/{key}", {"objects": [{"name": "renamed"}]}),
            ("GET", f"/v1/object/{key}/lock?device=dev-1", None),
            ("PUT", f"/v1/object/{key}/asset/a-1", None),
            ("DELETE", f"/v1/object/{key}/asset/a-1", None),
            ("DELETE", f"/v1/object/{key}/lock?device=dev-1", None),
            ("DELETE", f"/v1/object/{key}", None),
        ]
        for method, path, body in steps:
            answer = await client.request(method, path, json=body)
            assert answer.status_code == 200, (method, path, answer.text)
        events = await asyncio.wait_for(reader.take(7), timeout=10)
        # Idle now: heartbeat comments keep the connection (and nothing else arrives).
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.next(), timeout=HEARTBEAT * 4)
        assert "heartbeat" in reader.comments
    names = [e.event for e in events]
    assert names == [
        "created",
        "updated",
        "locked",
        "assets_changed",
        "assets_changed",
        "unlocked",
        "deleted",
    ]
    data: list[dict[str, Any]] = [e.json() for e in events]
    assert all(d["object"]["key"] == key and d["object"]["scene"] == scene for d in data)
    versions = [d["version"] for d in data]
    # One more per change, the delete included; it carries the object's last state.
    assert versions[:6] == list(range(versions[0], versions[0] + 6))
    assert versions[6] == versions[5] + 1
    assert [e.id for e in events] == [f"{key}:{v}" for v in versions]
    assert data[0]["type"] == "OBJECT_EVENT_TYPE_CREATED"
    assert data[0]["object"]["transform"] == [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1]
    assert data[1]["object"]["name"] == "renamed"
    assert data[2]["object"]["owner"] == "dev-1"
    assert data[3]["object"]["assets"] == ["a-1"] and data[4]["object"]["assets"] == []


CANCELLED_SUBSCRIPTIONS = (
    'grpc_client_handled_total{grpc_code="CANCELLED",grpc_method="Subscribe",'
    'grpc_service="kiln.objects.v1.ObjectService",grpc_type="server_stream"}'
)


async def cancelled_subscriptions(clyman: Clyman) -> float:
    metrics = (await clyman.client.get("/metrics")).text
    line = next((li for li in metrics.splitlines() if li.startswith(CANCELLED_SUBSCRIPTIONS)), "")
    return float(line.split()[-1]) if line else 0.0


async def test_every_scene_without_a_filter_and_leaving_cancels(clyman: Clyman) -> None:
    client = clyman.client
    before = await cancelled_subscriptions(clyman)
    scenes = {f"s-{uuid.uuid4().hex[:6]}" for _ in range(2)}
    async with client.stream("GET", "/v1/object/events") as stream:
        reader = EventReader(stream)
        for scene in sorted(scenes):
            body = {"objects": [{"name": "any", "scene": scene}]}
            assert (await client.post("/v1/object", json=body)).status_code == 200
        events = await asyncio.wait_for(reader.take(2), timeout=10)
    assert {e.json()["object"]["scene"] for e in events} == scenes
    # The client left: the gateway cancelled its Subscribe call.
    for _ in range(100):
        if await cancelled_subscriptions(clyman) == before + 1:
            break
        await asyncio.sleep(0.02)
    assert await cancelled_subscriptions(clyman) == before + 1
