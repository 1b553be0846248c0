"""A minimal HTTP/1.1 keep-alive client for load generation.

httpx costs more CPU per request than the grpc.aio client it is compared with, and on a
two-core machine that cost is taken from the servers being measured. This client does only
what a load generator must: write a request, read the status line, headers and a
Content-Length body on one persistent connection per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass
class Reply:
    status: int
    body: bytes


class Connection:
    """One persistent connection; not shared between concurrent requests."""

    def __init__(self, host: str, port: int, headers: Mapping[str, str]) -> None:
        self._host, self._port = host, port
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> Reply:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self._host}\r\n{self._fixed}"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        status_line = b""
        for _ in range(2):
            if self._writer is None or self._reader is None:
                self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
            self._writer.write(head)
            status_line = await self._reader.readline()
            if status_line:
                break
            # The server closed an idle keep-alive connection: reconnect and send again.
            await self.close()
        assert self._reader is not None
        status = int(status_line.split()[1])
        length = 0
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return Reply(status, await self._reader.readexactly(length))

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None


class Pool:
    """Hands each concurrent request its own idle connection."""

    def __init__(self, host: str, port: int, headers: Mapping[str, str]) -> None:
        self._args = (host, port, headers)
        self._idle: list[Connection] = []
        self._all: list[Connection] = []

    async def request(self, method: str, path: str, body: bytes = b"") -> Reply:
        conn = self._idle.pop() if self._idle else self._new()
        try:
            return await conn.request(method, path, body)
        finally:
            self._idle.append(conn)

    def _new(self) -> Connection:
        conn = Connection(*self._args)
        self._all.append(conn)
        return conn

    async def close(self) -> None:
        for conn in self._all:
            await conn.close()
