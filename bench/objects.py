"""Objects (CLyman) throughput, latency and event delivery.

1. create, get, update and query at concurrency 32: (a) direct gRPC to ClymanService, (b) the
   same CLyman REST call through the gateway, in one run, with the ratio b/a;
2. update -> event latency with 100 subscribers on the objects service's stream, beside the
   same delivery by bare grpc.aio (`bench/grpc_fanout.py`: no database, no service);
3. sustained persisted updates per second: ObjectService.UpdateObject at c=32, the same
   updates on 32 `StreamUpdates` streams (`--window` unanswered per stream, 1 by default: as
   many in flight as the unary callers), and CLyman's streaming path, UDP overwrites from 100
   objects at 40 Hz each (Aesel's design rate), which are streamed at once and stored coalesced
   per object (last write wins); the figure counts only when every object's stored transform
   ends equal to the last one sent.

The suite runs in the `make up` layout (separate processes) started by the launcher; with
`--postgres` the objects service uses a private PostgreSQL database (created and dropped).

    python -m bench.objects [--requests 2000] [--postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import httpx
from google.protobuf import struct_pb2
from kiln.objects.v1 import clyman_pb2, clyman_pb2_grpc, objects_pb2, objects_pb2_grpc

from bench._http import Pool
from bench._report import Figure, measure, percentile, rate_figure, report, with_ratios
from bench.gateway_overhead import suite_env
from bench.grpc_fanout import broadcast_latency

SEED_OBJECT = {
    "name": "bench",
    "type": "Mesh",
    "subtype": "Cube",
    "scene": "bench-scene",
    "translation": [0, 0, 1],
    "scale": [1, 1, 2],
    "assets": ["Asset_5"],
}


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


def free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def figure(case: str, variant: str, qps: float, latencies: list[float]) -> Figure:
    return rate_figure(case, variant, qps, latencies, "req/s", digits=3)


async def throughput(env: dict[str, str], token: str, requests: int, c: int) -> list[Figure]:
    metadata = (("authorization", f"Bearer {token}"),)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    pool = Pool("127.0.0.1", int(env["KILN_GATEWAY_PORT"]), headers)
    figures: list[Figure] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{env['KILN_OBJECTS_PORT']}") as channel:
        stub = clyman_pb2_grpc.ClymanServiceStub(channel)
        created = await stub.CreateObjects(
            clyman_pb2.ClymanBodyRequest(body=struct({"objects": [SEED_OBJECT]})), metadata=metadata
        )
        key = created.objects[0].key
        create_body = struct({"objects": [SEED_OBJECT]})
        update_body = struct({"objects": [{"name": "moved", "translation": [1, 2, 3]}]})
        query_body = struct({"objects": [{"scene": "bench-scene"}], "num_records": 10})
        create_json = json.dumps({"objects": [SEED_OBJECT]}).encode()
        update_json = json.dumps(
            {"objects": [{"name": "moved", "translation": [1, 2, 3]}]}
        ).encode()
        query_json = json.dumps({"objects": [{"scene": "bench-scene"}], "num_records": 10}).encode()

        async def ok(method: str, path: str, body: bytes = b"") -> None:
            reply = await pool.request(method, path, body)
            if reply.status != 200:
                raise RuntimeError(f"{method} {path}: {reply.status} {reply.body[:200]!r}")

        cases = {
            "create": (
                lambda: stub.CreateObjects(
                    clyman_pb2.ClymanBodyRequest(body=create_body), metadata=metadata
                ),
                lambda: ok("POST", "/v1/object", create_json),
            ),
            "get": (
                lambda: stub.GetObject(clyman_pb2.ClymanKeyRequest(key=key), metadata=metadata),
                lambda: ok("GET", f"/v1/object/{key}"),
            ),
            "update": (
                lambda: stub.UpdateObject(
                    clyman_pb2.ClymanKeyedBodyRequest(key=key, body=update_body),
                    metadata=metadata,
                ),
                lambda: ok("POST", f"/v1/object/{key}", update_json),
            ),
            "query": (
                lambda: stub.QueryObjects(
                    clyman_pb2.ClymanBodyRequest(body=query_body), metadata=metadata
                ),
                lambda: ok("POST", "/v1/object/query", query_json),
            ),
        }
        for name, (direct, gateway) in cases.items():
            for variant, call in (("direct-grpc", direct), ("via-gateway", gateway)):
                qps, latencies = await measure(call, requests, c, warmup=50)
                figures.append(figure(f"{name} c={c}", variant, qps, latencies))
    await pool.close()
    return figures


async def event_latency(
    env: dict[str, str], token: str, subscribers: int, updates: int
) -> list[Figure]:
    """Time from sending an update to its event arriving on each of `subscribers` streams."""
    metadata = (("authorization", f"Bearer {token}"),)
    scene = f"latency-{uuid.uuid4().hex[:6]}"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{env['KILN_OBJECTS_PORT']}") as channel:
        stub = objects_pb2_grpc.ObjectServiceStub(channel)
        created = await stub.CreateObjects(
            objects_pb2.CreateObjectsRequest(
                objects=[objects_pb2.ObjectInput(object=objects_pb2.Object(name="e", scene=scene))]
            ),
            metadata=metadata,
        )
        key = created.objects[0].key
        sent: dict[int, float] = {}
        latencies: list[float] = []
        since_change: list[float] = []
        ready = 0
        all_ready = asyncio.Event()

        async def listen() -> None:
            nonlocal ready
            stream = stub.Subscribe(objects_pb2.SubscribeRequest(scene=scene), metadata=metadata)
            await stream.wait_for_connection()
            ready += 1
            if ready == subscribers:
                all_ready.set()
            seen = 0
            async for message in stream:
                version = message.event.version
                if version in sent:
                    latencies.append(time.perf_counter() - sent[version])
                    # The event's own time is when the service made the change (before the
                    # write); same machine, same clock.
                    changed = message.event.time.ToNanoseconds() / 1e9
                    since_change.append(time.time() - changed)
                    seen += 1
                    if seen == updates:
                        stream.cancel()
                        return

        listeners = [asyncio.create_task(listen()) for _ in range(subscribers)]
        await asyncio.wait_for(all_ready.wait(), 30)
        await asyncio.sleep(0.5)  # every stream registered on the server
        for i in range(updates):
            # The create was version 1; with no other writer, update i makes version i + 2.
            # The clock starts before the call: the latency includes the write itself.
            sent[i + 2] = time.perf_counter()
            await stub.UpdateObject(
                objects_pb2.UpdateObjectRequest(key=key, update=objects_pb2.Object(name=f"n{i}")),
                metadata=metadata,
            )
            await asyncio.sleep(0.02)
        await asyncio.wait_for(asyncio.gather(*listeners), 60)
    return [
        Figure(
            case=f"update sent->event, {subscribers} subs",
            variant="grpc-stream",
            value=round(len(latencies) / updates, 1),
            unit="deliveries/update",
            p50_ms=round(percentile(latencies, 0.5) * 1000, 3),
            p99_ms=round(percentile(latencies, 0.99) * 1000, 3),
        ),
        Figure(
            case=f"change->event, {subscribers} subs",
            variant="grpc-stream",
            value=round(len(since_change) / updates, 1),
            unit="deliveries/update",
            p50_ms=round(percentile(since_change, 0.5) * 1000, 3),
            p99_ms=round(percentile(since_change, 0.99) * 1000, 3),
        ),
    ]


async def create_objects(
    stub: objects_pb2_grpc.ObjectServiceStub,
    metadata: tuple[tuple[str, str], ...],
    prefix: str,
    count: int,
) -> list[str]:
    """Creates `count` plain objects in one call; answers their keys."""
    created = await stub.CreateObjects(
        objects_pb2.CreateObjectsRequest(
            objects=[
                objects_pb2.ObjectInput(object=objects_pb2.Object(name=f"{prefix}{i}"))
                for i in range(count)
            ]
        ),
        metadata=metadata,
    )
    return [o.key for o in created.objects]


def sustained_update(key: str, i: int) -> objects_pb2.UpdateObjectRequest:
    """The i-th update of the sustained figures: a name and a transform (no read needed)."""
    return objects_pb2.UpdateObjectRequest(
        key=key,
        update=objects_pb2.Object(name=f"v{i}"),
        placement=objects_pb2.TransformInput(translation=[i, 0, 0]),
    )


async def sustained_updates(env: dict[str, str], token: str, seconds: float, c: int) -> Figure:
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{env['KILN_OBJECTS_PORT']}") as channel:
        stub = objects_pb2_grpc.ObjectServiceStub(channel)
        keys = await create_objects(stub, metadata, "s", c)
        done = 0
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds

        async def worker(key: str) -> None:
            nonlocal done
            i = 0
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                await stub.UpdateObject(sustained_update(key, i), metadata=metadata)
                latencies.append(time.perf_counter() - began)
                done += 1
                i += 1

        began = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in keys))
        elapsed = time.perf_counter() - began
    return figure(f"sustained updates c={c}", "persisted", done / elapsed, latencies)


async def streamed_updates(
    env: dict[str, str], token: str, seconds: float, c: int, window: int
) -> Figure:
    """`sustained_updates` on `StreamUpdates`: each of `c` devices streams updates of its own
    object on its own stream, at most `window` unanswered; every answer is a committed write."""
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{env['KILN_OBJECTS_PORT']}") as channel:
        stub = objects_pb2_grpc.ObjectServiceStub(channel)
        keys = await create_objects(stub, metadata, "t", c)
        done = 0
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds

        async def device(key: str) -> None:
            nonlocal done
            call = stub.StreamUpdates(metadata=metadata)
            room = asyncio.Semaphore(window)
            sent: collections.deque[float] = collections.deque()

            async def send() -> None:
                i = 0
                while time.perf_counter() < deadline:
                    await room.acquire()
                    sent.append(time.perf_counter())
                    await call.write(
                        objects_pb2.StreamUpdatesRequest(update=sustained_update(key, i))
                    )
                    i += 1
                await call.done_writing()

            async def receive() -> None:
                nonlocal done
                async for answer in call:
                    if answer.code:
                        raise RuntimeError(f"update refused: {answer.message}")
                    latencies.append(time.perf_counter() - sent.popleft())
                    done += 1
                    room.release()

            await asyncio.gather(send(), receive())

        began = time.perf_counter()
        await asyncio.gather(*(device(k) for k in keys))
        elapsed = time.perf_counter() - began
    return figure(f"streamed updates c={c} window={window}", "persisted", done / elapsed, latencies)


def _scrape(port: str, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")
    )


async def udp_stream(
    env: dict[str, str], token: str, objects: int, hz: int, seconds: float
) -> Figure:
    """Overwrites streamed over UDP; waits until every final state is stored."""
    import socket

    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{env['KILN_OBJECTS_PORT']}") as channel:
        stub = objects_pb2_grpc.ObjectServiceStub(channel)
        keys = await create_objects(stub, metadata, "u", objects)
        metrics_port = env["KILN_OBJECTS_METRICS_PORT"]
        accepted_before = _scrape(metrics_port, "kiln_object_udp_datagrams_accepted_total")
        writes_before = _scrape(metrics_port, "kiln_object_udp_writes_total")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        target = ("127.0.0.1", int(env["KILN_OBJECTS_UDP_PORT"]))
        ticks = int(seconds * hz)
        began = time.perf_counter()
        for tick in range(1, ticks + 1):
            for key in keys:
                transform = [1.0, 0, 0, float(tick), 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
                sock.sendto(
                    json.dumps({"msg_type": 1, "key": key, "transform": transform}).encode(),
                    target,
                )
            # Pace to the rate; the sends themselves take a fraction of the tick.
            await asyncio.sleep(max(0.0, began + tick / hz - time.perf_counter()))
        sent_for = time.perf_counter() - began
        sock.close()
        pending = set(keys)
        while pending and time.perf_counter() - began < sent_for + 60:
            for key in list(pending):
                got = await stub.GetObject(objects_pb2.GetObjectRequest(key=key), metadata=metadata)
                if got.object.transform[3] == ticks:
                    pending.discard(key)
            if pending:
                await asyncio.sleep(0.05)
        settled = time.perf_counter() - began
        accepted = (
            _scrape(metrics_port, "kiln_object_udp_datagrams_accepted_total") - accepted_before
        )
        writes = _scrape(metrics_port, "kiln_object_udp_writes_total") - writes_before
    if pending:
        raise RuntimeError(f"{len(pending)} objects never stored their last overwrite")
    print(
        f"udp: sent {ticks * objects} in {sent_for:.1f}s, accepted {accepted:.0f}, "
        f"{writes:.0f} coalesced writes, all stored {settled - sent_for:.2f}s after the last send"
    )
    return Figure(
        case=f"udp overwrites {objects}x{hz} Hz",
        variant="stored-coalesced",
        value=round(accepted / sent_for, 1),
        unit="upd/s",
    )


async def run(env: dict[str, str], args: argparse.Namespace) -> list[Figure]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{env['KILN_GATEWAY_PORT']}") as http:
        reply = await http.post("/oauth2/application_token", auth=("demo", "demo-secret"))
        token = reply.raise_for_status().json()["access_token"]
    figures = await throughput(env, token, args.requests, 32)
    figures = with_ratios(figures, "direct-grpc")
    figures.extend(await event_latency(env, token, args.subscribers, args.updates))
    # The floor under those: bare grpc.aio delivering one message to as many streams.
    figures.append(await broadcast_latency(args.subscribers, args.updates))
    figures.append(await sustained_updates(env, token, args.seconds, 32))
    figures.append(await streamed_updates(env, token, args.seconds, 32, args.window))
    figures.append(await udp_stream(env, token, 100, 40, args.seconds))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--updates", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--window", type=int, default=1, help="unanswered updates per StreamUpdates stream"
    )
    parser.add_argument("--postgres", action="store_true", help="objects on PostgreSQL")
    args = parser.parse_args()
    env = suite_env(Path(tempfile.mkdtemp(prefix="kiln-bench-objects-")))
    env["KILN_OBJECTS_UDP_PORT"] = str(free_udp_port())
    env["KILN_OBJECTS_UDP_TENANT"] = env.get("KILN_DEMO_TENANT", "demo")
    database = None
    if args.postgres:
        database = f"kiln_bench_{uuid.uuid4().hex[:8]}"
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-c", f'CREATE DATABASE "{database}"'],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        env["KILN_OBJECTS_DATABASE_URL"] = (
            f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}"
        )
    launcher = [sys.executable, "-m", "deploy.local.launcher"]
    subprocess.run([*launcher, "--detach"], env=env, check=True, stdout=subprocess.DEVNULL)
    try:
        figures = asyncio.run(run(env, args))
    finally:
        subprocess.run([*launcher, "--stop"], env=env, check=False, stdout=subprocess.DEVNULL)
        if database:
            subprocess.run(
                [
                    "psql",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-c",
                    f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)',
                ],
                check=False,
                stdout=subprocess.DEVNULL,
            )
    report(
        "objects_postgres" if args.postgres else "objects",
        figures,
        {
            "requests": args.requests,
            "database": "PostgreSQL" if args.postgres else "SQLite",
            "suite": "make up layout: separate processes",
            "clients": "grpc.aio and bench/_http.py in one process",
        },
    )


if __name__ == "__main__":
    main()
