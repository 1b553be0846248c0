"""Per-call context: the caller and the request id, visible to logs and domain code."""

from __future__ import annotations

import contextvars
from collections.abc import Iterable

from services.runtime.auth import Principal
from services.runtime.errors import MissingCredentials, MissingField

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
principal_var: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "principal", default=None
)


def current_principal() -> Principal:
    """The verified caller of the current RPC; the auth interceptor sets it before any handler."""
    principal = principal_var.get()
    if principal is None:
        raise MissingCredentials("no authenticated caller in this context")
    return principal


def current_tenant() -> str:
    return current_principal().tenant


#: The header a worker names a job's tenant in, on the few calls it makes for a job.
TENANT_HEADER = "x-kiln-tenant"


def acting_tenant(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The tenant a call acts for: the caller's own, or, for a worker token, the job's tenant
    the worker names in `x-kiln-tenant` (workers run every tenant's jobs; their own tenant
    owns nothing). Only RPCs meant for workers use this; all others keep `current_tenant`."""
    principal = current_principal()
    if not principal.is_worker:
        return principal.tenant
    for key, value in metadata or ():
        if key == TENANT_HEADER and value:
            return value.decode() if isinstance(value, bytes) else value
    raise MissingField(f"a worker must name the job's tenant in {TENANT_HEADER}", field="tenant")
