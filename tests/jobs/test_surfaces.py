"""The job surfaces end to end: real HTTP into the gateway, real jobs service, SQL and S3.

Scenario's `/v1/jobs/{jobId}`, Clara's job URL (200 / 303, redirect=false, output files,
DELETE, Server-Sent Events) and Claid's task view, driven the way each API's documented
clients drive them: the seed's curl + bash loop and `curl -L` as real subprocesses, Scenario's
JOB_FINAL_STATUS loop in Python.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from kiln.jobs.v1 import jobs_pb2

from tests.conftest import Suite
from tests.gateway.sse_client import EventReader
from tests.jobs.surfaces_fixtures import HEARTBEAT, Surfaces, Tenant, eventually, start_surfaces

MILLIS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
MICROS_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00")
JPEG = b"\xff\xd8\xff\xe0" + os.urandom(300_000) + b"\xff\xd9"


@pytest.fixture(scope="session")
def worker_token(worker_token_file: Path) -> str:
    return worker_token_file.read_text().strip()


@pytest.fixture(scope="module")
async def surf(
    suite: Suite,
    tmp_path_factory: pytest.TempPathFactory,
    token_for: Callable[..., str],
    worker_token: str,
) -> AsyncIterator[Surfaces]:
    async for running in start_surfaces(
        suite, tmp_path_factory.mktemp("jobs-gw"), token_for, worker_token
    ):
        yield running


def job_url(surf: Surfaces, job_id: str) -> str:
    return f"{surf.base_url}/api/jobs/{job_id}"


async def later(delay: float, action: Callable[[], Awaitable[Any]]) -> Any:
    await asyncio.sleep(delay)
    return await action()


def outcome_driver(
    surf: Surfaces, tenant: Tenant, job: jobs_pb2.Job, outcome: str
) -> Callable[[], Awaitable[Any]]:
    """What ends the job: a worker's completion or failure, or its owner's cancel."""

    async def drive() -> Any:
        if outcome == "cancelled":
            return await surf.jobs.cancel(tenant, job.id)
        await surf.jobs.lease(job)
        await asyncio.sleep(0.3)  # seen running for a while
        if outcome == "ok":
            return await surf.jobs.complete(job, outputs=[("render.jpg", "image/jpeg", JPEG)])
        return await surf.jobs.fail(job, "the renderer crashed")

    return drive


# --- Scenario -------------------------------------------------------------------------------


async def scenario_job(surf: Surfaces, tenant: Tenant, job_id: str) -> dict[str, Any]:
    response = await surf.http.get(
        f"/v1/jobs/{job_id}", auth=tenant.basic, headers={"accept": "application/json"}
    )
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()["job"]
    return job


async def test_scenario_job_through_its_life(surf: Surfaces) -> None:
    a = surf.a
    job = await surf.jobs.create(
        a, "archive.create", {"query": {"assetIds": ["asset_1", "asset_2"]}, "options": {}}
    )
    seen = await scenario_job(surf, a, job.id)
    assert set(seen) == {
        "jobId", "jobType", "status", "progress", "metadata", "createdAt", "updatedAt",
        "statusHistory",
    }  # fmt: skip
    assert seen["jobId"] == job.id and seen["jobType"] == "assets-download"
    assert seen["status"] == "queued" and seen["progress"] == 0
    assert seen["metadata"] == {"assetIds": ["asset_1", "asset_2"]}
    assert MILLIS.fullmatch(seen["createdAt"]) and MILLIS.fullmatch(seen["updatedAt"])
    assert [h["status"] for h in seen["statusHistory"]] == ["queued"]
    assert MILLIS.fullmatch(seen["statusHistory"][0]["date"])

    await surf.jobs.lease(job)
    await surf.jobs.progress(job, 0.25)
    seen = await scenario_job(surf, a, job.id)
    assert seen["status"] == "in-progress" and seen["progress"] == 0.25

    url = "https://kiln.example/downloads/archive.zip"
    await surf.jobs.complete(job, result={"archiveUrl": url})
    seen = await scenario_job(surf, a, job.id)
    assert seen["status"] == "success" and seen["progress"] == 1
    assert seen["metadata"] == {"assetIds": ["asset_1", "asset_2"], "archiveUrl": url}
    assert [h["status"] for h in seen["statusHistory"]] == ["queued", "in-progress", "success"]


async def poll_job_status(
    client: httpx.AsyncClient, authorization: str, job_id: str
) -> dict[str, Any]:
    """Scenario's seed loop (`pollJobStatus`), in Python: poll until a JOB_FINAL_STATUS."""
    job_final_status = ["success", "failure", "canceled"]
    status = None
    while status not in job_final_status:
        response = await client.get(
            f"/v1/jobs/{job_id}",
            headers={"accept": "application/json", "Authorization": authorization},
        )
        body = response.json()
        status = body["job"]["status"]
        if status == "success":
            job: dict[str, Any] = body["job"]
            return job
        if status in job_final_status:
            raise RuntimeError(f"Job {job_id} ended with status: {status}")
        await asyncio.sleep(0.1)  # the seed polls every 3 s
    raise AssertionError("unreachable")


@pytest.mark.parametrize("outcome", ["ok", "failed", "cancelled"])
async def test_scenario_job_final_status_loop_ends(surf: Surfaces, outcome: str) -> None:
    a = surf.a
    job = await surf.jobs.create(a, "archive.create", {"query": {"assetIds": ["asset_x"]}})
    driver = asyncio.create_task(later(0.3, outcome_driver(surf, a, job, outcome)))
    authorization = a.basic_header["Authorization"]
    if outcome == "ok":
        done = await asyncio.wait_for(poll_job_status(surf.http, authorization, job.id), 10)
        assert done["status"] == "success"
    else:
        with pytest.raises(RuntimeError, match="failure" if outcome == "failed" else "canceled"):
            await asyncio.wait_for(poll_job_status(surf.http, authorization, job.id), 10)
    await driver
    if outcome == "failed":
        seen = await scenario_job(surf, a, job.id)
        assert seen["metadata"]["error"] == "the renderer crashed"


async def test_scenario_unknown_job_is_404(surf: Surfaces) -> None:
    response = await surf.http.get("/v1/jobs/job_doesnotexist", auth=surf.a.basic)
    assert response.status_code == 404
    body = response.json()
    assert body["code"] == 5 and "not found" in body["message"]


# --- Clara: the job URL -------------------------------------------------------------------------


async def test_clara_job_json_while_running(surf: Surfaces) -> None:
    a = surf.a
    job = await surf.jobs.create(a, "scene.render", {"sceneId": "de8891ef-6ee5-4a2c"})
    url = job_url(surf, job.id)
    response = await surf.http.get(url, auth=a.basic, headers={"accept": "application/json"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == job.id and body["type"] == "renderFrame"
    assert body["status"] == "pending" and body["progress"] == 0
    assert body["sceneId"] == "de8891ef-6ee5-4a2c"
    assert body["deleteURL"] == url
    assert body["files"] == [] and body["error"] is None
    assert MILLIS.fullmatch(body["createdAt"]) and MILLIS.fullmatch(body["modifiedAt"])

    await surf.jobs.lease(job)
    await surf.jobs.progress(job, 0.5)
    response = await surf.http.get(url, auth=a.basic)
    assert response.status_code == 200
    assert response.json()["status"] == "working" and response.json()["progress"] == 0.5
    # redirect=false changes nothing while the job runs.
    response = await surf.http.get(url, params={"redirect": "false"}, auth=a.basic)
    assert response.status_code == 200 and response.json()["status"] == "working"
    await surf.jobs.complete(job)


SEED_LOOP = """
set -u
while [[ $(curl -s -w "%{{http_code}}" -o /dev/null \\
           -u {user} \\
           "${{LOCATION}}") != 303 ]] ; do
    sleep 0.2
done
echo done
"""


async def run_bash(script: str, env: dict[str, str], within: float = 20) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        script,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), within)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"bash did not finish within {within} s") from None
    assert process.returncode is not None
    return process.returncode, out.decode()


@pytest.mark.parametrize("outcome", ["ok", "failed", "cancelled"])
async def test_clara_seed_curl_loop_ends_on_303(surf: Surfaces, outcome: str) -> None:
    """The seed's bash loop, verbatim but for `sleep 60`, ends for every outcome."""
    a = surf.a
    job = await surf.jobs.create(a, "scene.import", {"sceneId": "53083190"})
    location = job_url(surf, job.id)
    user = shlex.quote(f"{a.client_id}:{a.secret}")
    loop = asyncio.create_task(run_bash(SEED_LOOP.format(user=user), {"LOCATION": location}))
    await asyncio.sleep(0.6)
    assert not loop.done(), "the loop ended before the job did"
    await outcome_driver(surf, a, job, outcome)()
    code, out = await loop
    assert code == 0 and out.strip() == "done", out
    response = await surf.http.get(location, auth=a.basic)
    assert response.status_code == 303
    expected = {"ok": "ok", "failed": "failed", "cancelled": "cancelled"}[outcome]
    assert response.json()["status"] == expected
    assert response.headers["location"] == f"{location}/result"
    if outcome == "failed":
        assert response.json()["error"] == "the renderer crashed"


async def test_clara_curl_follows_to_the_raw_output(surf: Surfaces, tmp_path: Path) -> None:
    """The render example: wait for 303, then `curl -L ... -o render.jpg` gets the bytes."""
    a = surf.a
    job = await surf.jobs.create(a, "scene.render")
    await outcome_driver(surf, a, job, "ok")()
    location = job_url(surf, job.id)
    user = shlex.quote(f"{a.client_id}:{a.secret}")
    target = tmp_path / "render.jpg"
    script = SEED_LOOP.format(user=user) + (
        f'curl -s -f -L -u {user} "${{LOCATION}}" -o {shlex.quote(str(target))}\n'
    )
    code, out = await run_bash(script, {"LOCATION": location})
    assert code == 0, out
    assert target.read_bytes() == JPEG

    response = await surf.http.get(f"{location}/result", auth=a.basic)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert response.headers["content-length"] == str(len(JPEG))
    assert response.content == JPEG


async def test_following_a_job_without_output_is_harmless(surf: Surfaces) -> None:
    """curl -L on a failed job (no output) ends at the job JSON: no redirect loop."""
    a = surf.a
    job = await surf.jobs.create(a, "scene.import")
    await outcome_driver(surf, a, job, "failed")()
    user = shlex.quote(f"{a.client_id}:{a.secret}")
    code, out = await run_bash(
        f'curl -s -f -L --max-redirs 3 -u {user} "${{LOCATION}}"',
        {"LOCATION": job_url(surf, job.id)},
    )
    assert code == 0, out
    assert json.loads(out)["status"] == "failed"
    # A succeeded job without output, too (an import).
    job = await surf.jobs.create(a, "scene.import")
    await surf.jobs.run(job, result={"objects": 3})
    response = await surf.http.get(job_url(surf, job.id), auth=a.basic, follow_redirects=True)
    assert response.status_code == 200 and response.json()["status"] == "ok"


async def test_clara_redirect_false(surf: Surfaces) -> None:
    a = surf.a
    job = await surf.jobs.create(a, "scene.export")
    await outcome_driver(surf, a, job, "ok")()
    url = job_url(surf, job.id)
    response = await surf.http.get(url + "?redirect=false", auth=a.basic)
    assert response.status_code == 303
    assert response.headers["location"] == url + "?redirect=false"
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["status"] == "ok" and body["progress"] == 1
    assert body["files"] == [
        {
            "name": "render.jpg",
            "type": "image/jpeg",
            "size": len(JPEG),
            "url": f"{url}/files/render.jpg",
        }
    ]
    # The seed's import example appends ?redirect=false to the Location and waits for 303.
    user = shlex.quote(f"{a.client_id}:{a.secret}")
    code, out = await run_bash(SEED_LOOP.format(user=user), {"LOCATION": url + "?redirect=false"})
    assert code == 0, out


async def test_clara_output_files_by_name(surf: Surfaces) -> None:
    a = surf.a
    job = await surf.jobs.create(a, "scene.export")
    await surf.jobs.run(
        job,
        outputs=[
            ("scene.zip", "application/zip", b"PK\x03\x04" + b"z" * 1000),
            ("scene.mtl", "text/plain", b"newmtl a\n"),
        ],
    )
    body = (await surf.http.get(job_url(surf, job.id) + "?redirect=false", auth=a.basic)).json()
    assert [f["name"] for f in body["files"]] == ["scene.zip", "scene.mtl"]
    response = await surf.http.get(body["files"][1]["url"], auth=a.basic)
    assert response.status_code == 200 and response.content == b"newmtl a\n"
    assert response.headers["content-type"].startswith("text/plain")
    assert 'filename="scene.mtl"' in response.headers["content-disposition"]
    # The 303's Location serves the first output.
    response = await surf.http.get(job_url(surf, job.id), auth=a.basic, follow_redirects=True)
    assert response.content.startswith(b"PK\x03\x04")
    # An output the job does not have.
    response = await surf.http.get(job_url(surf, job.id) + "/files/other.zip", auth=a.basic)
    assert response.status_code == 404 and "message" in response.json()


async def test_clara_result_of_a_running_job_is_404(surf: Surfaces) -> None:
    job = await surf.jobs.create(surf.a, "scene.render")
    response = await surf.http.get(job_url(surf, job.id) + "/result", auth=surf.a.basic)
    assert response.status_code == 404
    assert set(response.json()) == {"message"}
    await surf.jobs.cancel(surf.a, job.id)


async def test_clara_delete_url_cancels(surf: Surfaces) -> None:
    a = surf.a
    job = await surf.jobs.create(a, "scene.render")
    body = (await surf.http.get(job_url(surf, job.id), auth=a.basic)).json()
    response = await surf.http.delete(body["deleteURL"], auth=a.basic)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert (await surf.jobs.get(a, job.id)).status == jobs_pb2.JOB_STATUS_CANCELED
    # Cancelling again answers the job unchanged.
    response = await surf.http.delete(body["deleteURL"], auth=a.basic)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    # A job that already finished cannot be cancelled: 422 in Clara's shape.
    done = await surf.jobs.create(a, "scene.render")
    await surf.jobs.run(done)
    response = await surf.http.delete(job_url(surf, done.id), auth=a.basic)
    assert response.status_code == 422
    assert set(response.json()) >= {"message"}


async def test_clara_running_job_cancelled_reaches_the_worker(surf: Surfaces) -> None:
    a = surf.a
    job = await surf.jobs.create(a, "scene.render")
    await surf.jobs.lease(job)
    response = await surf.http.delete(job_url(surf, job.id), auth=a.basic)
    assert response.status_code == 200
    # The worker learns of it at its next heartbeat; the job ends cancelled.
    assert await surf.jobs.progress(job, 0.5)

    async def ended() -> None:
        got = await surf.http.get(job_url(surf, job.id), auth=a.basic)
        assert got.status_code == 303 and got.json()["status"] == "cancelled"

    await eventually(ended)


# --- Clara: Server-Sent Events ----------------------------------------------------------------


async def test_clara_event_stream_full_then_deltas(surf: Surfaces) -> None:
    a = surf.a
    job = await surf.jobs.create(a, "scene.render", {"sceneId": "s1"})
    url = job_url(surf, job.id)
    headers = {"Accept": "text/event-stream"}
    async with surf.http.stream("GET", url, auth=a.basic, headers=headers, timeout=20) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = EventReader(response)
        first = await reader.next()
        assert first is not None
        full = first.json()
        assert full["id"] == job.id and full["status"] == "pending"
        assert full["deleteURL"] == url and full["files"] == []

        # Idle: keep-alive comments, more often than every 5 s.
        await asyncio.sleep(HEARTBEAT * 3)
        await surf.jobs.lease(job)
        working = await reader.next()
        assert working is not None
        delta = working.json()
        assert delta["status"] == "working"
        assert "id" not in delta and "deleteURL" not in delta and "type" not in delta
        assert len(reader.comments) >= 2

        await surf.jobs.progress(job, 0.5)
        event = await reader.next()
        assert event is not None and event.json()["progress"] == 0.5
        assert "status" not in event.json()

        await surf.jobs.complete(job, outputs=[("render.png", "image/png", b"\x89PNG....")])
        event = await reader.next()
        assert event is not None
        final = event.json()
        assert final["status"] == "ok" and final["progress"] == 1
        assert final["files"][0]["name"] == "render.png"
        assert final["files"][0]["url"] == f"{url}/files/render.png"
        # The stream ends after the final state.
        assert await asyncio.wait_for(reader.next(), 5) is None


async def test_clara_event_stream_of_a_finished_job_is_one_event(surf: Surfaces) -> None:
    job = await surf.jobs.create(surf.a, "scene.render")
    await surf.jobs.cancel(surf.a, job.id)
    headers = {"Accept": "text/event-stream"}
    async with surf.http.stream(
        "GET", job_url(surf, job.id), auth=surf.a.basic, headers=headers
    ) as response:
        reader = EventReader(response)
        event = await reader.next()
        assert event is not None and event.json()["status"] == "cancelled"
        assert await asyncio.wait_for(reader.next(), 5) is None


# --- Claid ----------------------------------------------------------------------------------

EDIT_REQUEST = {
    "input": "https://images.example/1.jpg",
    "operations": {"resizing": {"width": 800}},
    "output": {"format": "jpeg"},
}


async def claid_task(
    surf: Surfaces, tenant: Tenant, task_id: int | str, prefix: str = "/v1-beta1"
) -> httpx.Response:
    return await surf.http.get(f"{prefix}/image/edit/async/{task_id}", headers=tenant.bearer_header)


async def test_claid_task_view_through_its_life(surf: Surfaces) -> None:
    a = surf.a
    job = await surf.jobs.create(a, "image.edit", {"request": EDIT_REQUEST})
    response = await claid_task(surf, a, job.seq_id)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["id"] == job.seq_id and isinstance(data["id"], int)
    assert data["status"] == "ACCEPTED"
    assert data["result_url"] == f"{surf.base_url}/v1-beta1/image/edit/async/{job.seq_id}"
    assert MICROS_UTC.fullmatch(data["created_at"])
    assert data["request"] == EDIT_REQUEST
    assert data["errors"] == [] and data["result"] == {}

    await surf.jobs.lease(job)
    assert (await claid_task(surf, a, job.seq_id)).json()["data"]["status"] == "PROCESSING"
    result = {
        "input_object": {"ext": "jpg", "mps": 0.48, "mime": "image/jpeg", "format": "JPEG",
                         "width": 800, "height": 600},
        "output_object": {"ext": "jpg", "mps": 0.48, "mime": "image/jpeg", "format": "JPEG",
                          "width": 800, "height": 600, "tmp_url": "https://x.example/o.jpg"},
    }  # fmt: skip
    await surf.jobs.complete(job, result=result)
    data = (await claid_task(surf, a, job.seq_id)).json()["data"]
    assert data["status"] == "DONE" and data["result"] == result and data["errors"] == []
    # Under /v1 too, result_url following the prefix used.
    data = (await claid_task(surf, a, job.seq_id, prefix="/v1")).json()["data"]
    assert data["result_url"] == f"{surf.base_url}/v1/image/edit/async/{job.seq_id}"


@pytest.mark.parametrize("outcome", ["failed", "cancelled"])
async def test_claid_failed_and_cancelled_are_error(surf: Surfaces, outcome: str) -> None:
    a = surf.a
    job = await surf.jobs.create(a, "image.edit", {"request": EDIT_REQUEST})
    await outcome_driver(surf, a, job, outcome)()
    data = (await claid_task(surf, a, job.seq_id)).json()["data"]
    assert data["status"] == "ERROR" and data["result"] == {}
    assert len(data["errors"]) == 1
    error = data["errors"][0]
    assert error["error"] == ("the renderer crashed" if outcome == "failed" else "cancelled")
    assert MICROS_UTC.fullmatch(error["created_at"]) and error["input_object"] is None


async def test_claid_task_as_events_until_done(surf: Surfaces) -> None:
    a = surf.a
    job = await surf.jobs.create(a, "image.edit", {"request": EDIT_REQUEST})
    url = f"/v1/image/edit/async/{job.seq_id}"
    headers = {**a.bearer_header, "Accept": "text/event-stream"}
    async with surf.http.stream("GET", url, headers=headers, timeout=20) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = EventReader(response)
        first = await reader.next()
        # Each event is the body a GET answers at that moment, under the prefix used.
        assert (
            first is not None
            and first.json() == (await claid_task(surf, a, job.seq_id, "/v1")).json()
        )
        assert first.json()["data"]["status"] == "ACCEPTED"

        await surf.jobs.lease(job)
        event = await reader.next()
        assert event is not None and event.json()["data"]["status"] == "PROCESSING"
        # Progress is not in Claid's view: it changes nothing there, so no event (a comment).
        await surf.jobs.progress(job, 0.5)
        result = {"output_object": {"ext": "webp", "width": 1000, "tmp_url": "https://x.example/o"}}
        await surf.jobs.complete(job, result=result)
        event = await reader.next()
        assert event is not None
        done = event.json()["data"]
        assert done["status"] == "DONE" and done["result"] == result
        assert done["result_url"] == f"{surf.base_url}{url}"
        assert "unchanged" in reader.comments
        assert await asyncio.wait_for(reader.next(), 5) is None


async def test_claid_task_events_of_a_failed_task_is_one_error_event(surf: Surfaces) -> None:
    a = surf.a
    job = await surf.jobs.create(a, "image.edit", {"request": EDIT_REQUEST})
    await outcome_driver(surf, a, job, "failed")()
    headers = {**a.bearer_header, "Accept": "text/event-stream"}
    url = f"/v1-beta1/image/edit/async/{job.seq_id}"
    async with surf.http.stream("GET", url, headers=headers, timeout=20) as response:
        reader = EventReader(response)
        event = await reader.next()
        assert event is not None and event.json()["data"]["status"] == "ERROR"
        assert event.json()["data"]["errors"][0]["error"] == "the renderer crashed"
        assert await asyncio.wait_for(reader.next(), 5) is None


async def test_claid_task_events_refuse_what_get_refuses(surf: Surfaces) -> None:
    job = await surf.jobs.create(surf.a, "image.edit", {"request": EDIT_REQUEST})
    events = {"Accept": "text/event-stream"}
    for tenant, task_id, status in (
        (surf.b, str(job.seq_id), 404),  # another tenant's task
        (surf.a, "987654321012", 404),
        (surf.a, "abc", 422),
    ):
        response = await surf.http.get(
            f"/v1/image/edit/async/{task_id}", headers={**tenant.bearer_header, **events}
        )
        assert response.status_code == status, response.text
        assert set(response.json()) == {
            "error_code",
            "error_type",
            "error_message",
            "error_details",
        }
    response = await surf.http.get(f"/v1/image/edit/async/{job.seq_id}", headers=events)
    assert response.status_code == 401 and response.json()["error_code"] == "111"


@pytest.mark.parametrize("task_id", ["abc", "1.5", "1e3", "99999999999999999999999", "%20"])
async def test_claid_non_integer_task_id_is_422(surf: Surfaces, task_id: str) -> None:
    response = await claid_task(surf, surf.a, task_id)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error_code"] == "9000" and body["error_type"] == "validation"
    assert body["error_details"] == {"task_id": ["value is not a valid integer"]}
    assert set(body) == {"error_code", "error_type", "error_message", "error_details"}


@pytest.mark.parametrize("task_id", ["0", "-1", "987654321012"])
async def test_claid_unknown_task_is_404(surf: Surfaces, task_id: str) -> None:
    response = await claid_task(surf, surf.a, task_id)
    assert response.status_code == 404
    body = response.json()
    assert set(body) == {"error_code", "error_type", "error_message", "error_details"}
    assert "not found" in body["error_message"]


async def test_claid_unknown_route_is_404_in_its_shape(surf: Surfaces) -> None:
    for path in ("/v1-beta1/image/edits", "/v1-beta1/image/edit/async/1/x"):
        response = await surf.http.get(path, headers=surf.a.bearer_header)
        assert response.status_code == 404, path
        assert set(response.json()) == {
            "error_code",
            "error_type",
            "error_message",
            "error_details",
        }
    # The submit route exists, for POST only: a GET there is 405 in the same shape.
    wrong = await surf.http.get("/v1-beta1/image/edit/async/", headers=surf.a.bearer_header)
    assert wrong.status_code == 405
    assert wrong.json()["error_type"] == "general"


async def test_claid_shows_only_image_edit_jobs(surf: Surfaces) -> None:
    job = await surf.jobs.create(surf.a, "scene.render")
    assert (await claid_task(surf, surf.a, job.seq_id)).status_code == 404
    await surf.jobs.cancel(surf.a, job.id)


async def test_claid_without_credentials_is_401(surf: Surfaces) -> None:
    response = await surf.http.get("/v1-beta1/image/edit/async/1")
    assert response.status_code == 401
    assert response.json()["error_code"] == "111"
    assert response.json()["error_type"] == "auth"


# --- tenants and bad input ------------------------------------------------------------------


async def test_another_tenants_job_is_404_everywhere(surf: Surfaces) -> None:
    a, b = surf.a, surf.b
    job = await surf.jobs.create(a, "image.edit", {"request": EDIT_REQUEST})
    done = await surf.jobs.create(a, "scene.render")
    await surf.jobs.run(done, outputs=[("render.jpg", "image/jpeg", JPEG)])
    http = surf.http

    assert (await http.get(f"/v1/jobs/{job.id}", auth=b.basic)).status_code == 404
    assert (await claid_task(surf, b, job.seq_id)).status_code == 404
    for url in (
        job_url(surf, job.id),
        job_url(surf, done.id),
        job_url(surf, done.id) + "/result",
        job_url(surf, done.id) + "/files/render.jpg",
        job_url(surf, done.id) + "?redirect=false",
    ):
        response = await http.get(url, auth=b.basic)
        assert response.status_code == 404, url
        assert set(response.json()) >= {"message"}
        assert JPEG[:64] not in response.content
    response = await http.get(
        job_url(surf, job.id), auth=b.basic, headers={"Accept": "text/event-stream"}
    )
    assert response.status_code == 404 and "message" in response.json()
    response = await http.delete(job_url(surf, job.id), auth=b.basic)
    assert response.status_code == 404
    # Nothing changed for the owner.
    assert (await surf.jobs.get(a, job.id)).status == jobs_pb2.JOB_STATUS_QUEUED
    assert (await http.get(f"/v1/jobs/{job.id}", auth=a.basic)).status_code == 200
    await surf.jobs.cancel(a, job.id)


@pytest.mark.parametrize(
    "path",
    [
        "/api/jobs/..%2F..%2Fetc%2Fpasswd",
        "/api/jobs/job%00x",
        "/api/jobs/" + "j" * 500,
        "/api/jobs/job_x%20OR%201=1",
        "/api/jobs/%F0%9F%92%A5",
        "/api/jobs/job_unknown/files/..%2F..%2Fsecret",
        "/api/jobs/job_unknown/files/.hidden",
        "/api/jobs/job_unknown/result",
        "/api/jobs",
        "/api/jobs/job_unknown/files/a/b",
        "/v1/jobs/..%2Fassets",
        "/v1/jobs/" + "j" * 500,
    ],
)
async def test_hostile_job_ids_are_404(surf: Surfaces, path: str) -> None:
    response = await surf.http.get(surf.base_url + path, auth=surf.a.basic)
    assert response.status_code == 404, response.text
    body = response.json()
    assert ("message" in body) if path.startswith("/api/") else (body["code"] == 5)


async def test_clara_credentials_are_checked(surf: Surfaces) -> None:
    job = await surf.jobs.create(surf.a, "scene.render")
    url = job_url(surf, job.id)
    response = await surf.http.get(url)
    assert response.status_code == 401 and set(response.json()) == {"message"}
    response = await surf.http.get(url, auth=(surf.a.client_id, "wrong-token"))
    assert response.status_code == 401 and "message" in response.json()
    response = await surf.http.post(url, auth=surf.a.basic)
    assert response.status_code == 405 and "message" in response.json()
    await surf.jobs.cancel(surf.a, job.id)
