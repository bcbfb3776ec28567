"""`avsentry check` and `models` as a user runs them: a real subprocess on real files."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import wave

import numpy as np
import pytest

from avsentry.pipelines.windowing import frame
from avsentry.stream.commands import demo_clips
from avsentry.tools import synth

# The one verdict schema (pipelines/report.py): field -> JSON type.
VERDICT_FIELDS = {
    "request_id": str,
    "window_index": int,
    "start_sample": int,
    "end_sample": int,
    "start_s": float,
    "end_s": float,
    "model": str,
    "raw_label": str,
    "raw_confidence": float,
    "defended": list,
    "smoothed": dict,
    "score": float,
    "threshold": float,
    "calibrated": bool,
    "flagged": bool,
    "reasons": list,
    "latency_ms": float,
    "is_final": bool,
}


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
    n = n_windows(digit_wav, hop=8000)
    assert len(lines) == n
    raw = {ln.split(" | ")[1].split()[1] for ln in lines}
    assert {"three", "seven", "one"} <= raw
    assert not any("FLAGGED" in ln for ln in lines)
    assert r.stderr.strip().splitlines()[-1] == f"avsentry check: 1 file, {n} windows, 0 flagged"


def test_check_json_is_the_verdict_schema(digit_wav) -> None:
    """Every field of the proto Verdict under its name and JSON type; bounds in the file's samples."""
    r = avsentry("check", str(digit_wav), "--json", "--device", "cpu", "--hop-ms", "1000")
    assert r.returncode == 0, r.stderr
    objs = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert len(objs) == n_windows(digit_wav, hop=16000)
    for i, o in enumerate(objs):
        assert list(o) == list(VERDICT_FIELDS)
        for name, kind in VERDICT_FIELDS.items():
            assert type(o[name]) is kind, (name, o[name])
        assert o["request_id"] == str(digit_wav) and o["model"] == "digits"
        assert o["window_index"] == i
        assert (o["start_sample"], o["end_sample"]) == (16000 * i, 16000 * (i + 1))
        assert (o["start_s"], o["end_s"]) == (float(i), float(i + 1))
        assert o["raw_label"] in synth.LABELS and 0 <= o["raw_confidence"] <= 1
        assert [d["name"] for d in o["defended"]] == ["mp3", "opus", "aac", "noise", "smoothing"]
        assert {
            "label",
            "abstain",
            "counts",
            "p_value",
            "certified_label",
            "radius",
            "p_lower",
            "raw_p_lower",
            "guaranteed_snr_db",
        } == set(o["smoothed"])
        # log-mel noise (the card's) bounds nothing about the waveform: no guarantee in dB
        assert 0 <= o["smoothed"]["raw_p_lower"] <= 1 and o["smoothed"]["guaranteed_snr_db"] is None
        assert o["calibrated"] is True and o["threshold"] > 0 and o["flagged"] is False
        assert o["latency_ms"] == 0.0 and o["is_final"] is True
    # the last window is zero-padded past the end of the audio, as the server reports it
    with wave.open(str(digit_wav)) as w:
        assert objs[-1]["end_sample"] > w.getnframes() > objs[-1]["start_sample"]


def test_check_without_smoothing_or_threshold_renders_nulls(digit_wav) -> None:
    r = avsentry(
        "check", str(digit_wav), "--json", "--device", "cpu", "--no-smoothing", "--transforms", "none"
    )
    assert r.returncode == 0, r.stderr
    o = json.loads(r.stdout.splitlines()[0])
    assert o["smoothed"] is None and o["defended"] == [] and o["calibrated"] is False


def test_check_resamples_and_downmixes_with_bounds_at_the_files_rate(
    tmp_path, digit_audio, write_wav
) -> None:
    """A 22.05 kHz stereo file: windows cut at the model rate, bounds reported at 22.05 kHz."""
    from avsentry.pipelines.audio_io import resample

    x = resample(digit_audio, 16000, 22050)
    path = write_wav(tmp_path / "stereo.wav", np.stack([x, 0.5 * x], axis=1), 22050)
    r = avsentry("check", str(path), "--json", "--device", "cpu", "--n", "8", "--n0", "2")
    assert r.returncode == 0, r.stderr
    objs = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert [o["start_sample"] for o in objs] == [round(8000 * i * 22050 / 16000) for i in range(len(objs))]
    assert all(o["end_sample"] - o["start_sample"] == 22050 for o in objs)
    assert objs[-1]["end_sample"] >= len(x) > objs[-1]["start_sample"]
    assert {"three", "seven", "one"} <= {o["raw_label"] for o in objs}


def test_hop_longer_than_the_window_is_refused_in_one_line(digit_wav) -> None:
    """Before: windows 1.5 s apart silently skipped audio and one ended past the file."""
    r = avsentry("check", str(digit_wav), "--hop-ms", "1500", "--device", "cpu")
    assert r.returncode == 1 and r.stdout == "" and "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert "--hop-ms 1500" in line and "1000 ms window" in line


@pytest.mark.parametrize("hop", ["0", "-5", "250.5", "x"])
def test_a_malformed_hop_is_a_usage_error(digit_wav, hop) -> None:
    r = avsentry("check", str(digit_wav), "--hop-ms", hop)
    assert r.returncode == 2 and "--hop-ms" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("content", [None, b"definitely not audio" * 50])
def test_bad_input_gives_one_line_and_exit_1(tmp_path, content) -> None:
    path = tmp_path / "x.wav"
    if content is not None:
        path.write_bytes(content)
    r = avsentry("check", str(path), "--device", "cpu")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and str(path) in r.stderr


def test_a_bad_file_among_good_ones_exits_1_and_is_counted(tmp_path) -> None:
    clean = demo_clips()[0]
    r = avsentry("check", str(clean), str(tmp_path / "missing.wav"), "--device", "cpu")
    assert r.returncode == 1
    assert r.stdout.startswith(f"{clean}   0.00-  1.00s | raw seven")
    assert r.stderr.strip().splitlines()[-1] == ("avsentry check: 2 files, 1 window, 0 flagged, 1 unreadable")


def test_fail_on_flag_exits_3_on_the_adversarial_clip_only() -> None:
    clean, adversarial = demo_clips()
    r = avsentry("check", str(clean), str(adversarial), "--device", "cpu", "--fail-on-flag")
    assert r.returncode == 3, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(str(clean)) and "ok" in lines[0]
    assert lines[1].startswith(str(adversarial)) and "FLAGGED" in lines[1]
    assert r.stderr.strip().splitlines()[-1] == "avsentry check: 2 files, 2 windows, 1 flagged"
    r = avsentry("check", str(adversarial), "--device", "cpu", "--quiet")
    assert r.returncode == 0 and "FLAGGED" in r.stdout and r.stderr == ""  # flagged, but not asked to fail
    r = avsentry("check", str(clean), "--device", "cpu", "--fail-on-flag")
    assert r.returncode == 0, r.stderr


def _run_on_a_terminal(*args: str) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal (stdout a pipe); returns rc, stdout, stderr."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    proc = subprocess.Popen(
        [sys.executable, "-m", "avsentry", *args], stdout=subprocess.PIPE, stderr=slave, text=True
    )
    os.close(slave)
    err = b""
    while True:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            err += chunk
        elif proc.poll() is not None:
            break
    out, _ = proc.communicate(timeout=60)
    os.close(master)
    return proc.returncode, out, err.decode(errors="replace")


def test_long_files_show_a_progress_bar_on_a_terminal_only(tmp_path, write_wav) -> None:
    gen = np.random.default_rng(0)
    path = write_wav(tmp_path / "long.wav", 0.01 * gen.standard_normal(31 * 16000), 16000)
    fast = (
        "--device",
        "cpu",
        "--transforms",
        "none",
        "--no-smoothing",
        "--hop-ms",
        "1000",
        "--threshold",
        "1.8",
    )
    rc, out, err = _run_on_a_terminal("check", str(path), *fast)
    assert rc == 0, err
    assert len(out.splitlines()) == 31
    # the bar is drawn (how far it gets before it is cleared depends on the machine's speed)
    assert "long.wav:" in err and "/31 s of audio" in err
    assert "avsentry check: 1 file, 31 windows, 0 flagged" in err
    rc, out, err = _run_on_a_terminal("check", str(path), *fast, "--quiet")
    assert rc == 0 and len(out.splitlines()) == 31 and err.strip() == ""
    r = avsentry("check", str(path), *fast)  # stderr a pipe: no bar, just the summary
    assert r.returncode == 0 and r.stderr == "avsentry check: 1 file, 31 windows, 0 flagged\n"


def test_bad_transform_spec_is_a_one_line_error(digit_wav) -> None:
    r = avsentry("check", str(digit_wav), "--transforms", "mp3,nosuch", "--device", "cpu")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "nosuch" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_models_lists_the_embedded_models() -> None:
    r = avsentry("models", "--json")
    assert r.returncode == 0, r.stderr
    m, video, v4 = json.loads(r.stdout)  # the default model first
    assert video["name"] == "actions" and video["modality"] == "video"
    assert (video["frames"], video["height"], video["width"], video["fps"]) == (16, 112, 112, 25.0)
    assert video["smoothing_representation"] == "pixels" and video["threshold"] > 0
    assert m["name"] == "digits" and m["threshold"] > 0 and m["measured_fpr"] is not None
    assert m["transforms"] == ["mp3", "opus", "aac", "noise"] or all(":" in t for t in m["transforms"])
    assert m["smoothing_n"] == 32 and m["smoothing_representation"] == "logmel"
    # the model trained for the guard, embedded beside the default with its own calibration
    assert v4["name"] == "digits-v4" and 0 < v4["threshold"] < m["threshold"]
    r = avsentry("models")
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and lines[0].startswith("digits: 12 labels")
    assert lines[1].startswith("actions: 11 labels") and "16 frames of 112x112 at 25 fps" in lines[1]
    assert lines[2].startswith("digits-v4: 12 labels")


@pytest.mark.parametrize(
    ("engine", "voice"), [("flite", "rms"), ("festival", "ked_diphone"), ("espeak", "en-us")]
)
def test_connected_digits_are_read_window_by_window(tmp_path, write_wav, engine, voice) -> None:
    """ "two nine three four" spoken in a row by a held-out voice, through `check` as a user runs
    it: every window that holds one whole digit (and no other) says that digit."""
    from avsentry.tools import speecheval

    if engine == "espeak":  # the accent with the first held-out variant
        variant = next(v for v in synth.espeak_variants() if synth.is_heldout_voice("espeak", f"en+{v}"))
        voice = f"{voice}+{variant}"
    digits = ("two", "nine", "three", "four")
    utts = [synth.Utterance(text=d, label=d, engine=engine, voice=voice) for d in digits]
    assert all(u.heldout for u in utts)
    s = speecheval.digit_string(
        synth.synthesize(utts, progress=False), digits, voice, np.random.default_rng(0)
    )
    path = write_wav(tmp_path / "string.wav", s.audio, 16000)
    r = avsentry("check", str(path), "--json", "--device", "cpu", "--hop-ms", "250")
    assert r.returncode == 0, r.stderr
    verdicts = [json.loads(line) for line in r.stdout.splitlines()]
    targets = speecheval.window_targets(s, np.array([v["start_sample"] for v in verdicts]), 16000)
    judged = [(t, v["raw_label"]) for t, v in zip(targets, verdicts, strict=True) if t is not None]
    assert len(judged) >= 4
    assert all(t == said for t, said in judged), judged
