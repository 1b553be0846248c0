"""Jobs: submit -> complete throughput and submit -> start latency, against a bare SKIP LOCKED loop.

Both variants run on one private PostgreSQL database (created and dropped) with 4 worker
processes and no-op handlers:

- **Kiln**: the jobs service in its own process (`python -m services.jobs`), 4 worker processes
  (`python -m services.runtime.worker bench.jobs:handlers`, the worker library), and clients
  calling `JobService.CreateJob` over gRPC from this process.
- **bare asyncpg** (the reference): this process INSERTs jobs (and NOTIFYs) straight into a
  table of its own, and 4 processes each claim batches with
  `UPDATE … WHERE seq IN (SELECT … FOR UPDATE SKIP LOCKED)` on one connection, then complete
  each job with its own UPDATE, waking on LISTEN when the queue is empty: the same claims the
  jobs service makes, without gRPC, leases, heartbeats, history or the worker library.

Two measurements per variant:

1. burst: `--jobs` jobs submitted at once (64 concurrent submitters); jobs/s from the first
   submit to the last completion (the service's own end times).
2. paced: `--paced-jobs` jobs submitted at `--rate` jobs/s; submit -> start is the time from
   just before the submit call to the start of the handler (wall clocks of one machine).

    python -m bench.jobs [--jobs 5000] [--paced-jobs 2000] [--rate 200] [--workers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import grpc
from google.protobuf import json_format, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kiln.jobs.v1 import jobs_pb2, jobs_pb2_grpc

from bench._report import Figure, percentile, rate_figure, report, with_ratios
from deploy.local.seaweed import SeaweedS3, free_port
from services.runtime.auth import TokenSigner, generate_keypair, write_worker_token
from services.runtime.worker import Handler, JobContext

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
SUBMITTERS = 64
BARE_CHANNEL = "bench_bare"
KIND = "bench.noop"
REPO = Path(__file__).resolve().parent.parent


# --- the worker processes' handlers -----------------------------------------------------------


async def noop(ctx: JobContext) -> dict[str, Any]:
    """Does nothing but say when it started (the submit -> start end point)."""
    return {"started": time.time()}


def handlers() -> Mapping[str, Handler]:
    return {KIND: noop}


# --- helpers ----------------------------------------------------------------------------------


def latency_figure(case: str, variant: str, rate: float, samples: list[float]) -> Figure:
    return rate_figure(case, variant, rate, samples, "jobs/s")


async def submit_all(submit: Submit, count: int) -> float:
    """Submits `count` jobs from SUBMITTERS tasks; answers the wall time of the first."""
    remaining = count
    first = time.time()

    async def submitter() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await submit(remaining)

    await asyncio.gather(*(submitter() for _ in range(SUBMITTERS)))
    return first


Submit = Callable[[int], Coroutine[Any, Any, None]]


async def submit_paced(submit: Submit, count: int, rate: float) -> None:
    """One submit every 1/rate s, each in its own task so a slow one does not delay the next."""
    tasks: list[asyncio.Task[None]] = []
    began = time.perf_counter()
    for i in range(count):
        await asyncio.sleep(max(0.0, began + i / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(submit(i)))
    await asyncio.gather(*tasks)


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, *args], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT
        )


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- Kiln -------------------------------------------------------------------------------------


class Kiln:
    """The jobs service and its worker processes, as separate processes."""

    def __init__(self, root: Path, database_url: str, s3: SeaweedS3, args: argparse.Namespace):
        self.root = root
        self.args = args
        private, public = root / "keys" / "jwt.pem", root / "keys" / "jwt.pub.pem"
        generate_keypair(private, public)
        self.signer = TokenSigner.from_file(private, issuer="kiln", ttl_seconds=3600)
        token_file = root / "keys" / "worker.token"
        write_worker_token(self.signer, token_file)
        port = free_port()
        self.target = f"127.0.0.1:{port}"
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(sys.path),
            "KILN_DATA_DIR": str(root / "data"),
            "KILN_JOBS_PORT": str(port),
            "KILN_JOBS_METRICS_PORT": str(free_port()),
            "KILN_JOBS_DATABASE_URL": database_url,
            "KILN_JOBS_TARGET": self.target,
            "KILN_RENDER_METRICS_PORT": "-1",
            "KILN_S3_ENDPOINT": s3.endpoint,
            "KILN_S3_ACCESS_KEY": s3.access_key,
            "KILN_S3_SECRET_KEY": s3.secret_key,
            "KILN_JWT_PRIVATE_KEY_FILE": str(private),
            "KILN_JWT_PUBLIC_KEY_FILES": str(public),
            "KILN_WORKER_TOKEN_FILE": str(token_file),
            "KILN_WORKER_CONCURRENCY": str(args.concurrency),
            "KILN_LOG_LEVEL": "WARNING",
        }
        self.processes: list[subprocess.Popen[bytes]] = []
        token, _ = self.signer.issue(client_id="bench", tenant="bench", scopes=["*"])
        self.metadata = (("authorization", f"Bearer {token}"),)

    async def start(self) -> None:
        self.processes.append(spawn(["-m", "services.jobs"], self.env, self.root / "jobs.log"))
        async with grpc.aio.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                if time.monotonic() > deadline or self.processes[0].poll() is not None:
                    raise RuntimeError(f"the jobs service did not start; see {self.root}/jobs.log")
                await asyncio.sleep(0.1)
        for i in range(self.args.workers):
            self.processes.append(
                spawn(
                    ["-m", "services.runtime.worker", "bench.jobs:handlers"],
                    self.env,
                    self.root / f"worker{i}.log",
                )
            )

    def stop(self) -> None:
        stop_all(self.processes[1:])
        stop_all(self.processes[:1])

    async def run(self) -> list[Figure]:
        async with grpc.aio.insecure_channel(self.target) as channel:
            jobs = jobs_pb2_grpc.JobServiceStub(channel)

            create_seconds: list[float] = []

            async def submit(_: int) -> None:
                params = struct_pb2.Struct()
                began = time.time()
                params.update({"submitted": began})
                await jobs.CreateJob(
                    jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(kind=KIND, params=params)),
                    metadata=self.metadata,
                )
                create_seconds.append(time.time() - began)

            # Warm-up: workers connected, every code path and connection pool in use.
            await submit_all(submit, 500)
            await self.drain(jobs)
            since = await self.newest_seq(jobs)

            first = await submit_all(submit, self.args.jobs)
            await self.drain(jobs)
            burst = await self.collect(jobs, since)
            since = max(j.seq_id for j in burst)
            ended = max(j.end_time.ToNanoseconds() / 1e9 for j in burst)
            throughput = len(burst) / (ended - first)

            began = time.perf_counter()
            create_seconds.clear()
            await submit_paced(submit, self.args.paced_jobs, self.args.rate)
            await self.drain(jobs)
            rate = self.args.paced_jobs / (time.perf_counter() - began)
            paced = await self.collect(jobs, since)
        print(
            f"paced CreateJob p50 / p99: {percentile(create_seconds, 0.5) * 1000:.2f} / "
            f"{percentile(create_seconds, 0.99) * 1000:.2f} ms"
        )
        self.print_calls(500 + self.args.jobs + self.args.paced_jobs)
        return [
            Figure(
                case=f"burst {self.args.jobs} jobs",
                variant="kiln",
                value=round(throughput, 1),
                unit="jobs/s",
            ),
            latency_figure(
                f"submit->start at {self.args.rate:g}/s", "kiln", rate, self.latencies(paced)
            ),
            latency_figure("submit->start in the burst", "kiln", throughput, self.latencies(burst)),
        ]

    def print_calls(self, total_jobs: int) -> None:
        """RPCs the jobs service answered per job, by method (from its /metrics)."""
        import urllib.request

        url = f"http://127.0.0.1:{self.env['KILN_JOBS_METRICS_PORT']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
        calls: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("grpc_server_handled_total{") and "kiln.jobs" in line:
                method = line.split('grpc_method="', 1)[1].split('"', 1)[0]
                calls[method] = calls.get(method, 0.0) + float(line.rsplit(" ", 1)[1])
        messages: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("kiln_jobs_work_stream_messages_total{"):
                kind = line.split('type="', 1)[1].split('"', 1)[0]
                messages[kind] = float(line.rsplit(" ", 1)[1])
        per_job = ", ".join(f"{m} {n / total_jobs:.2f}" for m, n in sorted(calls.items()))
        print(f"jobs service RPCs per job: {per_job}")
        on_streams = ", ".join(f"{m} {n / total_jobs:.2f}" for m, n in sorted(messages.items()))
        print(f"Work stream messages per job: {on_streams or 'none'}")
        # The service's own view of submit -> lease (all phases together), to split latency
        # between the service and the worker side.
        buckets = [
            line
            for line in text.splitlines()
            if line.startswith("kiln_jobs_submit_to_start_seconds_bucket")
        ]
        print("jobs service submit->lease histogram:", *buckets, sep="\n  ")

    async def drain(self, jobs: Any) -> None:
        """Waits until no bench job is queued or running."""
        while True:
            pending = 0
            for status in (jobs_pb2.JOB_STATUS_QUEUED, jobs_pb2.JOB_STATUS_RUNNING):
                reply = await jobs.ListJobs(
                    jobs_pb2.ListJobsRequest(kind=KIND, status=status, page_size=1),
                    metadata=self.metadata,
                )
                pending += len(reply.jobs)
            if not pending:
                return
            await asyncio.sleep(0.2)

    async def newest_seq(self, jobs: Any) -> int:
        reply = await jobs.ListJobs(
            jobs_pb2.ListJobsRequest(kind=KIND, page_size=1), metadata=self.metadata
        )
        return reply.jobs[0].seq_id if reply.jobs else 0

    async def collect(self, jobs: Any, since: int) -> list[jobs_pb2.Job]:
        """Every bench job newer than `since`, all succeeded."""
        found: list[jobs_pb2.Job] = []
        token = ""
        while True:
            reply = await jobs.ListJobs(
                jobs_pb2.ListJobsRequest(kind=KIND, page_size=1000, page_token=token),
                metadata=self.metadata,
            )
            fresh = [j for j in reply.jobs if j.seq_id > since]
            found.extend(fresh)
            token = reply.next_page_token
            if not token or len(fresh) < len(reply.jobs):
                break
        failed = [j for j in found if j.status != jobs_pb2.JOB_STATUS_SUCCEEDED]
        if failed:
            raise RuntimeError(f"{len(failed)} jobs did not succeed: {failed[0]}")
        return found

    @staticmethod
    def latencies(found: list[jobs_pb2.Job]) -> list[float]:
        return [
            json_format.MessageToDict(j.result)["started"]
            - json_format.MessageToDict(j.params)["submitted"]
            for j in found
        ]


# --- the bare reference -----------------------------------------------------------------------

BARE_SCHEMA = """
CREATE TABLE IF NOT EXISTS bench_bare_jobs (
    seq bigserial PRIMARY KEY,
    kind text NOT NULL,
    status smallint NOT NULL,
    params jsonb NOT NULL,
    result jsonb,
    created_at double precision NOT NULL,
    started_at double precision,
    ended_at double precision
);
CREATE INDEX IF NOT EXISTS bench_bare_claim ON bench_bare_jobs (status, kind, seq);
"""
BARE_INSERT = """
WITH job AS (
    INSERT INTO bench_bare_jobs (kind, status, params, created_at)
    VALUES ($1, 1, $2::jsonb, extract(epoch FROM clock_timestamp())) RETURNING seq
)
SELECT pg_notify('bench_bare', $1) FROM job
"""
BARE_CLAIM = """
UPDATE bench_bare_jobs SET status = 2, started_at = extract(epoch FROM clock_timestamp())
WHERE seq IN (
    SELECT seq FROM bench_bare_jobs WHERE status = 1 AND kind = $1
    ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED
)
RETURNING seq, params
"""
BARE_COMPLETE = """
UPDATE bench_bare_jobs SET status = 3, result = $2::jsonb,
    ended_at = extract(epoch FROM clock_timestamp())
WHERE seq = $1 AND status = 2
"""


async def bare_worker(dsn: str, batch: int) -> None:
    """One claiming process: claim a batch, 'run' each job, complete each with its own UPDATE."""
    claims = await asyncpg.connect(dsn)
    pool = await asyncpg.create_pool(dsn, min_size=4, max_size=4)
    listener = await asyncpg.connect(dsn)
    woken = asyncio.Event()
    await listener.add_listener(BARE_CHANNEL, lambda *_: woken.set())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    in_flight: set[asyncio.Task[None]] = set()

    async def complete(seq: int) -> None:
        result = json.dumps({"started": time.time()})
        async with pool.acquire() as conn:
            await conn.execute(BARE_COMPLETE, seq, result)

    while not stop.is_set():
        woken.clear()
        rows = await claims.fetch(BARE_CLAIM, KIND, batch)
        if not rows:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), 0.5)
            continue
        for row in rows:
            task = asyncio.create_task(complete(row["seq"]))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
    await asyncio.gather(*in_flight)


class Bare:
    def __init__(self, root: Path, dsn: str, args: argparse.Namespace) -> None:
        self.root = root
        self.dsn = dsn
        self.args = args
        self.processes: list[subprocess.Popen[bytes]] = []

    async def start(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(BARE_SCHEMA)
        finally:
            await conn.close()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        for i in range(self.args.workers):
            self.processes.append(
                spawn(
                    ["-m", "bench.jobs", "--bare-worker", self.dsn, "--batch", "32"],
                    env,
                    self.root / f"bare{i}.log",
                )
            )
        await asyncio.sleep(1.0)  # each connected and listening

    def stop(self) -> None:
        stop_all(self.processes)

    async def run(self) -> list[Figure]:
        pool = await asyncpg.create_pool(self.dsn, min_size=16, max_size=16)
        try:

            async def submit(_: int) -> None:
                await pool.execute(BARE_INSERT, KIND, json.dumps({"submitted": time.time()}))

            async def drain() -> None:
                query = "SELECT count(*) FROM bench_bare_jobs WHERE status < 3"
                pending = await pool.fetchval(query)
                while pending:
                    await asyncio.sleep(0.2)
                    pending = await pool.fetchval(query)

            async def newest() -> int:
                return int(await pool.fetchval("SELECT coalesce(max(seq), 0) FROM bench_bare_jobs"))

            async def latencies(since: int) -> list[float]:
                rows = await pool.fetch(
                    "SELECT (result->>'started')::float8 - (params->>'submitted')::float8 AS s "
                    "FROM bench_bare_jobs WHERE seq > $1",
                    since,
                )
                return [float(r["s"]) for r in rows]

            await submit_all(submit, 500)
            await drain()
            since = await newest()
            first = await submit_all(submit, self.args.jobs)
            await drain()
            ended = await pool.fetchval(
                "SELECT max(ended_at) FROM bench_bare_jobs WHERE seq > $1", since
            )
            throughput = self.args.jobs / (float(ended) - first)
            burst = await latencies(since)
            since = await newest()
            began = time.perf_counter()
            await submit_paced(submit, self.args.paced_jobs, self.args.rate)
            await drain()
            rate = self.args.paced_jobs / (time.perf_counter() - began)
            paced = await latencies(since)
        finally:
            await pool.close()
        return [
            Figure(
                case=f"burst {self.args.jobs} jobs",
                variant="bare-asyncpg",
                value=round(throughput, 1),
                unit="jobs/s",
            ),
            latency_figure(f"submit->start at {self.args.rate:g}/s", "bare-asyncpg", rate, paced),
            latency_figure("submit->start in the burst", "bare-asyncpg", throughput, burst),
        ]


# --- main -------------------------------------------------------------------------------------


async def create_database() -> tuple[str, str]:
    name = f"kiln_bench_jobs_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(database="postgres", **PG)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = f"postgresql://{PG['user']}@{PG['host']}:{PG['port']}/{name}"
    return name, dsn


async def drop_database(name: str) -> None:
    admin = await asyncpg.connect(database="postgres", **PG)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def run(args: argparse.Namespace, root: Path) -> list[Figure]:
    name, dsn = await create_database()
    s3 = SeaweedS3(root / "s3", s3_port=free_port(), log_file=root / "s3.log")
    figures: list[Figure] = []
    try:
        if args.only in (None, "bare"):
            bare = Bare(root, dsn, args)
            await bare.start()
            try:
                figures.extend(await bare.run())
            finally:
                bare.stop()
        if args.only == "bare":
            return figures
        s3.start()
        kiln = Kiln(root, dsn.replace("postgresql://", "postgresql+asyncpg://"), s3, args)
        await kiln.start()
        try:
            figures.extend(await kiln.run())
        finally:
            kiln.stop()
    finally:
        s3.stop()
        await drop_database(name)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=5000, help="jobs in the burst")
    parser.add_argument("--paced-jobs", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200.0, help="paced submits per second")
    parser.add_argument("--workers", type=int, default=4, help="worker processes")
    parser.add_argument("--concurrency", type=int, default=32, help="jobs per Kiln worker")
    parser.add_argument("--only", choices=["kiln", "bare"], help="run one variant (profiling)")
    parser.add_argument("--bare-worker", metavar="DSN", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=32, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import uvloop  # every process of both variants runs on uvloop, as the services do

    if args.bare_worker:
        uvloop.run(bare_worker(args.bare_worker, args.batch))
        return
    root = Path(tempfile.mkdtemp(prefix="kiln-bench-jobs-"))
    figures = uvloop.run(run(args, root))
    # A ratio only where it means something: throughput. Latency rows carry their offered rate.
    figures = [
        f if f.case.startswith("burst") else Figure(**{**asdict(f), "ratio": None})
        for f in with_ratios(figures, "bare-asyncpg")
    ]
    report(
        "jobs",
        figures,
        {
            "database": "PostgreSQL (a private database, created and dropped)",
            "workers": f"{args.workers} processes, concurrency {args.concurrency} each (Kiln)",
            "bare": f"{args.workers} processes, claim batches of {args.batch}, per-job UPDATE",
            "submitters": SUBMITTERS,
            "logs": str(root),
        },
    )


if __name__ == "__main__":
    main()
