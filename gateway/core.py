"""The gateway's shared resources: config, channels, client store, token keys, metrics.

Built with the app; `start()` (the app's lifespan) opens what needs the event loop or I/O,
and `stop()` closes it. Handlers reach everything through `RequestContext.gateway`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.errors import ErrorShapes
from gateway.identity import Authenticator, ClientStore
from gateway.limits import RateLimiter
from gateway.metrics import GatewayMetrics
from gateway.upstream import Upstreams
from services.runtime import db
from services.runtime.auth import TokenSigner, TokenVerifier
from services.runtime.config import GatewayConfig

log = logging.getLogger("kiln.gateway")

MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass(frozen=True)
class Limits:
    """Per-request limits and timeouts; `from_config` takes those the environment sets."""

    call_timeout: float = 30.0
    """Deadline of a unary upstream call, in seconds."""
    upload_timeout: float = 3600.0
    """Deadline of a streamed upload, in seconds."""
    health_timeout: float = 1.0
    """How long /health waits for each service's health check."""
    max_upload_bytes: int = 5 * 1024**3
    """Largest file a multipart upload may carry."""
    internal_token_ttl: int = 300
    """Lifetime of the tokens minted for Basic callers."""

    @classmethod
    def from_config(cls, config: GatewayConfig) -> Limits:
        """The limits the environment sets; the rest keep their defaults."""
        return cls(
            call_timeout=config.call_timeout_seconds, max_upload_bytes=config.max_upload_bytes
        )


class Gateway:
    """Everything a request handler needs beyond its request."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        shapes: ErrorShapes,
        metrics: GatewayMetrics,
        limits: Limits,
    ) -> None:
        self.config = config
        self.shapes = shapes
        self.metrics = metrics
        self.limits = limits
        self.upstreams = Upstreams(config.targets, metrics)
        self._engine: AsyncEngine | None = None
        self._authenticator: Authenticator | None = None
        self._limiter: RateLimiter | None = None

    @property
    def call_timeout(self) -> float:
        return self.limits.call_timeout

    @property
    def authenticator(self) -> Authenticator:
        """Request authentication; exists between start() and stop()."""
        if self._authenticator is None:
            raise RuntimeError("the gateway is not started (its lifespan did not run)")
        return self._authenticator

    @property
    def limiter(self) -> RateLimiter:
        """Per-client rate limits; exists between start() and stop()."""
        if self._limiter is None:
            raise RuntimeError("the gateway is not started (its lifespan did not run)")
        return self._limiter

    @property
    def clients(self) -> ClientStore:
        """The API-client store; exists between start() and stop()."""
        return self.authenticator.clients

    async def start(self) -> None:
        """Loads keys, migrates the client store, creates the demo client, opens channels."""
        auth = self.config.auth
        signer = TokenSigner.from_file(
            auth.private_key_file, issuer=auth.issuer, ttl_seconds=auth.token_ttl_seconds
        )
        verifier = TokenVerifier.from_files(auth.public_key_files, issuer=auth.issuer)
        engine = db.create_engine(self.config.database_url)
        try:
            await db.migrate(engine, "gateway", MIGRATIONS)
            clients = ClientStore(db.sessionmaker(engine))
            if self.config.demo_client_id:
                await clients.ensure(
                    self.config.demo_client_id,
                    self.config.demo_client_secret,
                    tenant=self.config.demo_tenant,
                    scopes=["*"],
                )
        except BaseException:
            await engine.dispose()
            raise
        self._engine = engine
        self._authenticator = Authenticator(
            verifier,
            signer,
            clients,
            internal_ttl_seconds=self.limits.internal_token_ttl,
        )
        self._limiter = RateLimiter(
            clients,
            per_second=self.config.rate_limit_per_second,
            burst=self.config.rate_limit_burst,
        )
        await self.upstreams.open()
        log.info(
            "gateway started",
            extra={
                "targets": dict(self.config.targets),
                "descriptor_set": str(self.config.descriptor_set),
            },
        )

    async def stop(self, grace: float | None = 5.0) -> None:
        """Closes channels (in-flight calls get `grace` seconds) and the database engine."""
        await self.upstreams.close(grace)
        if self._engine is not None:
            await self._engine.dispose()
        self._engine = None
        self._authenticator = None
        self._limiter = None
