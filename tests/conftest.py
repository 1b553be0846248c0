"""Session fixtures shared by every test: one real S3 server, real keys, real services.

Everything here is real: SeaweedFS over loopback, gRPC servers on port 0 in this process,
SQLite files in a temporary directory, and PostgreSQL on 127.0.0.1:5432 where reachable.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from deploy.local.seaweed import SeaweedS3, free_port
from services.runtime.auth import TokenSigner, generate_keypair, write_worker_token
from services.runtime.config import SERVICE_NAMES, ServiceConfig, load_service_config
from services.runtime.server import RunningServer, start

REPO_ROOT = Path(__file__).resolve().parent.parent
#: PYTHONPATH for subprocesses: the generated code and the repository.
PYTHONPATH = os.pathsep.join([str(REPO_ROOT / "gen"), str(REPO_ROOT)])

PG_HOST = os.environ.get("KILN_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("KILN_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("KILN_TEST_PG_USER", "postgres")


@pytest.fixture(scope="session")
def tmp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kiln")


@pytest.fixture(scope="session")
def s3(tmp_root: Path) -> Iterator[SeaweedS3]:
    """One SeaweedFS server for the whole session, warmed so the first test is not slow."""
    server = SeaweedS3(tmp_root / "s3", s3_port=free_port(), log_file=tmp_root / "weed.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def jwt_keys(tmp_root: Path) -> tuple[Path, Path]:
    private, public = tmp_root / "keys" / "jwt.pem", tmp_root / "keys" / "jwt.pub.pem"
    generate_keypair(private, public)
    return private, public


@pytest.fixture(scope="session")
def signer(jwt_keys: tuple[Path, Path]) -> TokenSigner:
    return TokenSigner.from_file(jwt_keys[0], issuer="kiln", ttl_seconds=3600)


@pytest.fixture(scope="session")
def token_for(signer: TokenSigner) -> Callable[..., str]:
    """Makes a valid token for a tenant: `token_for("tenant-a")`."""

    def make(tenant: str = "tenant-a", client_id: str = "test-client", ttl: int = 3600) -> str:
        token, _ = signer.issue(client_id=client_id, tenant=tenant, scopes=["*"], ttl_seconds=ttl)
        return token

    return make


@pytest.fixture(scope="session")
def worker_token_file(signer: TokenSigner, tmp_root: Path) -> Path:
    """A worker token (scope jobs.worker) in a file, as KILN_WORKER_TOKEN_FILE names it."""
    path = tmp_root / "keys" / "worker.token"
    write_worker_token(signer, path)
    return path


@pytest.fixture(scope="session")
def bucket_name() -> str:
    return f"kiln-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def base_env(
    s3: SeaweedS3,
    jwt_keys: tuple[Path, Path],
    tmp_root: Path,
    bucket_name: str,
    worker_token_file: Path,
) -> dict[str, str]:
    """The KILN_* variables every in-process service of the session shares."""
    env = {
        "KILN_DATA_DIR": str(tmp_root / "data"),
        "KILN_S3_ENDPOINT": s3.endpoint,
        "KILN_S3_ACCESS_KEY": s3.access_key,
        "KILN_S3_SECRET_KEY": s3.secret_key,
        "KILN_S3_BUCKET": bucket_name,
        "KILN_JWT_PRIVATE_KEY_FILE": str(jwt_keys[0]),
        "KILN_JWT_PUBLIC_KEY_FILES": str(jwt_keys[1]),
        "KILN_WORKER_TOKEN_FILE": str(worker_token_file),
        "KILN_LOG_FORMAT": "text",
        "KILN_LOG_LEVEL": "WARNING",
        # Image-edit tests serve their inputs from loopback HTTP servers.
        "KILN_FETCH_ALLOWLIST": "127.0.0.1/32",
    }
    for name in SERVICE_NAMES:
        env[f"KILN_{name.upper()}_PORT"] = "0"
        env[f"KILN_{name.upper()}_METRICS_PORT"] = "0"
    return env


@dataclass
class Suite:
    """The four services running in this process, each on its own loopback port."""

    env: dict[str, str]
    data_dir: Path
    servers: dict[str, RunningServer] = field(default_factory=dict)

    @property
    def targets(self) -> dict[str, str]:
        return {name: f"127.0.0.1:{server.port}" for name, server in self.servers.items()}

    def target_env(self) -> dict[str, str]:
        """`env` plus KILN_<SERVICE>_TARGET for each running service (for the gateway)."""
        env = dict(self.env)
        for name, target in self.targets.items():
            env[f"KILN_{name.upper()}_TARGET"] = target
        return env

    def config(self, name: str) -> ServiceConfig:
        return load_service_config(name, self.env)


async def start_service(name: str, env: dict[str, str]) -> RunningServer:
    import importlib

    module = importlib.import_module(f"services.{name}.main")
    config = load_service_config(name, env)
    return await start(config, await module.build(config))


@pytest.fixture(scope="session")
async def suite(base_env: dict[str, str]) -> AsyncIterator[Suite]:
    running = Suite(env=base_env, data_dir=Path(base_env["KILN_DATA_DIR"]))
    try:
        for name in SERVICE_NAMES:
            # Each service learns where the ones started before it listen (the archive
            # service calls objects and jobs).
            running.servers[name] = await start_service(name, running.target_env())
        yield running
    finally:
        for server in running.servers.values():
            await server.stop(1)


@pytest.fixture(scope="session")
async def objects_channel(suite: Suite) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(suite.targets["objects"]) as channel:
        yield channel


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


# --- PostgreSQL: a private database per test session, dropped afterwards --------------------


def postgres_reachable() -> str | None:
    """None when PostgreSQL answers on PG_HOST:PG_PORT, else the reason it does not."""
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=1):
            return None
    except OSError as exc:
        return f"PostgreSQL not reachable on {PG_HOST}:{PG_PORT}: {exc}"


@contextlib.asynccontextmanager
async def private_postgres_database() -> AsyncIterator[str]:
    """Creates a uniquely named database and yields its asyncpg URL; drops it on exit."""
    import asyncpg

    name = f"kiln_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database: a SQLite file, then a private PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
        return
    reason = postgres_reachable()
    if reason is not None:
        print(f"skipping the PostgreSQL case: {reason}")
        pytest.skip(reason)
    async with private_postgres_database() as url:
        yield url
