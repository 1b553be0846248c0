"""A minimal text/event-stream reader for tests (what a browser's EventSource does)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Event:
    """One dispatched event."""

    event: str = "message"
    id: str = ""
    data_lines: list[str] = field(default_factory=list)

    @property
    def data(self) -> str:
        return "\n".join(self.data_lines)

    def json(self) -> Any:
        return json.loads(self.data)


class EventReader:
    """Events of a streaming httpx response, one at a time; comments are counted, not returned."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines: AsyncIterator[str] = response.aiter_lines()
        self.comments: list[str] = []

    async def next(self) -> Event | None:
        """The next event, or None when the stream ended."""
        current: Event | None = None
        async for line in self._lines:
            if line == "":
                if current is not None:
                    return current
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            current = current or Event()
            if name == "event":
                current.event = value
            elif name == "id":
                current.id = value
            elif name == "data":
                current.data_lines.append(value)
        return current

    async def take(self, count: int) -> list[Event]:
        """The next `count` events; fails if the stream ends first."""
        events: list[Event] = []
        for _ in range(count):
            event = await self.next()
            assert event is not None, f"the stream ended after {len(events)} of {count} events"
            events.append(event)
        return events
