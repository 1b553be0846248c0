"""Group commit: concurrent callers' items run together as one batch.

A database pays per round trip and per commit, not per row. When many requests each want one
small write at the same moment, running them as one statement in one transaction multiplies
throughput; a lone request pays nothing extra, because no timer holds it back: the first item
starts a batch at once, and whatever arrives while that batch runs goes as the next one.

The batch runs in a task of its own, so it does not see the submitters' context variables
(the tenant, the request id): items must carry whatever the batch function needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

BatchFunction = Callable[[Sequence[T]], Awaitable[Sequence[R | BaseException]]]


class GroupCommit(Generic[T, R]):
    """Runs `run` over the items submitted while the previous batch was running.

    `run` answers one result per item, in order; an exception in that list fails only its own
    submitter, an exception raised by `run` fails the whole batch. A submitter cancelled while
    waiting does not take its item back: the batch may already hold it.
    """

    def __init__(self, run: BatchFunction[T, R], *, max_batch: int = 256) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._run = run
        self._max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                results = await self._run([item for item, _ in batch])
            except Exception as exc:  # handed to every submitter of the batch
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            if len(results) != len(batch):
                mismatch = RuntimeError(
                    f"batch function answered {len(results)} results for {len(batch)} items"
                )
                for _, future in batch:
                    if not future.done():
                        future.set_exception(mismatch)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
