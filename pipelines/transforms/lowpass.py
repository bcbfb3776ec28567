"""Low-pass filtering as a defence (Hussain et al., "WaveGuard: Understanding and Mitigating
Audio Adversarial Examples", USENIX Security 2021, the "filtering" transform).

A Butterworth low-pass (Butterworth, "On the Theory of Filter Amplifiers", 1930) run forwards
and backwards (``scipy.signal.sosfiltfilt``, Gustafsson's initial conditions) has zero phase:
the output is sample-aligned with the input and the magnitude response is squared.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.signal

from avsentry.pipelines.transforms.base import AudioTransform, check_float, check_int

MIN_CUTOFF_HZ = 20.0  # below the audio band: a lower cutoff would leave nothing to recognize


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LowPass(AudioTransform):
    """Zero-phase Butterworth low-pass filter.

    The forward-backward pass doubles the attenuation: -6 dB at ``cutoff_hz`` and an
    asymptotic slope of ``12 * order`` dB per octave. Deterministic; ``rng`` is unused.

    Attributes:
        sample_rate_hz: Input rate in Hz. Default 16000.
        cutoff_hz: Cutoff frequency in Hz, in [20, sample_rate_hz / 2). Default 4000.
        order: Order of the Butterworth prototype, in [1, 16]. Default 8.
    """

    name = "lowpass"

    sample_rate_hz: int = 16000
    cutoff_hz: float = 4000.0
    order: int = 8
    _sos: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_int(self.name, "sample_rate_hz", self.sample_rate_hz, low=1)
        nyquist_hz = self.sample_rate_hz / 2
        check_float(self.name, "cutoff_hz", self.cutoff_hz, low=0.0, high=nyquist_hz)
        if self.cutoff_hz < MIN_CUTOFF_HZ:
            raise ValueError(
                f"{self.name}: cutoff_hz must be in [{MIN_CUTOFF_HZ:g}, {nyquist_hz:g}), got {self.cutoff_hz}"
            )
        check_int(self.name, "order", self.order, low=1, high=16)
        sos = scipy.signal.butter(
            self.order, float(self.cutoff_hz), btype="lowpass", fs=self.sample_rate_hz, output="sos"
        )
        object.__setattr__(self, "_sos", sos)
        self._self_test()

    def _apply(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        sos = self._sos
        # Odd extension of 3 * (2 * sections + 1) samples, sosfiltfilt's default for
        # second-order sections; a shorter clip extends by as much as it has.
        padlen = min(3 * (2 * len(sos) + 1), batch.shape[1] - 1)
        filtered = scipy.signal.sosfiltfilt(sos, batch.astype(np.float64), axis=-1, padlen=padlen)
        return filtered.astype(np.float32)
