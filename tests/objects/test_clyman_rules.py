"""CLyman's wire rules over real gRPC: lenient parsing, the envelope, errors with msg_type."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from kiln.objects.v1 import clyman_pb2, clyman_pb2_grpc, objects_pb2, objects_pb2_grpc

from services.objects.clyman import draft_object, object_query, parse_object
from services.runtime.status import error_info
from tests.conftest import bearer

SEED_OBJECT = {
    "name": "Test Object 123464",
    "type": "Curve",
    "subtype": "Sphere",
    "owner": "",
    "frame": 0,
    "timestamp": 123456789,
    "translation": [0, 0, 1],
    "quaternion_rotation": [0, 1, 0, 0],
    "euler_rotation": [0, 0, 0],
    "scale": [1, 1, 2],
    "assets": ["Asset_5"],
}


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


def test_wrong_types_are_ignored_not_rejected() -> None:
    strings, patch = parse_object(
        {
            "name": 7,
            "type": "Mesh",
            "frame": "3",
            "timestamp": 1.5,
            "assets": ["a", 2, None],
            "translation": ["x", 1, 2],
            "scale": [2, 2, 2],
        }
    )
    assert strings == {"type": "Mesh"}
    assert patch.frame is None and patch.timestamp is None
    assert patch.add_assets == ["a"]
    assert (
        patch.transform is not None and patch.transform[0] == 2
    )  # scale used, bad translation not


def test_integral_floats_count_as_ints_and_transform_only_when_sent() -> None:
    _, patch = parse_object({"frame": 4.0, "name": "n"})
    assert patch.frame == 4 and patch.transform is None
    assert draft_object({"owner": "sneaky"}).owner == ""  # only a lock sets the owner


def test_query_parse_applies_the_frame_rule() -> None:
    assert object_query({"name": "n"}).frame is None  # only objects without a frame
    assert object_query({"frame": 0}).frame == 0
    assert object_query({"frame": -5}).frame == -5  # takes no part


@pytest.fixture
def clyman(objects_channel: grpc.aio.Channel) -> clyman_pb2_grpc.ClymanServiceStub:
    return clyman_pb2_grpc.ClymanServiceStub(objects_channel)


async def test_seed_create_then_get(
    clyman: clyman_pb2_grpc.ClymanServiceStub, token_for: Callable[..., str]
) -> None:
    auth = bearer(token_for("tenant-clyman"))
    created = await clyman.CreateObjects(
        clyman_pb2.ClymanBodyRequest(
            body=struct({"msg_type": 0, "objects": [SEED_OBJECT], "transaction_id": "tx-1"})
        ),
        metadata=auth,
    )
    assert (created.msg_type, created.err_code, created.num_records) == (0, 100, 1)
    assert created.transaction_id == "tx-1"
    key = created.objects[0].key
    got = await clyman.GetObject(clyman_pb2.ClymanKeyRequest(key=key), metadata=auth)
    as_json = json_format.MessageToDict(got, preserving_proto_field_name=True)
    obj = as_json["objects"][0]
    assert list(got.objects[0].transform) == [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 2, 1, 0, 0, 0, 1]
    assert obj["key"] == key and obj["frame"] == 0 and obj["timestamp"] == 123456789
    assert "owner" not in obj  # strings only when non-empty
    assert obj["assets"] == ["Asset_5"]


async def test_errors_carry_msg_type_and_transaction(
    clyman: clyman_pb2_grpc.ClymanServiceStub, token_for: Callable[..., str]
) -> None:
    auth = bearer(token_for("tenant-clyman"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await clyman.UpdateObject(
            clyman_pb2.ClymanKeyedBodyRequest(
                key="0" * 24, body=struct({"objects": [{"name": "x"}], "transaction_id": "t9"})
            ),
            metadata=auth,
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(err.value)
    assert info is not None
    assert (info.metadata["msg_type"], info.metadata["transaction_id"]) == ("1", "t9")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await clyman.CreateObjects(
            clyman_pb2.ClymanBodyRequest(body=struct({"objects": "not a list"})), metadata=auth
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_idiomatic_service_shares_the_implementation(
    objects_channel: grpc.aio.Channel,
    clyman: clyman_pb2_grpc.ClymanServiceStub,
    token_for: Callable[..., str],
) -> None:
    auth = bearer(token_for("tenant-shared"))
    stub = objects_pb2_grpc.ObjectServiceStub(objects_channel)
    created = await stub.CreateObjects(
        objects_pb2.CreateObjectsRequest(
            objects=[
                objects_pb2.ObjectInput(
                    object=objects_pb2.Object(name="chair", scene="room"),
                    placement=objects_pb2.TransformInput(translation=[0, 0, 1], scale=[1, 1, 2]),
                )
            ]
        ),
        metadata=auth,
    )
    key = created.objects[0].key
    seen = await clyman.GetObject(clyman_pb2.ClymanKeyRequest(key=key), metadata=auth)
    assert seen.objects[0].name == "chair"
    assert list(seen.objects[0].transform) == [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 2, 1, 0, 0, 0, 1]
    locked = await stub.LockObject(
        objects_pb2.LockObjectRequest(key=key, device="d1", lock_ttl_seconds=60), metadata=auth
    )
    assert locked.object.owner == "d1" and locked.object.HasField("lock_expire_time")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await clyman.LockObject(clyman_pb2.ClymanLockRequest(key=key, device="d2"), metadata=auth)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(err.value)
    assert info is not None and info.reason == "ERROR_REASON_LOCK_HELD"
    found = await stub.QueryObjects(
        objects_pb2.QueryObjectsRequest(filters=[objects_pb2.ObjectFilter(scene="room")]),
        metadata=auth,
    )
    assert [o.key for o in found.objects] == [key]
    # Another tenant sees nothing of it.
    other = bearer(token_for("tenant-elsewhere"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetObject(objects_pb2.GetObjectRequest(key=key), metadata=other)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
