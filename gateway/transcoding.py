"""Generic HTTP/JSON ⇄ gRPC transcoding, built at start-up from a descriptor set.

Every unary method carrying a `google.api.http` option becomes one endpoint per binding (the
rule and its `additional_bindings`), with no code per route:

- the path template's variables (`{id}`, `{name=shelves/*}`, `{path=**}`, `{a.b}`) set the
  named fields, converted by field type;
- `body: "*"` parses the JSON body into the whole request, `body: "field"` into that field,
  no body reads none;
- unless the body is `*`, query parameters set the remaining fields: dotted names reach nested
  fields, repeated keys fill repeated fields, enums go by name or number. As in grpc-gateway,
  parameters naming no field are ignored (clients add cache-busters), and parameters for
  fields bound by the path or body are dropped, so the path always wins;
- the response (or its `response_body` field) is written as proto3 JSON (see `jsonpb`).

The method's proto package `kiln.<service>.v1` names the service whose channel carries it.
Streaming methods are never transcoded: their HTTP forms are adapters (`gateway.apis`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import Message
from starlette.responses import Response

from gateway._fields import FieldPathError, FieldRef, assign, check_bindable, json_value, resolve
from gateway._template import PathTemplate, TemplateError, Variable, parse_template
from gateway.errors import ApiError
from gateway.jsonpb import json_response, loads, message_to_json, parse_into
from gateway.routing import Endpoint, RequestContext
from gateway.upstream import service_key
from services.runtime.errors import ConfigError

log = logging.getLogger("kiln.gateway.transcoding")

_PATTERNS = ("get", "put", "post", "delete", "patch")
_JSON_TYPES = ("application/json", "text/plain")
_STRUCT = "google.protobuf.Struct"


@dataclass(frozen=True)
class RpcMethod:
    """A unary gRPC method and the classes of its messages."""

    service: str
    """The Kiln service whose channel carries it (`objects`)."""
    proto_service: str
    """Full proto service name (`kiln.objects.v1.AssetService`)."""
    name: str
    path: str
    """`/kiln.objects.v1.AssetService/GetAsset`."""
    input_type: type[Message]
    output_type: type[Message]
    input_descriptor: Descriptor
    output_descriptor: Descriptor
    pool: DescriptorPool


@dataclass(frozen=True)
class HttpBinding:
    """One HTTP method + path template bound to an RPC."""

    method: str
    template: PathTemplate
    body: str
    """"" (none), "*" (whole request) or a top-level field name."""
    response_body: str
    rpc: RpcMethod
    path_fields: tuple[tuple[Variable, FieldRef], ...]
    body_field: FieldDescriptor | None
    response_field: FieldDescriptor | None


def load_descriptor_set(path: Path) -> descriptor_pb2.FileDescriptorSet:
    """Reads a FileDescriptorSet (`protoc --descriptor_set_out --include_imports`)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the descriptor set {path} (run `make protos`): {exc}"
        ) from exc
    try:
        # Parsing with annotations_pb2 imported keeps the google.api.http options readable.
        return descriptor_pb2.FileDescriptorSet.FromString(data)
    except Exception as exc:
        raise ConfigError(f"{path} is not a FileDescriptorSet: {exc}") from exc


def _pool(files: descriptor_pb2.FileDescriptorSet) -> DescriptorPool:
    # A private pool: the gateway needs no generated code, and Kiln's own generated modules
    # (imported by adapters) keep the default pool to themselves.
    pool = DescriptorPool()
    pending = {f.name: f for f in files.file}
    added: set[str] = set()

    def add(name: str) -> None:
        if name in added:
            return
        file = pending.get(name)
        if file is None:
            raise ConfigError(f"the descriptor set lacks {name}: build it with --include_imports")
        for dependency in file.dependency:
            add(dependency)
        pool.Add(file)
        added.add(name)

    for name in pending:
        add(name)
    return pool


def _rule_pattern(rule: http_pb2.HttpRule) -> tuple[str, str] | None:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        return None
    if kind == "custom":
        return rule.custom.kind.upper(), rule.custom.path
    if kind not in _PATTERNS:
        return None
    return kind.upper(), str(getattr(rule, kind))


def _top_field(message: Descriptor, name: str, what: str, where: str) -> FieldDescriptor:
    field: FieldDescriptor | None = message.fields_by_name.get(name)
    if field is None:
        raise ConfigError(f"{where}: {what} {name!r} is not a field of {message.full_name}")
    return field


def _binding(rule: http_pb2.HttpRule, rpc: RpcMethod, where: str) -> HttpBinding | None:
    pattern = _rule_pattern(rule)
    if pattern is None:
        log.warning("http rule without a pattern; skipped", extra={"rpc": where})
        return None
    method, path = pattern
    try:
        template = parse_template(path)
    except TemplateError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    descriptor = rpc.input_descriptor
    path_fields: list[tuple[Variable, FieldRef]] = []
    for variable in template.variables:
        try:
            ref = resolve(descriptor, variable.field_path)
            if ref is None:
                raise FieldPathError(f"{variable.field_path!r} is not a field of the request")
            check_bindable(ref, repeated_ok=False)
        except FieldPathError as exc:
            raise ConfigError(f"{where} {path}: {exc}") from exc
        path_fields.append((variable, ref))
    body_field = None
    if rule.body and rule.body != "*":
        body_field = _top_field(descriptor, rule.body, "body", where)
    response_field = None
    if rule.response_body:
        response_field = _top_field(
            rpc.output_descriptor, rule.response_body, "response_body", where
        )
    return HttpBinding(
        method=method,
        template=template,
        body=rule.body,
        response_body=rule.response_body,
        rpc=rpc,
        path_fields=tuple(path_fields),
        body_field=body_field,
        response_field=response_field,
    )


def http_bindings(files: descriptor_pb2.FileDescriptorSet) -> list[HttpBinding]:
    """Every HTTP binding of every annotated unary method in `files`, in declaration order.

    Raises ConfigError for an annotation the gateway cannot serve (bad template, unknown
    field), so a broken contract stops the gateway at start-up instead of failing requests.
    """
    pool = _pool(files)
    bindings: list[HttpBinding] = []
    for file in files.file:
        for service in file.service:
            proto_service = f"{file.package}.{service.name}" if file.package else service.name
            for method in service.method:
                if not method.options.HasExtension(annotations_pb2.http):
                    continue
                where = f"{proto_service}.{method.name}"
                if method.client_streaming or method.server_streaming:
                    log.warning("streaming method has an http rule; not transcoded: %s", where)
                    continue
                kiln_service = service_key(proto_service)
                if kiln_service is None:
                    log.warning("not in a kiln.<service>.v1 package; skipped: %s", where)
                    continue
                described = pool.FindMethodByName(where)
                rpc = RpcMethod(
                    service=kiln_service,
                    proto_service=proto_service,
                    name=method.name,
                    path=f"/{proto_service}/{method.name}",
                    input_type=message_factory.GetMessageClass(described.input_type),
                    output_type=message_factory.GetMessageClass(described.output_type),
                    input_descriptor=described.input_type,
                    output_descriptor=described.output_type,
                    pool=pool,
                )
                rule = method.options.Extensions[annotations_pb2.http]
                for index, each in enumerate([rule, *rule.additional_bindings]):
                    if index and len(each.additional_bindings):
                        raise ConfigError(f"{where}: additional_bindings cannot nest")
                    binding = _binding(each, rpc, where)
                    if binding is not None:
                        bindings.append(binding)
    return bindings


def bad_request(message: str, *, field: str | None = None) -> ApiError:
    """400 INVALID_ARGUMENT for a request the gateway could not turn into a message."""
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        message,
        reason="ERROR_REASON_INVALID_FIELD",
        metadata={"field": field} if field else None,
    )


class _Transcoder:
    """The handler of one binding."""

    def __init__(self, binding: HttpBinding) -> None:
        self.binding = binding
        self._bound = [ref.canonical for _, ref in binding.path_fields]
        if binding.body_field is not None:
            self._bound.append(binding.body_field.name)

    async def __call__(self, context: RequestContext) -> Response:
        binding, rpc = self.binding, self.binding.rpc
        message = rpc.input_type()
        if binding.body:
            await self._merge_body(context, message)
        try:
            parse_into(self._url_fields(context), message, rpc.pool)
        except (json_format.ParseError, TypeError, ValueError) as exc:
            raise bad_request(f"invalid path or query parameter: {exc}") from None
        reply = await context.call(rpc.service, rpc.path, message, rpc.output_type)
        return json_response(self._render(reply))

    async def _merge_body(self, context: RequestContext, message: Message) -> None:
        content_type = context.request.headers.get("content-type", "")
        media = content_type.split(";", 1)[0].strip().lower()
        if media and media not in _JSON_TYPES and not media.endswith("+json"):
            raise ApiError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unsupported content type {media!r}: send application/json",
                reason="ERROR_REASON_INVALID_FIELD",
                http_status=415,
            )
        raw = await context.read_body()
        if not raw.strip():
            return  # an empty body sets no field, as in grpc-gateway
        try:
            value = loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise bad_request(f"malformed JSON body: {exc}") from None
        field = self.binding.body_field
        if not isinstance(value, dict) and (field is None or _is_struct(field, value)):
            # Said plainly: protobuf's own message names the request's internal types.
            raise bad_request("the JSON body must be an object")
        document = value if field is None else {field.json_name: value}
        try:
            parse_into(document, message, self.binding.rpc.pool)
        except (json_format.ParseError, TypeError, ValueError, AttributeError) as exc:
            raise bad_request(
                f"invalid JSON body: {exc}", field=field.name if field else None
            ) from None

    def _url_fields(self, context: RequestContext) -> dict[str, Any]:
        binding = self.binding
        document: dict[str, Any] = {}
        descriptor = binding.rpc.input_descriptor
        if binding.body != "*":
            grouped: dict[str, list[str]] = {}
            for key, value in context.request.query_params.multi_items():
                grouped.setdefault(key, []).append(value)
            for key, values in grouped.items():
                try:
                    ref = resolve(descriptor, key)
                    if ref is None or any(ref.within(bound) for bound in self._bound):
                        continue
                    assign(document, ref, json_value(ref, values, key))
                except FieldPathError as exc:
                    raise bad_request(str(exc), field=key) from None
        for variable, ref in binding.path_fields:
            try:
                raw = context.path_params[variable.field_path]
                assign(document, ref, json_value(ref, [raw], variable.field_path))
            except FieldPathError as exc:
                raise bad_request(str(exc), field=variable.field_path) from None
        return document

    def _render(self, reply: Message) -> Any:
        field = self.binding.response_field
        pool = self.binding.rpc.pool
        if field is None:
            return message_to_json(reply, pool)
        if field.type == FieldDescriptor.TYPE_MESSAGE and not field.is_repeated:
            return message_to_json(getattr(reply, field.name), pool)
        return message_to_json(reply, pool).get(field.json_name)


def _is_struct(field: FieldDescriptor, value: Any) -> bool:
    """Whether a body field is a google.protobuf.Struct (a free JSON object) and the value
    is not null, which leaves it unset."""
    message = field.message_type
    return (
        value is not None
        and not field.is_repeated
        and message is not None
        and message.full_name == _STRUCT
    )


def transcoded_endpoints(
    bindings: Iterable[HttpBinding], targets: Mapping[str, str]
) -> list[Endpoint]:
    """One Endpoint per binding; raises ConfigError for a service with no target."""
    endpoints: list[Endpoint] = []
    seen: dict[tuple[str, str], str] = {}
    for binding in bindings:
        key = (binding.method, binding.template.pattern)
        if key in seen:
            # Two annotations claiming one route is a contract bug, not a precedence choice.
            raise ConfigError(
                f"{binding.rpc.path} and {seen[key]} both bind "
                f"{binding.method} {binding.template.template}"
            )
        seen[key] = binding.rpc.path
        if binding.rpc.service not in targets:
            raise ConfigError(
                f"{binding.rpc.proto_service} needs a target for the {binding.rpc.service} "
                f"service (KILN_{binding.rpc.service.upper()}_TARGET)"
            )
        endpoints.append(
            Endpoint(
                method=binding.method,
                template=binding.template,
                handler=_Transcoder(binding),
                service=binding.rpc.proto_service,
                name=binding.rpc.path,
            )
        )
    return endpoints
