"""The gateway's ASGI app: `build_app(config)`."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterable, Sequence
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
from gateway.routing import Endpoint, build_routes
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

    Routes come from, in precedence order for one method on one template: `/health` and
    `/metrics`; each API module's explicit endpoints (`apis`, by default OAuth2 tokens,
    Scenario's multipart upload and CLyman's event stream); then every `google.api.http`
    binding in `config.descriptor_set`. Where different templates match one path, the most
    specific wins (a literal segment beats a variable), whatever their source or order. An
    API module with an anonymous tenant opens its own endpoints and the annotated routes of
    its proto services to requests without credentials. A bad descriptor set or annotation
    raises ConfigError here, before anything listens.

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
            *_api_endpoints(config, apis),
            *_claimed(config, apis, transcoded_endpoints(bindings, config.targets)),
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


def _api_endpoints(config: GatewayConfig, apis: Sequence[ApiModule]) -> list[Endpoint]:
    """Every API module's explicit endpoints, open to its anonymous tenant where it has one."""
    found: list[Endpoint] = []
    for api in apis:
        tenant = api.anonymous_tenant(config)
        found.extend(
            dataclasses.replace(each, anonymous_tenant=tenant)
            if tenant and not each.public
            else each
            for each in api.endpoints()
        )
    return found


def _claimed(
    config: GatewayConfig, apis: Sequence[ApiModule], endpoints: Iterable[Endpoint]
) -> list[Endpoint]:
    """Transcoded endpoints, open to the anonymous tenant of the API claiming their service.

    The descriptor set knows nothing of credentials: an API module claims annotated routes by
    proto service (`proto_services`), and its anonymous tenant applies to them too.
    """
    by_service = {
        service: tenant
        for api in apis
        if (tenant := api.anonymous_tenant(config))
        for service in api.proto_services
    }
    return [
        dataclasses.replace(each, anonymous_tenant=by_service[each.service])
        if each.service in by_service
        else each
        for each in endpoints
    ]
