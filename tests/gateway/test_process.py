"""`python -m gateway` as a real process: uvicorn on a socket, JSON logs, clean SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path

import httpx

from deploy.local.seaweed import free_port
from tests.conftest import Suite
from tests.gateway.conftest import REPO, env_without_kiln


async def wait_until_up(client: httpx.AsyncClient, process: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.returncode is None, "the gateway exited during start-up"
        try:
            if (await client.get("/health")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the gateway did not become healthy within 20 s")


async def test_process_serves_over_a_socket_and_stops_on_sigterm(
    suite: Suite, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **env_without_kiln(),
        **suite.target_env(),
        "PYTHONPATH": f"{REPO / 'gen'}:{REPO}",
        "KILN_GATEWAY_PORT": str(port),
        "KILN_GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}",
        "KILN_DESCRIPTOR_SET": str(REPO / "gen" / "kiln.binpb"),
        "KILN_DEMO_CLIENT_ID": "proc-demo",
        "KILN_DEMO_CLIENT_SECRET": "proc-secret",
        "KILN_DEMO_TENANT": "proc-tenant",
        "KILN_LOG_FORMAT": "json",
        "KILN_LOG_LEVEL": "INFO",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            await wait_until_up(client, process)
            token = await client.post(
                "/oauth2/application_token", auth=("proc-demo", "proc-secret")
            )
            assert token.status_code == 200
            auth = {"Authorization": f"Bearer {token.json()['access_token']}"}
            listed = await client.get("/v1/assets/", headers={**auth, "X-Request-Id": "proc-1"})
            assert listed.status_code == 200 and listed.json()["assets"] == []
            assert listed.headers["x-request-id"] == "proc-1"
            assert "server" not in listed.headers
            refused = await client.get("/v1/assets")
            assert refused.status_code == 401
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.stderr is not None
    lines = [json.loads(line) for line in (await process.stderr.read()).decode().splitlines()]
    access = [line for line in lines if line.get("logger") == "kiln.access"]
    listed_line = next(line for line in access if line.get("request_id") == "proc-1")
    assert listed_line["route"] == "/v1/assets" and listed_line["status"] == 200
    assert listed_line["tenant"] == "proc-tenant" and listed_line["service"] == "gateway"
    assert any(line["msg"] == "gateway started" for line in lines)
