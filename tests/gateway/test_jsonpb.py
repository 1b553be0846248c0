"""The gateway's proto3 JSON is canonical: one message prints one way, in the order Envoy's
transcoder prints it (fields in declaration order, map and Struct keys sorted)."""

from __future__ import annotations

from google.protobuf import struct_pb2, timestamp_pb2
from kiln.objects.v1 import assets_pb2

from gateway.jsonpb import dumps, message_to_json


def test_fields_print_in_declaration_order_whatever_is_set() -> None:
    asset = assets_pb2.Asset(kind="image", size=7)  # set fields beside ones at their default
    asset.created_at.seconds = 1
    keys = list(message_to_json(asset))
    # metadata (a message, unset) has presence, so it is left out; the rest keep their order.
    assert keys == ["id", "url", "mimeType", "kind", "size", "sha256", "createdAt"]


def test_struct_keys_are_sorted_at_every_depth() -> None:
    metadata = struct_pb2.Struct()
    metadata.update({"zeta": 1, "alpha": {"y": 2, "b": [{"d": 1, "c": 2}]}, "mid": "x"})
    printed = dumps(message_to_json(assets_pb2.Asset(metadata=metadata))["metadata"])
    assert printed == b'{"alpha":{"b":[{"c":2,"d":1}],"y":2},"mid":"x","zeta":1}'


def test_the_same_message_built_two_ways_prints_the_same_bytes() -> None:
    first, second = assets_pb2.Asset(), assets_pb2.Asset()
    first.metadata.update({"seed": "42", "name": "Kiln", "prompt": "a kiln"})
    second.metadata.update({"prompt": "a kiln", "name": "Kiln", "seed": "42"})
    first.created_at.CopyFrom(timestamp_pb2.Timestamp(seconds=1))
    second.created_at.CopyFrom(timestamp_pb2.Timestamp(seconds=1))
    assert dumps(message_to_json(first)) == dumps(message_to_json(second))
    assert message_to_json(first)["createdAt"] == "1970-01-01T00:00:01Z"
