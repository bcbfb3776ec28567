"""Value objects shared across the defence core: model specs and smoothing outcomes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MODALITIES = ("audio", "video")
OUTPUT_KINDS = ("logits", "probabilities")


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """What a recognizer expects and returns.

    Attributes:
        name: Model name used in verdicts and ``ListModels``.
        modality: ``"audio"`` or ``"video"``.
        labels: Class names, index-aligned with the model output.
        sample_rate_hz: Audio sample rate the model expects.
        window_samples: Samples per input window.
        input_bounds: Valid input range ``(low, high)``; attacks clip to it.
        output: ``"logits"`` or ``"probabilities"``.
    """

    name: str
    modality: str = "audio"
    labels: tuple[str, ...]
    sample_rate_hz: int
    window_samples: int
    input_bounds: tuple[float, float] = (-1.0, 1.0)
    output: str = "logits"

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("model name must not be empty")
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must hold at least two distinct names")
        if self.sample_rate_hz <= 0 or self.window_samples <= 0:
            raise ValueError("sample_rate_hz and window_samples must be positive")
        lo, hi = self.input_bounds
        if not lo < hi:
            raise ValueError(f"input_bounds must satisfy low < high, got {self.input_bounds}")
        if self.output not in OUTPUT_KINDS:
            raise ValueError(f"output must be one of {OUTPUT_KINDS}, got {self.output!r}")

    @property
    def window_s(self) -> float:
        return self.window_samples / self.sample_rate_hz


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
