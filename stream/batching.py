"""Cross-stream dynamic batching of detector work.

Every active stream submits its windows here. A collector takes the first waiting window, then
keeps taking more until ``max_batch`` windows or ``max_wait_ms`` have passed, groups them by
detector (model + defence configuration), and runs each group as one batch on a worker thread:
one batched raw forward pass, the transforms (codec round trips run on their own thread pool),
and the noisy copies of every window of every stream through the recognizer in device-sized
batches. The event loop never runs model or codec work. The submission queue is bounded, so a
saturated server pushes back on its streams (and gRPC flow control on the clients).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from avsentry.pipelines.detection import Detector, WindowVerdict


@dataclass(slots=True)
class Job:
    detector: Detector
    window: np.ndarray
    key: int
    final: asyncio.Future
    interim: asyncio.Future | None = None
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Groups windows from all streams into device batches.

    Args:
        max_batch: Most windows per batch.
        max_wait_ms: Longest a window waits for company once the collector has it.
        workers: Batches processed concurrently (threads).
        queue_size: Bound on waiting windows; ``submit`` blocks beyond it.
        on_batch: Optional callback ``(batch_size, seconds)`` for metrics.
    """

    def __init__(
        self,
        *,
        max_batch: int = 64,
        max_wait_ms: float = 10.0,
        workers: int = 2,
        queue_size: int = 1024,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch < 1 or workers < 1 or queue_size < 1 or max_wait_ms < 0:
            raise ValueError("max_batch, workers and queue_size must be >= 1 and max_wait_ms >= 0")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.workers = workers
        self._queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=queue_size)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="avsentry-batch")
        self._slots = asyncio.Semaphore(workers)
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Future] = set()
        self._on_batch = on_batch

    @property
    def depth(self) -> int:
        """Windows waiting to be batched."""
        return self._queue.qsize()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._collect(), name="avsentry-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def submit(
        self, detector: Detector, window: np.ndarray, key: int, *, interim: bool = False
    ) -> tuple[asyncio.Future | None, asyncio.Future]:
        """Queue one window; returns (interim future or None, final future).

        The interim future resolves to the raw probabilities ``(classes,)``, the final one to a
        :class:`~pipelines.detection.WindowVerdict`.
        """
        loop = asyncio.get_running_loop()
        job = Job(
            detector=detector,
            window=window,
            key=key,
            final=loop.create_future(),
            interim=loop.create_future() if interim else None,
        )
        await self._queue.put(job)
        return job.interim, job.final

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0 and self._queue.empty():
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), max(0.0, remaining)))
                except TimeoutError:
                    break
            groups: dict[int, list[Job]] = {}
            for job in batch:
                groups.setdefault(id(job.detector), []).append(job)
            for jobs in groups.values():
                await self._slots.acquire()
                fut = loop.run_in_executor(self._executor, self._process, jobs, loop)
                self._running.add(fut)
                fut.add_done_callback(self._done)

    def _done(self, fut: asyncio.Future) -> None:
        self._running.discard(fut)
        self._slots.release()

    def _process(self, jobs: list[Job], loop: asyncio.AbstractEventLoop) -> None:
        t0 = time.perf_counter()
        detector = jobs[0].detector
        x = np.stack([j.window for j in jobs])

        def on_raw(raw: np.ndarray) -> None:
            for j, p in zip(jobs, raw, strict=True):
                if j.interim is not None:
                    loop.call_soon_threadsafe(_resolve, j.interim, p, None)

        try:
            verdicts: list[WindowVerdict] = detector.analyze(x, keys=[j.key for j in jobs], on_raw=on_raw)
        except Exception as e:  # noqa: BLE001 - delivered to every waiting stream
            for j in jobs:
                loop.call_soon_threadsafe(_resolve, j.final, None, e)
                if j.interim is not None:
                    loop.call_soon_threadsafe(_resolve, j.interim, None, e)
            return
        for j, v in zip(jobs, verdicts, strict=True):
            loop.call_soon_threadsafe(_resolve, j.final, v, None)
        if self._on_batch is not None:
            self._on_batch(len(jobs), time.perf_counter() - t0)


def _resolve(fut: asyncio.Future, value: object, error: BaseException | None) -> None:
    if fut.done():  # the stream went away
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)
