"""Down- and up-sampling as a defence (Yang et al., "Characterizing Audio Adversarial Examples
Using Temporal Dependency", ICLR 2019; Hussain et al., "WaveGuard: Understanding and Mitigating
Audio Adversarial Examples", USENIX Security 2021).

Resampling to a lower rate and back removes everything above the intermediate Nyquist frequency,
a band recognizers barely need but perturbations may use. Both steps use torchaudio's
band-limited (windowed-sinc, Hann window) interpolation (Smith, "Digital Audio Resampling",
https://ccrma.stanford.edu/~jos/resample/), whose kernel is symmetric: the output is aligned.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torchaudio

from avsentry.pipelines.transforms.base import AudioTransform, check_int

# Bound on (rate / gcd) * (intermediate / gcd), the size of torchaudio's sinc kernel in taps:
# co-prime rates such as 16000 and 7919 would build a 500 MB kernel per call.
MAX_KERNEL_PHASES = 1_000_000


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ResampleRoundTrip(AudioTransform):
    """Resample each clip to ``intermediate_rate_hz`` and back to ``sample_rate_hz``.

    Deterministic; ``rng`` is unused.

    Attributes:
        sample_rate_hz: Input and output rate in Hz. Default 16000.
        intermediate_rate_hz: The lower rate in between, in [1000, sample_rate_hz). Default 8000,
            which keeps the telephone band up to about 4 kHz. The two rates divided by their
            greatest common divisor must multiply to at most 10**6 (the size of torchaudio's
            polyphase kernel): 8000, 11025 or 12000 are fine for 16000, 7919 is not.
    """

    name = "resample"

    sample_rate_hz: int = 16000
    intermediate_rate_hz: int = 8000

    def __post_init__(self) -> None:
        check_int(self.name, "sample_rate_hz", self.sample_rate_hz, low=1)
        check_int(
            self.name,
            "intermediate_rate_hz",
            self.intermediate_rate_hz,
            low=1000,
            high=max(1000, self.sample_rate_hz - 1),
        )
        if self.intermediate_rate_hz >= self.sample_rate_hz:
            raise ValueError(
                f"{self.name}: intermediate_rate_hz must be below sample_rate_hz "
                f"({self.sample_rate_hz}), got {self.intermediate_rate_hz}"
            )
        common = math.gcd(self.sample_rate_hz, self.intermediate_rate_hz)
        if (self.sample_rate_hz // common) * (self.intermediate_rate_hz // common) > MAX_KERNEL_PHASES:
            raise ValueError(
                f"{self.name}: intermediate_rate_hz={self.intermediate_rate_hz} shares too small a "
                f"common divisor ({common}) with sample_rate_hz={self.sample_rate_hz}: the resampling "
                f"kernel would have {self.sample_rate_hz // common} x "
                f"{self.intermediate_rate_hz // common} taps (at most {MAX_KERNEL_PHASES})"
            )
        self._self_test()

    def _apply(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        samples = batch.shape[1]
        waveform = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        low = torchaudio.functional.resample(waveform, self.sample_rate_hz, self.intermediate_rate_hz)
        back = torchaudio.functional.resample(low, self.intermediate_rate_hz, self.sample_rate_hz)
        back = back[:, :samples]
        if back.shape[1] < samples:
            back = torch.nn.functional.pad(back, (0, samples - back.shape[1]))
        return back.numpy()
