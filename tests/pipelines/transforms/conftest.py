"""Fixtures for the transform tests: seeded, synthesized signals at 16 kHz, plus real speech from
espeak-ng when it is installed."""

from __future__ import annotations

import shutil
import subprocess
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import torch

SAMPLE_RATE_HZ = 16000


def speech_like(rng: np.random.Generator, *, seconds: float = 1.0) -> np.ndarray:
    """A vowel-like test signal: a gliding glottal pulse train through formant resonators,
    syllable-rate amplitude modulation and a little fricative noise, high-passed at 70 Hz.

    Returns:
        ``(samples,)`` float32 at 16 kHz, peak 0.5.
    """
    n = int(seconds * SAMPLE_RATE_HZ)
    t = np.arange(n) / SAMPLE_RATE_HZ
    f0 = 140.0 + 40.0 * np.sin(2 * np.pi * 1.3 * t) + rng.normal(0.0, 1.0, n).cumsum() * 0.02
    phase = np.cumsum(f0) / SAMPLE_RATE_HZ
    source = (np.diff(np.floor(phase), prepend=0.0) > 0).astype(np.float64)
    source = scipy.signal.lfilter([1.0], [1.0, -0.95], source)  # glottal roll-off
    voiced = np.zeros(n)
    for formant_hz, bandwidth_hz, gain in ((650, 80, 1.0), (1150, 100, 0.6), (2600, 150, 0.3)):
        radius = np.exp(-np.pi * bandwidth_hz / SAMPLE_RATE_HZ)
        theta = 2 * np.pi * formant_hz / SAMPLE_RATE_HZ
        voiced += gain * scipy.signal.lfilter([1.0], [1.0, -2 * radius * np.cos(theta), radius**2], source)
    sos = scipy.signal.butter(4, [2500, 6000], btype="bandpass", fs=SAMPLE_RATE_HZ, output="sos")
    fricative = scipy.signal.sosfilt(sos, rng.normal(0.0, 1.0, n))
    envelope = 0.5 * (1 - np.cos(2 * np.pi * 4.0 * t))  # 4 Hz syllables
    signal = envelope * voiced / np.abs(voiced).max() + 0.05 * (1 - envelope) * fricative
    # Like a real microphone signal: no DC or sub-audio drift from the one-sided pulse train.
    highpass = scipy.signal.butter(4, 70, btype="highpass", fs=SAMPLE_RATE_HZ, output="sos")
    signal = scipy.signal.sosfiltfilt(highpass, signal)
    return (0.5 * signal / np.abs(signal).max()).astype(np.float32)


def broadband(rng: np.random.Generator, *, seconds: float = 1.0) -> np.ndarray:
    """Gaussian noise band-limited to 100-6000 Hz: a sharp cross-correlation peak.

    Returns:
        ``(samples,)`` float32 at 16 kHz, peak 0.3.
    """
    n = int(seconds * SAMPLE_RATE_HZ)
    sos = scipy.signal.butter(6, [100, 6000], btype="bandpass", fs=SAMPLE_RATE_HZ, output="sos")
    noise = scipy.signal.sosfilt(sos, rng.normal(0.0, 1.0, n))
    return (0.3 * noise / np.abs(noise).max()).astype(np.float32)


def chirp(*, seconds: float = 1.0) -> np.ndarray:
    """A linear sweep from 100 Hz to 7 kHz at amplitude 0.4, ``(samples,)`` float32."""
    t = np.arange(int(seconds * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    return (0.4 * scipy.signal.chirp(t, 100.0, seconds, 7000.0)).astype(np.float32)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """Run torch ops single-threaded here: on a busy shared CPU, intra-op threads waiting for
    each other made Griffin-Lim 30x slower without changing a single output value."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240607)


@pytest.fixture(scope="session")
def signals() -> dict[str, np.ndarray]:
    """One second each of ``speech_like``, ``broadband`` and ``chirp`` at 16 kHz."""
    rng = np.random.default_rng(7)
    return {"speech_like": speech_like(rng), "broadband": broadband(rng), "chirp": chirp()}


@pytest.fixture(scope="session")
def batch(signals: dict[str, np.ndarray]) -> np.ndarray:
    """``(3, 16000)`` float32: speech-like, broadband noise and a chirp."""
    return np.stack([signals["speech_like"], signals["broadband"], signals["chirp"]])


@pytest.fixture(scope="session")
def espeak_speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """Real synthesized speech ("seven three zero") at 16 kHz, ``(samples,)`` float32, peak 0.5."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed")
    path: Path = tmp_path_factory.mktemp("espeak") / "speech.wav"
    subprocess.run([espeak, "-w", str(path), "seven three zero"], check=True, timeout=60)
    with wave.open(str(path)) as reader:
        assert reader.getnchannels() == 1 and reader.getsampwidth() == 2
        rate = reader.getframerate()
        pcm = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
    audio = pcm.astype(np.float64) / 32768.0
    common = np.gcd(rate, SAMPLE_RATE_HZ)
    audio = scipy.signal.resample_poly(audio, SAMPLE_RATE_HZ // common, rate // common)
    return (0.5 * audio / np.abs(audio).max()).astype(np.float32)
