"""API clients in the gateway's SQL store, secrets hashed with argon2.

argon2 is deliberately slow (tens of milliseconds, 64 MiB), so it runs on worker threads,
a few at a time, and a successful check is remembered briefly: a client sending Basic
credentials on every request pays for one hash per `cache_seconds`, not one per request.
The cache keys on an HMAC of the secret under a per-process key, never the secret itself.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.identity.models import ApiClientRow
from services.runtime.errors import InvalidArgument

log = logging.getLogger("kiln.gateway.identity")

_MAX_CACHED = 10_000


@dataclass(frozen=True)
class ApiClient:
    """An API client as the gateway sees it (never its secret)."""

    client_id: str
    tenant: str
    scopes: frozenset[str]
    created_at: dt.datetime
    disabled: bool
    rate_per_second: float | None = None
    """Its own sustained request rate; None: the gateway's default."""
    rate_burst: int | None = None
    """Its own burst (bucket size); None: the gateway's default."""


class ClientExists(Exception):
    """create() found the client_id taken."""


@dataclass
class _Verified:
    digest: bytes
    client: ApiClient
    expires_at: float


def _to_client(row: ApiClientRow) -> ApiClient:
    created_at = row.created_at
    if created_at.tzinfo is None:  # SQLite drops the zone; every stored time is UTC
        created_at = created_at.replace(tzinfo=dt.UTC)
    return ApiClient(
        client_id=row.client_id,
        tenant=row.tenant,
        scopes=frozenset(row.scopes.split()),
        created_at=created_at,
        disabled=row.disabled,
        rate_per_second=row.rate_per_second,
        rate_burst=row.rate_burst,
    )


def _validate(client_id: str, secret: str, tenant: str) -> None:
    # Basic credentials split at the first ':', so an id with one could never authenticate.
    if not client_id or len(client_id) > 128 or ":" in client_id:
        raise InvalidArgument("client_id must be 1-128 characters without ':'", field="client_id")
    if not secret:
        raise InvalidArgument("a client secret cannot be empty", field="client_secret")
    if not tenant or len(tenant) > 64:
        raise InvalidArgument("tenant must be 1-64 characters", field="tenant")


class ClientStore:
    """Creates, reads and authenticates API clients."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        hasher: PasswordHasher | None = None,
        cache_seconds: float = 60.0,
        max_concurrent_hashes: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._hasher = hasher or PasswordHasher()
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._hashing = asyncio.Semaphore(max_concurrent_hashes)
        self._cache_key = secrets.token_bytes(32)
        self._verified: dict[str, _Verified] = {}
        self._dummy_hash: str | None = None

    async def _hash(self, secret: str) -> str:
        async with self._hashing:
            return await asyncio.to_thread(self._hasher.hash, secret)

    async def _matches(self, secret_hash: str, secret: str) -> bool:
        def check() -> bool:
            try:
                return self._hasher.verify(secret_hash, secret)
            except (VerificationError, InvalidHashError):
                return False

        async with self._hashing:
            return await asyncio.to_thread(check)

    def _digest(self, client_id: str, secret: str) -> bytes:
        message = client_id.encode() + b"\0" + secret.encode()
        return hmac.new(self._cache_key, message, hashlib.sha256).digest()

    def forget(self, client_id: str) -> None:
        """Drops a cached verification (after the client changed)."""
        self._verified.pop(client_id, None)

    async def get(self, client_id: str) -> ApiClient | None:
        """The client, or None when there is none with that id."""
        async with self._sessions() as session:
            row = await session.get(ApiClientRow, client_id)
            return None if row is None else _to_client(row)

    async def create(
        self, client_id: str, secret: str, *, tenant: str, scopes: Iterable[str]
    ) -> ApiClient:
        """Stores a new client; raises ClientExists when the id is taken."""
        _validate(client_id, secret, tenant)
        row = ApiClientRow(
            client_id=client_id,
            secret_hash=await self._hash(secret),
            tenant=tenant,
            scopes=" ".join(sorted(set(scopes))),
            created_at=dt.datetime.now(dt.UTC),
            disabled=False,
        )
        try:
            async with self._sessions.begin() as session:
                session.add(row)
        except IntegrityError as exc:
            raise ClientExists(client_id) from exc
        return _to_client(row)

    async def ensure(
        self, client_id: str, secret: str, *, tenant: str, scopes: Iterable[str]
    ) -> ApiClient:
        """Creates the client if absent; an existing one gets `secret` if its hash differs.

        Its tenant is never changed: moving a client would hand it another tenant's data.
        """
        async with self._sessions() as session:
            row = await session.get(ApiClientRow, client_id)
        if row is None:
            try:
                return await self.create(client_id, secret, tenant=tenant, scopes=scopes)
            except ClientExists:  # another gateway replica created it first
                async with self._sessions() as session:
                    row = await session.get(ApiClientRow, client_id)
                assert row is not None
        if not await self._matches(row.secret_hash, secret):
            new_hash = await self._hash(secret)
            async with self._sessions.begin() as session:
                await session.execute(
                    update(ApiClientRow)
                    .where(ApiClientRow.client_id == client_id)
                    .values(secret_hash=new_hash)
                )
            self.forget(client_id)
            log.info("client secret updated", extra={"client_id": client_id})
        if row.tenant != tenant:
            log.warning(
                "client exists in another tenant; keeping it",
                extra={"client_id": client_id, "tenant": row.tenant, "configured": tenant},
            )
        return _to_client(row)

    async def list_clients(self, tenant: str | None = None) -> list[ApiClient]:
        """Every client (of one tenant, when given), by id."""
        query = select(ApiClientRow).order_by(ApiClientRow.client_id)
        if tenant is not None:
            query = query.where(ApiClientRow.tenant == tenant)
        async with self._sessions() as session:
            return [_to_client(row) for row in await session.scalars(query)]

    async def delete(self, client_id: str) -> bool:
        """Removes a client; its tokens stop working when they expire (they are not revoked:
        disable it first for an immediate stop of Basic credentials). False when unknown."""
        async with self._sessions.begin() as session:
            result = await session.execute(
                delete(ApiClientRow).where(ApiClientRow.client_id == client_id)
            )
        self.forget(client_id)
        return bool(getattr(result, "rowcount", 0))

    async def set_rate_limit(
        self, client_id: str, per_second: float | None, burst: int | None
    ) -> None:
        """Gives the client its own rate limit (None, None: back to the gateway's default)."""
        if (per_second is None) != (burst is None):
            raise InvalidArgument("set both the rate and the burst, or neither", field="rate")
        if per_second is not None and burst is not None and (per_second <= 0 or burst < 1):
            raise InvalidArgument("the rate must be > 0 and the burst at least 1", field="rate")
        async with self._sessions.begin() as session:
            await session.execute(
                update(ApiClientRow)
                .where(ApiClientRow.client_id == client_id)
                .values(rate_per_second=per_second, rate_burst=burst)
            )
        self.forget(client_id)

    async def set_secret(self, client_id: str, secret: str) -> bool:
        """Replaces the client's secret (rotation); False when there is no such client. Other
        processes' verification caches keep the old secret for up to their `cache_seconds`."""
        if not secret:
            raise InvalidArgument("a client secret cannot be empty", field="client_secret")
        secret_hash = await self._hash(secret)
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(ApiClientRow)
                .where(ApiClientRow.client_id == client_id)
                .values(secret_hash=secret_hash)
            )
        self.forget(client_id)
        return bool(getattr(result, "rowcount", 0))

    async def set_disabled(self, client_id: str, disabled: bool) -> None:
        """Disables (or re-enables) a client; its cached verification goes at once."""
        async with self._sessions.begin() as session:
            await session.execute(
                update(ApiClientRow)
                .where(ApiClientRow.client_id == client_id)
                .values(disabled=disabled)
            )
        self.forget(client_id)

    async def verify(self, client_id: str, secret: str) -> ApiClient | None:
        """The client when `secret` is its secret and it is enabled, else None.

        Unknown ids cost one hash as well, so timing does not tell which ids exist.
        """
        digest = self._digest(client_id, secret)
        now = self._clock()
        cached = self._verified.get(client_id)
        if (
            cached is not None
            and cached.expires_at > now
            and hmac.compare_digest(cached.digest, digest)
        ):
            return cached.client
        async with self._sessions() as session:
            row = (
                await session.execute(
                    select(ApiClientRow).where(ApiClientRow.client_id == client_id)
                )
            ).scalar_one_or_none()
        if row is None:
            if self._dummy_hash is None:
                self._dummy_hash = await self._hash(secrets.token_urlsafe(16))
            await self._matches(self._dummy_hash, secret)
            return None
        if not await self._matches(row.secret_hash, secret) or row.disabled:
            return None
        client = _to_client(row)
        if len(self._verified) >= _MAX_CACHED:
            self._verified.pop(next(iter(self._verified)))
        self._verified[client_id] = _Verified(digest, client, now + self._cache_seconds)
        return client
