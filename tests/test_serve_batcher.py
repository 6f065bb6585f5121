"""The Generator replica's batching (find_ray.serve.batcher), without Ray: a batch is formed
when the pipeline is free, from every job waiting."""

from __future__ import annotations

import asyncio
import time

import pytest

from find_ray.serve.batcher import Batcher


class SlowPipeline:
    """Records each batch; the first one runs until `release` is set."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()

    async def run(self, jobs: list[int]) -> list[int]:
        self.batches.append(list(jobs))
        if len(self.batches) == 1:
            await self.release.wait()
        return [10 * job for job in jobs]


def test_jobs_that_arrive_during_a_batch_run_together_in_full_batches():
    async def scenario():
        pipeline = SlowPipeline()
        batcher = Batcher(pipeline.run, max_batch_size=4)
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.01)  # job 0 finds the pipeline idle: a batch of its own
        rest = [asyncio.create_task(batcher.submit(job)) for job in range(1, 10)]
        await asyncio.sleep(0.01)
        pipeline.release.set()
        return pipeline, await asyncio.gather(first, *rest), batcher

    pipeline, results, batcher = asyncio.run(scenario())
    assert pipeline.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert results == [10 * job for job in range(10)]
    assert batcher.sizes == {1: 2, 4: 2}


def test_an_idle_batcher_waits_wait_s_for_more_jobs_and_goes_once_full():
    async def scenario():
        pipeline = SlowPipeline()
        pipeline.release.set()
        batcher = Batcher(pipeline.run, max_batch_size=2, wait_s=30.0)
        began = time.monotonic()
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.05)
        assert pipeline.batches == []  # waiting for the batch to fill
        results = await asyncio.gather(first, batcher.submit(2))
        return pipeline, results, time.monotonic() - began

    pipeline, results, took = asyncio.run(scenario())
    assert pipeline.batches == [[1, 2]] and results == [10, 20]
    assert took < 10  # went when full, not after wait_s


def test_a_cancelled_job_is_left_out_of_its_batch():
    async def scenario():
        pipeline = SlowPipeline()
        batcher = Batcher(pipeline.run, max_batch_size=4)
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.01)
        gone = asyncio.create_task(batcher.submit(1))
        kept = asyncio.create_task(batcher.submit(2))
        await asyncio.sleep(0.01)
        gone.cancel()  # the client went away, or its request timed out
        pipeline.release.set()
        return pipeline, await asyncio.gather(first, kept)

    pipeline, results = asyncio.run(scenario())
    assert pipeline.batches == [[0], [2]] and results == [0, 20]


def test_a_failed_batch_fails_each_of_its_jobs_and_the_next_batch_runs():
    async def scenario():
        calls: list[list[int]] = []

        async def run(jobs: list[int]) -> list[int]:
            calls.append(list(jobs))
            await asyncio.sleep(0.01)
            if len(calls) == 1:
                raise RuntimeError("pipeline failed")
            return jobs

        batcher = Batcher(run, max_batch_size=8)
        failing = [asyncio.create_task(batcher.submit(job)) for job in (1, 2)]
        await asyncio.sleep(0)  # both join the first batch
        outcomes = await asyncio.gather(*failing, return_exceptions=True)
        return outcomes, await batcher.submit(3), calls

    outcomes, later, calls = asyncio.run(scenario())
    assert calls == [[1, 2], [3]] and later == 3
    for outcome in outcomes:
        assert isinstance(outcome, RuntimeError) and str(outcome) == "pipeline failed"


@pytest.mark.parametrize("max_batch_size", [1, 3])
def test_results_go_back_to_their_own_callers(max_batch_size):
    async def scenario():
        async def run(jobs: list[int]) -> list[int]:
            await asyncio.sleep(0.001)
            return [-job for job in jobs]

        batcher = Batcher(run, max_batch_size)
        return await asyncio.gather(*(batcher.submit(job) for job in range(10)))

    assert asyncio.run(scenario()) == [-job for job in range(10)]
