"""Dynamic micro-batching: concurrent requests share one forward pass.

Requests wait in a bounded queue. A single worker takes the first waiting request, then keeps
taking more until the batch holds max_batch images or max_wait_ms has passed since that first
one, runs the model once on a worker thread (the event loop stays free to accept uploads), and
hands each request its rows. A full queue refuses new work at once (the server answers 503 with
Retry-After) instead of letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from imgcls.serving import defaults


class Overloaded(Exception):
    """The queue is full; try again shortly."""


@dataclass
class _Job:
    images: np.ndarray
    future: asyncio.Future


class MicroBatcher:
    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], *, max_batch: int = defaults.MAX_BATCH,
                 max_wait_ms: float = defaults.MAX_WAIT_MS, queue_size: int = defaults.QUEUE_SIZE):
        self.predict, self.max_batch, self.max_wait = predict, max(1, max_batch), max_wait_ms / 1000
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=queue_size)
        self.batches = 0          # forward passes run, for /healthz and the load benchmark
        self.on_batch: list[Callable[[int], None]] = []   # hooks told each forward pass's size (/metrics)
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass

    @property
    def running(self) -> bool:
        """Whether the worker is taking requests (the server's readiness)."""
        return self._worker is not None and not self._worker.done()

    async def submit(self, images: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        """What predict gives for images (N, C, H, W): probabilities (N, classes), or a tuple of
        arrays of N rows each; raises Overloaded when full."""
        job = _Job(images, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise Overloaded from None
        return await job.future

    async def _run(self) -> None:
        while True:
            jobs = [await self.queue.get()]
            size, deadline = len(jobs[0].images), time.monotonic() + self.max_wait
            while size < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
                jobs.append(job)
                size += len(job.images)
            await self._answer(jobs)

    async def _answer(self, jobs: list[_Job]) -> None:
        batch = np.concatenate([job.images for job in jobs])
        try:
            proba = await asyncio.to_thread(self.predict, batch)
        except Exception as exc:  # the model failed: every waiting request learns why
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        self.batches += 1
        for hook in self.on_batch:
            hook(len(batch))
        start = 0
        for job in jobs:
            if not job.future.done():   # a client that went away no longer waits
                job.future.set_result(_rows(proba, start, start + len(job.images)))
            start += len(job.images)


def _rows(answer, start: int, stop: int):
    """Rows start:stop of an array, or of each array of a tuple (probabilities, rejection scores)."""
    return tuple(part[start:stop] for part in answer) if isinstance(answer, tuple) else answer[start:stop]
