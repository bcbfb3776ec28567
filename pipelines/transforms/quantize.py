"""Bit-depth reduction as a defence (feature squeezing; Xu et al., "Feature Squeezing: Detecting
Adversarial Examples in Deep Neural Networks", NDSS 2018).

Rounding every sample to a coarse uniform grid erases perturbations smaller than half a step.
Applied to audio by Yang et al., "Characterizing Audio Adversarial Examples Using Temporal
Dependency", ICLR 2019 (their "quantization" baseline).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from avsentry.pipelines.transforms.base import AudioTransform, check_int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Quantize(AudioTransform):
    """Clip to [-1, 1] and round to a symmetric mid-tread grid of ``2**bits - 1`` levels.

    The step is ``1 / (2**(bits - 1) - 1)``; zero is a level, so silence stays silent, and the
    error on in-range input is at most half a step. Deterministic; ``rng`` is unused.

    Attributes:
        sample_rate_hz: Input rate in Hz (the transform does not depend on it). Default 16000.
        bits: Bit depth, in [2, 16]. Default 8 (step 1/127, about -48 dB re full scale).
    """

    name = "quantize"

    sample_rate_hz: int = 16000
    bits: int = 8

    def __post_init__(self) -> None:
        check_int(self.name, "sample_rate_hz", self.sample_rate_hz, low=1)
        check_int(self.name, "bits", self.bits, low=2, high=16)
        self._self_test()

    @property
    def step(self) -> float:
        """Distance between adjacent levels, in full-scale units."""
        return 1.0 / (2 ** (self.bits - 1) - 1)

    def _apply(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        levels = 2 ** (self.bits - 1) - 1
        return (np.round(np.clip(batch, -1.0, 1.0) * levels) / levels).astype(np.float32)
