"""Fixtures of the CLyman tests: the real gateway on a socket, in front of the real suite.

Each test module gets its own gateway with its own anonymous tenant, so CLyman's requests,
which carry no credentials, see only the objects that module created (queries stay exact).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.apis.registry import ApiModule
from gateway.app import build_app
from services.runtime.config import load_gateway_config
from tests.conftest import Suite
from tests.gateway.conftest import live, suite_gateway_env

#: KILN_MAX_BODY_BYTES of the test gateway: small, so the 413 test sends little.
MAX_BODY_BYTES = 64 * 1024


@dataclass
class Clyman:
    """A client of the gateway, and the tenant its requests without credentials act as."""

    client: httpx.AsyncClient
    tenant: str

    @property
    def base_url(self) -> str:
        return str(self.client.base_url).rstrip("/")


async def start_clyman(
    suite: Suite, data: Path, apis: Sequence[ApiModule] | None = None
) -> AsyncIterator[Clyman]:
    tenant = f"clyman-{uuid.uuid4().hex[:8]}"
    env = suite_gateway_env(
        suite.target_env(),
        data,
        KILN_MAX_BODY_BYTES=str(MAX_BODY_BYTES),
        KILN_CLYMAN_ANONYMOUS_TENANT=tenant,
    )
    config = load_gateway_config(env)
    app = build_app(config) if apis is None else build_app(config, apis=apis)
    async with live(app) as client:
        yield Clyman(client=client, tenant=tenant)


@pytest.fixture(scope="module")
async def clyman(suite: Suite, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Clyman]:
    async for running in start_clyman(suite, tmp_path_factory.mktemp("clyman-gw")):
        yield running
