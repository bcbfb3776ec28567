"""Audio in: the one decoder (PyAV) and the one resampler (libswresample) the project uses.

- :func:`probe` reads a file's header (rate, channels, declared duration) without decoding.
- :class:`AudioFile` yields ``(frames, channels)`` float32 blocks in [-1, 1] at the file's own
  rate. The header is checked against :class:`AudioLimits` *before* any decoding (rate, channel
  count, declared duration), and decoding stops as soon as the decoded audio passes the duration
  cap, so a small file that declares or decompresses to hours of audio costs nothing.
- :class:`Resampler` downmixes ``(frames, channels)`` blocks to mono (channel mean) and resamples
  them to a target rate with FFmpeg's libswresample, statefully: any chunking of a signal gives
  the samples of the whole signal. Stream sessions, files and the offline tools all use it.
- :func:`read_audio` is both for a whole file: mono float32 at the model's rate.

Decoded frames are converted to float32 here (integer PCM ``x`` becomes ``x / 2**(bits-1)``),
never through a multi-channel resampler: with 8 and more channels PyAV's planar resampler output
crashed the process.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# Integer sample formats: (divisor to [-1, 1), offset) for FFmpeg's packed/planar names.
_INTEGER_SCALE = {
    "u8": (128.0, 1.0),
    "s16": (32768.0, 0.0),
    "s32": (2147483648.0, 0.0),
    "s64": (2.0**63, 0.0),
}

MIN_RATE_HZ, MAX_RATE_HZ = 8_000, 192_000
MAX_CHANNELS = 8


class AudioReadError(ValueError):
    """The file is missing, unreadable, empty, out of the limits or holds non-finite samples."""


class AudioTooLong(AudioReadError):
    """The audio passes the duration cap (declared in its header, or once decoded)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioLimits:
    """What :func:`decode` accepts.

    Attributes:
        min_rate_hz / max_rate_hz: Sample-rate range (default 8 kHz to 192 kHz).
        max_channels: Most channels (default 8).
        max_seconds: Longest audio; ``None`` for no cap.
    """

    min_rate_hz: int = MIN_RATE_HZ
    max_rate_hz: int = MAX_RATE_HZ
    max_channels: int = MAX_CHANNELS
    max_seconds: float | None = None

    def check_format(self, rate_hz: int, channels: int, *, what: str) -> None:
        """Raise :class:`AudioReadError` unless the rate and channel count are within limits."""
        if not self.min_rate_hz <= rate_hz <= self.max_rate_hz:
            raise AudioReadError(
                f"{what}: sample rate {rate_hz} Hz is outside [{self.min_rate_hz}, {self.max_rate_hz}] Hz"
            )
        if not 1 <= channels <= self.max_channels:
            raise AudioReadError(f"{what}: {channels} channels, at most {self.max_channels} accepted")

    def max_frames(self, rate_hz: int) -> int | None:
        return None if self.max_seconds is None else int(self.max_seconds * rate_hz)


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioInfo:
    """A file's first audio stream, from its header."""

    sample_rate_hz: int
    channels: int
    duration_s: float | None  # declared duration, None when the container does not say
    codec: str


def _open(source: str | Path | bytes) -> tuple[str, io.BytesIO | str]:
    if isinstance(source, bytes | bytearray | memoryview):
        return "<audio bytes>", io.BytesIO(bytes(source))
    path = Path(source)
    if not path.exists():
        raise AudioReadError(f"{path}: no such file")
    if not path.is_file():
        raise AudioReadError(f"{path}: not a regular file")
    return str(path), str(path)


def _info(container: av.container.InputContainer, what: str) -> tuple[AudioInfo, av.AudioStream]:
    if not container.streams.audio:
        raise AudioReadError(f"{what}: no audio stream")
    stream = container.streams.audio[0]
    ctx = stream.codec_context
    if ctx is None or not ctx.sample_rate or ctx.layout is None:
        raise AudioReadError(
            f"{what}: no decoder for this audio stream, or no rate and channels in its header"
        )
    duration = None
    if stream.duration is not None and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    info = AudioInfo(
        sample_rate_hz=int(ctx.sample_rate or 0),
        channels=int(ctx.layout.nb_channels if ctx.layout else 0),
        duration_s=duration,
        codec=ctx.name,
    )
    return info, stream


def probe(source: str | Path | bytes) -> AudioInfo:
    """The header facts of a file (path) or of in-memory file bytes, without decoding audio.

    Raises:
        AudioReadError: missing, unreadable, or no audio stream.
    """
    what, opened = _open(source)
    try:
        with av.open(opened, mode="r") as container:
            return _info(container, what)[0]
    except AudioReadError:
        raise
    except (av.error.FFmpegError, ValueError, UnicodeDecodeError) as e:
        raise AudioReadError(f"{what}: cannot decode audio ({_one_line(e)})") from e


def frame_to_array(frame: av.AudioFrame) -> np.ndarray:
    """A decoded frame as ``(samples, channels)`` float32 (integer PCM scaled to [-1, 1))."""
    raw = frame.to_ndarray()
    channels = frame.layout.nb_channels
    fmt = frame.format
    block = raw.T if fmt.is_planar else raw.reshape(-1, channels)
    scale = _INTEGER_SCALE.get(fmt.name.rstrip("p"))
    if scale is None:
        return block.astype(np.float32, copy=False)
    divisor, offset = scale
    return (block.astype(np.float64) / divisor - offset).astype(np.float32)


class AudioFile:
    """An opened audio file (path) or in-memory file bytes, checked against ``limits``.

    Opening reads the header and checks it (rate, channel count, declared duration) before any
    audio is decoded; :meth:`blocks` then decodes incrementally. Use it as a context manager.

    Attributes:
        info: Header facts (rate, channels, declared duration, codec).

    Raises:
        AudioReadError: missing/unreadable file, no audio stream, or a rate or channel count
            outside ``limits``.
        AudioTooLong: a declared duration over ``limits.max_seconds``.
    """

    def __init__(self, source: str | Path | bytes, limits: AudioLimits | None = None) -> None:
        self.limits = limits or AudioLimits()
        self.what, opened = _open(source)
        try:
            self._container = av.open(opened, mode="r")
        except (av.error.FFmpegError, ValueError, UnicodeDecodeError) as e:
            raise AudioReadError(f"{self.what}: cannot decode audio ({_one_line(e)})") from e
        try:
            self.info, self._stream = _info(self._container, self.what)
            self.limits.check_format(self.info.sample_rate_hz, self.info.channels, what=self.what)
            cap_s = self.limits.max_seconds
            if cap_s is not None and self.info.duration_s is not None and self.info.duration_s > cap_s + 1:
                raise AudioTooLong(
                    f"{self.what}: {self.info.duration_s:.0f} s of audio, at most {cap_s:g} s accepted"
                )
        except BaseException:
            self._container.close()
            raise
        self._started = False

    def __enter__(self) -> AudioFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    def blocks(self) -> Iterator[np.ndarray]:
        """``(frames, channels)`` float32 blocks at the file's rate, clipped to [-1, 1].

        Raises:
            AudioReadError: NaN or Inf samples, a format change mid-stream, a decoding error, or
                no samples at all.
            AudioTooLong: the decoded audio passes ``limits.max_seconds`` (decoding stops there).
        """
        if self._started:
            raise RuntimeError("blocks() can be iterated once")
        self._started = True
        info, what = self.info, self.what
        cap = self.limits.max_frames(info.sample_rate_hz)
        total = 0
        try:
            for frame in self._container.decode(self._stream):
                if frame.sample_rate != info.sample_rate_hz or frame.layout.nb_channels != info.channels:
                    raise AudioReadError(f"{what}: the rate or channel count changes mid-stream")
                block = frame_to_array(frame)
                if not np.isfinite(block).all():
                    raise AudioReadError(f"{what}: audio contains NaN or Inf samples")
                total += len(block)
                if cap is not None and total > cap:
                    raise AudioTooLong(f"{what}: more than {self.limits.max_seconds:g} s of audio")
                if len(block):
                    yield np.clip(block, -1.0, 1.0)
        except AudioReadError:
            raise
        except (av.error.FFmpegError, ValueError) as e:
            raise AudioReadError(f"{what}: cannot decode audio ({_one_line(e)})") from e
        if total == 0:
            raise AudioReadError(f"{what}: no audio samples")


class Resampler:
    """Downmix to mono and resample to ``output_rate_hz``, statefully (libswresample via PyAV).

    ``push`` takes ``(frames, channels)`` (or ``(frames,)`` mono) float32 at ``input_rate_hz``
    and returns the mono samples ready so far; ``flush`` returns the rest. Chunking does not
    change the output. The downmix is the channel mean in float64 (no overflow, no 3 dB lift);
    when the rates are equal no filter runs at all.
    """

    def __init__(self, *, input_rate_hz: int, output_rate_hz: int, channels: int = 1) -> None:
        if input_rate_hz <= 0 or output_rate_hz <= 0:
            raise ValueError("sample rates must be positive")
        if channels < 1:
            raise ValueError("channels must be >= 1")
        self.input_rate_hz = input_rate_hz
        self.output_rate_hz = output_rate_hz
        self.channels = channels
        self._swr = (
            av.AudioResampler(format="flt", layout="mono", rate=output_rate_hz)
            if input_rate_hz != output_rate_hz
            else None
        )
        self._pts = 0
        self._flushed = False

    def downmix(self, frames: np.ndarray) -> np.ndarray:
        """``(frames, channels)`` -> ``(frames,)`` float32 channel mean (validated shape)."""
        x = np.asarray(frames)
        if x.ndim == 1 and self.channels == 1:
            return x.astype(np.float32, copy=False)
        if x.ndim != 2 or x.shape[1] != self.channels:
            raise ValueError(f"expected (frames, {self.channels}) audio, got shape {x.shape}")
        if self.channels == 1:
            return x[:, 0].astype(np.float32, copy=False)
        return x.mean(axis=1, dtype=np.float64).astype(np.float32)

    def push(self, frames: np.ndarray) -> np.ndarray:
        if self._flushed:
            raise RuntimeError("push after flush")
        mono = self.downmix(frames)
        if self._swr is None or len(mono) == 0:
            return mono.copy()
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(mono)[None, :], format="flt", layout="mono")
        frame.sample_rate = self.input_rate_hz
        frame.time_base = Fraction(1, self.input_rate_hz)
        frame.pts = self._pts
        self._pts += len(mono)
        return _collect(self._swr.resample(frame))

    def flush(self) -> np.ndarray:
        if self._flushed:
            return np.zeros(0, np.float32)
        self._flushed = True
        return np.zeros(0, np.float32) if self._swr is None else _collect(self._swr.resample(None))


def _collect(frames: list[av.AudioFrame]) -> np.ndarray:
    if not frames:
        return np.zeros(0, np.float32)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32, copy=False)


def resample(x: np.ndarray, input_rate_hz: int, output_rate_hz: int) -> np.ndarray:
    """A whole mono signal at another rate (the :class:`Resampler`, pushed once and flushed)."""
    if input_rate_hz == output_rate_hz:
        return np.asarray(x, np.float32)
    r = Resampler(input_rate_hz=input_rate_hz, output_rate_hz=output_rate_hz)
    return np.concatenate([r.push(np.asarray(x, np.float32)), r.flush()])


def read_audio(
    source: str | Path | bytes, *, sample_rate_hz: int, limits: AudioLimits | None = None
) -> np.ndarray:
    """Decode a whole file (path) or in-memory file bytes to mono float32 at ``sample_rate_hz``.

    Returns:
        ``(samples,)`` float32 in [-1, 1].

    Raises:
        AudioReadError: with a one-line message naming the file and the problem.
    """
    with AudioFile(source, limits) as f:
        r = Resampler(
            input_rate_hz=f.info.sample_rate_hz, output_rate_hz=sample_rate_hz, channels=f.info.channels
        )
        out = [r.push(block) for block in f.blocks()]
    out.append(r.flush())
    return np.concatenate(out).astype(np.float32, copy=False)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{e.__class__.__name__}: {text}" if text else e.__class__.__name__
