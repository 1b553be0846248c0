"""Scenario's archive routes: `POST /v1/assets/archive` and the `/v1/assets/download` pair.

- `POST /v1/assets/archive` with
  `{"query": {"assetIds": [...]}, "options": {"flat", "fileNameTemplate"}}` answers
  `{"job": Job}` (Scenario's job view); `GET /v1/jobs/{jobId}` then shows
  `metadata.archiveUrl` once the job succeeded.
- `POST /v1/assets/download` takes the same body (plus `inferenceIds` / `modelIds`, which Kiln
  has no notion of: non-empty lists are refused) and answers `{"jobId"}`;
  `GET /v1/assets/download/{jobId}` answers `{jobId, jobStatus, downloadUrl?}`.

The archive service checks the assets (an unknown id is a 404 naming it) before any job
exists; an `Idempotency-Key` header becomes the job's request_id.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
from kiln.archive.v1 import archive_pb2
from kiln.jobs.v1 import jobs_pb2
from starlette.responses import Response

from gateway.apis import jobs_views
from gateway.apis.registry import ApiModule
from gateway.errors import ApiError
from gateway.jsonpb import json_response
from gateway.routing import Endpoint, RequestContext, endpoint

SERVICE = "kiln.archive.v1.ArchiveService"
_CREATE = f"/{SERVICE}/CreateArchive"
ARCHIVE_KIND = "archive.create"
MAX_ASSETS = 1000
_MAX_IDEMPOTENCY_KEY = 128


def _invalid(message: str, field: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        message,
        reason="ERROR_REASON_INVALID_FIELD",
        metadata={"field": field},
    )


def _string_list(value: Any, field: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _invalid(f"{field} must be an array of strings", field)
    return value


async def _archive_request(
    context: RequestContext, *, download: bool
) -> archive_pb2.CreateArchiveRequest:
    raw = await context.read_body()
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise _invalid(f"malformed JSON body: {exc}", "body") from None
    if not isinstance(body, dict):
        raise _invalid("the body must be a JSON object with a query", "body")
    query = body.get("query")
    if not isinstance(query, dict):
        raise _invalid("query is required and must be an object", "query")
    asset_ids = _string_list(query.get("assetIds", [] if download else None), "query.assetIds")
    if download:
        for other in ("inferenceIds", "modelIds"):
            if _string_list(query.get(other, []), f"query.{other}"):
                raise _invalid(
                    f"query.{other} is not supported: Kiln archives assets by id", f"query.{other}"
                )
    if not asset_ids:
        raise _invalid("query.assetIds must name at least one asset", "query.assetIds")
    if len(asset_ids) > MAX_ASSETS:
        raise _invalid(
            f"at most {MAX_ASSETS} assets per archive, got {len(asset_ids)}", "query.assetIds"
        )
    options = body.get("options", {})
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise _invalid("options must be an object", "options")
    flat = options.get("flat", False)
    if not isinstance(flat, bool):
        raise _invalid("options.flat must be true or false", "options.flat")
    template = options.get("fileNameTemplate", "")
    if not isinstance(template, str):
        raise _invalid("options.fileNameTemplate must be a string", "options.fileNameTemplate")
    request_id = context.request.headers.get("idempotency-key", "")
    if len(request_id) > _MAX_IDEMPOTENCY_KEY:
        raise _invalid(
            f"Idempotency-Key is longer than {_MAX_IDEMPOTENCY_KEY} characters", "Idempotency-Key"
        )
    return archive_pb2.CreateArchiveRequest(
        asset_ids=asset_ids, flat=flat, file_name_template=template, request_id=request_id
    )


async def _create(
    context: RequestContext, request: archive_pb2.CreateArchiveRequest
) -> jobs_pb2.Job:
    reply = await context.call("archive", _CREATE, request, archive_pb2.CreateArchiveResponse)
    job: jobs_pb2.Job = reply.job
    return job


async def create_archive(context: RequestContext) -> Response:
    """`POST /v1/assets/archive` → `{"job": Job}`."""
    job = await _create(context, await _archive_request(context, download=False))
    return json_response({"job": jobs_views.scenario_job(job)})


async def request_download(context: RequestContext) -> Response:
    """`POST /v1/assets/download` → `{"jobId"}`."""
    job = await _create(context, await _archive_request(context, download=True))
    return json_response({"jobId": job.id})


async def download_status(context: RequestContext) -> Response:
    """`GET /v1/assets/download/{jobId}` → `{jobId, jobStatus, downloadUrl?}`."""
    job_id = context.path_params["jobId"]
    job = await jobs_views.get_job(context, job_id=job_id)
    if job.kind != ARCHIVE_KIND:
        raise jobs_views.job_not_found(job_id)
    view = jobs_views.scenario_job(job)
    answer: dict[str, Any] = {"jobId": job.id, "jobStatus": view["status"]}
    url = jobs_views.struct_dict(job.result).get("archiveUrl")
    if job.status == jobs_views.SUCCEEDED and isinstance(url, str):
        answer["downloadUrl"] = url
    return json_response(answer)


def endpoints() -> list[Endpoint]:
    return [
        endpoint(
            "POST", "/v1/assets/archive", create_archive, service=SERVICE, name="CreateArchive"
        ),
        endpoint(
            "POST", "/v1/assets/download", request_download, service=SERVICE, name="RequestDownload"
        ),
        endpoint(
            "GET",
            "/v1/assets/download/{jobId}",
            download_status,
            service=jobs_views.JOB_SERVICE,
            name="scenario.DownloadStatus",
        ),
    ]


API = ApiModule(name="scenario-archive", endpoints=endpoints, services=("archive", "jobs"))
