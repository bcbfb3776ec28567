"""Reading and writing video files with PyAV: the containers users send, and the errors for files
that are not video."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io.wavfile

from avsentry.pipelines.video_io import VideoFile, VideoLimits, VideoReadError, read_video, write_video
from avsentry.tools import videosynth


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return videosynth.render("bounce", 21, 8)


# mean absolute error (0..255) measured on this clip: mp4/mkv/avi 5.4 (H.264 crf 18), webm 5.3 (VP9),
# gif 18.6 (256-colour palette)
@pytest.mark.parametrize(
    "suffix, max_error", [(".mp4", 8), (".mkv", 8), (".avi", 8), (".webm", 8), (".gif", 25)]
)
def test_round_trip_through_each_container(
    tmp_path: Path, clip: np.ndarray, suffix: str, max_error: float
) -> None:
    path = tmp_path / f"clip{suffix}"
    write_video(path, clip, fps=25)
    frames, fps = read_video(path)
    assert frames.shape == clip.shape and frames.dtype == np.uint8
    assert fps == pytest.approx(25.0)
    assert np.abs(frames.astype(int) - clip).mean() < max_error


def test_blocks_and_header(tmp_path: Path, clip: np.ndarray) -> None:
    path = tmp_path / "clip.mp4"
    write_video(path, np.concatenate([clip, clip]), fps=25)
    with VideoFile(path) as video:
        assert (video.info.width, video.info.height) == (112, 112)
        sizes = [len(b) for b in video.blocks(frames=10)]
    assert sizes == [10, 10, 10, 2]


def test_not_video_is_a_clear_error(tmp_path: Path, clip: np.ndarray) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all " * 50)
    with pytest.raises(VideoReadError, match="not a video FFmpeg can read"):
        read_video(garbage)
    with pytest.raises(VideoReadError, match="no such file"):
        read_video(tmp_path / "missing.mp4")
    audio_only = tmp_path / "tone.wav"
    scipy.io.wavfile.write(audio_only, 16000, np.zeros(1600, np.int16))
    with pytest.raises(VideoReadError, match="holds no video stream"):
        read_video(audio_only)


def test_truncated_file_and_duration_cap(tmp_path: Path, clip: np.ndarray) -> None:
    path = tmp_path / "long.mp4"
    write_video(path, np.concatenate([clip] * 8), fps=25)  # 128 frames, 5.12 s
    with pytest.raises(VideoReadError, match="longer than the 2 s cap"):
        read_video(path, VideoLimits(max_seconds=2))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[:600])
    with pytest.raises(VideoReadError):
        read_video(cut)
