"""A render process loads the 3D stack (trimesh, scipy, moderngl: about 60 MiB) on its first
scene job, not at start (services/render/scene_stack.py), so one that only edits images never
holds it. Checked in a fresh interpreter: this test process has imported the stack already."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    import services.render.__main__  # everything a render process imports before serving
    STACK = ("trimesh", "scipy", "moderngl")
    print("at start:", sorted(m for m in STACK if m in sys.modules))

    from kiln.jobs.v1 import jobs_pb2
    from services.render.scene_stack import SceneStack
    from services.runtime.config import ScenesConfig
    from services.runtime.errors import JobFailed
    from services.runtime.worker import JobContext

    stack = SceneStack(ScenesConfig(), None, None, lambda: ())
    print("kinds:", sorted(stack.handlers()), "loaded:", stack.loaded)
    # A render job without its parameters: the real handler runs and fails it, no peer needed.
    lease = jobs_pb2.Lease(job=jobs_pb2.Job(id="job_1", kind="scene.render"))

    async def main():
        try:
            await stack.handlers()["scene.render"](JobContext(lease, lambda: None))
        except JobFailed as exc:
            print("job failed:", exc.message)

    asyncio.run(main())
    print("after:", sorted(m for m in STACK if m in sys.modules), "loaded:", stack.loaded)
    stack.close()
    """
)


def test_the_3d_stack_loads_on_the_first_scene_job_only() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        env={**os.environ, "PYTHONPATH": f"{REPO / 'gen'}:{REPO}"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert lines[0] == "at start: []"
    assert lines[1] == ("kinds: ['scene.export', 'scene.import', 'scene.render'] loaded: False")
    assert lines[2].startswith("job failed: the job's render parameters are malformed")
    assert lines[3] == "after: ['moderngl', 'scipy', 'trimesh'] loaded: True"
