"""Kiln's Python SDK: a client for Kiln's public HTTP API.

    from kiln_sdk import AsyncClient

    async with AsyncClient("http://127.0.0.1:8080", "demo", "demo-secret") as kiln:
        scene = await kiln.scenes.create("zebra")
        job = await kiln.scenes.import_files(scene["id"], ["zebra.obj", "zebra.mtl", "zebra.jpg"])
        await kiln.jobs.wait(job["id"])

`Client` is the same API, blocking. Errors are one hierarchy (`KilnError`); see `_errors`.
"""

from kiln_sdk._client import AsyncClient, Client, RetryPolicy
from kiln_sdk._errors import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    JobCanceled,
    JobError,
    JobFailed,
    KilnError,
    NotFound,
    RateLimited,
    ServerError,
    TransportError,
    Unauthorized,
    WaitTimeout,
)

__all__ = [
    "ApiError",
    "AsyncClient",
    "BadRequest",
    "Client",
    "Conflict",
    "Forbidden",
    "JobCanceled",
    "JobError",
    "JobFailed",
    "KilnError",
    "NotFound",
    "RateLimited",
    "RetryPolicy",
    "ServerError",
    "TransportError",
    "Unauthorized",
    "WaitTimeout",
]
