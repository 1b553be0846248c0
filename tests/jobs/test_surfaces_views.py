"""The job views and error shapes as pure functions: statuses, formats, deltas, bodies."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
from google.protobuf import struct_pb2
from kiln.jobs.v1 import jobs_pb2

from gateway.apis import jobs_views as views
from gateway.errors import ApiError, claid_shape, clara_shape

BASE = "https://kiln.example"
S = jobs_pb2.JobStatus


def make_job(status: int = S.JOB_STATUS_QUEUED, **fields: object) -> jobs_pb2.Job:
    job = jobs_pb2.Job(id="job_abc", seq_id=42, kind="scene.render", status=status)  # type: ignore[arg-type]
    job.create_time.FromDatetime(dt.datetime(2023, 2, 3, 11, 19, 41, 579_123))
    job.update_time.FromDatetime(dt.datetime(2023, 2, 3, 11, 20, 0, 1_000))
    for name, value in fields.items():
        if isinstance(value, dict):
            struct = struct_pb2.Struct()
            struct.update(value)
            getattr(job, name).CopyFrom(struct)
        else:
            setattr(job, name, value)
    return job


@pytest.mark.parametrize(
    ("status", "clara", "scenario", "claid"),
    [
        (S.JOB_STATUS_QUEUED, "pending", "queued", "ACCEPTED"),
        (S.JOB_STATUS_RUNNING, "working", "in-progress", "PROCESSING"),
        (S.JOB_STATUS_SUCCEEDED, "ok", "success", "DONE"),
        (S.JOB_STATUS_FAILED, "failed", "failure", "ERROR"),
        (S.JOB_STATUS_CANCELED, "cancelled", "canceled", "ERROR"),
    ],
)
def test_statuses(status: int, clara: str, scenario: str, claid: str) -> None:
    job = make_job(status)
    assert views.clara_job(job, BASE)["status"] == clara
    assert views.scenario_job(job)["status"] == scenario
    assert views.claid_task(job, BASE)["data"]["status"] == claid


def test_timestamp_formats() -> None:
    job = make_job()
    assert views.scenario_job(job)["createdAt"] == "2023-02-03T11:19:41.579Z"
    assert views.clara_job(job, BASE)["modifiedAt"] == "2023-02-03T11:20:00.001Z"
    assert views.claid_task(job, BASE)["data"]["created_at"] == "2023-02-03T11:19:41.579123+00:00"


def test_kind_names() -> None:
    kinds = {"scene.import": "import", "scene.export": "export", "scene.render": "renderFrame"}
    for kind, name in kinds.items():
        assert views.clara_job(jobs_pb2.Job(id="j", kind=kind), BASE)["type"] == name
    assert views.scenario_job(jobs_pb2.Job(kind="archive.create"))["jobType"] == "assets-download"


def test_scenario_metadata() -> None:
    job = make_job(S.JOB_STATUS_FAILED, params={"query": {"assetIds": ["a1"]}}, error="boom")
    assert views.scenario_job(job)["metadata"] == {"assetIds": ["a1"], "error": "boom"}
    done = make_job(S.JOB_STATUS_SUCCEEDED, params={"assetIds": ["a2"]}, result={"archiveUrl": "u"})
    seen = views.scenario_job(done)
    assert seen["metadata"] == {"assetIds": ["a2"], "archiveUrl": "u"}
    assert seen["progress"] == 1


def test_clara_urls_are_quoted() -> None:
    job = make_job(S.JOB_STATUS_SUCCEEDED)
    job.outputs.add(name="my render.png", content_type="image/png", size=10)
    body = views.clara_job(job, BASE)
    assert body["deleteURL"] == f"{BASE}/api/jobs/job_abc"
    assert body["files"] == [
        {
            "name": "my render.png",
            "type": "image/png",
            "size": 10,
            "url": f"{BASE}/api/jobs/job_abc/files/my%20render.png",
        }
    ]


def test_clara_delta() -> None:
    before = views.clara_job(make_job(), BASE)
    running = make_job(S.JOB_STATUS_RUNNING)
    running.update_time.FromDatetime(dt.datetime(2023, 2, 3, 11, 21))
    delta = views.clara_delta(before, views.clara_job(running, BASE))
    assert delta == {"status": "working", "modifiedAt": "2023-02-03T11:21:00.000Z"}
    assert views.clara_delta(before, before) == {}


def test_claid_cancelled_and_failed() -> None:
    cancelled = make_job(S.JOB_STATUS_CANCELED, params={"request": {"input": "x"}})
    cancelled.end_time.FromDatetime(dt.datetime(2023, 2, 3, 12, 0))
    data = views.claid_task(cancelled, BASE)["data"]
    assert data["errors"] == [
        {
            "error": "cancelled",
            "created_at": "2023-02-03T12:00:00.000000+00:00",
            "input_object": None,
        }
    ]
    assert data["request"] == {"input": "x"} and data["result"] == {}
    assert data["result_url"] == f"{BASE}/v1-beta1/image/edit/async/42"
    failed = make_job(
        S.JOB_STATUS_FAILED, error="cannot fetch input", result={"input_object": {"ext": "jpg"}}
    )
    error = views.claid_task(failed, BASE, "/v1")["data"]["errors"][0]
    assert error["error"] == "cannot fetch input" and error["input_object"] == {"ext": "jpg"}


def test_check_job_id() -> None:
    assert views.check_job_id("job_Ab-9") == "job_Ab-9"
    for bad in ("", "../x", "a/b", "a b", "x" * 129, "job\x00", "é"):
        with pytest.raises(ApiError) as raised:
            views.check_job_id(bad)
        assert raised.value.http_status == 404


def test_clara_shape() -> None:
    rendered = clara_shape(ApiError(grpc.StatusCode.FAILED_PRECONDITION, "job already finished"))
    assert rendered.status == 422 and rendered.body == {"message": "job already finished"}
    rendered = clara_shape(ApiError(grpc.StatusCode.NOT_FOUND, "nope"))
    assert rendered.status == 404 and rendered.body == {"message": "nope"}
    assert clara_shape(ApiError(grpc.StatusCode.DATA_LOSS, "x")).status == 500


def test_claid_shape() -> None:
    rendered = claid_shape(ApiError(grpc.StatusCode.UNAUTHENTICATED, "Authorization is required."))
    assert rendered.status == 401
    assert rendered.body == {
        "error_code": "111",
        "error_type": "auth",
        "error_message": "Authorization is required.",
        "error_details": {},
    }
    invalid = ApiError(grpc.StatusCode.INVALID_ARGUMENT, "bad", metadata={"field": "input"})
    rendered = claid_shape(invalid)
    assert rendered.status == 422 and rendered.body["error_code"] == "9000"
    assert rendered.body["error_details"] == {"input": ["bad"]}
    limited = claid_shape(ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, "Too Many Requests."))
    assert limited.status == 429 and limited.body["detail"]["error_code"] == "2001"
