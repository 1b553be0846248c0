"""Calls from one Kiln service to another, on behalf of the caller.

A service that needs another's data for a request (the archive service reading the caller's
assets, queueing the caller's job) passes the caller's own token on: the other service checks
it and scopes the call to the same tenant, so no service can reach further than its caller.
A refusal downstream comes back as the same Kiln error (code, reason, field).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from services.runtime.errors import MissingCredentials
from services.runtime.status import from_call

R = TypeVar("R")

#: Channel options for calls to a Kiln service (from services, workers and the gateway):
#: reconnect within seconds, not minutes; and spread calls over every address the target
#: resolves to (a headless Kubernetes Service names each replica), where gRPC's default,
#: pick_first, would send one process's every call to one replica. Servers end connections
#: after MAX_CONNECTION_AGE_MS (services.runtime.server), so clients resolve again and new
#: replicas get their share.
PEER_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.lb_policy_name", "round_robin"),
]


def caller_credentials(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str], ...]:
    """The caller's authorization metadata, to send on with calls made for it."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return (("authorization", str(value)),)
    raise MissingCredentials("the call carried no credentials to act on")


async def call_peer(
    method: Callable[..., Awaitable[R]],
    request: Any,
    credentials: tuple[tuple[str, str], ...],
    *,
    deadline_seconds: float = 30.0,
) -> R:
    """One call to another service; its failure raised as the Kiln error it stands for."""
    try:
        return await method(request, metadata=credentials, timeout=deadline_seconds)
    except grpc.aio.AioRpcError as err:
        raise from_call(err) from None
