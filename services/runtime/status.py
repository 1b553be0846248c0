"""Kiln errors as gRPC statuses carrying `google.rpc.ErrorInfo` (AIP-193)."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.runtime import errors

DOMAIN = "kiln.dev"

_CODES: tuple[tuple[type[errors.KilnError], grpc.StatusCode], ...] = (
    (errors.AuthError, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.StorageError, grpc.StatusCode.UNAVAILABLE),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
)

#: The Kiln error a downstream status becomes, so a service passing on another's refusal (an
#: unknown asset, a bad field) keeps its code, reason and field.
_FROM_CODES: dict[grpc.StatusCode, type[errors.KilnError]] = {
    grpc.StatusCode.UNAUTHENTICATED: errors.AuthError,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.Unavailable,
}


def grpc_code_for(error: errors.KilnError) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL


def to_status(error: errors.KilnError) -> grpc.Status:
    """Builds the status a servicer aborts with; the detail names reason and field."""
    code = grpc_code_for(error)
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN)
    info.metadata.update(error.metadata)
    if error.field:
        info.metadata["field"] = error.field
    detail = any_pb2.Any()
    detail.Pack(info, deterministic=True)  # one encoding per error: maps sorted by key
    status = status_pb2.Status(
        code=getattr(code_pb2, code.name), message=error.message, details=[detail]
    )
    return rpc_status.to_status(status)


def error_info(
    call_error: grpc.aio.AioRpcError | grpc.RpcError,
) -> error_details_pb2.ErrorInfo | None:
    """Reads the ErrorInfo detail back out of a failed call, if it carries one."""
    status = rpc_status.from_call(call_error)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def from_call(call_error: grpc.aio.AioRpcError) -> errors.KilnError:
    """The Kiln error that another service's failed call stands for (INTERNAL for codes a
    caller cannot act on)."""
    cls = _FROM_CODES.get(call_error.code(), errors.KilnError)
    info = error_info(call_error)
    metadata = dict(info.metadata) if info is not None else {}
    field = metadata.pop("field", None)
    error = cls(call_error.details() or call_error.code().name, field=field, metadata=metadata)
    if info is not None and info.reason:
        error.reason = info.reason
    return error
