"""Fuzzing a real ``avsentry serve`` (a subprocess on 127.0.0.1) with the seeded cases of
:mod:`fuzz`: no crash, no UNKNOWN or INTERNAL for client mistakes, no hang, health SERVING after,
a normal stream still right, memory bounded.

The default run sends a few hundred calls; ``pytest -m slow tests/stream/test_fuzz.py -s`` sends
100,000+ messages and prints the figures.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from avsentry.stream.client import GuardClient

sys.path.insert(0, str(Path(__file__).parent))
import fuzz  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture
def fuzz_server(tmp_path):
    port = _free_port()
    (tmp_path / "fuzz.toml").write_text(
        f"""[server]
port = {port}
max_streams = 24
max_stream_s = 20
max_check_s = 20
config_timeout_s = 2
idle_timeout_s = 2
write_timeout_s = 10
grace_s = 1
[model]
device = "cpu"
extra = ["actions"]
[logging]
level = "warning"
"""
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "avsentry", "serve", "--config", str(tmp_path / "fuzz.toml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    assert "serving" in line, line + proc.stderr.read()
    yield f"127.0.0.1:{port}", proc
    if proc.poll() is None:
        proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err.replace("call_end", ""), err[-3000:]


def _check_server_after(target: str, proc: subprocess.Popen, chunks_of, digit_audio) -> None:
    assert proc.poll() is None, "the server process died"
    with grpc.insecure_channel(target) as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    deadline = time.time() + 30
    while True:  # the fuzz calls' windows may still hold the capacity for a moment
        try:
            with GuardClient(target, timeout_s=120) as c:
                verdicts = list(c.stream(chunks_of(digit_audio), sample_rate_hz=16000))
            break
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.time() > deadline:
                raise
            time.sleep(0.5)
    assert {"three", "seven", "one"} <= {v.raw_label for v in verdicts}
    assert not any(v.flagged for v in verdicts)


def _summary(report: fuzz.Report) -> str:
    return (
        f"{report.calls} calls, {report.messages} messages in {report.seconds:.1f} s; statuses "
        + ", ".join(f"{k} {v}" for k, v in sorted(report.counts.items()))
    )


def test_fuzzed_requests_get_precise_statuses(fuzz_server, chunks_of, digit_audio) -> None:
    target, proc = fuzz_server
    report = fuzz.run(target, seed=1234, cases=600, threads=8)
    print(_summary(report))
    assert not report.bad, report.bad[:10]
    assert report.counts["INVALID_ARGUMENT"] > 50 and report.counts["OK"] > 20  # the fuzzer reaches both
    _check_server_after(target, proc, chunks_of, digit_audio)
    assert rss_mb(proc.pid) < 3000


@pytest.mark.slow
def test_fuzz_100k_messages(fuzz_server, chunks_of, digit_audio) -> None:
    """120,000+ messages in two halves; RSS must stop growing (the second half adds < 200 MB)."""
    target, proc = fuzz_server
    seeds = (99, 100)
    cases = [list(fuzz.cases_for_messages(seed, 60_000))[-1] for seed in seeds]
    t0 = time.perf_counter()
    first = fuzz.run(target, seed=seeds[0], cases=cases[0], threads=8)
    rss_half = rss_mb(proc.pid)
    rest = fuzz.run(target, seed=seeds[1], cases=cases[1], threads=8)
    rss_end = rss_mb(proc.pid)
    for r in (first, rest):
        print(_summary(r))
    print(
        f"total {first.messages + rest.messages} messages, {first.calls + rest.calls} calls in "
        f"{time.perf_counter() - t0:.0f} s; server RSS {rss_half:.0f} MB at half, {rss_end:.0f} MB at the end"
    )
    assert first.messages + rest.messages >= 100_000
    assert not first.bad and not rest.bad, (first.bad + rest.bad)[:10]
    _check_server_after(target, proc, chunks_of, digit_audio)
    assert rss_end < 3000 and rss_end - rss_half < 200
