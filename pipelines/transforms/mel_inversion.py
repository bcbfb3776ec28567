"""Mel-spectrogram extraction and inversion as a defence (Hussain et al., "WaveGuard: Understanding
and Mitigating Audio Adversarial Examples", USENIX Security 2021, "Mel Extraction - Inversion").

The clip is reduced to a mel power spectrogram (Stevens, Volkmann and Newman, 1937, for the mel
scale), which drops the phase and smooths the fine spectral detail, then brought back to a
waveform: a least-squares inverse of the mel filterbank, then phase retrieval by the fast
Griffin-Lim algorithm (Griffin and Lim, "Signal Estimation from Modified Short-Time Fourier
Transform", IEEE TASSP 1984; Perraudin, Balazs and Sondergaard, "A Fast Griffin-Lim Algorithm",
WASPAA 2013).

Griffin-Lim recovers a signal only up to a global sign and a small time shift. Starting from zero
phase makes it deterministic; the output is then re-aligned to the input by cross-correlation
over at most ``hop_length`` samples either way, and its sign matched. Only those two choices
depend on the input's waveform; everything else comes from its mel spectrogram.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import scipy.signal
import torch
import torchaudio

from avsentry.pipelines.transforms.base import AudioTransform, check_int

_MOMENTUM = 0.99  # torchaudio's default for fast Griffin-Lim


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MelInversion(AudioTransform):
    """Mel spectrogram -> least-squares inverse mel scale -> Griffin-Lim, re-aligned.

    Deterministic (zero-phase initialisation); ``rng`` is unused.

    Attributes:
        sample_rate_hz: Input rate in Hz. Default 16000.
        n_fft: STFT size (and Hann window length) in samples, in [16, 8192]. Default 512
            (32 ms at 16 kHz).
        hop_length: STFT hop in samples, in [max(1, n_fft // 16), n_fft // 2]. Default 128
            (8 ms at 16 kHz).
        n_mels: Mel bands from 0 Hz to Nyquist, in [1, n_fft // 2 + 1], and every band must
            cover at least one STFT bin. Default 80.
        n_iter: Griffin-Lim iterations, in [1, 256]. Default 32 (each costs an STFT and an
            inverse STFT of the clip).
    """

    name = "mel_inversion"

    sample_rate_hz: int = 16000
    n_fft: int = 512
    hop_length: int = 128
    n_mels: int = 80
    n_iter: int = 32
    _mel: torchaudio.transforms.MelSpectrogram = dataclasses.field(init=False, repr=False, compare=False)
    _inverse_filterbank: torch.Tensor = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_int(self.name, "sample_rate_hz", self.sample_rate_hz, low=1)
        check_int(self.name, "n_fft", self.n_fft, low=16, high=8192)
        shortest_hop = max(1, self.n_fft // 16)
        check_int(self.name, "hop_length", self.hop_length, low=shortest_hop, high=self.n_fft // 2)
        check_int(self.name, "n_mels", self.n_mels, low=1, high=self.n_fft // 2 + 1)
        check_int(self.name, "n_iter", self.n_iter, low=1, high=256)
        with warnings.catch_warnings():
            # torchaudio warns about empty bands; they are reported below as a ValueError.
            warnings.simplefilter("ignore", UserWarning)
            mel = torchaudio.transforms.MelSpectrogram(
                sample_rate=self.sample_rate_hz,
                n_fft=self.n_fft,
                hop_length=self.hop_length,
                n_mels=self.n_mels,
                power=2.0,
            )
        filterbank = mel.mel_scale.fb  # (n_fft // 2 + 1, n_mels)
        if bool((filterbank.max(dim=0).values == 0).any()):
            raise ValueError(
                f"{self.name}: n_mels={self.n_mels} is too many for n_fft={self.n_fft}: "
                "some mel bands cover no STFT bin"
            )
        # Minimum-norm least squares, the solution torchaudio's InverseMelScale(driver="gelsd")
        # computes per call, here factored once: (n_fft // 2 + 1, n_mels).
        object.__setattr__(self, "_mel", mel)
        object.__setattr__(self, "_inverse_filterbank", torch.linalg.pinv(filterbank.T))
        self._self_test()

    def _apply(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        samples = batch.shape[1]
        length = max(samples, self.n_fft)  # reflect padding in the STFT needs > n_fft // 2
        waveform = torch.zeros(batch.shape[0], length)
        waveform[:, :samples] = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        with torch.no_grad():
            mel = self._mel(waveform)  # (batch, n_mels, frames), power
            power = torch.relu(self._inverse_filterbank @ mel)  # (batch, n_freqs, frames)
            restored = torchaudio.functional.griffinlim(
                power,
                window=torch.hann_window(self.n_fft),
                n_fft=self.n_fft,
                hop_length=self.hop_length,
                win_length=self.n_fft,
                power=2.0,
                n_iter=self.n_iter,
                momentum=_MOMENTUM,
                length=length,
                rand_init=False,
            )
        restored_np = restored.numpy()[:, :samples]
        return np.stack(
            [_align(out, ref, max_lag=self.hop_length) for out, ref in zip(restored_np, batch, strict=True)]
        )


def _align(signal: np.ndarray, reference: np.ndarray, *, max_lag: int) -> np.ndarray:
    """Shift and sign-flip ``signal`` to best match ``reference``.

    Args:
        signal: ``(samples,)`` waveform to move.
        reference: ``(samples,)`` waveform to match.
        max_lag: Largest shift tried, in samples, either way.

    Returns:
        ``(samples,)`` float32: ``signal`` delayed by the lag that maximises the absolute
        cross-correlation (vacated samples are zero), times the sign of that correlation.
    """
    samples = signal.shape[0]
    correlation = scipy.signal.correlate(
        signal.astype(np.float64), reference.astype(np.float64), mode="full", method="fft"
    )
    lags = scipy.signal.correlation_lags(samples, samples, mode="full")
    window = np.abs(lags) <= max_lag
    best = int(np.argmax(np.abs(correlation[window])))
    lag = int(lags[window][best])  # signal[t + lag] best matches reference[t]
    sign = -1.0 if correlation[window][best] < 0 else 1.0
    aligned = np.zeros(samples, dtype=np.float32)
    if lag >= 0:
        aligned[: samples - lag] = signal[lag:]
    else:
        aligned[-lag:] = signal[: samples + lag]
    return sign * aligned
