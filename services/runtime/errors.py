"""Kiln's one exception hierarchy.

    KilnError
    ├── ConfigError        a setting is missing or malformed; the process refuses to start
    ├── AuthError          credentials are missing, malformed, tampered with or expired
    │   └── TokenExpired   a once-valid token whose time has passed
    ├── PermissionDenied   valid credentials without the scope the call needs
    ├── NotFound           a resource does not exist for the caller's tenant
    ├── AlreadyExists      a name that must be unique within the tenant is taken
    ├── InvalidArgument    a request field failed validation
    │   ├── MissingField   a required field is absent
    │   ├── MalformedBody  the body is not the JSON the route expects
    │   └── ImageInvalid   an image cannot be decoded or is over the pixel limits
    ├── FailedPrecondition the resource is not in a state that allows the call
    │   ├── LockHeld       another device holds the object's lock
    │   ├── LeaseLost      a worker's lease on a job has ended (expired, or the job finished)
    │   ├── JobCanceled    the job a worker reports on was cancelled by its owner
    │   └── InputUnreachable an input URL or storage object could not be fetched
    ├── ResourceExhausted  a limit was reached
    │   ├── TooLarge       a body or upload exceeds a configured limit
    │   └── FellBehind     a subscriber overflowed its queue and was dropped
    ├── StorageError       the S3 store failed in a way the caller cannot fix
    ├── Unavailable        another Kiln service could not be reached in time
    └── JobFailed          a job handler gives up on its job (worker side, never an RPC status)

Servicers raise these; `services.runtime.status` turns them into gRPC statuses with a
`google.rpc.ErrorInfo` detail, so the gateway can render each API's own error body. Job
handlers raise JobFailed, which the worker library reports with FailJob.
"""

from __future__ import annotations


class KilnError(Exception):
    """Base of every error Kiln raises on purpose."""

    #: `kiln.common.v1.ErrorReason` name carried in ErrorInfo.reason.
    reason: str = "ERROR_REASON_UNSPECIFIED"

    def __init__(
        self, message: str, *, field: str | None = None, metadata: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        #: Extra ErrorInfo metadata an API's error shape may need (e.g. CLyman's msg_type).
        self.metadata = dict(metadata or {})


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


class PermissionDenied(KilnError):
    """The caller is authenticated but its token lacks the scope the call needs."""

    reason = "ERROR_REASON_INSUFFICIENT_SCOPE"


class NotFound(KilnError):
    """The resource does not exist for the caller's tenant."""

    reason = "ERROR_REASON_NOT_FOUND"


class InvalidArgument(KilnError):
    """A request field failed validation."""

    reason = "ERROR_REASON_INVALID_FIELD"


class MissingField(InvalidArgument):
    """A required request field is absent."""

    reason = "ERROR_REASON_MISSING_FIELD"


class MalformedBody(InvalidArgument):
    """The request body is not the JSON the route expects."""

    reason = "ERROR_REASON_MALFORMED_BODY"


class ImageInvalid(InvalidArgument):
    """An image cannot be decoded, or is larger than the configured pixel limits (Claid answers
    422 with `error_type` "image")."""

    reason = "ERROR_REASON_BAD_IMAGE"


class AlreadyExists(KilnError):
    """A name that must be unique within the tenant is already taken."""

    reason = "ERROR_REASON_ALREADY_EXISTS"


class FailedPrecondition(KilnError):
    """The resource is not in a state that allows the call."""


class LockHeld(FailedPrecondition):
    """Another device holds the object's lock."""

    reason = "ERROR_REASON_LOCK_HELD"


class LeaseLost(FailedPrecondition):
    """A worker's lease on a job has ended: it expired and the job went back to the queue (or
    to another worker), or the job already finished. The worker must stop and report nothing."""

    reason = "ERROR_REASON_LEASE_LOST"


class JobCanceled(FailedPrecondition):
    """The job's owner cancelled it while a worker held it: the worker stops and removes its
    partial outputs."""

    reason = "ERROR_REASON_JOB_CANCELED"


class InputUnreachable(FailedPrecondition):
    """An input (an http(s) URL or a storage object) could not be fetched: the host refused or
    timed out, the address is not allowed, the object is missing or larger than the cap
    (Claid answers 400)."""

    reason = "ERROR_REASON_INPUT_UNREACHABLE"


class ResourceExhausted(KilnError):
    """A limit was reached."""


class TooLarge(ResourceExhausted):
    """A body or upload exceeds a configured limit."""

    reason = "ERROR_REASON_TOO_LARGE"


class FellBehind(ResourceExhausted):
    """A subscriber overflowed its bounded queue and was dropped; it should resubscribe."""

    reason = "ERROR_REASON_FELL_BEHIND"


class StorageError(KilnError):
    """The S3 store failed in a way the caller cannot fix."""


class Unavailable(KilnError):
    """Another Kiln service could not be reached in time; the call may be retried."""

    reason = "ERROR_REASON_UNSPECIFIED"


class JobFailed(KilnError):
    """Raised by a job handler to end its attempt with an error the job's owner may read.

    The worker library reports it with `WorkerService.FailJob`: `retryable=True` lets the jobs
    service queue the job again with backoff while attempts remain (a timeout, an input that was
    not reachable yet); the default, False, fails the job at once (bad input: another attempt
    would fail the same way). Any other exception a handler raises is reported as retryable,
    with a short message that does not leak its text.
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
