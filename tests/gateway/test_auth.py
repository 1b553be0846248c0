"""Identity at the gateway: token endpoints, Bearer and Basic on API routes, the client store."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from sqlalchemy import inspect
from starlette.applications import Starlette

from gateway.core import MIGRATIONS
from gateway.identity import ClientStore
from gateway.identity.models import Base
from services.runtime import db
from services.runtime.auth import TokenSigner, TokenVerifier, generate_keypair
from services.runtime.config import GatewayConfig
from tests.gateway.conftest import DEMO_ID, DEMO_SECRET, DEMO_TENANT

Auth = Callable[..., dict[str, str]]


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def verifier_for(config: GatewayConfig) -> TokenVerifier:
    return TokenVerifier.from_files(config.auth.public_key_files, issuer=config.auth.issuer)


def assert_token_answer(response: httpx.Response, config: GatewayConfig, tenant: str) -> str:
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"access_token", "expires_in", "token_type", "scope"}
    assert body["token_type"] == "Bearer" and body["expires_in"] == 43200
    principal = verifier_for(config).verify(body["access_token"])
    assert principal.tenant == tenant and principal.client_id == DEMO_ID
    token: str = body["access_token"]
    return token


async def test_application_token_with_basic(
    gw_client: httpx.AsyncClient, gw_config: GatewayConfig
) -> None:
    response = await gw_client.post(
        "/oauth2/application_token", headers=basic(DEMO_ID, DEMO_SECRET)
    )
    token = assert_token_answer(response, gw_config, DEMO_TENANT)
    assert response.json()["scope"] == "*"
    # The token opens API routes; the service sees it unchanged.
    echoed = await gw_client.get("/v1/echo/t", headers={"Authorization": f"Bearer {token}"})
    assert echoed.status_code == 200
    assert echoed.json()["metadata"]["authorization"] == f"Bearer {token}"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic(DEMO_ID, "wrong-secret"),
        basic("nobody", DEMO_SECRET),
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
        {"Authorization": "Bearer something"},
    ],
)
async def test_application_token_refuses_bad_clients(
    gw_client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await gw_client.post("/oauth2/application_token", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"] == 'Basic realm="kiln"'


async def test_token_endpoint_client_credentials(
    gw_client: httpx.AsyncClient, gw_config: GatewayConfig
) -> None:
    by_header = await gw_client.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials"},
        headers=basic(DEMO_ID, DEMO_SECRET),
    )
    assert_token_answer(by_header, gw_config, DEMO_TENANT)
    by_form = await gw_client.post(
        "/oauth2/token/",
        data={
            "grant_type": "client_credentials",
            "client_id": DEMO_ID,
            "client_secret": DEMO_SECRET,
            "scope": "assets.read assets.write",
        },
    )
    assert_token_answer(by_form, gw_config, DEMO_TENANT)
    assert by_form.json()["scope"] == "assets.read assets.write"
    scopes = verifier_for(gw_config).verify(by_form.json()["access_token"]).scopes
    assert scopes == frozenset({"assets.read", "assets.write"})


@pytest.mark.parametrize(
    ("data", "headers", "status", "error"),
    [
        ({}, basic(DEMO_ID, DEMO_SECRET), 400, "unsupported_grant_type"),
        ({"grant_type": "password"}, basic(DEMO_ID, DEMO_SECRET), 400, "unsupported_grant_type"),
        ({"grant_type": "client_credentials"}, {}, 401, "invalid_client"),
        (
            {"grant_type": "client_credentials", "client_id": DEMO_ID, "client_secret": "no"},
            {},
            401,
            "invalid_client",
        ),
        (
            {"grant_type": "client_credentials", "client_id": DEMO_ID, "client_secret": "x"},
            basic(DEMO_ID, DEMO_SECRET),
            400,
            "invalid_request",
        ),
    ],
)
async def test_token_endpoint_errors(
    gw_client: httpx.AsyncClient,
    data: dict[str, str],
    headers: dict[str, str],
    status: int,
    error: str,
) -> None:
    response = await gw_client.post("/oauth2/token", data=data, headers=headers)
    assert response.status_code == status
    body = response.json()
    assert body["error"] == error and body["error_description"]


async def test_token_endpoint_refuses_json_and_repeated_parameters(
    gw_client: httpx.AsyncClient,
) -> None:
    as_json = await gw_client.post(
        "/oauth2/token",
        json={"grant_type": "client_credentials"},
        headers=basic(DEMO_ID, DEMO_SECRET),
    )
    assert as_json.status_code == 400 and as_json.json()["error"] == "invalid_request"
    repeated = await gw_client.post(
        "/oauth2/token",
        content=b"grant_type=client_credentials&grant_type=client_credentials",
        headers={
            **basic(DEMO_ID, DEMO_SECRET),
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert repeated.status_code == 400 and "grant_type" in repeated.json()["error_description"]
    wrong_method = await gw_client.get("/oauth2/token")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"] == "invalid_request"


async def test_missing_token_is_a_bare_challenge(gw_client: httpx.AsyncClient) -> None:
    response = await gw_client.get("/v1/echo/x")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="kiln"'
    body = response.json()
    assert body["code"] == 16
    assert body["details"][0]["reason"] == "ERROR_REASON_MISSING_CREDENTIALS"


def tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = base64.urlsafe_b64decode(payload + "==").replace(b'"tenant-a"', b'"tenant-b"')
    forged = base64.urlsafe_b64encode(claims).decode().rstrip("=")
    return f"{header}.{forged}.{signature}"


async def test_bad_bearer_tokens_are_401_invalid_token(
    gw_client: httpx.AsyncClient, gw_auth: Auth, tmp_path: Path, signer: TokenSigner
) -> None:
    good = gw_auth("tenant-a")["Authorization"].split()[1]
    expired, _ = signer.issue(
        client_id="c", tenant="tenant-a", scopes=["*"], ttl_seconds=60, now=time.time() - 3600
    )
    generate_keypair(tmp_path / "other.pem", tmp_path / "other.pub.pem")
    foreign, _ = TokenSigner.from_file(tmp_path / "other.pem", issuer="kiln", ttl_seconds=60).issue(
        client_id="c", tenant="tenant-a", scopes=["*"]
    )
    cases = {
        tamper(good): "ERROR_REASON_INVALID_TOKEN",
        expired: "ERROR_REASON_TOKEN_EXPIRED",
        foreign: "ERROR_REASON_INVALID_TOKEN",
        "not-a-jwt": "ERROR_REASON_INVALID_TOKEN",
    }
    for token, reason in cases.items():
        response = await gw_client.get("/v1/echo/x", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, token
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="kiln", error="invalid_token"')
        assert response.json()["details"][0]["reason"] == reason
    other_scheme = await gw_client.get("/v1/echo/x", headers={"Authorization": "Digest abc"})
    assert other_scheme.status_code == 401


async def test_basic_on_api_routes_forwards_a_minted_token(
    gw_client: httpx.AsyncClient, gw_config: GatewayConfig
) -> None:
    first = await gw_client.get("/v1/echo/b", headers=basic(DEMO_ID, DEMO_SECRET))
    second = await gw_client.get("/v1/echo/b", headers=basic(DEMO_ID, DEMO_SECRET))
    assert first.status_code == 200 and second.status_code == 200
    forwarded = first.json()["metadata"]["authorization"]
    scheme, token = forwarded.split()
    assert scheme == "Bearer"
    principal = verifier_for(gw_config).verify(token)
    assert principal.tenant == DEMO_TENANT and principal.client_id == DEMO_ID
    # Reused until near expiry, not minted per request.
    assert second.json()["metadata"]["authorization"] == forwarded
    wrong = await gw_client.get("/v1/echo/b", headers=basic(DEMO_ID, "nope"))
    assert wrong.status_code == 401


async def test_public_routes_need_no_credentials(gw_client: httpx.AsyncClient) -> None:
    assert (await gw_client.get("/health")).status_code == 200
    assert (await gw_client.get("/metrics")).status_code == 200


# --- the client store ---------------------------------------------------------------------


class CountingHasher(PasswordHasher):
    """A cheap argon2 that counts its verifications."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.verifications = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.verifications += 1
        return super().verify(hash, password)


@pytest.fixture
async def store_factory(tmp_path: Path) -> Any:
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path / 'clients.db'}")
    await db.migrate(engine, "gateway", MIGRATIONS)
    clock = [1000.0]

    def make(hasher: PasswordHasher) -> ClientStore:
        return ClientStore(db.sessionmaker(engine), hasher=hasher, clock=lambda: clock[0])

    yield make, clock
    await engine.dispose()


async def test_store_hashes_secrets_and_caches_verification(store_factory: Any) -> None:
    make, clock = store_factory
    hasher = CountingHasher()
    store = make(hasher)
    client = await store.create("c1", "s3cret", tenant="t1", scopes=["b", "a"])
    assert client.scopes == frozenset({"a", "b"}) and not client.disabled
    assert (await store.verify("c1", "s3cret")) == client
    assert (await store.verify("c1", "s3cret")) == client
    assert hasher.verifications == 1  # the second check came from the cache
    assert await store.verify("c1", "wrong") is None
    clock[0] += 61
    assert (await store.verify("c1", "s3cret")) == client
    assert hasher.verifications == 3
    await store.set_disabled("c1", True)
    assert await store.verify("c1", "s3cret") is None
    # Unknown ids cost a hash too (no timing oracle) and never verify.
    before = hasher.verifications
    assert await store.verify("ghost", "s3cret") is None
    assert hasher.verifications == before + 1


def database_bytes(directory: Path) -> bytes:
    return b"".join(path.read_bytes() for path in directory.glob("clients.db*"))


async def test_store_keeps_hashes_not_secrets(store_factory: Any, tmp_path: Path) -> None:
    make, _ = store_factory
    store = make(CountingHasher())
    await store.create("c2", "plain-secret", tenant="t", scopes=[])
    # WAL mode: the row may still sit in the -wal file.
    raw = database_bytes(tmp_path)
    assert b"plain-secret" not in raw and b"$argon2" in raw


async def test_ensure_creates_then_rotates_the_secret(store_factory: Any) -> None:
    make, _ = store_factory
    store = make(CountingHasher())
    await store.ensure("demo", "first", tenant="t", scopes=["*"])
    await store.ensure("demo", "first", tenant="t", scopes=["*"])
    assert await store.verify("demo", "first") is not None
    restarted = make(CountingHasher())  # a new process with a changed secret
    await restarted.ensure("demo", "second", tenant="other", scopes=["*"])
    assert await restarted.verify("demo", "first") is None
    client = await restarted.verify("demo", "second")
    assert client is not None and client.tenant == "t"  # a tenant is never moved


async def test_store_validates_new_clients(store_factory: Any) -> None:
    make, _ = store_factory
    store = make(CountingHasher())
    from gateway.identity import ClientExists
    from services.runtime.errors import InvalidArgument

    with pytest.raises(InvalidArgument):
        await store.create("has:colon", "s", tenant="t", scopes=[])
    with pytest.raises(InvalidArgument):
        await store.create("ok", "", tenant="t", scopes=[])
    await store.create("ok", "s", tenant="t", scopes=[])
    with pytest.raises(ClientExists):
        await store.create("ok", "s", tenant="t", scopes=[])


async def test_migrations_build_the_mapped_schema(tmp_path: Path) -> None:
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path / 'schema.db'}")
    try:
        await db.migrate(engine, "gateway", MIGRATIONS)
        await db.migrate(engine, "gateway", MIGRATIONS)  # safe on every start

        def columns(connection: Any) -> tuple[set[str], set[str], set[str]]:
            inspector = inspect(connection)
            found = {c["name"] for c in inspector.get_columns("api_clients")}
            indexes = {i["name"] or "" for i in inspector.get_indexes("api_clients")}
            return found, indexes, set(inspector.get_table_names())

        async with engine.connect() as connection:
            found, indexes, tables = await connection.run_sync(columns)
    finally:
        await engine.dispose()
    assert found == {c.name for c in Base.metadata.tables["api_clients"].columns}
    assert "ix_api_clients_tenant" in indexes
    assert "alembic_version_gateway" in tables  # its own version table, beside the services'


async def test_disabled_client_gets_no_token(
    gw_app: Starlette, gw_client: httpx.AsyncClient
) -> None:
    store: ClientStore = gw_app.state.gateway.clients
    await store.create("temp-client", "temp-secret", tenant="tenant-temp", scopes=["x"])
    ok = await gw_client.post(
        "/oauth2/application_token", headers=basic("temp-client", "temp-secret")
    )
    assert ok.status_code == 200 and ok.json()["scope"] == "x"
    scoped = await gw_client.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials", "scope": "admin"},
        headers=basic("temp-client", "temp-secret"),
    )
    assert scoped.status_code == 400 and scoped.json()["error"] == "invalid_scope"
    await store.set_disabled("temp-client", True)
    refused = await gw_client.post(
        "/oauth2/application_token", headers=basic("temp-client", "temp-secret")
    )
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
    # A token issued before the client was disabled stops working too.
    issued = {"Authorization": f"Bearer {ok.json()['access_token']}"}
    stale = await gw_client.get("/v1/echo/x", headers=issued)
    assert stale.status_code == 401
    assert "disabled" in stale.json()["message"]


async def test_oversized_token_request_is_413_in_the_oauth2_shape(
    gw_client: httpx.AsyncClient,
) -> None:
    response = await gw_client.post(
        "/oauth2/token",
        content=b"grant_type=client_credentials&pad=" + b"x" * 20_000,
        headers={
            **basic(DEMO_ID, DEMO_SECRET),
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert response.status_code == 413
    body = response.json()
    assert body["error"] == "invalid_request" and "16384" in body["error_description"]
