"""CLyman's Object and Property APIs: their error envelope, anonymous access, the event stream.

The routes themselves are transcoded from `kiln.objects.v1.ClymanService`'s annotations (the
answers are already CLyman's ObjectList / PropertyList envelope). This module adds what
transcoding cannot express:

- **Errors in CLyman's envelope**, for every error under `/v1/object` and `/v1/property`
  (the service's, and the gateway's own: bad JSON, unknown route, 405, 413, 401):
  `{"msg_type", "err_code", "err_msg", ["transaction_id",] "num_records": 0, "objects": []}`
  (`properties` under `/v1/property`). The HTTP status and `err_code` follow api-spec §5.2 and
  §5.5, including 423 for a held lock, which grpc-gateway's table has no code for.
- **Anonymous access**: CLyman's clients send no credentials (its auth is optional). With
  `KILN_CLYMAN_ANONYMOUS_TENANT` set, a request without an Authorization header acts as that
  tenant; credentials that are sent are checked as everywhere else.
- **`GET /v1/object/events?scene=<scene>`**: `ObjectService.Subscribe` as Server-Sent Events,
  one event per change: `event: created|updated|deleted|locked|unlocked|assets_changed`,
  `id: <key>:<version>`, `data: <the ObjectEvent as JSON, proto field names>`.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.protobuf import json_format
from kiln.objects.v1 import objects_pb2

from gateway.apis.registry import ApiModule
from gateway.errors import ApiError, ErrorRequest, ErrorShapes, RenderedError, RequestShape
from gateway.jsonpb import JsonValue, dumps
from gateway.routing import Endpoint, Handler, RequestContext, endpoint
from gateway.sse import DEFAULT_HEARTBEAT_SECONDS, ServerStream, SseEvent, sse_handler
from services.runtime.config import GatewayConfig

SERVICE = "kiln.objects.v1.ClymanService"
OBJECT_SERVICE = "kiln.objects.v1.ObjectService"
OBJECT_PREFIX = "/v1/object"
PROPERTY_PREFIX = "/v1/property"
EVENTS_PATH = f"{OBJECT_PREFIX}/events"
_SUBSCRIBE = f"/{OBJECT_SERVICE}/Subscribe"

# err_code values (CLyman clyman_utils.h).
ERROR = 101
NOT_FOUND = 102
TRANSLATION_ERROR = 110
PROCESSING_ERROR = 120
INSUFF_DATA_ERROR = 122
LOCK_EXISTS_ERROR = 123

#: msg_type of each ClymanService method (CLyman clyman_utils.h).
MSG_TYPES: Mapping[str, int] = {
    "CreateObjects": 0,
    "UpdateObject": 1,
    "GetObject": 2,
    "DeleteObject": 3,
    "QueryObjects": 4,
    "LockObject": 5,
    "UnlockObject": 6,
    "CreateProperties": 8,
    "UpdateProperty": 9,
    "GetProperty": 10,
    "DeleteProperty": 11,
    "QueryProperties": 12,
    "AddAsset": 13,
    "RemoveAsset": 14,
}
#: msg_type of a request that reaches no CLyman operation (unknown route, wrong method):
#: CLyman's own "unset" value (an ObjectList is constructed with msg_type -1).
NO_OPERATION = -1

# Statuses the gateway answers for reasons of its own, kept as they are (a CLyman client
# sees them only when it does what CLyman never allowed: credentials, methods, media types).
_KEPT_CLIENT_STATUSES = frozenset({401, 403, 405, 415, 429})
# Kept too: they tell a client to retry, which a flat 500 would not.
_KEPT_SERVER_STATUSES = frozenset({503, 504})


def status_and_code(error: ApiError) -> tuple[int, int]:
    """The HTTP status and CLyman `err_code` of an error."""
    if error.code == grpc.StatusCode.NOT_FOUND:
        return 404, NOT_FOUND
    if error.reason == "ERROR_REASON_LOCK_HELD":
        return 423, LOCK_EXISTS_ERROR
    if error.reason == "ERROR_REASON_MISSING_FIELD":
        return 400, INSUFF_DATA_ERROR
    if error.http_status == 413 or error.reason == "ERROR_REASON_TOO_LARGE":
        return 413, TRANSLATION_ERROR
    if error.http_status in _KEPT_CLIENT_STATUSES:
        return error.http_status, ERROR
    if error.code == grpc.StatusCode.INVALID_ARGUMENT:
        return 400, TRANSLATION_ERROR
    if error.http_status in _KEPT_SERVER_STATUSES:
        return error.http_status, PROCESSING_ERROR
    return 500, PROCESSING_ERROR


def msg_type(error: ApiError, request: ErrorRequest) -> int:
    """The service's msg_type when it sent one, else the operation of the matched route."""
    sent = error.metadata.get("msg_type", "")
    if sent.lstrip("-").isdigit():
        return int(sent)
    service, _, method = request.operation.lstrip("/").rpartition("/")
    if service == SERVICE:
        return MSG_TYPES.get(method, NO_OPERATION)
    return NO_OPERATION


def _items_key(path: str) -> str:
    if path == PROPERTY_PREFIX or path.startswith(PROPERTY_PREFIX + "/"):
        return "properties"
    return "objects"


def render_error(error: ApiError, request: ErrorRequest) -> RenderedError:
    """An error in CLyman's envelope."""
    status, err_code = status_and_code(error)
    body: dict[str, JsonValue] = {
        "msg_type": msg_type(error, request),
        "err_code": err_code,
        "err_msg": error.message,
    }
    transaction_id = error.metadata.get("transaction_id")
    if transaction_id:
        body["transaction_id"] = transaction_id
    body["num_records"] = 0
    body[_items_key(request.path)] = []
    return RenderedError(status=status, body=body)


SHAPE = RequestShape(render_error)


def register_shapes(shapes: ErrorShapes) -> None:
    """CLyman's envelope for its service and for everything under its two prefixes, so unknown
    routes, 405s, bad JSON and oversized bodies there answer in it too."""
    shapes.register(SHAPE, service=SERVICE)
    shapes.register(SHAPE, path_prefix=OBJECT_PREFIX)
    shapes.register(SHAPE, path_prefix=PROPERTY_PREFIX)


# --- the object event stream ----------------------------------------------------------------

_EVENT_PREFIX = "OBJECT_EVENT_TYPE_"


def _subscribe_request(context: RequestContext) -> objects_pb2.SubscribeRequest:
    return objects_pb2.SubscribeRequest(scene=context.request.query_params.get("scene", ""))


def event_name(event_type: int) -> str:
    """`OBJECT_EVENT_TYPE_ASSETS_CHANGED` → `assets_changed`."""
    name = objects_pb2.ObjectEventType.Name(event_type)
    return name.removeprefix(_EVENT_PREFIX).lower()


def object_event(message: objects_pb2.SubscribeResponse) -> SseEvent:
    """One change as an event; the data keeps proto field names (`translation_handle`), as
    CLyman's own JSON does, and numbers stay numbers."""
    event = message.event
    data = json_format.MessageToDict(
        event, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return SseEvent(
        event=event_name(event.type),
        id=f"{event.object.key}:{event.version}",
        data=dumps(data).decode(),
    )


def events_handler(heartbeat: float = DEFAULT_HEARTBEAT_SECONDS) -> Handler:
    """The handler of `GET /v1/object/events`."""
    return sse_handler(
        ServerStream(
            method=_SUBSCRIBE,
            request=_subscribe_request,
            response_type=objects_pb2.SubscribeResponse,
            render=object_event,
            heartbeat=heartbeat,
        )
    )


def endpoints(heartbeat: float = DEFAULT_HEARTBEAT_SECONDS) -> list[Endpoint]:
    """CLyman's explicit endpoints: the event stream (the rest is transcoded)."""
    return [
        endpoint(
            "GET",
            EVENTS_PATH,
            events_handler(heartbeat),
            service=OBJECT_SERVICE,
            name=_SUBSCRIBE,
        )
    ]


def anonymous_tenant(config: GatewayConfig) -> str:
    return config.clyman_anonymous_tenant


API = ApiModule(
    name="clyman",
    endpoints=endpoints,
    register_shapes=register_shapes,
    services=("objects",),
    proto_services=(SERVICE,),
    anonymous_tenant=anonymous_tenant,
)
