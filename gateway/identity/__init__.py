"""API clients, their credentials, and the authentication of every gateway request."""

from gateway.identity.authn import (
    Authenticator,
    Caller,
    invalid_client,
    invalid_token,
    missing_credentials,
    parse_basic,
    split_authorization,
)
from gateway.identity.store import ApiClient, ClientExists, ClientStore

__all__ = [
    "ApiClient",
    "Authenticator",
    "Caller",
    "ClientExists",
    "ClientStore",
    "invalid_client",
    "invalid_token",
    "missing_credentials",
    "parse_basic",
    "split_authorization",
]
