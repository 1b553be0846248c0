"""Errors the gateway answers, and the pluggable shapes their bodies take.

Every failure on the HTTP side, whether the gateway's own (no token, bad JSON, unknown route,
body too large) or a service's (a failed gRPC call), becomes one `ApiError`. The route's
`ErrorShape` then renders it, so a client of one source API sees one error format wherever the
error came from. gRPC codes map to HTTP statuses with grpc-gateway v2's table; a shape may pick
another status where its API documents one.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2, json_format
from google.rpc import error_details_pb2, status_pb2
from starlette.responses import Response

from gateway.jsonpb import JsonValue, dumps

log = logging.getLogger("kiln.gateway")

#: ErrorInfo domain of errors the gateway raises itself (the services use the same one).
DOMAIN = "kiln.dev"
_ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"

#: grpc-gateway v2's mapping (runtime.HTTPStatusFromCode).
HTTP_STATUS: Mapping[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

# Codes a channel produces on its own (connection refused, deadline hit). Without a status
# detail from a Kiln service their text describes our network, which clients must not see.
_TRANSPORT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)
_TRANSPORT_MESSAGES: Mapping[grpc.StatusCode, str] = {
    grpc.StatusCode.UNAVAILABLE: "the {service} service is unavailable; retry later",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the {service} service did not answer in time",
    grpc.StatusCode.CANCELLED: "the call to the {service} service was cancelled",
    grpc.StatusCode.UNKNOWN: "the {service} service failed",
    grpc.StatusCode.INTERNAL: "internal error",
}


def http_status_for(code: grpc.StatusCode) -> int:
    """The HTTP status grpc-gateway v2 answers for a gRPC code (500 for anything unmapped)."""
    return HTTP_STATUS.get(code, 500)


def grpc_code_number(code: grpc.StatusCode) -> int:
    """The integer of a gRPC code, as google.rpc.Status and grpc-gateway bodies carry it."""
    number: int = code.value[0]
    return number


def error_info_detail(
    reason: str, metadata: Mapping[str, str] | None = None, domain: str = DOMAIN
) -> dict[str, JsonValue]:
    """A google.rpc.ErrorInfo in its proto3 JSON form, for the details of gateway errors."""
    return {
        "@type": _ERROR_INFO_TYPE,
        "reason": reason,
        "domain": domain,
        "metadata": dict(metadata or {}),
    }


class ApiError(Exception):
    """One error answer, before an API's shape renders it."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        details: Sequence[Mapping[str, JsonValue]] | None = None,
        http_status: int | None = None,
        headers: Mapping[str, str] | None = None,
        api_code: str | None = None,
    ) -> None:
        """`reason` and `metadata` become an ErrorInfo detail unless `details` is given.

        `http_status` overrides the table for answers gRPC has no code for (405, 413, 415).
        `api_code` is the source API's own error code when the raiser knows it (an OAuth2
        `error`, a CLyman `err_code`); shapes prefer it to one derived from the gRPC code.
        """
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata: Mapping[str, str] = dict(metadata or {})
        if details is None:
            details = [error_info_detail(reason, self.metadata)] if reason else []
        self.details: tuple[Mapping[str, JsonValue], ...] = tuple(details)
        self.http_status = http_status if http_status is not None else http_status_for(code)
        self.headers: dict[str, str] = dict(headers or {})
        self.api_code = api_code

    @property
    def field(self) -> str | None:
        """The request field the error names (ErrorInfo metadata `field`), if any."""
        return self.metadata.get("field")

    def __repr__(self) -> str:
        return f"ApiError({self.code.name}, {self.message!r}, reason={self.reason!r})"

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError, service: str) -> ApiError:
        """Converts a failed upstream call, keeping its google.rpc.Status details."""
        code = _code_of(error)
        message = str(_call(error, "details") or "")
        details, reason, metadata = _status_details(error)
        if not details and code in _TRANSPORT_CODES:
            log.warning(
                "upstream call failed",
                extra={"upstream": service, "grpc_code": code.name, "error": message},
            )
            message = _TRANSPORT_MESSAGES[code].format(service=service)
        headers = {}
        if code == grpc.StatusCode.UNAUTHENTICATED:
            # The gateway always forwards a token, so the service refused the one sent.
            headers["WWW-Authenticate"] = 'Bearer realm="kiln", error="invalid_token"'
        elif reason == "ERROR_REASON_INSUFFICIENT_SCOPE":
            # RFC 6750 §3.1: name the scope the call needs.
            scope = metadata.get("scope", "")
            headers["WWW-Authenticate"] = (
                f'Bearer realm="kiln", error="insufficient_scope", scope="{scope}"'
            )
        return cls(
            code,
            message,
            reason=reason,
            metadata=metadata,
            details=details,
            headers=headers,
        )


def _call(error: grpc.RpcError, name: str) -> Any:
    method = getattr(error, name, None)
    return method() if callable(method) else None


def _code_of(error: grpc.RpcError) -> grpc.StatusCode:
    code = _call(error, "code")
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def _status_details(
    error: grpc.RpcError,
) -> tuple[list[Mapping[str, JsonValue]], str, dict[str, str]]:
    """The details of the google.rpc.Status in the call's trailers, as proto3 JSON."""
    trailers = _call(error, "trailing_metadata") or ()
    raw = next((value for key, value in trailers if key == _STATUS_DETAILS_KEY), None)
    if not isinstance(raw, bytes):
        return [], "", {}
    try:
        status = status_pb2.Status.FromString(raw)
    except Exception:  # a peer sent garbage; the code and message still stand
        return [], "", {}
    details: list[Mapping[str, JsonValue]] = []
    reason, metadata = "", {}
    for detail in status.details:
        details.append(_any_to_json(detail))
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR) and not reason:
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
    return details, reason, metadata


def _any_to_json(detail: any_pb2.Any) -> Mapping[str, JsonValue]:
    try:
        rendered: dict[str, JsonValue] = json_format.MessageToDict(
            detail, always_print_fields_with_no_presence=True
        )
        return rendered
    except (TypeError, KeyError, json_format.Error):
        # A detail type this process does not know: keep it opaque, as grpc-gateway does.
        return {"@type": detail.type_url, "value": base64.b64encode(detail.value).decode()}


# --- shapes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderedError:
    """What a shape makes of an error: the status, the body and any extra headers."""

    status: int
    body: JsonValue
    headers: Mapping[str, str] = field(default_factory=dict)
    media_type: str = "application/json"
    """`application/json` bodies are serialised as JSON; anything else must be a str."""


#: Renders one error in one API's format.
ErrorShape = Callable[[ApiError], RenderedError]


@dataclass(frozen=True)
class ErrorRequest:
    """The request an error answers, for shapes whose body depends on the operation."""

    method: str = ""
    """HTTP method."""
    path: str = ""
    """Request path."""
    service: str | None = None
    """Full name of the proto service the matched route calls; None when no route matched."""
    operation: str = ""
    """The matched endpoint's name (`/kiln.objects.v1.ClymanService/GetObject` for an
    annotated method, the adapter's name otherwise); empty when no route matched."""


@dataclass(frozen=True)
class RequestShape:
    """A shape that also sees the request the error answers.

    CLyman's envelope names the operation (`msg_type`) even for errors the gateway raises
    itself (bad JSON, body too large), so its body depends on the route, not only the error.
    """

    render: Callable[[ApiError, ErrorRequest], RenderedError]


#: What `ErrorShapes` holds for a route: a plain shape or a request-aware one.
AnyShape = ErrorShape | RequestShape


def grpc_gateway_shape(error: ApiError) -> RenderedError:
    """grpc-gateway v2's default body: `{"code": <gRPC code>, "message", "details"}`."""
    return RenderedError(
        status=error.http_status,
        body={
            "code": grpc_code_number(error.code),
            "message": error.message,
            "details": [dict(d) for d in error.details],
        },
    )


# RFC 6749 §5.2 error codes for the codes Kiln's reasons and gRPC codes carry.
_OAUTH2_BY_REASON: Mapping[str, str] = {
    "ERROR_REASON_MISSING_CREDENTIALS": "invalid_client",
    "ERROR_REASON_INVALID_TOKEN": "invalid_token",
    "ERROR_REASON_TOKEN_EXPIRED": "invalid_token",
    "ERROR_REASON_INSUFFICIENT_SCOPE": "invalid_scope",
    "ERROR_REASON_INVALID_FIELD": "invalid_request",
    "ERROR_REASON_TOO_LARGE": "invalid_request",
}
_OAUTH2_BY_CODE: Mapping[grpc.StatusCode, str] = {
    grpc.StatusCode.INVALID_ARGUMENT: "invalid_request",
    grpc.StatusCode.FAILED_PRECONDITION: "invalid_request",
    grpc.StatusCode.OUT_OF_RANGE: "invalid_request",
    grpc.StatusCode.NOT_FOUND: "invalid_request",
    grpc.StatusCode.UNIMPLEMENTED: "invalid_request",
    grpc.StatusCode.UNAUTHENTICATED: "invalid_client",
    grpc.StatusCode.PERMISSION_DENIED: "unauthorized_client",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "temporarily_unavailable",
    grpc.StatusCode.UNAVAILABLE: "temporarily_unavailable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "temporarily_unavailable",
}


def oauth2_shape(error: ApiError) -> RenderedError:
    """RFC 6749 §5.2: `{"error": <code>, "error_description": <text>}`."""
    code = (
        error.api_code
        or _OAUTH2_BY_REASON.get(error.reason)
        or _OAUTH2_BY_CODE.get(error.code, "server_error")
    )
    return RenderedError(
        status=error.http_status,
        body={"error": code, "error_description": error.message},
    )


# Clara.io answers 401, 403, 404, 422 and 500 with `{"message": ...}` (api-spec §1.1).
_CLARA_KEPT_STATUSES = frozenset({401, 403, 404, 405, 413, 415, 429, 499, 501, 503, 504})


def clara_shape(error: ApiError) -> RenderedError:
    """Clara.io's error body, `{"message": <text>}` (plus `field` when the error names one);
    a request the service refuses as invalid is 422, Clara's unprocessable entity."""
    status = error.http_status
    if status not in _CLARA_KEPT_STATUSES:
        status = 422 if 400 <= status < 500 else 500
    body: dict[str, JsonValue] = {"message": error.message}
    if error.field:
        body["field"] = error.field
    return RenderedError(status=status, body=body)


# Claid's published codes (docs.claid.ai/errors); other statuses carry the status as the code.
_CLAID_KNOWN: Mapping[int, tuple[str, str]] = {
    401: ("111", "auth"),
    422: ("9000", "validation"),
    429: ("2001", "general"),
}


#: `error_type` of errors the status alone does not place.
_CLAID_REASON_TYPES: Mapping[str, str] = {
    "ERROR_REASON_BAD_IMAGE": "image",
    "ERROR_REASON_INPUT_UNREACHABLE": "storage",
}


def _claid_details(error: ApiError) -> dict[str, JsonValue]:
    """Every field's messages when the service sent them all (ErrorInfo metadata
    `error_details`, JSON: the render service's request validation), else the one field the
    error names."""
    raw = error.metadata.get("error_details")
    if raw:
        try:
            decoded = json.loads(raw)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict) and all(
            isinstance(v, list) and all(isinstance(m, str) for m in v) for v in decoded.values()
        ):
            return {str(k): list(v) for k, v in decoded.items()}
    return {error.field: [error.message]} if error.field else {}


def claid_shape(error: ApiError) -> RenderedError:
    """Claid's `{"error_code", "error_type", "error_message", "error_details"}` (nested under
    `detail` on 429, as Claid's rate-limit answers are). `error_details` maps the field an
    error names to its messages. INVALID_ARGUMENT is 422 with code 9000 (validation), except a
    body that is not JSON at all (400, as Claid answers it). An image that cannot be decoded or
    is over the pixel limits is 422 `image` (code "422"), an input that cannot be fetched 400
    `storage` (code "400")."""
    status = error.http_status
    malformed = error.reason == "ERROR_REASON_MALFORMED_BODY"
    if error.code == grpc.StatusCode.INVALID_ARGUMENT and status == 400 and not malformed:
        status = 422
    code, kind = _CLAID_KNOWN.get(status, (str(status), "general"))
    if error.reason in _CLAID_REASON_TYPES:
        code, kind = str(status), _CLAID_REASON_TYPES[error.reason]
    elif malformed:
        code, kind = str(status), "validation"
    if error.api_code:
        code = error.api_code
    details = _claid_details(error)
    body: dict[str, JsonValue] = {
        "error_code": code,
        "error_type": kind,
        "error_message": error.message,
        "error_details": details,
    }
    return RenderedError(status=status, body={"detail": body} if status == 429 else body)


class ErrorShapes:
    """Which shape renders the errors of which routes.

    A shape registered for a proto service (full name, `kiln.objects.v1.AssetService`) wins
    over one registered for a path prefix; among prefixes the longest wins; the default
    (grpc-gateway's) renders the rest, unknown routes included.
    """

    def __init__(self, default: ErrorShape = grpc_gateway_shape) -> None:
        self.default = default
        self._by_service: dict[str, AnyShape] = {}
        self._by_prefix: list[tuple[str, AnyShape]] = []

    def register(
        self, shape: AnyShape, *, path_prefix: str | None = None, service: str | None = None
    ) -> None:
        """Routes errors of a path prefix (`/oauth2`) or of a proto service to `shape`."""
        if (path_prefix is None) == (service is None):
            raise ValueError("register a shape for exactly one of path_prefix or service")
        if service is not None:
            self._by_service[service] = shape
            return
        assert path_prefix is not None
        prefix = "/" + path_prefix.strip("/")
        self._by_prefix = [(p, s) for p, s in self._by_prefix if p != prefix]
        self._by_prefix.append((prefix, shape))
        self._by_prefix.sort(key=lambda entry: len(entry[0]), reverse=True)

    def for_request(self, path: str, service: str | None = None) -> AnyShape:
        """The shape for a request path, and the proto service its route calls, if any."""
        if service is not None and service in self._by_service:
            return self._by_service[service]
        for prefix, shape in self._by_prefix:
            # Prefixes match whole segments: /oauth2 covers /oauth2/token, not /oauth2x.
            if path == prefix or path.startswith(prefix + "/") or prefix == "/":
                return shape
        return self.default

    def rendered(self, error: ApiError, request: ErrorRequest) -> RenderedError:
        """What the shape registered for `request` makes of `error` (status, body, headers).

        Streams use it directly: an error after the response has started can no longer
        change the status, only be written into the stream in the route's format.
        """
        shape = self.for_request(request.path, request.service)
        try:
            if isinstance(shape, RequestShape):
                return shape.render(error, request)
            return shape(error)
        except Exception:
            # A broken shape must not turn a 4xx into an unhandled exception.
            log.exception("error shape failed; answering in the default shape")
            return grpc_gateway_shape(error)

    def render(
        self,
        error: ApiError,
        path: str,
        service: str | None = None,
        *,
        method: str = "",
        operation: str = "",
    ) -> Response:
        """The HTTP response for `error` on `path`, in the shape registered for it.

        `method` and `operation` (the matched endpoint's name) reach request-aware shapes.
        """
        request = ErrorRequest(method=method, path=path, service=service, operation=operation)
        rendered = self.rendered(error, request)
        headers = {**error.headers, **rendered.headers}
        if rendered.status == 401 and not any(k.lower() == "www-authenticate" for k in headers):
            # RFC 7235 §3.1: every 401 carries a challenge.
            headers["WWW-Authenticate"] = 'Bearer realm="kiln"'
        if rendered.media_type == "application/json":
            content = dumps(rendered.body)
        else:
            content = str(rendered.body).encode()
        return Response(
            content, status_code=rendered.status, headers=headers, media_type=rendered.media_type
        )
