"""`avsentry check` on video files with the embedded action model, as a user runs it: a real
subprocess, real containers written by PyAV, the real H.264/JPEG defence and pixel smoothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from avsentry.pipelines.video_io import write_video
from avsentry.tools import videosynth

ACTIONS = ("move_left", "grow", "_background_")


def avsentry(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "avsentry", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def scenes() -> np.ndarray:
    """Three held-out 16-frame scenes, one after the other (48 frames at 25 fps)."""
    return np.concatenate(
        [videosynth.render(a, videosynth.HELDOUT_SEED, 90 + i) for i, a in enumerate(ACTIONS)]
    )


@pytest.mark.parametrize("suffix", [".mp4", ".gif", ".webm"])
def test_check_names_each_clip_of_a_video_file(tmp_path: Path, scenes: np.ndarray, suffix: str) -> None:
    path = tmp_path / f"scenes{suffix}"
    write_video(path, scenes, fps=25)
    r = avsentry("check", str(path), "--model", "actions", "--device", "cpu", "--json")
    assert r.returncode == 0, r.stderr
    verdicts = [json.loads(line) for line in r.stdout.splitlines()]
    assert [v["raw_label"] for v in verdicts] == list(ACTIONS)
    assert [(v["start_sample"], v["end_sample"]) for v in verdicts] == [(0, 16), (16, 32), (32, 48)]
    assert verdicts[1]["start_s"] == pytest.approx(0.64)
    assert not any(v["flagged"] for v in verdicts), [v["reasons"] for v in verdicts]
    assert {d["name"] for d in verdicts[0]["defended"]} == {"h264", "jpeg", "smoothing"}
    assert "1 file, 3 windows, 0 flagged" in r.stderr


def test_check_scales_and_retimes_other_video_formats(tmp_path: Path, scenes: np.ndarray) -> None:
    """A 224x224 file at 50 fps (each frame shown twice) reads as the same three clips."""
    big = np.repeat(np.repeat(np.repeat(scenes, 2, axis=1), 2, axis=2), 2, axis=0)
    path = tmp_path / "big.mkv"
    write_video(path, big, fps=50)
    r = avsentry("check", str(path), "--model", "actions", "--device", "cpu", "--json")
    assert r.returncode == 0, r.stderr
    verdicts = [json.loads(line) for line in r.stdout.splitlines()]
    assert [v["raw_label"] for v in verdicts] == list(ACTIONS)
    assert [(v["start_sample"], v["end_sample"]) for v in verdicts] == [(0, 32), (32, 64), (64, 96)]


def test_files_that_are_not_video_get_one_clear_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    r = avsentry("check", str(garbage), "--model", "actions", "--device", "cpu")
    assert r.returncode == 1
    assert "not a video FFmpeg can read" in r.stderr or "no frame could be decoded" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("argv", "what"),
    [
        (("calibrate",), "calibrate"),
        (("evaluate", "--art"), "evaluate --art"),
        (("attack", "--server", "127.0.0.1:1"), "attack --server"),
    ],
)
def test_audio_only_commands_say_so_for_a_video_model(argv: tuple[str, ...], what: str) -> None:
    r = avsentry(*argv, "--model", "actions", "--device", "cpu")
    assert r.returncode == 1
    assert f"model 'actions' takes video; {what} supports audio models so far" in r.stderr, r.stderr
