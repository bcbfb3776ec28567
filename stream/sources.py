"""Audio sources for the streaming clients: a file paced at real time, and a microphone.

An :class:`AudioSource` yields ``(frames, channels)`` float32 chunks in [-1, 1] at the source's
native sample rate and channel count; the server resamples and downmixes. :class:`FileSource`
decodes anything FFmpeg reads (via PyAV) and paces the chunks against a monotonic clock, the way
``avsentry stream FILE`` replays a recording as if it were live. :class:`MicSource` captures from
a PortAudio input device (via sounddevice) for ``avsentry mic``; PortAudio is imported lazily, so
this module imports on machines without ``libportaudio2``.

References: PortAudio V19 stream API (callback streams, ``paInputOverflow``); FFmpeg/libswresample
sample-format conversion (integer PCM ``x`` maps to ``x / 2**(bits-1)``).
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Protocol, Self

import numpy as np

from avsentry.pipelines.audio_io import AudioFile, AudioReadError


class SourceError(Exception):
    """An audio source cannot be opened or read; the message is one line, fit for a CLI."""


class AudioSource(Protocol):
    """A finite or endless stream of audio chunks at the source's native rate and channel count.

    Attributes:
        sample_rate_hz: frames per second of every chunk.
        channels: columns of every chunk.

    Implementations that subclass this protocol inherit the context-manager methods, which call
    :meth:`close`.
    """

    sample_rate_hz: int
    channels: int

    def chunks(self) -> Iterator[np.ndarray]:
        """Yield ``(frames, channels)`` float32 chunks in [-1, 1], interleaved channels as columns."""
        ...

    def close(self) -> None:
        """Release the file or device; a running :meth:`chunks` ends soon after. Idempotent."""
        ...

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _frames_for(sample_rate_hz: int, ms: float) -> int:
    return max(1, round(sample_rate_hz * ms / 1000))


def _check_chunk_and_limit(chunk_ms: float, max_seconds: float | None) -> None:
    if not chunk_ms > 0:
        raise ValueError(f"chunk_ms must be > 0, got {chunk_ms}")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be > 0 or None, got {max_seconds}")


class FileSource(AudioSource):
    """Chunks of an audio file at its native rate and channels, paced like a live stream.

    The file is opened and its first block decoded on construction, so a missing, unreadable or
    empty file fails here with :class:`SourceError`. Decoding is incremental: memory does not
    grow with the file's length.

    Pacing: with ``rate`` > 0, the chunk that starts at frame ``n`` is yielded no earlier than
    ``n / (sample_rate_hz * rate)`` seconds after the first chunk, measured on a monotonic clock
    against fixed deadlines, so sleep overshoot does not accumulate. A consumer slower than the
    pace receives the overdue chunks back to back until it has caught up.

    Args:
        path: any file FFmpeg can decode; its first audio stream is used.
        chunk_ms: chunk length in milliseconds (default 100); every chunk holds
            ``round(sample_rate_hz * chunk_ms / 1000)`` frames except possibly the last.
        rate: playback speed: 1.0 (default) is real time, 2.0 twice as fast, 0 or ``None`` as
            fast as the file decodes.
        max_seconds: stop after this much audio (the last chunk is cut); ``None`` (default)
            streams the whole file.

    Raises:
        SourceError: the file is missing, not a file, not decodable, has no audio stream or no
            samples.
        ValueError: a non-positive ``chunk_ms`` or ``max_seconds``, or a negative ``rate``.

    Integer PCM is scaled by ``1 / 2**(bits-1)`` (exact for 16-bit); float files are clipped
    to [-1, 1]. :meth:`chunks` can be iterated once.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        chunk_ms: float = 100,
        rate: float | None = 1.0,
        max_seconds: float | None = None,
    ) -> None:
        _check_chunk_and_limit(chunk_ms, max_seconds)
        if rate is not None and not rate >= 0:
            raise ValueError(f"rate must be >= 0 or None, got {rate}")
        self.path = Path(path)
        self.chunk_ms = chunk_ms
        self.rate = rate or 0.0
        if not self.path.exists():
            raise SourceError(f"{self.path}: no such file")
        if not self.path.is_file():
            raise SourceError(f"{self.path}: not a regular file")
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._started = False
        self._running = False
        try:
            self._file = AudioFile(self.path)
        except AudioReadError as e:
            raise SourceError(str(e)) from e
        try:
            self._frames = self._decode()
            first = next(self._frames, None)
            if first is None:
                raise SourceError(f"{self.path}: no audio samples")
        except BaseException:
            self._file.close()
            raise
        self.sample_rate_hz: int = self._file.info.sample_rate_hz
        self.channels: int = self._file.info.channels
        self.chunk_frames = _frames_for(self.sample_rate_hz, chunk_ms)
        self._first: np.ndarray | None = first
        self._max_frames = None if max_seconds is None else max(1, round(max_seconds * self.sample_rate_hz))

    def _decode(self) -> Iterator[np.ndarray]:
        """Decoded ``(frames, channels)`` float32 blocks (the project's one decoder)."""
        try:
            yield from self._file.blocks()
        except AudioReadError as e:
            raise SourceError(str(e)) from e

    def _rechunked(self) -> Iterator[np.ndarray]:
        """Fixed-size chunks cut from the decoded blocks, capped at ``max_seconds``."""
        pending: list[np.ndarray] = []
        held = 0
        left = self._max_frames if self._max_frames is not None else math.inf
        first, self._first = self._first, None
        blocks: Iterator[np.ndarray] = self._frames
        if first is not None:
            blocks = _prepend(first, blocks)
        for block in blocks:
            pending.append(block)
            held += len(block)
            while held >= self.chunk_frames and left > 0:
                buf = np.concatenate(pending) if len(pending) > 1 else pending[0]
                n = int(min(self.chunk_frames, left))
                yield buf[:n]
                left -= n
                pending, held = [buf[n:]], len(buf) - n
            if left <= 0:
                return
        if held and left > 0:
            buf = np.concatenate(pending)
            yield buf[: int(min(held, left))]

    def chunks(self) -> Iterator[np.ndarray]:
        """Yield ``(chunk_frames, channels)`` float32 chunks at the configured pace.

        Raises:
            SourceError: on a second call, or if decoding fails part-way through the file.
        """
        if self._started:
            raise SourceError(f"{self.path}: chunks() can be iterated once")
        self._started = True
        return self._paced()

    def _paced(self) -> Iterator[np.ndarray]:
        with self._lock:
            if self._closed.is_set():
                return
            self._running = True
        try:
            start = 0.0
            sent = 0
            for chunk in self._rechunked():
                if self.rate > 0 and sent:
                    wait = start + sent / (self.sample_rate_hz * self.rate) - time.monotonic()
                    if wait > 0 and self._closed.wait(wait):
                        return
                if self._closed.is_set():
                    return
                if not sent:
                    start = time.monotonic()
                yield chunk
                sent += len(chunk)
        finally:
            with self._lock:
                self._running = False
                self._file.close()

    def close(self) -> None:
        """Stop :meth:`chunks` at its next chunk (or at once if it is sleeping); close the file."""
        with self._lock:
            self._closed.set()
            if not self._running:
                self._file.close()


def _prepend(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{e.__class__.__name__}: {text}" if text else e.__class__.__name__


def _sounddevice() -> ModuleType:
    """Import sounddevice on first use; it raises OSError at import when PortAudio is absent."""
    try:
        import sounddevice
    except OSError as e:
        raise SourceError(
            f"PortAudio is not available ({_one_line(e)}); install libportaudio2 (tools/setup.sh)"
        ) from e
    except ImportError as e:
        raise SourceError(f"the sounddevice package is not installed ({_one_line(e)})") from e
    return sounddevice


class MicSource(AudioSource):
    """Chunks captured from a PortAudio input device (a microphone, a sound server, an ALSA PCM).

    PortAudio calls back on its own thread with one ``(chunk_frames, channels)`` block per
    ``chunk_ms``; the callback puts a copy into a bounded queue that :meth:`chunks` drains. When
    the consumer falls ``buffer_ms`` behind, the oldest block is dropped and :attr:`overflows`
    counts it, so a slow consumer sees the most recent audio rather than stale audio. Blocks that
    PortAudio itself flagged ``paInputOverflow`` (samples lost before the callback, e.g. a busy
    machine) are counted in :attr:`input_overflows`.

    The device is opened on construction (so a wrong device or rate fails here) and capture starts
    when :meth:`chunks` is first iterated.

    Args:
        device: a PortAudio device index (an int or a string of digits), or a name or unique
            substring of one, as sounddevice accepts; ``None`` (default) is the default input
            device.
        sample_rate_hz: capture rate; ``None`` (default) is the device's default (native) rate.
        channels: captured channels (default 1), at most the device's ``max_input_channels``.
        chunk_ms: chunk length in milliseconds (default 100).
        max_seconds: stop after this much yielded audio; ``None`` (default) runs until
            :meth:`close`.
        latency: PortAudio's suggested input latency: ``"low"`` (default), ``"high"`` or seconds.
        buffer_ms: how much audio the queue holds for a slow consumer (default 2000).
        stall_timeout_s: :meth:`chunks` raises if the device delivers nothing for this long
            (default 5).

    Raises:
        SourceError: PortAudio is missing, the device does not exist or has no input channels,
            or the rate or channel count is not supported.
        ValueError: non-positive ``chunk_ms``, ``max_seconds``, ``channels``, ``buffer_ms`` or
            ``stall_timeout_s``.
    """

    def __init__(
        self,
        device: int | str | None = None,
        *,
        sample_rate_hz: int | None = None,
        channels: int = 1,
        chunk_ms: float = 100,
        max_seconds: float | None = None,
        latency: str | float = "low",
        buffer_ms: float = 2000,
        stall_timeout_s: float = 5.0,
    ) -> None:
        _check_chunk_and_limit(chunk_ms, max_seconds)
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if not buffer_ms > 0:
            raise ValueError(f"buffer_ms must be > 0, got {buffer_ms}")
        if not stall_timeout_s > 0:
            raise ValueError(f"stall_timeout_s must be > 0, got {stall_timeout_s}")
        if isinstance(device, str) and device.strip().isdigit():
            device = int(device)
        sd = _sounddevice()
        try:
            info = sd.query_devices(device, "input")
        except (ValueError, sd.PortAudioError) as e:
            what = "no default input device" if device is None else f"input device {device!r}"
            raise SourceError(f"{what}: {_one_line(e)} (see `avsentry mic --list-devices`)") from e
        self.device_index: int = int(info["index"])
        self.device_name: str = str(info["name"])
        label = f"input device {self.device_index} ({self.device_name})"
        if channels > info["max_input_channels"]:
            raise SourceError(
                f"{label} has {info['max_input_channels']} input channels, {channels} requested"
            )
        self.sample_rate_hz = int(sample_rate_hz or round(info["default_samplerate"]))
        self.channels = channels
        self.chunk_frames = _frames_for(self.sample_rate_hz, chunk_ms)
        self.stall_timeout_s = stall_timeout_s
        self._max_frames = None if max_seconds is None else max(1, round(max_seconds * self.sample_rate_hz))
        try:
            sd.check_input_settings(
                self.device_index, channels=channels, dtype="float32", samplerate=self.sample_rate_hz
            )
        except (ValueError, sd.PortAudioError) as e:
            raise SourceError(
                f"{label}: {self.sample_rate_hz} Hz x {channels} channels not supported ({_one_line(e)})"
            ) from e
        self.overflows = 0
        self.input_overflows = 0
        self._queue: queue.Queue[np.ndarray] = queue.Queue(maxsize=max(2, math.ceil(buffer_ms / chunk_ms)))
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._started = False
        try:
            self._stream: Any = sd.InputStream(
                device=self.device_index,
                samplerate=self.sample_rate_hz,
                channels=channels,
                dtype="float32",
                blocksize=self.chunk_frames,
                latency=latency,
                callback=self._on_block,
            )
        except (ValueError, sd.PortAudioError) as e:
            raise SourceError(f"{label}: cannot open input stream ({_one_line(e)})") from e

    def _on_block(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio's callback (its own thread): enqueue a copy, dropping the oldest if full."""
        if status.input_overflow:
            self.input_overflows += 1
        block = indata.copy()
        try:
            self._queue.put_nowait(block)
        except queue.Full:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self.overflows += 1
            try:
                self._queue.put_nowait(block)
            except queue.Full:
                self.overflows += 1

    def chunks(self) -> Iterator[np.ndarray]:
        """Start capture and yield ``(chunk_frames, channels)`` float32 chunks as they arrive.

        Ends after :meth:`close` (from any thread) or ``max_seconds`` of audio, then stops the
        stream.

        Raises:
            SourceError: on a second call, or when the device stops delivering audio.
        """
        if self._started:
            raise SourceError(f"input device {self.device_index}: chunks() can be iterated once")
        self._started = True
        return self._capture()

    def _capture(self) -> Iterator[np.ndarray]:
        if self._closed.is_set():
            return
        left = self._max_frames if self._max_frames is not None else math.inf
        poll_s = min(0.1, self.stall_timeout_s)
        try:
            self._stream.start()
            last = time.monotonic()
            while left > 0 and not self._closed.is_set():
                try:
                    block = self._queue.get(timeout=poll_s)
                except queue.Empty:
                    if self._closed.is_set():
                        return
                    if time.monotonic() - last > self.stall_timeout_s:
                        raise SourceError(
                            f"input device {self.device_index} ({self.device_name}) delivered no audio"
                            f" for {self.stall_timeout_s:g} s"
                        ) from None
                    continue
                last = time.monotonic()
                n = int(min(len(block), left))
                yield block[:n]
                left -= n
        finally:
            self.close()

    def close(self) -> None:
        """Stop capture and release the device; a running :meth:`chunks` ends. Idempotent."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            self._stream.close(ignore_errors=True)


def list_input_devices() -> list[dict[str, Any]]:
    """The PortAudio devices that can capture, for ``avsentry mic --list-devices``.

    Returns:
        One dict per input device, in PortAudio's order: ``index`` (int), ``name`` (str),
        ``hostapi`` (host API name, e.g. ``"ALSA"``), ``max_input_channels`` (int),
        ``default_samplerate`` (Hz, float) and ``is_default`` (bool).

    Raises:
        SourceError: PortAudio is missing or cannot enumerate devices.
    """
    sd = _sounddevice()
    try:
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
    except sd.PortAudioError as e:
        raise SourceError(f"cannot list audio devices ({_one_line(e)})") from e
    try:
        default = int(sd.query_devices(kind="input")["index"])
    except (ValueError, sd.PortAudioError):
        default = -1
    return [
        {
            "index": int(d["index"]),
            "name": str(d["name"]),
            "hostapi": str(hostapis[d["hostapi"]]["name"]),
            "max_input_channels": int(d["max_input_channels"]),
            "default_samplerate": float(d["default_samplerate"]),
            "is_default": int(d["index"]) == default,
        }
        for d in devices
        if d["max_input_channels"] > 0
    ]


def format_devices(devices: list[dict[str, Any]]) -> str:
    """A table of :func:`list_input_devices` for people; ``*`` marks the default device."""
    if not devices:
        return "no input devices found (is a sound card, PulseAudio or PipeWire available?)"
    rows = [("", "index", "channels", "rate_hz", "host API", "name")]
    rows += [
        (
            "*" if d["is_default"] else "",
            str(d["index"]),
            str(d["max_input_channels"]),
            f"{d['default_samplerate']:g}",
            d["hostapi"],
            d["name"],
        )
        for d in devices
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    right = {1, 2, 3}
    lines = []
    for r in rows:
        cells = [r[i].rjust(w) if i in right else r[i].ljust(w) for i, w in enumerate(widths)]
        lines.append("  ".join([*cells, r[-1]]).rstrip())
    return "\n".join(lines)
