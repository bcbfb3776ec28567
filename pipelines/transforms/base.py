"""Input transforms used as defences (feature squeezing, Xu et al., NDSS 2018).

A transform maps a batch of waveforms to a batch of the same shape, sample-aligned with its
input, and never mutates the input. For adaptive attacks each transform also offers a gradient
estimate; the default is the identity (BPDA, Athalye et al., ICML 2018): the forward pass runs
the real transform, the backward pass treats it as ``x -> x``.
"""

from __future__ import annotations

import numbers
from typing import Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class Transform(Protocol):
    """A defence transform on batches of mono waveforms.

    Attributes:
        name: Short identifier used in verdicts and configs (``"mp3"``, ``"quantize"``...).
        sample_rate_hz: The rate the transform expects its input at.
    """

    name: str
    sample_rate_hz: int

    def apply(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Transform a batch.

        Args:
            batch: ``(batch, samples)`` float32 waveforms in [-1, 1]. Not modified.
            rng: Seeded generator for any randomness (unused by deterministic transforms).

        Returns:
            ``(batch, samples)`` float32, sample-aligned with ``batch``.
        """
        ...

    def differentiable(self, batch: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Forward = :meth:`apply`; backward = this transform's gradient estimate."""
        ...


class _StraightThrough(torch.autograd.Function):
    """Runs a numpy transform forward and passes the gradient through unchanged (BPDA)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, transform: Transform, rng: np.random.Generator):  # type: ignore[override]
        out = transform.apply(x.detach().cpu().numpy().astype(np.float32, copy=False), rng)
        return torch.from_numpy(np.ascontiguousarray(out)).to(device=x.device, dtype=x.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        return grad_output, None, None


class BaseTransform:
    """Shared behaviour: input validation and the identity (BPDA) gradient estimate.

    Subclasses implement :meth:`_apply` on a validated float32 copy-safe batch.
    """

    name: str = "identity"
    #: True when the output depends on ``rng`` (then only same-seed reproducibility holds, not
    #: batch == per-item).
    randomized: bool = False

    def __init__(self, *, sample_rate_hz: int) -> None:
        if sample_rate_hz <= 0:
            raise ValueError(f"sample_rate_hz must be positive, got {sample_rate_hz}")
        self.sample_rate_hz = int(sample_rate_hz)

    def apply(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Transform a batch; see :meth:`Transform.apply`.

        Raises:
            ValueError: ``batch`` is not 2-D or holds NaN or infinite samples.
        """
        batch = np.asarray(batch)
        if batch.ndim != 2:
            raise ValueError(f"{self.name}: expected (batch, samples), got shape {batch.shape}")
        if batch.shape[0] == 0 or batch.shape[1] == 0:
            return np.zeros(batch.shape, dtype=np.float32)
        if not np.all(np.isfinite(batch)):
            raise ValueError(f"{self.name}: batch holds NaN or infinite samples")
        out = self._apply(batch.astype(np.float32, copy=False), rng)
        if out.shape != batch.shape:  # a transform bug, never the caller's
            raise AssertionError(f"{self.name}: output shape {out.shape} != input {batch.shape}")
        return np.ascontiguousarray(out, dtype=np.float32)

    def _apply(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return batch.copy()

    def differentiable(self, batch: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        return _StraightThrough.apply(batch, self, rng)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sample_rate_hz={self.sample_rate_hz})"


def check_int(owner: str, field: str, value: object, *, low: int, high: int | None = None) -> None:
    """Validate an integer parameter of a transform config.

    Args:
        owner: Transform name, used in the message.
        field: Parameter name, used in the message.
        value: The value to check; ``bool`` is rejected even though it is an ``int``.
        low: Smallest accepted value (inclusive).
        high: Largest accepted value (inclusive), or ``None`` for no bound.

    Raises:
        ValueError: ``value`` is not an integer or lies outside ``[low, high]``.
    """
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise ValueError(f"{owner}: {field} must be an integer, got {value!r}")
    number = int(value)
    if number < low or (high is not None and number > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{owner}: {field} must be {bound}, got {value}")


def check_float(
    owner: str, field: str, value: object, *, low: float, high: float, open_ends: bool = True
) -> None:
    """Validate a real-valued parameter of a transform config.

    Args:
        owner: Transform name, used in the message.
        field: Parameter name, used in the message.
        value: The value to check (any real number except ``bool``).
        low: Lower bound.
        high: Upper bound.
        open_ends: If true the bounds themselves are rejected (``low < value < high``).

    Raises:
        ValueError: ``value`` is not a finite real number or lies outside the bounds.
    """
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ValueError(f"{owner}: {field} must be a finite number, got {value!r}")
    number = float(value)
    if not np.isfinite(number):
        raise ValueError(f"{owner}: {field} must be a finite number, got {value!r}")
    inside = low < number < high if open_ends else low <= number <= high
    if not inside:
        bound = f"({low}, {high})" if open_ends else f"[{low}, {high}]"
        raise ValueError(f"{owner}: {field} must be in {bound}, got {value}")
