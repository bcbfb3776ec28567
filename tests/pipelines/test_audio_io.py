"""Reading audio files of any rate, channel count and format, and rejecting bad ones cleanly."""

from __future__ import annotations

import wave

import av
import numpy as np
import pytest

from avsentry.pipelines.audio_io import AudioReadError, read_audio
from avsentry.pipelines.windowing import frame


def _write_wav(path, audio: np.ndarray, rate: int) -> None:
    audio = np.atleast_2d(audio)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(audio.shape[0])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((audio.T * 32767).astype("<i2").tobytes())


def _encode(path, audio: np.ndarray, rate: int, fmt: str, codec: str, layout: str = "mono") -> None:
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=rate, layout=layout)
        sample_fmt = s.codec_context.codec.audio_formats[0].name
        chans = 1 if layout == "mono" else 2
        frame = av.AudioFrame.from_ndarray(
            np.tile(audio.astype(np.float32), (chans, 1)), format="fltp", layout=layout
        )
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=sample_fmt, layout=layout, rate=rate)
        for f in resampler.resample(frame):
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)


def _tone(rate: int, seconds: float, f: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * f * t)).astype(np.float32)


def test_stereo_44k_wav_is_downmixed_and_resampled(tmp_path) -> None:
    left, right = _tone(44100, 1.5), np.zeros(int(44100 * 1.5), np.float32)
    _write_wav(tmp_path / "s.wav", np.stack([left, right]), 44100)
    x = read_audio(tmp_path / "s.wav", sample_rate_hz=16000)
    assert x.dtype == np.float32 and abs(len(x) - 24000) <= 32
    # the mono downmix is the channel mean: a one-sided 0.5 tone becomes 0.25; its frequency
    # survives resampling
    assert 0.24 < np.abs(x[1000:-1000]).max() < 0.26
    spec = np.abs(np.fft.rfft(x))
    assert abs(np.argmax(spec) * 16000 / len(x) - 440) < 5


def test_identical_channels_keep_their_level(tmp_path) -> None:
    tone = _tone(16000, 1.0)
    _write_wav(tmp_path / "s.wav", np.stack([tone, tone]), 16000)
    x = read_audio(tmp_path / "s.wav", sample_rate_hz=16000)
    np.testing.assert_allclose(x, tone, atol=2e-4)


@pytest.mark.parametrize(("fmt", "codec", "suffix"), [("flac", "flac", "flac"), ("mp3", "libmp3lame", "mp3")])
def test_flac_and_mp3_decode(tmp_path, fmt, codec, suffix) -> None:
    path = tmp_path / f"t.{suffix}"
    _encode(path, _tone(22050, 1.0), 22050, fmt, codec)
    x = read_audio(path, sample_rate_hz=16000)
    assert abs(len(x) - 16000) < 2000
    assert np.abs(x).max() > 0.3


def test_float_wav_with_nan_is_rejected(tmp_path) -> None:
    path = tmp_path / "nan.wav"
    audio = _tone(16000, 0.5)
    audio[100] = np.nan
    _encode(path, audio, 16000, "wav", "pcm_f32le")
    with pytest.raises(AudioReadError, match="NaN or Inf"):
        read_audio(path, sample_rate_hz=16000)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b"this is not audio at all" * 10), "cannot decode"),
        (lambda p: _write_wav(p, np.zeros((1, 0), np.float32), 16000), "no audio samples"),
    ],
)
def test_bad_files_raise_one_line_errors(tmp_path, make, message) -> None:
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioReadError, match=message) as e:
        read_audio(path, sample_rate_hz=16000)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_directory_is_not_audio(tmp_path) -> None:
    with pytest.raises(AudioReadError, match="not a regular file"):
        read_audio(tmp_path, sample_rate_hz=16000)


@pytest.mark.parametrize(
    ("n", "expected_starts"),
    [(0, []), (5, [0]), (16000, [0]), (16001, [0, 8000]), (40000, [0, 8000, 16000, 24000])],
)
def test_frame_covers_the_signal(n, expected_starts) -> None:
    sig = np.arange(n, dtype=np.float32)
    w, starts = frame(sig, window=16000, hop=8000)
    assert starts.tolist() == expected_starts
    assert w.shape == (len(expected_starts), 16000)
    for row, s in zip(w, starts, strict=True):
        seg = sig[s : s + 16000]
        np.testing.assert_array_equal(row[: len(seg)], seg)
        assert not row[len(seg) :].any()
    if n:
        assert starts[-1] + 16000 >= n


def test_frame_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError):
        frame(np.zeros(10), window=0, hop=1)


def _raw_wav(path, rate: int, channels: int, frames: int) -> None:
    """A PCM16 WAV written byte by byte, so its header can say anything (any rate, 62 channels...)."""
    import struct

    data = (np.random.default_rng(0).standard_normal((frames, channels)) * 3000).astype("<i2").tobytes()
    block = 2 * channels
    size = len(data)
    header = (
        b"RIFF"
        + struct.pack("<I", 36 + size)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, 16)
        + b"data"
        + struct.pack("<I", size)
    )
    path.write_bytes(header + data)


def test_eight_channel_wav_is_downmixed(tmp_path) -> None:
    """An 8-channel WAV once crashed the process inside PyAV's multi-plane resampler."""
    _raw_wav(tmp_path / "c8.wav", 16000, 8, 16000)
    x = read_audio(tmp_path / "c8.wav", sample_rate_hz=16000)
    ref = np.frombuffer((tmp_path / "c8.wav").read_bytes()[44:], "<i2").reshape(-1, 8) / 32768
    np.testing.assert_allclose(x, ref.mean(axis=1), atol=1e-6)


@pytest.mark.parametrize(
    ("rate", "channels", "message"),
    [
        (1, 1, "sample rate 1 Hz"),
        (687_873_856, 1, "sample rate 687873856 Hz"),
        (16000, 29, "29 channels"),
        (16000, 62, "62 channels"),
    ],
)
def test_header_out_of_limits_is_refused_before_decoding(tmp_path, rate, channels, message) -> None:
    from avsentry.pipelines.audio_io import AudioFile

    _raw_wav(tmp_path / "bad.wav", rate, channels, 200)
    with pytest.raises(AudioReadError, match=message):
        AudioFile(tmp_path / "bad.wav")


def test_duration_cap_stops_decoding(tmp_path) -> None:
    from avsentry.pipelines.audio_io import AudioFile, AudioLimits, AudioTooLong

    _raw_wav(tmp_path / "long.wav", 16000, 1, 16000 * 5)
    with pytest.raises(AudioTooLong, match="at most 2 s"):  # the header says 5 s
        AudioFile(tmp_path / "long.wav", AudioLimits(max_seconds=2))
    # within the header's 1 s slack (declared durations are estimates for some formats): the
    # decoder stops at the cap
    _raw_wav(tmp_path / "slack.wav", 16000, 1, 16000 * 5 // 2)
    with AudioFile(tmp_path / "slack.wav", AudioLimits(max_seconds=2)) as f:
        seen = 0
        with pytest.raises(AudioTooLong, match="more than 2 s"):
            for block in f.blocks():
                seen += len(block)
        assert seen <= 2 * 16000


def test_resampler_chunking_does_not_change_the_output() -> None:
    from avsentry.pipelines.audio_io import Resampler, resample

    x = np.random.default_rng(1).uniform(-1, 1, (44100, 2)).astype(np.float32)
    whole = resample(x.mean(axis=1), 44100, 16000)
    r = Resampler(input_rate_hz=44100, output_rate_hz=16000, channels=2)
    parts = [r.push(x[s : s + 777]) for s in range(0, len(x), 777)] + [r.flush()]
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-6)


def test_huge_float_samples_cannot_overflow_the_downmix() -> None:
    """Float32 stereo at +-3.4e38 once summed to Inf in the downmix and failed other streams' windows."""
    from avsentry.pipelines.session import StreamSession

    s = StreamSession(input_rate_hz=16000, channels=2, model_rate_hz=16000, window=16000, hop=8000)
    big = np.full((16000, 2), np.finfo(np.float32).max, np.float32)
    (w,) = s.push(big)
    assert np.isfinite(w.data).all() and w.data.max() == 1.0
