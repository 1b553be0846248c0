"""The event hub on its own: fan-out, bounded queues, order per object, the NOTIFY payloads."""

from __future__ import annotations

import asyncio

import pytest
from kiln.objects.v1 import objects_pb2
from prometheus_client import REGISTRY

from services.objects.events import (
    NOTIFY_LIMIT,
    EventHub,
    Reference,
    _deleted_stub,
    decode_notification,
    encode_notification,
)
from services.runtime.errors import FellBehind

T = objects_pb2.ObjectEventType


def event(
    key: str, version: int, kind: int = T.OBJECT_EVENT_TYPE_UPDATED, scene: str = "s", **fields: str
) -> objects_pb2.ObjectEvent:
    return objects_pb2.ObjectEvent(
        type=kind,  # type: ignore[arg-type]
        object=objects_pb2.Object(key=key, scene=scene, **fields),
        version=version,
    )


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def take(stream: object, count: int) -> list[objects_pb2.ObjectEvent]:
    it = aiter(stream)  # type: ignore[call-overload]
    return [await asyncio.wait_for(anext(it), 2) for _ in range(count)]


async def test_subscribing_registers_at_once() -> None:
    """A subscription counts from the call, not from its first read: the servicer sends its
    initial metadata in between, and clients rely on it meaning 'registered'."""
    hub = EventHub()
    stream = hub.subscribe("t")
    assert hub.subscriber_count == 1
    await hub.publish("t", event("a", 1))
    assert [e.version for e in await take(stream, 1)] == [1]
    await stream.aclose()  # type: ignore[attr-defined]
    assert hub.subscriber_count == 0


async def test_an_abandoned_subscription_unregisters() -> None:
    hub = EventHub()
    hub.subscribe("t")  # never read, dropped at once
    assert hub.subscriber_count == 0


async def test_tenants_and_scenes_are_kept_apart() -> None:
    hub = EventHub()
    all_scenes, scene_b, other_tenant = (
        hub.subscribe("t"),
        hub.subscribe("t", "b"),
        hub.subscribe("u"),
    )
    await hub.publish("t", event("k1", 1, scene="a"))
    await hub.publish("t", event("k2", 1, scene="b"))
    await hub.publish("u", event("k3", 1, scene="b"))
    assert [e.object.key for e in await take(all_scenes, 2)] == ["k1", "k2"]
    assert [e.object.key for e in await take(scene_b, 1)] == ["k2"]
    assert [e.object.key for e in await take(other_tenant, 1)] == ["k3"]
    await hub.publish("t", event("k4", 1, scene="b"))
    assert [e.object.key for e in await take(scene_b, 1)] == ["k4"]


async def test_order_per_object_drops_stale_and_duplicate_versions() -> None:
    hub = EventHub()
    stream = hub.subscribe("t")
    before = metric("kiln_object_events_superseded_total")
    assert hub.deliver("t", event("a", 2))
    assert not hub.deliver("t", event("a", 1))  # overtaken by 2
    assert not hub.deliver("t", event("a", 2))  # a duplicate (a NOTIFY sent twice)
    assert hub.deliver("t", event("b", 1))  # another object has its own order
    # A delete is the next version, and is delivered once; nothing after it.
    assert hub.deliver("t", event("a", 3, T.OBJECT_EVENT_TYPE_DELETED))
    assert not hub.deliver("t", event("a", 3, T.OBJECT_EVENT_TYPE_DELETED))
    assert not hub.deliver("t", event("a", 4))
    assert hub.deliver("u", event("a", 1))  # another tenant's objects have their own order
    got = await take(stream, 3)
    assert [(e.object.key, e.version, e.type) for e in got] == [
        ("a", 2, T.OBJECT_EVENT_TYPE_UPDATED),
        ("b", 1, T.OBJECT_EVENT_TYPE_UPDATED),
        ("a", 3, T.OBJECT_EVENT_TYPE_DELETED),
    ]
    assert metric("kiln_object_events_superseded_total") - before == 4
    assert hub.last_version("t", "b") == 1 and hub.last_version("t", "zzz") is None


async def test_an_event_waits_for_the_one_before_it() -> None:
    """Another replica's notification may arrive after the change that follows it: the later
    event waits for it (briefly), so the subscriber sees both, in order."""
    hub = EventHub()
    stream = hub.subscribe("t")
    before = metric("kiln_object_events_held_total", outcome="in_order")
    hub.deliver("t", event("a", 1, T.OBJECT_EVENT_TYPE_CREATED))
    hub.deliver("t", event("a", 3))  # made on this replica on top of 2, which is in flight
    hub.deliver("t", event("a", 4))
    assert hub.last_version("t", "a") == 4  # known, though not delivered yet
    hub.deliver("t", event("a", 2))
    assert [e.version for e in await take(stream, 4)] == [1, 2, 3, 4]
    assert metric("kiln_object_events_held_total", outcome="in_order") - before == 2
    # A coalesced UDP write names what it was written over, and does not wait.
    hub.deliver("t", event("a", 9), prev=4)
    assert [e.version for e in await take(stream, 1)] == [9]


async def test_a_lost_predecessor_is_waited_for_only_briefly() -> None:
    hub = EventHub(hold_seconds=0.05)
    stream = hub.subscribe("t")
    before = metric("kiln_object_events_held_total", outcome="gap")
    hub.deliver("t", event("a", 1))
    hub.deliver("t", event("a", 3))
    hub.deliver("t", event("a", 3, T.OBJECT_EVENT_TYPE_DELETED))  # waits behind 3
    assert [e.version for e in await take(stream, 1)] == [1]
    started = asyncio.get_running_loop().time()
    got = await take(stream, 2)
    assert [(e.version, e.type) for e in got] == [
        (3, T.OBJECT_EVENT_TYPE_UPDATED),
        (3, T.OBJECT_EVENT_TYPE_DELETED),
    ]
    assert asyncio.get_running_loop().time() - started < 1
    assert metric("kiln_object_events_held_total", outcome="gap") - before == 2
    assert not hub.deliver("t", event("a", 2))  # the straggler, too late: superseded


async def test_the_order_memory_is_bounded() -> None:
    hub = EventHub(recent=2)
    for key in "abc":
        hub.deliver("t", event(key, 5))
    assert hub.last_version("t", "a") is None  # forgotten, least recent first
    assert hub.last_version("t", "c") == 5


async def test_a_full_queue_drops_only_that_subscriber() -> None:
    hub = EventHub(queue_size=4)
    slow, fast = hub.subscribe("t"), hub.subscribe("t")
    before = metric("kiln_object_subscribers_dropped_total")
    received = []

    async def read_all() -> None:
        async for e in fast:
            received.append(e.version)
            if e.version == 50:
                return

    reader = asyncio.create_task(read_all())
    for version in range(1, 51):
        await hub.publish("t", event("k", version))  # never waits on `slow`
        await asyncio.sleep(0)
    await asyncio.wait_for(reader, 2)
    assert received == list(range(1, 51))
    assert metric("kiln_object_subscribers_dropped_total") - before == 1
    assert hub.subscriber_count == 1  # `slow` was dropped, `fast` is still subscribed
    with pytest.raises(FellBehind):
        await anext(aiter(slow))


async def test_close_ends_streams_cleanly() -> None:
    hub = EventHub(queue_size=1)
    stream = hub.subscribe("t")
    await hub.publish("t", event("k", 1))  # the queue is full; closing still ends it
    await hub.close()
    assert [e async for e in stream] == []
    assert hub.subscriber_count == 0


async def test_sqlite_needs_no_relay() -> None:
    hub = EventHub()
    await hub.start("sqlite+aiosqlite:///x.db")
    assert hub.relay_connection is None
    await hub.close()


def test_a_queue_needs_room() -> None:
    with pytest.raises(ValueError):
        EventHub(queue_size=0)


# --- NOTIFY payloads --------------------------------------------------------------------


def test_small_events_travel_inline() -> None:
    sent = event("5b98880a270698496c36e392", 7, name="chair")
    sent.time.FromSeconds(1_700_000_000)
    payload = encode_notification("origin1", "tenant-ä", sent)
    assert len(payload.encode()) < NOTIFY_LIMIT and payload.isascii()
    assert decode_notification(payload) == ("origin1", "tenant-ä", 6, sent)
    # A coalesced UDP write follows the version it was written over.
    assert decode_notification(encode_notification("o", "t", sent, prev=2))[2] == 2


def test_large_events_travel_as_references() -> None:
    sent = event("5b98880a270698496c36e392", 9, scene="big", name="x" * 9000)
    sent.time.FromNanoseconds(1_700_000_000_123_456_789)
    payload = encode_notification("o", "t", sent)
    assert len(payload.encode()) < NOTIFY_LIMIT
    _, _, prev, got = decode_notification(payload)
    assert prev == 8
    assert got == Reference(
        "t",
        "5b98880a270698496c36e392",
        9,
        T.OBJECT_EVENT_TYPE_UPDATED,
        "big",
        1_700_000_000_123_456_789,
    )
    # A deleted object cannot be re-read: its delete keeps key, scene, version and time.
    stub = _deleted_stub(
        Reference("t", "k", 3, T.OBJECT_EVENT_TYPE_DELETED, "big", 1_700_000_000_123_456_789)
    )
    assert (stub.type, stub.object.key, stub.object.scene, stub.version) == (
        T.OBJECT_EVENT_TYPE_DELETED,
        "k",
        "big",
        3,
    )
    assert stub.time.ToNanoseconds() == 1_700_000_000_123_456_789


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "{",
        "[]",
        '{"o":"x"}',
        '{"o":1,"t":"t","e":""}',
        '{"o":"x","t":"t","e":"!!"}',
        '{"o":"x","t":"t","r":[1]}',
        '{"o":"x","t":"t","e":"AAAA"}',
    ],
)
def test_foreign_payloads_are_refused(payload: str) -> None:
    with pytest.raises(ValueError):
        decode_notification(payload)
