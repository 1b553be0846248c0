"""Claid.ai's async task view: `GET /v1-beta1/image/edit/async/{task_id}` (and under `/v1`).

A task is an `image.edit` job; its integer `task_id` is the job's sequence id. The answer is
`{"data": {id, status, result_url, created_at, request, errors, result}}`
(`gateway.apis.jobs_views.claid_task`), `result_url` absolute under the prefix the request
used. A task id that is not an integer is 422 (Claid's validation error, code 9000); an
unknown task, another tenant's, or a job of another kind is 404. Errors answer Claid's
`{"error_code", "error_type", "error_message", "error_details"}` (`gateway.errors.claid_shape`).
The image-edit issue answers its accepted response with `task_response` too.

With `Accept: text/event-stream` (Kiln's, not Claid's: a Claid client never sends it) the task
view comes as Server-Sent Events instead: one event whose data is the body a GET would answer
then, another each time that body changes (status, result, errors), and the stream ends after
the task is DONE or ERROR. A client that follows the task so learns it is done as it happens,
where polling learns it up to an interval late and pays a request per poll.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import grpc
from kiln.jobs.v1 import jobs_pb2
from starlette.responses import Response

from gateway.apis import jobs_views
from gateway.apis.jobs_views import (
    CLAID_KIND,
    CLAID_PREFIXES,
    CLAID_TASK_PATH,
    JOB_SERVICE,
    WATCH_METHOD,
)
from gateway.apis.registry import ApiModule
from gateway.errors import ApiError, ErrorShapes, claid_shape
from gateway.jsonpb import dumps, json_response
from gateway.routing import Endpoint, Handler, RequestContext, endpoint
from gateway.sse import ServerStream, SseComment, SseEvent, sse_handler, wants_events

_INTEGER = re.compile(r"[+-]?\d{1,19}")
_INT64_MAX = 2**63 - 1


def task_not_found(task_id: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.NOT_FOUND,
        f"Image edit task {task_id} not found",
        reason="ERROR_REASON_NOT_FOUND",
    )


def parse_task_id(raw: str) -> int:
    """The integer task id; 422 (validation, `error_details.task_id`) when it is not one."""
    if _INTEGER.fullmatch(raw) and -_INT64_MAX <= int(raw) <= _INT64_MAX:
        return int(raw)
    raise ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "value is not a valid integer",
        reason="ERROR_REASON_INVALID_FIELD",
        metadata={"field": "task_id"},
        http_status=422,
    )


def task_response(
    context: RequestContext, job: jobs_pb2.Job, prefix: str = "/v1-beta1"
) -> Response:
    """`{"data": <task view>}` of `job`, `result_url` absolute under `prefix`."""
    base = jobs_views.base_url(context.request)
    return json_response(jobs_views.claid_task(job, base, prefix))


async def get_task_job(
    context: RequestContext, task_id: int, *, kind: str = CLAID_KIND
) -> jobs_pb2.Job:
    """The caller's job of `kind` (an image edit) with this sequence id; 404 for anything
    else."""
    if task_id <= 0:
        raise task_not_found(str(task_id))
    try:
        job = await jobs_views.get_job(context, seq_id=task_id)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            raise task_not_found(str(task_id)) from None
        raise
    if job.kind != kind:
        raise task_not_found(str(task_id))
    return job


@dataclass
class _TaskViews:
    """Renders each WatchJob state as the task's body; a body like the last is a comment."""

    base: str
    prefix: str
    last: bytes = field(default=b"")

    def render(self, message: jobs_pb2.WatchJobResponse) -> SseEvent:
        body = dumps(jobs_views.claid_task(message.job, self.base, self.prefix))
        if body == self.last:
            return SseComment(data="unchanged")
        self.last = body
        return SseEvent(data=body.decode())


async def task_events(context: RequestContext, job: jobs_pb2.Job, prefix: str) -> Response:
    """The task as Server-Sent Events (see the module), `job` already the caller's task."""
    views = _TaskViews(base=jobs_views.base_url(context.request), prefix=prefix)
    stream = ServerStream(
        method=WATCH_METHOD,
        request=lambda _: jobs_pb2.WatchJobRequest(job_id=job.id),
        response_type=jobs_pb2.WatchJobResponse,
        render=views.render,
    )
    return await sse_handler(stream)(context)


def task_handler(prefix: str) -> Handler:
    """The handler of `GET {prefix}/image/edit/async/{task_id}`."""

    async def get_task(context: RequestContext) -> Response:
        task_id = parse_task_id(context.path_params["task_id"])
        job = await get_task_job(context, task_id)
        if wants_events(context.request):
            return await task_events(context, job, prefix)
        return task_response(context, job, prefix)

    return get_task


def register_shapes(shapes: ErrorShapes) -> None:
    """Claid's envelope under `/v1-beta1` (Claid's alone) and `/v1/image`."""
    shapes.register(claid_shape, path_prefix="/v1-beta1")
    shapes.register(claid_shape, path_prefix="/v1/image")


def endpoints() -> list[Endpoint]:
    """The task view under both of Claid's prefixes."""
    return [
        endpoint(
            "GET",
            f"{prefix}{CLAID_TASK_PATH}/{{task_id}}",
            task_handler(prefix),
            service=JOB_SERVICE,
            name=f"claid.GetTask{prefix}",
        )
        for prefix in CLAID_PREFIXES
    ]


API = ApiModule(
    name="claid", endpoints=endpoints, register_shapes=register_shapes, services=("jobs",)
)
