"""The `image.edit` and `image.edit_batch` jobs: Claid's async and batch edits on the worker.

Both jobs carry the request exactly as the caller sent it (`params.request`, which Claid's task
view echoes) and check it again when they run, so a job never depends on how an older replica
normalized it. Results:

- `image.edit`: `{"input_object", "output_object"}` (Claid's `result`). A request the image
  refuses (undecodable, over the pixel limits, a padding larger than the image) or an input
  that cannot be fetched fails the job at once with the reason as its error (Claid's `ERROR`
  with `errors[]`): another attempt would fail the same way. Anything else is retried.
- `image.edit_batch`: `{"results": [{"input_object", "output_object"}], "errors": [{"error",
  "input"}]}` in input order. One image that fails does not stop the others; the batch fails
  only when no image could be edited. Progress is the share of inputs done.

Outputs without a destination are written under `tmp/{tenant}/{job_id}/` (a batch's under
`tmp/{tenant}/{job_id}-{index}/`), so a retried attempt overwrites its own files.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from google.protobuf import json_format

from services.render.batch import validate_batch_request
from services.render.editing import ImageEditor
from services.render.imaging.request import validate_edit_request
from services.runtime.errors import InputUnreachable, InvalidArgument, JobFailed
from services.runtime.worker import JobContext

EDIT_KIND = "image.edit"
BATCH_KIND = "image.edit_batch"


def _request_of(ctx: JobContext) -> Any:
    params = json_format.MessageToDict(ctx.job.params)
    if "request" not in params:
        raise JobFailed("the job carries no request")
    return params["request"]


def _refusal(exc: Exception) -> JobFailed:
    """A final failure whose message the job's owner reads."""
    message = getattr(exc, "message", None) or str(exc)
    return JobFailed(message)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def edit_handlers(editor: ImageEditor) -> dict[str, Callable[[JobContext], Awaitable[Any]]]:
    """The worker handlers of both kinds, bound to this process's editor."""

    async def edit_one(ctx: JobContext, request: Mapping[str, Any], scope: str) -> dict[str, Any]:
        answer = await editor.edit(ctx.tenant, request, scope=scope, mode="async")
        return {"input_object": answer["input"], "output_object": answer["output"]}

    async def image_edit(ctx: JobContext) -> dict[str, Any]:
        try:
            request = validate_edit_request(_request_of(ctx))
            ctx.progress(0.1)
            return await edit_one(ctx, request, ctx.job_id)
        except (InvalidArgument, InputUnreachable) as exc:
            raise _refusal(exc) from None

    async def image_edit_batch(ctx: JobContext) -> dict[str, Any]:
        try:
            plan = validate_batch_request(_request_of(ctx))
            files = list(plan.files)
            if plan.folder is not None:
                files = await editor.storages.list_folder(ctx.tenant, plan.folder, plan.recursive)
        except (InvalidArgument, InputUnreachable) as exc:
            raise _refusal(exc) from None
        if not files:
            raise JobFailed(f"no images found in {plan.folder}")
        results: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for done, uri in enumerate(files):
            try:
                # Each input gets its own temporary folder: two inputs may share a stem.
                scope = f"{ctx.job_id}-{done}"
                results.append(await edit_one(ctx, {**plan.template, "input": uri}, scope))
            except (InvalidArgument, InputUnreachable) as exc:
                errors.append({"error": _refusal(exc).message, "input": uri, "created_at": _now()})
            ctx.progress((done + 1) / len(files))
        if not results:
            raise JobFailed(f"no image could be edited; first error: {errors[0]['error']}")
        return {"results": results, "errors": errors}

    return {EDIT_KIND: image_edit, BATCH_KIND: image_edit_batch}
