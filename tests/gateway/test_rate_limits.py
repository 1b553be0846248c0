"""Per-client rate limits through the real gateway: the bucket, its headers, 429 in each API's
shape with Retry-After, per-client limits, clients apart, and SideFX's reference client riding
out a 429 with its own retry."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import build_app
from services.runtime.config import load_gateway_config
from tests.conftest import Suite
from tests.gateway import sidefx_reference as sidefx
from tests.gateway.conftest import live, suite_gateway_env

#: Two requests a second sustained, three at once.
RATE, BURST = "2", "3"


@dataclass(frozen=True)
class Rig:
    app: Any
    http: httpx.AsyncClient
    base: str

    async def client(self, label: str, **limit: Any) -> tuple[str, str]:
        client_id, secret = f"rl-{label}-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
        clients = self.app.state.gateway.clients
        await clients.ensure(client_id, secret, tenant=client_id, scopes=["*"])
        if limit:
            await clients.set_rate_limit(client_id, limit["per_second"], limit["burst"])
        return client_id, secret


@pytest.fixture(scope="module")
async def rig(suite: Suite, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    data: Path = tmp_path_factory.mktemp("rate-gw")
    env = suite_gateway_env(
        suite.target_env(),
        data,
        KILN_RATE_LIMIT_PER_SECOND=RATE,
        KILN_RATE_LIMIT_BURST=BURST,
    )
    app = build_app(load_gateway_config(env))
    async with live(app) as http:
        yield Rig(app, http, str(http.base_url).rstrip("/"))


async def test_the_burst_passes_then_429_with_retry_after(rig: Rig) -> None:
    auth = await rig.client("burst")
    remaining = []
    for _ in range(3):
        response = await rig.http.get("/v1/assets", auth=auth)
        assert response.status_code == 200, response.text
        assert response.headers["ratelimit-limit"] == "3"
        remaining.append(int(response.headers["ratelimit-remaining"]))
    assert remaining == [2, 1, 0]
    refused = await rig.http.get("/v1/assets", auth=auth)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-remaining"] == "0"
    # The bucket refills at the rate: after a second, two more fit.
    await asyncio.sleep(1.05)
    assert (await rig.http.get("/v1/assets", auth=auth)).status_code == 200


async def test_429_comes_in_each_apis_shape(rig: Rig) -> None:
    auth = await rig.client("shapes")
    for _ in range(3):
        await rig.http.get("/api/scenes", auth=auth)
    clara = await rig.http.get("/api/scenes", auth=auth)
    assert clara.status_code == 429 and "rate limit" in clara.json()["message"]
    sidefx_answer = await rig.http.post("/api/", auth=auth, data={"json": '["jobs.get", ["x"]]'})
    assert sidefx_answer.status_code == 429
    assert sidefx_answer.headers["content-type"].startswith("text/plain")
    assert "retry-after" in sidefx_answer.headers
    claid = await rig.http.get("/v1/storage/storages", auth=auth)
    # Claid nests its rate-limit answer under `detail`.
    assert claid.status_code == 429 and claid.json()["detail"]["error_code"] == "2001"


async def test_a_clients_own_limit_and_other_clients_are_apart(rig: Rig) -> None:
    generous = await rig.client("own", per_second=100.0, burst=20)
    for _ in range(10):
        response = await rig.http.get("/v1/assets", auth=generous)
        assert response.status_code == 200, response.text
    assert response.headers["ratelimit-limit"] == "20"
    first, second = await rig.client("first"), await rig.client("second")
    for _ in range(4):
        await rig.http.get("/v1/assets", auth=first)
    assert (await rig.http.get("/v1/assets", auth=first)).status_code == 429
    assert (await rig.http.get("/v1/assets", auth=second)).status_code == 200
    with pytest.raises(Exception, match="both"):
        await rig.app.state.gateway.clients.set_rate_limit(first[0], 1.0, None)


async def test_sidefx_reference_client_retries_a_429_and_succeeds(rig: Rig) -> None:
    client_id, secret = await rig.client("retry", per_second=1.0, burst=1)
    service = await asyncio.to_thread(
        sidefx.service,
        client_id,
        secret,
        access_token_url=f"{rig.base}/oauth2/application_token",
        endpoint_url=f"{rig.base}/api/",
        timeout=30,
    )
    limited_before = _limited(rig)
    first = await asyncio.to_thread(service.scenes.list)
    second = await asyncio.to_thread(service.scenes.list)  # 429 first, then retried
    assert first == second
    assert _limited(rig) > limited_before


def _limited(rig: Rig) -> float:
    from gateway.limits import LIMITED

    return float(LIMITED._value.get())
