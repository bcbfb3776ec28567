"""Value objects shared across the defence core: input specs per modality, model specs and
smoothing outcomes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

MODALITIES = ("audio", "video")
OUTPUT_KINDS = ("logits", "probabilities")


def _check_bounds(bounds: tuple[float, float]) -> None:
    lo, hi = bounds
    if not lo < hi:
        raise ValueError(f"input bounds must satisfy low < high, got {bounds}")


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioInput:
    """What an audio model takes: mono windows of ``window_samples`` at ``sample_rate_hz``.

    Attributes:
        sample_rate_hz: Audio sample rate the model expects (streams are resampled to it).
        window_samples: Samples per window.
        bounds: Valid sample range ``(low, high)``; attacks clip to it. Default ``(-1, 1)``.
    """

    modality: ClassVar[str] = "audio"
    #: Smoothing's name for noise added to the window itself.
    identity_representation: ClassVar[str] = "waveform"

    sample_rate_hz: int
    window_samples: int
    bounds: tuple[float, float] = (-1.0, 1.0)

    def __post_init__(self) -> None:
        if self.sample_rate_hz <= 0 or self.window_samples <= 0:
            raise ValueError("sample_rate_hz and window_samples must be positive")
        _check_bounds(self.bounds)

    @property
    def shape(self) -> tuple[int, ...]:
        """One window: ``(window_samples,)``."""
        return (self.window_samples,)

    @property
    def duration_s(self) -> float:
        return self.window_samples / self.sample_rate_hz

    @property
    def rate_hz(self) -> float:
        """Steps of the time axis (the first of :attr:`shape`) per second."""
        return float(self.sample_rate_hz)


@dataclass(frozen=True, slots=True, kw_only=True)
class VideoInput:
    """What a video model takes: clips of ``frames`` RGB frames of ``height`` x ``width``.

    A clip is ``(frames, height, width, 3)`` float32 RGB in ``bounds`` (default [0, 1]).

    Attributes:
        frames: Frames per clip.
        height / width: Frame size in pixels (streams are scaled to it).
        fps: Frame rate the model expects, frames per second.
        bounds: Valid pixel range ``(low, high)``; attacks clip to it. Default ``(0, 1)``.
    """

    modality: ClassVar[str] = "video"
    identity_representation: ClassVar[str] = "pixels"

    frames: int
    height: int
    width: int
    fps: float
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if min(self.frames, self.height, self.width) <= 0:
            raise ValueError("frames, height and width must be positive")
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        _check_bounds(self.bounds)

    @property
    def shape(self) -> tuple[int, ...]:
        """One clip: ``(frames, height, width, 3)``."""
        return (self.frames, self.height, self.width, 3)

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps

    @property
    def rate_hz(self) -> float:
        return float(self.fps)


InputSpec = AudioInput | VideoInput


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """What a recognizer expects and returns.

    Attributes:
        name: Model name used in verdicts and ``ListModels``.
        labels: Class names, index-aligned with the model output.
        input: The input spec of the model's modality (:class:`AudioInput`, :class:`VideoInput`).
        output: ``"logits"`` or ``"probabilities"``.
    """

    name: str
    labels: tuple[str, ...]
    input: InputSpec
    output: str = "logits"

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("model name must not be empty")
        if not isinstance(self.input, AudioInput | VideoInput):
            raise ValueError(f"input must be an AudioInput or a VideoInput, got {self.input!r}")
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must hold at least two distinct names")
        if self.output not in OUTPUT_KINDS:
            raise ValueError(f"output must be one of {OUTPUT_KINDS}, got {self.output!r}")

    @property
    def modality(self) -> str:
        return self.input.modality

    @property
    def window_shape(self) -> tuple[int, ...]:
        """One window (audio) or clip (video), without the batch axis."""
        return self.input.shape

    @property
    def input_bounds(self) -> tuple[float, float]:
        return self.input.bounds

    @property
    def window_s(self) -> float:
        """Seconds one window or clip spans."""
        return self.input.duration_s

    @property
    def audio(self) -> AudioInput:
        """The audio input spec; raises for a model of another modality."""
        if not isinstance(self.input, AudioInput):
            raise ValueError(f"model {self.name!r} takes {self.modality}, not audio")
        return self.input

    @property
    def video(self) -> VideoInput:
        """The video input spec; raises for a model of another modality."""
        if not isinstance(self.input, VideoInput):
            raise ValueError(f"model {self.name!r} takes {self.modality}, not video")
        return self.input

    # shortcuts for audio-only code paths (codecs, resampling, audio attacks)
    @property
    def sample_rate_hz(self) -> int:
        return self.audio.sample_rate_hz

    @property
    def window_samples(self) -> int:
        return self.audio.window_samples


@dataclass(frozen=True, slots=True, kw_only=True)
class Prediction:
    """A randomized-smoothing decision (Cohen et al., PREDICT).

    Attributes:
        label: Winning class index.
        counts: Votes per class over the noisy samples, ``(classes,)``.
        p_value: Two-sided binomial test of top-1 vs top-2 counts.
    """

    label: int
    counts: np.ndarray = field(repr=False)
    p_value: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Certified:
    """A certified randomized-smoothing decision (Cohen et al., CERTIFY).

    Attributes:
        label: Class index ``c_A`` selected on the first ``n0`` samples.
        radius: Certified L2 radius ``sigma * Phi^-1(p_A_lower)`` in the units of the
            representation the noise was added in.
        p_lower: One-sided Clopper-Pearson lower confidence bound on ``p_A``.
        counts: Votes per class over the ``n`` estimation samples.
    """

    label: int
    radius: float
    p_lower: float
    counts: np.ndarray = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Abstain:
    """The smoothed classifier declines to answer.

    Attributes:
        counts: Votes per class.
        p_value: For PREDICT, the binomial test p-value (> alpha). ``nan`` for CERTIFY.
        p_lower: For CERTIFY, the lower bound on ``p_A`` (< 0.5). ``nan`` for PREDICT.
    """

    counts: np.ndarray = field(repr=False)
    p_value: float = float("nan")
    p_lower: float = float("nan")
