"""Batching in the Generator replica: a batch is formed when the pipeline is free.

Ray Serve's `@serve.batch` (2.60) forms the next batch as soon as a request arrives, before the
running one ends, and leaves it waiting for its turn: under load that gave batches of 1–6 where
64 requests were waiting, and with `batch_wait_timeout_s: 0` batches of 1. Here the pipeline
takes every job waiting when it finishes a batch (up to `max_batch_size`), so a loaded replica
runs full batches, and a job that finds it idle starts at once (after `wait_s`, 0 by default,
for more jobs to join).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

J = TypeVar("J")
R = TypeVar("R")


class Batcher(Generic[J, R]):
    """Runs `run(jobs)` (one result per job, in order) over batches of the jobs submitted."""

    def __init__(
        self, run: Callable[[list[J]], Awaitable[list[R]]], max_batch_size: int, wait_s: float = 0.0
    ) -> None:
        self.run = run
        self.max_batch_size, self.wait_s = max_batch_size, wait_s
        self.waiting: deque[tuple[J, asyncio.Future]] = deque()
        self.sizes: Counter[int] = Counter()  # batches run, by size
        self._worker: asyncio.Task | None = None
        self._filled = asyncio.Event()

    async def submit(self, job: J) -> R:
        """The job's result, once its batch has run (its error, if the batch raised)."""
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((job, future))
        if len(self.waiting) >= self.max_batch_size:
            self._filled.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future  # cancelled (client gone, timeout): the batch skips the job

    async def _drain(self) -> None:
        while self.waiting:
            if self.wait_s > 0 and len(self.waiting) < self.max_batch_size:
                self._filled.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._filled.wait(), self.wait_s)
            batch = self._take()
            if batch:
                await self._run(batch)

    def _take(self) -> list[tuple[J, asyncio.Future]]:
        """Up to max_batch_size waiting jobs whose caller still waits, oldest first."""
        batch = []
        while self.waiting and len(batch) < self.max_batch_size:
            job, future = self.waiting.popleft()
            if not future.done():
                batch.append((job, future))
        return batch

    async def _run(self, batch: list[tuple[J, asyncio.Future]]) -> None:
        self.sizes[len(batch)] += 1
        try:
            results = await self.run([job for job, _ in batch])
        except Exception as e:  # noqa: BLE001 - every caller of the batch gets the error
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
