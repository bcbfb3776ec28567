"""A hostile client against a real server on 127.0.0.1: every bad input gets a precise status, and
nothing one client does crashes the server, fails another stream, buys unbounded work, holds a
slot forever, switches the defence off or predicts the noise."""

from __future__ import annotations

import io
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from avsentry.pipelines.windowing import frame
from avsentry.stream._proto.avsentry.v1 import guard_pb2 as pb
from avsentry.stream._proto.avsentry.v1 import guard_pb2_grpc as pb_grpc
from avsentry.stream.client import GuardClient, make_config
from avsentry.stream.commands import local_server
from avsentry.stream.config import ServerConfig

SR = 16000


def expected_windows(n_samples: int, hop: int = 8000) -> int:
    return len(frame(np.zeros(n_samples), window=SR, hop=hop)[1])


def wav_bytes(rate: int, channels: int, frames: int, *, seed: int = 0) -> bytes:
    """A PCM16 WAV written byte by byte: the header may say anything."""
    data = (np.random.default_rng(seed).standard_normal((frames, channels)) * 2000).astype("<i2").tobytes()
    block = 2 * channels
    return (
        b"RIFF"
        + struct.pack("<I", 36 + len(data))
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, 16)
        + b"data"
        + struct.pack("<I", len(data))
        + data
    )


def status_of(fn) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code(), e.value.details() or ""


def _requests(*msgs):
    yield from msgs


def _config(**kw) -> pb.AudioRequest:
    return pb.AudioRequest(
        config=make_config(**{"encoding": pb.AUDIO_ENCODING_PCM16, "sample_rate_hz": SR, **kw})
    )


def _chunk(seq: int, data: bytes) -> pb.AudioRequest:
    return pb.AudioRequest(chunk=pb.AudioChunk(sequence=seq, data=data))


def pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


# -- the defence policy ----------------------------------------------------------------------------
LOCK_CASES = {
    "no transforms": (dict(transforms=["none"]), grpc.StatusCode.PERMISSION_DENIED, "cannot be dropped"),
    "one transform dropped": (
        dict(transforms=["mp3", "opus", "aac"]),
        grpc.StatusCode.PERMISSION_DENIED,
        "cannot be dropped",
    ),
    "smoothing off": (dict(disable_smoothing=True), grpc.StatusCode.PERMISSION_DENIED, "cannot be disabled"),
    "fewer copies": (dict(smoothing_n=16), grpc.StatusCode.PERMISSION_DENIED, "smoothing_n"),
    "other sigma": (dict(smoothing_sigma=0.5), grpc.StatusCode.PERMISSION_DENIED, "fixed"),
    "higher threshold": (dict(threshold=1.99), grpc.StatusCode.PERMISSION_DENIED, "only be lowered"),
    "longer hop": (dict(hop_ms=1000), grpc.StatusCode.PERMISSION_DENIED, "hop_ms"),
    "n far too large": (dict(smoothing_n=10_000), grpc.StatusCode.INVALID_ARGUMENT, "smoothing_n must be in"),
    "griffin-lim bomb": (
        dict(transforms=["mp3", "opus", "aac", "noise", "mel_inversion:n_fft=8192,hop_length=16,n_iter=100"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "mel_inversion",
    ),
    "coprime resample": (
        dict(transforms=["mp3", "opus", "aac", "noise", "resample:intermediate_rate_hz=8001"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "must be one of",
    ),
    "sub-hertz lowpass": (
        dict(transforms=["mp3", "opus", "aac", "noise", "lowpass:cutoff_hz=1e-300"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "cutoff_hz",
    ),
    "sample rate as a parameter": (
        dict(transforms=["mp3:sample_rate_hz=8000", "opus", "aac", "noise"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "sample_rate_hz",
    ),
    "thread bomb": (
        dict(transforms=["mp3:workers=1000", "opus", "aac", "noise"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "workers",
    ),
    "hop too short": (dict(hop_ms=10), grpc.StatusCode.INVALID_ARGUMENT, "hop_ms must be in"),
}


@pytest.mark.parametrize("case", sorted(LOCK_CASES))
def test_locked_policy_refuses_weakening_and_bounds_cost(case, client) -> None:
    """The default server locks its defence: a client may not switch it off or buy unbounded work."""
    kw, code, text = LOCK_CASES[case]
    got, details = status_of(lambda: list(client.stub.StreamAudio(_requests(_config(**kw)), timeout=30)))
    assert got == code, details
    assert text in details


def test_locked_policy_accepts_a_stronger_defence(client, chunks_of, digit_audio) -> None:
    """More transforms, more copies, a shorter hop and a lower threshold are all allowed; the verdict
    says the threshold is no longer the calibrated one."""
    audio = digit_audio[:24000]
    verdicts = list(
        client.stream(
            chunks_of(audio),
            sample_rate_hz=SR,
            transforms=["mp3", "opus", "aac", "noise", "quantize:bits=8"],
            smoothing_n=48,
            hop_ms=250,
            threshold=1.5,
        )
    )
    assert len(verdicts) == expected_windows(len(audio), hop=4000)
    assert all(v.threshold == pytest.approx(1.5) and not v.calibrated for v in verdicts)
    assert [d.name for d in verdicts[0].defended] == ["mp3", "opus", "aac", "noise", "quantize", "smoothing"]
    default = list(client.stream(chunks_of(audio), sample_rate_hz=SR))
    assert all(v.calibrated for v in default)


def test_unlocked_server_allows_no_defence_and_says_so(chunks_of, digit_audio) -> None:
    with (
        local_server(ServerConfig(port=0, device="cpu", lock=False, max_load=0)) as srv,
        GuardClient(f"127.0.0.1:{srv.port}", timeout_s=60) as c,
    ):
        (v,) = c.stream(
            chunks_of(digit_audio[:16000]), sample_rate_hz=SR, transforms=["none"], disable_smoothing=True
        )
    assert not v.defended and not v.HasField("smoothed") and v.score == 0 and not v.calibrated


# -- malformed input -------------------------------------------------------------------------------
def test_bytes_that_are_not_protobuf_are_invalid_argument(server) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stream = ch.stream_stream("/avsentry.v1.Guard/StreamAudio", lambda b: b, lambda b: b)
        code, _ = status_of(lambda: list(stream(iter([b"\xff\xff\xff\xff not protobuf"]), timeout=30)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        unary = ch.unary_unary("/avsentry.v1.Guard/CheckAudio", lambda b: b, lambda b: b)
        code, _ = status_of(lambda: unary(b"\x0a\xff\xff\xff\xff\x0f", timeout=30))
        assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_error_messages_do_not_echo_unbounded_input(client) -> None:
    code, details = status_of(
        lambda: list(client.stub.StreamAudio(_requests(_config(model="x" * 10_000)), timeout=30))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "unknown model" in details
    assert len(details) <= 300
    code, details = status_of(
        lambda: list(client.stub.StreamAudio(_requests(_config(request_id="\x00bad\n" * 50)), timeout=30))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "request_id" in details


def test_huge_float_stereo_cannot_fail_other_streams(server, chunks_of, digit_audio) -> None:
    """+-3.4e38 float32 stereo once overflowed the downmix, and the batch's error failed every stream
    batched with it. Now it is clipped like any full-scale signal and judged; others are untouched."""
    good: dict = {}

    def run_good() -> None:
        with GuardClient(f"127.0.0.1:{server.port}", timeout_s=120) as c:
            good["v"] = list(c.stream(chunks_of(digit_audio), sample_rate_hz=SR))

    t = threading.Thread(target=run_good)
    t.start()
    big = np.full((SR, 2), np.finfo(np.float32).max, np.float32)
    big[::2] *= -1
    with GuardClient(f"127.0.0.1:{server.port}", timeout_s=120) as c:
        hostile = list(c.stream(iter(np.split(big, 8)), sample_rate_hz=SR, channels=2, encoding="float32"))
    t.join()
    assert len(hostile) == 1 and np.isfinite(hostile[0].score)
    assert len(good["v"]) == expected_windows(len(digit_audio))
    assert not any(v.flagged for v in good["v"])


CHECK_FILES = {
    "8 channels": (wav_bytes(SR, 8, SR), None, ""),
    "29 channels": (wav_bytes(SR, 29, 2000), grpc.StatusCode.INVALID_ARGUMENT, "29 channels"),
    "62 channels": (wav_bytes(SR, 62, 1000), grpc.StatusCode.INVALID_ARGUMENT, "62 channels"),
    "1 Hz": (wav_bytes(1, 1, 200), grpc.StatusCode.INVALID_ARGUMENT, "sample rate 1 Hz"),
    "687 MHz": (wav_bytes(687_873_856, 1, 8000), grpc.StatusCode.INVALID_ARGUMENT, "687873856 Hz"),
    "too long": (wav_bytes(8000, 1, 8000 * 25), grpc.StatusCode.OUT_OF_RANGE, "at most 20 s"),
    "garbage": (b"RIFF\x00\x00" + os.urandom(300), grpc.StatusCode.INVALID_ARGUMENT, "cannot decode"),
}


@pytest.mark.parametrize("case", sorted(CHECK_FILES))
def test_check_audio_checks_the_header_before_decoding(case, client) -> None:
    data, code, text = CHECK_FILES[case]
    if code is None:
        verdicts = client.stub.CheckAudio(pb.CheckAudioRequest(file=data), timeout=60).verdicts
        assert len(verdicts) == expected_windows(SR)
        return
    # refused from the header, before any decoding: the message names the header's field (the
    # 687 MHz file once froze the server for 10 s building windows)
    got, details = status_of(lambda: client.stub.CheckAudio(pb.CheckAudioRequest(file=data), timeout=60))
    assert got == code and text in details, details


def test_health_stays_serving_after_abuse(client, chunks_of, digit_audio) -> None:
    """After the cases above (same server), health is SERVING and a normal stream is right."""
    health = health_pb2_grpc.HealthStub(client.channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    verdicts = list(client.stream(chunks_of(digit_audio), sample_rate_hz=SR))
    assert {"three", "seven", "one"} <= {v.raw_label for v in verdicts}


# -- slots, timeouts, capacity ---------------------------------------------------------------------
def test_idle_and_silent_streams_are_cut(chunks_of, digit_audio) -> None:
    """Slowloris: streams that send nothing (or only a config) lose their slot after the timeouts,
    and then a normal stream gets through."""
    cfg = ServerConfig(port=0, device="cpu", max_streams=4, config_timeout_s=1, idle_timeout_s=1, max_load=0)
    with local_server(cfg) as srv:
        target = f"127.0.0.1:{srv.port}"
        gate = threading.Event()
        results: list = []

        def silent(send_config: bool) -> None:
            def msgs():
                if send_config:
                    yield _config()
                gate.wait(30)

            with GuardClient(target) as c:
                try:
                    list(c.stub.StreamAudio(msgs(), timeout=30))
                    results.append(None)
                except grpc.RpcError as e:
                    results.append((e.code(), e.details()))

        threads = [threading.Thread(target=silent, args=(k % 2 == 0,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        gate.set()
        assert len(results) == 4
        assert all(r is not None and r[0] == grpc.StatusCode.DEADLINE_EXCEEDED for r in results), results
        assert {"no StreamConfig within 1 s", "no audio for 1 s"} == {r[1] for r in results}
        with GuardClient(target, timeout_s=60) as c:
            assert len(list(c.stream(chunks_of(digit_audio[:16000]), sample_rate_hz=SR))) == 1
        assert srv.service.active == 0


def test_a_client_that_stops_reading_is_cut(chunks_of) -> None:
    """The verdicts of a client that never reads fill the HTTP/2 window; the server gives up on it
    after write_timeout_s instead of holding the slot (and its windows) forever."""
    cfg = ServerConfig(
        port=0, device="cpu", lock=False, max_load=0, write_timeout_s=2, max_stream_s=600, min_hop_ms=100
    )
    with local_server(cfg) as srv:
        audio = np.random.default_rng(0).uniform(-0.1, 0.1, SR * 200).astype(np.float32)
        opts = [("grpc.http2.bdp_probe", 0)]
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}", options=opts) as ch:
            call = pb_grpc.GuardStub(ch).StreamAudio(
                _requests(
                    _config(transforms=["none"], disable_smoothing=True, hop_ms=100),
                    *[_chunk(k, pcm16(c[:, 0])) for k, c in enumerate(chunks_of(audio, 1600))],
                ),
                timeout=120,
            )
            deadline = time.time() + 30
            while not srv.service.active and time.time() < deadline:
                time.sleep(0.02)
            assert srv.service.active == 1, "the stream never started"
            deadline = time.time() + 90
            while srv.service.active and time.time() < deadline:
                time.sleep(0.2)
            assert srv.service.active == 0, "the server still holds the unread stream"
            with pytest.raises(grpc.RpcError) as e:
                for _ in call:
                    pass
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "read no verdict" in (e.value.details() or "")


def test_admission_control_refuses_streams_beyond_capacity(chunks_of, digit_audio) -> None:
    """Each stream commits 0.2 of the server (100 ms per window, 2 windows/s): at max_load 0.5 the
    third is refused at once, and admitted again once a slot's work is released. CheckAudio counts."""
    cfg = ServerConfig(port=0, device="cpu", window_cost_ms=100, max_load=0.5)
    with local_server(cfg) as srv:
        target = f"127.0.0.1:{srv.port}"
        gate = threading.Event()

        def held():
            yield from chunks_of(digit_audio[:16000])
            gate.wait(30)

        with GuardClient(target, timeout_s=60) as c1, GuardClient(target, timeout_s=60) as c2:
            s1, s2 = c1.stream(held(), sample_rate_hz=SR), c2.stream(held(), sample_rate_hz=SR)
            next(s1), next(s2)
            assert srv.service.capacity.load == pytest.approx(0.4)
            with GuardClient(target, timeout_s=60) as c3:
                code, details = status_of(
                    lambda: list(c3.stream(chunks_of(digit_audio[:16000]), sample_rate_hz=SR))
                )
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "capacity" in details
                code, _ = status_of(
                    lambda: c3.stub.CheckAudio(pb.CheckAudioRequest(file=wav_bytes(SR, 1, SR)))
                )
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            gate.set()
            list(s1), list(s2)
        deadline = time.time() + 10
        while srv.service.active and time.time() < deadline:
            time.sleep(0.05)
        assert srv.service.capacity.load == pytest.approx(0.0)
        with GuardClient(target, timeout_s=60) as c:
            assert len(list(c.stream(chunks_of(digit_audio[:16000]), sample_rate_hz=SR))) == 1


# -- noise secrecy ---------------------------------------------------------------------------------
def _noise_distances(target: str, audio: np.ndarray, chunks_of) -> list[float]:
    with GuardClient(target, timeout_s=60) as c:
        verdicts = list(c.stream(chunks_of(audio), sample_rate_hz=SR))
    return [next(d.distance for d in v.defended if d.name == "noise") for v in verdicts]


def test_noise_is_secret_and_fresh_per_stream_unless_seeded(chunks_of, digit_audio) -> None:
    """By default two streams of the same audio see different noise (a client cannot reproduce the
    server's noise offline); with a fixed noise_seed they see the same (reproducible runs)."""
    audio = digit_audio[:32000]
    with local_server(ServerConfig(port=0, device="cpu", max_load=0)) as srv:
        a = _noise_distances(f"127.0.0.1:{srv.port}", audio, chunks_of)
        b = _noise_distances(f"127.0.0.1:{srv.port}", audio, chunks_of)
    assert a != b
    with local_server(ServerConfig(port=0, device="cpu", max_load=0, noise_seed=7)) as srv:
        a = _noise_distances(f"127.0.0.1:{srv.port}", audio, chunks_of)
        b = _noise_distances(f"127.0.0.1:{srv.port}", audio, chunks_of)
    assert a == b


# -- auth ------------------------------------------------------------------------------------------
def test_token_refuses_reflection_at_once(chunks_of, digit_audio) -> None:
    """A reflection call (stream-stream) without a token used to hang until its deadline."""
    with local_server(ServerConfig(port=0, device="cpu", token="s3cret", max_load=0)) as srv:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            refl = reflection_pb2_grpc.ServerReflectionStub(ch)
            code, _ = status_of(
                lambda: list(
                    refl.ServerReflectionInfo(
                        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=20
                    )
                )
            )
            assert code == grpc.StatusCode.UNAUTHENTICATED  # not DEADLINE_EXCEEDED: it did not hang
            health = health_pb2_grpc.HealthStub(ch)
            assert (
                health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
            )
        with GuardClient(f"127.0.0.1:{srv.port}", token="s3cret", timeout_s=60) as c:
            assert len(list(c.stream(chunks_of(digit_audio[:16000]), sample_rate_hz=SR))) == 1
        with GuardClient(f"127.0.0.1:{srv.port}", token="s3cret-but-longer", timeout_s=60) as c:
            code, _ = status_of(c.list_models)
            assert code == grpc.StatusCode.UNAUTHENTICATED


# -- the real shutdown path ------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sigterm_drains_not_serving_first_then_finishes_open_streams(
    tmp_path, chunks_of, digit_audio
) -> None:
    """SIGTERM to a real `avsentry serve`: health turns NOT_SERVING while it still answers, new
    streams get UNAVAILABLE, a stream that ends within the grace period gets every window, one
    that does not gets the windows of all the audio it sent and then UNAVAILABLE; exit status 0."""
    port = _free_port()
    (tmp_path / "s.toml").write_text(
        f'[server]\nport = {port}\ngrace_s = 4\n[model]\ndevice = "cpu"\n[logging]\nformat = "json"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "avsentry", "serve", "--config", str(tmp_path / "s.toml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "serving" in line, line + proc.stderr.read()
        target = f"127.0.0.1:{port}"
        finish, never = threading.Event(), threading.Event()
        out: dict = {}

        def run(name: str, audio: np.ndarray, more: np.ndarray | None, gate: threading.Event) -> None:
            def chunks():
                yield from chunks_of(audio)
                gate.wait(30)
                if more is not None:
                    yield from chunks_of(more)

            with GuardClient(target, timeout_s=60) as c:
                got = []
                try:
                    for v in c.stream(chunks(), sample_rate_hz=SR):
                        got.append(v)
                    out[name] = (got, None)
                except grpc.RpcError as e:
                    out[name] = (got, e.code())

        a = threading.Thread(target=run, args=("ends", digit_audio[:16000], digit_audio[16000:32000], finish))
        b = threading.Thread(target=run, args=("stays", digit_audio[:24000], None, never))
        a.start()
        b.start()
        time.sleep(3)  # both streams are open and have had their first windows judged
        proc.send_signal(signal.SIGTERM)
        with grpc.insecure_channel(target) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            deadline = time.time() + 3
            status = None
            while time.time() < deadline:
                status = health.Check(
                    health_pb2.HealthCheckRequest(service="avsentry.v1.Guard"), timeout=2
                ).status
                if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                time.sleep(0.05)
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        with GuardClient(target, timeout_s=10) as c:
            code, _ = status_of(lambda: list(c.stream(chunks_of(digit_audio[:16000]), sample_rate_hz=SR)))
            assert code == grpc.StatusCode.UNAVAILABLE
        finish.set()  # the first stream sends its second second of audio, within the grace
        a.join(30)
        b.join(30)
        assert proc.wait(30) == 0
    finally:
        never.set()
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=30)
    got, code = out["ends"]
    assert code is None and len(got) == expected_windows(32000)
    got, code = out["stays"]
    assert code == grpc.StatusCode.UNAVAILABLE and len(got) == expected_windows(24000)
    assert '"event": "draining"' in err and '"event": "stopped"' in err


def test_busy_port_fails_at_once_with_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "avsentry", "serve", "--port", str(port), "--device", "cpu"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert (
        lines[-1]
        == f"avsentry serve: error: cannot listen on 127.0.0.1:{port}: address in use or not available"
    )
    assert "Traceback" not in r.stderr
    assert "serving" not in r.stderr  # refused before the model was loaded


def test_wav_helper_is_a_real_wav() -> None:
    with wave.open(io.BytesIO(wav_bytes(SR, 2, 100))) as w:
        assert (w.getframerate(), w.getnchannels(), w.getnframes()) == (SR, 2, 100)


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_server_leaves_no_codec_worker_behind() -> None:
    """Codec round trips run in worker processes; SIGKILL the server and they go too."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "avsentry", "serve", "--port", str(port), "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert "serving" in proc.stdout.readline()
        helpers = _children(proc.pid)
        workers = [w for h in helpers for w in _children(h)]
        assert workers, "no codec worker processes found"
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    deadline = time.time() + 15
    while time.time() < deadline and any(os.path.exists(f"/proc/{p}") for p in helpers + workers):
        time.sleep(0.1)
    alive = [p for p in helpers + workers if os.path.exists(f"/proc/{p}")]
    assert not alive, f"left behind: {alive}"
