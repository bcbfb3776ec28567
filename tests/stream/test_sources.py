"""File and microphone sources: exact samples, chunk sizes, pacing, and real PortAudio devices.

The microphone is tested through PortAudio -> ALSA with devices made without a sound card:

* an ALSA ``file`` PCM over ``null`` that plays a raw float32 file back as capture input, with
  no clock (the whole file arrives at once): a sample-exact check of the capture path;
* the monitor of a PulseAudio null sink through the ALSA ``pulse`` PCM (libasound2-plugins), fed
  by ``paplay``: a real-time device with a clock.

ALSA reads ``$HOME/.asoundrc`` when PortAudio initialises, so captures run in a subprocess whose
``HOME`` is a temporary directory holding the config.
"""

from __future__ import annotations

import glob
import importlib.abc
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from avsentry.stream.sources import FileSource, MicSource, SourceError, format_devices, list_input_devices

ROOT = Path(__file__).resolve().parents[2]


def write_wav(path: Path, x: np.ndarray, rate: int) -> Path:
    """Write ``(frames, channels)`` int16 as a PCM WAV."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(x.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(x.astype("<i2").tobytes())
    return path


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """``(frames, channels)`` int16 and the rate, by the standard library's reader."""
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, w.getnchannels())
        return x, w.getframerate()


def locate(haystack: np.ndarray, needle: np.ndarray) -> int:
    """Offset in ``haystack`` (1-D) where ``needle`` (1-D, shorter) correlates best, by FFT."""
    n = len(haystack) + len(needle)
    corr = np.fft.irfft(np.fft.rfft(haystack, n) * np.conj(np.fft.rfft(needle, n)), n)
    return int(np.argmax(corr[: len(haystack) - len(needle) + 1]))


def noise_int16(rng: np.random.Generator, frames: int, channels: int) -> np.ndarray:
    return rng.integers(-20000, 20000, (frames, channels)).astype(np.int16)


@pytest.fixture
def stereo_wav(tmp_path, rng) -> Path:
    """1.0 s at 44.1 kHz, stereo: a 440 Hz tone left, seeded noise right."""
    t = np.arange(44100) / 44100
    left = np.round(12000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    x = np.stack([left, noise_int16(rng, 44100, 1)[:, 0]], axis=1)
    return write_wav(tmp_path / "stereo.wav", x, 44100)


@pytest.fixture
def speech_wav(tmp_path) -> Path:
    """A spoken word by espeak-ng: mono at its native 22.05 kHz."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng missing (run tools/setup.sh)")
    path = tmp_path / "seven.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "seven"], check=True, capture_output=True)
    return path


# --- FileSource -----------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_ms", [100, 37])
@pytest.mark.parametrize("which", ["stereo_wav", "speech_wav"])
def test_file_chunks_concatenate_to_the_decoded_file(request, which, chunk_ms) -> None:
    """Native rate and channels, chunk_ms-sized chunks (last shorter), the exact samples."""
    path = request.getfixturevalue(which)
    ref, rate = read_wav(path)
    with FileSource(path, chunk_ms=chunk_ms, rate=0) as src:
        assert (src.sample_rate_hz, src.channels) == (rate, ref.shape[1])
        chunks = list(src.chunks())
    size = round(rate * chunk_ms / 1000)
    assert all(c.shape == (size, ref.shape[1]) for c in chunks[:-1])
    assert 0 < len(chunks[-1]) <= size
    assert all(c.dtype == np.float32 for c in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks) * 32768, ref)


def test_flac_decodes_to_the_same_chunks_as_the_wav(stereo_wav, tmp_path) -> None:
    """Any FFmpeg-readable format: a lossless FLAC of the WAV yields the same samples."""
    if shutil.which("sox") is None:
        pytest.fail("sox missing (run tools/setup.sh)")
    flac = tmp_path / "stereo.flac"
    subprocess.run(["sox", str(stereo_wav), str(flac)], check=True, capture_output=True)
    with FileSource(flac, rate=0) as a, FileSource(stereo_wav, rate=0) as b:
        assert (a.sample_rate_hz, a.channels) == (44100, 2)
        np.testing.assert_array_equal(np.concatenate(list(a.chunks())), np.concatenate(list(b.chunks())))


def test_max_seconds_cuts_the_stream_and_chunks_iterate_once(stereo_wav) -> None:
    src = FileSource(stereo_wav, chunk_ms=100, rate=0, max_seconds=0.25)
    chunks = list(src.chunks())
    assert [len(c) for c in chunks] == [4410, 4410, 2205]
    np.testing.assert_array_equal(np.concatenate(chunks) * 32768, read_wav(stereo_wav)[0][:11025])
    with pytest.raises(SourceError, match="once"):
        src.chunks()


def yield_times(src: FileSource, pause_after: int | None = None, pause_s: float = 0.0) -> list[float]:
    """Seconds from the first chunk to each chunk; optionally a slow consumer pausing once."""
    times: list[float] = []
    start = 0.0
    for k, _ in enumerate(src.chunks()):
        now = time.monotonic()
        start = start or now
        times.append(now - start)
        if k == pause_after:
            time.sleep(pause_s)
    return times


def test_rate_one_paces_chunks_at_real_time(stereo_wav) -> None:
    """Chunk k of 100 ms comes no earlier than k * 0.1 s after the first, and not much later."""
    times = yield_times(FileSource(stereo_wav, chunk_ms=100, rate=1.0))
    assert len(times) == 10
    for k, t in enumerate(times):
        assert t >= k * 0.1 - 1e-3, (k, t)
    assert times[-1] < 0.9 + 0.4


@pytest.mark.parametrize(("rate", "low_s", "high_s"), [(0, 0.0, 0.3), (None, 0.0, 0.3), (4.0, 0.22, 0.6)])
def test_rate_scales_the_pace(stereo_wav, rate, low_s, high_s) -> None:
    """rate=4 plays the 1 s file in about 0.225 s; rate 0 or None as fast as it decodes."""
    times = yield_times(FileSource(stereo_wav, chunk_ms=100, rate=rate))
    assert low_s - 1e-3 <= times[-1] < high_s


def test_slow_consumer_catches_up_without_drift(stereo_wav) -> None:
    """Deadlines are absolute: after a 0.5 s stall the overdue chunks come back to back."""
    times = yield_times(FileSource(stereo_wav, chunk_ms=100, rate=1.0), pause_after=1, pause_s=0.5)
    assert times[2] >= 0.6 - 1e-3
    assert times[5] - times[2] < 0.1  # chunks 2-5 were due at 0.2-0.5 s: no sleeps between them
    assert 0.9 - 1e-3 <= times[-1] < 0.9 + 0.4  # relative sleeps would end at >= 1.4 s


def test_close_from_another_thread_interrupts_the_pacing_sleep(stereo_wav) -> None:
    """close() at 0.2 s ends the stream then, not when the second 500 ms chunk falls due."""
    src = FileSource(stereo_wav, chunk_ms=500, rate=1.0)
    threading.Timer(0.2, src.close).start()
    start = time.monotonic()
    n = sum(1 for _ in src.chunks())
    assert n == 1
    assert time.monotonic() - start < 0.45


@pytest.mark.parametrize("case", ["missing", "directory", "garbage", "empty"])
def test_unreadable_files_are_one_line_source_errors(tmp_path, case) -> None:
    path = tmp_path / f"{case}.wav"
    if case == "directory":
        path.mkdir()
    elif case == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif case == "empty":
        write_wav(path, np.zeros((0, 1), np.int16), 16000)
    expected = {
        "missing": "no such file",
        "directory": "not a regular file",
        "garbage": "cannot decode audio",
        "empty": "no audio samples",
    }[case]
    with pytest.raises(SourceError, match=expected) as err:
        FileSource(path)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


# --- MicSource through PortAudio -> ALSA file plugin (no clock) -----------------------------

ALSA_FILE_RATE = 22050

ASOUNDRC_FILE = """\
# Capture from the file plugin: the null slave is always ready, and every read is filled from
# `infile` (raw, interpreted in the PCM's format: FLOAT_LE, 2 channels, 22050 Hz as fixed by the
# plug above it, which then needs no conversion for a float32 stereo 22050 Hz stream).
pcm.avs_raw {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{infile}"
    format "raw"
}}
pcm.avs_mic {{
    type plug
    slave {{ pcm "avs_raw"; format FLOAT_LE; rate {rate}; channels 2 }}
    hint {{ show on; description "avsentry test capture" }}
}}
pcm.!default avs_mic
"""

PRELUDE = """\
import pickle, sys, threading, time
import numpy as np
import avsentry.stream.sources
lazy_portaudio = "sounddevice" not in sys.modules
from avsentry.stream.sources import MicSource, SourceError, format_devices, list_input_devices
result = {"lazy_portaudio": lazy_portaudio}
"""


def make_home(path: Path) -> Path:
    """A HOME for a capture subprocess; libpulse there may not autospawn a sound server."""
    (path / ".config" / "pulse").mkdir(parents=True, exist_ok=True)
    (path / ".config" / "pulse" / "client.conf").write_text("autospawn = no\n")
    return path


def run_captured(home: Path, code: str, env: dict[str, str] | None = None, timeout: float = 30) -> dict:
    """Run ``code`` after PRELUDE in a Python subprocess with ``HOME=home``; return its ``result``."""
    out = home / "result.pkl"
    script = PRELUDE + textwrap.dedent(code) + f"\npickle.dump(result, open({str(out)!r}, 'wb'))\n"
    full_env = {**os.environ, **(env or {}), "HOME": str(home)}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    r = subprocess.run(
        [sys.executable, "-c", script], env=full_env, capture_output=True, text=True, timeout=timeout
    )
    assert r.returncode == 0, f"capture subprocess failed:\n{r.stderr[-3000:]}"
    with open(out, "rb") as f:
        return pickle.load(f)


@pytest.fixture
def alsa_file_home(tmp_path, rng) -> tuple[Path, np.ndarray]:
    """HOME whose .asoundrc makes capture device ``avs_mic`` (and the default) replay 1 s of noise.

    Returns the HOME and the replayed ``(22050, 2)`` int16 samples.
    """
    home = make_home(tmp_path / "home")
    ref = noise_int16(rng, ALSA_FILE_RATE, 2)
    infile = tmp_path / "capture.f32"
    (ref / 32768).astype("<f4").tofile(infile)
    (home / ".asoundrc").write_text(ASOUNDRC_FILE.format(infile=infile, rate=ALSA_FILE_RATE))
    return home, ref


def test_mic_delivers_the_device_samples_exactly(alsa_file_home) -> None:
    """The real PortAudio path: native rate, channels and chunking, and the injected samples."""
    home, ref = alsa_file_home
    r = run_captured(
        home,
        """
        src = MicSource("avs_mic", channels=2, max_seconds=1.0, buffer_ms=60_000)
        with src:
            chunks = list(src.chunks())
        result.update(rate=src.sample_rate_hz, channels=src.channels, overflows=src.overflows,
                      shapes=[c.shape for c in chunks], dtype=str(chunks[0].dtype),
                      x=np.concatenate(chunks))
        """,
    )
    assert r["lazy_portaudio"], "importing stream.sources must not load PortAudio"
    assert (r["rate"], r["channels"]) == (ALSA_FILE_RATE, 2)
    assert r["shapes"] == [(2205, 2)] * 10
    assert r["dtype"] == "float32" and r["overflows"] == 0
    x = r["x"]
    # Where capture starts in the file: the noise correlates sharply at the true offset.
    offset = locate(ref[:, 0] / 32768, x[:2048, 0])
    assert 0 <= offset < ALSA_FILE_RATE // 10, f"capture starts {offset} frames into the file"
    np.testing.assert_array_equal(x[: len(x) - offset] * 32768, ref[offset:])


def test_devices_are_listed_with_the_default_marked(alsa_file_home) -> None:
    home, _ = alsa_file_home
    r = run_captured(
        home,
        """
        devices = list_input_devices()
        with MicSource(channels=2, max_seconds=0.1) as src:
            n = sum(len(c) for c in src.chunks())
        mic_index = [d["index"] for d in devices if d["name"] == "avs_mic"][0]
        by_index = MicSource(str(mic_index), channels=2)
        by_index.close()
        result.update(devices=devices, text=format_devices(devices), default=src.device_name,
                      default_rate=src.sample_rate_hz, frames=n, by_index=by_index.device_name)
        """,
    )
    by_name = {d["name"]: d for d in r["devices"]}
    mic = by_name["avs_mic"]
    assert mic["hostapi"] == "ALSA"
    assert mic["max_input_channels"] >= 2 and mic["default_samplerate"] == ALSA_FILE_RATE
    assert [d["name"] for d in r["devices"] if d["is_default"]] == ["default"]
    assert (r["default"], r["default_rate"], r["frames"]) == ("default", ALSA_FILE_RATE, 2205)
    assert r["by_index"] == "avs_mic"
    lines = r["text"].splitlines()
    assert len(lines) == 1 + len(r["devices"])
    assert any(ln.startswith("*") and ln.endswith("default") for ln in lines)
    assert any("avs_mic" in ln and str(ALSA_FILE_RATE) in ln for ln in lines)


def test_bad_device_channels_and_rate_are_source_errors(alsa_file_home) -> None:
    home, _ = alsa_file_home
    r = run_captured(
        home,
        """
        for name, kwargs in [("device", dict(device="no such mic")), ("index", dict(device=999)),
                             ("channels", dict(device="avs_mic", channels=1000)),
                             ("rate", dict(device="avs_mic", channels=2, sample_rate_hz=7))]:
            try:
                MicSource(**kwargs).close()
                result[name] = None
            except SourceError as e:
                result[name] = str(e)
        """,
    )
    assert "no such mic" in r["device"] and "list-devices" in r["device"]
    assert "999" in r["index"]
    assert "1000 requested" in r["channels"]
    assert "7 Hz" in r["rate"] and "not supported" in r["rate"]
    assert all("\n" not in r[k] for k in ("device", "index", "channels", "rate"))


def test_slow_consumer_drops_oldest_blocks_and_counts_them(alsa_file_home) -> None:
    """The clockless device floods a 0.3 s queue while the consumer sleeps: blocks are dropped."""
    home, _ = alsa_file_home
    r = run_captured(
        home,
        """
        with MicSource("avs_mic", channels=2, buffer_ms=300) as src:
            got = []
            for c in src.chunks():
                got.append(c.shape)
                if len(got) == 1:
                    time.sleep(0.3)
                if len(got) == 6:
                    break
        result.update(shapes=got, overflows=src.overflows, input_overflows=src.input_overflows)
        """,
    )
    assert r["shapes"] == [(2205, 2)] * 6
    assert r["overflows"] > 0
    assert r["input_overflows"] >= 0


def test_close_from_another_thread_ends_capture(alsa_file_home) -> None:
    home, _ = alsa_file_home
    r = run_captured(
        home,
        """
        src = MicSource("avs_mic", channels=2)
        threading.Timer(0.2, src.close).start()
        start = time.monotonic()
        n = sum(1 for _ in src.chunks())
        result.update(n=n, seconds=time.monotonic() - start)
        """,
    )
    assert r["n"] > 0 and r["seconds"] < 2.0


def test_missing_portaudio_is_a_clear_error(monkeypatch) -> None:
    """sounddevice raises OSError at import without libportaudio2; the sources say what to do."""

    class NoPortAudio(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "sounddevice":
                raise OSError("PortAudio library not found")
            return None

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(sys, "meta_path", [NoPortAudio(), *sys.meta_path])
    for call in (MicSource, list_input_devices):
        with pytest.raises(SourceError, match="PortAudio is not available.*libportaudio2"):
            call()
    assert format_devices([]).startswith("no input devices")


# --- MicSource through PortAudio -> ALSA pulse PCM -> PulseAudio null sink (real time) --------

PULSE_RATE = 16000


@pytest.fixture
def pulse_home(tmp_path_factory):
    """A private PulseAudio server with null sink ``avs`` and a HOME whose ALSA PCM ``avs_pulse``
    captures the sink's monitor.

    A background ``parec`` asking for 20 ms latency keeps the null sink rendering in small blocks;
    without it the first capture block arrives only after the sink's idle (up to 2 s) block.
    Yields the HOME and the environment that points PulseAudio clients at the server.
    """
    missing = [p for p in ("pulseaudio", "pactl", "paplay", "parec") if shutil.which(p) is None]
    if not glob.glob("/usr/lib/*/alsa-lib/libasound_module_pcm_pulse.so"):
        missing.append("libasound2-plugins")
    if missing:
        pytest.fail(f"PulseAudio test pieces missing: {missing} (run tools/setup.sh)")
    d = tmp_path_factory.mktemp("pa")
    home = make_home(d / "home")
    run = d / "run"
    run.mkdir(mode=0o700)
    socket = d / "native"
    env = {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(run), "PULSE_SERVER": f"unix:{socket}"}
    log = d / "pulseaudio.log"
    args = [
        "pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no",
        "--disable-shm=yes", "--realtime=no", "--high-priority=no", "--log-target=stderr",
        "-L", f"module-native-protocol-unix socket={socket} auth-anonymous=1",
        "-L", f"module-null-sink sink_name=avs rate={PULSE_RATE} channels=1 format=s16le",
    ]  # fmt: skip
    with log.open("wb") as log_file:
        procs = [subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=log_file)]
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode != 0:
            if procs[0].poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"pulseaudio did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        keep = d / "keep.raw"
        procs.append(
            subprocess.Popen(
                ["parec", "--device=avs.monitor", "--latency-msec=20", "--raw", str(keep)], env=env
            )
        )
        while not keep.exists() or keep.stat().st_size == 0:
            if time.monotonic() > deadline:
                pytest.fail("the null sink's monitor delivered nothing to parec")
            time.sleep(0.05)
        (home / ".asoundrc").write_text(
            f'pcm.avs_pulse {{\n    type pulse\n    server "unix:{socket}"\n    device "avs.monitor"\n}}\n'
        )
        yield home, env
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(timeout=10)


def test_mic_captures_a_real_time_device(pulse_home, tmp_path, rng) -> None:
    """Chunks arrive at the device's clock, and what paplay plays comes out sample for sample."""
    home, env = pulse_home
    played = np.zeros((PULSE_RATE + 3200, 1), np.int16)
    played[1600:-1600] = np.clip(rng.normal(0, 6000, (PULSE_RATE, 1)), -32000, 32000).astype(np.int16)
    wav = write_wav(tmp_path / "played.wav", played, PULSE_RATE)
    r = run_captured(
        home,
        f"""
        import subprocess
        times, chunks, player = [], [], None
        with MicSource("avs_pulse", sample_rate_hz={PULSE_RATE}, max_seconds=2.5) as src:
            for c in src.chunks():
                times.append(time.monotonic())
                chunks.append(c)
                if player is None:
                    player = subprocess.Popen(["paplay", "--device=avs", {str(wav)!r}])
        player.wait(timeout=10)
        result.update(times=times, x=np.concatenate(chunks), shapes=[c.shape for c in chunks],
                      overflows=src.overflows, input_overflows=src.input_overflows)
        """,
        env=env,
    )
    assert r["shapes"] == [(1600, 1)] * 25
    elapsed = r["times"][-1] - r["times"][0]
    assert 2.4 * 0.8 <= elapsed < 2.4 + 1.5, f"24 chunks of 100 ms took {elapsed:.3f} s"
    assert r["overflows"] == 0
    x, noise = r["x"][:, 0], played[1600:-1600, 0] / 32768
    start = locate(x, noise)
    np.testing.assert_allclose(x[start : start + PULSE_RATE], noise, rtol=0, atol=1.01 / 32768)


def test_mic_command_streams_a_device_to_a_real_server(server, pulse_home, digit_wav) -> None:
    """`avsentry mic` end to end, in real time: paplay plays spoken digits into the null sink,
    PortAudio captures its monitor, the CLI streams it to a server on 127.0.0.1, and the
    verdicts name the digits."""
    import json

    home, env = pulse_home
    mic = subprocess.Popen(
        [sys.executable, "-m", "avsentry", "mic", "--input-device", "avs_pulse", "--samplerate",
         str(PULSE_RATE), "--seconds", "5", "--server", f"127.0.0.1:{server.port}", "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert mic.stderr is not None
        first = mic.stderr.readline()
        assert f"capturing 1 channel(s) at {PULSE_RATE} Hz" in first, first
        subprocess.run(["paplay", "--device=avs", str(digit_wav)], env=env, check=True, timeout=30)
        out, err = mic.communicate(timeout=60)
    finally:
        if mic.poll() is None:
            mic.kill()
            mic.communicate()
    assert mic.returncode == 0, err[-2000:]
    assert "0 block(s) dropped" in err, err
    verdicts = [json.loads(line) for line in out.splitlines()]
    assert {"three", "seven", "one"} <= {v["raw_label"] for v in verdicts}
    assert not any(v["flagged"] for v in verdicts)
