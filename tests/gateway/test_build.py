"""Start-up: routes come from the descriptor set, and a broken contract stops the gateway."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2
from starlette.responses import Response

from gateway.apis import DEFAULT_APIS
from gateway.apis.registry import ApiModule
from gateway.app import build_app
from gateway.jsonpb import json_response
from gateway.routing import GatewayRoute, Handler, RequestContext, endpoint
from services.runtime.config import GatewayConfig
from services.runtime.errors import ConfigError
from tests.gateway.conftest import REPO, serving

Edit = Callable[[descriptor_pb2.MethodDescriptorProto], None]


def edited(config: GatewayConfig, tmp_path: Path, method: str, edit: Edit) -> GatewayConfig:
    """The config with a descriptor set whose EchoService `method` went through `edit`."""
    files = descriptor_pb2.FileDescriptorSet.FromString(config.descriptor_set.read_bytes())
    for file in files.file:
        for service in file.service:
            for candidate in service.method:
                if candidate.name == method:
                    edit(candidate)
    path = tmp_path / "edited.binpb"
    path.write_bytes(files.SerializeToString())
    return dataclasses.replace(config, descriptor_set=path)


def set_rule(**fields: str) -> Edit:
    def edit(method: descriptor_pb2.MethodDescriptorProto) -> None:
        rule = method.options.Extensions[annotations_pb2.http]
        rule.Clear()
        for name, value in fields.items():
            setattr(rule, name, value)

    return edit


@pytest.mark.parametrize(
    ("method", "edit", "fragment"),
    [
        ("Echo", set_rule(get="/v1/x/{nope}"), "nope"),
        ("Echo", set_rule(get="/v1/x/{inner}"), "message field"),
        ("Echo", set_rule(get="/v1/x/{tags}"), "repeated"),
        ("Echo", set_rule(get="/v1/x/{id", body="*"), "unbalanced"),
        ("Echo", set_rule(post="/v1/x", body="missing"), "body 'missing'"),
        ("Echo", set_rule(get="/v1/x", response_body="missing"), "response_body"),
        # EchoInner already binds GET /v1/inner/{id}: the same shape from another method.
        ("Fail", set_rule(get="/v1/inner/{code}"), "both bind"),
    ],
)
def test_bad_annotations_stop_the_build(
    gw_config: GatewayConfig, tmp_path: Path, method: str, edit: Edit, fragment: str
) -> None:
    config = edited(gw_config, tmp_path, method, edit)
    with pytest.raises(ConfigError, match=fragment):
        build_app(config, apis=())


def test_missing_descriptor_set_or_target(gw_config: GatewayConfig, tmp_path: Path) -> None:
    missing = dataclasses.replace(gw_config, descriptor_set=tmp_path / "none.binpb")
    with pytest.raises(ConfigError, match="make protos"):
        build_app(missing, apis=())
    no_target = dataclasses.replace(gw_config, targets={})
    with pytest.raises(ConfigError, match="KILN_TESTING_TARGET"):
        build_app(no_target, apis=())
    # Scenario's upload calls the objects service; without its target the build stops.
    with pytest.raises(ConfigError, match="objects"):
        build_app(gw_config, apis=DEFAULT_APIS)


def test_kiln_descriptor_set_routes(gw_config: GatewayConfig) -> None:
    config = dataclasses.replace(
        gw_config,
        descriptor_set=REPO / "gen" / "kiln.binpb",
        targets={name: "127.0.0.1:1" for name in ("objects", "jobs", "render", "archive")},
    )
    app = build_app(config)
    served = {
        (endpoint.method, endpoint.template.template)
        for route in app.routes
        if isinstance(route, GatewayRoute)
        for endpoint in route.endpoints.values()
    }
    assert {
        ("GET", "/health"),
        ("GET", "/metrics"),
        ("POST", "/oauth2/application_token"),
        ("POST", "/oauth2/token"),
        ("POST", "/v1/assets"),
        ("GET", "/v1/assets"),
        ("GET", "/v1/assets/{asset_id}"),
        ("DELETE", "/v1/assets/{asset_id}"),
    } <= served


def answering(name: str) -> Handler:
    async def handle(context: RequestContext) -> Response:
        return json_response({"route": name, "params": dict(context.path_params)})

    return handle


async def test_literal_routes_win_over_variables_whatever_the_order(
    gw_config: GatewayConfig,
) -> None:
    # Declared variable-first on purpose: the order of declaration must not matter.
    api = ApiModule(
        name="things",
        endpoints=lambda: [
            endpoint("POST", "/v1/things/{key}", answering("update"), public=True),
            endpoint("GET", "/v1/things/{key}", answering("get"), public=True),
            endpoint("POST", "/v1/things/query", answering("query"), public=True),
        ],
    )
    async with serving(build_app(gw_config, apis=(api,))) as client:
        query = await client.post("/v1/things/query")
        query_slash = await client.post("/v1/things/query/")
        update = await client.post("/v1/things/abc/")
        # GET has no literal route: the variable one takes it.
        got = await client.get("/v1/things/query")
    assert query.json() == {"route": "query", "params": {}}
    assert query_slash.json() == {"route": "query", "params": {}}
    assert update.json() == {"route": "update", "params": {"key": "abc"}}
    assert got.json() == {"route": "get", "params": {"key": "query"}}
