"""Adaptive batching inside one worker: concurrent requests share a decode.

BentoML's own batching (``@bentoml.api(batchable=True)``) needs an API whose body is a list, and
a call from one API method to another bypasses its dispatcher; ``/rerank`` takes one object per
request, so the service batches here instead. Requests queue while a decode runs; the next decode
takes everything waiting (up to ``max_batch_size``), so batches grow with load and a lone request
waits at most ``max_wait_s``. Two limits keep latency bounded under overload: at most
``max_pending`` requests queue or decode at once (a further one gets :class:`Overloaded`, which the
service answers with 429 and ``Retry-After``), and a caller waits at most its ``deadline_s``
(``TimeoutError``; the service answers with the pre-rank order).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Overloaded(RuntimeError):
    """``max_pending`` requests are already queued or decoding: retry later."""


class MicroBatcher(Generic[T, R]):
    """Collects ``submit``ted items and runs them through ``run(key, items)`` in batches.

    Items with different keys (decoder and threshold) never share a call. ``run`` is blocking
    (a forward pass); it runs in a thread, one call at a time, so the event loop keeps accepting
    requests while the model decodes.
    """

    def __init__(
        self, run: Callable[[Hashable, list[T]], list[R]], max_batch_size: int, max_wait_s: float, max_pending: int | None = None
    ) -> None:
        if max_batch_size < 1 or max_wait_s < 0 or (max_pending is not None and max_pending < 1):
            raise ValueError("max_batch_size and max_pending must be positive and max_wait_s non-negative")
        self._run = run
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._max_pending = max_pending
        self.pending = 0  # submitted and not yet answered
        self._queue: asyncio.Queue[tuple[Hashable, T, asyncio.Future[R]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        # Sizes of the batches run so far, newest last (a bounded window, for metrics and tests).
        self.batch_sizes: list[int] = []

    def admit(self) -> None:
        """Raise :class:`Overloaded` when ``max_pending`` items are already waiting.

        ``submit`` checks this too; a caller that does costly work before submitting (the
        service's feature-store read) checks first, so an overloaded service refuses cheaply.
        """
        if self._max_pending is not None and self.pending >= self._max_pending:
            raise Overloaded(f"{self.pending} requests are already queued or decoding (serving.max_pending)")

    async def submit(self, key: Hashable, item: T, deadline_s: float | None = None) -> R:
        """Queue ``item`` and wait for its result (or the exception its batch raised).

        Raises:
            Overloaded: ``max_pending`` items are already waiting; nothing was queued.
            TimeoutError: no result within ``deadline_s``; the item leaves the queue if its
                decode has not started.
        """
        self.admit()
        if self._queue is None:
            # Created on first use: the queue and the worker belong to the serving event loop.
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._drain())
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self.pending += 1
        try:
            await self._queue.put((key, item, future))
            # A cancelled future is skipped by the batch it would have joined.
            return await asyncio.wait_for(future, deadline_s)
        finally:
            self.pending -= 1

    async def _drain(self) -> None:
        assert self._queue is not None
        while True:
            waiting = [await self._queue.get()]
            # A fixed short window rather than wait_for on the queue: cancelling a get() that has
            # just won its item can lose the item on Python 3.11.
            if self._max_wait_s and self._queue.qsize() < self._max_batch_size - 1:
                await asyncio.sleep(self._max_wait_s)
            while len(waiting) < self._max_batch_size and not self._queue.empty():
                waiting.append(self._queue.get_nowait())
            groups: dict[Hashable, list[tuple[T, asyncio.Future[R]]]] = {}
            for key, item, future in waiting:
                groups.setdefault(key, []).append((item, future))
            for key, members in groups.items():
                await self._run_group(key, members)

    async def _run_group(self, key: Hashable, members: list[tuple[T, asyncio.Future[R]]]) -> None:
        live = [(item, future) for item, future in members if not future.cancelled()]
        if not live:
            return
        self.batch_sizes = [*self.batch_sizes[-999:], len(live)]
        try:
            results = await asyncio.to_thread(self._run, key, [item for item, _ in live])
            if len(results) != len(live):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} items")
        except Exception as exc:  # noqa: BLE001 - handed to every caller of the batch
            for _, future in live:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(live, results):
            if not future.done():
                future.set_result(result)
