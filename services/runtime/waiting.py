"""Waiting on whichever of two events comes first."""

from __future__ import annotations

import asyncio


async def wait_either(
    first: asyncio.Event, second: asyncio.Event, seconds: float | None = None
) -> None:
    """Returns once either event is set, or after `seconds` (None: no limit)."""
    waits = [asyncio.ensure_future(first.wait()), asyncio.ensure_future(second.wait())]
    try:
        await asyncio.wait(
            waits,
            timeout=None if seconds is None else max(0.0, seconds),
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        for wait in waits:
            wait.cancel()
