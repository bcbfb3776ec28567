"""`avsentry check`, `models` and `--help` as a user runs them: a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import wave

import numpy as np
import pytest

from avsentry.pipelines.windowing import frame
from avsentry.tools import synth


def n_windows(path, hop: int) -> int:
    with wave.open(str(path)) as w:
        n = w.getnframes()
    return len(frame(np.zeros(n, np.float32), window=16000, hop=hop)[1])


def avsentry(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "avsentry", *args], capture_output=True, text=True, timeout=timeout
    )


def test_check_reads_spoken_digits_without_flags(digit_wav) -> None:
    r = avsentry("check", str(digit_wav), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == n_windows(digit_wav, hop=8000)
    raw = {ln.split(" | ")[1].split()[1] for ln in lines}
    assert {"three", "seven", "one"} <= raw
    assert not any("FLAGGED" in ln for ln in lines)


def test_check_json_has_one_object_per_window(digit_wav) -> None:
    r = avsentry("check", str(digit_wav), "--json", "--device", "cpu", "--hop-ms", "1000")
    assert r.returncode == 0, r.stderr
    objs = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert len(objs) == n_windows(digit_wav, hop=16000)
    for o in objs:
        assert {
            "file",
            "start_s",
            "end_s",
            "raw",
            "transforms",
            "smoothed",
            "score",
            "flagged",
            "reasons",
            "threshold",
        } <= set(o)
        assert o["raw"]["label"] in synth.LABELS and 0 <= o["raw"]["confidence"] <= 1
        assert "radius" in o["smoothed"] and "abstain" in o["smoothed"]
        assert o["flagged"] is False
    assert [o["start_s"] for o in objs] == [float(i) for i in range(len(objs))]


@pytest.mark.parametrize("content", [None, b"definitely not audio" * 50])
def test_bad_input_gives_one_line_and_nonzero_exit(tmp_path, content) -> None:
    path = tmp_path / "x.wav"
    if content is not None:
        path.write_bytes(content)
    r = avsentry("check", str(path), "--device", "cpu")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and str(path) in r.stderr


def test_bad_transform_spec_is_a_one_line_error(digit_wav) -> None:
    r = avsentry("check", str(digit_wav), "--transforms", "mp3,nosuch", "--device", "cpu")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "nosuch" in r.stderr


def test_models_lists_the_embedded_model() -> None:
    r = avsentry("models", "--json")
    assert r.returncode == 0, r.stderr
    (m,) = json.loads(r.stdout)
    assert m["name"] == "digits" and m["threshold"] > 0 and m["measured_fpr"] is not None


@pytest.mark.parametrize(
    "cmd", [[], ["check"], ["train"], ["calibrate"], ["bench", "core"], ["models"], ["demo"]]
)
def test_help_texts(cmd) -> None:
    r = avsentry(*cmd, "--help")
    assert r.returncode == 0 and "usage: avsentry" in r.stdout
