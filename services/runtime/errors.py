"""Kiln's one exception hierarchy.

    KilnError
    ├── ConfigError        a setting is missing or malformed; the process refuses to start
    ├── AuthError          credentials are missing, malformed, tampered with or expired
    │   └── TokenExpired   a once-valid token whose time has passed
    ├── NotFound           a resource does not exist for the caller's tenant
    ├── InvalidArgument    a request field failed validation
    ├── TooLarge           a body or upload exceeds a configured limit
    └── StorageError       the S3 store failed in a way the caller cannot fix

Servicers raise these; `services.runtime.status` turns them into gRPC statuses with a
`google.rpc.ErrorInfo` detail, so the gateway can render each API's own error body.
"""

from __future__ import annotations


class KilnError(Exception):
    """Base of every error Kiln raises on purpose."""

    #: `kiln.common.v1.ErrorReason` name carried in ErrorInfo.reason.
    reason: str = "ERROR_REASON_UNSPECIFIED"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class ConfigError(KilnError):
    """A configuration variable is missing or malformed."""


class AuthError(KilnError):
    """Credentials are missing, malformed or not valid for this issuer."""

    reason = "ERROR_REASON_INVALID_TOKEN"


class MissingCredentials(AuthError):
    """The call carried no credentials at all."""

    reason = "ERROR_REASON_MISSING_CREDENTIALS"


class TokenExpired(AuthError):
    """The token's signature is good but its exp has passed."""

    reason = "ERROR_REASON_TOKEN_EXPIRED"


class NotFound(KilnError):
    """The resource does not exist for the caller's tenant."""

    reason = "ERROR_REASON_NOT_FOUND"


class InvalidArgument(KilnError):
    """A request field failed validation."""

    reason = "ERROR_REASON_INVALID_FIELD"


class TooLarge(KilnError):
    """A body or upload exceeds a configured limit."""

    reason = "ERROR_REASON_TOO_LARGE"


class StorageError(KilnError):
    """The S3 store failed in a way the caller cannot fix."""
