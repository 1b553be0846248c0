"""The SDK's exceptions, one tree:

KilnError                 every error the SDK raises
├── ApiError              the API answered an error status (status, code, body)
│   ├── BadRequest        400 / 413 / 415 / 422: the request is wrong; retrying will not help
│   ├── Unauthorized      401: bad or expired credentials
│   ├── Forbidden         403: the token lacks the scope
│   ├── NotFound          404: unknown id (or another tenant's)
│   ├── Conflict          409 / 423: a lock held, a name taken
│   ├── RateLimited       429, after the retries ran out (`retry_after`)
│   └── ServerError       5xx, after the retries ran out for 503
├── TransportError        the server could not be reached, after the retries
└── JobError              a job did not end well
    ├── JobFailed         it failed (`job["error"]`)
    ├── JobCanceled       it was cancelled
    └── WaitTimeout       it had not ended within the wait
"""

from __future__ import annotations

from typing import Any


class KilnError(Exception):
    """Every error the SDK raises."""


class ApiError(KilnError):
    """An error answer: `status` (HTTP), `code` (the API's own error code, when it has one:
    CLyman's err_code, Claid's error_code, OAuth2's error), `body` (parsed JSON or text)."""

    def __init__(self, status: int, message: str, *, code: str = "", body: Any = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.code = code
        self.body = body


class BadRequest(ApiError):
    pass


class Unauthorized(ApiError):
    pass


class Forbidden(ApiError):
    pass


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class RateLimited(ApiError):
    def __init__(self, *args: Any, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


class ServerError(ApiError):
    pass


class TransportError(KilnError):
    """The server could not be reached (connection refused, reset, timed out)."""


class JobError(KilnError):
    def __init__(self, message: str, job: dict[str, Any]) -> None:
        super().__init__(message)
        self.job = job


class JobFailed(JobError):
    pass


class JobCanceled(JobError):
    pass


class WaitTimeout(JobError):
    pass


def error_for(status: int, body: Any, text: str) -> ApiError:
    """The exception of an error answer, its message and code read from any API's body."""
    message, code = text.strip()[:500] or f"HTTP {status}", ""
    if isinstance(body, dict):
        detail = body.get("detail")
        inner: dict[str, Any] = detail if isinstance(detail, dict) else body
        for key in ("message", "err_msg", "error_message", "error_description"):
            if isinstance(inner.get(key), str) and inner[key]:
                message = inner[key]
                break
        for key in ("err_code", "error_code", "error", "code"):
            if inner.get(key) not in (None, ""):
                code = str(inner[key])
                break
    kind: type[ApiError]
    if status == 401:
        kind = Unauthorized
    elif status == 403:
        kind = Forbidden
    elif status == 404:
        kind = NotFound
    elif status in (409, 423):
        kind = Conflict
    elif status == 429:
        kind = RateLimited
    elif status >= 500:
        kind = ServerError
    else:
        kind = BadRequest
    return kind(status, message, code=code, body=body)
