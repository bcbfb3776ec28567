"""Streaming windowing: any chunking gives the windows of the whole clip."""

from __future__ import annotations

import av
import numpy as np
import pytest

from avsentry.pipelines.session import StreamSession, StreamTooLong
from avsentry.pipelines.windowing import frame


def run(session: StreamSession, audio: np.ndarray, chunk_sizes) -> list:
    out, pos, i = [], 0, 0
    while pos < len(audio):
        n = chunk_sizes[i % len(chunk_sizes)]
        out += session.push(audio[pos : pos + n])
        pos, i = pos + n, i + 1
    return out + session.flush()


@pytest.mark.parametrize("n", [1, 5000, 16000, 16001, 23999, 40000])
@pytest.mark.parametrize("chunks", [[160], [1000, 7, 3333], [100_000]])
def test_same_rate_stream_equals_offline_framing(n, chunks, rng) -> None:
    audio = rng.uniform(-0.5, 0.5, n).astype(np.float32)
    got = run(
        StreamSession(input_rate_hz=16000, channels=1, model_rate_hz=16000, window=16000, hop=8000),
        audio,
        chunks,
    )
    want, starts = frame(audio, window=16000, hop=8000)
    assert [w.start for w in got] == starts.tolist()
    assert [w.index for w in got] == list(range(len(got)))
    for w, ref in zip(got, want, strict=True):
        np.testing.assert_array_equal(w.data, ref)
        assert (w.start_in, w.end_in) == (w.start, w.start + 16000)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampled_stream_is_independent_of_chunking(rate, rng) -> None:
    stereo = rng.uniform(-0.5, 0.5, (int(rate * 2.3), 2)).astype(np.float32)

    def session() -> StreamSession:
        return StreamSession(input_rate_hz=rate, channels=2, model_rate_hz=16000, window=16000, hop=8000)

    whole = run(session(), stereo, [len(stereo)])
    chunked = run(session(), stereo, [rate // 50, 123, rate // 10])
    assert len(whole) == len(chunked) == len(frame(np.zeros(int(2.3 * 16000)), window=16000, hop=8000)[1])
    for a, b in zip(whole, chunked, strict=True):
        np.testing.assert_allclose(a.data, b.data, atol=1e-6)
        assert abs(a.start_in - a.start * rate / 16000) <= 1


def test_resampling_keeps_a_tone_in_place() -> None:
    rate = 44100
    t = np.arange(int(rate * 1.5)) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    s = StreamSession(input_rate_hz=rate, channels=1, model_rate_hz=16000, window=16000, hop=8000)
    windows = run(s, tone, [4410])
    ref = av.AudioResampler(format="flt", layout="mono", rate=16000)
    f = av.AudioFrame.from_ndarray(tone[None], format="flt", layout="mono")
    f.sample_rate = rate
    offline = np.concatenate([o.to_ndarray().reshape(-1) for o in [*ref.resample(f), *ref.resample(None)]])
    np.testing.assert_allclose(windows[0].data, offline[:16000], atol=1e-5)


def test_stream_cap_and_bad_input() -> None:
    s = StreamSession(
        input_rate_hz=16000, channels=1, model_rate_hz=16000, window=16000, hop=8000, max_input_samples=20000
    )
    s.push(np.zeros(20000, np.float32))
    with pytest.raises(StreamTooLong):
        s.push(np.zeros(1, np.float32))
    s = StreamSession(input_rate_hz=16000, channels=2, model_rate_hz=16000, window=16000, hop=8000)
    with pytest.raises(ValueError, match="NaN or Inf"):
        s.push(np.full((10, 2), np.inf, np.float32))
    with pytest.raises(ValueError, match="expected"):
        s.push(np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="hop"):
        StreamSession(input_rate_hz=16000, channels=1, model_rate_hz=16000, window=100, hop=200)
