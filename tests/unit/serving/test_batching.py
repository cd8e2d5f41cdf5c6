"""MicroBatcher: concurrent submissions share a call per key, results go back to their callers."""

from __future__ import annotations

import asyncio
import time

import pytest

from components.serving.batching import MicroBatcher, Overloaded


def test_concurrent_items_are_batched_by_key_and_answered_in_order() -> None:
    calls: list[tuple[str, list[int]]] = []

    def run(key, items):
        calls.append((key, list(items)))
        return [f"{key}:{item}" for item in items]

    async def main():
        batcher = MicroBatcher(run, max_batch_size=3, max_wait_s=0.05)
        jobs = [batcher.submit("a" if i % 2 == 0 else "b", i) for i in range(7)]
        return await asyncio.gather(*jobs), batcher.batch_sizes

    results, sizes = asyncio.run(main())
    assert results == [f"{'a' if i % 2 == 0 else 'b'}:{i}" for i in range(7)]
    # Seven concurrent items, at most three per decode: one call per key in each batch.
    assert all(len(items) <= 3 for _, items in calls) and sum(sizes) == 7
    assert all(len({i % 2 for i in items}) == 1 for _, items in calls)
    assert len(calls) < 7


def test_a_failing_batch_raises_in_every_caller() -> None:
    def run(key, items):
        raise ValueError("decoder broke")

    async def main():
        batcher = MicroBatcher(run, max_batch_size=4, max_wait_s=0.01)
        return await asyncio.gather(batcher.submit("k", 1), batcher.submit("k", 2), return_exceptions=True)

    assert [str(r) for r in asyncio.run(main())] == ["decoder broke", "decoder broke"]


def test_rejects_bad_limits() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(lambda key, items: items, max_batch_size=0, max_wait_s=0.0)
    with pytest.raises(ValueError):
        MicroBatcher(lambda key, items: items, max_batch_size=1, max_wait_s=0.0, max_pending=0)


def test_a_full_queue_refuses_at_once_and_accepts_again_once_answered() -> None:
    def run(key, items):
        time.sleep(0.2)
        return items

    async def main():
        batcher = MicroBatcher(run, max_batch_size=2, max_wait_s=0.0, max_pending=3)
        admitted = [asyncio.create_task(batcher.submit("k", i)) for i in range(3)]
        await asyncio.sleep(0)  # the three are queued
        started = time.perf_counter()
        with pytest.raises(Overloaded, match="3 requests are already queued"):
            await batcher.submit("k", 99)
        refused_in = time.perf_counter() - started
        with pytest.raises(Overloaded):
            batcher.admit()  # the check a caller makes before its own costly work
        answered = await asyncio.gather(*admitted)
        batcher.admit()
        return refused_in, answered, batcher.pending, await batcher.submit("k", 7)

    refused_in, answered, pending, again = asyncio.run(main())
    assert refused_in < 0.05 and answered == [0, 1, 2] and pending == 0 and again == 7


def test_a_caller_past_its_deadline_stops_waiting_and_its_item_is_not_decoded() -> None:
    decoded: list[int] = []

    def run(key, items):
        decoded.extend(items)
        time.sleep(0.3)
        return items

    async def main():
        batcher = MicroBatcher(run, max_batch_size=1, max_wait_s=0.0)
        first = asyncio.create_task(batcher.submit("k", 1))
        await asyncio.sleep(0.05)  # 1 is decoding; 2 queues behind it
        with pytest.raises(TimeoutError):
            await batcher.submit("k", 2, deadline_s=0.1)
        result = await first
        await asyncio.sleep(0.05)
        return result, batcher.pending

    result, pending = asyncio.run(main())
    assert result == 1 and pending == 0 and decoded == [1]

