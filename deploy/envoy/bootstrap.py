"""The Envoy v3 bootstrap of the edge, as a JSON-like document (`build_config`).

One listener: local rate limiting, the gRPC headers stripped from every answer, the JSON
transcoder for the services `scope.edge_services` picks, the router. Routes: the transcoded
methods by their gRPC path (the transcoder re-routes a request after rewriting it), the SSE
streams without a route timeout, Bearer requests with the transcoder on, everything else to the
gateway with it off. One cluster for the gateway (HTTP/1.1, HTTP health check) and one per
service (HTTP/2, gRPC health check). docs/envoy.md explains each choice.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deploy.envoy.scope import edge_services
from gateway.apis import claid_edit, clara_scenes, clyman, sidefx_registry
from gateway.transcoding import HttpBinding
from gateway.upstream import MAX_MESSAGE_BYTES
from services.runtime.config import SERVICE_NAMES, load_gateway_config
from services.runtime.errors import ConfigError

GATEWAY = "gateway"
#: The gateway's health route: 200 when every service serves, 503 naming the ones that do not.
GATEWAY_HEALTH_PATH = "/health"

_TRANSCODER = "envoy.filters.http.grpc_json_transcoder"
#: What a gRPC answer carries beside its message; none of it means anything to an HTTP client.
_GRPC_HEADERS = (
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "grpc-encoding",
    "grpc-accept-encoding",
)
_CALL_TIMEOUT = load_gateway_config({}).call_timeout_seconds
#: The gateway's longest wait on one request: SideFX's jobs.wait (600 s), Clara's synchronous
#: import, export and render (120 s), Claid's synchronous edit (120 s), a unary call (30 s).
_LONGEST_GATEWAY_WAIT = max(
    sidefx_registry.MAX_WAIT_SECONDS,
    clara_scenes.SYNC_WAIT_SECONDS,
    claid_edit.EDIT_DEADLINE_SECONDS,
    _CALL_TIMEOUT,
)
#: Room for the gateway to answer its own timeout (in its API's error shape) before Envoy's.
_TIMEOUT_MARGIN_SECONDS = 60
#: SSE streams send a heartbeat every 15 s (CLyman) or 4 s (Clara): four missed ones is dead.
_SSE_IDLE_SECONDS = 60
_SSE_ACCEPT = "text/event-stream"


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


@dataclass(frozen=True)
class Target:
    """Where the edge listens and what it fronts."""

    listen_address: str
    listen_port: int
    admin_address: str
    admin_port: int
    upstreams: Mapping[str, Upstream]
    """The gateway and every service, by name."""
    descriptor_path: str
    """The descriptor set's path as Envoy reads it."""
    rate_per_second: int = 1000
    rate_burst: int = 2000


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _address(address: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


def _typed(type_name: str, **fields: Any) -> dict[str, Any]:
    return {"@type": f"type.googleapis.com/{type_name}", **fields}


def _percent_100() -> dict[str, Any]:
    return {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}


_TRANSCODER_OFF = {
    _TRANSCODER: _typed("envoy.config.route.v3.FilterConfig", disabled=True),
}


def _gateway_route(
    name: str,
    match: dict[str, Any],
    *,
    timeout: float,
    idle_timeout: float,
    transcode: bool = False,
) -> dict[str, Any]:
    route: dict[str, Any] = {
        "name": name,
        "match": match,
        "route": {
            "cluster": GATEWAY,
            "timeout": _seconds(timeout),
            "idle_timeout": _seconds(idle_timeout),
        },
    }
    if not transcode:
        route["typed_per_filter_config"] = _TRANSCODER_OFF
    return route


def _routes(bindings: Sequence[HttpBinding], edge: Sequence[str]) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = []
    # After transcoding, the request is re-routed on its gRPC path: one exact route per method,
    # so only the transcoded methods, never a service's other RPCs, are reachable here.
    methods = sorted({(b.rpc.path, b.rpc.service) for b in bindings if b.rpc.proto_service in edge})
    for path, service in methods:
        routes.append(
            {
                "name": path.lstrip("/"),
                "match": {"path": path, "grpc": {}},
                "route": {
                    "cluster": service,
                    "timeout": _seconds(_CALL_TIMEOUT),
                },
            }
        )
    gateway_timeout = _LONGEST_GATEWAY_WAIT + _TIMEOUT_MARGIN_SECONDS
    # Streams never end on their own: no route timeout, only an idle one above the heartbeat.
    routes.append(
        _gateway_route(
            "sse-clyman-events",
            {"path": clyman.EVENTS_PATH},
            timeout=0,
            idle_timeout=_SSE_IDLE_SECONDS,
        )
    )
    routes.append(
        _gateway_route(
            "sse-accept",
            {
                "prefix": "/",
                "headers": [
                    {"name": "accept", "string_match": {"contains": _SSE_ACCEPT}},
                ],
            },
            timeout=0,
            idle_timeout=_SSE_IDLE_SECONDS,
        )
    )
    # Only Bearer requests are transcoded: Basic credentials (Scenario, Clara) and CLyman's
    # anonymous requests need the gateway, which turns them into a token.
    routes.append(
        _gateway_route(
            "bearer",
            {
                "prefix": "/",
                "headers": [
                    {
                        "name": "authorization",
                        "string_match": {"prefix": "Bearer ", "ignore_case": True},
                    }
                ],
            },
            timeout=gateway_timeout,
            idle_timeout=gateway_timeout,
            transcode=True,
        )
    )
    routes.append(
        _gateway_route(
            "gateway",
            {"prefix": "/"},
            timeout=gateway_timeout,
            idle_timeout=gateway_timeout,
        )
    )
    return routes


def _http_filters(target: Target, edge: Sequence[str]) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = [
        {
            "name": "envoy.filters.http.local_ratelimit",
            "typed_config": _typed(
                "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                stat_prefix="edge_rate_limit",
                token_bucket={
                    "max_tokens": target.rate_burst,
                    "tokens_per_fill": target.rate_per_second,
                    "fill_interval": "1s",
                },
                filter_enabled={**_percent_100(), "runtime_key": "edge_rate_limit_enabled"},
                filter_enforced={**_percent_100(), "runtime_key": "edge_rate_limit_enforced"},
                response_headers_to_add=[
                    {
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                        "header": {"key": "retry-after", "value": "1"},
                    },
                ],
            ),
        },
        # Runs after the transcoder on the way out (filters answer in reverse order), so no
        # gRPC status header of a transcoded call, failed or not, reaches an HTTP client.
        {
            "name": "envoy.filters.http.header_mutation",
            "typed_config": _typed(
                "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                mutations={
                    "response_mutations": [{"remove": name} for name in _GRPC_HEADERS],
                },
            ),
        },
    ]
    if edge:
        filters.append(
            {
                "name": _TRANSCODER,
                "typed_config": _typed(
                    "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
                    proto_descriptor=target.descriptor_path,
                    services=list(edge),
                    # gateway/jsonpb.py's output: json_name keys (lowerCamelCase unless the
                    # proto names one), every field without presence at its default, enums by
                    # name, compact.
                    print_options={
                        "add_whitespace": False,
                        "always_print_primitive_fields": True,
                        "always_print_enums_as_ints": False,
                        "preserve_proto_field_names": False,
                    },
                    convert_grpc_status=True,
                    # As the gateway: query parameters naming no field are ignored, `+` is a
                    # space, path variables are fully decoded.
                    ignore_unknown_query_parameters=True,
                    query_param_unescape_plus=True,
                    url_unescape_spec="ALL_CHARACTERS",
                    # One JSON body becomes one gRPC message: the gRPC cap bounds both.
                    max_request_body_size=MAX_MESSAGE_BYTES,
                    max_response_body_size=MAX_MESSAGE_BYTES,
                ),
            }
        )
    filters.append(
        {
            "name": "envoy.filters.http.router",
            # No x-envoy-* headers towards clients: they describe the inside of the edge.
            "typed_config": _typed(
                "envoy.extensions.filters.http.router.v3.Router", suppress_envoy_headers=True
            ),
        }
    )
    return filters


_ACCESS_LOG_FORMAT = {
    "start_time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "status": "%RESPONSE_CODE%",
    "grpc_status": "%GRPC_STATUS%",
    "flags": "%RESPONSE_FLAGS%",
    "duration_ms": "%DURATION%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "upstream": "%UPSTREAM_CLUSTER%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "user_agent": "%REQ(USER-AGENT)%",
}


def _listener(target: Target, bindings: Sequence[HttpBinding], edge: Sequence[str]) -> Any:
    manager = _typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix="edge",
        codec_type="AUTO",
        use_remote_address=True,
        # Slow clients cannot hold a connection open by trickling headers.
        request_headers_timeout="10s",
        common_http_protocol_options={"idle_timeout": "300s"},
        http2_protocol_options={
            "max_concurrent_streams": 100,
            "initial_stream_window_size": 65536,
            "initial_connection_window_size": 1048576,
        },
        access_log=[
            {
                "name": "envoy.access_loggers.stdout",
                "typed_config": _typed(
                    "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                    log_format={"json_format": _ACCESS_LOG_FORMAT},
                ),
            }
        ],
        route_config={
            "name": "edge",
            "virtual_hosts": [
                {
                    "name": "kiln",
                    "domains": ["*"],
                    "routes": _routes(bindings, edge),
                }
            ],
        },
        http_filters=_http_filters(target, edge),
    )
    return {
        "name": "edge",
        "address": _address(target.listen_address, target.listen_port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }


def _cluster(name: str, upstream: Upstream, *, grpc: bool) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        # Headless Services: DNS gives every ready pod, and Envoy balances across them.
        "type": "STATIC" if upstream.is_ip else "STRICT_DNS",
        "connect_timeout": "2s",
        "lb_policy": "LEAST_REQUEST" if grpc else "ROUND_ROBIN",
    }
    if not upstream.is_ip:
        cluster["dns_lookup_family"] = "V4_PREFERRED"
        cluster["dns_refresh_rate"] = "5s"
    if grpc:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                explicit_http_config={"http2_protocol_options": {}},
            )
        }
        check: dict[str, Any] = {"grpc_health_check": {}}
    else:
        # A 503 from /health means one service is down, and the gateway still serves the rest:
        # only no answer at all takes a gateway out.
        check = {
            "http_health_check": {
                "path": GATEWAY_HEALTH_PATH,
                "expected_statuses": [
                    {"start": 200, "end": 201},
                    {"start": 503, "end": 504},
                ],
            }
        }
        # SSE streams and uploads hold a connection each for a long time.
        cluster["circuit_breakers"] = {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_connections": 4096,
                    "max_pending_requests": 1024,
                    "max_requests": 4096,
                }
            ]
        }
    cluster["health_checks"] = [
        {
            "timeout": "2s",
            "interval": "5s",
            "unhealthy_threshold": 2,
            "healthy_threshold": 1,
            **check,
        }
    ]
    cluster["load_assignment"] = {
        "cluster_name": name,
        "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": _address(upstream.host, upstream.port)}}]}
        ],
    }
    return cluster


def build_config(target: Target, bindings: Sequence[HttpBinding]) -> dict[str, Any]:
    """The Envoy v3 bootstrap for `target`, as a JSON-like document."""
    missing = [n for n in (GATEWAY, *SERVICE_NAMES) if n not in target.upstreams]
    if missing:
        raise ConfigError(f"no upstream for: {', '.join(missing)}")
    edge, _ = edge_services(bindings)
    clusters = [_cluster(GATEWAY, target.upstreams[GATEWAY], grpc=False)]
    clusters += [_cluster(n, target.upstreams[n], grpc=True) for n in SERVICE_NAMES]
    return {
        "admin": {"address": _address(target.admin_address, target.admin_port)},
        "static_resources": {
            "listeners": [_listener(target, bindings, edge)],
            "clusters": clusters,
        },
    }
