"""The gateway's ASGI app: `build_app(config)`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from gateway import ops
from gateway.apis import DEFAULT_APIS, ApiModule
from gateway.core import Gateway, Limits
from gateway.errors import ErrorShapes
from gateway.metrics import GatewayMetrics
from gateway.middleware import ObservabilityMiddleware, http_exception_handler
from gateway.routing import build_routes
from gateway.transcoding import http_bindings, load_descriptor_set, transcoded_endpoints
from services.runtime.config import GatewayConfig
from services.runtime.errors import ConfigError


def build_app(
    config: GatewayConfig,
    *,
    apis: Sequence[ApiModule] = DEFAULT_APIS,
    limits: Limits | None = None,
    shapes: ErrorShapes | None = None,
) -> Starlette:
    """Builds the HTTP/JSON gateway for `config`.

    Routes come from, in precedence order: `/health` and `/metrics`; each API module's
    explicit endpoints (`apis`, by default OAuth2 tokens and Scenario's multipart upload);
    then every `google.api.http` binding in `config.descriptor_set`. A bad descriptor set or
    annotation raises ConfigError here, before anything listens.

    Nothing opens until the app's lifespan starts: it loads the JWT keys, migrates the client
    store, creates the demo client, and opens one gRPC channel per service; shutdown closes
    them. `app.state.gateway` is the `gateway.core.Gateway` holding those resources.
    """
    shapes = shapes if shapes is not None else ErrorShapes()
    gateway = Gateway(
        config, shapes=shapes, metrics=GatewayMetrics(), limits=limits or Limits.from_config(config)
    )
    for api in apis:
        missing = [service for service in api.services if service not in config.targets]
        if missing:
            raise ConfigError(f"the {api.name} API needs targets for: {', '.join(missing)}")
        api.register_shapes(shapes)
    bindings = http_bindings(load_descriptor_set(config.descriptor_set))
    routes = build_routes(
        gateway,
        [
            *ops.endpoints(),
            *(each for api in apis for each in api.endpoints()),
            *transcoded_endpoints(bindings, config.targets),
        ],
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        del app
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = Starlette(
        routes=routes,
        middleware=[Middleware(ObservabilityMiddleware, gateway=gateway)],
        exception_handlers={HTTPException: http_exception_handler(gateway)},
        lifespan=lifespan,
    )
    # Templates accept a trailing slash themselves; a redirect would drop a POST body.
    app.router.redirect_slashes = False
    app.state.gateway = gateway
    return app
