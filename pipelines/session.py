"""Window buffering for one audio stream: ``push(chunk) -> windows``, ``flush() -> windows``.

Chunks of interleaved frames at any rate and channel count are downmixed (channel mean) and
resampled to the model's rate by the project's one resampler
(:class:`avsentry.pipelines.audio_io.Resampler`, libswresample, stateful), so a stream cut into
any chunks gives exactly the windows of the whole clip, and the windows are those of
:func:`avsentry.pipelines.windowing.frame` over the whole resampled signal: a window every
``hop`` samples, the last partial one zero-padded. Samples are clipped to [-1, 1] and checked to
be finite after downmixing and resampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avsentry.pipelines.audio_io import Resampler


class StreamTooLong(Exception):
    """The stream passed its length cap."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    """One window ready for the detector.

    Attributes:
        index: 0, 1, 2... within the stream.
        samples: ``(window,)`` float32 at the model's rate.
        start: First sample at the model's rate (also the window's randomness key).
        start_in / end_in: Sample range in the client's stream (its rate); ``end_in`` is
            exclusive and can pass the end of the audio for the zero-padded last window.
    """

    index: int
    samples: np.ndarray
    start: int
    start_in: int
    end_in: int


class StreamSession:
    """Buffers one stream and cuts it into windows.

    Args:
        input_rate_hz: Rate of the pushed audio.
        channels: Interleaved channels per frame.
        model_rate_hz: Rate of the windows.
        window: Window length in samples at the model rate.
        hop: Hop in samples at the model rate.
        max_input_samples: Cap on the stream length in input frames (``None``: no cap).
    """

    def __init__(
        self,
        *,
        input_rate_hz: int,
        channels: int,
        model_rate_hz: int,
        window: int,
        hop: int,
        max_input_samples: int | None = None,
    ) -> None:
        if input_rate_hz <= 0 or model_rate_hz <= 0:
            raise ValueError("sample rates must be positive")
        if channels < 1:
            raise ValueError("channels must be >= 1")
        if window < 1 or not 1 <= hop <= window:
            raise ValueError(f"need window >= 1 and 1 <= hop <= window, got window={window}, hop={hop}")
        self.input_rate_hz = input_rate_hz
        self.channels = channels
        self.model_rate_hz = model_rate_hz
        self.window = window
        self.hop = hop
        self.max_input_samples = max_input_samples
        self._resampler = Resampler(
            input_rate_hz=input_rate_hz, output_rate_hz=model_rate_hz, channels=channels
        )
        self._buf = np.zeros(0, np.float32)  # model-rate samples from _buf_start on
        self._buf_start = 0
        self._total = 0  # model-rate samples received so far
        self._next = 0  # next window start
        self._index = 0
        self.input_samples = 0
        self._flushed = False

    def push(self, frames: np.ndarray) -> list[Window]:
        """Add ``(frames, channels)`` (or ``(frames,)`` when mono) float32 audio.

        Raises:
            ValueError: wrong shape, or NaN/Inf samples (before or after resampling).
            StreamTooLong: the stream passed ``max_input_samples``.
        """
        if self._flushed:
            raise RuntimeError("push after flush")
        x = np.asarray(frames, dtype=np.float32)
        if not np.isfinite(x).all():
            raise ValueError("audio contains NaN or Inf samples")
        n = len(x)
        if self.max_input_samples is not None and self.input_samples + n > self.max_input_samples:
            raise StreamTooLong(
                f"stream exceeds {self.max_input_samples / self.input_rate_hz:.0f} s "
                f"({self.max_input_samples} samples at {self.input_rate_hz} Hz)"
            )
        mono = self._resampler.push(np.clip(x, -1.0, 1.0))
        self.input_samples += n
        self._append(mono)
        return self._windows(final=False)

    def flush(self) -> list[Window]:
        """End of stream: drain the resampler and emit the last (zero-padded) window."""
        if self._flushed:
            return []
        self._flushed = True
        self._append(self._resampler.flush())
        return self._windows(final=True)

    # -- internals ----------------------------------------------------------------------------
    def _append(self, x: np.ndarray) -> None:
        if not np.isfinite(x).all():
            raise ValueError("audio is not finite after downmixing and resampling")
        if len(x):
            self._buf = np.concatenate([self._buf, x])
            self._total += len(x)

    def _take(self, start: int) -> np.ndarray:
        out = np.zeros(self.window, np.float32)
        seg = self._buf[start - self._buf_start : start - self._buf_start + self.window]
        out[: len(seg)] = seg
        return out

    def _emit(self, start: int) -> Window:
        ratio = self.input_rate_hz / self.model_rate_hz
        w = Window(
            index=self._index,
            samples=self._take(start),
            start=start,
            start_in=int(round(start * ratio)),
            end_in=int(round((start + self.window) * ratio)),
        )
        self._index += 1
        return w

    def _windows(self, *, final: bool) -> list[Window]:
        out = []
        while self._next + self.window <= self._total:
            out.append(self._emit(self._next))
            self._next += self.hop
        if (
            final
            and self._total > 0
            and (self._index == 0 or self._next - self.hop + self.window < self._total)
        ):
            out.append(self._emit(self._next))
            self._next += self.hop
        # keep only what later windows still need
        drop = self._next - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start = self._next
        return out
