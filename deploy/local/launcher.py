"""`make up`: the whole suite on one machine, as six separate processes.

    python -m deploy.local.launcher            run in the foreground until Ctrl-C / SIGTERM
    python -m deploy.local.launcher --detach   the same supervisor in the background (make start)
    python -m deploy.local.launcher --stop     stop a running launcher and everything it started

The launcher starts SeaweedFS (S3), the four gRPC services and the gateway, each in its own
process group with its log in `$KILN_DATA_DIR/logs/<name>.log`, waits until every health check
passes, prints the URLs and the demo credentials, and then supervises: one process dying stops
everything with a non-zero exit, because a half-running suite only produces confusing errors.

It reads only variables declared in `services.runtime.config` (ports, data directory, S3 keys,
demo client) so that `docs/configuration.md` describes everything it honours.

Exit status: 0 after a requested stop, 1 when start-up failed or a process died, 2 when it
could not start at all (bad configuration, a port taken, already running).

State lives in the data directory: `kiln.pid` (the supervisor's pid, present while it runs) and
`kiln.json` (every process it started, with its argv, so that `--stop` can clean up even after
the supervisor itself was killed, without ever signalling an unrelated process that reused a pid).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from deploy.local.seaweed import SeaweedS3, free_port
from services.runtime.auth import TokenSigner, ensure_keypair, write_worker_token
from services.runtime.config import (
    SERVICE_NAMES,
    load_gateway_config,
    load_service_config,
)
from services.runtime.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_LINE = "Kiln is up"
PID_FILE = "kiln.pid"
STATE_FILE = "kiln.json"
SUPERVISOR_MARKER = "deploy.local.launcher"
S3_GRACE = 2.0

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class LaunchError(Exception):
    """Start-up cannot go on; the message says why and what to do."""


# --------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class Port:
    """One port the suite will listen on, with the variable that sets it (for error messages)."""

    label: str
    variable: str
    host: str
    port: int


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    service_host: str
    gateway_host: str
    gateway_port: int
    s3_port: int
    grpc_ports: Mapping[str, int]
    metrics_ports: Mapping[str, int]
    s3_access_key: str
    s3_secret_key: str
    s3_bucket: str
    s3_region: str
    private_key: Path
    public_key: Path
    descriptor_set: Path
    demo_client_id: str
    demo_client_secret: str
    grace_seconds: float
    demo_tenant: str = "demo"
    worker_token: Path = Path("keys/worker.token")
    issuer: str = "kiln"

    @property
    def stop_grace(self) -> float:
        """How long one stage of the shutdown may take before SIGKILL. The gateway's uvicorn
        grace is fixed at 10 s, so never less than that, plus time to close connections."""
        return max(self.grace_seconds, 10.0) + 5.0

    @property
    def stop_budget(self) -> float:
        """How long `--stop` waits for the supervisor: both stages, S3, and some slack."""
        return 2 * self.stop_grace + S3_GRACE + 10.0

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def service_connect_host(self) -> str:
        return connect_host(self.service_host)

    @property
    def gateway_url(self) -> str:
        return f"http://{connect_host(self.gateway_host)}:{self.gateway_port}"

    @property
    def s3_endpoint(self) -> str:
        return f"127.0.0.1:{self.s3_port}"

    def target(self, service: str) -> str:
        return f"{self.service_connect_host}:{self.grpc_ports[service]}"

    def ports(self) -> list[Port]:
        ports = [
            Port("gateway HTTP", "KILN_GATEWAY_PORT", self.gateway_host, self.gateway_port),
            Port("S3", "KILN_S3_PORT", "127.0.0.1", self.s3_port),
        ]
        for name in SERVICE_NAMES:
            prefix = f"KILN_{name.upper()}"
            ports.append(
                Port(f"{name} gRPC", f"{prefix}_PORT", self.service_host, self.grpc_ports[name])
            )
            if self.metrics_ports[name] >= 0:
                ports.append(
                    Port(
                        f"{name} metrics",
                        f"{prefix}_METRICS_PORT",
                        self.service_host,
                        self.metrics_ports[name],
                    )
                )
        return ports

    def child_env(self, base: Mapping[str, str]) -> dict[str, str]:
        """The environment of every child: the caller's, with everything the suite must agree on
        pinned to what this launcher resolved (ports chosen for 0, absolute paths, the S3 it
        runs), so no child falls back to a default that points elsewhere."""
        env = dict(base)
        pythonpath = [str(REPO_ROOT / "gen"), str(REPO_ROOT)]
        if base.get("PYTHONPATH"):
            pythonpath.append(base["PYTHONPATH"])
        env.update(
            {
                "PYTHONPATH": os.pathsep.join(pythonpath),
                "PYTHONUNBUFFERED": "1",
                "KILN_DATA_DIR": str(self.data_dir),
                "KILN_HOST": self.service_host,
                "KILN_GATEWAY_HOST": self.gateway_host,
                "KILN_GATEWAY_PORT": str(self.gateway_port),
                "KILN_S3_PORT": str(self.s3_port),
                "KILN_S3_ENDPOINT": self.s3_endpoint,
                "KILN_S3_ACCESS_KEY": self.s3_access_key,
                "KILN_S3_SECRET_KEY": self.s3_secret_key,
                "KILN_S3_SECURE": "false",
                "KILN_S3_BUCKET": self.s3_bucket,
                "KILN_JWT_PRIVATE_KEY_FILE": str(self.private_key),
                "KILN_WORKER_TOKEN_FILE": str(self.worker_token),
                "KILN_DESCRIPTOR_SET": str(self.descriptor_set),
                "KILN_DEMO_CLIENT_ID": self.demo_client_id,
                "KILN_DEMO_CLIENT_SECRET": self.demo_client_secret,
            }
        )
        # Keep a rotation list the user gave; otherwise name the key the launcher created.
        env.setdefault("KILN_JWT_PUBLIC_KEY_FILES", str(self.public_key))
        # CLyman's documented clients send no credentials: on this development suite they act
        # as the demo tenant, unless the caller set the variable (empty requires credentials).
        env.setdefault("KILN_CLYMAN_ANONYMOUS_TENANT", self.demo_tenant)
        for name in SERVICE_NAMES:
            prefix = f"KILN_{name.upper()}"
            env[f"{prefix}_PORT"] = str(self.grpc_ports[name])
            env[f"{prefix}_METRICS_PORT"] = str(self.metrics_ports[name])
            env[f"{prefix}_TARGET"] = self.target(name)
        return env


def connect_host(bind_host: str) -> str:
    """Where to connect to reach a server bound to `bind_host` (wildcards mean loopback)."""
    return "127.0.0.1" if bind_host in {"", "0.0.0.0", "::", "[::]"} else bind_host


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Reads the launcher's settings through the services' own config loaders, so the launcher
    and the processes it starts can never disagree on a default. Port 0 becomes a free port."""
    gateway = load_gateway_config(environ)
    services = {name: load_service_config(name, environ) for name in SERVICE_NAMES}
    first = services[SERVICE_NAMES[0]]
    raw_s3_port = environ.get("KILN_S3_PORT", "") or "9000"
    try:
        s3_port = int(raw_s3_port)
    except ValueError:
        raise ConfigError(f"KILN_S3_PORT must be an integer, got {raw_s3_port!r}") from None

    def resolve(port: int, host: str) -> int:
        return free_port(connect_host(host)) if port == 0 else port

    public_keys = [p.strip() for p in gateway.auth.public_key_files.split(",") if p.strip()]
    descriptor = Path(environ.get("KILN_DESCRIPTOR_SET", "") or REPO_ROOT / "gen" / "kiln.binpb")
    return Settings(
        data_dir=gateway.data_dir,
        service_host=first.host,
        gateway_host=gateway.host,
        gateway_port=resolve(gateway.port, gateway.host),
        s3_port=resolve(s3_port, "127.0.0.1"),
        grpc_ports={n: resolve(c.grpc_port, c.host) for n, c in services.items()},
        metrics_ports={n: resolve(c.metrics_port, c.host) for n, c in services.items()},
        s3_access_key=first.storage.access_key,
        s3_secret_key=first.storage.secret_key,
        s3_bucket=first.storage.bucket,
        s3_region=first.storage.region,
        private_key=Path(gateway.auth.private_key_file).resolve(),
        public_key=Path(public_keys[0]).resolve(),
        descriptor_set=descriptor.resolve(),
        demo_client_id=gateway.demo_client_id,
        demo_client_secret=gateway.demo_client_secret,
        grace_seconds=first.shutdown_grace_seconds,
        demo_tenant=gateway.demo_tenant,
        worker_token=Path(first.worker.token_file).resolve(),
        issuer=gateway.auth.issuer,
    )


# --------------------------------------------------------------------------------------------
# Pre-flight: ports, earlier runs


def check_ports(ports: Sequence[Port]) -> None:
    """Raises LaunchError naming every port that is taken or assigned twice."""
    problems: list[tuple[Port, str]] = []
    seen: dict[int, Port] = {}
    for port in ports:
        if not 1 <= port.port <= 65535:
            problems.append((port, f"{port.variable}={port.port} is not a valid port"))
        elif port.port in seen:
            other = seen[port.port]
            problems.append(
                (
                    port,
                    f"port {port.port} is assigned twice: {other.label} ({other.variable}) "
                    f"and {port.label} ({port.variable})",
                )
            )
        else:
            seen[port.port] = port
            if not port_is_free(port.host, port.port):
                holder = port_holder(port.port)
                problems.append(
                    (
                        port,
                        f"port {port.port} ({port.label}, {port.variable}) is already in use "
                        f"on {port.host}" + (f", by {holder}" if holder else ""),
                    )
                )
    if problems:
        first = problems[0][0]
        raise LaunchError(
            "cannot start Kiln:\n"
            + "\n".join(f"  - {message}" for _, message in problems)
            + "\nStop whatever holds the port, or choose another one (0 picks a free one), e.g.\n"
            + f"  {first.variable}=0 make up"
        )


def port_is_free(host: str, port: int) -> bool:
    """Binds the way the servers will (SO_REUSEADDR, so TIME_WAIT leftovers do not count)."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), port))
        except OSError:
            return False
    return True


def port_holder(port: int) -> str | None:
    """`pid N (command)` of the process listening on `port`, when /proc lets us see it."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                # local_address is HEXIP:HEXPORT; state 0A is LISTEN.
                if (
                    len(fields) > 9
                    and fields[3] == "0A"
                    and int(fields[1].rsplit(":", 1)[1], 16) == port
                ):
                    inodes.add(fields[9])
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in targets:
                        return f"pid {proc.name} ({' '.join(cmdline(int(proc.name)))[:120]})"
    return None


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def alive(pid: int) -> bool:
    """True while `pid` runs; a zombie counts as gone (nobody may be left to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesised command name, which may contain spaces.
    return stat.rsplit(")", 1)[1].split()[0] not in {"Z", "X"}


def is_process(pid: int, argv: Sequence[str]) -> bool:
    """True when `pid` is alive and still runs `argv`, i.e. the pid was not reused."""
    return alive(pid) and cmdline(pid) == list(argv)


def supervisor_pid(data_dir: Path) -> int | None:
    """The pid of a live launcher supervising `data_dir`, if any."""
    try:
        pid = int((data_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    if alive(pid) and SUPERVISOR_MARKER in " ".join(cmdline(pid)):
        return pid
    return None


def recorded_processes(data_dir: Path) -> list[dict[str, Any]]:
    """Processes an earlier launcher recorded that still run what it started."""
    try:
        state = json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return []
    found: list[dict[str, Any]] = state.get("processes", [])
    return [p for p in found if is_process(int(p["pid"]), p["argv"])]


def check_not_running(data_dir: Path) -> None:
    pid = supervisor_pid(data_dir)
    if pid is not None:
        raise LaunchError(
            f"Kiln is already running from {data_dir} (launcher pid {pid}); "
            "`make down` stops it, or set KILN_DATA_DIR to run a second copy"
        )
    leftovers = recorded_processes(data_dir)
    if leftovers:
        names = ", ".join(f"{p['name']} (pid {p['pid']})" for p in leftovers)
        raise LaunchError(
            f"processes from an earlier run are still alive: {names}; `make down` stops them"
        )


# --------------------------------------------------------------------------------------------
# Processes


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid


def rotate_log(path: Path) -> None:
    """Keeps the previous run's log as `<name>.log.1`: after a crash and a restart, the log
    that explains the crash is still there."""
    if path.exists():
        path.replace(path.with_name(path.name + ".1"))


def spawn(name: str, argv: list[str], env: Mapping[str, str], logs_dir: Path) -> Child:
    logs_dir.mkdir(parents=True, exist_ok=True)
    log_path = logs_dir / f"{name}.log"
    rotate_log(log_path)
    with open(log_path, "ab") as log:
        # A new session per child: the terminal's Ctrl-C reaches only the launcher, which then
        # stops the children in order, and killpg() takes any grandchild along.
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=REPO_ROOT,
            start_new_session=True,
        )
    return Child(name=name, argv=argv, log_path=log_path, process=process)


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"    ({path} cannot be read)"
    last = text.splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in last) if last else "    (empty)"


def live_members(pgid: int) -> list[int]:
    """Non-zombie processes in process group `pgid`. killpg(pgid, 0) is not enough: zombies
    count as members, and in a container whose init does not reap they never go away."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] not in {"Z", "X"}:
                members.append(int(entry.name))
    return members


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def terminate(
    children: Sequence[Child],
    grace: float,
    *,
    hurry: Callable[[], bool] = lambda: False,
    expect_kill: bool = False,
) -> None:
    """SIGTERM to each child's group, SIGKILL for whatever is left after `grace` seconds (or
    as soon as `hurry()` turns true: a second Ctrl-C).

    The children of one call stop in parallel; callers order the calls (gateway, services, S3).
    """
    for child in children:
        if child.process.poll() is None:
            signal_group(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(c.process.poll() is None for c in children):
        if time.monotonic() > deadline or hurry():
            for child in children:
                if child.process.poll() is None:
                    if not expect_kill:
                        print(f"  {child.name} did not stop in time; killing it", flush=True)
                    signal_group(child.pid, signal.SIGKILL)
                    child.process.wait()
            break
        time.sleep(0.05)
    for child in children:
        # The leader is gone; anything it spawned into its group goes too.
        if group_alive(child.pid):
            signal_group(child.pid, signal.SIGKILL)
        how = describe_exit(child.process.returncode, expect_kill)
        print(f"  stopped {child.name}{how}", flush=True)


def describe_exit(code: int | None, expect_kill: bool) -> str:
    """ "" for a clean stop (uvicorn re-raises the SIGTERM it handled, so -15 is clean too)."""
    if code in (0, -signal.SIGTERM) or (expect_kill and code == -signal.SIGKILL):
        return ""
    if code is not None and code < 0:
        return f" (killed by {signal.Signals(-code).name})"
    return f" (exit {code})"


# --------------------------------------------------------------------------------------------
# Health


def grpc_serving(target: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def gateway_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            body = json.loads(response.read() or b"{}")
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return isinstance(body, dict) and body.get("status") == "up"


def s3_answers(endpoint: str) -> bool:
    try:
        urllib.request.urlopen(f"http://{endpoint}/", timeout=1)
    except urllib.error.HTTPError:
        return True  # 403 without credentials: S3 is answering
    except (urllib.error.URLError, OSError):
        return False
    return True


def warm_s3(settings: Settings, deadline: float, interrupted: Callable[[], bool]) -> None:
    """Creates the bucket and writes one object, so SeaweedFS allocates the bucket's volumes
    now rather than during the user's first upload (the first write to a collection is slow)."""
    from minio import Minio
    from minio.error import S3Error

    client = Minio(
        settings.s3_endpoint,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
        secure=False,
        region=settings.s3_region,
    )
    key = ".kiln/warm-up"
    while True:
        try:
            if not client.bucket_exists(settings.s3_bucket):
                client.make_bucket(settings.s3_bucket)
            client.put_object(settings.s3_bucket, key, io.BytesIO(b"warm"), 4)
            client.remove_object(settings.s3_bucket, key)
            return
        except (S3Error, OSError, ValueError) as exc:
            # Right after the S3 port opens, SeaweedFS may still be electing its master.
            if interrupted():
                raise LaunchError("interrupted while starting") from exc
            if time.monotonic() > deadline:
                raise LaunchError(f"S3 did not accept a write: {exc}") from exc
            time.sleep(0.3)


# --------------------------------------------------------------------------------------------
# The supervisor


@dataclass
class Supervisor:
    settings: Settings
    timeout: float
    children: list[Child] = field(default_factory=list)
    signals: int = 0
    stopping_because: str = ""

    # -- signals ------------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        del frame
        self.signals += 1
        if not self.stopping_because:
            self.stopping_because = signal.Signals(signum).name

    @property
    def interrupted(self) -> bool:
        return self.signals > 0

    def hurry(self) -> bool:
        """A second Ctrl-C means "now": whatever is still running gets SIGKILL."""
        return self.signals > 1

    # -- state files ----------------------------------------------------------------------------

    def write_state(self, state: str) -> None:
        data = {
            "supervisor": os.getpid(),
            "state": state,
            "gateway": self.settings.gateway_url,
            "processes": [
                {"name": c.name, "pid": c.pid, "argv": c.argv, "log": str(c.log_path)}
                for c in self.children
            ],
        }
        path = self.settings.data_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(path)

    def clear_state(self) -> None:
        for name in (STATE_FILE, PID_FILE):
            with contextlib.suppress(OSError):
                (self.settings.data_dir / name).unlink()

    # -- start ----------------------------------------------------------------------------------

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def add(self, name: str, argv: list[str], env: Mapping[str, str]) -> Child:
        started = spawn(name, argv, env, self.settings.logs_dir)
        self.children.append(started)
        self.write_state("starting")
        return started

    def wait_for(
        self, what: str, names: Iterable[str], ready: Mapping[str, Callable[[], bool]]
    ) -> None:
        """Polls each `ready[name]()` until all are true; fails fast when a child exits or a
        signal arrives, and with the failing log's tail on timeout."""
        pending = list(names)
        deadline = time.monotonic() + self.timeout
        while pending:
            if self.interrupted:
                raise LaunchError("interrupted while starting")
            for name in list(pending):
                child = self.child(name)
                if child.process.poll() is not None:
                    raise LaunchError(
                        f"{name} exited with code {child.process.returncode} while starting; "
                        f"the end of {child.log_path}:\n{tail(child.log_path)}"
                    )
                if ready[name]():
                    pending.remove(name)
            if not pending:
                return
            if time.monotonic() > deadline:
                details = "\n".join(
                    f"  {name}: the end of {self.child(name).log_path}:\n"
                    f"{tail(self.child(name).log_path)}"
                    for name in pending
                )
                raise LaunchError(
                    f"timed out after {self.timeout:.0f}s waiting for {what}: "
                    f"{', '.join(pending)} not ready\n{details}"
                )
            time.sleep(0.2)

    def mint_worker_token(self) -> None:
        """A fresh worker token for the render and archive workers, at every start, so a
        suite left running for weeks restarts with a valid one."""
        s = self.settings
        signer = TokenSigner.from_file(s.private_key, issuer=s.issuer, ttl_seconds=3600)
        write_worker_token(signer, s.worker_token)

    def start(self, environ: Mapping[str, str]) -> None:
        s = self.settings
        env = s.child_env(environ)

        s3 = SeaweedS3(
            s.data_dir / "s3",
            s3_port=s.s3_port,
            host="127.0.0.1",
            access_key=s.s3_access_key,
            secret_key=s.s3_secret_key,
            log_file=s.logs_dir / "s3.log",
            reserved=frozenset(p.port for p in s.ports()),
        )
        s3.write_config()
        print(f"starting S3 (SeaweedFS) on {s.s3_endpoint}", flush=True)
        self.add("s3", s3.command(), env)
        self.wait_for("S3", ["s3"], {"s3": lambda: s3_answers(s.s3_endpoint)})
        warm_s3(s, time.monotonic() + self.timeout, lambda: self.interrupted)

        print(f"starting services: {', '.join(SERVICE_NAMES)}", flush=True)
        for name in SERVICE_NAMES:
            self.add(name, [sys.executable, "-m", f"services.{name}"], env)
        self.wait_for(
            "gRPC health SERVING",
            SERVICE_NAMES,
            {name: functools.partial(grpc_serving, s.target(name)) for name in SERVICE_NAMES},
        )

        print(f"starting gateway on {s.gateway_url}", flush=True)
        self.add("gateway", [sys.executable, "-m", "gateway"], env)
        self.wait_for(
            "the gateway's /health",
            ["gateway"],
            {"gateway": functools.partial(gateway_up, s.gateway_url)},
        )
        self.write_state("ready")

    # -- run ------------------------------------------------------------------------------------

    def supervise(self) -> int:
        """Returns the exit status once a signal arrives (0) or a child dies (1)."""
        while not self.interrupted:
            for child in self.children:
                code = child.process.poll()
                if code is not None:
                    print(
                        f"\n{child.name} (pid {child.pid}) exited with code {code}; stopping "
                        f"Kiln. The end of {child.log_path}:\n{tail(child.log_path)}",
                        file=sys.stderr,
                        flush=True,
                    )
                    return EXIT_FAILED
            time.sleep(0.2)
        return EXIT_OK

    def stop(self) -> None:
        """Gateway first (no new requests), then the services, then S3 (still needed by the
        services' in-flight calls while they drain)."""
        if not self.children:
            return
        self.write_state("stopping")
        why = f" ({self.stopping_because})" if self.stopping_because else ""
        print(f"stopping Kiln{why}", flush=True)
        for names in (["gateway"], list(SERVICE_NAMES)):
            batch = [c for c in self.children if c.name in names]
            terminate(batch, self.settings.stop_grace, hurry=self.hurry)
        # SeaweedFS's graceful stop takes ~25 s (its filer waits 15 s on the S3 gateway's own
        # subscription stream, then the volume server sleeps 10 s to drain clients it no longer
        # has). With every client stopped, SIGKILL after a short grace loses nothing: completed
        # writes are already in the kernel and its metadata store is a log-structured LevelDB.
        terminate(
            [c for c in self.children if c.name == "s3"],
            S3_GRACE,
            hurry=self.hurry,
            expect_kill=True,
        )
        self.children.clear()

    def run(self, environ: Mapping[str, str]) -> int:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        (s.data_dir / PID_FILE).write_text(f"{os.getpid()}\n")
        status = EXIT_FAILED
        try:
            ensure_keypair(s.private_key, s.public_key)
            self.mint_worker_token()
            self.start(environ)
            print(banner(s, detached=False), flush=True)
            status = self.supervise()
        except LaunchError as exc:
            if self.interrupted:
                status = EXIT_OK
            else:
                print(f"\nKiln failed to start: {exc}", file=sys.stderr, flush=True)
        finally:
            # Whatever happened above, nothing this launcher started may outlive it.
            self.stop()
            self.clear_state()
        if status == EXIT_OK:
            print("Kiln stopped", flush=True)
        return status


# --------------------------------------------------------------------------------------------
# Output


def banner(s: Settings, *, detached: bool) -> str:
    gw = s.gateway_url
    rows = [f"  gateway   {gw:<28} health {gw}/health, metrics {gw}/metrics"]
    for name in SERVICE_NAMES:
        metrics = (
            f"metrics http://{s.service_connect_host}:{s.metrics_ports[name]}/metrics"
            if s.metrics_ports[name] >= 0
            else "metrics disabled"
        )
        rows.append(f"  {name:<9} {'grpc://' + s.target(name):<28} {metrics}")
    s3_url = f"http://{s.s3_endpoint}"
    keys = f"{s.s3_access_key} / {s.s3_secret_key}"
    rows.append(f"  S3        {s3_url:<28} bucket {s.s3_bucket}, keys {keys}")
    credentials = shlex.quote(f"{s.demo_client_id}:{s.demo_client_secret}")
    if s.demo_client_id:
        demo = (
            f"Demo API client: {s.demo_client_id} / {s.demo_client_secret}\n"
            "Get a token:\n"
            f"  curl -s -X POST -u {credentials} {gw}/oauth2/application_token\n"
        )
    else:
        demo = "No demo API client (KILN_DEMO_CLIENT_ID is empty).\n"
    stop = "`make down` stops it." if detached else "Press Ctrl-C to stop."
    return (
        f"\n{READY_LINE}: data in {s.data_dir}, logs in {s.logs_dir}\n\n"
        + "\n".join(rows)
        + f"\n\n{demo}\n{stop}"
    )


# --------------------------------------------------------------------------------------------
# Commands


def preflight(s: Settings) -> None:
    if not s.descriptor_set.exists():
        raise LaunchError(f"{s.descriptor_set} is missing: run `make protos` (or `make up`)")
    check_not_running(s.data_dir)
    check_ports(s.ports())


def run_foreground(s: Settings, environ: Mapping[str, str], timeout: float) -> int:
    supervisor = Supervisor(s, timeout)
    # Handlers first: a Ctrl-C during pre-flight or start-up then goes through the same stop.
    supervisor.install_signal_handlers()
    preflight(s)
    return supervisor.run(environ)


def run_detached(s: Settings, environ: Mapping[str, str], timeout: float) -> int:
    """Starts the supervisor in a new session and returns once it reports ready."""
    preflight(s)
    s.logs_dir.mkdir(parents=True, exist_ok=True)
    log_path = s.logs_dir / "launcher.log"
    rotate_log(log_path)
    # Ports resolved here (0 → a free port) are handed down, so the banner printed here is
    # the one the supervisor actually serves.
    env = s.child_env(environ)
    argv = [sys.executable, "-m", SUPERVISOR_MARKER, "--timeout", str(timeout)]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
    print(f"starting Kiln in the background (pid {process.pid}, log {log_path})", flush=True)
    deadline = time.monotonic() + timeout + 30.0
    try:
        while True:
            if process.poll() is not None:
                print(
                    f"Kiln failed to start (exit {process.returncode}). "
                    f"The end of {log_path}:\n{tail(log_path, 40)}",
                    file=sys.stderr,
                )
                return EXIT_FAILED
            state = _state(s.data_dir)
            # A kiln.json left by a crashed run may say "ready" too; only ours counts.
            if state.get("supervisor") == process.pid and state.get("state") == "ready":
                print(banner(s, detached=True), flush=True)
                return EXIT_OK
            if time.monotonic() > deadline:
                raise KeyboardInterrupt
            time.sleep(0.2)
    except KeyboardInterrupt:
        print("stopping the background launcher", file=sys.stderr, flush=True)
        stop_running(s.data_dir, timeout=s.stop_budget, pid=process.pid)
        process.wait()
        return EXIT_FAILED


def _state(data_dir: Path) -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state


def stop_running(data_dir: Path, *, timeout: float, pid: int | None = None) -> int:
    """SIGTERMs the supervisor and waits until it and every process it recorded are gone.

    A supervisor that does not finish in time, or one that died and left its children, is
    replaced by signalling the recorded process groups directly."""
    supervisor = pid if pid is not None and alive(pid) else supervisor_pid(data_dir)
    processes = recorded_processes(data_dir)
    if supervisor is None and not processes:
        print(f"Kiln is not running (no live launcher for {data_dir})")
        return EXIT_OK
    if supervisor is not None:
        print(f"stopping Kiln (launcher pid {supervisor})", flush=True)
        with contextlib.suppress(ProcessLookupError):
            os.kill(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while alive(supervisor) and time.monotonic() < deadline:
            time.sleep(0.2)
        if alive(supervisor):
            print(f"the launcher did not stop within {timeout:.0f}s; killing it", flush=True)
            with contextlib.suppress(ProcessLookupError):
                os.kill(supervisor, signal.SIGKILL)
    leftovers = [p for p in processes if is_process(int(p["pid"]), p["argv"])]
    if leftovers:
        print("stopping left-over processes: " + ", ".join(p["name"] for p in leftovers))
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            for p in leftovers:
                signal_group(int(p["pid"]), sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and any(
                live_members(int(p["pid"])) for p in leftovers
            ):
                time.sleep(0.2)
            if not any(live_members(int(p["pid"])) for p in leftovers):
                break
    for name in (STATE_FILE, PID_FILE):
        with contextlib.suppress(OSError):
            (data_dir / name).unlink()
    print("Kiln stopped", flush=True)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local.launcher",
        description="Run Kiln locally: S3, the four services and the gateway.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--detach", action="store_true", help="run in the background; return once healthy"
    )
    mode.add_argument("--stop", action="store_true", help="stop a running launcher")
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for every health check (default 120)",
    )
    args = parser.parse_args(argv)
    environ = dict(os.environ)
    try:
        settings = load_settings(environ)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.stop:
            return stop_running(settings.data_dir, timeout=settings.stop_budget)
        if args.detach:
            return run_detached(settings, environ, args.timeout)
        return run_foreground(settings, environ, args.timeout)
    except LaunchError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
