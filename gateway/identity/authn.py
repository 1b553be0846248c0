"""Who is calling: Bearer tokens and Basic client credentials, checked at the edge.

The services verify every call themselves; the gateway checks too so that a bad credential
gets an exact 401 before any work, and so that Basic callers (Clara, Scenario) can be turned
into a Bearer token the services accept. The tenant reaches the services only inside a token
the gateway's key signed, never in a header a client could set.

Routes whose documented clients send no credentials at all (CLyman's) may name an anonymous
tenant: a request to them without an Authorization header then acts as that tenant, through a
token the gateway mints for the client id `anonymous`. Credentials that are sent are always
checked, so a wrong token is a 401 there too, never a silent fall-back to anonymous.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc

from gateway.errors import ApiError
from gateway.identity.store import ApiClient, ClientStore
from services.runtime.auth import Principal, TokenSigner, TokenVerifier
from services.runtime.errors import AuthError, TokenExpired

REALM = "kiln"
#: client_id in the tokens minted for requests without credentials on anonymous routes.
ANONYMOUS_CLIENT_ID = "anonymous"
_BEARER_CHALLENGE = f'Bearer realm="{REALM}"'
_BASIC_CHALLENGE = f'Basic realm="{REALM}"'


@dataclass(frozen=True)
class Caller:
    """An authenticated request: who it is, and the Bearer token to forward for it."""

    principal: Principal
    token: str


def _quoted(text: str) -> str:
    # auth-param values are quoted-strings: no quotes or backslashes inside (RFC 7235 §2.1).
    return text.replace("\\", "'").replace('"', "'")


def missing_credentials() -> ApiError:
    """401 for a request without credentials: a bare challenge (RFC 6750 §3.1)."""
    return ApiError(
        grpc.StatusCode.UNAUTHENTICATED,
        "missing credentials: send 'Authorization: Bearer <token>' "
        "or Basic client_id:client_secret",
        reason="ERROR_REASON_MISSING_CREDENTIALS",
        headers={"WWW-Authenticate": _BEARER_CHALLENGE},
    )


def invalid_token(message: str, *, expired: bool = False) -> ApiError:
    """401 for a Bearer token that is malformed, tampered with, foreign or expired."""
    return ApiError(
        grpc.StatusCode.UNAUTHENTICATED,
        message,
        reason="ERROR_REASON_TOKEN_EXPIRED" if expired else "ERROR_REASON_INVALID_TOKEN",
        headers={
            "WWW-Authenticate": (
                f'{_BEARER_CHALLENGE}, error="invalid_token", '
                f'error_description="{_quoted(message)}"'
            )
        },
        api_code="invalid_token",
    )


def invalid_client(message: str = "invalid client credentials") -> ApiError:
    """401 for client credentials that do not authenticate (RFC 6749 §5.2 invalid_client)."""
    return ApiError(
        grpc.StatusCode.UNAUTHENTICATED,
        message,
        reason="ERROR_REASON_INVALID_TOKEN",
        headers={"WWW-Authenticate": _BASIC_CHALLENGE},
        api_code="invalid_client",
    )


def parse_basic(credentials: str) -> tuple[str, str]:
    """`base64(client_id:secret)` → (client_id, secret); raises invalid_client()."""
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise invalid_client("malformed Basic credentials") from None
    client_id, colon, secret = decoded.partition(":")
    if not colon or not client_id or not secret:
        raise invalid_client("Basic credentials must be client_id:client_secret")
    return client_id, secret


def split_authorization(header: str | None) -> tuple[str, str]:
    """`Scheme credentials` → (lower-cased scheme, credentials); ("", "") when absent."""
    if not header or not header.strip():
        return "", ""
    scheme, _, credentials = header.strip().partition(" ")
    return scheme.lower(), credentials.strip()


@dataclass
class _Minted:
    token: str
    expires_at: float


#: How long a client's disabled flag is trusted before a Bearer call reads it again.
DISABLED_CHECK_SECONDS = 10.0


class Authenticator:
    """Turns an Authorization header into a Caller, or raises a 401 ApiError."""

    def __init__(
        self,
        verifier: TokenVerifier,
        signer: TokenSigner,
        clients: ClientStore,
        *,
        internal_ttl_seconds: int = 300,
        refresh_before_seconds: int = 60,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.verifier = verifier
        self.signer = signer
        self.clients = clients
        self._internal_ttl = internal_ttl_seconds
        self._refresh_before = refresh_before_seconds
        self._clock = clock
        # Keyed by (client_id, tenant): the anonymous client id is shared by every tenant.
        self._minted: dict[tuple[str, str], _Minted] = {}
        self._disabled_checked: dict[str, tuple[bool, float]] = {}

    async def authenticate(
        self, authorization: str | None, *, anonymous_tenant: str = ""
    ) -> Caller:
        """Accepts `Bearer <jwt>` or `Basic base64(client_id:secret)`.

        With `anonymous_tenant`, a request without an Authorization header is that tenant's
        anonymous caller instead of a 401.
        """
        scheme, credentials = split_authorization(authorization)
        if not scheme:
            if anonymous_tenant:
                return self.anonymous(anonymous_tenant)
            raise missing_credentials()
        if scheme == "bearer":
            if not credentials:
                raise invalid_token("empty Bearer token")
            try:
                principal = self.verifier.verify(credentials)
            except TokenExpired:
                raise invalid_token("token expired", expired=True) from None
            except AuthError as exc:
                raise invalid_token(exc.message) from None
            if await self._disabled(principal.client_id):
                raise invalid_token("the client of this token is disabled")
            return Caller(principal=principal, token=credentials)
        if scheme == "basic":
            client = await self.client_from_basic(credentials)
            principal = _principal(client)
            return Caller(principal=principal, token=self._internal_token(principal))
        raise invalid_token(f"unsupported authorization scheme {scheme!r}: use Bearer or Basic")

    async def client_from_basic(self, credentials: str) -> ApiClient:
        """The client whose `client_id:secret` these Basic credentials are; else 401."""
        client_id, secret = parse_basic(credentials)
        return await self.client_from_secret(client_id, secret)

    async def client_from_secret(self, client_id: str, secret: str) -> ApiClient:
        """The enabled client with this id and secret; else invalid_client()."""
        client = await self.clients.verify(client_id, secret)
        if client is None:
            raise invalid_client()
        return client

    def issue(self, client: ApiClient, scopes: Iterable[str] | None = None) -> tuple[str, int]:
        """A full-lifetime access token for `client` (the OAuth2 endpoints): (token, ttl)."""
        granted = client.scopes if scopes is None else frozenset(scopes)
        return self.signer.issue(
            client_id=client.client_id, tenant=client.tenant, scopes=granted, now=self._clock()
        )

    async def _disabled(self, client_id: str) -> bool:
        """Whether the token's client has been disabled since it was issued, read again at
        most every DISABLED_CHECK_SECONDS, so `kiln clients disable` stops its tokens within
        that period rather than at their expiry."""
        now = self._clock()
        known = self._disabled_checked.get(client_id)
        if known is not None and known[1] > now:
            return known[0]
        client = await self.clients.get(client_id)
        disabled = client is not None and client.disabled
        if len(self._disabled_checked) > 10_000:
            self._disabled_checked.clear()
        self._disabled_checked[client_id] = (disabled, now + DISABLED_CHECK_SECONDS)
        return disabled

    def anonymous(self, tenant: str) -> Caller:
        """The caller of a request without credentials on a route open to `tenant`.

        Its token never leaves the gateway and is only forwarded on the routes that allow
        anonymous access, so it carries the `*` scope like the demo client: the services scope
        every call by tenant.
        """
        principal = Principal(tenant=tenant, client_id=ANONYMOUS_CLIENT_ID, scopes=frozenset({"*"}))
        return Caller(principal=principal, token=self._internal_token(principal))

    def _internal_token(self, principal: Principal) -> str:
        """A short-lived token standing in for Basic credentials (or none, for anonymous
        callers), reused until near expiry so a busy client costs one signature per period."""
        now = self._clock()
        key = (principal.client_id, principal.tenant)
        minted = self._minted.get(key)
        if minted is not None and minted.expires_at - now > self._refresh_before:
            return minted.token
        token, ttl = self.signer.issue(
            client_id=principal.client_id,
            tenant=principal.tenant,
            scopes=principal.scopes,
            ttl_seconds=self._internal_ttl,
            now=now,
        )
        self._minted[key] = _Minted(token, now + ttl)
        return token


def _principal(client: ApiClient) -> Principal:
    return Principal(tenant=client.tenant, client_id=client.client_id, scopes=client.scopes)
