"""The launcher as a new user runs it: helpers and a `layout` of free ports and a private data
directory, for the tests that start whole suites (`make up`, `make demo`)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.runtime.config import SERVICE_NAMES

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 90.0
LAUNCHER = [sys.executable, "-m", "deploy.local.launcher", "--timeout", str(START_TIMEOUT)]


def launch(
    env: dict[str, str], *args: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Runs the launcher to completion (--detach, --stop, or a start that must fail)."""
    return subprocess.run(
        [*LAUNCHER, *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def free_ports(count: int) -> list[int]:
    """Distinct free ports: all sockets stay bound until every port is picked."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


@dataclass
class Layout:
    data_dir: Path
    env: dict[str, str]
    gateway_port: int
    metrics_ports: dict[str, int] = field(default_factory=dict)
    grpc_ports: dict[str, int] = field(default_factory=dict)

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"


def make_layout(data_dir: Path, **settings: str) -> Layout:
    """The launcher's environment for a suite of its own on free ports, state in `data_dir`;
    `settings` (KILN_* names) are added last. The caller's KILN_* and OTEL_* settings never
    leak in: the test decides every one of them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KILN_", "OTEL_"))}
    ports = free_ports(2 + 2 * len(SERVICE_NAMES))
    env.update(
        {
            "PYTHONPATH": f"{REPO / 'gen'}{os.pathsep}{REPO}",
            "KILN_DATA_DIR": str(data_dir),
            "KILN_GATEWAY_PORT": str(ports[0]),
            "KILN_S3_PORT": str(ports[1]),
            "KILN_SHUTDOWN_GRACE_SECONDS": "3",
            "KILN_LOG_LEVEL": "INFO",
        }
    )
    result = Layout(data_dir=data_dir, env=env, gateway_port=ports[0])
    for i, name in enumerate(SERVICE_NAMES):
        grpc_port, metrics_port = ports[2 + 2 * i], ports[3 + 2 * i]
        env[f"KILN_{name.upper()}_PORT"] = str(grpc_port)
        env[f"KILN_{name.upper()}_METRICS_PORT"] = str(metrics_port)
        result.metrics_ports[name] = metrics_port
        result.grpc_ports[name] = grpc_port
    env.update(settings)
    return result


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return make_layout(tmp_path / "var")
