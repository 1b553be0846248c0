"""ObjectService.StreamUpdates over real gRPC: order, commits, errors mid-stream, tenants."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from kiln.common.v1 import errors_pb2
from kiln.objects.v1 import objects_pb2, objects_pb2_grpc
from prometheus_client import REGISTRY

from services.objects import servicer
from services.objects.objects import ObjectCatalog
from services.runtime.auth import TokenSigner
from tests.conftest import bearer
from tests.objects.test_events_grpc import create, objects_service, read, subscribe


@pytest.fixture
async def service(
    base_env: dict[str, str], database_url: str
) -> AsyncIterator[objects_pb2_grpc.ObjectServiceStub]:
    async with objects_service(base_env, database_url) as (_, stub):
        yield stub


def update(key: str, name: str = "", **placement: Any) -> objects_pb2.StreamUpdatesRequest:
    request = objects_pb2.UpdateObjectRequest(key=key, update=objects_pb2.Object(name=name))
    if placement:
        request.placement.CopyFrom(objects_pb2.TransformInput(**placement))
    return objects_pb2.StreamUpdatesRequest(update=request)


async def stream(
    stub: objects_pb2_grpc.ObjectServiceStub,
    token: str,
    requests: list[objects_pb2.StreamUpdatesRequest],
) -> list[objects_pb2.StreamUpdatesResponse]:
    """Sends every request before reading any answer, so they are all in flight together."""
    call = stub.StreamUpdates(iter(requests), metadata=bearer(token))
    return [answer async for answer in call]


async def test_answers_come_in_the_order_sent_and_each_object_changes_in_that_order(
    service: objects_pb2_grpc.ObjectServiceStub, token_for: Callable[..., str]
) -> None:
    token = token_for("tenant-stream")
    keys = [(await create(service, token, name="o", scene="s")).key for _ in range(4)]
    events = await subscribe(service, token, "s")
    sent = [update(keys[i % 4], f"n{i}", translation=[i, 0, 0]) for i in range(40)]

    answers = await stream(service, token, sent)

    assert [a.key for a in answers] == [r.update.key for r in sent]
    assert all(a.code == 0 and a.message == "" for a in answers)
    # Each answer is the object just after its own update: nothing of a later one shows.
    assert [a.object.name for a in answers] == [f"n{i}" for i in range(40)]
    assert [a.object.transform[3] for a in answers] == [float(i) for i in range(40)]
    for i, key in enumerate(keys):
        stored = await service.GetObject(
            objects_pb2.GetObjectRequest(key=key), metadata=bearer(token)
        )
        assert stored.object.name == f"n{36 + i}"
    # Committed one by one, in the order sent: every update is an event, each object's in
    # consecutive versions.
    seen = await read(events, 40)
    for key in keys:
        mine = [e for e in seen if e.object.key == key]
        assert [e.object.name for e in mine] == [f"n{i}" for i in range(keys.index(key), 40, 4)]
        assert [e.version for e in mine] == list(range(2, 12))
    events.cancel()


async def test_a_failed_update_answers_its_error_and_the_stream_goes_on(
    service: objects_pb2_grpc.ObjectServiceStub, token_for: Callable[..., str]
) -> None:
    token = token_for("tenant-stream-errors")
    key = (await create(service, token, name="a")).key
    missing = "f" * 24
    refused = ("kiln_object_streamed_updates_total", {"code": "NOT_FOUND"})
    applied = ("kiln_object_streamed_updates_total", {"code": "OK"})
    refused_before = REGISTRY.get_sample_value(*refused) or 0
    applied_before = REGISTRY.get_sample_value(*applied) or 0

    answers = await stream(
        service,
        token,
        [update(key, "one"), update(missing, "x"), update("not a key", "y"), update(key, "two")],
    )

    not_found = grpc.StatusCode.NOT_FOUND.value[0]
    assert REGISTRY.get_sample_value(*refused) == refused_before + 2
    assert REGISTRY.get_sample_value(*applied) == applied_before + 2
    assert [a.code for a in answers] == [0, not_found, not_found, 0]
    assert answers[1].reason == errors_pb2.ERROR_REASON_NOT_FOUND
    assert missing in answers[1].message
    assert not answers[1].HasField("object")
    assert answers[3].object.name == "two"


async def test_invalid_input_fails_that_update_only(
    service: objects_pb2_grpc.ObjectServiceStub, token_for: Callable[..., str]
) -> None:
    token = token_for("tenant-stream-invalid")
    key = (await create(service, token, name="a")).key
    answers = await stream(service, token, [objects_pb2.StreamUpdatesRequest(), update(key, "d")])

    assert answers[0].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert answers[0].reason == errors_pb2.ERROR_REASON_INVALID_FIELD
    assert "update is required" in answers[0].message
    assert answers[1].code == 0
    stored = await service.GetObject(objects_pb2.GetObjectRequest(key=key), metadata=bearer(token))
    assert stored.object.name == "d"


async def test_another_tenants_object_is_not_found_and_unchanged(
    service: objects_pb2_grpc.ObjectServiceStub, token_for: Callable[..., str]
) -> None:
    owner, other = token_for("tenant-stream-owner"), token_for("tenant-stream-other")
    key = (await create(service, owner, name="mine")).key

    answers = await stream(service, other, [update(key, "theirs")])

    assert answers[0].code == grpc.StatusCode.NOT_FOUND.value[0]
    stored = await service.GetObject(objects_pb2.GetObjectRequest(key=key), metadata=bearer(owner))
    assert stored.object.name == "mine"


async def test_a_read_only_token_cannot_open_the_stream(
    service: objects_pb2_grpc.ObjectServiceStub, signer: TokenSigner
) -> None:
    token, _ = signer.issue(
        client_id="reader", tenant="tenant-stream-ro", scopes=["objects.read"], ttl_seconds=60
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stream(service, token, [update("a" * 24, "x")])
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_client_that_leaves_mid_stream_leaves_the_service_working(
    service: objects_pb2_grpc.ObjectServiceStub, token_for: Callable[..., str]
) -> None:
    token = token_for("tenant-stream-cancel")
    key = (await create(service, token, name="a")).key
    call = service.StreamUpdates(metadata=bearer(token))
    await call.write(update(key, "first"))
    assert (await asyncio.wait_for(call.read(), 5)).object.name == "first"
    await call.write(update(key, "second"))
    call.cancel()

    answers = await stream(service, token, [update(key, "after")])

    assert answers[0].object.name == "after"


async def test_no_more_than_the_bound_are_unanswered_at_once(
    service: objects_pb2_grpc.ObjectServiceStub,
    token_for: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = token_for("tenant-stream-bound")
    keys = [(await create(service, token, name="o")).key for _ in range(10)]
    monkeypatch.setattr(servicer, "STREAM_UPDATES_IN_FLIGHT", 3)
    gate = asyncio.Event()
    running = most = 0
    original = ObjectCatalog.update

    async def held(self: ObjectCatalog, tenant: str, key: str, patch: Any) -> Any:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            await gate.wait()
            return await original(self, tenant, key, patch)
        finally:
            running -= 1

    monkeypatch.setattr(ObjectCatalog, "update", held)
    answering = asyncio.ensure_future(stream(service, token, [update(k, "new") for k in keys]))
    await asyncio.sleep(0.3)
    assert running == 3  # the stream reads no further until an answer goes out
    gate.set()

    answers = await asyncio.wait_for(answering, 10)

    assert [a.object.name for a in answers] == ["new"] * 10
    assert most == 3
