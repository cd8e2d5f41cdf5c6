"""MicroBatcher: concurrent submissions share a call per key, results go back to their callers."""

from __future__ import annotations

import asyncio

import pytest

from components.serving.batching import MicroBatcher


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
