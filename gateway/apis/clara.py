"""Clara.io's asynchronous protocol: the job URL, its 200 / 303, output files, cancel, SSE.

Every async Clara call (import, export, render: the scenes issue) answers 202 with `Location:`
the job URL, `<base>/api/jobs/{jobId}` (`job_url`, `accepted`). On that URL:

- `GET` while the job is pending or working: **200** with the job JSON
  (`gateway.apis.jobs_views.clara_job`).
- `GET` once the job has ended, whatever the outcome (ok, failed, cancelled): **303** with the
  job JSON as the body, so the seed's `curl` loop, which waits for 303, ends for every outcome.
  `Location` is `<job URL>/result`: the raw bytes of the job's (first) output when it succeeded
  with one, otherwise the job JSON with 200. Following the redirect is thus always harmless, as
  Clara's page promises: it never leads back to a 303 (a `Location` pointing at the job URL
  itself would loop for curl -L and for Python's urllib).
- `GET ...?redirect=false` once the job has ended: **303** with the job JSON, and `Location`
  the job URL itself, `redirect=false` kept.
- `GET` with `Accept: text/event-stream`: the job as Server-Sent Events (JobService.WatchJob):
  the whole job JSON first, then only the fields that changed, a keep-alive comment at least
  every 5 s while nothing changes; the stream ends after the job's final state.
- `DELETE` (the job JSON's `deleteURL`): cancels the job and answers its JSON; a job that has
  already finished is 422.

`GET <job URL>/files/{name}` streams one output (`files[].url`) from JobService.ReadJobOutput
with its content type and Content-Length. Errors answer Clara's `{"message": ...}` with 401,
403, 404, 422 or 500 (`gateway.errors.clara_shape`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from kiln.jobs.v1 import jobs_pb2
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.apis import jobs_views
from gateway.apis.jobs_views import JOB_SERVICE, READ_OUTPUT_METHOD, TERMINAL, WATCH_METHOD
from gateway.apis.registry import ApiModule
from gateway.errors import ApiError, ErrorShapes, clara_shape
from gateway.jsonpb import JsonValue, dumps, json_response
from gateway.routing import Endpoint, Handler, RequestContext, endpoint
from gateway.sse import ServerStream, SseComment, SseEvent, sse_handler, wants_events
from services.runtime.blob_keys import check_output_name
from services.runtime.errors import InvalidArgument

PREFIX = jobs_views.CLARA_JOBS_PATH
JOB_PATH = PREFIX + "/{jobId}"
#: Clara promises a message at least every 5 s on its event streams.
HEARTBEAT_SECONDS = 4.0
_FALSE = frozenset({"false", "0", "no", "off"})


# --- helpers for the routes that create jobs (the scenes issue) ------------------------------


def job_url(request: Request, job_id: str) -> str:
    """The absolute job URL of `job_id`, built from the request's scheme, host and root path:
    what `Location` of an async 202 carries."""
    return jobs_views.clara_job_url(jobs_views.base_url(request), job_id)


def job_json(request: Request, job: jobs_pb2.Job) -> dict[str, JsonValue]:
    """Clara's job JSON for `job`, its URLs absolute under the request's base URL."""
    return jobs_views.clara_job(job, jobs_views.base_url(request))


def accepted(context: RequestContext, job: jobs_pb2.Job) -> Response:
    """The 202 of an async Clara call: the job JSON, `Location` the job URL."""
    request = context.request
    return json_response(
        job_json(request, job), status=202, headers={"Location": job_url(request, job.id)}
    )


def redirect_disabled(request: Request) -> bool:
    """`?redirect=false` (also 0 / no / off)."""
    return request.query_params.get("redirect", "").strip().lower() in _FALSE


def job_response(context: RequestContext, job: jobs_pb2.Job) -> Response:
    """GET on the job URL: 200 while the job runs, 303 once it has ended (see the module)."""
    request = context.request
    body = job_json(request, job)
    if job.status not in TERMINAL:
        return json_response(body)
    if redirect_disabled(request):
        location = job_url(request, job.id) + "?redirect=false"
    else:
        location = jobs_views.clara_result_url(jobs_views.base_url(request), job.id)
    return json_response(body, status=303, headers={"Location": location})


# --- the job event stream -----------------------------------------------------------------------


@dataclass
class _Deltas:
    """Renders each WatchJob state: the whole job first, then only the changed fields."""

    base: str
    last: dict[str, JsonValue] | None = field(default=None)

    def render(self, message: jobs_pb2.WatchJobResponse) -> SseEvent:
        current = jobs_views.clara_job(message.job, self.base)
        if self.last is None:
            data = current
        else:
            data = jobs_views.clara_delta(self.last, current)
            if not data:
                return SseComment(data="unchanged")
        self.last = current
        return SseEvent(data=dumps(data).decode())


async def job_events(
    context: RequestContext, job_id: str, *, heartbeat: float = HEARTBEAT_SECONDS
) -> Response:
    """The job as Server-Sent Events (see the module); usable by any route that answers a
    request with `Accept: text/event-stream` by following its job."""
    checked = jobs_views.check_job_id(job_id)
    deltas = _Deltas(base=jobs_views.base_url(context.request))
    stream = ServerStream(
        method=WATCH_METHOD,
        request=lambda _: jobs_pb2.WatchJobRequest(job_id=checked),
        response_type=jobs_pb2.WatchJobResponse,
        render=deltas.render,
        heartbeat=heartbeat,
    )
    return await sse_handler(stream)(context)


# --- output files -------------------------------------------------------------------------------


class _OutputResponse(StreamingResponse):
    """Streams an output's bytes; the gRPC call ends with the response, however it ends."""

    def __init__(
        self,
        call: grpc.aio.UnaryStreamCall,
        chunks: AsyncIterator[bytes],
        *,
        media_type: str,
        headers: dict[str, str],
        tracking: contextlib.ExitStack,
    ) -> None:
        super().__init__(chunks, media_type=media_type, headers=headers)
        self.call = call
        self.tracking = tracking

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.call.cancel()
            # Records the call even when the client left before the body started.
            self.tracking.close()


def _no_output(job_id: str, name: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.NOT_FOUND,
        f"job {job_id!r} has no output named {name!r}",
        reason="ERROR_REASON_NOT_FOUND",
        metadata={"field": "name"},
    )


def _disposition(name: str) -> str:
    # Output names are plain file names (letters, digits, '.', '_', '-', ' '): nothing to escape.
    return f'attachment; filename="{name}"'


async def output_response(context: RequestContext, job_id: str, name: str) -> Response:
    """The raw bytes of one output, streamed from JobService.ReadJobOutput with its type and
    Content-Length; the headers go out only once the service has described the file, so an
    unknown job or name is an ordinary 404."""
    checked = jobs_views.check_job_id(job_id)
    try:
        check_output_name(name)
    except InvalidArgument:
        raise _no_output(checked, name[:64]) from None
    upstreams = context.gateway.upstreams
    request = jobs_pb2.ReadJobOutputRequest(job_id=checked, name=name)
    stack = contextlib.ExitStack()
    outcome = stack.enter_context(upstreams.track(READ_OUTPUT_METHOD, "server_stream"))
    call = upstreams.server_stream(
        "jobs", READ_OUTPUT_METHOD, request.SerializeToString(), metadata=context.metadata()
    )
    try:
        with stack:
            raw = await call.read()
            if raw is grpc.aio.EOF:
                raise _no_output(checked, name)
            assert isinstance(raw, bytes)
            first = jobs_pb2.ReadJobOutputResponse.FromString(raw)
            stack = stack.pop_all()
    except BaseException:
        call.cancel()
        raise

    async def chunks() -> AsyncIterator[bytes]:
        with stack:
            try:
                if first.data:
                    yield first.data
                while True:
                    raw = await call.read()
                    if raw is grpc.aio.EOF:
                        return
                    assert isinstance(raw, bytes)
                    data = jobs_pb2.ReadJobOutputResponse.FromString(raw).data
                    if data:
                        yield data
            except grpc.aio.AioRpcError as exc:
                # The headers are out: all that is left is to cut the body short.
                outcome.code = exc.code().name
                raise
            finally:
                call.cancel()

    output = first.output
    headers = {"Content-Disposition": _disposition(output.name or name)}
    if first.HasField("output"):
        headers["Content-Length"] = str(output.size)
    return _OutputResponse(
        call,
        chunks(),
        media_type=output.content_type or "application/octet-stream",
        headers=headers,
        tracking=stack,
    )


# --- handlers -----------------------------------------------------------------------------------


def job_url_handler(heartbeat: float = HEARTBEAT_SECONDS) -> Handler:
    """`GET /api/jobs/{jobId}`, the job URL; its event streams keep alive every `heartbeat` s."""

    async def get_job(context: RequestContext) -> Response:
        job_id = context.path_params["jobId"]
        if wants_events(context.request):
            return await job_events(context, job_id, heartbeat=heartbeat)
        job = await jobs_views.get_job(context, job_id=job_id)
        return job_response(context, job)

    return get_job


async def cancel_job(context: RequestContext) -> Response:
    """`DELETE /api/jobs/{jobId}` (the job's deleteURL): cancels, answers the job JSON."""
    job = await jobs_views.cancel_job(context, context.path_params["jobId"])
    return json_response(job_json(context.request, job))


async def get_result(context: RequestContext) -> Response:
    """`GET /api/jobs/{jobId}/result`, where a finished job's 303 points: the first output's
    bytes when the job succeeded with one; the job JSON (200) when it ended without."""
    job_id = context.path_params["jobId"]
    job = await jobs_views.get_job(context, job_id=job_id)
    if job.status == jobs_views.SUCCEEDED and job.outputs:
        return await output_response(context, job.id, job.outputs[0].name)
    if job.status in TERMINAL:
        return json_response(job_json(context.request, job))
    raise ApiError(
        grpc.StatusCode.NOT_FOUND,
        f"job {job.id!r} has not finished; poll its job URL",
        reason="ERROR_REASON_NOT_FOUND",
    )


async def get_file(context: RequestContext) -> Response:
    """`GET /api/jobs/{jobId}/files/{name}`: one output's bytes (a `files[].url`)."""
    return await output_response(context, context.path_params["jobId"], context.path_params["name"])


def register_shapes(shapes: ErrorShapes) -> None:
    """Clara's `{"message"}` for everything under /api/jobs (unknown routes and 405s too)."""
    shapes.register(clara_shape, path_prefix=PREFIX)


def endpoints(heartbeat: float = HEARTBEAT_SECONDS) -> list[Endpoint]:
    """Clara's job routes."""
    return [
        endpoint(
            "GET", JOB_PATH, job_url_handler(heartbeat), service=JOB_SERVICE, name="clara.GetJob"
        ),
        endpoint("DELETE", JOB_PATH, cancel_job, service=JOB_SERVICE, name="clara.CancelJob"),
        endpoint(
            "GET", JOB_PATH + "/result", get_result, service=JOB_SERVICE, name="clara.GetResult"
        ),
        endpoint(
            "GET", JOB_PATH + "/files/{name}", get_file, service=JOB_SERVICE, name="clara.GetFile"
        ),
    ]


def api(heartbeat: float = HEARTBEAT_SECONDS) -> ApiModule:
    """Clara's job API, with the keep-alive interval of its event streams."""
    return ApiModule(
        name="clara",
        endpoints=lambda: endpoints(heartbeat),
        register_shapes=register_shapes,
        services=("jobs",),
    )


API = api()
