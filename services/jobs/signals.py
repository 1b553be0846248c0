"""Wake-ups: waiting workers when jobs of their kinds are queued, watchers when a job changes.

Inside one replica a change wakes its waiters directly. On PostgreSQL the same change is also
announced with `pg_notify` inside the transaction that made it, so other replicas hear of it
exactly when it commits (never before, never for a rolled-back change), and each replica
LISTENs on one connection of its own. A replica that loses its LISTEN connection wakes every
waiter when it is back: notifications sent meanwhile are lost, and a spurious wake-up costs a
re-read, while a missed one would leave a worker idle with work queued.

Notifications for other replicas are sent only while another replica is known to listen:
sending and hearing back its own notifications cost a lone replica (the common deployment)
about 7 % of its CPU per job. Replicas announce themselves on the channel: `hello` once their
LISTEN is up (at start and after every reconnect), which every other replica answers at once
with `here`, and `here` every `announce_seconds` after that (it doubles as the LISTEN
connection's keep-alive). Any message from another origin marks it alive; one not heard from
for `peer_ttl_seconds` is forgotten. A replica that has just started may miss wake-ups for
changes committed before the others heard its `hello` (milliseconds); that costs it nothing
lost: every lease claims before it waits, and idle leases and watches re-read on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import sqlalchemy as sa
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncConnection

log = logging.getLogger("kiln.jobs.signals")

CHANNEL = "kiln_jobs"
#: PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
_MAX_PAYLOAD = 7900
#: Presence messages, in the kinds field: no job kind starts with "!", so replicas of a
#: version before them read these as a change of a kind nobody waits for.
_HELLO = "!hello"
_HERE = "!here"
#: How often a replica says it is here, and how long the others remember it.
ANNOUNCE_SECONDS = 5.0
PEER_TTL_SECONDS = 4 * ANNOUNCE_SECONDS

NOTIFY_FAILURES = Counter(
    "kiln_jobs_notify_failures_total", "Batches of job notifications that could not be sent."
)
NOTIFY_RECONNECTS = Counter(
    "kiln_jobs_listen_reconnects_total", "Times the jobs LISTEN connection was re-established."
)


class Signals:
    """Local wake-ups, plus the PostgreSQL relay when the database is PostgreSQL."""

    def __init__(
        self,
        *,
        announce_seconds: float = ANNOUNCE_SECONDS,
        peer_ttl_seconds: float = PEER_TTL_SECONDS,
    ) -> None:
        self.origin = uuid.uuid4().hex[:12]
        self.announce_seconds = announce_seconds
        self._peer_ttl = peer_ttl_seconds
        #: Other replicas' origins, by when (monotonic) they were last heard from.
        self._peers: dict[str, float] = {}
        self._kind_waiters: dict[str, set[asyncio.Event]] = {}
        self._job_waiters: dict[str, set[asyncio.Event]] = {}
        self._listener: _Listener | None = None
        self._send: Callable[[list[str]], Awaitable[None]] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._outbox: list[str] = []
        self._outbox_ready = asyncio.Event()

    # --- waiting -----------------------------------------------------------------------------

    def kinds_waiter(self, kinds: Sequence[str]) -> _Registration:
        return _Registration(self._kind_waiters, kinds)

    def job_waiter(self, job_id: str) -> _Registration:
        return _Registration(self._job_waiters, [job_id])

    # --- announcing --------------------------------------------------------------------------

    def wake_local(
        self,
        *,
        kinds: Iterable[str] = (),
        job_ids: Iterable[str] = (),
        limits: Mapping[str, int] | None = None,
    ) -> None:
        """Wakes this replica's waiters. `limits` caps the workers woken per kind (one new job
        needs one worker: waking them all would send all but one to claim nothing)."""
        for kind in kinds:
            waiting = self._kind_waiters.get(kind, ())
            budget = len(waiting) if limits is None else limits.get(kind, len(waiting))
            for event in waiting:
                if budget <= 0:
                    break
                if not event.is_set():
                    event.set()
                    budget -= 1
        for job_id in job_ids:
            for event in self._job_waiters.get(job_id, ()):
                event.set()

    def wake_all(self) -> None:
        for registry in (self._kind_waiters, self._job_waiters):
            for events in registry.values():
                for event in events:
                    event.set()

    def payloads(self, *, kinds: Iterable[str] = (), job_ids: Iterable[str] = ()) -> list[str]:
        """The notifications that tell other replicas of these changes; none when this
        replica is alone (SQLite, or no other replica heard from lately)."""
        if self._listener is None or not self.has_peers():
            return []
        return encode(self.origin, sorted(set(kinds)), sorted(set(job_ids)))

    def has_peers(self) -> bool:
        """Whether another replica has been heard from within the peer TTL."""
        if not self._peers:
            return False
        oldest = time.monotonic() - self._peer_ttl
        for origin in [o for o, seen in self._peers.items() if seen < oldest]:
            del self._peers[origin]
        return bool(self._peers)

    async def announce(
        self, conn: AsyncConnection, *, kinds: Iterable[str] = (), job_ids: Iterable[str] = ()
    ) -> None:
        """Queues the notification in `conn`'s transaction (PostgreSQL only): it is delivered
        to the other replicas when, and only if, the transaction commits."""
        payloads = self.payloads(kinds=kinds, job_ids=job_ids)
        if payloads:
            await conn.execute(
                sa.text("SELECT pg_notify(:channel, p) FROM unnest(CAST(:payloads AS text[])) p"),
                {"channel": CHANNEL, "payloads": payloads},
            )

    def publish(self, *, kinds: Iterable[str] = (), job_ids: Iterable[str] = ()) -> None:
        """Tells other replicas of committed changes, in the background: the caller's reply
        does not wait for the notification's round trip."""
        payloads = self.payloads(kinds=kinds, job_ids=job_ids)
        if payloads and self._send is not None:
            self._outbox.extend(payloads)
            self._outbox_ready.set()

    async def _send_outbox(self) -> None:
        assert self._send is not None
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            while self._outbox:
                batch = list(self._outbox)
                self._outbox.clear()
                try:
                    await self._send(batch)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a lost notification costs a poll interval, no more
                    NOTIFY_FAILURES.inc()
                    log.warning("could not send job notifications", extra={"error": repr(exc)})

    # --- the relay ---------------------------------------------------------------------------

    async def start(
        self, dsn: str | None, send: Callable[[list[str]], Awaitable[None]] | None = None
    ) -> None:
        """Listens on PostgreSQL at `dsn` (an asyncpg DSN); None: this replica is alone.
        `send` delivers `publish`ed payloads (NOTIFY on its own connection)."""
        if dsn is None:
            return
        self._listener = _Listener(dsn, self)
        await self._listener.start()
        if send is not None:
            self._send = send
            self._sender = asyncio.create_task(self._send_outbox(), name="kiln-jobs-notify")

    async def close(self) -> None:
        if self._sender is not None:
            with contextlib.suppress(TimeoutError):
                # What is queued still goes out, briefly.
                for _ in range(20):
                    if not self._outbox:
                        break
                    await asyncio.sleep(0.05)
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        if self._listener is not None:
            await self._listener.close()
        self.wake_all()

    def on_payload(self, payload: str) -> None:
        decoded = decode(payload)
        if decoded is None:
            log.warning("ignored an unreadable jobs notification")
            return
        origin, kinds, job_ids = decoded
        if origin == self.origin:
            return
        self._peers[origin] = time.monotonic()
        if kinds == [_HELLO]:
            # A replica that just started (or reconnected) learns of this one at once,
            # instead of at the next periodic announcement.
            if self._listener is not None:
                self._listener.announce_soon()
        elif kinds != [_HERE]:
            self.wake_local(kinds=kinds, job_ids=job_ids)

    def presence(self, *, hello: bool) -> str:
        return f"{self.origin}|{_HELLO if hello else _HERE}|"


class _Registration:
    """An event set whenever any of its keys is announced; use as a context manager."""

    def __init__(self, registry: dict[str, set[asyncio.Event]], keys: Sequence[str]) -> None:
        self._registry = registry
        self._keys = list(dict.fromkeys(keys))
        self.event = asyncio.Event()

    def __enter__(self) -> asyncio.Event:
        for key in self._keys:
            self._registry.setdefault(key, set()).add(self.event)
        return self.event

    def __exit__(self, *exc: object) -> None:
        for key in self._keys:
            events = self._registry.get(key)
            if events is not None:
                events.discard(self.event)
                if not events:
                    del self._registry[key]


def encode(origin: str, kinds: Sequence[str], job_ids: Sequence[str]) -> list[str]:
    """Payloads `origin|kind,kind|id,id`, split to stay under PostgreSQL's size limit."""
    payloads: list[str] = []
    items = [("k", k) for k in kinds] + [("j", j) for j in job_ids]
    current_kinds: list[str] = []
    current_ids: list[str] = []
    size = len(origin) + 2
    for tag, value in items:
        if size + len(value) + 1 > _MAX_PAYLOAD and (current_kinds or current_ids):
            payloads.append(f"{origin}|{','.join(current_kinds)}|{','.join(current_ids)}")
            current_kinds, current_ids, size = [], [], len(origin) + 2
        (current_kinds if tag == "k" else current_ids).append(value)
        size += len(value) + 1
    if current_kinds or current_ids:
        payloads.append(f"{origin}|{','.join(current_kinds)}|{','.join(current_ids)}")
    return payloads


def decode(payload: str) -> tuple[str, list[str], list[str]] | None:
    parts = payload.split("|")
    if len(parts) != 3:
        return None
    origin, kinds, ids = parts
    return origin, [k for k in kinds.split(",") if k], [j for j in ids.split(",") if j]


class _Listener:
    """One LISTEN connection, reconnecting with backoff; wakes everyone after a gap."""

    CONNECT_TIMEOUT = 5.0

    def __init__(self, dsn: str, signals: Signals) -> None:
        self._dsn = dsn
        self._signals = signals
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._connected = asyncio.Event()
        self._announce = asyncio.Event()

    def announce_soon(self) -> None:
        """Says `here` now rather than at the next period (the loop owns the connection)."""
        self._announce.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="kiln-jobs-listen")
        # A replica that reports serving must hear every change committed after that.
        await asyncio.wait_for(self._connected.wait(), 30.0)

    async def _run(self) -> None:
        delay = 0.1
        while not self._closing:
            conn: Any = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=self.CONNECT_TIMEOUT)
                lost = asyncio.Event()

                def on_lost(_c: Any, lost: asyncio.Event = lost) -> None:
                    lost.set()
                    self._announce.set()

                conn.add_termination_listener(on_lost)
                await conn.add_listener(
                    CHANNEL, lambda _c, _pid, _ch, payload: self._signals.on_payload(payload)
                )
                # After LISTEN, so every answer to it is heard.
                await self._say(conn, hello=True)
                if self._connected.is_set():
                    self._signals.wake_all()  # notifications during the gap are lost
                self._connected.set()
                delay = 0.1
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self._announce.wait(), self._signals.announce_seconds
                        )
                    self._announce.clear()
                    if not lost.is_set():
                        # Also the keep-alive: a silently dead peer is only noticed by
                        # talking to it.
                        await self._say(conn, hello=False)
                raise ConnectionError("LISTEN connection closed")
            except asyncio.CancelledError:
                if conn is not None:
                    conn.terminate()
                raise
            except Exception as exc:  # whatever the driver raises: never stop listening
                if conn is not None:
                    conn.terminate()
                if self._closing:
                    return
                NOTIFY_RECONNECTS.inc()
                log.warning("jobs LISTEN connection lost; reconnecting", extra={"error": repr(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _say(self, conn: Any, *, hello: bool) -> None:
        await conn.execute(
            "SELECT pg_notify($1, $2)",
            CHANNEL,
            self._signals.presence(hello=hello),
            timeout=self.CONNECT_TIMEOUT,
        )

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
