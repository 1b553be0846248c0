"""CLyman's UDP Events API: parsing, then real datagrams into a real objects service."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple

import grpc
import pytest
from kiln.objects.v1 import objects_pb2, objects_pb2_grpc
from prometheus_client import REGISTRY

from services.objects.objects import ObjectPatch, PropertyPatch
from services.objects.udp import (
    EventCipher,
    ObjectOverwrite,
    PropertyOverwrite,
    Rejected,
    combine,
    parse_datagram,
)
from services.runtime.config import load_service_config
from services.runtime.errors import ConfigError
from tests.conftest import bearer, postgres_reachable, private_postgres_database
from tests.objects.test_events_grpc import create, objects_service, read, subscribe

T = objects_pb2.ObjectEventType
KEY = "5b98880a270698496c36e392"
MOVED = [1.0, 0, 0, 5, 0, 1, 0, 6, 0, 0, 1, 7, 0, 0, 0, 1]
AES_KEY, AES_IV = "00112233445566778899aabbccddeeff" * 2, "0f0e0d0c0b0a09080706050403020100"
TENANT = "tenant-udp"


def wire(**message: Any) -> bytes:
    return json.dumps(message).encode()


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- parsing --------------------------------------------------------------------------------


def test_an_object_overwrite_carries_a_row_major_transform() -> None:
    got = parse_datagram(
        wire(msg_type=1, key=KEY, transform=MOVED, name="n", owner="x", assets=["a"])
    )
    assert got == ObjectOverwrite(KEY, ObjectPatch(strings={"name": "n"}, transform=MOVED))


def test_transform_inputs_are_built_as_over_http() -> None:
    # CLyman's netcat test sends a translation only.
    got = parse_datagram(wire(msg_type=1, key=KEY, translation=[1, 1, 1]))
    assert isinstance(got, ObjectOverwrite)
    assert got.patch.transform == [1, 0, 0, 1, 0, 1, 0, 1, 0, 0, 1, 1, 0, 0, 0, 1]


def test_a_property_overwrite() -> None:
    got = parse_datagram(wire(msg_type=9, key=KEY, frame=100, values=[{"value": 100}]))
    assert got == PropertyOverwrite(KEY, PropertyPatch(frame=100, values=[{"value": 100.0}]))


def test_encrypted_datagrams() -> None:
    cipher = EventCipher.from_hex(AES_KEY, AES_IV)
    sealed = cipher.encrypt(wire(msg_type=1, key=KEY, transform=MOVED))
    assert b"msg_type" not in sealed
    got = parse_datagram(sealed, cipher)
    assert isinstance(got, ObjectOverwrite) and got.patch.transform == MOVED
    with pytest.raises(Rejected) as plain:
        parse_datagram(wire(msg_type=1, key=KEY, transform=MOVED), cipher)
    assert plain.value.reason == "decrypt"
    with pytest.raises(Rejected):
        parse_datagram(EventCipher.from_hex(AES_IV * 2, AES_IV).encrypt(b"{}"), cipher)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "json"),
        (b"\xff\xfe", "json"),
        (b"{", "json"),
        (b"[1]", "json"),
        (wire(key=KEY, transform=MOVED), "msg_type"),
        (wire(msg_type=5, key=KEY), "msg_type"),
        (wire(msg_type=True, key=KEY, transform=MOVED), "msg_type"),
        (wire(msg_type=1, transform=MOVED), "key"),
        (wire(msg_type=1, key="nope", transform=MOVED), "key"),
        (wire(msg_type=1, key=KEY, transform=MOVED[:15]), "transform"),
        (wire(msg_type=1, key=KEY, transform=["a"] * 16), "transform"),
        (wire(msg_type=1, key=KEY), "empty"),
        (wire(msg_type=1, key=KEY, owner="device"), "empty"),
        (wire(msg_type=9, key=KEY), "empty"),
    ],
)
def test_malformed_datagrams_are_rejected_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(Rejected) as rejected:
        parse_datagram(data)
    assert rejected.value.reason == reason


def test_overwrites_coalesce_last_write_wins() -> None:
    first = ObjectPatch(strings={"name": "a", "scene": "s"}, frame=1, transform=[0.0] * 16)
    then = ObjectPatch(strings={"name": "b"}, transform=MOVED, handles={"scale": []})
    assert combine(first, then) == ObjectPatch(
        strings={"name": "b", "scene": "s"}, frame=1, transform=MOVED, handles={"scale": []}
    )
    assert combine(None, then) is then


def test_the_udp_settings(base_env: dict[str, str]) -> None:
    config = load_service_config("objects", base_env)
    assert (config.objects_udp_port, config.objects_subscriber_queue) == (-1, 1024)
    for bad in (
        {"KILN_OBJECTS_UDP_PORT": "0"},  # no tenant: UDP has no credentials to take one from
        {"KILN_OBJECTS_UDP_PORT": "70000", "KILN_OBJECTS_UDP_TENANT": "t"},
        {"KILN_OBJECTS_SUBSCRIBER_QUEUE": "0"},
        {"KILN_OBJECTS_UDP_AES_KEY": AES_KEY},
        {"KILN_OBJECTS_UDP_AES_KEY": "zz" * 32, "KILN_OBJECTS_UDP_AES_IV": AES_IV},
    ):
        with pytest.raises(ConfigError):
            load_service_config("objects", {**base_env, **bad})


# --- a real service -----------------------------------------------------------------------


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Sender:
    def __init__(self, port: int, cipher: EventCipher | None = None) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.port = port
        self._addr = ("127.0.0.1", port)
        self._cipher = cipher

    def send(self, data: bytes) -> None:
        self._sock.sendto(self._cipher.encrypt(data) if self._cipher else data, self._addr)

    def overwrite(self, key: str, transform: list[float], **fields: Any) -> None:
        self.send(wire(msg_type=1, key=key, transform=transform, **fields))

    def close(self) -> None:
        self._sock.close()


class UdpService(NamedTuple):
    stub: objects_pb2_grpc.ObjectServiceStub
    sender: Sender
    target: str


@pytest.fixture
async def udp_service(base_env: dict[str, str], database_url: str) -> AsyncIterator[UdpService]:
    port = free_udp_port()
    async with objects_service(
        base_env,
        database_url,
        KILN_OBJECTS_UDP_PORT=str(port),
        KILN_OBJECTS_UDP_TENANT=TENANT,
        KILN_OBJECTS_UDP_AES_KEY=AES_KEY,
        KILN_OBJECTS_UDP_AES_IV=AES_IV,
    ) as (server, stub):
        sender = Sender(port, EventCipher.from_hex(AES_KEY, AES_IV))
        try:
            yield UdpService(stub, sender, f"127.0.0.1:{server.port}")
        finally:
            sender.close()


async def wait_stored(
    stub: objects_pb2_grpc.ObjectServiceStub,
    token: str,
    key: str,
    done: Callable[[objects_pb2.Object], bool],
) -> objects_pb2.Object:
    """The object once `done` holds for it (UDP writes land after the event)."""
    deadline = time.monotonic() + 5
    while True:
        response = await stub.GetObject(
            objects_pb2.GetObjectRequest(key=key), metadata=bearer(token)
        )
        if done(response.object):
            return response.object
        assert time.monotonic() < deadline, "the overwrite was never stored"
        await asyncio.sleep(0.02)


async def wait_metric(name: str, at_least: float, **labels: str) -> None:
    deadline = time.monotonic() + 5
    while metric(name, **labels) < at_least:
        assert time.monotonic() < deadline, f"{name}{labels} stayed below {at_least}"
        await asyncio.sleep(0.01)


async def drain(call: Any, quiet: float = 0.5) -> list[objects_pb2.ObjectEvent]:
    """Every event until none came for `quiet` seconds."""
    events = []
    while True:
        try:
            events += await read(call, 1, wait=quiet)
        except TimeoutError:
            return events


def moved(x: float) -> list[float]:
    return [1.0, 0, 0, x, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]


async def test_an_overwrite_is_streamed_then_stored(
    udp_service: UdpService, token_for: Callable[..., str]
) -> None:
    stub, sender, _ = udp_service
    token = token_for(TENANT)
    obj = await create(stub, token, name="drone", scene="sky")
    events = await subscribe(stub, token, scene="sky")
    sender.overwrite(obj.key, MOVED, frame=3)
    [event] = await read(events, 1)
    assert event.type == T.OBJECT_EVENT_TYPE_UPDATED and event.version == 2
    assert list(event.object.transform) == MOVED and event.object.frame == 3
    assert event.object.name == "drone"  # the rest of the object, as stored
    assert (await wait_stored(stub, token, obj.key, lambda o: o.frame == 3)).transform == MOVED
    events.cancel()


async def test_a_flood_is_streamed_whole_and_stored_coalesced(
    udp_service: UdpService, token_for: Callable[..., str]
) -> None:
    stub, sender, _ = udp_service
    token = token_for(TENANT)
    obj = await create(stub, token, name="flood")
    events = await subscribe(stub, token)
    writes = metric("kiln_object_udp_writes_total", kind="object")
    count = 300
    for i in range(1, count + 1):
        sender.overwrite(obj.key, moved(i))
        if i % 25 == 0:
            await asyncio.sleep(0)  # let the service read: the kernel buffer is finite
    got = await read(events, count)
    # Every datagram was delivered, in order, each with the next version.
    assert [e.version for e in got] == list(range(2, count + 2))
    assert [e.object.transform[3] for e in got] == list(range(1, count + 1))
    await wait_stored(stub, token, obj.key, lambda o: o.transform[3] == count)
    stored_writes = metric("kiln_object_udp_writes_total", kind="object") - writes
    assert 1 <= stored_writes < count / 2, stored_writes  # coalesced, last write wins
    # The stored version counts every overwrite: the next change continues from it.
    await stub.UpdateObject(
        objects_pb2.UpdateObjectRequest(key=obj.key, update=objects_pb2.Object(name="after")),
        metadata=bearer(token),
    )
    [after] = await read(events, 1)
    assert (after.version, after.object.name, after.object.transform[3]) == (
        count + 2,
        "after",
        count,
    )
    events.cancel()


async def test_api_changes_interleave_with_streamed_overwrites(
    udp_service: UdpService, token_for: Callable[..., str]
) -> None:
    """A change through the API lands on top of what was streamed, and datagrams arriving
    during it follow it: one gap-free sequence of versions, ending at the stored state."""
    stub, sender, _ = udp_service
    token = token_for(TENANT)
    obj = await create(stub, token, name="n0")
    events = await subscribe(stub, token)
    for i in range(1, 61):
        sender.overwrite(obj.key, moved(i))
        if i % 10 == 0:
            await stub.UpdateObject(
                objects_pb2.UpdateObjectRequest(
                    key=obj.key, update=objects_pb2.Object(name=f"n{i}")
                ),
                metadata=bearer(token),
            )
        await asyncio.sleep(0)
    got = await drain(events)
    assert [e.version for e in got] == list(range(2, len(got) + 2))
    assert len(got) == 66  # 60 overwrites and 6 updates
    last = got[-1].object
    assert (last.name, last.transform[3]) == ("n60", 60)
    stored = await wait_stored(stub, token, obj.key, lambda o: o.transform[3] == 60)
    assert stored.name == "n60"
    events.cancel()


async def test_bad_datagrams_are_counted_and_the_listener_carries_on(
    udp_service: UdpService,
    token_for: Callable[..., str],
) -> None:
    stub, sender, _ = udp_service
    token, stranger = token_for(TENANT), token_for("tenant-udp-other")
    theirs = await create(stub, stranger, name="theirs")
    their_events = await subscribe(stub, stranger)
    before = {
        reason: metric("kiln_object_udp_datagrams_rejected_total", reason=reason)
        for reason in ("decrypt", "json", "msg_type", "transform")
    }
    missing = metric("kiln_object_udp_persist_failures_total", reason="not_found")
    plain = Sender(sender.port)  # not encrypted: refused
    plain.overwrite(KEY, MOVED)
    plain.send(b"\x00" * 64)
    plain.close()
    sender.send(b"not json")
    sender.send(wire(msg_type=4, key=KEY))
    sender.send(wire(msg_type=1, key=KEY, transform=[1, 2, 3]))
    # Well formed, but for no object of the UDP tenant: another tenant's object is out of reach.
    sender.overwrite(theirs.key, MOVED)
    sender.overwrite("0" * 24, MOVED)
    await wait_metric("kiln_object_udp_persist_failures_total", missing + 2, reason="not_found")
    for reason, count in (("decrypt", 2), ("json", 1), ("msg_type", 1), ("transform", 1)):
        assert (
            metric("kiln_object_udp_datagrams_rejected_total", reason=reason) - before[reason]
            == count
        ), reason
    mine = await create(stub, token, name="still listening")
    events = await subscribe(stub, token)
    sender.overwrite(mine.key, MOVED)
    [event] = await read(events, 1)
    assert event.object.key == mine.key
    unchanged = await stub.GetObject(
        objects_pb2.GetObjectRequest(key=theirs.key), metadata=bearer(stranger)
    )
    assert list(unchanged.object.transform) != MOVED
    assert await drain(their_events, quiet=0.1) == []
    for call in (events, their_events):
        call.cancel()


async def test_property_overwrites_are_stored(
    udp_service: UdpService,
    token_for: Callable[..., str],
) -> None:
    from google.protobuf import json_format, struct_pb2
    from kiln.objects.v1 import clyman_pb2, clyman_pb2_grpc

    _, sender, target = udp_service
    token = token_for(TENANT)
    channel = grpc.aio.insecure_channel(target)
    clyman = clyman_pb2_grpc.ClymanServiceStub(channel)
    body = struct_pb2.Struct()
    json_format.ParseDict({"properties": [{"name": "speed", "values": [{"value": 1}]}]}, body)
    created = await clyman.CreateProperties(
        clyman_pb2.ClymanBodyRequest(body=body), metadata=bearer(token)
    )
    key = created.properties[0].key
    for value in range(1, 21):
        sender.send(wire(msg_type=9, key=key, frame=value, values=[{"value": value}]))
    deadline = time.monotonic() + 5
    while True:
        got = await clyman.GetProperty(clyman_pb2.ClymanKeyRequest(key=key), metadata=bearer(token))
        prop = got.properties[0]
        if prop.frame == 20:
            break
        assert time.monotonic() < deadline, "the property overwrite was never stored"
        await asyncio.sleep(0.02)
    assert prop.values[0].value == 20
    await channel.close()


@pytest.mark.postgres
async def test_streamed_overwrites_reach_other_replicas(
    base_env: dict[str, str], token_for: Callable[..., str]
) -> None:
    reason = postgres_reachable()
    if reason is not None:
        pytest.skip(reason)
    port = free_udp_port()
    token = token_for(TENANT)
    async with (
        private_postgres_database() as url,
        objects_service(
            base_env, url, KILN_OBJECTS_UDP_PORT=str(port), KILN_OBJECTS_UDP_TENANT=TENANT
        ) as (_, a),
        objects_service(base_env, url) as (_, b),
    ):
        obj = await create(a, token, name="shared")
        on_b = await subscribe(b, token)
        sender = Sender(port)
        try:
            for i in range(1, 11):
                sender.overwrite(obj.key, moved(i))
            got = await drain(on_b)
        finally:
            sender.close()
        # B sees what A stored: versions rise, and the last is the last overwrite.
        versions = [e.version for e in got]
        assert versions == sorted(set(versions)) and versions[-1] == 11
        assert got[-1].object.transform[3] == 10
        on_b.cancel()


@pytest.mark.postgres
async def test_streams_and_changes_on_another_replica_converge(
    base_env: dict[str, str], token_for: Callable[..., str]
) -> None:
    """Replica A streams overwrites while replica B changes the same object: A's writes
    conflict, re-apply on top of B's, and both replicas' subscribers end on the stored state,
    each seeing versions only rise."""
    reason = postgres_reachable()
    if reason is not None:
        pytest.skip(reason)
    port = free_udp_port()
    token = token_for(TENANT)
    conflicts_before = metric("kiln_object_udp_persist_failures_total", reason="conflict")
    async with (
        private_postgres_database() as url,
        objects_service(
            base_env, url, KILN_OBJECTS_UDP_PORT=str(port), KILN_OBJECTS_UDP_TENANT=TENANT
        ) as (_, a),
        objects_service(base_env, url) as (_, b),
    ):
        obj = await create(a, token, name="n0")
        on_a, on_b = await subscribe(a, token), await subscribe(b, token)
        sender = Sender(port)
        try:
            for i in range(1, 81):
                sender.overwrite(obj.key, moved(i))
                if i % 8 == 0:
                    await b.UpdateObject(
                        objects_pb2.UpdateObjectRequest(
                            key=obj.key, update=objects_pb2.Object(name=f"n{i}")
                        ),
                        metadata=bearer(token),
                    )
                await asyncio.sleep(0.001)
        finally:
            sender.close()
        stored = await wait_stored(a, token, obj.key, lambda o: o.transform[3] == 80)
        assert stored.name == "n80"
        for call in (on_a, on_b):
            got = await drain(call)
            versions = [e.version for e in got]
            assert versions == sorted(set(versions)), versions
            assert (got[-1].object.name, got[-1].object.transform[3]) == ("n80", 80)
            call.cancel()
    assert metric("kiln_object_udp_persist_failures_total", reason="conflict") == conflicts_before
