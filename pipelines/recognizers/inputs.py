"""What a model's input tensor looks like, and the adaptation of avsentry's windows to it.

avsentry hands every backend windows as ``(batch, *window)`` float32: audio ``(batch, samples)``
in ``[-1, 1]``, video ``(batch, frames, height, width, 3)`` RGB in ``[0, 1]``. Models exported from
other frameworks expect other layouts: a channel axis (``(batch, 1, samples)``), channels first
(``(batch, 3, frames, height, width)``), int16-range amplitudes (``scale = 32768``), double
precision, or a batch size fixed at export time. :class:`ModelInput` describes that once (from
the manifest's ``[input]`` table, or read off an ONNX graph) and both backends use it, so no
backend guesses.
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
        shape: The model's input shape, batch first. Audio: ``("batch", samples)`` or
            ``("batch", 1, samples)``. Video: ``("batch", frames, height, width, 3)`` (the
            pipeline's own layout) or ``("batch", 3, frames, height, width)`` (channels first, as
            torchvision's video models). An int in place of ``"batch"`` is a batch size fixed at
            export (batches are then split and the last one padded).
        window: One window as the pipeline holds it (:attr:`ModelSpec.window_shape`); default:
            read off an audio ``shape``.
        dtype: ``float32``, ``float16`` or ``float64``.
        scale: The model sees ``window * scale`` (``32768`` for models trained on int16 ranges,
            ``255`` for video models trained on 8-bit pixel values).
    """

    shape: tuple[int | str, ...]
    window: tuple[int, ...] = ()
    dtype: str = "float32"
    scale: float = 1.0

    def __post_init__(self) -> None:
        b = self.shape[0] if self.shape else None
        if not (b == BATCH or (isinstance(b, int) and not isinstance(b, bool) and b >= 1)):
            raise ValueError(f"input shape: the first entry is 'batch' or a fixed batch size >= 1, got {b!r}")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in self.shape[1:]):
            raise ValueError(
                f"input shape: every entry after the batch is a positive size, got {list(self.shape)}"
            )
        if not self.window:
            if len(self.shape) not in (2, 3):
                raise ValueError(
                    f"input shape must be [batch, samples] or [batch, 1, samples], got {list(self.shape)}"
                )
            object.__setattr__(self, "window", (int(self.shape[-1]),))  # type: ignore[arg-type]
        if self._layout() is None:
            raise ValueError(
                f"input shape {list(self.shape)} does not fit windows {list(self.window)}: {self._want()}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"input dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"input scale must be a positive number, got {self.scale!r}")

    def _want(self) -> str:
        w = list(self.window)
        if len(w) == 1:
            return f"use [batch, {w[0]}] or [batch, 1, {w[0]}]"
        if len(w) == 4:
            t, h, wd, c = w
            return f"use [batch, {t}, {h}, {wd}, {c}] or [batch, {c}, {t}, {h}, {wd}]"
        return f"use [batch, {', '.join(map(str, w))}]"

    def _layout(self) -> str | None:
        """How windows become the model's input: ``same``, ``channel`` (audio: a channel axis of
        1 inserted) or ``channels_first`` (video: RGB moved before time)."""
        rest = tuple(self.shape[1:])
        w = tuple(self.window)
        if rest == w:
            return "same"
        if len(w) == 1 and rest == (1, *w):
            return "channel"
        if len(w) == 4 and rest == (w[3], *w[:3]):
            return "channels_first"
        return None

    @classmethod
    def for_window(cls, window: int | tuple[int, ...]) -> ModelInput:
        """The pipeline's own layout: ``("batch", *window)`` float32."""
        w = (window,) if isinstance(window, int) else tuple(window)
        return cls(shape=(BATCH, *w), window=w)

    @property
    def samples(self) -> int:
        """Samples per audio window."""
        return int(self.window[-1])

    @property
    def fixed_batch(self) -> int | None:
        b = self.shape[0]
        return None if b == BATCH else int(b)

    def adapt(self, batch: T) -> T:
        """``(batch, *window)`` windows -> the model's input (layout, scale, dtype)."""
        if tuple(batch.shape[1:]) != tuple(self.window) or batch.ndim != 1 + len(self.window):
            raise ValueError(
                f"expected windows (batch, {', '.join(map(str, self.window))}), got {tuple(batch.shape)}"
            )
        x = batch * self.scale if self.scale != 1.0 else batch
        layout = self._layout()
        if layout == "channel":
            x = x[:, None, :]
        elif layout == "channels_first":
            x = x.permute(0, 4, 1, 2, 3) if isinstance(x, torch.Tensor) else np.moveaxis(x, 4, 1)
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
