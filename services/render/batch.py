"""Claid's batch edit request (`POST /v1/image/edit/batch`): one edit applied to many inputs.

    {"input": "storage://{name}/folder/"                       # every image in the folder
            | {"source": "storage://{name}/folder/", "recursive": bool}
            | ["https://…/a.jpg", "storage://{name}/b.png", …],  # 1..1,000 files
     "operations": {…},                                          # as in EditRequest
     "output": "storage://{name}/out/" | {"destination": "storage://{name}/out/", "format": …}}

`operations` and `output` follow the single edit's contract (`imaging.request`); the batch adds
its own rules: the input forms above, and a destination that is a folder (it ends in `/`),
since every output is named after its input. Without a destination the outputs go to the
temporary area, each with its own `tmp_url`. Every problem is reported at once, with the
single edit's paths (`input[2]`, `input.source`, `operations.resizing.width`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.render.imaging.request import EditRequestInvalid, validate_edit_request

MAX_BATCH_INPUTS = 1000
#: Stands in for the input while the shared operations and output are checked: a folder's
#: files are only known when the job runs.
_PLACEHOLDER_INPUT = "storage://batch/input.png"
_KEYS = ("input", "operations", "output")


@dataclass(frozen=True)
class BatchPlan:
    """A checked batch: either explicit `files`, or a `folder` to list when the job runs."""

    files: tuple[str, ...]
    folder: str | None
    recursive: bool
    template: dict[str, Any]
    """The normalized edit every input gets (its `input` replaced per file)."""


def _folder_problem(value: object) -> str | None:
    if not isinstance(value, str) or not value.startswith("storage://"):
        return "a folder is a storage URI: storage://{storage}/{path}/"
    if not value.endswith("/") or value.count("/") < 3:
        return "a folder URI ends in '/'"
    return None


def validate_batch_request(body: object) -> BatchPlan:
    """The batch's plan; `EditRequestInvalid` with every field's messages otherwise."""
    details: dict[str, list[str]] = {}

    def bad(path: str, message: str) -> None:
        details.setdefault(path, []).append(message)

    if not isinstance(body, Mapping):
        raise EditRequestInvalid({"body": ["Input should be a valid dictionary"]})
    for key in body:
        if key not in _KEYS:
            bad(str(key), "Extra inputs are not permitted")
    files: list[str] = []
    folder: str | None = None
    recursive = False
    raw_input = body.get("input")
    if raw_input is None:
        bad("input", "Field required")
    elif isinstance(raw_input, list):
        if not 1 <= len(raw_input) <= MAX_BATCH_INPUTS:
            bad("input", f"List should have between 1 and {MAX_BATCH_INPUTS} items")
        files = [str(item) for item in raw_input]
    elif isinstance(raw_input, Mapping):
        for key in raw_input:
            if key not in ("source", "recursive"):
                bad(f"input.{key}", "Extra inputs are not permitted")
        problem = _folder_problem(raw_input.get("source"))
        if problem:
            bad("input.source", problem)
        else:
            folder = raw_input["source"]
        flag = raw_input.get("recursive", False)
        if not isinstance(flag, bool):
            bad("input.recursive", "Input should be a valid boolean")
        else:
            recursive = flag
    else:
        problem = _folder_problem(raw_input)
        if problem:
            bad("input", problem)
        else:
            folder = str(raw_input)

    output = body.get("output")
    destination = output.get("destination") if isinstance(output, Mapping) else output
    if isinstance(destination, str) and not (
        destination.startswith("storage://") and destination.endswith("/")
    ):
        bad("output.destination", "a batch writes to a storage folder: storage://{storage}/{path}/")

    shared = {key: body[key] for key in ("operations", "output") if key in body}
    checks: list[tuple[str, str | None]] = [(f"input[{i}]", uri) for i, uri in enumerate(files)]
    checks = checks or [("input", None)]
    template: dict[str, Any] = {}
    for path, uri in checks:
        try:
            template = validate_edit_request({**shared, "input": uri or _PLACEHOLDER_INPUT})
        except EditRequestInvalid as exc:
            for field, messages in exc.details.items():
                target = path + field[len("input") :] if field == "input" else field
                for message in messages:
                    if message not in details.get(target, []):
                        bad(target, message)
    if details:
        raise EditRequestInvalid(details)
    return BatchPlan(files=tuple(files), folder=folder, recursive=recursive, template=template)
