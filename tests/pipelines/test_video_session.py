"""Video stream sessions: any cut of a stream gives the clips of the whole; frame rate and size
conversion; the padded last clip; bad frames rejected."""

from __future__ import annotations

import numpy as np
import pytest

from avsentry.pipelines.session import StreamTooLong, VideoSession, scale_frames


def _session(**kw) -> VideoSession:
    base = dict(
        input_fps=25.0,
        input_height=24,
        input_width=32,
        model_fps=25.0,
        height=24,
        width=32,
        clip_frames=8,
        hop=4,
    )
    return VideoSession(**{**base, **kw})


def _frames(n: int, h: int = 24, w: int = 32) -> np.ndarray:
    """Frame i is filled with the value i (mod 256), so clips say which frames they hold."""
    return np.broadcast_to((np.arange(n) % 256).astype(np.uint8)[:, None, None, None], (n, h, w, 3)).copy()


def _ids(clip: np.ndarray) -> list[int]:
    return [int(round(float(f.mean()) * 255)) for f in clip]


def test_clips_every_hop_and_a_black_padded_last_clip() -> None:
    s = _session()
    clips = s.push(_frames(18)) + s.flush()
    assert [c.start for c in clips] == [0, 4, 8, 12]
    assert _ids(clips[0].data) == list(range(8))
    assert _ids(clips[-1].data) == [12, 13, 14, 15, 16, 17, 0, 0]  # two black frames of padding
    assert clips[-1].data.shape == (8, 24, 32, 3) and clips[-1].data.dtype == np.float32
    assert [(c.start_in, c.end_in) for c in clips][:2] == [(0, 8), (4, 12)]


@pytest.mark.parametrize("cuts", [[1] * 30, [7, 7, 7, 9], [30], [3, 11, 2, 14]])
def test_any_cut_of_a_stream_gives_the_same_clips(cuts: list[int]) -> None:
    whole = _session()
    reference = whole.push(_frames(30)) + whole.flush()
    s = _session()
    frames, clips, at = _frames(30), [], 0
    for n in cuts:
        clips += s.push(frames[at : at + n])
        at += n
    clips += s.flush()
    assert len(clips) == len(reference)
    for a, b in zip(clips, reference, strict=True):
        assert (a.index, a.start, a.start_in, a.end_in) == (b.index, b.start, b.start_in, b.end_in)
        np.testing.assert_array_equal(a.data, b.data)


def test_a_faster_stream_is_brought_to_the_model_rate() -> None:
    """50 fps in, 25 fps model: every other frame; the clip spans 16 input frames."""
    s = _session(input_fps=50.0)
    clips = s.push(_frames(40)) + s.flush()
    assert _ids(clips[0].data) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert (clips[0].start_in, clips[0].end_in) == (0, 16)


def test_thirty_to_twenty_five_fps_names_the_frames_each_clip_holds() -> None:
    """Model frame k shows input frame floor(k * 30 / 25); a clip's input range is that of its
    first and last frames."""
    s = _session(input_fps=30.0)
    clips = s.push(_frames(40)) + s.flush()
    assert _ids(clips[2].data) == [9, 10, 12, 13, 14, 15, 16, 18]
    assert (clips[2].start, clips[2].start_in, clips[2].end_in) == (8, 9, 19)
    assert (clips[0].start_in, clips[0].end_in) == (0, 9)


def test_a_slower_stream_repeats_frames() -> None:
    s = _session(input_fps=12.5)
    clips = s.push(_frames(8)) + s.flush()
    assert _ids(clips[0].data) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_frames_are_scaled_to_the_model_size() -> None:
    s = _session(input_height=48, input_width=64)
    frame = np.zeros((8, 48, 64, 3), np.uint8)
    frame[:, :24] = 255  # top half white
    clip = (s.push(frame) + s.flush())[0].data
    assert clip.shape == (8, 24, 32, 3)
    np.testing.assert_allclose(clip[:, :12], 1.0)
    np.testing.assert_allclose(clip[:, 12:], 0.0)
    up = scale_frames(np.full((1, 4, 4, 3), 0.5, np.float32), (8, 8))
    np.testing.assert_allclose(up, 0.5, atol=1e-6)


def test_bad_frames_are_rejected() -> None:
    s = _session()
    with pytest.raises(ValueError, match=r"expected frames \(n, 24, 32, 3\)"):
        s.push(np.zeros((2, 24, 31, 3), np.uint8))
    with pytest.raises(ValueError, match="NaN or Inf"):
        s.push(np.full((1, 24, 32, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        s.push(np.full((1, 24, 32, 3), 2.0, np.float32))
    capped = _session(max_input_frames=10)
    capped.push(_frames(10))
    with pytest.raises(StreamTooLong, match="10 frames at 25 fps"):
        capped.push(_frames(1))
    s.flush()
    with pytest.raises(RuntimeError, match="push after flush"):
        s.push(_frames(1))
