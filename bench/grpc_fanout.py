"""The reference for event fan-out: bare grpc.aio broadcasting one message to many streams.

A server process (`python -m bench.grpc_fanout --serve`, on uvloop as Kiln's services are)
holds `subscribers` server-streaming calls, each writing what its own asyncio queue receives,
and every `gap` seconds puts one message in every queue, stamped with the time just before
(as the objects service stamps a change before writing it). The clients are `subscribers`
streams on one channel in the calling process, as in `bench/objects.py`'s event figures, and
time each message from its stamp to its arrival. No database, no interceptors, no
serialisation beyond the raw bytes: what grpc.aio alone costs to deliver one event to that
many streams on this machine.

    python -m bench.grpc_fanout                  # 100 streams, 100 messages
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
import time

import grpc

from bench._report import Figure, percentile, report

_METHOD = "/bench.Fanout/Subscribe"
_PAYLOAD = 200  # about an ObjectEvent's size


def _identity(data: bytes) -> bytes:
    return data


async def serve(subscribers: int, messages: int, gap: float) -> None:
    """Prints the port, waits for every stream, broadcasts, then waits to be killed."""
    queues: list[asyncio.Queue[bytes]] = []
    everyone = asyncio.Event()

    async def subscribe(_request: bytes, context: grpc.aio.ServicerContext) -> None:
        queue: asyncio.Queue[bytes] = asyncio.Queue(1024)
        queues.append(queue)
        await context.send_initial_metadata(())
        if len(queues) == subscribers:
            everyone.set()
        while True:
            await context.write(await queue.get())

    server = grpc.aio.server()
    handler = grpc.unary_stream_rpc_method_handler(
        subscribe, request_deserializer=_identity, response_serializer=_identity
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Fanout", {"Subscribe": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await everyone.wait()
    await asyncio.sleep(0.5)
    padding = b"\0" * (_PAYLOAD - 8)
    for _ in range(messages):
        message = struct.pack("<d", time.time()) + padding
        for queue in queues:
            queue.put_nowait(message)
        await asyncio.sleep(gap)
    await server.wait_for_termination()


async def broadcast_latency(subscribers: int = 100, messages: int = 100) -> Figure:
    """Stamp → arrival over every (message, stream), from a server in its own process."""
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.grpc_fanout",
        "--serve",
        "--subscribers",
        str(subscribers),
        "--messages",
        str(messages),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        port = int((await server.stdout.readline()).decode())
        latencies: list[float] = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_stream(
                _METHOD, request_serializer=_identity, response_deserializer=_identity
            )

            async def listen() -> None:
                stream = call(b"")
                for _ in range(messages):
                    message = await stream.read()
                    assert message is not grpc.aio.EOF
                    latencies.append(time.time() - struct.unpack_from("<d", message)[0])
                stream.cancel()

            await asyncio.wait_for(asyncio.gather(*(listen() for _ in range(subscribers))), 120)
    finally:
        server.kill()
        await server.wait()
    return Figure(
        case=f"broadcast->arrival, {subscribers} subs",
        variant="bare grpc.aio",
        value=round(len(latencies) / messages, 1),
        unit="deliveries/message",
        p50_ms=round(percentile(latencies, 0.5) * 1000, 3),
        p99_ms=round(percentile(latencies, 0.99) * 1000, 3),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--gap", type=float, default=0.02, help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import uvloop  # as every Kiln process runs

    if args.serve:
        uvloop.run(serve(args.subscribers, args.messages, args.gap))
        return
    figure = uvloop.run(broadcast_latency(args.subscribers, args.messages))
    report("grpc_fanout", [figure], {"server": "separate process, uvloop"})


if __name__ == "__main__":
    main()
