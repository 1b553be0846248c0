"""Jobs as each source API shows them, and the JobService calls the job routes make.

One `kiln.jobs.v1.Job` has three public faces: Scenario's job (`/v1/jobs/{jobId}`), Clara's job
JSON (the job URL of every async 202) and Claid's async task view. This module holds the
status tables, the timestamp formats and the small JobService client the adapters share; the
views themselves are pure functions of a Job (and, where a view carries absolute URLs, of the
base URL the request came in on), so the issues that create jobs (scenes, image edits,
archives) answer their accepted responses with exactly the view the job routes answer later.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import grpc
from google.protobuf import json_format, timestamp_pb2
from kiln.jobs.v1 import jobs_pb2
from starlette.requests import Request

from gateway.errors import ApiError
from gateway.jsonpb import JsonValue
from gateway.routing import RequestContext

JOB_SERVICE = "kiln.jobs.v1.JobService"
_GET = f"/{JOB_SERVICE}/GetJob"
_CANCEL = f"/{JOB_SERVICE}/CancelJob"
WATCH_METHOD = f"/{JOB_SERVICE}/WatchJob"
READ_OUTPUT_METHOD = f"/{JOB_SERVICE}/ReadJobOutput"

S = jobs_pb2.JobStatus
QUEUED, RUNNING = S.JOB_STATUS_QUEUED, S.JOB_STATUS_RUNNING
SUCCEEDED, FAILED, CANCELED = S.JOB_STATUS_SUCCEEDED, S.JOB_STATUS_FAILED, S.JOB_STATUS_CANCELED
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELED})

#: Clara.io's job statuses (webhooks page).
CLARA_STATUS: Mapping[int, str] = {
    QUEUED: "pending",
    RUNNING: "working",
    SUCCEEDED: "ok",
    FAILED: "failed",
    CANCELED: "cancelled",
}
#: Scenario's job statuses (`JOB_FINAL_STATUS = ["success", "failure", "canceled"]`).
SCENARIO_STATUS: Mapping[int, str] = {
    QUEUED: "queued",
    RUNNING: "in-progress",
    SUCCEEDED: "success",
    FAILED: "failure",
    CANCELED: "canceled",
}
#: Claid's task statuses; a cancelled job is ERROR with the error "cancelled".
CLAID_STATUS: Mapping[int, str] = {
    QUEUED: "ACCEPTED",
    RUNNING: "PROCESSING",
    SUCCEEDED: "DONE",
    FAILED: "ERROR",
    CANCELED: "ERROR",
}
#: Clara job `type` per Kiln kind; other kinds show their kind.
CLARA_TYPE: Mapping[str, str] = {
    "scene.import": "import",
    "scene.export": "export",
    "scene.render": "renderFrame",
}
#: Scenario `jobType` per Kiln kind; other kinds show their kind.
SCENARIO_TYPE: Mapping[str, str] = {"archive.create": "assets-download"}
CLAID_KIND = "image.edit"
CLAID_CANCELLED = "cancelled"

#: What a job id can look like at all; anything else is answered 404 without a call.
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


# --- formats ----------------------------------------------------------------------------------


def _datetime(ts: timestamp_pb2.Timestamp) -> dt.datetime | None:
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts.ToDatetime(tzinfo=dt.UTC)


def iso_millis(ts: timestamp_pb2.Timestamp) -> str | None:
    """`2023-02-03T11:19:41.579Z` (Scenario, Clara); None when unset."""
    value = _datetime(ts)
    if value is None:
        return None
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def iso_micros(ts: timestamp_pb2.Timestamp) -> str | None:
    """`2023-03-13T11:37:09.160554+00:00` (Claid); None when unset."""
    value = _datetime(ts)
    return None if value is None else value.isoformat(timespec="microseconds")


def struct_dict(message: Any) -> dict[str, JsonValue]:
    """A google.protobuf.Struct as a plain dict (numbers as JSON numbers)."""
    value: dict[str, JsonValue] = json_format.MessageToDict(message)
    return value


def progress(job: jobs_pb2.Job) -> float:
    """0 to 1; a succeeded job is done whatever its worker last reported."""
    if job.status == SUCCEEDED:
        return 1.0
    return min(max(job.progress, 0.0), 1.0)


def base_url(request: Request) -> str:
    """Scheme, host and root path the request came in on, without a trailing slash."""
    return str(request.base_url).rstrip("/")


# --- Scenario -------------------------------------------------------------------------------


def _asset_ids(params: Mapping[str, JsonValue]) -> JsonValue:
    if "assetIds" in params:
        return params["assetIds"]
    query = params.get("query")
    if isinstance(query, dict) and "assetIds" in query:
        return query["assetIds"]
    return None


def scenario_job(job: jobs_pb2.Job) -> dict[str, JsonValue]:
    """Scenario's Job object: `{jobId, jobType, status, progress, metadata, createdAt, updatedAt,
    statusHistory}`; metadata holds the job's result fields (`archiveUrl`, ...), `assetIds`
    from its params and `error` once it failed."""
    metadata: dict[str, JsonValue] = {}
    asset_ids = _asset_ids(struct_dict(job.params))
    if asset_ids is not None:
        metadata["assetIds"] = asset_ids
    metadata.update(struct_dict(job.result))
    if job.status == FAILED:
        metadata["error"] = job.error or "failed"
    elif job.error and job.status != SUCCEEDED:
        metadata["error"] = job.error
    return {
        "jobId": job.id,
        "jobType": SCENARIO_TYPE.get(job.kind, job.kind),
        "status": SCENARIO_STATUS.get(job.status, "queued"),
        "progress": progress(job),
        "metadata": metadata,
        "createdAt": iso_millis(job.create_time),
        "updatedAt": iso_millis(job.update_time) or iso_millis(job.create_time),
        "statusHistory": [
            {"status": SCENARIO_STATUS.get(step.status, "queued"), "date": iso_millis(step.time)}
            for step in job.history
        ],
    }


# --- Clara ----------------------------------------------------------------------------------

CLARA_JOBS_PATH = "/api/jobs"


def clara_job_url(base: str, job_id: str) -> str:
    """The absolute job URL, `<base>/api/jobs/{jobId}` (`Location` of Clara's async 202s)."""
    return f"{base}{CLARA_JOBS_PATH}/{quote(job_id, safe='')}"


def clara_result_url(base: str, job_id: str) -> str:
    """Where a finished job's 303 points: its output's bytes, or its JSON if it has none."""
    return f"{clara_job_url(base, job_id)}/result"


def clara_file_url(base: str, job_id: str, name: str) -> str:
    """One output file's URL, `<job URL>/files/{name}`."""
    return f"{clara_job_url(base, job_id)}/files/{quote(name, safe='')}"


def clara_job(job: jobs_pb2.Job, base: str) -> dict[str, JsonValue]:
    """Clara's job JSON: `{id, type, status, progress, sceneId?, createdAt, modifiedAt, error,
    deleteURL, files: [{name, type, size, url}]}`, every URL absolute under `base`."""
    params = struct_dict(job.params)
    body: dict[str, JsonValue] = {
        "id": job.id,
        "type": CLARA_TYPE.get(job.kind, job.kind),
        "status": CLARA_STATUS.get(job.status, "pending"),
        "progress": progress(job),
    }
    scene = params.get("sceneId")
    if isinstance(scene, str):
        body["sceneId"] = scene
    body.update(
        {
            "createdAt": iso_millis(job.create_time),
            "modifiedAt": iso_millis(job.update_time) or iso_millis(job.create_time),
            "error": (job.error or None) if job.status in (FAILED, CANCELED) else None,
            "deleteURL": clara_job_url(base, job.id),
            "files": [
                {
                    "name": output.name,
                    "type": output.content_type or "application/octet-stream",
                    "size": output.size,
                    "url": clara_file_url(base, job.id, output.name),
                }
                for output in job.outputs
            ],
        }
    )
    return body


def clara_delta(
    previous: Mapping[str, JsonValue], current: Mapping[str, JsonValue]
) -> dict[str, JsonValue]:
    """The top-level fields of `current` that differ from `previous` (Clara's SSE updates)."""
    missing = object()
    return {key: value for key, value in current.items() if previous.get(key, missing) != value}


# --- Claid ----------------------------------------------------------------------------------

CLAID_PREFIXES = ("/v1-beta1", "/v1")
CLAID_TASK_PATH = "/image/edit/async"


def claid_result_url(base: str, seq_id: int, prefix: str = "/v1-beta1") -> str:
    """`<base>/v1-beta1/image/edit/async/{id}`, the task's GET URL."""
    return f"{base}{prefix}{CLAID_TASK_PATH}/{seq_id}"


def claid_task(job: jobs_pb2.Job, base: str, prefix: str = "/v1-beta1") -> dict[str, JsonValue]:
    """Claid's async task view, `{"data": {id, status, result_url, created_at, request,
    errors, result}}`: `request` echoes the params' `request`, `result` is the job's result
    once DONE (else `{}`), `errors` holds the job's error once it failed or was cancelled."""
    params = struct_dict(job.params)
    result = struct_dict(job.result)
    request = params.get("request", params)
    errors: list[JsonValue] = []
    if job.status in (FAILED, CANCELED):
        message = job.error if job.status == FAILED else CLAID_CANCELLED
        errors.append(
            {
                "error": message or "failed",
                "created_at": iso_micros(job.end_time) or iso_micros(job.update_time),
                "input_object": result.get("input_object"),
            }
        )
    return {
        "data": {
            "id": job.seq_id,
            "status": CLAID_STATUS.get(job.status, "ACCEPTED"),
            "result_url": claid_result_url(base, job.seq_id, prefix),
            "created_at": iso_micros(job.create_time),
            "request": request,
            "errors": errors,
            "result": result if job.status == SUCCEEDED else {},
        }
    }


# --- JobService calls -----------------------------------------------------------------------


def job_not_found(job_id: str) -> ApiError:
    """404 for a job the caller cannot see (unknown, another tenant's, malformed id)."""
    return ApiError(
        grpc.StatusCode.NOT_FOUND,
        f"job {job_id!r} not found",
        reason="ERROR_REASON_NOT_FOUND",
        metadata={"field": "job_id"},
    )


def check_job_id(job_id: str) -> str:
    """The id, when it can be a job id at all; else 404 (hostile or absurd path segments
    never reach the service)."""
    if not _JOB_ID.fullmatch(job_id):
        raise job_not_found(job_id[:64])
    return job_id


async def _unary(context: RequestContext, method: str, request: Any, reply: type[Any]) -> Any:
    return await context.call("jobs", method, request, reply)


async def get_job(context: RequestContext, *, job_id: str = "", seq_id: int = 0) -> jobs_pb2.Job:
    """JobService.GetJob by string id or sequence id, in the caller's tenant."""
    if job_id:
        request = jobs_pb2.GetJobRequest(job_id=check_job_id(job_id))
    else:
        request = jobs_pb2.GetJobRequest(seq_id=seq_id)
    reply = await _unary(context, _GET, request, jobs_pb2.GetJobResponse)
    job: jobs_pb2.Job = reply.job
    return job


async def wait_for_job(context: RequestContext, job: jobs_pb2.Job, seconds: float) -> jobs_pb2.Job:
    """The job once it has ended, or as it stands after `seconds`: followed with WatchJob,
    so the answer comes the moment the job ends, with no polling."""
    deadline = time.monotonic() + seconds
    upstreams = context.gateway.upstreams
    with upstreams.track(WATCH_METHOD, "server_stream"):
        call = upstreams.server_stream(
            "jobs",
            WATCH_METHOD,
            jobs_pb2.WatchJobRequest(job_id=job.id).SerializeToString(),
            metadata=context.metadata(),
        )
        try:
            while job.status not in TERMINAL and (left := deadline - time.monotonic()) > 0:
                try:
                    raw = await asyncio.wait_for(call.read(), timeout=left)
                except TimeoutError:
                    break
                if raw is grpc.aio.EOF:
                    break
                assert isinstance(raw, bytes)
                job = jobs_pb2.WatchJobResponse.FromString(raw).job
        finally:
            call.cancel()
    return job


async def cancel_job(context: RequestContext, job_id: str) -> jobs_pb2.Job:
    """JobService.CancelJob, in the caller's tenant."""
    request = jobs_pb2.CancelJobRequest(job_id=check_job_id(job_id))
    reply = await _unary(context, _CANCEL, request, jobs_pb2.CancelJobResponse)
    job: jobs_pb2.Job = reply.job
    return job
