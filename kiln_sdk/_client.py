"""The clients: `AsyncClient` (httpx, asyncio) and `Client` (the same, blocking).

- Tokens: fetched from `/oauth2/token` with the client credentials, reused until a minute
  before they expire, fetched again once when a call answers 401.
- Retries (`RetryPolicy`): 429, 503 and connection errors only, never other 4xx, with
  exponential backoff and full jitter, waiting at least what `Retry-After` says. Uploads are
  retried only while their body can be sent again (bytes and files on disk).
- Jobs: every job (import, export, render, archive, edit) is read through Clara's job URL
  (`/api/jobs/{id}`), whatever API created it; `wait` follows the job's event stream, so it
  returns the moment the job ends.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx

from kiln_sdk._errors import (
    ApiError,
    JobCanceled,
    JobFailed,
    RateLimited,
    TransportError,
    Unauthorized,
    WaitTimeout,
    error_for,
)

T = TypeVar("T")
FINAL = ("ok", "failed", "cancelled")
_RETRIED_STATUSES = (429, 503)
_REFRESH_BEFORE_SECONDS = 60.0

Upload = str | Path | bytes


@dataclass(frozen=True)
class RetryPolicy:
    """How calls are retried: at most `attempts` tries in all, waiting
    `uniform(0, min(max_delay, base_delay * 2**n))` before try n+1 (full jitter), and never
    less than the server's `Retry-After`."""

    attempts: int = 5
    base_delay: float = 0.25
    max_delay: float = 20.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        jitter = random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))
        return max(jitter, retry_after or 0.0)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _parse(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    error = error_for(response.status_code, _parse(response), response.text)
    if isinstance(error, RateLimited):
        error.retry_after = _retry_after(response)
    raise error


def _file_part(item: Upload, name: str | None = None) -> tuple[str, bytes | IO[bytes]]:
    if isinstance(item, bytes):
        return name or "unnamed.bin", item
    path = Path(item)
    return name or path.name, path.open("rb")


class AsyncClient:
    """Kiln's HTTP API, asynchronously. Use as `async with AsyncClient(...) as kiln:`."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        retry: RetryPolicy | None = None,
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._credentials = (client_id, client_secret)
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, transport=transport)
        self._token = ""
        self._token_expires = 0.0
        self._token_lock = asyncio.Lock()
        self.objects = _Objects(self)
        self.assets = _Assets(self)
        self.scenes = _Scenes(self)
        self.images = _Images(self)
        self.archives = _Archives(self)
        self.jobs = _Jobs(self)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    # --- transport ---------------------------------------------------------------------------

    async def token(self, *, refresh: bool = False) -> str:
        """A valid access token, fetched when there is none, it nears expiry, or `refresh`."""
        async with self._token_lock:
            if refresh or not self._token or time.time() > self._token_expires:
                response = await self._send(
                    "POST",
                    "/oauth2/token",
                    data={"grant_type": "client_credentials"},
                    auth=self._credentials,
                )
                _raise_for(response)
                body = response.json()
                self._token = str(body["access_token"])
                self._token_expires = (
                    time.time() + float(body["expires_in"]) - _REFRESH_BEFORE_SECONDS
                )
            return self._token

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request with the retry policy (429, 503, connection errors)."""
        rewind: list[IO[bytes]] = [f for _, (_, f) in kwargs.get("files", []) if hasattr(f, "seek")]
        for attempt in range(self.retry.attempts):
            last = attempt == self.retry.attempts - 1
            for stream in rewind:
                stream.seek(0)
            try:
                response = await self._http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError) as exc:
                if last:
                    raise TransportError(f"{method} {path}: {exc}") from exc
                await asyncio.sleep(self.retry.delay(attempt, None))
                continue
            if response.status_code in _RETRIED_STATUSES and not last:
                await response.aclose()
                await asyncio.sleep(self.retry.delay(attempt, _retry_after(response)))
                continue
            return response
        raise AssertionError("unreachable")

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """An authenticated request; a 401 fetches a new token once. Raises ApiError."""
        for renewed in (False, True):
            headers = {
                **kwargs.pop("headers", {}),
                "Authorization": f"Bearer {await self.token(refresh=renewed)}",
            }
            response = await self._send(method, path, headers=headers, **kwargs)
            if response.status_code != 401 or renewed:
                break
            kwargs["headers"] = {k: v for k, v in headers.items() if k != "Authorization"}
        _raise_for(response)
        return response

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return (await self.request(method, path, **kwargs)).json()

    async def download(self, path_or_url: str, dest: str | Path | None = None) -> bytes | Path:
        """The bytes at a Kiln path or a presigned URL, streamed to `dest` when given."""
        absolute = path_or_url.startswith(("http://", "https://"))
        headers = (
            {}
            if absolute and not path_or_url.startswith(self.base_url)
            else {"Authorization": f"Bearer {await self.token()}"}
        )
        async with self._http.stream("GET", path_or_url, headers=headers) as response:
            if response.status_code >= 400:
                await response.aread()
                _raise_for(response)
            if dest is None:
                return await response.aread()
            target = Path(dest)
            # Local disk writes are short next to the network reads they follow.
            with target.open("wb") as out:  # noqa: ASYNC230
                async for chunk in response.aiter_bytes():
                    out.write(chunk)
            return target


class _Resource:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client


class _Objects(_Resource):
    """CLyman objects."""

    async def create(self, **fields: Any) -> dict[str, Any]:
        body = await self._client.json("POST", "/v1/object", json={"objects": [fields]})
        return dict(body["objects"][0])

    async def get(self, key: str) -> dict[str, Any]:
        return dict((await self._client.json("GET", f"/v1/object/{key}"))["objects"][0])

    async def update(self, key: str, **fields: Any) -> dict[str, Any]:
        body = await self._client.json("POST", f"/v1/object/{key}", json={"objects": [fields]})
        return dict(body["objects"][0])

    async def delete(self, key: str) -> None:
        await self._client.request("DELETE", f"/v1/object/{key}")

    async def query(self, *filters: Mapping[str, Any], limit: int = 10) -> list[dict[str, Any]]:
        body = await self._client.json(
            "POST", "/v1/object/query", json={"objects": list(filters), "num_records": limit}
        )
        return list(body.get("objects", []))

    async def lock(self, key: str, device: str) -> dict[str, Any]:
        body = await self._client.json("GET", f"/v1/object/{key}/lock", params={"device": device})
        return dict(body["objects"][0])

    async def unlock(self, key: str, device: str) -> None:
        await self._client.request("DELETE", f"/v1/object/{key}/lock", params={"device": device})


class _Assets(_Resource):
    """Files in Kiln's storage."""

    async def upload(
        self, file: Upload, *, file_name: str | None = None, **metadata: Any
    ) -> dict[str, Any]:
        """Streams a file (a path, or bytes) up; `metadata` is Scenario's (name, prompt, …)."""
        name, data = _file_part(file, file_name)
        try:
            form = {k: str(v) for k, v in metadata.items()}
            body = await self._client.json(
                "POST", "/v1/assets", data=form, files=[("file", (name, data))]
            )
        finally:
            if hasattr(data, "close"):
                data.close()
        return dict(body["asset"])

    async def get(self, asset_id: str) -> dict[str, Any]:
        return dict((await self._client.json("GET", f"/v1/assets/{asset_id}"))["asset"])

    async def list(self, *, page_size: int = 50, kind: str = "") -> list[dict[str, Any]]:
        params: dict[str, Any] = {"pageSize": page_size}
        if kind:
            params["kind"] = kind
        return list((await self._client.json("GET", "/v1/assets", params=params)).get("assets", []))

    async def download(self, asset_id: str, dest: str | Path | None = None) -> bytes | Path:
        """The asset's bytes (through its presigned URL), streamed to `dest` when given."""
        asset = await self.get(asset_id)
        return await self._client.download(str(asset["url"]), dest)

    async def delete(self, asset_id: str) -> None:
        await self._client.request("DELETE", f"/v1/assets/{asset_id}")


class _Scenes(_Resource):
    """Clara's scenes: import, export, render (each answers a job)."""

    async def create(self, name: str, **fields: Any) -> dict[str, Any]:
        return dict(await self._client.json("POST", "/api/scenes", json={"name": name, **fields}))

    async def get(self, scene_id: str) -> dict[str, Any]:
        return dict(await self._client.json("GET", f"/api/scenes/{scene_id}"))

    async def list(self, *, query: str = "") -> list[dict[str, Any]]:
        body = await self._client.json("GET", "/api/scenes", params={"query": query})
        return list(body["models"])

    async def delete(self, scene_id: str) -> None:
        await self._client.request("DELETE", f"/api/scenes/{scene_id}")

    async def import_files(self, scene_id: str, files: Sequence[Upload]) -> dict[str, Any]:
        """Starts an import of the model and its MTL, textures or buffers; answers the job."""
        parts = [_file_part(f) for f in files]
        try:
            return dict(
                await self._client.json(
                    "POST",
                    f"/api/scenes/{scene_id}/import",
                    data={"async": "1"},
                    files=[(f"file{i}", part) for i, part in enumerate(parts)],
                )
            )
        finally:
            for _, data in parts:
                if hasattr(data, "close"):
                    data.close()

    async def export(
        self, scene_id: str, extension: str, *, zip: bool = True, center: bool = False
    ) -> dict[str, Any]:
        data = {"zip": str(zip).lower(), "centerScene": str(center).lower()}
        return dict(
            await self._client.json("POST", f"/api/scenes/{scene_id}/export/{extension}", data=data)
        )

    async def render(self, scene_id: str, **params: Any) -> dict[str, Any]:
        """Starts a render: width, height, format, time, azimuthAngle, polarAngle,
        boundingRadius; answers the job."""
        return dict(
            await self._client.json("POST", f"/api/scenes/{scene_id}/render", params=params)
        )


class _Images(_Resource):
    """Claid's image editing."""

    async def edit(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Runs an edit now: `{input, operations, output}` → `{input, output}`."""
        return dict((await self._client.json("POST", "/v1/image/edit", json=request))["data"])

    async def edit_upload(
        self, file: Upload, request: Mapping[str, Any], *, file_name: str | None = None
    ) -> dict[str, Any]:
        """Edits a local image (a path, or bytes) sent with the request: `{operations,
        output}` → `{input, output}`; the output's `tmp_url` is where the result is."""
        name, data = _file_part(file, file_name)
        try:
            body = await self._client.json(
                "POST",
                "/v1/image/edit/upload",
                data={"data": json.dumps(dict(request))},
                files=[("file", (name, data))],
            )
        finally:
            if hasattr(data, "close"):
                data.close()
        return dict(body["data"])


class _Archives(_Resource):
    """Scenario's asset archives."""

    async def create(
        self, asset_ids: Sequence[str], *, file_name_template: str = "", flat: bool = False
    ) -> dict[str, Any]:
        options: dict[str, Any] = {"flat": flat}
        if file_name_template:
            options["fileNameTemplate"] = file_name_template
        body = await self._client.json(
            "POST",
            "/v1/assets/archive",
            json={"query": {"assetIds": list(asset_ids)}, "options": options},
        )
        return {"id": body["job"]["jobId"], **body["job"]}


class _Jobs(_Resource):
    """Every job, through Clara's job URL."""

    async def get(self, job_id: str) -> dict[str, Any]:
        response = await self._client.request(
            "GET", f"/api/jobs/{job_id}", params={"redirect": "false"}, follow_redirects=False
        )
        return dict(response.json())

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return dict(await self._client.json("DELETE", f"/api/jobs/{job_id}"))

    async def watch(self, job_id: str) -> AsyncIterator[dict[str, Any]]:
        """The job's state each time it changes (the job URL's event stream), until it ends."""
        headers = {
            "Accept": "text/event-stream",
            "Authorization": f"Bearer {await self._client.token()}",
        }
        job: dict[str, Any] = {}
        async with self._client._http.stream(
            "GET", f"/api/jobs/{job_id}", headers=headers, timeout=None
        ) as response:
            if response.status_code >= 400:
                await response.aread()
                _raise_for(response)
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                job = {**job, **json.loads(line[5:])}
                yield dict(job)
                if job.get("status") in FINAL:
                    return

    async def wait(
        self,
        job_id: str,
        timeout: float | None = 600.0,  # noqa: ASYNC109 (the wait's length, the API's own)
    ) -> dict[str, Any]:
        """The job once it is `ok`; JobFailed, JobCanceled, or WaitTimeout past `timeout`."""
        job: dict[str, Any] = {"id": job_id}

        async def follow() -> None:
            nonlocal job
            async for state in self.watch(job_id):
                job = state

        try:
            await asyncio.wait_for(follow(), timeout)
        except TimeoutError:
            raise WaitTimeout(f"job {job_id} had not ended after {timeout} s", job) from None
        if job.get("status") == "failed":
            raise JobFailed(f"job {job_id} failed: {job.get('error')}", job)
        if job.get("status") == "cancelled":
            raise JobCanceled(f"job {job_id} was cancelled", job)
        return job

    async def output(
        self, job_id: str, dest: str | Path | None = None, *, name: str | None = None
    ) -> bytes | Path:
        """A finished job's output (its first, or `name`), streamed to `dest` when given."""
        path = f"/api/jobs/{job_id}/files/{name}" if name else f"/api/jobs/{job_id}/result"
        return await self._client.download(path, dest)


class Client:
    """`AsyncClient`, blocking: every method of its resources is called and awaited on a
    private event loop in its own thread. Use as `with Client(...) as kiln:`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._async: AsyncClient = self._run(_make(args, kwargs))
        for name in ("objects", "assets", "scenes", "images", "archives", "jobs"):
            setattr(self, name, _Blocking(getattr(self._async, name), self._run, self._loop))

    def _run(self, coroutine: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(_await(coroutine), self._loop).result()

    def token(self) -> str:
        return self._run(self._async.token())

    def close(self) -> None:
        self._run(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _make(args: tuple[Any, ...], kwargs: dict[str, Any]) -> AsyncClient:
    # httpx's client binds to the loop it is made on: make it on the private loop.
    return AsyncClient(*args, **kwargs)


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


class _Blocking:
    """A resource whose coroutine methods block and whose async iterators become iterators."""

    def __init__(
        self,
        resource: Any,
        run: Callable[[Awaitable[Any]], Any],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._resource = resource
        self._run = run
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._resource, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if hasattr(result, "__anext__"):
                return self._iterate(result)
            return self._run(result)

        return call

    def _iterate(self, iterator: AsyncIterator[Any]) -> Iterator[Any]:
        while True:
            try:
                yield self._run(iterator.__anext__())
            except StopAsyncIteration:
                return


__all__ = ["ApiError", "AsyncClient", "Client", "RetryPolicy", "Unauthorized"]
