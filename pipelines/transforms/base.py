"""Input transforms used as defences (feature squeezing, Xu et al., NDSS 2018).

A transform maps a batch of windows of one modality (audio waveforms ``(batch, samples)``, video
clips ``(batch, frames, height, width, 3)``) to a batch of the same shape, aligned with its input
(sample for sample, frame for frame), and never mutates the input. For adaptive attacks each
transform also offers a gradient estimate; the default is the identity (BPDA, Athalye et al.,
ICML 2018): the forward pass runs the real transform, the backward pass treats it as ``x -> x``.

A deterministic transform whose output on a clip is the concatenation of its outputs on fixed,
clip-relative parts of it (along time, the first axis of an item), each depending only on that
part's samples, is a :class:`SegmentedTransform`; the detector then runs the parts on a shared
thread pool and reuses a part that overlapping windows of one stream share.
"""

from __future__ import annotations

import numbers
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class Transform(Protocol):
    """A defence transform on batches of windows of one modality.

    Attributes:
        name: Short identifier used in verdicts and configs (``"mp3"``, ``"h264"``...).
        modality: ``"audio"`` or ``"video"``: the windows it takes.
    """

    name: str
    modality: ClassVar[str]

    def apply(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Transform a batch.

        Args:
            batch: ``(batch, samples)`` float32 waveforms in [-1, 1], or ``(batch, frames,
                height, width, 3)`` float32 RGB clips in [0, 1]. Not modified.
            rng: Seeded generator for any randomness (unused by deterministic transforms).

        Returns:
            The same shape, float32, aligned with ``batch``.
        """
        ...

    def differentiable(self, batch: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Forward = :meth:`apply`; backward = this transform's gradient estimate."""
        ...


@runtime_checkable
class SegmentedTransform(Transform, Protocol):
    """A deterministic transform applied part by part.

    ``apply`` on a clip of ``samples`` samples equals, for every clip, the concatenation of
    ``apply_segment(clip[start:stop])`` over ``segment_bounds(samples)``; each part's output is a
    function of that part's samples alone, so equal parts give equal outputs wherever they sit.
    """

    def segment_bounds(self, samples: int) -> tuple[tuple[int, int], ...]:
        """The ``(start, stop)`` ranges along time (samples or frames) of the parts of a
        ``samples``-long item, in order, covering it without overlap (some may be empty when
        ``samples`` is tiny)."""
        ...

    def apply_segment(self, segment: np.ndarray) -> np.ndarray:
        """Transform one part of one item (float32, finite) -> the same shape, aligned.

        Safe to call from several threads at once.
        """
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
    """Shared behaviour of every modality's transforms: input validation and the identity (BPDA)
    gradient estimate.

    A modality's base (:class:`AudioTransform`, :class:`VideoTransform`) fixes the item shape
    (``item_ndim`` axes after the batch), the context the transform is built with
    (``context_fields``: what it learns from the model's input spec, e.g. ``sample_rate_hz``), and
    a probe for :meth:`_self_test`. Subclasses implement :meth:`_apply` on a validated float32
    batch they must not modify.
    """

    name: str = "identity"
    modality: ClassVar[str] = ""
    #: Parameters set from the model's input spec, not from a transform spec.
    context_fields: ClassVar[tuple[str, ...]] = ()
    #: Axes of one item (1 for audio ``(samples,)``, 4 for video ``(frames, h, w, 3)``).
    item_ndim: ClassVar[int] = 1
    item_axes: ClassVar[str] = "samples"
    #: True when the output depends on ``rng`` (then only same-seed reproducibility holds, not
    #: batch == per-item).
    randomized: bool = False

    def apply(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Transform a batch; see :meth:`Transform.apply`.

        Raises:
            ValueError: ``batch`` has the wrong number of axes or holds NaN or infinite values.
        """
        batch = np.asarray(batch)
        if batch.ndim != 1 + self.item_ndim:
            raise ValueError(f"{self.name}: expected (batch, {self.item_axes}), got shape {batch.shape}")
        if batch.size == 0:
            return np.zeros(batch.shape, dtype=np.float32)
        if not np.all(np.isfinite(batch)):
            raise ValueError(f"{self.name}: batch holds NaN or infinite values")
        out = self._apply(batch.astype(np.float32, copy=False), rng)
        if out.shape != batch.shape:  # a transform bug, never the caller's
            raise AssertionError(f"{self.name}: output shape {out.shape} != input {batch.shape}")
        return np.ascontiguousarray(out, dtype=np.float32)

    def _apply(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return batch.copy()

    def differentiable(self, batch: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        return _StraightThrough.apply(batch, self, rng)

    def _probe(self) -> np.ndarray:
        """A short batch of typical and extreme items for :meth:`_self_test`."""
        raise NotImplementedError

    def _self_test(self) -> None:
        """Run the transform once on a short probe so that parameters it cannot work with fail
        here, as a ``ValueError``, not later on every window.

        Raises:
            ValueError: The transform raised or returned non-finite values.
        """
        try:
            out = self.apply(self._probe(), np.random.default_rng(0))
        except Exception as error:  # whatever the library raised, reported as a bad parameter
            raise ValueError(f"{self.name}: cannot run with {self!r}: {error}") from error
        if not np.all(np.isfinite(out)):
            raise ValueError(f"{self.name}: {self!r} gives non-finite values")


class AudioTransform(BaseTransform):
    """Base of the audio transforms: ``(batch, samples)`` mono waveforms in [-1, 1] at
    ``sample_rate_hz``."""

    modality: ClassVar[str] = "audio"
    context_fields: ClassVar[tuple[str, ...]] = ("sample_rate_hz",)
    item_ndim: ClassVar[int] = 1
    item_axes: ClassVar[str] = "samples"

    def __init__(self, *, sample_rate_hz: int) -> None:
        if sample_rate_hz <= 0:
            raise ValueError(f"sample_rate_hz must be positive, got {sample_rate_hz}")
        self.sample_rate_hz = int(sample_rate_hz)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sample_rate_hz={self.sample_rate_hz})"

    def _probe(self, seconds: float = 0.05) -> np.ndarray:
        """Silence, then a full-scale sweep."""
        samples = max(1, round(seconds * self.sample_rate_hz))
        t = np.arange(samples) / self.sample_rate_hz
        sweep = np.sin(2 * np.pi * (50.0 + 0.2 * self.sample_rate_hz * t / (2 * seconds)) * t)
        return np.stack([np.zeros(samples), 0.9 * sweep]).astype(np.float32)


class VideoTransform(BaseTransform):
    """Base of the video transforms: ``(batch, frames, height, width, 3)`` RGB clips in [0, 1]
    at ``fps`` frames per second. Every frame of the input has one frame in the output, in
    order."""

    modality: ClassVar[str] = "video"
    context_fields: ClassVar[tuple[str, ...]] = ("fps",)
    item_ndim: ClassVar[int] = 4
    item_axes: ClassVar[str] = "frames, height, width, 3"

    def __init__(self, *, fps: float) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = float(fps)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fps={self.fps})"

    def _check_fps(self) -> None:
        """For a subclass's ``__post_init__``: the frame rate it was built with is positive."""
        if not self.fps > 0:
            raise ValueError(f"{self.name}: fps must be positive, got {self.fps}")

    def _probe(self) -> np.ndarray:
        """A black clip and a clip of a white square moving over a colour gradient (32x32)."""
        frames, size = 4, 32
        yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
        base = np.stack([yy, xx, 1 - yy], axis=-1)
        clip = np.repeat(base[None], frames, axis=0)
        for f in range(frames):
            clip[f, 8:16, 4 + 4 * f : 12 + 4 * f] = 1.0
        return np.stack([np.zeros_like(clip), clip]).astype(np.float32)


def to_pixels(clips: np.ndarray) -> np.ndarray:
    """Float RGB in [0, 1] (clipped) -> uint8 grey levels, rounded to nearest; the same values as
    ``rint(clip(x, 0, 1) * 255)`` in fewer passes over the data."""
    scaled = np.multiply(clips, np.float32(255.0), dtype=np.float32)
    np.clip(scaled, 0.0, 255.0, out=scaled)
    np.rint(scaled, out=scaled)
    return scaled.astype(np.uint8)


def from_pixels(pixels: np.ndarray) -> np.ndarray:
    """uint8 grey levels -> float32 RGB in [0, 1] (``x / 255`` in float32, one pass)."""
    return np.divide(pixels, np.float32(255.0), dtype=np.float32)


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
