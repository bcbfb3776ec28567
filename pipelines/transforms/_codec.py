"""Lossy codec round trip in memory through PyAV (FFmpeg's libavcodec and libavformat).

Shared plumbing for the MP3, Opus and AAC defences: encode one mono clip into an in-memory
container (``io.BytesIO``, never a temp file or an ``ffmpeg`` subprocess), decode it back, and
return exactly as many samples as went in, sample-aligned with the input.

Alignment rests on the container recording the encoder delay, which FFmpeg's demuxer then turns
into ``skip_samples`` that the decoder drops:

- MP3: the Xing/LAME "Info" tag (encoder delay and padding). The muxer writes it at the end by
  seeking back to the start of the file, so the buffer must be seekable (``io.BytesIO`` is);
  without it the output lags by 1105 samples (576 encoder + 529 decoder delay).
- AAC: an MP4 edit list that skips the 1024 priming samples (ADTS has no such field).
- Opus: the Ogg ``pre-skip`` header field (RFC 7845, section 4.2); the decoder runs at 48 kHz and
  the result is resampled back with a linear-phase polyphase filter, its delay removed.

The defence is segment-wise: a clip is split into ``segments`` equal parts, each part is round
tripped on its own as above, and the parts are concatenated. The output for a part depends only
on that part's samples, so with a 1 s window, 2 segments and a 0.5 s hop each stretch of a stream
is encoded once, not twice (the detector reuses the part two windows share, see
:class:`~avsentry.pipelines.transforms.base.SegmentedTransform`), and no future audio is needed.

Parts run on one process-wide thread pool (:func:`codec_executor`): PyAV releases the GIL inside
``avcodec_send_frame``/``avcodec_receive_packet`` and their decoding twins, so threads scale.
"""

from __future__ import annotations

import dataclasses
import io
import math
import multiprocessing
import os
import select
import signal
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from fractions import Fraction
from typing import ClassVar

import av
import numpy as np
import scipy.signal

from avsentry.pipelines.transforms.base import AudioTransform, check_int

# Divisors that map a decoded sample format to [-1, 1] floats.
_INTEGER_SCALE = {"u8": 128.0, "s16": 32768.0, "s32": 2147483648.0}

_THREAD_PREFIX = "avsentry-codec"
_EXECUTOR: ThreadPoolExecutor | None = None
_EXECUTOR_LOCK = threading.Lock()


def codec_executor() -> ThreadPoolExecutor:
    """The process-wide thread pool for codec work, one thread per CPU, created on first use.

    Every codec transform and every detector share it (a detector can be given another), so the
    number of encoder threads stays bounded however many streams, batches and transforms run.
    """
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        if _EXECUTOR is None:
            _EXECUTOR = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix=_THREAD_PREFIX)
        return _EXECUTOR


class CodecProcessPool(Executor):
    """Codec work in worker processes: the encoders' Python-side work (framing, muxing) holds the
    GIL, so threads scale poorly beside a server's event loop and forward passes (two codec
    threads ran 1.4x faster than one); processes scale, and a codec that crashes takes down a
    worker, not the server.

    Workers start from a forkserver that has imported the transforms once (no fork of a process
    with threads, no import per worker). If a worker dies, the pool is replaced and the jobs of
    the broken pool fail (``BrokenProcessPool``); later submissions go to the new pool.

    Args:
        processes: Worker processes (default: one per CPU).
    """

    def __init__(self, processes: int | None = None) -> None:
        self.processes = processes or os.cpu_count() or 1
        self._lock = threading.Lock()
        self._pool = self._new()

    def _new(self) -> ProcessPoolExecutor:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["avsentry.pipelines.transforms"])
        return ProcessPoolExecutor(
            max_workers=self.processes, mp_context=ctx, initializer=_worker_setup, initargs=(os.getpid(),)
        )

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        with self._lock:
            try:
                return self._pool.submit(fn, *args, **kwargs)
            except BrokenProcessPool:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new()
                return self._pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def _worker_setup(server_pid: int) -> None:
    """In each codec worker: ignore Ctrl-C (the terminal sends it to the whole process group; the
    server drains and then stops its pool), and exit when the server process is gone, however it
    went (a killed server's workers would otherwise wait on their job queue forever, and keep the
    forkserver alive with them)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(server_pid,), name="avsentry-watch", daemon=True).start()


def _exit_with(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)  # Linux: readable once the process has exited
    except (AttributeError, OSError):
        while True:  # elsewhere: poll
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:
                pass
    select.select([fd], [], [])
    os._exit(0)


def split_bounds(samples: int, segments: int) -> tuple[tuple[int, int], ...]:
    """``segments`` contiguous ``(start, stop)`` ranges covering ``range(samples)``, as equal as
    integers allow: part ``k`` is ``[k * samples // segments, (k + 1) * samples // segments)``."""
    edges = [k * samples // segments for k in range(segments + 1)]
    return tuple(zip(edges[:-1], edges[1:], strict=True))


def encode(
    clip: np.ndarray,
    *,
    codec: str,
    container_format: str,
    sample_rate_hz: int,
    bit_rate_bps: int,
    options: Mapping[str, str] | None = None,
) -> bytes:
    """Encode one mono clip into an in-memory container.

    Args:
        clip: ``(samples,)`` float32 in [-1, 1].
        codec: FFmpeg encoder name (``"libmp3lame"``, ``"libopus"``, ``"aac"``).
        container_format: FFmpeg muxer name (``"mp3"``, ``"ogg"``, ``"mp4"``).
        sample_rate_hz: Rate of ``clip``; the encoder runs at this rate.
        bit_rate_bps: Target bit rate in bits per second.
        options: Extra encoder options (FFmpeg ``AVOption`` names and string values).

    Returns:
        The bytes of the finished container.
    """
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=sample_rate_hz, options=dict(options or {}))
        if not isinstance(stream, av.AudioStream):
            raise ValueError(f"{codec} is not an audio encoder")
        stream.layout = "mono"
        stream.bit_rate = bit_rate_bps
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(clip, dtype=np.float32)[np.newaxis, :],
            format="fltp",
            layout="mono",
        )
        frame.sample_rate = sample_rate_hz
        frame.time_base = Fraction(1, sample_rate_hz)
        frame.pts = 0
        # PyAV re-frames and converts to the encoder's frame size and sample format.
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """Decode the first audio stream of an in-memory container.

    Args:
        data: Container bytes, as returned by :func:`encode`.

    Returns:
        ``(samples,)`` float32 mono waveform after the demuxer's delay trimming, and its rate in
        Hz (48000 for Opus whatever rate it was encoded at).
    """
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        chunks = [_frame_to_mono(frame) for frame in container.decode(stream)]
        rate = stream.codec_context.sample_rate
    if not chunks:
        return np.zeros(0, dtype=np.float32), rate
    return np.concatenate(chunks), rate


def _frame_to_mono(frame: av.AudioFrame) -> np.ndarray:
    """Return a decoded mono frame as ``(samples,)`` float32 in [-1, 1]."""
    if frame.layout.nb_channels != 1:
        raise RuntimeError(f"expected a mono frame, got layout {frame.layout.name}")
    samples = frame.to_ndarray().reshape(-1)
    scale = _INTEGER_SCALE.get(frame.format.name.rstrip("p"))
    if scale is None:
        return samples.astype(np.float32, copy=False)
    offset = 1.0 if frame.format.name.startswith("u8") else 0.0
    return (samples.astype(np.float32) / scale - offset).astype(np.float32)


def fit_length(samples: np.ndarray, length: int) -> np.ndarray:
    """Trim or zero-pad the end of ``(samples,)`` to exactly ``length`` samples."""
    if samples.shape[0] >= length:
        return samples[:length]
    return np.pad(samples, (0, length - samples.shape[0]))


def round_trip(
    clip: np.ndarray,
    *,
    codec: str,
    container_format: str,
    sample_rate_hz: int,
    bit_rate_bps: int,
    options: Mapping[str, str] | None = None,
) -> np.ndarray:
    """Encode and decode one clip; the output is sample-aligned and as long as the input.

    Args:
        clip: ``(samples,)`` float32; clipped to [-1, 1] before encoding. Not modified.
        codec: FFmpeg encoder name.
        container_format: FFmpeg muxer name; it must record the encoder delay (see module doc).
        sample_rate_hz: Rate of ``clip`` in Hz.
        bit_rate_bps: Target bit rate in bits per second.
        options: Extra encoder options.

    Returns:
        ``(samples,)`` float32 at ``sample_rate_hz``.
    """
    data = encode(
        np.clip(clip, -1.0, 1.0),
        codec=codec,
        container_format=container_format,
        sample_rate_hz=sample_rate_hz,
        bit_rate_bps=bit_rate_bps,
        options=options,
    )
    decoded, decoded_rate_hz = decode(data)
    if decoded_rate_hz != sample_rate_hz and decoded.size:
        # Linear-phase polyphase FIR whose group delay resample_poly removes: no lag. Plain
        # numpy/C, so it adds no torch intra-op threads inside this thread pool.
        common = math.gcd(decoded_rate_hz, sample_rate_hz)
        decoded = scipy.signal.resample_poly(decoded, sample_rate_hz // common, decoded_rate_hz // common)
    return fit_length(decoded.astype(np.float32, copy=False), clip.shape[0])


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, repr=True, eq=True)
class CodecRoundTrip(AudioTransform):
    """Base for lossy-codec defences: encode and decode each part of each clip at a low bit rate.

    A clip is split into ``segments`` equal parts (:func:`split_bounds`), each round tripped as a
    clip of its own (:func:`round_trip`), and the outputs are concatenated; so it is the same
    defence for any hop and for isolated windows. Subclasses set :attr:`name`, :attr:`codec`,
    :attr:`container_format` and the bit-rate bounds, and redeclare ``bitrate_kbps`` with their
    default. Construction round trips a short silent clip, so settings the encoder refuses fail
    here, as a ``ValueError``.

    Attributes:
        sample_rate_hz: Input rate in Hz; the encoder must accept it natively.
        bitrate_kbps: Target bit rate in kbit/s.
        segments: Parts each clip is cut into, in [1, 8]. Default 2 (0.5 s parts of a 1 s window,
            so a 0.5 s hop encodes every sample once).
    """

    codec: ClassVar[str]
    container_format: ClassVar[str]
    min_bitrate_kbps: ClassVar[int] = 8
    max_bitrate_kbps: ClassVar[int] = 320
    max_segments: ClassVar[int] = 8

    sample_rate_hz: int = 16000
    bitrate_kbps: int = 32
    segments: int = 2

    def __post_init__(self) -> None:
        check_int(self.name, "sample_rate_hz", self.sample_rate_hz, low=1)
        self._check_preset()
        check_int(
            self.name,
            "bitrate_kbps",
            self.bitrate_kbps,
            low=self.min_bitrate_kbps,
            high=self.max_bitrate_kbps,
        )
        check_int(self.name, "segments", self.segments, low=1, high=self.max_segments)
        try:
            rates = av.Codec(self.codec, "w").audio_rates
        except av.codec.codec.UnknownCodecError as error:
            raise RuntimeError(f"{self.name}: this PyAV build has no {self.codec} encoder") from error
        if rates and self.sample_rate_hz not in rates:
            raise ValueError(
                f"{self.name}: sample_rate_hz must be one of {sorted(rates)} for {self.codec}, "
                f"got {self.sample_rate_hz}"
            )
        try:  # let the encoder itself vet the settings once, here rather than mid-stream
            self.apply_segment(np.zeros(self.sample_rate_hz // 10, dtype=np.float32))
        except av.FFmpegError as error:
            raise ValueError(
                f"{self.name}: {self.codec} refused sample_rate_hz={self.sample_rate_hz}, "
                f"bitrate_kbps={self.bitrate_kbps}: {error}"
            ) from error

    def _check_preset(self) -> None:
        """Validate the subclass's encoder preset parameters (none here)."""

    def encoder_settings(self) -> Mapping[str, str]:
        """FFmpeg encoder options (``AVOption`` names, string values) for this transform."""
        return {}

    def segment_bounds(self, samples: int) -> tuple[tuple[int, int], ...]:
        """The parts of a ``samples``-long clip: ``segments`` equal ranges (:func:`split_bounds`)."""
        return split_bounds(samples, self.segments)

    def apply_segment(self, segment: np.ndarray) -> np.ndarray:
        """Round trip one part, ``(samples,)`` float32 -> ``(samples,)`` float32, aligned."""
        if segment.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        return round_trip(
            segment,
            codec=self.codec,
            container_format=self.container_format,
            sample_rate_hz=self.sample_rate_hz,
            bit_rate_bps=self.bitrate_kbps * 1000,
            options=self.encoder_settings(),
        )

    def _apply(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        bounds = self.segment_bounds(batch.shape[1])
        parts = [clip[start:stop] for clip in batch for start, stop in bounds]
        if len(parts) == 1 or threading.current_thread().name.startswith(_THREAD_PREFIX):
            # one part, or already on the pool: waiting for the pool from inside it could deadlock
            outs = [self.apply_segment(part) for part in parts]
        else:
            outs = list(codec_executor().map(self.apply_segment, parts))
        return np.concatenate(outs).reshape(batch.shape)
