"""Training-time data augmentation and procedural background audio.

Turns trimmed synthetic clips into realistic 1 s windows: the word at a random position, speed
perturbation (x0.85-1.15, Ko et al., Interspeech 2015), gain, simple reverberation (exponentially
decaying noise impulse responses), additive white/pink/brown noise at 5-30 dB SNR, telephone
band-pass (300-3400 Hz) with optional mu-law companding, random low-pass. The
``_background_`` class is made here too: silence, coloured noise, mains hum, tones and clicks.
SpecAugment (Park et al., 2019) masks are applied on log-mel features in :mod:`tools.train`.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.signal import butter, fftconvolve, sosfilt

SAMPLE_RATE_HZ = 16_000


_NOISE_BANK_ROWS = 256
_NOISE_ALPHA = {"white": 0.0, "pink": 1.0, "brown": 2.0}


@lru_cache(maxsize=8)
def _noise_bank(n: int, colour: str) -> np.ndarray:
    """``(_NOISE_BANK_ROWS, n)`` unit-RMS rows of 1/f^a noise, made once per length and colour
    from a fixed seed. Each row is one period of an inverse real FFT, so any circular shift of
    it is another draw with exactly the same spectrum."""
    alpha = _NOISE_ALPHA[colour]
    rng = np.random.default_rng([n, int(alpha)])
    spec = np.fft.rfft(rng.standard_normal((_NOISE_BANK_ROWS, n)), axis=1)
    f = np.fft.rfftfreq(n)
    f[0] = f[1]
    x = np.fft.irfft(spec / f ** (alpha / 2), n, axis=1)
    x /= np.sqrt(np.mean(x**2, axis=1, keepdims=True)) + 1e-12
    bank = x.astype(np.float32)
    bank.flags.writeable = False
    return bank


def coloured_noise(rng: np.random.Generator, n: int, colour: str) -> np.ndarray:
    """Unit-RMS noise with a 1/f^a spectrum: white (a=0), pink (a=1), brown (a=2).

    A random row of a per-length bank (:func:`_noise_bank`), circularly shifted and signed at
    random: no FFT per call, which made noise the largest cost of a training batch.
    """
    if colour not in _NOISE_ALPHA:
        raise ValueError(f"noise colour must be one of {sorted(_NOISE_ALPHA)}, got {colour!r}")
    row = _noise_bank(n, colour)[rng.integers(_NOISE_BANK_ROWS)]
    return np.roll(row, int(rng.integers(n))) * np.float32(rng.choice((-1.0, 1.0)))


@lru_cache(maxsize=256)
def _lowpass(cutoff_hz: int) -> np.ndarray:
    return butter(4, cutoff_hz, btype="low", fs=SAMPLE_RATE_HZ, output="sos")


def background(rng: np.random.Generator, n: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """One window of non-speech: silence, noise, hum, tones or clicks, at a random level."""
    t = np.arange(n) / SAMPLE_RATE_HZ
    kind = rng.choice(["silence", "noise", "noise", "hum", "tones", "clicks"])
    if kind == "silence":
        return (rng.standard_normal(n) * 10 ** rng.uniform(-5, -3.5)).astype(np.float32)
    if kind == "noise":
        x = coloured_noise(rng, n, str(rng.choice(["white", "pink", "brown"])))
    elif kind == "hum":
        f0 = rng.choice([50.0, 60.0]) * rng.uniform(0.98, 1.02)
        x = sum(
            rng.uniform(0.1, 1) / k * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6.3))
            for k in range(1, 8)
        )
        x = np.asarray(x) + 0.05 * coloured_noise(rng, n, "pink")
    elif kind == "tones":
        x = np.zeros(n)
        for _ in range(rng.integers(1, 4)):
            f = rng.uniform(200, 4000)
            start, dur = rng.integers(0, n), rng.integers(n // 20, n)
            seg = np.sin(2 * np.pi * f * t[: max(0, min(dur, n - start))])
            x[start : start + len(seg)] += seg
        x += 0.05 * coloured_noise(rng, n, "white")
    else:  # clicks
        x = 0.02 * coloured_noise(rng, n, "pink")
        for pos in rng.integers(0, n - 200, size=rng.integers(1, 12)):
            x[pos : pos + 200] += (
                rng.uniform(0.2, 1) * np.exp(-np.arange(200) / rng.uniform(5, 40)) * rng.standard_normal(200)
            )
    x = np.asarray(x, dtype=np.float32)
    peak = float(np.max(np.abs(x))) + 1e-9
    return x / peak * 10 ** rng.uniform(-3, -0.1)


def place(
    rng: np.random.Generator, clip: np.ndarray, n: int = SAMPLE_RATE_HZ, *, speed: bool = True
) -> np.ndarray:
    """Speed-perturb ``clip`` and put it at a random position in an ``n``-sample window.

    Clips longer than the window (phrases) contribute a random ``n``-sample crop.
    """
    if speed:
        factor = rng.uniform(0.85, 1.15)
        m = max(2, int(round(len(clip) / factor)))
        clip = np.interp(np.linspace(0, len(clip) - 1, m), np.arange(len(clip)), clip).astype(np.float32)
    out = np.zeros(n, dtype=np.float32)
    if len(clip) >= n:
        start = rng.integers(0, len(clip) - n + 1)
        out[:] = clip[start : start + n]
    else:
        start = rng.integers(0, n - len(clip) + 1)
        out[start : start + len(clip)] = clip
    return out


def degrade(rng: np.random.Generator, batch: np.ndarray, *, noise_prob: float = 0.8) -> np.ndarray:
    """Channel effects on a ``(batch, samples)`` window batch; returns a new array."""
    x = batch.copy()
    b, n = x.shape
    for i in range(b):
        peak = np.max(np.abs(x[i])) + 1e-9
        x[i] *= 10 ** rng.uniform(-1.6, -0.05) / peak
        if rng.random() < 0.3:  # reverberation: decaying noise IR, RT60 0.1-0.6 s
            rt60 = rng.uniform(0.1, 0.6)
            length = int(rt60 * SAMPLE_RATE_HZ)
            ir = rng.standard_normal(length) * np.exp(-6.9 * np.arange(length) / length)
            ir[0] = 1.0
            wet = fftconvolve(x[i], ir / np.sqrt(np.sum(ir**2)))[:n]
            mix = rng.uniform(0.2, 0.8)
            x[i] = (1 - mix) * x[i] + mix * wet * np.max(np.abs(x[i])) / (np.max(np.abs(wet)) + 1e-9)
        if rng.random() < noise_prob:
            snr_db = rng.uniform(5, 30)
            sig = np.sqrt(np.mean(x[i] ** 2)) + 1e-9
            x[i] += (
                coloured_noise(rng, n, str(rng.choice(["white", "pink", "brown"])))
                * sig
                / 10 ** (snr_db / 20)
            )
    for i in range(b):
        r = rng.random()
        if r < 0.15:  # telephone band
            x[i] = sosfilt(_TELEPHONE, x[i])
            if rng.random() < 0.5:
                x[i] = mu_law(x[i])
        elif r < 0.35:
            cutoff_hz = 50 * int(rng.uniform(2000, 7000) / 50)  # designs cached on a 50 Hz grid
            x[i] = sosfilt(_lowpass(cutoff_hz), x[i])
    return np.clip(x, -1, 1, out=x)


_TELEPHONE = butter(4, [300.0, 3400.0], btype="band", fs=SAMPLE_RATE_HZ, output="sos")


def mu_law(x: np.ndarray, mu: int = 255) -> np.ndarray:
    """8-bit mu-law companding round trip (ITU-T G.711)."""
    y = np.sign(x) * np.log1p(mu * np.abs(np.clip(x, -1, 1))) / np.log1p(mu)
    y = np.round((y + 1) / 2 * mu) / mu * 2 - 1
    return (np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu).astype(np.float32)
