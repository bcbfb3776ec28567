"""Cross-stream dynamic batching of detector work.

Every active call submits its windows here. Whenever a worker thread is free, the collector takes
the windows waiting then (an even share per worker, at most ``max_batch``, plus any arriving
within ``max_wait_ms``), groups them by detector (model + defence configuration), and runs each
group as one detector call on that worker. On an idle server a window runs at once; under load
windows queue while the workers run and are judged together. On CPU a batch costs about the
same per window as a single window, so waiting for company only adds latency (``max_wait_ms``
defaults to 0); on a GPU a short wait can pay. The event loop never runs model or codec work.
The submission queue is bounded, so a saturated server pushes back on its streams (and gRPC flow
control on the clients).

Failure isolation: if a batch fails, each of its windows is retried alone, so one window that
breaks the detector fails only its own call (as INTERNAL, logged with the request id), never the
other streams in its batch. Windows of calls that were cancelled or ended before their batch ran
are dropped, not computed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from avsentry.pipelines.detection import StreamState, WindowVerdict
from avsentry.stream.errors import InternalError
from avsentry.stream.inference import AnyDetector

log = logging.getLogger("avsentry.batching")


@dataclass(slots=True)
class Job:
    """One window to judge.

    Attributes:
        key: Seeds the window's noise.
        start: First sample at the model rate within its stream.
        state: The stream's detector state (reuse across its windows), or None.
        request_id: For logs.
    """

    detector: AnyDetector
    window: np.ndarray
    key: int
    final: asyncio.Future
    start: int = 0
    state: StreamState | None = None
    interim: asyncio.Future | None = None
    request_id: str = ""
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def abandoned(self) -> bool:
        """Its call no longer waits for it (cancelled or already failed)."""
        return self.final.done()


class Batcher:
    """Groups windows from all streams into device batches.

    Args:
        max_batch: Most windows per batch.
        max_wait_ms: Longest a window waits for company once the collector has it.
        workers: Batches processed concurrently (threads).
        queue_size: Bound on waiting windows; ``submit`` blocks beyond it.
        on_batch: Optional callback ``(batch_size, seconds)`` for metrics.
        on_drop: Optional callback ``(windows)`` when abandoned windows are dropped.
    """

    def __init__(
        self,
        *,
        max_batch: int = 64,
        max_wait_ms: float = 0.0,
        workers: int = 2,
        queue_size: int = 1024,
        on_batch: Callable[[int, float], None] | None = None,
        on_drop: Callable[[int], None] | None = None,
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
        self._on_drop = on_drop

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
        self,
        detector: AnyDetector,
        window: np.ndarray,
        key: int,
        *,
        start: int = 0,
        state: StreamState | None = None,
        interim: bool = False,
        request_id: str = "",
    ) -> tuple[asyncio.Future | None, asyncio.Future]:
        """Queue one window; returns (interim future or None, final future).

        The interim future resolves to the raw probabilities ``(classes,)``, the final one to a
        :class:`~avsentry.pipelines.detection.WindowVerdict`. Cancel the final future to abandon
        the window.
        """
        loop = asyncio.get_running_loop()
        job = Job(
            detector=detector,
            window=window,
            key=key,
            start=start,
            state=state,
            final=loop.create_future(),
            interim=loop.create_future() if interim else None,
            request_id=request_id,
        )
        await self._queue.put(job)
        return job.interim, job.final

    async def _collect(self) -> None:
        """Work-conserving batching: a batch is formed only when a worker is free, from the
        windows waiting then (at most an even share of them per worker, and ``max_batch``), plus
        any arriving within ``max_wait_ms``. Idle server: a window runs at once. Busy server:
        windows queue while the workers run, and the next free worker takes them together."""
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            try:
                batch = [await self._queue.get()]
            except asyncio.CancelledError:
                self._slots.release()
                raise
            share = -(-(len(batch) + self._queue.qsize()) // self.workers)
            limit = max(1, min(self.max_batch, share))
            deadline = loop.time() + self.max_wait_s
            while len(batch) < limit:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            batch = self._live(batch)  # calls may have ended while their windows waited
            if not batch:
                self._slots.release()
                continue
            groups: dict[int, list[Job]] = {}
            for job in batch:
                groups.setdefault(id(job.detector), []).append(job)
            fut = loop.run_in_executor(self._executor, self._process_groups, list(groups.values()), loop)
            self._running.add(fut)
            fut.add_done_callback(self._done)

    def _process_groups(self, groups: list[list[Job]], loop: asyncio.AbstractEventLoop) -> None:
        for jobs in groups:  # one detector (model + defence configuration) per detector call
            jobs = [j for j in jobs if not j.abandoned]
            if jobs:
                self._process(jobs, loop)

    def _live(self, jobs: list[Job]) -> list[Job]:
        live = [j for j in jobs if not j.abandoned]
        if len(live) < len(jobs) and self._on_drop is not None:
            self._on_drop(len(jobs) - len(live))
        return live

    def _done(self, fut: asyncio.Future) -> None:
        self._running.discard(fut)
        self._slots.release()

    def _process(self, jobs: list[Job], loop: asyncio.AbstractEventLoop) -> None:
        t0 = time.perf_counter()
        try:
            self._judge(jobs, loop)
        finally:
            t1 = time.perf_counter()
            if self._on_batch is not None:
                self._on_batch(len(jobs), t1 - t0)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "batch",
                    extra={
                        "fields": {
                            "windows": len(jobs),
                            "waited_ms": round((t0 - min(j.enqueued for j in jobs)) * 1000, 1),
                            "ran_ms": round((t1 - t0) * 1000, 1),
                        }
                    },
                )

    def _judge(self, jobs: list[Job], loop: asyncio.AbstractEventLoop) -> None:
        try:
            verdicts = self._analyze(jobs, loop)
        except Exception:  # noqa: BLE001 - isolate: retry each window alone
            if len(jobs) == 1:
                self._fail(jobs[0], loop)
                return
            for job in jobs:
                if job.abandoned:
                    continue
                try:
                    (v,) = self._analyze([job], loop)
                except Exception:  # noqa: BLE001 - this window's own failure
                    self._fail(job, loop)
                else:
                    loop.call_soon_threadsafe(_resolve, job.final, v, None)
            return
        for j, v in zip(jobs, verdicts, strict=True):
            loop.call_soon_threadsafe(_resolve, j.final, v, None)

    @staticmethod
    def _analyze(jobs: list[Job], loop: asyncio.AbstractEventLoop) -> list[WindowVerdict]:
        def on_raw(raw: np.ndarray) -> None:
            for j, p in zip(jobs, raw, strict=True):
                if j.interim is not None:
                    loop.call_soon_threadsafe(_resolve, j.interim, p, None)

        return jobs[0].detector.analyze(
            np.stack([j.window for j in jobs]),
            keys=[j.key for j in jobs],
            starts=[j.start for j in jobs],
            states=[j.state for j in jobs],
            on_raw=on_raw,
        )

    @staticmethod
    def _fail(job: Job, loop: asyncio.AbstractEventLoop) -> None:
        log.exception("detector failed on a window", extra={"fields": {"request_id": job.request_id}})
        error = InternalError(f"the detector failed on window at sample {job.start}")
        loop.call_soon_threadsafe(_resolve, job.final, None, error)
        if job.interim is not None:
            loop.call_soon_threadsafe(_resolve, job.interim, None, error)


def _resolve(fut: asyncio.Future, value: object, error: BaseException | None) -> None:
    if fut.done():  # the stream went away
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)
