"""GroupCommit: concurrent submissions share batches; failures reach the right callers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from services.runtime.batching import GroupCommit


async def test_concurrent_items_share_a_batch_and_answer_in_order() -> None:
    batches: list[list[int]] = []

    async def double(items: Sequence[int]) -> list[int | BaseException]:
        batches.append(list(items))
        await asyncio.sleep(0.01)
        return [item * 2 for item in items]

    commit: GroupCommit[int, int] = GroupCommit(double)
    first = asyncio.create_task(commit.submit(0))
    await asyncio.sleep(0)  # the first batch starts alone
    rest = [asyncio.create_task(commit.submit(i)) for i in range(1, 20)]
    assert await first == 0
    assert await asyncio.gather(*rest) == [i * 2 for i in range(1, 20)]
    assert batches[0] == [0]
    assert batches[1] == list(range(1, 20))


async def test_max_batch_splits_a_backlog() -> None:
    sizes: list[int] = []

    async def count(items: Sequence[int]) -> list[int | BaseException]:
        sizes.append(len(items))
        return list(items)

    commit: GroupCommit[int, int] = GroupCommit(count, max_batch=4)
    assert await asyncio.gather(*(commit.submit(i) for i in range(10))) == list(range(10))
    assert sizes == [4, 4, 2]


async def test_an_item_error_fails_only_its_submitter() -> None:
    async def refuse_odd(items: Sequence[int]) -> list[int | BaseException]:
        return [ValueError(str(i)) if i % 2 else i for i in items]

    commit: GroupCommit[int, int] = GroupCommit(refuse_odd)
    results = await asyncio.gather(*(commit.submit(i) for i in range(4)), return_exceptions=True)
    assert results[0] == 0 and results[2] == 2
    assert isinstance(results[1], ValueError) and isinstance(results[3], ValueError)


async def test_a_failed_batch_fails_its_items_and_the_next_batch_still_runs() -> None:
    calls = 0

    async def flaky(items: Sequence[int]) -> list[int | BaseException]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database went away")
        return list(items)

    commit: GroupCommit[int, int] = GroupCommit(flaky)
    with pytest.raises(ConnectionError):
        await commit.submit(1)
    assert await commit.submit(2) == 2


async def test_a_short_answer_is_an_error_not_a_hang() -> None:
    async def short(items: Sequence[int]) -> list[int | BaseException]:
        return list(items)[:-1]

    commit: GroupCommit[int, int] = GroupCommit(short)
    with pytest.raises(RuntimeError, match="answered"):
        await asyncio.wait_for(asyncio.gather(commit.submit(1), commit.submit(2)), 1)
