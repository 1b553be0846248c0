"""Per-call context: the caller and the request id, visible to logs and domain code."""

from __future__ import annotations

import contextvars

from services.runtime.auth import Principal
from services.runtime.errors import MissingCredentials

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
