"""Routes of the gateway: one route type for transcoded methods, adapters and operations.

Every route goes through the same steps: match the raw path against a google.api.http
template (a trailing slash accepted), authenticate unless the endpoint is public, run the
handler, and render any failure in the error shape registered for the path or service.
Endpoints whose templates compile to the same pattern share one route, so a path that
exists with another method answers 405 with `Allow`, not 404.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import quote

import grpc
from google.protobuf.message import Message
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import Message as AsgiMessage
from starlette.types import Receive, Scope, Send

from gateway._template import PathTemplate, parse_template
from gateway.errors import ApiError
from gateway.identity import Caller
from gateway.upstream import service_key
from services.runtime.context import principal_var

M = TypeVar("M", bound=Message)

if TYPE_CHECKING:
    from gateway.core import Gateway

log = logging.getLogger("kiln.gateway")

#: Scope keys the gateway sets for its middleware (metrics, access log).
SCOPE_ROUTE = "kiln.route"
SCOPE_REQUEST_ID = "kiln.request_id"
SCOPE_TENANT = "kiln.tenant"

Handler = Callable[["RequestContext"], Awaitable[Response]]


@dataclass(frozen=True)
class Endpoint:
    """One HTTP method on one path template, and what answers it."""

    method: str
    template: PathTemplate
    handler: Handler
    public: bool = False
    """No authentication (health, metrics, the token endpoints)."""
    service: str | None = None
    """Full name of the proto service it calls, for error shapes registered per service."""
    name: str = ""
    """For logs: the RPC or adapter behind it."""
    anonymous_tenant: str = ""
    """When set, a request without an Authorization header acts as this tenant (an API whose
    documented clients send no credentials, e.g. CLyman's); credentials sent are checked."""


def endpoint(
    method: str,
    template: str,
    handler: Handler,
    *,
    public: bool = False,
    service: str | None = None,
    name: str = "",
    anonymous_tenant: str = "",
) -> Endpoint:
    """An Endpoint from a template string (`/v1/assets/{asset_id}`)."""
    return Endpoint(
        method=method.upper(),
        template=parse_template(template),
        handler=handler,
        public=public,
        service=service,
        name=name or template,
        anonymous_tenant=anonymous_tenant,
    )


@dataclass
class RequestContext:
    """What a handler gets: the request, its caller and the gateway's shared resources."""

    request: Request
    gateway: Gateway
    endpoint: Endpoint
    path_params: Mapping[str, str]
    request_id: str
    caller: Caller | None = None

    def require_caller(self) -> Caller:
        """The authenticated caller; only public endpoints have none."""
        if self.caller is None:
            raise RuntimeError(f"{self.endpoint.name} is public and has no caller")
        return self.caller

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC metadata for upstream calls: the caller's token and the request id."""
        pairs = [("x-request-id", self.request_id)]
        if self.caller is not None:
            pairs.append(("authorization", f"Bearer {self.caller.token}"))
        return tuple(pairs)

    async def call(
        self,
        service: str,
        method: str,
        request: Message,
        reply: type[M],
        *,
        deadline: float | None = None,
    ) -> M:
        """One unary call to a Kiln service (`jobs`, `render`; `method` its full path) with
        the caller's metadata; `deadline` defaults to the gateway's call timeout."""
        raw = await self.gateway.upstreams.unary(
            service,
            method,
            request.SerializeToString(),
            metadata=self.metadata(),
            deadline=deadline if deadline is not None else self.gateway.call_timeout,
        )
        return reply.FromString(raw)

    async def client_stream(
        self,
        service: str,
        method: str,
        messages: AsyncIterator[Message],
        reply: type[M],
        *,
        deadline: float | None = None,
    ) -> M:
        """One client-streaming call (an upload: a header message, then chunks) to a Kiln
        service with the caller's metadata, counted and timed like every upstream call."""
        upstreams = self.gateway.upstreams
        with upstreams.track(method, "client_stream"):
            call = upstreams.channel(service).stream_unary(
                method,
                request_serializer=lambda message: message.SerializeToString(),
                response_deserializer=reply.FromString,
            )
            answer: M = await call(
                messages,
                metadata=self.metadata(),
                timeout=deadline if deadline is not None else self.gateway.call_timeout,
            )
        return answer

    async def read_body(self, limit: int | None = None) -> bytes:
        """The whole body, refused with 413 past `limit` (default: max_body_bytes)."""
        limit = self.gateway.config.max_body_bytes if limit is None else limit
        declared = self.request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise body_too_large(limit)
        chunks: list[bytes] = []
        size = 0
        async for chunk in self.request.stream():
            size += len(chunk)
            if size > limit:
                raise body_too_large(limit)
            chunks.append(chunk)
        return b"".join(chunks)


def body_too_large(limit: int) -> ApiError:
    """413 for a body past a configured limit."""
    return ApiError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"request body exceeds the limit of {limit} bytes",
        reason="ERROR_REASON_TOO_LARGE",
        metadata={"limit": str(limit)},
        http_status=413,
    )


async def limited_request(request: Request, limit: int) -> Request:
    """The request with a body that answers 413 past `limit`, however it is framed."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise body_too_large(limit)
    received = 0
    upstream = request.receive

    async def receive() -> AsgiMessage:
        nonlocal received
        message = await upstream()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise body_too_large(limit)
        return message

    return Request(request.scope, receive)


def route_path(scope: Scope) -> str:
    """The request path as sent (percent-encoded), without the app's root path."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else quote(scope["path"])
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


def request_id_of(scope: Scope) -> str:
    """The request id the middleware chose (or a fresh one outside the middleware)."""
    request_id = scope.get(SCOPE_REQUEST_ID)
    if not isinstance(request_id, str) or not request_id:
        request_id = scope[SCOPE_REQUEST_ID] = uuid.uuid4().hex
    return request_id


class GatewayRoute(BaseRoute):
    """Endpoints sharing one path pattern, each for its own HTTP method."""

    def __init__(self, gateway: Gateway, endpoints: Sequence[Endpoint]) -> None:
        self.gateway = gateway
        self.template = endpoints[0].template
        self.endpoints = {e.method: e for e in endpoints}

    def __repr__(self) -> str:
        return f"GatewayRoute({self.template.template!r}, {sorted(self.endpoints)})"

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        found = self.template.regex.fullmatch(route_path(scope))
        if found is None:
            return Match.NONE, {}
        child = {"endpoint": self}
        if scope["method"] in self.endpoints:
            return Match.FULL, child
        return Match.PARTIAL, child

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        chosen = self.endpoints.get(scope["method"])
        if chosen is None:
            allowed = sorted(self._allowed(scope))
            error = ApiError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"method {scope['method']} is not allowed here; allowed: {', '.join(allowed)}",
                http_status=405,
                headers={"Allow": ", ".join(allowed)},
            )
            scope[SCOPE_ROUTE] = self.template.template
            service = next(iter(self.endpoints.values())).service
            # No operation: the method names none of this path's endpoints.
            response = self.gateway.shapes.render(
                error, scope["path"], service, method=scope["method"]
            )
        else:
            scope[SCOPE_ROUTE] = chosen.template.template
            response = await self._dispatch(chosen, request)
        await response(scope, receive, send)

    def _allowed(self, scope: Scope) -> set[str]:
        """Methods of every route whose pattern matches this path, not only this one's."""
        path = route_path(scope)
        router = scope.get("router")
        routes: Iterable[object] = getattr(router, "routes", [self])
        allowed: set[str] = set()
        for route in routes:
            if isinstance(route, GatewayRoute) and route.template.regex.fullmatch(path):
                allowed.update(route.endpoints)
        return allowed

    async def _dispatch(self, chosen: Endpoint, request: Request) -> Response:
        scope = request.scope
        params = chosen.template.match(route_path(scope)) or {}
        scope["path_params"] = params
        context = RequestContext(
            request=request,
            gateway=self.gateway,
            endpoint=chosen,
            path_params=params,
            request_id=request_id_of(scope),
        )
        try:
            if not chosen.public:
                caller = await self.gateway.authenticator.authenticate(
                    request.headers.get("authorization"),
                    anonymous_tenant=chosen.anonymous_tenant,
                )
                context.caller = caller
                scope[SCOPE_TENANT] = caller.principal.tenant
                principal_var.set(caller.principal)
                admission = await self.gateway.limiter.admit(caller)
                response = await chosen.handler(context)
                if admission is not None:
                    response.headers.update(admission.headers())
                return response
            return await chosen.handler(context)
        except ApiError as exc:
            return self._render(exc, chosen, request)
        except grpc.aio.AioRpcError as exc:
            upstream = ApiError.from_rpc_error(exc, service_key(chosen.service) or "upstream")
            return self._render(upstream, chosen, request)
        except ClientDisconnect:
            # Nobody is listening; the status only shows in the access log and metrics.
            return Response(status_code=499)
        except Exception:
            log.exception("unhandled error", extra={"endpoint": chosen.name})
            internal = ApiError(grpc.StatusCode.INTERNAL, "internal error")
            return self._render(internal, chosen, request)

    def _render(self, error: ApiError, chosen: Endpoint, request: Request) -> Response:
        return self.gateway.shapes.render(
            error,
            request.scope["path"],
            chosen.service,
            method=request.method,
            operation=chosen.name,
        )


def build_routes(gateway: Gateway, endpoints: Iterable[Endpoint]) -> list[GatewayRoute]:
    """Groups endpoints by pattern, most specific pattern first.

    The first endpoint for a (method, pattern) wins, so explicit adapters listed before the
    transcoded endpoints replace an annotated route with the same method and path.
    """
    groups: dict[str, list[Endpoint]] = {}
    for candidate in endpoints:
        group = groups.setdefault(candidate.template.pattern, [])
        clash = next((e for e in group if e.method == candidate.method), None)
        if clash is not None:
            log.info(
                "route already served; skipping",
                extra={
                    "method": candidate.method,
                    "template": candidate.template.template,
                    "kept": clash.name,
                    "skipped": candidate.name,
                },
            )
            continue
        group.append(candidate)
    ordered = sorted(groups.values(), key=lambda group: group[0].template.specificity)
    return [GatewayRoute(gateway, group) for group in ordered]
