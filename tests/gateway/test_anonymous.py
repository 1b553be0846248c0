"""Anonymous access: an API whose clients send no credentials acts as a configured tenant."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from starlette.responses import Response

from gateway.apis import oauth2
from gateway.apis.registry import ApiModule
from gateway.app import build_app
from gateway.identity.authn import ANONYMOUS_CLIENT_ID
from gateway.jsonpb import json_response
from gateway.routing import RequestContext, endpoint
from services.runtime.auth import TokenVerifier
from services.runtime.config import GatewayConfig
from tests.gateway.conftest import DEMO_ID, DEMO_SECRET, DEMO_TENANT, ECHO_SERVICE, serving

Auth = Callable[..., dict[str, str]]
ANONYMOUS_TENANT = "tenant-anonymous"


async def whoami(context: RequestContext) -> Response:
    principal = context.require_caller().principal
    return json_response({"tenant": principal.tenant, "client_id": principal.client_id})


def open_echo(tenant: str) -> ApiModule:
    """An API that claims the echo service's annotated routes and has one adapter of its own."""
    return ApiModule(
        name="open-echo",
        endpoints=lambda: [
            endpoint("GET", "/v1/whoami", whoami, service=ECHO_SERVICE, name="whoami"),
            endpoint("GET", "/v1/public-whoami", whoami, public=True, name="public"),
        ],
        proto_services=(ECHO_SERVICE,),
        anonymous_tenant=lambda config: tenant,
    )


@pytest.fixture(scope="module")
async def open_client(gw_config: GatewayConfig) -> AsyncIterator[httpx.AsyncClient]:
    app = build_app(gw_config, apis=(oauth2.API, open_echo(ANONYMOUS_TENANT)))
    async with serving(app) as client:
        yield client


def verify(config: GatewayConfig, authorization: str) -> tuple[str, str]:
    scheme, token = authorization.split()
    assert scheme == "Bearer"
    verifier = TokenVerifier.from_files(config.auth.public_key_files, issuer=config.auth.issuer)
    principal = verifier.verify(token)
    return principal.tenant, principal.client_id


async def test_no_credentials_act_as_the_anonymous_tenant(
    open_client: httpx.AsyncClient, gw_config: GatewayConfig
) -> None:
    first = await open_client.get("/v1/echo/a")
    second = await open_client.post("/v1/echo/b", json={"count": 2})
    assert first.status_code == 200 and second.status_code == 200, first.text
    forwarded = first.json()["metadata"]["authorization"]
    assert verify(gw_config, forwarded) == (ANONYMOUS_TENANT, ANONYMOUS_CLIENT_ID)
    # Minted once and reused, like the tokens standing in for Basic credentials.
    assert second.json()["metadata"]["authorization"] == forwarded
    # The API's own endpoints are open too.
    mine = await open_client.get("/v1/whoami")
    assert mine.json() == {"tenant": ANONYMOUS_TENANT, "client_id": ANONYMOUS_CLIENT_ID}


async def test_credentials_sent_are_still_checked(
    open_client: httpx.AsyncClient, gw_config: GatewayConfig, gw_auth: Auth
) -> None:
    token = gw_auth("tenant-a")
    with_token = await open_client.get("/v1/echo/a", headers=token)
    assert with_token.json()["metadata"]["authorization"] == token["Authorization"]
    raw = base64.b64encode(f"{DEMO_ID}:{DEMO_SECRET}".encode()).decode()
    with_basic = await open_client.get("/v1/whoami", headers={"Authorization": f"Basic {raw}"})
    assert with_basic.json() == {"tenant": DEMO_TENANT, "client_id": DEMO_ID}
    # A wrong credential is a 401, never a fall-back to anonymous.
    for header in ("Bearer not-a-jwt", f"Basic {base64.b64encode(b'demo:wrong').decode()}"):
        refused = await open_client.get("/v1/echo/a", headers={"Authorization": header})
        assert refused.status_code == 401, header


async def test_only_the_claimed_routes_are_open(gw_config: GatewayConfig) -> None:
    # Without an anonymous tenant, the same API requires credentials.
    app = build_app(gw_config, apis=(oauth2.API, open_echo("")))
    async with serving(app) as client:
        assert (await client.get("/v1/echo/a")).status_code == 401
        assert (await client.get("/v1/whoami")).status_code == 401
        # Public stays public (and has no caller at all).
        assert (await client.get("/health")).status_code == 200
