"""Window buffering for one stream: ``push(chunk) -> windows``, ``flush() -> windows``.

One protocol for every modality: :class:`StreamSession` (audio) and :class:`VideoSession`
(video) both push chunks in and get :class:`Window` objects out, cut by one windowing core.

Audio chunks of interleaved frames at any rate and channel count are downmixed (channel mean) and
resampled to the model's rate by the project's one resampler
(:class:`avsentry.pipelines.audio_io.Resampler`, libswresample, stateful), so a stream cut into
any chunks gives exactly the windows of the whole clip, and the windows are those of
:func:`avsentry.pipelines.windowing.frame` over the whole resampled signal: a window every
``hop`` samples, the last partial one zero-padded. Samples are clipped to [-1, 1] and checked to
be finite after downmixing and resampling. Video frames are scaled to the model's frame size and
brought to its frame rate before they are cut into clips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from avsentry.pipelines.audio_io import Resampler
from avsentry.pipelines.types import ModelSpec


class StreamTooLong(Exception):
    """The stream passed its length cap."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    """One window ready for the detector.

    Attributes:
        index: 0, 1, 2... within the stream.
        data: The window as the model's input spec has it: ``(window,)`` float32 audio at the
            model's rate, or a ``(frames, height, width, 3)`` float32 clip.
        start: First sample (or frame) at the model's rate (also the window's randomness key).
        start_in / end_in: Sample (or frame) range in the client's stream (its rate); ``end_in``
            is exclusive and can pass the end of the stream for the padded last window.
    """

    index: int
    data: np.ndarray
    start: int
    start_in: int
    end_in: int


class _Windower:
    """Cuts a growing signal (time on the first axis) into windows of ``window`` every ``hop``,
    the last partial one zero-padded: the windows of :func:`~avsentry.pipelines.windowing.frame`
    over the whole signal, whatever pieces it arrives in. Keeps only what later windows need."""

    def __init__(
        self,
        *,
        window: int,
        hop: int,
        item_shape: tuple[int, ...],
        rate_ratio: float,
        picked: bool = False,
        first_window: int = 0,
    ) -> None:
        if window < 1 or not 1 <= hop <= window:
            raise ValueError(f"need window >= 1 and 1 <= hop <= window, got window={window}, hop={hop}")
        self.window = window
        self.hop = hop
        self.item_shape = item_shape
        self.rate_ratio = rate_ratio  # input-stream steps per model step
        # picked: model step k is input step floor(k * ratio) (video frames), so a window's input
        # range is [floor(start * ratio), floor(end * ratio)): the input frames shown during it,
        # and the next contiguous window's start; otherwise (resampled audio) the window's bounds
        # scaled and rounded
        self.picked = picked
        if first_window < 0:
            raise ValueError(f"first_window must be >= 0, got {first_window}")
        # a resumed stream: the steps before window first_window were judged by an earlier session
        origin = first_window * hop
        self._buf = np.zeros((0, *item_shape), np.float32)  # model-rate steps from _buf_start on
        self._buf_start = origin
        self._total = origin  # model-rate steps received so far (counting from the stream's start)
        self._next = origin  # next window start
        self._index = first_window
        self._first = first_window

    def append(self, x: np.ndarray) -> None:
        if len(x):
            self._buf = np.concatenate([self._buf, x.astype(np.float32, copy=False)])
            self._total += len(x)

    def _take(self, start: int) -> np.ndarray:
        out = np.zeros((self.window, *self.item_shape), np.float32)
        seg = self._buf[start - self._buf_start : start - self._buf_start + self.window]
        out[: len(seg)] = seg
        return out

    def input_step(self, step: int) -> int:
        """The client-stream step (sample, frame) at model-rate step ``step``."""
        if self.picked:
            return math.floor(step * self.rate_ratio + 1e-9)
        return int(round(step * self.rate_ratio))

    def start_in(self, index: int) -> int:
        """Where window ``index`` starts in the client's stream: where a client resending after
        a broken stream starts (see :meth:`StreamSession.__init__`'s ``first_window``)."""
        return self.input_step(index * self.hop)

    def _emit(self, start: int) -> Window:
        start_in, end_in = self.input_step(start), self.input_step(start + self.window)
        w = Window(index=self._index, data=self._take(start), start=start, start_in=start_in, end_in=end_in)
        self._index += 1
        return w

    def windows(self, *, final: bool) -> list[Window]:
        out = []
        while self._next + self.window <= self._total:
            out.append(self._emit(self._next))
            self._next += self.hop
        if (
            final
            and self._total > 0
            and (self._index == self._first or self._next - self.hop + self.window < self._total)
        ):
            out.append(self._emit(self._next))
            self._next += self.hop
        drop = self._next - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start = self._next
        return out


class StreamSession:
    """Buffers one audio stream and cuts it into windows.

    Args:
        input_rate_hz: Rate of the pushed audio.
        channels: Interleaved channels per frame.
        model_rate_hz: Rate of the windows.
        window: Window length in samples at the model rate.
        hop: Hop in samples at the model rate.
        max_input_samples: Cap on the stream length in input frames (``None``: no cap).
        first_window: Resume a broken stream: the first window to cut (numbered, placed and keyed
            as in the unbroken stream); the audio pushed starts at ``start_in(first_window)``.
            Exact when the input rate is the model's; otherwise the resampler restarts there.
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
        first_window: int = 0,
    ) -> None:
        if input_rate_hz <= 0 or model_rate_hz <= 0:
            raise ValueError("sample rates must be positive")
        if channels < 1:
            raise ValueError("channels must be >= 1")
        self._windower = _Windower(
            window=window,
            hop=hop,
            item_shape=(),
            rate_ratio=input_rate_hz / model_rate_hz,
            first_window=first_window,
        )
        self.input_rate_hz = input_rate_hz
        self.channels = channels
        self.model_rate_hz = model_rate_hz
        self.window = window
        self.hop = hop
        self.max_input_samples = max_input_samples
        self._resampler = Resampler(
            input_rate_hz=input_rate_hz, output_rate_hz=model_rate_hz, channels=channels
        )
        self.input_samples = self._windower.start_in(first_window)
        self._flushed = False

    def start_in(self, index: int) -> int:
        """Where window ``index`` starts in the input stream (samples at its rate)."""
        return self._windower.start_in(index)

    @property
    def received_s(self) -> float:
        """Seconds of input pushed so far."""
        return self.input_samples / self.input_rate_hz

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
        return self._windower.windows(final=False)

    def flush(self) -> list[Window]:
        """End of stream: drain the resampler and emit the last (zero-padded) window."""
        if self._flushed:
            return []
        self._flushed = True
        self._append(self._resampler.flush())
        return self._windower.windows(final=True)

    def _append(self, x: np.ndarray) -> None:
        if not np.isfinite(x).all():
            raise ValueError("audio is not finite after downmixing and resampling")
        self._windower.append(x)


class VideoSession:
    """Buffers one video stream and cuts it into clips (the video half of the session protocol:
    ``push(frames) -> clips``, ``flush() -> clips``).

    Frames arrive as ``(n, height, width, 3)`` RGB, uint8 (0..255) or float (0..1), at the
    stream's ``input_fps``. They are scaled to the model's frame size (area averaging when
    shrinking, bilinear when growing) and brought to the model's ``fps`` by taking, for each
    model frame time, the latest input frame shown at that time (frames are dropped or repeated,
    never blended), so a stream cut into any pieces gives the clips of the whole. A clip is
    ``clip_frames`` model frames every ``hop`` frames; the last partial clip is padded with black
    frames.

    Args:
        input_fps: Frame rate of the pushed frames.
        input_height / input_width: Size of the pushed frames.
        model_fps: Frame rate of the clips.
        height / width: Frame size of the clips.
        clip_frames: Frames per clip.
        hop: Hop in frames at the model rate.
        max_input_frames: Cap on the stream length in input frames (``None``: no cap).
        first_window: Resume a broken stream at this clip (frames pushed start at
            ``start_in(first_window)``), as for :class:`StreamSession`.
    """

    def __init__(
        self,
        *,
        input_fps: float,
        input_height: int,
        input_width: int,
        model_fps: float,
        height: int,
        width: int,
        clip_frames: int,
        hop: int,
        max_input_frames: int | None = None,
        first_window: int = 0,
    ) -> None:
        if not (input_fps > 0 and model_fps > 0):
            raise ValueError("frame rates must be positive")
        if min(input_height, input_width, height, width) < 1:
            raise ValueError("frame sizes must be positive")
        self.input_fps = float(input_fps)
        self.model_fps = float(model_fps)
        self.input_size = (int(input_height), int(input_width))
        self.size = (int(height), int(width))
        self.max_input_frames = max_input_frames
        self._windower = _Windower(
            window=clip_frames,
            hop=hop,
            item_shape=(height, width, 3),
            rate_ratio=input_fps / model_fps,
            picked=True,
            first_window=first_window,
        )
        self._emitted = first_window * hop  # model frames made so far
        self.input_frames = self._windower.input_step(self._emitted)
        self._flushed = False

    def start_in(self, index: int) -> int:
        """Where clip ``index`` starts in the input stream (frames at its rate)."""
        return self._windower.start_in(index)

    @property
    def received_s(self) -> float:
        """Seconds of input pushed so far."""
        return self.input_frames / self.input_fps

    def push(self, frames: np.ndarray) -> list[Window]:
        """Add ``(n, input_height, input_width, 3)`` frames.

        Raises:
            ValueError: wrong shape, float values outside [0, 1] or not finite.
            StreamTooLong: the stream passed ``max_input_frames``.
        """
        if self._flushed:
            raise RuntimeError("push after flush")
        x = np.asarray(frames)
        want = (*self.input_size, 3)
        if x.ndim != 4 or x.shape[1:] != want:
            raise ValueError(f"expected frames (n, {want[0]}, {want[1]}, 3), got shape {x.shape}")
        if x.dtype != np.uint8:  # uint8 frames are converted once picked (below)
            x = x.astype(np.float32, copy=False)
            if not np.isfinite(x).all():
                raise ValueError("frames contain NaN or Inf values")
            if x.size and (x.min() < 0.0 or x.max() > 1.0):
                raise ValueError("float frames must hold RGB values in [0, 1]")
        n = len(x)
        if self.max_input_frames is not None and self.input_frames + n > self.max_input_frames:
            raise StreamTooLong(
                f"stream exceeds {self.max_input_frames / self.input_fps:.0f} s "
                f"({self.max_input_frames} frames at {self.input_fps:g} fps)"
            )
        picks = []  # model frame k shows the latest input frame at time k / model_fps
        for i in range(n):
            next_time = (self.input_frames + i + 1) / self.input_fps
            while self._emitted / self.model_fps < next_time - 1e-9:
                picks.append(i)
                self._emitted += 1
        self.input_frames += n
        if picks:  # only the frames shown are scaled
            shown = sorted(set(picks))
            chosen = x[shown].astype(np.float32) / 255.0 if x.dtype == np.uint8 else x[shown]
            scaled = dict(zip(shown, scale_frames(chosen, self.size), strict=True))
            self._windower.append(np.stack([scaled[i] for i in picks]))
        return self._windower.windows(final=False)

    def flush(self) -> list[Window]:
        """End of stream: emit the last (black-padded) clip."""
        if self._flushed:
            return []
        self._flushed = True
        return self._windower.windows(final=True)


Session = StreamSession | VideoSession


def open_session(
    spec: ModelSpec,
    *,
    rate_hz: float,
    hop: int,
    channels: int = 1,
    frame_size: tuple[int, int] | None = None,
    max_seconds: float | None = None,
    first_window: int = 0,
) -> Session:
    """The session that cuts a stream into ``spec``'s windows (audio) or clips (video), one every
    ``hop`` model-rate steps.

    Args:
        spec: The model's spec; its modality picks the session.
        rate_hz: The stream's sample rate (audio) or frame rate (video).
        channels: Interleaved audio channels.
        frame_size: ``(height, width)`` of the video frames; required for video.
        max_seconds: Cap on the stream's length (``None``: no cap); past it ``push`` raises
            :class:`StreamTooLong`.
        first_window: Resume a broken stream at this window (see :class:`StreamSession`).
    """
    cap = None if max_seconds is None else int(max_seconds * rate_hz)
    if spec.modality == "video":
        if frame_size is None:
            raise ValueError("a video session needs the frame size")
        video = spec.video
        return VideoSession(
            input_fps=rate_hz,
            input_height=frame_size[0],
            input_width=frame_size[1],
            model_fps=video.fps,
            height=video.height,
            width=video.width,
            clip_frames=video.frames,
            hop=hop,
            max_input_frames=cap,
            first_window=first_window,
        )
    audio = spec.audio
    return StreamSession(
        input_rate_hz=int(rate_hz),
        channels=channels,
        model_rate_hz=audio.sample_rate_hz,
        window=audio.window_samples,
        hop=hop,
        max_input_samples=cap,
        first_window=first_window,
    )


def scale_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(n, h, w, 3)`` float32 frames -> ``(n, *size, 3)``: area averaging when shrinking,
    bilinear when growing, unchanged at the same size."""
    if frames.shape[1:3] == size:
        return frames
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    shrink = size[0] <= frames.shape[1] and size[1] <= frames.shape[2]
    with torch.no_grad():
        if shrink:
            y = torch.nn.functional.interpolate(x, size=size, mode="area")
        else:
            y = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return y.clamp(0.0, 1.0).permute(0, 2, 3, 1).contiguous().numpy()
