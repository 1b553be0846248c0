"""`make demo` against a suite the launcher started, as a new user runs it after `make up`:
every step ends, and every URL it prints serves what the step made."""

from __future__ import annotations

import io
import json
import subprocess
import zipfile

import httpx
import pytest
from PIL import Image

from tests.e2e.conftest import REPO, START_TIMEOUT, Layout, launch

pytestmark = pytest.mark.timeout(240)


def make_demo(layout: Layout, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "demo", f"DEMO_ARGS={' '.join(args)}"],
        env=layout.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_make_demo_runs_every_step_and_its_urls_serve_the_outputs(layout: Layout) -> None:
    up = launch(layout.env, "--detach", timeout=START_TIMEOUT + 40)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        out = layout.data_dir.parent / "demo"
        demo = make_demo(layout, "--json", f"--out {out}")
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "Demo done" in demo.stdout
        tour = json.loads(demo.stdout.strip().splitlines()[-1])
        steps = {step["step"]: step for step in tour["steps"] if step["step"] != "upload"}
        assert list(steps) == ["model", "scene", "import", "render", "edit", "archive"]
        uploads = [step for step in tour["steps"] if step["step"] == "upload"]
        assert len(uploads) == 2

        # Every URL is printed for the user, and each one serves what its step made.
        for step in tour["steps"]:
            for value in step.values():
                if isinstance(value, str) and value.startswith("http"):
                    assert value in demo.stdout
        with httpx.Client(base_url=layout.gateway, timeout=30) as http:
            token = http.post(
                "/oauth2/token",
                data={"grant_type": "client_credentials"},
                auth=("demo", "demo-secret"),
            ).json()["access_token"]
            auth = {"Authorization": f"Bearer {token}"}
            render_job = http.get(steps["render"]["job_url"], headers=auth, follow_redirects=True)
            assert render_job.status_code == 200
            render = Image.open(io.BytesIO(render_job.content))
            assert (render.format, render.size) == ("PNG", (960, 720))
            # The model is in the middle of the frame, not the empty background.
            centre = render.convert("RGB").getpixel((480, 360))
            assert isinstance(centre, tuple) and centre != (255, 255, 255)

            edited = Image.open(io.BytesIO(httpx.get(steps["edit"]["tmp_url"]).content))
            assert (edited.format, edited.size) == ("WEBP", (640, 480))
            # The white background of the render became the requested colour (#f4efe6).
            corner = edited.convert("RGB").getpixel((2, 2))
            assert isinstance(corner, tuple)
            assert all(abs(a - b) <= 6 for a, b in zip(corner, (0xF4, 0xEF, 0xE6), strict=True))

            for upload in uploads:
                asset = http.get(f"/v1/assets/{upload['asset']}", headers=auth).json()["asset"]
                assert httpx.get(upload["url"]).content == httpx.get(asset["url"]).content
            archive = zipfile.ZipFile(io.BytesIO(httpx.get(steps["archive"]["url"]).content))
            assert sorted(name.rsplit(".", 1)[1] for name in archive.namelist()) == [
                "png",
                "webp",
            ]
            assert (out / "demo.zip").read_bytes() == httpx.get(steps["archive"]["url"]).content
    finally:
        launch(layout.env, "--stop", timeout=60)


def test_make_demo_without_a_suite_says_to_start_one(layout: Layout) -> None:
    demo = make_demo(layout)
    assert demo.returncode != 0
    assert "start it first with `make up`" in demo.stderr
    assert layout.gateway in demo.stderr
