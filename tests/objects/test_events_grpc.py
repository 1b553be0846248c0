"""ObjectService.Subscribe over real gRPC: order, scenes, tenants, slow subscribers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from kiln.objects.v1 import objects_pb2, objects_pb2_grpc
from prometheus_client import REGISTRY

from services.objects.main import build
from services.runtime.config import load_service_config
from services.runtime.server import RunningServer, start
from tests.conftest import bearer

T = objects_pb2.ObjectEventType


@contextlib.asynccontextmanager
async def objects_service(
    base_env: dict[str, str], database_url: str, **env: str
) -> AsyncIterator[tuple[RunningServer, objects_pb2_grpc.ObjectServiceStub]]:
    """One objects service in this process on its own database, with extra KILN_* settings."""
    config = load_service_config(
        "objects",
        {
            **base_env,
            "KILN_OBJECTS_DATABASE_URL": database_url,
            "KILN_OBJECTS_METRICS_PORT": "-1",
            **env,
        },
    )
    server = await start(config, await build(config))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield server, objects_pb2_grpc.ObjectServiceStub(channel)
    finally:
        await server.stop(0)


async def subscribe(stub: objects_pb2_grpc.ObjectServiceStub, token: str, scene: str = "") -> Any:
    """A Subscribe call that is registered on the server when this returns."""
    call = stub.Subscribe(objects_pb2.SubscribeRequest(scene=scene), metadata=bearer(token))
    await asyncio.wait_for(call.initial_metadata(), 5)
    return call


async def read(call: Any, count: int, wait: float = 5) -> list[objects_pb2.ObjectEvent]:
    events = []
    for _ in range(count):
        response = await asyncio.wait_for(call.read(), wait)
        assert response is not grpc.aio.EOF
        events.append(response.event)
    return events


async def create(stub: Any, token: str, **fields: Any) -> objects_pb2.Object:
    response = await stub.CreateObjects(
        objects_pb2.CreateObjectsRequest(
            objects=[objects_pb2.ObjectInput(object=objects_pb2.Object(**fields))]
        ),
        metadata=bearer(token),
    )
    return response.objects[0]


@pytest.fixture
async def service(
    base_env: dict[str, str], tmp_path: Path
) -> AsyncIterator[objects_pb2_grpc.ObjectServiceStub]:
    async with objects_service(base_env, f"sqlite+aiosqlite:///{tmp_path / 'o.db'}") as (_, stub):
        yield stub


async def test_every_change_arrives_in_order(
    service: objects_pb2_grpc.ObjectServiceStub, token_for: Callable[..., str]
) -> None:
    token = token_for("tenant-ev")
    meta = bearer(token)
    call = await subscribe(service, token)
    obj = await create(service, token, name="lamp", scene="hall")
    key = obj.key
    await service.UpdateObject(
        objects_pb2.UpdateObjectRequest(key=key, update=objects_pb2.Object(name="lamp2")),
        metadata=meta,
    )
    await service.LockObject(objects_pb2.LockObjectRequest(key=key, device="d1"), metadata=meta)
    await service.AddObjectAsset(
        objects_pb2.AddObjectAssetRequest(object_key=key, asset_key="mesh"), metadata=meta
    )
    await service.RemoveObjectAsset(
        objects_pb2.RemoveObjectAssetRequest(object_key=key, asset_key="mesh"), metadata=meta
    )
    await service.UnlockObject(objects_pb2.UnlockObjectRequest(key=key, device="d1"), metadata=meta)
    await service.DeleteObject(objects_pb2.DeleteObjectRequest(key=key), metadata=meta)
    events = await read(call, 7)
    call.cancel()
    assert [e.type for e in events] == [
        T.OBJECT_EVENT_TYPE_CREATED,
        T.OBJECT_EVENT_TYPE_UPDATED,
        T.OBJECT_EVENT_TYPE_LOCKED,
        T.OBJECT_EVENT_TYPE_ASSETS_CHANGED,
        T.OBJECT_EVENT_TYPE_ASSETS_CHANGED,
        T.OBJECT_EVENT_TYPE_UNLOCKED,
        T.OBJECT_EVENT_TYPE_DELETED,
    ]
    assert {e.object.key for e in events} == {key}
    assert [e.version for e in events] == [1, 2, 3, 4, 5, 6, 7]  # a delete is a change too
    assert events[1].object.name == "lamp2" and events[2].object.owner == "d1"
    assert list(events[3].object.assets) == ["mesh"] and not events[4].object.assets
    assert all(e.time.seconds > 0 for e in events)


async def test_scene_filter_and_tenant_isolation(
    service: objects_pb2_grpc.ObjectServiceStub, token_for: Callable[..., str]
) -> None:
    mine, theirs = token_for("tenant-iso-a"), token_for("tenant-iso-b")
    subscribers = REGISTRY.get_sample_value("kiln_object_subscribers") or 0.0
    everything = await subscribe(service, mine)
    kitchen = await subscribe(service, mine, scene="kitchen")
    other_tenant = await subscribe(service, theirs)
    other_tenant_kitchen = await subscribe(service, theirs, scene="kitchen")
    a = await create(service, mine, name="a", scene="kitchen")
    b = await create(service, mine, name="b", scene="garden")
    c = await create(service, theirs, name="c", scene="kitchen")
    # Another tenant cannot change, and so cannot hear about, this tenant's object.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await service.UpdateObject(
            objects_pb2.UpdateObjectRequest(key=a.key, update=objects_pb2.Object(name="x")),
            metadata=bearer(theirs),
        )
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    await service.UpdateObject(
        objects_pb2.UpdateObjectRequest(key=b.key, update=objects_pb2.Object(scene="kitchen")),
        metadata=bearer(mine),
    )
    assert [e.object.key for e in await read(everything, 3)] == [a.key, b.key, b.key]
    # A scene subscriber sees an object once it is in the scene.
    got = await read(kitchen, 2)
    assert [(e.object.key, e.version) for e in got] == [(a.key, 1), (b.key, 2)]
    assert [e.object.key for e in await read(other_tenant, 1)] == [c.key]
    assert [e.object.key for e in await read(other_tenant_kitchen, 1)] == [c.key]
    # Nothing else is on its way to the other tenant.
    with pytest.raises(TimeoutError):
        await read(other_tenant, 1, wait=0.3)
    assert REGISTRY.get_sample_value("kiln_object_subscribers") == subscribers + 4
    for call in (everything, kitchen, other_tenant, other_tenant_kitchen):
        call.cancel()
    # A client that goes away is unsubscribed.
    for _ in range(100):
        if REGISTRY.get_sample_value("kiln_object_subscribers") == subscribers:
            break
        await asyncio.sleep(0.02)
    assert REGISTRY.get_sample_value("kiln_object_subscribers") == subscribers


async def test_a_slow_subscriber_is_dropped_and_the_others_get_everything(
    base_env: dict[str, str], tmp_path: Path, token_for: Callable[..., str]
) -> None:
    """One subscriber never reads while 99 others read everything. Publishing never waits on
    it: once its queue (8 here) and the transport's buffers are full it is dropped, and when
    it reads again it gets what was buffered, then RESOURCE_EXHAUSTED."""
    token = token_for("tenant-slow")
    meta = bearer(token)
    updates = 60
    dropped = REGISTRY.get_sample_value("kiln_object_subscribers_dropped_total") or 0.0
    url = f"sqlite+aiosqlite:///{tmp_path / 'slow.db'}"
    async with objects_service(base_env, url, KILN_OBJECTS_SUBSCRIBER_QUEUE="8") as (server, stub):
        # Its own connection, with a fixed 64 KiB window (no BDP growth): it fills in a few
        # events, as a stalled client's would.
        slow_channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{server.port}", options=[("grpc.http2.bdp_probe", 0)]
        )
        slow = await subscribe(objects_pb2_grpc.ObjectServiceStub(slow_channel), token)
        readers = [await subscribe(stub, token) for _ in range(99)]

        async def read_everything(call: Any) -> list[int]:
            return [e.version for e in await read(call, updates + 1, wait=10)]

        tasks = [asyncio.create_task(read_everything(call)) for call in readers]
        # Fat events fill the slow subscriber's transport window quickly.
        obj = await create(stub, token, name="n" * 3000)
        for i in range(updates):
            await stub.UpdateObject(
                objects_pb2.UpdateObjectRequest(
                    key=obj.key, update=objects_pb2.Object(name=f"{i:05d}" + "n" * 3000)
                ),
                metadata=meta,
            )
        results = await asyncio.gather(*tasks)
        assert all(r == list(range(1, updates + 2)) for r in results)
        after = REGISTRY.get_sample_value("kiln_object_subscribers_dropped_total") or 0.0
        assert after - dropped == 1
        # The slow one reads at last: what its transport held, then the reason it ended.
        received = 0
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while True:
                response = await asyncio.wait_for(slow.read(), 5)
                assert response is not grpc.aio.EOF
                received += 1
        assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert received < updates + 1
        for call in readers:
            call.cancel()
        await slow_channel.close()
