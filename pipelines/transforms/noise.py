"""Additive Gaussian noise at a fixed signal-to-noise ratio, as a randomized squeezer.

Adversarial perturbations found by gradient attacks sit in directions the recognizer is
hypersensitive to; random noise well above the perturbation's level but below what the model
was trained to tolerate drowns them, while clean speech keeps its label (Rajaratnam & Kalita,
"Noise flooding for detecting audio adversarial examples against automatic speech recognition",
ISSPIT 2018). The noise level follows each clip's RMS, so loud and quiet windows are squeezed
alike; unlike randomized smoothing (fixed sigma) this gives no certificate, only a signal.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from avsentry.pipelines.transforms.base import AudioTransform, check_float, check_int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GaussianNoise(AudioTransform):
    """Add white Gaussian noise ``snr_db`` below each clip's RMS, then clip to [-1, 1].

    Attributes:
        sample_rate_hz: Input rate in Hz (unused by the maths). Default 16000.
        snr_db: Signal-to-noise ratio of the added noise, in dB, in [-20, 80]. Default 10.
        floor: Smallest noise standard deviation (keeps digital silence from staying exact),
            in [0, 1]. Default 1e-4 (-80 dBFS).
    """

    name = "noise"
    randomized = True

    sample_rate_hz: int = 16000
    snr_db: float = 10.0
    floor: float = 1e-4

    def __post_init__(self) -> None:
        check_int(self.name, "sample_rate_hz", self.sample_rate_hz, low=1)
        check_float(self.name, "snr_db", self.snr_db, low=-20.0, high=80.0, open_ends=False)
        check_float(self.name, "floor", self.floor, low=0.0, high=1.0, open_ends=False)
        self._self_test()

    def _apply(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        rms = np.sqrt(np.mean(np.square(batch, dtype=np.float64), axis=1, keepdims=True))
        sigma = np.maximum(rms * 10 ** (-self.snr_db / 20), self.floor)
        noisy = batch + sigma * rng.standard_normal(batch.shape)
        return np.clip(noisy, -1.0, 1.0).astype(np.float32)
