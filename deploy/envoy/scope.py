"""What the edge transcodes, and the descriptor set Envoy needs for it.

`convert_grpc_status` writes a failed call as grpc-gateway's `{"code", "message", "details"}`,
which is the gateway's default error shape, so the edge can serve an annotated service exactly
as the gateway does only when the gateway renders that service's errors in the default shape.
The decision is read from the gateway's own API modules, never listed by hand.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor
from google.rpc import error_details_pb2, status_pb2

from gateway.apis import DEFAULT_APIS
from gateway.errors import ErrorShapes
from gateway.transcoding import HttpBinding


def _sample_path(binding: HttpBinding) -> str:
    """A concrete path the binding matches (each variable one segment), for looking up the
    error shape registered for its prefix."""
    path = binding.template.template
    while "{" in path:
        start = path.index("{")
        end = path.index("}", start)
        path = f"{path[:start]}x{path[end + 1 :]}"
    return path


def edge_services(bindings: Iterable[HttpBinding]) -> tuple[list[str], dict[str, str]]:
    """(proto services the edge transcodes, {proto service: why it is left to the gateway}).

    A service whose routes the gateway answers in an API's own error shape (CLyman's `err_code`
    envelope) stays on the gateway, or its clients would see another error format at the edge.
    """
    shapes = ErrorShapes()
    for api in DEFAULT_APIS:
        api.register_shapes(shapes)
    services: dict[str, bool] = {}
    for binding in bindings:
        shape = shapes.for_request(_sample_path(binding), binding.rpc.proto_service)
        default = shape is shapes.default
        service = binding.rpc.proto_service
        services[service] = services.get(service, True) and default
    edge = sorted(name for name, ok in services.items() if ok)
    kept = {
        name: "the gateway answers its errors in an API's own shape"
        for name, ok in sorted(services.items())
        if not ok
    }
    return edge, kept


def _add_file(out: descriptor_pb2.FileDescriptorSet, file: FileDescriptor, have: set[str]) -> None:
    if file.name in have:
        return
    for dependency in file.dependencies:
        _add_file(out, dependency, have)
    out.file.append(descriptor_pb2.FileDescriptorProto.FromString(file.serialized_pb))
    have.add(file.name)


def edge_descriptor_set(files: descriptor_pb2.FileDescriptorSet) -> bytes:
    """The descriptor set Envoy transcodes with, serialized deterministically.

    Source info is dropped (Envoy never reads comments; it would only grow the ConfigMap), and
    google.rpc.Status and the error details the services attach are added, since the
    transcoder can only print a `grpc-status-details-bin` whose types it can resolve.
    """
    out = descriptor_pb2.FileDescriptorSet()
    have: set[str] = set()
    for file in files.file:
        copy = descriptor_pb2.FileDescriptorProto()
        copy.CopyFrom(file)
        copy.ClearField("source_code_info")
        out.file.append(copy)
        have.add(file.name)
    for extra in (status_pb2.DESCRIPTOR, error_details_pb2.DESCRIPTOR):
        _add_file(out, extra, have)
    return out.SerializeToString(deterministic=True)
