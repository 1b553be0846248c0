"""What a source-API module contributes to the gateway."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.errors import ErrorShapes
from gateway.routing import Endpoint


def _no_shapes(shapes: ErrorShapes) -> None:
    del shapes


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
