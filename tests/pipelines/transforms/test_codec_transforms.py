"""MP3, AAC and Opus round trips: delay compensation at other rates, parameter validation,
bit-rate behaviour and segment-wise definition, on real codecs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

from avsentry.pipelines.transforms import (
    AacRoundTrip,
    Mp3RoundTrip,
    OpusRoundTrip,
    SegmentedTransform,
    make_transform,
)
from avsentry.pipelines.transforms._codec import decode, encode, round_trip, split_bounds

CODEC_CLASSES = {"aac": AacRoundTrip, "mp3": Mp3RoundTrip, "opus": OpusRoundTrip}


def _broadband(rate_hz: int, seed: int) -> np.ndarray:
    """One second of noise band-limited to 100 Hz .. 0.3 * rate, peak 0.3, float32."""
    sos = scipy.signal.butter(6, [100, 0.3 * rate_hz], btype="bandpass", fs=rate_hz, output="sos")
    noise = scipy.signal.sosfilt(sos, np.random.default_rng(seed).normal(size=rate_hz))
    return (0.3 * noise / np.abs(noise).max()).astype(np.float32)


def _lag(reference: np.ndarray, output: np.ndarray, max_lag: int = 2000) -> int:
    correlation = scipy.signal.correlate(output, reference, mode="full", method="fft")
    lags = scipy.signal.correlation_lags(output.size, reference.size, mode="full")
    window = np.abs(lags) <= max_lag
    return int(lags[window][np.argmax(np.abs(correlation[window]))])


def _snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    error = estimate.astype(np.float64) - reference
    return float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / np.sum(error**2)))


@pytest.mark.parametrize(
    ("name", "rate_hz"),
    [("mp3", 8000), ("mp3", 44100), ("aac", 8000), ("aac", 48000), ("opus", 8000), ("opus", 48000)],
)
def test_aligned_at_other_sample_rates(name: str, rate_hz: int) -> None:
    """Delay compensation holds away from 16 kHz (MP3 switches MPEG version at 32 kHz)."""
    clip = _broadband(rate_hz, seed=rate_hz)
    transform = make_transform(name, sample_rate_hz=rate_hz)
    out = transform.apply(clip[np.newaxis], np.random.default_rng(0))[0]
    assert out.shape == clip.shape
    assert abs(_lag(clip, out)) <= 1


@pytest.mark.parametrize("name", sorted(CODEC_CLASSES))
def test_lower_bitrate_loses_more(name: str, batch: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    speech = batch[:1]
    low = make_transform(name, sample_rate_hz=16000, bitrate_kbps=8).apply(speech, rng)
    high = make_transform(name, sample_rate_hz=16000, bitrate_kbps=96).apply(speech, rng)
    assert _snr_db(speech[0], high[0]) > _snr_db(speech[0], low[0]) + 3.0


@pytest.mark.parametrize("name", sorted(CODEC_CLASSES))
def test_output_is_the_round_trip_of_each_segment(name: str, batch: np.ndarray) -> None:
    """The defence is segment-wise: each of ``segments`` equal parts is round tripped as a clip of
    its own (exactly as a whole clip is), and the parts are concatenated."""
    transform = make_transform(name, sample_rate_hz=16000, segments=4)
    assert isinstance(transform, SegmentedTransform)
    bounds = transform.segment_bounds(16000)
    assert bounds == ((0, 4000), (4000, 8000), (8000, 12000), (12000, 16000))
    out = transform.apply(batch, np.random.default_rng(0))
    whole = CODEC_CLASSES[name](segments=1)
    for clip, got in zip(batch, out, strict=True):
        parts = [whole.apply(clip[np.newaxis, a:b], np.random.default_rng(0))[0] for a, b in bounds]
        np.testing.assert_array_equal(got, np.concatenate(parts))
        np.testing.assert_array_equal(got[4000:8000], transform.apply_segment(clip[4000:8000]))
    codec = whole.codec
    direct = round_trip(
        batch[0],
        codec=codec,
        container_format=whole.container_format,
        sample_rate_hz=16000,
        bit_rate_bps=whole.bitrate_kbps * 1000,
        options=whole.encoder_settings(),
    )
    np.testing.assert_array_equal(whole.apply(batch[:1], np.random.default_rng(0))[0], direct)


@pytest.mark.parametrize("name", sorted(CODEC_CLASSES))
def test_a_part_shared_by_overlapping_windows_gives_the_same_output(name: str) -> None:
    """With 2 segments and a half-window hop, window k's second half is window k+1's first: its
    output is the same in both, so it can be computed once."""
    stream = np.concatenate([_broadband(16000, seed=s) for s in (1, 2)])
    transform = make_transform(name, sample_rate_hz=16000)
    windows = np.stack([stream[0:16000], stream[8000:24000]])
    out = transform.apply(windows, np.random.default_rng(0))
    np.testing.assert_array_equal(out[0, 8000:], out[1, :8000])


def test_split_bounds_cover_the_clip() -> None:
    assert split_bounds(16000, 2) == ((0, 8000), (8000, 16000))
    assert split_bounds(5, 2) == ((0, 2), (2, 5))
    assert split_bounds(1, 2) == ((0, 0), (0, 1))
    assert split_bounds(7, 1) == ((0, 7),)


@pytest.mark.parametrize("name", sorted(CODEC_CLASSES))
@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"bitrate_kbps": 0}, "bitrate_kbps must be in"),
        ({"bitrate_kbps": 1000}, "bitrate_kbps must be in"),
        ({"bitrate_kbps": 32.5}, "bitrate_kbps must be an integer"),
        ({"bitrate_kbps": True}, "bitrate_kbps must be an integer"),
        ({"segments": 0}, "segments must be in"),
        ({"segments": 9}, "segments must be in"),
        ({"segments": 2.0}, "segments must be an integer"),
        ({"sample_rate_hz": 0}, "sample_rate_hz must be >= 1"),
        ({"sample_rate_hz": 16001}, "sample_rate_hz must be one of"),
    ],
)
def test_bad_parameters_raise_value_error(name: str, params: dict[str, object], message: str) -> None:
    kwargs: dict[str, object] = {"sample_rate_hz": 16000, **params}
    with pytest.raises(ValueError, match=message):
        CODEC_CLASSES[name](**kwargs)  # type: ignore[arg-type]


def test_opus_rejects_rates_libopus_lacks() -> None:
    with pytest.raises(ValueError, match=r"one of \[8000, 12000, 16000, 24000, 48000\]"):
        OpusRoundTrip(sample_rate_hz=44100)


def test_defaults_are_low_bitrates_in_two_segments() -> None:
    assert Mp3RoundTrip().bitrate_kbps == 32
    assert AacRoundTrip().bitrate_kbps == 32
    assert OpusRoundTrip().bitrate_kbps == 16
    assert Mp3RoundTrip().sample_rate_hz == 16000
    assert {cls().segments for cls in CODEC_CLASSES.values()} == {2}


def test_no_client_settable_thread_count() -> None:
    """Codec work runs on one shared pool; a transform spec cannot ask for threads."""
    with pytest.raises(ValueError, match="unknown parameter.*workers"):
        make_transform("mp3", sample_rate_hz=16000, workers=1000)


def test_mp3_carries_lame_tag_with_delay() -> None:
    """The delay compensation relies on the Xing/LAME tag, written by seeking back."""
    data = encode(
        np.zeros(16000, dtype=np.float32),
        codec="libmp3lame",
        container_format="mp3",
        sample_rate_hz=16000,
        bit_rate_bps=32000,
    )
    assert b"Info" in data[:1000] or b"Xing" in data[:1000]
    assert b"LAME" in data[:1000]


def test_adts_would_lag_by_the_priming() -> None:
    """Why the AAC defence uses MP4: raw ADTS keeps the encoder's 1024 priming samples."""
    clip = _broadband(16000, seed=3)
    data = encode(clip, codec="aac", container_format="adts", sample_rate_hz=16000, bit_rate_bps=32000)
    decoded, rate_hz = decode(data)
    assert rate_hz == 16000
    assert _lag(clip, decoded[: clip.size]) == 1024


def test_opus_decodes_at_48_khz() -> None:
    clip = _broadband(16000, seed=4)
    data = encode(clip, codec="libopus", container_format="ogg", sample_rate_hz=16000, bit_rate_bps=16000)
    decoded, rate_hz = decode(data)
    assert rate_hz == 48000
    assert decoded.size == 3 * clip.size  # pre-skip and end trimming from the Ogg granules
