"""`avsentry serve` in one process and `avsentry stream` / `demo` in another, as a user runs them."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def serve_process():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "avsentry", "serve", "--port", str(port), "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    assert "serving digits on 127.0.0.1:" in line, line + proc.stderr.read()
    yield port, proc
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)  # reap it and close the pipes


def test_serve_then_stream_a_file(serve_process, digit_wav) -> None:
    port, proc = serve_process
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "avsentry",
            "stream",
            str(digit_wav),
            "--server",
            f"127.0.0.1:{port}",
            "--rate",
            "0",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    verdicts = [json.loads(line) for line in r.stdout.splitlines()]
    assert {"three", "seven", "one"} <= {v["raw_label"] for v in verdicts}
    assert not any(v["flagged"] for v in verdicts)
    proc.send_signal(signal.SIGTERM)  # graceful shutdown
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "stopped" in out


def test_stream_reports_server_errors_in_one_line(serve_process, tmp_path) -> None:
    port, _ = serve_process
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "avsentry",
            "stream",
            str(tmp_path / "missing.wav"),
            "--server",
            f"127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr and "missing.wav" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "avsentry", "stream", "/dev/null", "--server", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr


def test_demo_flags_the_adversarial_clip_only() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "avsentry", "demo", "--rate", "0", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    clean, adversarial = r.stdout.split("--- streaming demo_2_adversarial.wav")
    assert "raw seven" in clean and "FLAGGED" not in clean
    assert "FLAGGED" in adversarial and "raw seven" not in adversarial


def test_serve_refuses_public_address_without_tls() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "avsentry", "serve", "--address", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "without TLS" in r.stderr and "Traceback" not in r.stderr
