"""Quantize, resample, low-pass and mel inversion: what each keeps and what it removes."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

from avsentry.pipelines.transforms import LowPass, MelInversion, Quantize, ResampleRoundTrip

RATE_HZ = 16000


def _tone(frequency_hz: float, *, seconds: float = 0.5, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * RATE_HZ)) / RATE_HZ
    return (amplitude * np.sin(2 * np.pi * frequency_hz * t)).astype(np.float32)


def _gain_db(clip: np.ndarray, out: np.ndarray) -> float:
    """Power gain over the middle half (away from edge effects), in dB."""
    quarter = clip.size // 4
    middle = slice(quarter, clip.size - quarter)
    return float(10 * np.log10(np.mean(out[middle] ** 2) / np.mean(clip[middle] ** 2)))


# Quantize ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 4, 8, 12])
def test_quantize_error_is_at_most_half_a_step(bits: int, batch: np.ndarray) -> None:
    quantize = Quantize(bits=bits)
    out = quantize.apply(batch, np.random.default_rng(0))
    assert np.max(np.abs(out - batch)) <= quantize.step / 2 + 1e-7
    assert np.unique(out).size <= 2**bits - 1


def test_quantize_keeps_zero_and_full_scale() -> None:
    clip = np.array([[-1.0, -0.0, 0.0, 1.0, 2.0]], dtype=np.float32)
    out = Quantize(bits=4).apply(clip, np.random.default_rng(0))
    np.testing.assert_array_equal(out, [[-1.0, 0.0, 0.0, 1.0, 1.0]])


def test_quantize_erases_perturbations_under_half_a_step() -> None:
    levels = np.arange(-127, 128, dtype=np.float32) / 127
    clean = np.tile(levels, 4)[np.newaxis]
    noise = np.random.default_rng(0).uniform(-0.45, 0.45, clean.shape) / 127
    out = Quantize(bits=8).apply((clean + noise).astype(np.float32), np.random.default_rng(0))
    np.testing.assert_allclose(out, clean, rtol=0, atol=1e-7)


@pytest.mark.parametrize("bits", [1, 17, 8.0])
def test_quantize_rejects_bad_bits(bits: object) -> None:
    with pytest.raises(ValueError, match="bits must be"):
        Quantize(bits=bits)  # type: ignore[arg-type]


# Resample ---------------------------------------------------------------------------------


def test_resample_keeps_the_telephone_band_and_drops_above() -> None:
    resample = ResampleRoundTrip(sample_rate_hz=RATE_HZ, intermediate_rate_hz=8000)
    rng = np.random.default_rng(0)
    low, high = _tone(1000.0), _tone(6000.0)
    assert abs(_gain_db(low, resample.apply(low[np.newaxis], rng)[0])) < 0.1
    assert _gain_db(high, resample.apply(high[np.newaxis], rng)[0]) < -40.0


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"intermediate_rate_hz": 16000}, "intermediate_rate_hz must be"),
        ({"intermediate_rate_hz": 32000}, "intermediate_rate_hz must be"),
        ({"intermediate_rate_hz": 500}, "intermediate_rate_hz must be"),
        ({"sample_rate_hz": -1}, "sample_rate_hz must be"),
    ],
)
def test_resample_rejects_bad_params(params: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ResampleRoundTrip(**params)  # type: ignore[arg-type]


# Low-pass ---------------------------------------------------------------------------------


def test_lowpass_passes_below_cutoff_and_stops_above() -> None:
    lowpass = LowPass(sample_rate_hz=RATE_HZ, cutoff_hz=4000.0, order=8)
    rng = np.random.default_rng(0)
    passband, cutoff, stopband = _tone(1000.0), _tone(4000.0), _tone(6000.0)
    assert abs(_gain_db(passband, lowpass.apply(passband[np.newaxis], rng)[0])) < 0.1
    assert abs(_gain_db(cutoff, lowpass.apply(cutoff[np.newaxis], rng)[0]) + 6.0) < 0.5
    assert _gain_db(stopband, lowpass.apply(stopband[np.newaxis], rng)[0]) < -60.0


def test_lowpass_has_zero_phase() -> None:
    """A passband tone comes out in phase, not merely at the same level."""
    tone = _tone(500.0)
    out = LowPass(cutoff_hz=4000.0).apply(tone[np.newaxis], np.random.default_rng(0))[0]
    middle = slice(tone.size // 4, 3 * tone.size // 4)
    np.testing.assert_allclose(out[middle], tone[middle], rtol=0, atol=2e-3)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"cutoff_hz": 8000.0}, "cutoff_hz must be in"),
        ({"cutoff_hz": 0.0}, "cutoff_hz must be in"),
        ({"cutoff_hz": float("nan")}, "cutoff_hz must be a finite number"),
        ({"order": 0}, "order must be in"),
        ({"order": 2.5}, "order must be an integer"),
    ],
)
def test_lowpass_rejects_bad_params(params: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LowPass(**params)  # type: ignore[arg-type]


# Mel inversion ----------------------------------------------------------------------------


def _log_mel(clip: np.ndarray) -> np.ndarray:
    _, _, spectrum = scipy.signal.stft(clip, fs=RATE_HZ, nperseg=512, noverlap=384)
    return np.log10(np.abs(spectrum) ** 2 + 1e-8)


def test_mel_inversion_keeps_spectrum(batch: np.ndarray) -> None:
    """The magnitude spectrogram survives (spectral convergence < 0.6; measured 0.39-0.50)
    though the waveform does not (Griffin-Lim phase)."""
    out = MelInversion().apply(batch, np.random.default_rng(0))
    window = {"fs": RATE_HZ, "nperseg": 512, "noverlap": 384}
    for clip, restored in zip(batch, out, strict=True):
        reference = np.abs(scipy.signal.stft(clip, **window)[2])
        estimate = np.abs(scipy.signal.stft(restored, **window)[2])
        convergence = np.linalg.norm(estimate - reference) / np.linalg.norm(reference)
        assert convergence < 0.6


def test_mel_inversion_keeps_a_tone_where_it_was() -> None:
    tone = _tone(1000.0)
    out = MelInversion().apply(tone[np.newaxis], np.random.default_rng(0))[0]
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * RATE_HZ / out.size - 1000.0) < 20.0
    assert abs(_gain_db(tone, out)) < 3.0


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"n_fft": 8}, "n_fft must be in"),
        ({"hop_length": 0}, "hop_length must be in"),
        ({"hop_length": 400}, "hop_length must be in"),
        ({"n_iter": 0}, "n_iter must be in"),
        ({"n_mels": 0}, "n_mels must be in"),
        ({"n_mels": 200}, "some mel bands cover no STFT bin"),
    ],
)
def test_mel_inversion_rejects_bad_params(params: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MelInversion(**params)  # type: ignore[arg-type]


def test_noise_is_added_at_the_requested_snr(rng: np.random.Generator) -> None:
    from avsentry.pipelines.transforms import make_transform

    x = np.stack([0.2 * np.sin(np.arange(16000) * 0.05), 0.01 * np.sin(np.arange(16000) * 0.05)])
    for snr in (0.0, 10.0, 20.0):
        out = make_transform("noise", sample_rate_hz=16000, snr_db=snr).apply(x.astype(np.float32), rng)
        for row, ref in zip(out, x, strict=True):
            measured = 10 * np.log10(np.mean(ref**2) / np.mean((row - ref) ** 2))
            assert abs(measured - snr) < 0.3  # the level follows each clip, loud or quiet
