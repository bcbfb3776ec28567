"""`avsentry serve` in one process and `stream` / `mic` / `models` / `demo` in others, as a user
runs them; `check` on the same files gives the verdicts the server streams back."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from avsentry.pipelines.audio_io import resample
from avsentry.stream.commands import demo_clips

# The server under test: a fixed noise seed, so its verdicts are those of `check --noise-seed 0`.
SERVE_FLAGS = ("--device", "cpu", "--noise-seed", "0", "--max-load", "0", "--grace-s", "2")
SCORE_TOLERANCE = 1e-3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def avsentry(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "avsentry", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture(scope="module")
def serve_process():
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "avsentry",
            "serve",
            "--port",
            str(port),
            *SERVE_FLAGS,
            "--log-format",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    assert "serving digits on 127.0.0.1:" in line, line + proc.stderr.read()
    yield f"127.0.0.1:{port}", proc
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)  # reap it and close the pipes


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def assert_same_verdict(offline: dict, online: dict) -> None:
    """Same fields, JSON types, window bounds and labels; scores within a float32 tolerance."""
    assert list(offline) == list(online)
    for name in offline:
        assert type(offline[name]) is type(online[name]), name
    for name in ("window_index", "start_sample", "end_sample", "start_s", "end_s", "model", "raw_label"):
        assert offline[name] == online[name], name
    for name in ("calibrated", "flagged", "reasons", "is_final"):
        assert offline[name] == online[name], name
    for name in ("raw_confidence", "score", "threshold"):
        assert offline[name] == pytest.approx(online[name], abs=SCORE_TOLERANCE), name
    assert [(d["name"], d["label"]) for d in offline["defended"]] == [
        (d["name"], d["label"]) for d in online["defended"]
    ]
    for a, b in zip(offline["defended"], online["defended"], strict=True):
        assert a["distance"] == pytest.approx(b["distance"], abs=SCORE_TOLERANCE)
    sa, sb = offline["smoothed"], online["smoothed"]
    for name in ("label", "abstain", "certified_label", "counts"):
        assert sa[name] == sb[name], name
    assert sa["radius"] == pytest.approx(sb["radius"], abs=SCORE_TOLERANCE)


@pytest.mark.parametrize("fmt", ["16k_mono", "22k_stereo"])
def test_check_json_and_stream_json_agree_window_by_window(
    serve_process, digit_wav, digit_audio, tmp_path, fmt, write_wav
):
    """The acceptance test of the one verdict schema: the offline check and the server cut the
    same windows, key their noise alike and render them through the same record."""
    server, _ = serve_process
    path = digit_wav
    if fmt == "22k_stereo":
        x = resample(digit_audio, 16000, 22050)
        path = write_wav(tmp_path / "stereo.wav", np.stack([x, 0.5 * x], axis=1), 22050)
    checked = avsentry("check", str(path), "--json", "--device", "cpu", "--noise-seed", "0")
    streamed = avsentry("stream", str(path), "--json", "--rate", "0", "--server", server)
    assert checked.returncode == 0, checked.stderr
    assert streamed.returncode == 0, streamed.stderr
    offline, online = json_lines(checked.stdout), json_lines(streamed.stdout)
    assert len(offline) == len(online) >= 7
    for a, b in zip(offline, online, strict=True):
        assert_same_verdict(a, b)
    assert offline[0]["request_id"] == str(path) and online[0]["request_id"]  # the server names it
    assert offline[0]["latency_ms"] == 0.0 < online[0]["latency_ms"]
    assert {"three", "seven", "one"} <= {v["raw_label"] for v in online}
    n = len(online)
    assert checked.stderr.endswith(f"avsentry check: 1 file, {n} windows, 0 flagged\n")
    assert streamed.stderr == f"avsentry stream: {n} windows, 0 flagged\n"


def test_stream_text_lines_are_the_check_lines_plus_latency(serve_process, digit_wav) -> None:
    server, _ = serve_process
    checked = avsentry("check", str(digit_wav), "--device", "cpu", "--quiet")
    streamed = avsentry("stream", str(digit_wav), "--rate", "0", "--server", server, "--quiet")
    assert checked.returncode == streamed.returncode == 0, streamed.stderr
    assert streamed.stderr == ""
    online = [line.rsplit(" | ", 1) for line in streamed.stdout.splitlines()]
    assert all(latency.endswith(" ms") for _, latency in online)
    assert [head for head, _ in online] == checked.stdout.splitlines()


def test_stream_fail_on_flag_exits_3_on_the_adversarial_clip(serve_process) -> None:
    server, _ = serve_process
    clean, adversarial = demo_clips()
    r = avsentry("stream", str(adversarial), "--rate", "0", "--server", server, "--fail-on-flag")
    assert r.returncode == 3, r.stderr
    assert "FLAGGED" in r.stdout and r.stderr == "avsentry stream: 1 window, 1 flagged\n"
    r = avsentry("stream", str(clean), "--rate", "0", "--server", server, "--fail-on-flag")
    assert r.returncode == 0 and "FLAGGED" not in r.stdout, r.stderr


def test_stream_detector_flags_reach_the_server(serve_process, digit_wav) -> None:
    """--hop-ms, --n, --threshold travel in the StreamConfig (a locked server accepts a stricter
    defence); the verdicts show them."""
    server, _ = serve_process
    r = avsentry(
        "stream", str(digit_wav), "--json", "--rate", "0", "--server", server,
        "--hop-ms", "250", "--n", "40", "--threshold", "0", "--fail-on-flag",
    )  # fmt: skip
    assert r.returncode == 3, r.stderr
    verdicts = json_lines(r.stdout)
    assert [v["start_sample"] for v in verdicts] == [4000 * i for i in range(len(verdicts))]
    for v in verdicts:
        assert v["threshold"] == 0.0 and v["calibrated"] is False and v["flagged"] is True
        assert sum(v["smoothed"]["counts"].values()) == 40
    assert r.stderr == f"avsentry stream: {len(verdicts)} windows, {len(verdicts)} flagged\n"


def test_a_locked_server_refuses_a_weaker_defence_in_one_line(serve_process, digit_wav) -> None:
    server, _ = serve_process
    r = avsentry("stream", str(digit_wav), "--rate", "0", "--server", server, "--no-smoothing")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("avsentry stream: error: PERMISSION_DENIED")


def test_models_lists_the_servers_models(serve_process) -> None:
    server, _ = serve_process
    r = avsentry("models", "--server", server, "--json")
    assert r.returncode == 0, r.stderr
    (served,) = json.loads(r.stdout)
    (embedded,) = [m for m in json.loads(avsentry("models", "--json").stdout) if m["name"] == "digits"]
    assert served["is_default"] is True
    shared = set(served) & set(embedded)
    assert shared >= {"name", "labels", "sample_rate_hz", "window_samples", "threshold", "transforms"}
    for key in shared:
        if isinstance(served[key], float):
            assert served[key] == pytest.approx(embedded[key], rel=1e-6), key
        else:
            assert served[key] == embedded[key], key
    r = avsentry("models", "--server", server)
    assert r.returncode == 0 and r.stdout.startswith("digits (default): 12 labels")
    r = avsentry("models", "--server", "127.0.0.1:1")
    assert r.returncode == 1 and "UNAVAILABLE" in r.stderr and "Traceback" not in r.stderr


ASOUNDRC = """\
pcm.avs_raw {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{infile}"
    format "raw"
}}
pcm.avs_mic {{
    type plug
    slave {{ pcm "avs_raw"; format FLOAT_LE; rate 22050; channels 2 }}
}}
"""


def test_mic_prints_verdicts_a_summary_and_fails_on_flag(serve_process, digit_audio, tmp_path) -> None:
    """`avsentry mic` on an ALSA device that replays spoken digits (no sound card, no clock)."""
    server, _ = serve_process
    home = tmp_path / "home"
    (home / ".config" / "pulse").mkdir(parents=True)
    (home / ".config" / "pulse" / "client.conf").write_text("autospawn = no\n")
    x = resample(digit_audio, 16000, 22050)[: 3 * 22050]
    infile = tmp_path / "capture.f32"
    np.stack([x, x], axis=1).astype("<f4").tofile(infile)
    (home / ".asoundrc").write_text(ASOUNDRC.format(infile=infile))
    r = avsentry(
        "mic", "--input-device", "avs_mic", "--channels", "2", "--seconds", "1.5", "--buffer-ms", "60000",
        "--server", server, "--json", "--threshold", "0", "--fail-on-flag",
        env={**os.environ, "HOME": str(home)}, timeout=120,
    )  # fmt: skip
    assert r.returncode == 3, r.stderr
    verdicts = json_lines(r.stdout)
    assert [(v["start_sample"], v["end_sample"]) for v in verdicts] == [(0, 22050), (11025, 33075)]
    assert all(v["flagged"] for v in verdicts)
    lines = r.stderr.strip().splitlines()
    assert "capturing 2 channel(s) at 22050 Hz" in lines[0]
    # the device has no clock and delivers as fast as it can: how many blocks a busy machine drops
    # along the way is not the point here
    assert lines[-1].startswith("avsentry mic: 2 windows, 2 flagged; ") and "block(s) dropped" in lines[-1]


def test_stream_reports_server_errors_in_one_line(serve_process, tmp_path) -> None:
    server, _ = serve_process
    r = avsentry("stream", str(tmp_path / "missing.wav"), "--server", server, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "missing.wav" in r.stderr
    r = avsentry("stream", "/dev/null", "--server", "127.0.0.1:1", timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr


def test_serve_stops_gracefully_and_logs_json(serve_process) -> None:
    """Last in this module: SIGTERM drains the shared server (exit 0, 'stopped'); its log lines
    were JSON (--log-format json)."""
    _, proc = serve_process
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "stopped" in out
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert logs and len(logs) == len(err.splitlines())


def test_demo_flags_the_adversarial_clip_only() -> None:
    r = avsentry("demo", "--rate", "0", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    clean, adversarial = r.stdout.split("--- streaming demo_2_adversarial.wav")
    assert "raw seven" in clean and "FLAGGED" not in clean
    assert "FLAGGED" in adversarial and "raw seven" not in adversarial


def test_serve_refuses_public_address_without_tls() -> None:
    r = avsentry("serve", "--address", "0.0.0.0", "--port", "0", timeout=60)
    assert r.returncode == 1 and "without TLS" in r.stderr and "Traceback" not in r.stderr
