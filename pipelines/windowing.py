"""Cutting a signal into fixed windows with a hop (the last partial window zero-padded)."""

from __future__ import annotations

import numpy as np


def frame(signal: np.ndarray, *, window: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``(samples,)`` into ``(n_windows, window)`` float32 plus each window's start sample.

    Windows start every ``hop`` samples; a tail shorter than a window gets one last window,
    zero-padded, unless the previous window already covered it. A signal shorter than one window
    gives one padded window; an empty signal gives none.
    """
    if window < 1 or hop < 1:
        raise ValueError(f"window and hop must be >= 1, got window={window}, hop={hop}")
    n = len(signal)
    if n == 0:
        return np.zeros((0, window), np.float32), np.zeros(0, np.int64)
    starts = list(range(0, max(1, n - window + 1), hop))
    if starts[-1] + window < n:
        starts.append(starts[-1] + hop)
    out = np.zeros((len(starts), window), dtype=np.float32)
    for i, s in enumerate(starts):
        seg = signal[s : s + window]
        out[i, : len(seg)] = seg
    return out, np.asarray(starts, dtype=np.int64)
