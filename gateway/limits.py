"""Per-client rate limits: a token bucket per API client, in this gateway replica.

Each client may send `burst` requests at once and `per_second` sustained; its own limit is
stored on its row (`ClientStore.set_rate_limit`), otherwise the gateway's default applies
(`KILN_RATE_LIMIT_PER_SECOND`, `KILN_RATE_LIMIT_BURST`; 0 turns limiting off). A request over
the limit answers 429 in its API's shape, with `Retry-After` (whole seconds until a request
fits) and the `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` headers that every
admitted response carries too.

Buckets live in each replica's memory: with N gateway replicas a client can reach N times its
limit. That is the documented trade (no shared store on the request path); put a shared
limiter at the edge (Envoy's rate-limit service) where an exact global limit matters.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from prometheus_client import Counter

from gateway.errors import ApiError
from gateway.identity import Caller, ClientStore

LIMITED = Counter("kiln_gateway_rate_limited_total", "Requests refused by a rate limit (429).")
#: How long a client's own limit is remembered before it is read again.
_LIMITS_TTL_SECONDS = 30.0
#: Buckets idle this long are full again and can be forgotten.
_MAX_BUCKETS = 100_000


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass(frozen=True)
class Admission:
    """An admitted request's view of its bucket, as response headers."""

    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }


class RateLimiter:
    def __init__(
        self,
        clients: ClientStore,
        *,
        per_second: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clients = clients
        self._default = (per_second, burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._limits: dict[str, tuple[float, int, float]] = {}

    async def _limit_of(self, caller: Caller) -> tuple[float, int]:
        client_id = caller.principal.client_id
        now = self._clock()
        known = self._limits.get(client_id)
        if known is not None and known[2] > now:
            return known[0], known[1]
        client = await self._clients.get(client_id)
        rate, burst = self._default
        if client is not None and client.rate_per_second is not None and client.rate_burst:
            rate, burst = client.rate_per_second, client.rate_burst
        self._limits[client_id] = (rate, burst, now + _LIMITS_TTL_SECONDS)
        return rate, burst

    async def admit(self, caller: Caller) -> Admission | None:
        """The request's admission, or None when no limit applies; ApiError 429 over it."""
        rate, burst = await self._limit_of(caller)
        if rate <= 0 or burst <= 0:
            return None
        key = f"{caller.principal.tenant}/{caller.principal.client_id}"
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _MAX_BUCKETS:
                self._forget_full(now, rate, burst)
            bucket = self._buckets[key] = _Bucket(float(burst), now)
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens < 1.0:
            LIMITED.inc()
            wait = math.ceil((1.0 - bucket.tokens) / rate)
            refused = Admission(burst, 0, math.ceil((burst - bucket.tokens) / rate))
            raise ApiError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rate limit exceeded: {burst} requests at once, {rate:g} per second; "
                f"retry in {wait} s",
                reason="ERROR_REASON_RATE_LIMITED",
                http_status=429,
                headers={"Retry-After": str(wait), **refused.headers()},
            )
        bucket.tokens -= 1.0
        return Admission(burst, int(bucket.tokens), math.ceil((burst - bucket.tokens) / rate))

    def _forget_full(self, now: float, rate: float, burst: int) -> None:
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.updated) * rate >= burst]
        for key in full:
            del self._buckets[key]
