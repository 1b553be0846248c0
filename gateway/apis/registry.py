"""What a source-API module contributes to the gateway."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.errors import ErrorShapes
from gateway.routing import Endpoint
from services.runtime.config import GatewayConfig


def _no_shapes(shapes: ErrorShapes) -> None:
    del shapes


def _credentials_required(config: GatewayConfig) -> str:
    del config
    return ""


@dataclass(frozen=True)
class ApiModule:
    """One source API's adapters (endpoints transcoding cannot express) and error shapes."""

    name: str
    endpoints: Callable[[], Sequence[Endpoint]]
    """Its explicit endpoints; they take precedence over annotated routes on the same path."""
    register_shapes: Callable[[ErrorShapes], None] = _no_shapes
    """Registers its error-body shape for its paths or proto services."""
    services: tuple[str, ...] = ()
    """The Kiln services its endpoints call; each needs a target."""
    proto_services: tuple[str, ...] = ()
    """Full names of the proto services whose annotated routes belong to this API, beside
    its explicit endpoints (`kiln.objects.v1.ClymanService`)."""
    anonymous_tenant: Callable[[GatewayConfig], str] = _credentials_required
    """The tenant a request without credentials acts as on this API's routes (its explicit
    endpoints that are not public, and every route of `proto_services`); "" requires
    credentials, the default."""
