"""Properties every defence transform must have, checked on real codecs and seeded signals:
same shape and dtype, input untouched, batch == per item, deterministic, sample-aligned,
close to its input, and an identity (BPDA) gradient."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import scipy.signal
import torch

from avsentry.pipelines.transforms import Transform, make_transform, transform_names

AUDIO_TRANSFORMS = transform_names("audio")
CODECS = ("aac", "mp3", "opus")

# Floors on the SNR (dB) of the output against the input at default settings, 3 dB or more
# under what was measured (speech-like: aac 19.9, lowpass 21.1, mp3 21.3, opus 17.2,
# quantize 33.0, resample 20.5; espeak-ng "seven three zero": aac 15.1, lowpass 17.7,
# mp3 17.4, opus 13.9, quantize 28.8, resample 16.8).
# Griffin-Lim does not keep the waveform, so mel_inversion is held to a spectral bound instead
# (test_signal_transforms.py::test_mel_inversion_keeps_spectrum).
SNR_FLOOR_DB = {
    "speech_like": {
        "aac": 16.0,
        "lowpass": 17.0,
        "mp3": 17.0,
        "opus": 13.0,
        "quantize": 29.0,
        "resample": 17.0,
        "noise": 9.0,
    },
    "espeak": {
        "aac": 12.0,
        "lowpass": 14.0,
        "mp3": 14.0,
        "opus": 10.0,
        "quantize": 25.0,
        "resample": 13.0,
        "noise": 9.0,
    },
}


@functools.cache
def _transform(name: str) -> Transform:
    return make_transform(name, sample_rate_hz=16000)


DETERMINISTIC = tuple(n for n in AUDIO_TRANSFORMS if not getattr(_transform(n), "randomized", False))


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Signal-to-noise ratio of ``estimate`` against ``reference``, in dB."""
    reference = reference.astype(np.float64)
    error = estimate.astype(np.float64) - reference
    return float(10 * np.log10(np.sum(reference**2) / np.sum(error**2)))


def xcorr_lag(reference: np.ndarray, output: np.ndarray, *, max_lag: int = 2000) -> int:
    """Lag in samples (within +-max_lag) maximising |cross-correlation|; > 0: output is late."""
    correlation = scipy.signal.correlate(
        output.astype(np.float64), reference.astype(np.float64), mode="full", method="fft"
    )
    lags = scipy.signal.correlation_lags(output.size, reference.size, mode="full")
    window = np.abs(lags) <= max_lag
    return int(lags[window][np.argmax(np.abs(correlation[window]))])


@pytest.fixture(scope="module")
def outputs(batch: np.ndarray) -> dict[str, np.ndarray]:
    """Each transform applied once to the shared batch (the slow part, done once)."""
    rng = np.random.default_rng(0)
    return {name: _transform(name).apply(batch, rng) for name in AUDIO_TRANSFORMS}


@pytest.mark.parametrize("name", AUDIO_TRANSFORMS)
def test_satisfies_transform_protocol(name: str) -> None:
    transform = _transform(name)
    assert isinstance(transform, Transform)
    assert transform.name == name
    assert transform.sample_rate_hz == 16000


@pytest.mark.parametrize("name", AUDIO_TRANSFORMS)
def test_output_has_input_shape_and_float32(
    name: str, batch: np.ndarray, outputs: dict[str, np.ndarray]
) -> None:
    out = outputs[name]
    assert out.shape == batch.shape
    assert out.dtype == np.float32
    assert np.all(np.isfinite(out))
    assert not np.shares_memory(out, batch)


@pytest.mark.parametrize("name", AUDIO_TRANSFORMS)
def test_input_is_not_mutated(name: str, batch: np.ndarray, rng: np.random.Generator) -> None:
    loud = 1.5 * batch[:2]  # out of range too, so clipping must not happen in place
    before = loud.copy()
    _transform(name).apply(loud, rng)
    np.testing.assert_array_equal(loud, before)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_batch_equals_per_item(
    name: str, batch: np.ndarray, outputs: dict[str, np.ndarray], rng: np.random.Generator
) -> None:
    transform = _transform(name)
    for index in range(batch.shape[0]):
        single = transform.apply(batch[index : index + 1], rng)
        np.testing.assert_allclose(single[0], outputs[name][index], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", AUDIO_TRANSFORMS)
def test_same_input_gives_same_output(name: str, batch: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
    again = _transform(name).apply(batch.copy(), np.random.default_rng(0))
    np.testing.assert_array_equal(again, outputs[name])
    if name not in DETERMINISTIC:  # and another seed gives another draw
        other = _transform(name).apply(batch.copy(), np.random.default_rng(1))
        assert not np.array_equal(other, outputs[name])


@pytest.mark.parametrize("name", AUDIO_TRANSFORMS)
@pytest.mark.parametrize("shape", [(0, 16000), (2, 0), (0, 0)])
def test_empty_batch_gives_empty_output(name: str, shape: tuple[int, int], rng: np.random.Generator) -> None:
    out = _transform(name).apply(np.zeros(shape, dtype=np.float32), rng)
    assert out.shape == shape
    assert out.dtype == np.float32


@pytest.mark.parametrize("name", AUDIO_TRANSFORMS)
@pytest.mark.parametrize("samples", [1, 37, 1000])
def test_short_clips_keep_their_length(
    name: str, samples: int, batch: np.ndarray, rng: np.random.Generator
) -> None:
    out = _transform(name).apply(batch[:2, :samples], rng)
    assert out.shape == (2, samples)
    assert np.all(np.isfinite(out))


@pytest.mark.parametrize("name", AUDIO_TRANSFORMS)
def test_silence_stays_quiet(name: str, rng: np.random.Generator) -> None:
    out = _transform(name).apply(np.zeros((1, 4000), dtype=np.float32), rng)
    assert np.max(np.abs(out)) < 1e-3


@pytest.mark.parametrize("name", AUDIO_TRANSFORMS)
def test_rejects_bad_batches(name: str, rng: np.random.Generator) -> None:
    transform = _transform(name)
    with pytest.raises(ValueError, match="expected"):
        transform.apply(np.zeros(100, dtype=np.float32), rng)
    bad = np.zeros((1, 100), dtype=np.float32)
    bad[0, 10] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        transform.apply(bad, rng)


@pytest.mark.parametrize("name", AUDIO_TRANSFORMS)
def test_output_is_sample_aligned(
    name: str, signals: dict[str, np.ndarray], outputs: dict[str, np.ndarray]
) -> None:
    """Cross-correlation with the broadband input peaks at lag 0 (+-1) over +-2000 samples."""
    lag = xcorr_lag(signals["broadband"], outputs[name][1])
    assert abs(lag) <= 1, f"{name} output lags its input by {lag} samples"


@pytest.mark.parametrize("name", sorted(SNR_FLOOR_DB["speech_like"]))
def test_output_stays_close_to_speech_like_input(
    name: str, signals: dict[str, np.ndarray], outputs: dict[str, np.ndarray]
) -> None:
    snr = snr_db(signals["speech_like"], outputs[name][0])
    assert snr > SNR_FLOOR_DB["speech_like"][name], f"{name}: SNR {snr:.1f} dB"


@pytest.mark.parametrize("name", AUDIO_TRANSFORMS)
def test_real_speech_stays_aligned_and_close(
    name: str, espeak_speech: np.ndarray, rng: np.random.Generator
) -> None:
    out = _transform(name).apply(espeak_speech[np.newaxis], rng)[0]
    assert abs(xcorr_lag(espeak_speech, out)) <= 1
    if name in SNR_FLOOR_DB["espeak"]:
        snr = snr_db(espeak_speech, out)
        assert snr > SNR_FLOOR_DB["espeak"][name], f"{name}: SNR {snr:.1f} dB"


@pytest.mark.parametrize("name", AUDIO_TRANSFORMS)
def test_gradient_is_identity_bpda(name: str, batch: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
    """Forward runs the real transform; backward passes the upstream gradient unchanged."""
    x = torch.tensor(batch, requires_grad=True)
    y = _transform(name).differentiable(x, np.random.default_rng(0))
    np.testing.assert_array_equal(y.detach().numpy(), outputs[name])
    upstream = torch.from_numpy(np.random.default_rng(1).normal(size=batch.shape)).float()
    (y * upstream).sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, upstream, rtol=0, atol=0)


@pytest.mark.parametrize("name", CODECS + ("quantize",))
def test_out_of_range_input_is_clipped_first(name: str, batch: np.ndarray, rng: np.random.Generator) -> None:
    loud = 3.0 * batch[:1]
    transform = _transform(name)
    np.testing.assert_array_equal(transform.apply(loud, rng), transform.apply(np.clip(loud, -1.0, 1.0), rng))
