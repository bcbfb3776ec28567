"""A stream survives its server: resumed sessions cut the windows of the unbroken stream, and a
client streaming real speech to ``avsentry serve`` keeps every window exactly once when that
server is killed mid-stream and a replacement comes up behind the same address."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from avsentry.pipelines.session import StreamSession, VideoSession
from avsentry.stream.client import GuardClient


def _windows(session, chunks) -> list:
    out = []
    for c in chunks:
        out += session.push(c)
    return out + session.flush()


@pytest.mark.parametrize("first", [1, 3, 7])
def test_a_resumed_audio_session_cuts_the_windows_of_the_whole_stream(first: int) -> None:
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (16000 * 5 + 123, 1)).astype(np.float32)
    whole = _windows(
        StreamSession(input_rate_hz=16000, channels=1, model_rate_hz=16000, window=16000, hop=8000), [x]
    )
    resumed = StreamSession(
        input_rate_hz=16000, channels=1, model_rate_hz=16000, window=16000, hop=8000, first_window=first
    )
    start = resumed.start_in(first)
    assert start == whole[first].start_in
    tail = _windows(resumed, [x[start : start + 5000], x[start + 5000 :]])
    assert [(w.index, w.start, w.start_in, w.end_in) for w in tail] == [
        (w.index, w.start, w.start_in, w.end_in) for w in whole[first:]
    ]
    assert all(np.array_equal(a.data, b.data) for a, b in zip(tail, whole[first:], strict=True))


def test_a_resumed_video_session_cuts_the_clips_of_the_whole_stream() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (100, 8, 8, 3), dtype=np.uint8)
    kw = dict(
        input_fps=30, input_height=8, input_width=8, model_fps=25, height=8, width=8, clip_frames=16, hop=8
    )
    whole = _windows(VideoSession(**kw), [frames])
    resumed = VideoSession(**kw, first_window=4)
    start = resumed.start_in(4)
    tail = _windows(resumed, [frames[start:]])
    assert [(w.index, w.start_in, w.end_in) for w in tail] == [
        (w.index, w.start_in, w.end_in) for w in whole[4:]
    ]
    assert all(np.array_equal(a.data, b.data) for a, b in zip(tail, whole[4:], strict=True))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(port: int, *extra: str, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    """``avsentry serve`` on ``port`` (fixed noise seed), with ``extra`` flags; returns once it serves."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "avsentry",
            "serve",
            "--port",
            str(port),
            "--device",
            "cpu",
            "--noise-seed",
            "0",
            "--log-level",
            "warning",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    assert proc.stdout is not None
    assert "serving" in proc.stdout.readline()
    return proc


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.wait(timeout=30)
    if proc.stdout is not None:
        proc.stdout.close()


class SpeechStream:
    """A resumable client stream of 10 s of real speech (19 windows) on a thread, paced at 2x
    real time; ``reference(target)`` streams the same audio unbroken."""

    CHUNK = 1600

    def __init__(self, target: str, digit_audio: np.ndarray) -> None:
        self.target = target
        self.audio = np.tile(digit_audio, 1 + int(10 * 16000 // len(digit_audio)))[: 10 * 16000]
        self.got: list = []
        self.errors: list = []
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _chunks(self, pace_s: float = 0.0):
        for s in range(0, len(self.audio), self.CHUNK):
            time.sleep(pace_s)
            yield self.audio[s : s + self.CHUNK, None]

    def _run(self) -> None:
        try:
            with GuardClient(self.target, timeout_s=300) as client:
                chunks = self._chunks(0.05)
                for v in client.stream(chunks, sample_rate_hz=16000, encoding="float32", reconnect_s=60):
                    self.got.append(v)
        except Exception as e:  # noqa: BLE001 - reported by finish()
            self.errors.append(e)

    def wait_for(self, verdicts: int) -> None:
        """Until ``verdicts`` have arrived; the stream must still be running then."""
        while len(self.got) < verdicts and self.thread.is_alive():
            time.sleep(0.05)
        assert self.thread.is_alive() and len(self.got) < 19, self.errors  # the server dies mid-stream

    def finish(self) -> list:
        self.thread.join(timeout=240)
        assert not self.errors, self.errors
        return self.got

    def reference(self) -> list:
        with GuardClient(self.target, timeout_s=300) as client:
            return list(client.stream(self._chunks(), sample_rate_hz=16000, encoding="float32"))


def assert_each_window_once(got: list, reference: list) -> None:
    assert len(reference) == 19
    assert [v.window_index for v in got] == list(range(19))  # each window once, in order
    assert [(v.start_sample, v.end_sample, v.raw_label) for v in got] == [
        (v.start_sample, v.end_sample, v.raw_label) for v in reference
    ]
    assert [v.score for v in got] == pytest.approx([v.score for v in reference], abs=1e-6)
    assert [v.next_start_sample for v in got] == [8000 * (k + 1) for k in range(19)]


def test_a_stream_loses_and_repeats_no_window_when_its_server_is_killed(digit_audio) -> None:
    """Real speech to a server that is SIGKILLed after 4 verdicts; a replacement starts on the
    same port. The client resumes and yields every window once, each the verdict the replacement
    gives in an unbroken stream."""
    port = _free_port()
    first = _serve(port)
    try:
        stream = SpeechStream(f"127.0.0.1:{port}", digit_audio)
        stream.wait_for(4)
        _stop(first, signal.SIGKILL)
        second = _serve(port)
        try:
            got = stream.finish()
            reference = stream.reference()
        finally:
            _stop(second)
    finally:
        _stop(first, signal.SIGKILL)
    assert_each_window_once(got, reference)
