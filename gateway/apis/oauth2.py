"""OAuth2 client-credentials tokens: SideFX's `/oauth2/application_token` and `/oauth2/token`.

- `POST /oauth2/application_token`: `Authorization: Basic base64(client_id:secret)`, body
  ignored (SideFX's client sends none).
- `POST /oauth2/token`: RFC 6749 §4.4, form `grant_type=client_credentials`, client
  authenticated by Basic or by form `client_id` / `client_secret` (not both, §2.3), optional
  `scope` (a subset of the client's scopes).

Both answer `{access_token, expires_in, token_type: "Bearer", scope}` with
`Cache-Control: no-store` (§5.1); errors use RFC 6749 §5.2's `{error, error_description}`.
"""

from __future__ import annotations

from urllib.parse import parse_qs

import grpc
from starlette.responses import Response

from gateway.apis.registry import ApiModule
from gateway.errors import ApiError, ErrorShapes, oauth2_shape
from gateway.identity import ApiClient, invalid_client, split_authorization
from gateway.jsonpb import json_response
from gateway.routing import Endpoint, RequestContext, endpoint
from services.runtime.auth import WORKER_SCOPE

PREFIX = "/oauth2"
_MAX_FORM_BYTES = 16 * 1024
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _invalid_request(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message, api_code="invalid_request")


def _token_response(context: RequestContext, client: ApiClient, scopes: frozenset[str]) -> Response:
    token, expires_in = context.gateway.authenticator.issue(client, scopes)
    return json_response(
        {
            "access_token": token,
            "expires_in": expires_in,
            "token_type": "Bearer",
            "scope": " ".join(sorted(scopes)),
        },
        headers=_NO_STORE,
    )


async def application_token(context: RequestContext) -> Response:
    """SideFX's token endpoint: Basic client credentials in, an access token out."""
    scheme, credentials = split_authorization(context.request.headers.get("authorization"))
    if scheme != "basic":
        raise invalid_client("send 'Authorization: Basic base64(client_id:client_secret)'")
    client = await context.gateway.authenticator.client_from_basic(credentials)
    return _token_response(context, client, client.scopes)


async def _form(context: RequestContext) -> dict[str, str]:
    media = context.request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media and media != "application/x-www-form-urlencoded":
        raise _invalid_request("send the parameters as application/x-www-form-urlencoded")
    raw = await context.read_body(_MAX_FORM_BYTES)
    try:
        parsed = parse_qs(raw.decode("utf-8"), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        raise _invalid_request("malformed form body") from None
    repeated = sorted(name for name, values in parsed.items() if len(values) > 1)
    if repeated:
        # §3.2: parameters must not be included more than once.
        raise _invalid_request(f"parameters given more than once: {', '.join(repeated)}")
    return {name: values[0] for name, values in parsed.items()}


def _granted(client: ApiClient, requested: str | None) -> frozenset[str]:
    if requested is None or not requested.strip():
        return client.scopes
    wanted = frozenset(requested.split())
    # `*` grants every scope but the worker's: a worker token acts for any tenant's jobs, so
    # only a client granted it by name may ask for it.
    extra = wanted - client.scopes
    if not extra or ("*" in client.scopes and WORKER_SCOPE not in extra):
        return wanted
    raise ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"scopes not granted to this client: {' '.join(sorted(wanted - client.scopes))}",
        api_code="invalid_scope",
    )


async def token(context: RequestContext) -> Response:
    """RFC 6749 client-credentials grant."""
    form = await _form(context)
    grant_type = form.get("grant_type")
    if grant_type != "client_credentials":
        raise ApiError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "grant_type must be client_credentials"
            if grant_type is None
            else f"unsupported grant_type {grant_type!r}; only client_credentials is",
            api_code="unsupported_grant_type",
        )
    authenticator = context.gateway.authenticator
    scheme, credentials = split_authorization(context.request.headers.get("authorization"))
    in_form = "client_id" in form or "client_secret" in form
    if scheme and in_form:
        raise _invalid_request("authenticate with the Authorization header or the form, not both")
    if scheme == "basic":
        client = await authenticator.client_from_basic(credentials)
    elif scheme:
        raise invalid_client("client authentication must use Basic or the form parameters")
    elif form.get("client_id") and form.get("client_secret"):
        client = await authenticator.client_from_secret(form["client_id"], form["client_secret"])
    else:
        raise invalid_client("missing client credentials")
    return _token_response(context, client, _granted(client, form.get("scope")))


def endpoints() -> list[Endpoint]:
    """The token endpoints; public, since they are where credentials become tokens."""
    return [
        endpoint(
            "POST", f"{PREFIX}/application_token", application_token, public=True, name="oauth2"
        ),
        endpoint("POST", f"{PREFIX}/token", token, public=True, name="oauth2"),
    ]


def register_shapes(shapes: ErrorShapes) -> None:
    """Every error under /oauth2 in RFC 6749's shape."""
    shapes.register(oauth2_shape, path_prefix=PREFIX)


API = ApiModule(name="oauth2", endpoints=endpoints, register_shapes=register_shapes)
