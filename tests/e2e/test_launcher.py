"""`make up` end to end: the real launcher, six real processes, real HTTP through the gateway.

Each test runs the launcher as a subprocess with its own data directory and free ports, so it
never touches a suite a developer has running on the default ports.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deploy.local.launcher import PID_FILE, READY_LINE, STATE_FILE
from services.runtime.config import SERVICE_NAMES
from tests.e2e.conftest import LAUNCHER, REPO, START_TIMEOUT, Layout, launch

pytestmark = pytest.mark.timeout(180)


# ------------------------------------------------------------------------------------------
# Process bookkeeping through /proc: which processes belong to what the launcher started.


def proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, session id) of a live process, None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[3])


def running(pid: int) -> bool:
    state = proc_state(pid)
    return state is not None and state[0] not in {"Z", "X"}


def session_members(sessions: set[int]) -> list[int]:
    """Live (non-zombie) processes in any of `sessions`: every child runs in its own session,
    so this finds grandchildren too."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            state = proc_state(int(entry.name))
            if state is not None and state[0] not in {"Z", "X"} and state[1] in sessions:
                found.append(int(entry.name))
    return found


def started_pids(data_dir: Path) -> dict[str, int]:
    state = json.loads((data_dir / STATE_FILE).read_text())
    assert state["state"] == "ready"
    return {p["name"]: int(p["pid"]) for p in state["processes"]}


def assert_all_gone(sessions: set[int], *, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while session_members(sessions) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = session_members(sessions)
    details = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:200] for pid in left}
    assert not left, f"processes left behind: {details}"


# ------------------------------------------------------------------------------------------
# The foreground launcher


class Launcher:
    """A foreground launcher whose output is collected by a thread while the test runs."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            LAUNCHER,
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith(READY_LINE):
                self.ready.set()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self._reader.join(2)
                pytest.fail(f"launcher not ready (exit {self.process.poll()}):\n{self.output}")

    def stop(self, sig: signal.Signals = signal.SIGINT, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code


@pytest.fixture
def launcher(layout: Layout) -> Iterator[Launcher]:
    started = Launcher(layout.env)
    try:
        yield started
    finally:
        # A failed assertion must not leave a suite running: the launcher stops it all.
        if started.process.poll() is None:
            started.stop(signal.SIGTERM)


def test_up_serves_requests_and_ctrl_c_leaves_nothing_behind(
    layout: Layout, launcher: Launcher
) -> None:
    launcher.wait_ready(START_TIMEOUT + 10)
    pids = started_pids(layout.data_dir)
    assert set(pids) == {"s3", *SERVICE_NAMES, "gateway"}
    assert all(running(pid) for pid in pids.values())
    assert (layout.data_dir / PID_FILE).read_text().strip() == str(launcher.process.pid)
    for name in ("gateway", *SERVICE_NAMES):
        assert (layout.data_dir / "logs" / f"{name}.log").exists()
    # The banner carries what a user needs to go on.
    assert layout.gateway in launcher.output
    assert "demo / demo-secret" in launcher.output
    assert f"-u demo:demo-secret {layout.gateway}/oauth2/application_token" in launcher.output

    with httpx.Client(base_url=layout.gateway, timeout=10) as http:
        health = http.get("/health")
        assert health.status_code == 200 and health.json() == {"status": "up"}

        token = http.post("/oauth2/application_token", auth=("demo", "demo-secret"))
        assert token.status_code == 200, token.text
        access = token.json()["access_token"]

        # Through the gateway to the objects service (SQL) and back.
        assets = http.get("/v1/assets", headers={"Authorization": f"Bearer {access}"})
        assert assets.status_code == 200, assets.text
        assert http.get("/v1/assets").status_code == 401

    for name, port in layout.metrics_ports.items():
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert metrics.status_code == 200, name
        assert "# TYPE" in metrics.text, name

    sessions = set(pids.values())
    assert launcher.stop(signal.SIGINT) == 0, launcher.output
    assert_all_gone(sessions)
    assert not (layout.data_dir / PID_FILE).exists()
    assert "Kiln stopped" in launcher.output


def test_a_dying_process_stops_everything_with_an_error(layout: Layout, launcher: Launcher) -> None:
    launcher.wait_ready(START_TIMEOUT + 10)
    pids = started_pids(layout.data_dir)
    os.kill(pids["jobs"], signal.SIGKILL)
    code = launcher.process.wait(60)
    launcher.stop()
    assert code == 1, launcher.output
    assert f"jobs (pid {pids['jobs']}) exited" in launcher.output
    assert_all_gone(set(pids.values()))
    assert not (layout.data_dir / PID_FILE).exists()


def test_detach_then_stop(layout: Layout) -> None:
    up = launch(layout.env, "--detach", timeout=START_TIMEOUT + 40)
    supervisor: int | None = None
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert READY_LINE in up.stdout and "make down" in up.stdout
        supervisor = int((layout.data_dir / PID_FILE).read_text())
        pids = started_pids(layout.data_dir)
        assert running(supervisor)
        health = httpx.get(f"{layout.gateway}/health", timeout=5)
        assert health.json() == {"status": "up"}

        down = launch(layout.env, "--stop", timeout=60)
        assert down.returncode == 0, down.stdout + down.stderr
        assert "Kiln stopped" in down.stdout
        # --stop returns only once everything is gone, so no waiting here.
        assert not running(supervisor)
        assert_all_gone({supervisor, *pids.values()}, within=0.5)
        assert not (layout.data_dir / PID_FILE).exists()

        again = launch(layout.env, "--stop")
        assert again.returncode == 0 and "not running" in again.stdout
    finally:
        if supervisor is not None and running(supervisor):
            os.kill(supervisor, signal.SIGTERM)


def test_a_taken_port_is_named_and_nothing_starts(layout: Layout) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", layout.gateway_port))
        squatter.listen()
        result = launch(layout.env)
    assert result.returncode == 2, result.stdout + result.stderr
    message = result.stderr
    assert f"port {layout.gateway_port}" in message
    assert "KILN_GATEWAY_PORT" in message and "already in use" in message
    assert f"pid {os.getpid()}" in message  # who holds it
    assert not (layout.data_dir / "logs").exists()
    assert not (layout.data_dir / PID_FILE).exists()


def test_the_same_port_twice_is_refused(layout: Layout) -> None:
    env = dict(layout.env, KILN_JOBS_PORT=layout.env["KILN_OBJECTS_PORT"])
    result = launch(env)
    assert result.returncode == 2
    assert "assigned twice" in result.stderr
    assert "KILN_OBJECTS_PORT" in result.stderr and "KILN_JOBS_PORT" in result.stderr
