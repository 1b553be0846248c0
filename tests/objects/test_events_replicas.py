"""Two objects replicas on one PostgreSQL database: changes reach subscribers on both."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from kiln.objects.v1 import objects_pb2, objects_pb2_grpc
from prometheus_client import REGISTRY

from tests.conftest import (
    PG_HOST,
    PG_PORT,
    PG_USER,
    bearer,
    postgres_reachable,
    private_postgres_database,
)
from tests.objects.test_events_grpc import create, objects_service, read, subscribe

pytestmark = pytest.mark.postgres
T = objects_pb2.ObjectEventType
Stub = objects_pb2_grpc.ObjectServiceStub


@pytest.fixture
async def replicas(base_env: dict[str, str]) -> AsyncIterator[tuple[Stub, Stub, str]]:
    reason = postgres_reachable()
    if reason is not None:
        pytest.skip(reason)
    async with (
        private_postgres_database() as url,
        objects_service(base_env, url) as (_, a),
        objects_service(base_env, url) as (_, b),
    ):
        yield a, b, url.rsplit("/", 1)[1]


async def update(stub: Stub, token: str, key: str, **fields: Any) -> None:
    await stub.UpdateObject(
        objects_pb2.UpdateObjectRequest(key=key, update=objects_pb2.Object(**fields)),
        metadata=bearer(token),
    )


async def test_a_change_on_one_replica_reaches_subscribers_on_both(
    replicas: tuple[Stub, Stub, str], token_for: Callable[..., str]
) -> None:
    a, b, _ = replicas
    token = token_for("tenant-rep")
    on_a, on_b = await subscribe(a, token), await subscribe(b, token)
    elsewhere = await subscribe(b, token_for("tenant-rep-other"))
    obj = await create(a, token, name="v1", scene="s")
    await update(a, token, obj.key, name="v2")
    await update(b, token, obj.key, name="v3")  # B reads A's write, and A hears of B's
    await update(a, token, obj.key, name="v4")
    for call in (on_a, on_b):
        events = await read(call, 4)
        assert [(e.version, e.object.name) for e in events] == [
            (1, "v1"),
            (2, "v2"),
            (3, "v3"),
            (4, "v4"),
        ]
        assert events[0].type == T.OBJECT_EVENT_TYPE_CREATED
    # Each replica delivered its own changes once (its own NOTIFYs are ignored), and the other
    # tenant heard nothing.
    with pytest.raises(TimeoutError):
        await read(on_a, 1, wait=0.3)
    with pytest.raises(TimeoutError):
        await read(elsewhere, 1, wait=0.1)
    for call in (on_a, on_b, elsewhere):
        call.cancel()


async def test_events_too_large_to_notify_are_reread(
    replicas: tuple[Stub, Stub, str], token_for: Callable[..., str]
) -> None:
    a, b, _ = replicas
    token = token_for("tenant-rep-big")
    on_b = await subscribe(b, token, scene="big")
    assets = [f"asset-{i:04d}-" + "a" * 40 for i in range(250)]  # ~12 KB: over NOTIFY's limit
    obj = await create(a, token, name="heavy", scene="big", assets=assets)
    [created] = await read(on_b, 1)
    assert created.type == T.OBJECT_EVENT_TYPE_CREATED and list(created.object.assets) == assets
    await a.DeleteObject(objects_pb2.DeleteObjectRequest(key=obj.key), metadata=bearer(token))
    [deleted] = await read(on_b, 1)
    # Gone before B could re-read it: the delete arrives with key and scene.
    assert deleted.type == T.OBJECT_EVENT_TYPE_DELETED
    assert (deleted.object.key, deleted.object.scene, deleted.version) == (obj.key, "big", 2)
    on_b.cancel()


async def test_replicas_reconnect_after_losing_their_connections(
    replicas: tuple[Stub, Stub, str], token_for: Callable[..., str]
) -> None:
    """The LISTEN and NOTIFY connections are killed server-side: both replicas log it,
    reconnect with backoff, keep serving, and changes flow between them again."""
    a, b, database = replicas
    token = token_for("tenant-rep-drop")
    on_b = await subscribe(b, token)
    obj = await create(a, token, name="before")
    # B hears of the create before it changes the object: a local change made first would wait
    # for the notification only HOLD_SECONDS, which a loaded machine can overrun.
    assert [e.version for e in await read(on_b, 1)] == [1]
    await update(b, token, obj.key, name="from-b")  # so that B's sender is connected too
    assert [e.version for e in await read(on_b, 1)] == [2]

    def reconnects(which: str) -> float:
        return (
            REGISTRY.get_sample_value("kiln_object_notify_reconnects_total", {"connection": which})
            or 0.0
        )

    listen_before, notify_before = reconnects("listen"), reconnects("notify")
    admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=database)
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid() "
            "AND (query LIKE 'LISTEN%' OR query LIKE 'SELECT pg_notify%')",
            database,
        )
        assert killed == 4  # a listener and a sender per replica
        deadline = time.monotonic() + 10
        while reconnects("listen") - listen_before < 2:
            assert time.monotonic() < deadline, "the listeners did not notice"
            await asyncio.sleep(0.05)
        while (
            await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%'",
                database,
            )
            < 2
        ):
            assert time.monotonic() < deadline, "the listeners did not come back"
            await asyncio.sleep(0.05)
    finally:
        await admin.close()
    await update(a, token, obj.key, name="after")  # A's sender reconnects to send this
    [event] = await read(on_b, 1)
    assert (event.version, event.object.name) == (3, "after")
    assert reconnects("notify") - notify_before >= 1
    on_b.cancel()
