"""Codec work in worker processes gives the same parts as in the caller, and survives a worker
that dies (a codec crash must not take down the server)."""

from __future__ import annotations

import os
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import pytest

from avsentry.pipelines.transforms import CodecProcessPool, transform_from_spec


def _die() -> None:
    os._exit(3)


@pytest.fixture(scope="module")
def pool():
    p = CodecProcessPool(2)
    yield p
    p.shutdown(cancel_futures=True)


def test_parts_from_worker_processes_equal_parts_made_here(pool) -> None:
    rng = np.random.default_rng(0)
    parts = [(0.1 * rng.standard_normal(8000)).astype(np.float32) for _ in range(3)]
    for spec in ("mp3", "opus", "aac"):
        t = transform_from_spec(spec, sample_rate_hz=16000)
        remote = [pool.submit(t.apply_segment, p) for p in parts]
        for p, f in zip(parts, remote, strict=True):
            np.testing.assert_array_equal(f.result(timeout=60), t.apply_segment(p))


def test_a_dead_worker_breaks_only_the_jobs_in_flight(pool) -> None:
    with pytest.raises(BrokenProcessPool):
        pool.submit(_die).result(timeout=60)
    t = transform_from_spec("mp3", sample_rate_hz=16000)
    part = np.zeros(8000, np.float32)
    np.testing.assert_array_equal(
        pool.submit(t.apply_segment, part).result(timeout=60), t.apply_segment(part)
    )
