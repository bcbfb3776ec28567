"""What a model's input tensor looks like, and the adaptation of avsentry's windows to it.

avsentry hands every backend windows as ``(batch, samples)`` float32 in ``[-1, 1]``. Models
exported from other frameworks expect other layouts: a channel axis (``(batch, 1, samples)``),
int16-range amplitudes (``scale = 32768``), double precision, or a batch size fixed at export
time. :class:`ModelInput` describes that once (from the manifest's ``[input]`` table, or read off
an ONNX graph) and both backends use it, so no backend guesses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

DTYPES = {"float32": np.float32, "float16": np.float16, "float64": np.float64}
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "float64": torch.float64}
BATCH = "batch"

T = TypeVar("T", np.ndarray, torch.Tensor)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelInput:
    """The model's input tensor.

    Attributes:
        shape: ``("batch", samples)`` or ``("batch", 1, samples)``; an int in place of ``"batch"``
            is a batch size fixed at export (batches are then split and the last one padded).
        dtype: ``float32``, ``float16`` or ``float64``.
        scale: The model sees ``window * scale`` (``32768`` for models trained on int16 ranges).
    """

    shape: tuple[int | str, ...]
    dtype: str = "float32"
    scale: float = 1.0

    def __post_init__(self) -> None:
        if len(self.shape) not in (2, 3):
            raise ValueError(
                f"input shape must be [batch, samples] or [batch, 1, samples], got {list(self.shape)}"
            )
        if len(self.shape) == 3 and self.shape[1] != 1:
            raise ValueError(
                f"input shape [batch, channels, samples] needs channels = 1, got {list(self.shape)}"
            )
        b = self.shape[0]
        if not (b == BATCH or (isinstance(b, int) and not isinstance(b, bool) and b >= 1)):
            raise ValueError(f"input shape: the first entry is 'batch' or a fixed batch size >= 1, got {b!r}")
        if not isinstance(self.shape[-1], int) or self.shape[-1] < 1:
            raise ValueError(
                f"input shape: the last entry is the window length in samples, got {self.shape[-1]!r}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"input dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"input scale must be a positive number, got {self.scale!r}")

    @classmethod
    def for_window(cls, window_samples: int) -> ModelInput:
        return cls(shape=(BATCH, window_samples))

    @property
    def samples(self) -> int:
        return int(self.shape[-1])

    @property
    def fixed_batch(self) -> int | None:
        b = self.shape[0]
        return None if b == BATCH else int(b)

    def adapt(self, batch: T) -> T:
        """``(batch, samples)`` windows -> the model's input (layout, scale, dtype)."""
        if batch.ndim != 2 or batch.shape[-1] != self.samples:
            raise ValueError(f"expected windows (batch, {self.samples}), got {tuple(batch.shape)}")
        x = batch * self.scale if self.scale != 1.0 else batch
        if len(self.shape) == 3:
            x = x[:, None, :]
        if isinstance(x, torch.Tensor):
            return x.to(TORCH_DTYPES[self.dtype])
        return np.ascontiguousarray(x, dtype=DTYPES[self.dtype])

    def run(self, fn: Callable[[T], T], batch: T) -> T:
        """``fn`` on the adapted ``batch``, in chunks of the fixed batch size (the last one padded
        with silence and the padding's outputs dropped) when the model has one."""
        return in_batches_of(self.fixed_batch, lambda part: fn(self.adapt(part)), batch)


def in_batches_of(b: int | None, fn: Callable[[T], T], batch: T) -> T:
    """``fn(batch)``, or, for a graph whose batch size is fixed at ``b``, ``fn`` on chunks of
    ``b`` (the last one zero-padded, the padding's outputs dropped), concatenated."""
    if b is None or len(batch) == b:
        return fn(batch)
    outs = []
    for s in range(0, max(len(batch), 1), b):  # an empty batch runs one all-padding chunk
        part: Any = batch[s : s + b]
        n = len(part)
        if n < b and isinstance(part, torch.Tensor):
            part = torch.cat([part, part.new_zeros((b - n, *part.shape[1:]))])
        elif n < b:
            part = np.concatenate([part, np.zeros((b - n, *part.shape[1:]), dtype=part.dtype)])
        outs.append(fn(part)[:n])
    return torch.cat(outs) if isinstance(outs[0], torch.Tensor) else np.concatenate(outs)


def check_output(out_shape: tuple[int, ...], batch: int, n_labels: int, what: str) -> None:
    """Raise a clear error unless a probe's output is ``(batch, n_labels)``."""
    if tuple(out_shape) != (batch, n_labels):
        raise ValueError(
            f"{what} returned shape {list(out_shape)} for a batch of {batch}; the manifest's {n_labels} "
            f"labels need ({batch}, {n_labels}) (one score per label, in the labels' order)"
        )
