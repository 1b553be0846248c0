"""The `kiln` command against a running suite: login writes 0600 credentials, every capability
round-trips, `--json` and `--no-wait`, and the exit statuses tell done, job failure, usage
error and API refusal apart."""

from __future__ import annotations

import asyncio
import io
import json
import stat
import uuid
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deploy.cli import main
from gateway.app import build_app
from services.runtime.config import load_gateway_config
from tests.conftest import Suite
from tests.gateway.conftest import live, suite_gateway_env
from tests.render import meshes


@dataclass(frozen=True)
class Rig:
    base: str
    client: tuple[str, str]


@pytest.fixture(scope="module")
async def rig(suite: Suite, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    data: Path = tmp_path_factory.mktemp("cli-gw")
    app = build_app(load_gateway_config(suite_gateway_env(suite.target_env(), data)))
    client = (f"cli-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex)
    async with live(app) as http:
        await app.state.gateway.clients.ensure(*client, tenant=client[0], scopes=["*"])
        yield Rig(str(http.base_url).rstrip("/"), client)


@pytest.fixture
def kiln(
    rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Any:
    """Runs `kiln --json …` off the event loop (the command runs its own); (status, JSON)."""
    monkeypatch.setenv("KILN_CREDENTIALS_FILE", str(tmp_path / "config" / "credentials"))
    for name in ("KILN_URL", "KILN_CLIENT_ID", "KILN_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)

    async def run(*argv: str) -> tuple[int, Any, str]:
        status = await asyncio.to_thread(main, ["--json", *argv])
        out, err = capsys.readouterr()
        return status, (json.loads(out) if out.strip() else None), err

    return run


async def test_login_then_every_capability(rig: Rig, kiln: Any, tmp_path: Path) -> None:
    status, _, err = await kiln("scenes", "create", "x")
    assert status == 2 and "no credentials" in err
    status, logged, _ = await kiln(
        "--url", rig.base, "--client-id", rig.client[0], "--client-secret", rig.client[1], "login"
    )
    assert status == 0
    stored = Path(logged["credentials"])
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert json.loads(stored.read_text())["client_secret"] == rig.client[1]

    files = meshes.write_files(tmp_path, meshes.zebra_files())
    status, scene, _ = await kiln("scenes", "create", "zebra")
    assert status == 0 and scene["name"] == "zebra"
    status, job, _ = await kiln(
        "scenes", "import", scene["id"], *(str(tmp_path / f) for f in files)
    )
    assert status == 0 and job["status"] == "ok"
    render = tmp_path / "render.png"
    status, done, _ = await kiln(
        "scenes",
        "render",
        scene["id"],
        "--width",
        "64",
        "--height",
        "48",
        "--format",
        "png",
        "-o",
        str(render),
    )
    assert status == 0 and done["status"] == "ok"
    assert render.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    status, queued, _ = await kiln("scenes", "export", scene["id"], "obj", "--no-wait")
    assert status == 0 and queued["status"] in ("pending", "working", "ok")
    status, waited, _ = await kiln("jobs", "wait", queued["id"])
    assert status == 0 and waited["status"] == "ok"

    status, asset, _ = await kiln("assets", "upload", str(render), "--name", "the render")
    assert status == 0 and asset["metadata"]["name"] == "the render"
    copy = tmp_path / "copy.png"
    status, _, _ = await kiln("assets", "download", asset["id"], "-o", str(copy))
    assert status == 0 and copy.read_bytes() == render.read_bytes()
    request = tmp_path / "edit.json"
    request.write_text('{"operations": {"resizing": {"width": 40, "fit": "bounds"}}}')
    status, edited, _ = await kiln("images", "edit", str(request), "--file", str(render))
    assert status == 0 and edited["output"]["width"] == 40
    zipped = tmp_path / "assets.zip"
    status, archived, _ = await kiln("archive", "create", asset["id"], "-o", str(zipped))
    assert status == 0 and archived["status"] == "ok"
    with zipfile.ZipFile(io.BytesIO(zipped.read_bytes())) as bundle:
        assert len(bundle.namelist()) == 1

    status, created, _ = await kiln("objects", "create", "cube", "--scene", "cli")
    assert status == 0
    status, found, _ = await kiln("objects", "query", "--scene", "cli")
    assert [o["key"] for o in found] == [created["key"]]
    status, watched, _ = await kiln("jobs", "watch", job["id"])
    assert status == 0 and watched["status"] == "ok"


async def test_exit_statuses(rig: Rig, kiln: Any, tmp_path: Path) -> None:
    base = ("--url", rig.base, "--client-id", rig.client[0], "--client-secret", rig.client[1])
    status, _, _ = await kiln(*base, "scenes", "nonsense")
    assert status == 2  # usage
    status, _, err = await kiln(*base, "scenes", "get-nothing")
    assert status == 2
    status, _, err = await kiln(*base, "jobs", "get", "job_" + "x" * 25)
    assert status == 3 and "404" in err  # the API refused
    bad = tmp_path / "bad.obj"
    bad.write_bytes(b"v 0 0 0\nf 1 2 9\n")
    _, scene, _ = await kiln(*base, "scenes", "create", "bad")
    status, failed, err = await kiln(*base, "scenes", "import", scene["id"], str(bad))
    assert status == 1 and failed["status"] == "failed"  # the job failed
    status, _, err = await kiln(*base, "images", "edit", str(tmp_path / "missing.json"))
    assert status == 2 and "edit request" in err
    wrong = ("--url", rig.base, "--client-id", rig.client[0], "--client-secret", "wrong")
    status, _, err = await kiln(*wrong, "scenes", "create", "x")
    assert status == 3 and "401" in err
