"""The cross-stream batcher and the model registry, with the shipped model and real detectors."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from avsentry.pipelines.detection import Detector, DetectorConfig
from avsentry.stream.batching import Batcher
from avsentry.stream.errors import InternalError, InvalidRequest
from avsentry.stream.registry import ModelRegistry

CHEAP = DetectorConfig(transforms=("noise",), smoothing=None, seed=3)


@pytest.fixture(scope="module")
def detectors(model_torch):
    return Detector(model_torch, CHEAP), Detector(
        model_torch, DetectorConfig(transforms=("quantize",), smoothing=None)
    )


def windows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.3, 0.3, (n, 16000)).astype(np.float32)


def run_batcher(coro_fn, **kw):
    async def main():
        sizes: list[int] = []
        dropped: list[int] = []
        b = Batcher(on_batch=lambda n, s: sizes.append(n), on_drop=dropped.append, **kw)
        b.start()
        try:
            return await coro_fn(b), sizes, dropped
        finally:
            await b.stop()

    return asyncio.run(main())


def test_windows_are_grouped_by_detector_and_bounded_by_max_batch(detectors) -> None:
    a, b = detectors
    x = windows(7)

    async def go(batcher: Batcher):
        futs = []
        for i in range(7):
            futs.append((await batcher.submit(a if i % 2 else b, x[i], key=i))[1])
        return await asyncio.gather(*futs)

    verdicts, sizes, _ = run_batcher(go, max_batch=3, max_wait_ms=200, workers=1)
    assert sum(sizes) == 7 and max(sizes) <= 3
    # each batch held one detector's windows: judged alone, every window gets the same verdict
    for i, v in enumerate(verdicts):
        (alone,) = (a if i % 2 else b).analyze(x[i : i + 1], keys=[i])
        assert v.raw_label == alone.raw_label and v.score == pytest.approx(alone.score, abs=1e-5)


def test_one_failing_window_fails_only_its_own_job(detectors) -> None:
    """A window that breaks the detector (NaN) gets INTERNAL; its batch-mates get their verdicts."""
    a, _ = detectors
    x = windows(4)
    x[2, 100] = np.nan

    async def go(batcher: Batcher):
        futs = [(await batcher.submit(a, x[i], key=i, request_id=f"r{i}"))[1] for i in range(4)]
        return await asyncio.gather(*futs, return_exceptions=True)

    results, sizes, _ = run_batcher(go, max_batch=8, max_wait_ms=200, workers=1)
    assert isinstance(results[2], InternalError)
    assert all(not isinstance(results[i], BaseException) for i in (0, 1, 3))
    assert sizes == [4]  # one batch, retried window by window inside it


def test_abandoned_windows_are_dropped_not_computed(detectors) -> None:
    a, _ = detectors
    x = windows(3)

    async def go(batcher: Batcher):
        futs = [(await batcher.submit(a, x[i], key=i))[1] for i in range(3)]
        futs[1].cancel()  # its call went away before the collector took it
        return await asyncio.gather(futs[0], futs[2])

    verdicts, sizes, dropped = run_batcher(go, max_batch=8, max_wait_ms=100, workers=1)
    assert len(verdicts) == 2 and sum(dropped) == 1 and sum(sizes) == 2


def test_the_submission_queue_is_bounded(detectors) -> None:
    a, _ = detectors
    x = windows(1)

    async def go(batcher: Batcher):
        seen = 0
        futs = []
        for i in range(12):
            futs.append((await batcher.submit(a, x[0], key=i))[1])
            seen = max(seen, batcher.depth)
        await asyncio.gather(*futs)
        return seen

    deepest, _, _ = run_batcher(go, max_batch=2, max_wait_ms=0, workers=1, queue_size=2)
    assert deepest <= 2


def test_registry_lru_and_unknown_model(model_torch) -> None:
    events: list[str] = []
    reg = ModelRegistry("digits", backend="torch", device="cpu", max_detectors=2, on_cache=events.append)
    with pytest.raises(InvalidRequest, match="unknown model 'x"):
        reg.manifest("x" * 10_000)
    configs = [DetectorConfig(transforms=(t,), smoothing=None) for t in ("noise", "quantize", "lowpass")]
    first = reg.detector("digits", configs[0], cost_s=0.01)
    assert reg.detector("digits", configs[0]) is first
    reg.detector("digits", configs[1], cost_s=0.01)
    reg.detector("digits", configs[2], cost_s=0.01)
    assert reg.cached == 2
    assert reg.detector("digits", configs[0], cost_s=0.01) is not first  # evicted, rebuilt
    assert events.count("evict") == 2 and events.count("hit") == 1


def test_registry_measures_detector_cost(model_torch) -> None:
    reg = ModelRegistry("digits", backend="torch", device="cpu")
    built = reg.detector("digits", CHEAP)
    assert 0 < built.cost_s < 1.0
    with pytest.raises(InvalidRequest, match="representation"):
        from avsentry.pipelines.smoothing import SmoothingConfig

        reg.detector("digits", DetectorConfig(smoothing=SmoothingConfig(representation="bogus", n=32, n0=8)))
