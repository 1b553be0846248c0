"""The multipart upload adapter against a recording AssetService: what goes on the wire.

The slice tests prove uploads land in S3; these prove the adapter's contract with the service:
header first, chunks of at most 1 MiB sent while the body is still arriving, and a refused or
abandoned upload cancelled rather than completed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from kiln.objects.v1 import assets_pb2, assets_pb2_grpc

from gateway.apis import scenario
from gateway.app import build_app
from gateway.core import Limits
from services.runtime.config import GatewayConfig
from tests.gateway.conftest import serving

Auth = Callable[..., dict[str, str]]
MIB = 1024 * 1024


@dataclass
class Session:
    messages: list[Any] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    completed: bool = False
    cancelled: bool = False
    first_chunk: asyncio.Event = field(default_factory=asyncio.Event)


class RecordingAssets(assets_pb2_grpc.AssetServiceServicer):
    def __init__(self) -> None:
        self.sessions: list[Session] = []

    async def UploadAsset(self, requests: Any, context: grpc.aio.ServicerContext) -> Any:
        session = Session(metadata=dict(context.invocation_metadata() or ()))
        self.sessions.append(session)
        try:
            async for message in requests:
                session.messages.append(message)
                if message.WhichOneof("part") == "chunk":
                    session.first_chunk.set()
            # The real service stores the file after the stream ends (S3, then SQL): a
            # cancellation that raced the end of the stream reaches it there. Without this
            # await, a cancel arriving as the stream's end would count as a finished upload.
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            session.cancelled = True
            raise
        session.completed = True
        size = sum(len(m.chunk) for m in session.messages[1:])
        asset = assets_pb2.Asset(id="asset_recorded", size=size, kind="other")
        asset.metadata.CopyFrom(session.messages[0].header.metadata)
        return assets_pb2.UploadAssetResponse(asset=asset)


@dataclass
class Recorder:
    servicer: RecordingAssets
    client: httpx.AsyncClient


@pytest.fixture(scope="module")
async def recorder(gw_config: GatewayConfig) -> AsyncIterator[Recorder]:
    server = grpc.aio.server()
    servicer = RecordingAssets()
    assets_pb2_grpc.add_AssetServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    config = dataclasses.replace(
        gw_config, targets={**gw_config.targets, "objects": f"127.0.0.1:{port}"}
    )
    app = build_app(config, apis=(scenario.API,), limits=Limits(max_upload_bytes=6 * MIB))
    try:
        async with serving(app) as client:
            yield Recorder(servicer, client)
    finally:
        await server.stop(0)


async def test_header_first_then_bounded_chunks_while_the_body_arrives(
    recorder: Recorder, gw_auth: Auth
) -> None:
    data = os.urandom(5 * MIB + 123)
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nStone\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="num"\r\n\r\n3\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="s.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    streamed_early: list[bool] = []
    earlier = len(recorder.servicer.sessions)

    async def new_session() -> Session:
        # The service registers the call only once it arrives; under load that can lag.
        while len(recorder.servicer.sessions) <= earlier:
            await asyncio.sleep(0.01)
        return recorder.servicer.sessions[earlier]

    async def body() -> AsyncIterator[bytes]:
        yield head
        for start in range(0, len(data), 64 * 1024):
            yield data[start : start + 64 * 1024]
            if start == 3 * MIB:
                # Only a streaming adapter has sent chunks before the body is complete.
                try:
                    session = await asyncio.wait_for(new_session(), 5)
                    await asyncio.wait_for(session.first_chunk.wait(), 5)
                    streamed_early.append(True)
                except TimeoutError:
                    streamed_early.append(False)
        yield tail

    response = await recorder.client.post(
        "/v1/assets",
        content=body(),
        headers={
            **gw_auth("tenant-up"),
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Idempotency-Key": "idem-1",
            "X-Request-Id": "upload-1",
        },
    )
    assert response.status_code == 200, response.text
    assert streamed_early == [True]
    session = recorder.servicer.sessions[earlier]
    assert session.completed and not session.cancelled
    header, chunks = session.messages[0], session.messages[1:]
    assert header.WhichOneof("part") == "header"
    assert header.header.file_name == "s.png" and header.header.mime_type == "image/png"
    assert header.header.request_id == "idem-1"
    assert json_format.MessageToDict(header.header.metadata) == {"name": "Stone", "num": 3}
    assert all(m.WhichOneof("part") == "chunk" and len(m.chunk) <= MIB for m in chunks)
    assert b"".join(m.chunk for m in chunks) == data
    assert session.metadata["x-request-id"] == "upload-1"
    assert session.metadata["authorization"].startswith("Bearer ")
    assert response.json()["asset"]["id"] == "asset_recorded"
    assert response.json()["asset"]["metadata"] == {"name": "Stone", "num": 3}


async def test_a_refused_upload_is_cancelled_not_completed(
    recorder: Recorder, gw_auth: Auth
) -> None:
    boundary = "late"
    content = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n\r\n'
        + "x" * 2000
        + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="seed"\r\n\r\n1\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    earlier = len(recorder.servicer.sessions)
    response = await recorder.client.post(
        "/v1/assets",
        content=content,
        headers={**gw_auth(), "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 400
    assert "before the file" in response.json()["message"]
    # The call may be cancelled before the service even saw it (no session), or after
    # (a cancelled session); what must never happen is a completed upload.
    for _ in range(250):
        new = recorder.servicer.sessions[earlier:]
        if new and all(s.cancelled for s in new):
            break
        await asyncio.sleep(0.02)
    new = recorder.servicer.sessions[earlier:]
    assert all(s.cancelled and not s.completed for s in new), new


async def test_too_large_is_cancelled_with_413(recorder: Recorder, gw_auth: Auth) -> None:
    earlier = len(recorder.servicer.sessions)
    response = await recorder.client.post(
        "/v1/assets",
        files={"file": ("big.bin", os.urandom(6 * MIB + 1))},
        headers=gw_auth(),
    )
    assert response.status_code == 413
    assert response.json()["details"][0]["reason"] == "ERROR_REASON_TOO_LARGE"
    for _ in range(250):
        new = recorder.servicer.sessions[earlier:]
        if new and all(s.cancelled for s in new):
            break
        await asyncio.sleep(0.02)
    # Under load the cancel can reach the service before its handler ever ran (no session);
    # what must never happen is a completed upload.
    new = recorder.servicer.sessions[earlier:]
    assert all(s.cancelled and not s.completed for s in new), new
