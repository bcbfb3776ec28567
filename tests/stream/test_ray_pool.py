"""The Ray Serve inference pool on one machine, as an operator runs it from the README: a local
Ray cluster (``ray start --head``), the pool deployed from ``deploy/ray-serve.yaml`` (two CPU
replicas), front ends started with ``avsentry serve --inference ray=ADDRESS`` behind Envoy.

- The pool's verdicts are the in-process detector's.
- A batch whose replica is killed while it runs is sent again and answered by the other replica.
- Real speech streams through Envoy keep every window exactly once when a front end holding one
  is killed and then a pool replica is killed.
- ``avsentry serve --inference ray`` starts a Ray instance of its own and judges as in process.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from avsentry.pipelines.detection import Detector, DetectorConfig
from avsentry.pipelines.recognizers import load_recognizer, read_manifest
from avsentry.pipelines.smoothing import SmoothingConfig
from avsentry.stream.inference import Batch, PoolClient, RemoteDetector, connect

sys.path.insert(0, str(Path(__file__).parent))
from test_envoy import _admin, envoy_config, start_envoy  # noqa: E402
from test_resume import SpeechStream, _free_port, _serve, _stop, assert_each_window_once  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
REPLICA = "ray::ServeReplica:avsentry:InferencePool"


def _run(*cmd: str, timeout: float = 300) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)}: {done.stdout[-3000:]} {done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def pool_address():
    """A local Ray cluster with the pool of deploy/ray-serve.yaml running; its GCS address.
    Processes that join it by address use its token (RAY_AUTH_MODE=token, set in conftest).

    The head runs as ``ray start --head --block`` in a process group of its own, and teardown
    ends that group only: never ``ray stop``, which stops every Ray cluster on the machine."""
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    log = Path(tempfile.mkstemp(prefix="ray-head-", suffix=".log")[1])
    with log.open("w") as out:
        head = subprocess.Popen(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                "--block",
                f"--port={port}",
                "--num-cpus=4",
                "--include-dashboard=false",
                "--disable-usage-stats",
                f"--temp-dir={temp}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        address = _head_address(head, log)
        _run(
            str(BIN / "serve"),
            "run",
            "--non-blocking",
            "--address",
            address,
            str(ROOT / "deploy/ray-serve.yaml"),
        )
        yield address
    finally:
        head.terminate()  # the head's own shutdown ends its raylet, GCS and workers
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:  # whatever of this cluster outlived its head
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        head.wait()
        shutil.rmtree(temp, ignore_errors=True)
        log.unlink(missing_ok=True)


def _head_address(head: subprocess.Popen, log: Path, timeout: float = 180) -> str:
    """How other nodes and drivers join the cluster, as ``ray start`` prints it once the head
    runs (the host's node address)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"--address='([^']+)'", log.read_text())
        if found:
            return found.group(1)
        assert head.poll() is None, f"ray start exited with {head.returncode}: {log.read_text()[-3000:]}"
        time.sleep(0.5)
    raise AssertionError(f"ray start printed no address in {timeout:.0f} s: {log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def pool(pool_address):
    """This test process's handle on the pool (it waits until the replicas run)."""
    client = connect(pool_address, timeout_s=300)
    try:
        yield client
    finally:
        import ray

        ray.shutdown()


def _replicas() -> list[int]:
    out = subprocess.run(["pgrep", "-f", REPLICA], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _votes(verdicts) -> list:
    """Each verdict's smoothing vote counts: the same noise gives the same votes."""
    return [v.smoothed.counts.tolist() for v in verdicts]


def _windows(digit_audio: np.ndarray, n: int) -> np.ndarray:
    audio = np.tile(digit_audio, 1 + n * 8000 // len(digit_audio))
    return np.stack([audio[k * 8000 : k * 8000 + 16000] for k in range(n)]).astype(np.float32)


def test_the_pool_judges_as_the_in_process_detector(pool: PoolClient, digit_audio) -> None:
    assert pool.description["models"].keys() >= {"digits", "actions"}
    config = DetectorConfig(transforms=("mp3", "opus", "noise"), seed=3, threshold=1.0)
    x = _windows(digit_audio, 6)
    keys = tuple(range(100, 106))
    judged = pool.call("judge", Batch(model="digits", config=config, windows=x, keys=keys))
    assert judged.error is None
    local = Detector(load_recognizer("digits", device="cpu"), config).analyze(x, keys=list(keys))
    assert [v.raw_label for v in judged.verdicts] == [v.raw_label for v in local]
    assert [v.flagged for v in judged.verdicts] == [v.flagged for v in local]
    assert [v.score for v in judged.verdicts] == pytest.approx([v.score for v in local], abs=1e-5)
    assert _votes(judged.verdicts) == _votes(local)
    # as the batcher calls it: the pool's detector, with the raw softmax early (interim verdicts)
    remote = RemoteDetector(pool, "digits", read_manifest("digits").spec, config)
    early: list = []
    verdicts = remote.analyze(x, keys=list(keys), on_raw=early.append)
    assert [v.score for v in verdicts] == pytest.approx([v.score for v in local], abs=1e-5)
    (raw,) = early
    assert raw == pytest.approx(np.stack([v.raw_probs for v in local]), abs=1e-5)
    bad = pool.call("judge", Batch(model="digits", config=config, windows=x[:, :100], keys=keys))
    assert bad.error is not None and "failed" in bad.error  # a bad batch fails alone, with a reason


def test_a_batch_whose_replica_dies_is_answered_by_another(pool: PoolClient, digit_audio) -> None:
    """A slow batch (n = 1024 noisy copies of 24 windows) is in flight; the replica working on it
    (the one burning CPU) is SIGKILLed; the batch comes back from the other replica, equal to
    what the in-process detector says."""
    config = DetectorConfig(transforms=(), smoothing=SmoothingConfig(n=1024, n0=64), seed=5, threshold=1.0)
    x = _windows(digit_audio, 24)
    keys = tuple(range(24))
    replicas = _replicas()
    assert len(replicas) == 2, replicas
    before = pool.retried
    result: list = []
    call = threading.Thread(
        target=lambda: result.append(
            pool.call("judge", Batch(model="digits", config=config, windows=x, keys=keys))
        )
    )
    call.start()
    busy = None
    deadline = time.monotonic() + 60
    while busy is None and time.monotonic() < deadline:
        ticks = {p: _cpu_ticks(p) for p in replicas}
        time.sleep(0.5)
        spent = {p: _cpu_ticks(p) - t for p, t in ticks.items()}
        top = max(spent, key=spent.__getitem__)
        if spent[top] >= 30:  # 0.3 s of CPU in 0.5 s: it is judging the batch
            busy = top
    assert busy is not None, "no replica took the batch"
    os.kill(busy, signal.SIGKILL)
    call.join(timeout=300)
    assert not call.is_alive()
    (judged,) = result
    assert pool.retried == before + 1
    local = Detector(load_recognizer("digits", device="cpu"), config).analyze(x, keys=list(keys))
    assert _votes(judged.verdicts) == _votes(local)
    assert [v.score for v in judged.verdicts] == pytest.approx([v.score for v in local], abs=1e-5)


def test_front_ends_behind_envoy_and_the_pool_lose_no_window(pool_address, tmp_path, digit_audio) -> None:
    """Envoy, two front ends on the pool, two real speech streams (19 windows each, at 2x real
    time): a front end holding one is SIGKILLed after 4 verdicts of each, then a pool replica
    after 10. Every window of every stream arrives once, equal to an unbroken stream's."""
    a, b, listen, admin = (_free_port() for _ in range(4))
    config = envoy_config(tmp_path, a, b, listen, admin)
    servers = {port: _serve(port, "--inference", f"ray={pool_address}") for port in (a, b)}
    try:
        envoy = start_envoy(config, admin, (a, b))
        try:
            streams = [SpeechStream(f"127.0.0.1:{listen}", digit_audio) for _ in range(2)]
            for stream in streams:
                stream.wait_for(4)
            busiest = max((a, b), key=lambda port: int(_admin(admin, port, "rq_active") or 0))
            _stop(servers[busiest], signal.SIGKILL)
            for stream in streams:
                stream.wait_for(10)
            os.kill(_replicas()[0], signal.SIGKILL)
            got = [stream.finish() for stream in streams]
            reference = streams[0].reference()  # the same speech, the same noise keys
        finally:
            envoy.terminate()
            envoy.wait(timeout=30)
    finally:
        for proc in servers.values():
            _stop(proc)
    for windows in got:
        assert_each_window_once(windows, reference)


def test_a_front_end_refuses_a_pool_that_is_not_there(pool_address, tmp_path) -> None:
    """``[inference]`` naming an application the cluster does not run: ``serve`` stops at once
    with one line saying what to deploy, before it listens."""
    config = tmp_path / "server.toml"
    config.write_text(f'[inference]\nengine = "ray"\naddress = "{pool_address}"\napp = "nope"\n')
    done = subprocess.run(
        [sys.executable, "-m", "avsentry", "serve", "--config", str(config), "--port", str(_free_port())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("avsentry serve: error: no running Serve application 'nope'"), done.stderr[-2000:]
    assert "serve run --non-blocking deploy/ray-serve.yaml" in last


def test_serve_starts_its_own_ray_instance_and_judges_as_in_process(digit_audio, chunks_of) -> None:
    """``avsentry serve --inference ray``: a local Ray instance of its own with the pool in it;
    the verdicts of a real speech stream equal an in-process server's."""
    from avsentry.stream.client import GuardClient

    local, pooled = _free_port(), _free_port()
    servers = [_serve(local), _serve(pooled, "--inference", "ray")]
    try:
        got = {}
        for port in (local, pooled):
            with GuardClient(f"127.0.0.1:{port}", timeout_s=120) as client:
                got[port] = list(
                    client.stream(chunks_of(digit_audio), sample_rate_hz=16000, encoding="float32")
                )
    finally:
        for proc in servers:
            _stop(proc)
    assert servers[1].returncode == 0  # drained, and its Ray instance shut down
    assert len(got[local]) >= 2
    assert [(v.start_sample, v.raw_label, v.flagged) for v in got[pooled]] == [
        (v.start_sample, v.raw_label, v.flagged) for v in got[local]
    ]
    assert [v.score for v in got[pooled]] == pytest.approx([v.score for v in got[local]], abs=1e-5)
