"""Video sources for the streaming clients: a file paced at real time, and a camera.

A :class:`VideoSource` yields ``(height, width, 3)`` uint8 RGB frames at the source's own size and
frame rate; the server scales and retimes them to the model. :class:`VideoFileSource` decodes any
container FFmpeg reads (MP4, MKV, AVI, WebM, GIF) and paces the frames against a monotonic clock,
the way ``avsentry stream FILE`` replays a recording as if it were live. :class:`CameraSource`
captures through FFmpeg's input devices (PyAV): a V4L2 webcam (``/dev/video0``, format ``v4l2``),
or any other device FFmpeg offers, e.g. the ``lavfi`` virtual source ``testsrc2=size=320x240:rate=25``
(what the tests use, since a build machine has no camera).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import av
import numpy as np

from avsentry.pipelines.video_io import VideoFile, VideoReadError
from avsentry.stream.sources import SourceError, _one_line


class VideoSource:
    """A finite or endless stream of RGB frames.

    Attributes:
        width / height: Size of every frame.
        fps: Frames per second.

    A subclass opens its file or device in ``__init__`` (then calls ``super().__init__()``),
    yields frames from :meth:`_frames` and releases what it holds in :meth:`_release`; this
    class makes :meth:`frames` and :meth:`close` safe to call from two threads.
    """

    width: int
    height: int
    fps: float

    def __init__(self) -> None:
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._running = False

    def frames(self) -> Iterator[np.ndarray]:
        """Yield ``(height, width, 3)`` uint8 RGB frames until the end or :meth:`close`."""
        with self._lock:
            if self._closed.is_set():
                return
            self._running = True
        try:
            yield from self._frames()
        finally:
            with self._lock:
                self._running = False
                self._release()

    def close(self) -> None:
        """Release the file or device; a running :meth:`frames` ends soon after. Idempotent."""
        with self._lock:
            self._closed.set()
            if not self._running:
                self._release()

    def _frames(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _Pacer:
    """Holds frame ``k`` back until ``k / (fps * rate)`` s after the first (fixed deadlines on a
    monotonic clock, so sleep overshoot does not accumulate); ``rate`` 0 does not wait."""

    def __init__(self, fps: float, rate: float, closed: threading.Event) -> None:
        self.period = 0.0 if rate == 0 else 1.0 / (fps * rate)
        self.closed = closed
        self.start: float | None = None

    def wait(self, k: int) -> bool:
        """False when the source was closed meanwhile."""
        if self.start is None:
            self.start = time.monotonic()
        delay = self.start + k * self.period - time.monotonic()
        if delay > 0:
            return not self.closed.wait(delay)
        return not self.closed.is_set()


class VideoFileSource(VideoSource):
    """The frames of a video file at its own size and rate, paced like a live camera.

    The file's header is read on construction, so a missing or unreadable file fails here.

    Args:
        path: Any video FFmpeg decodes; its first video stream is used.
        rate: Playback speed: 1.0 (default) is real time, 0 as fast as the file decodes.
        max_seconds: Stop after this much video; ``None`` (default) streams the whole file.

    Raises:
        SourceError: the file is missing or holds no decodable video.
        ValueError: a negative ``rate`` or a non-positive ``max_seconds``.
    """

    def __init__(self, path: str | Path, *, rate: float = 1.0, max_seconds: float | None = None) -> None:
        if rate < 0:
            raise ValueError(f"rate must be >= 0, got {rate}")
        if max_seconds is not None and not max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0 or None, got {max_seconds}")
        self.path = Path(path)
        try:
            self._file = VideoFile(self.path)
        except VideoReadError as e:
            raise SourceError(str(e)) from e
        info = self._file.info
        self.width, self.height, self.fps = info.width, info.height, info.fps
        self.rate = rate
        self.max_seconds = max_seconds
        super().__init__()

    def _frames(self) -> Iterator[np.ndarray]:
        pacer = _Pacer(self.fps, self.rate, self._closed)
        cap = None if self.max_seconds is None else round(self.max_seconds * self.fps)
        k = 0
        try:
            for block in self._file.blocks(frames=4):
                for frame in block:
                    if (cap is not None and k >= cap) or not pacer.wait(k):
                        return
                    yield frame
                    k += 1
        except VideoReadError as e:
            raise SourceError(str(e)) from e

    def _release(self) -> None:
        self._file.close()


class CameraSource(VideoSource):
    """Frames captured from an FFmpeg input device through PyAV.

    The device is opened on construction (a missing device or an unsupported size or rate fails
    here). Frames are yielded as they are captured, paced by their capture timestamps, so a
    device that produces frames faster than real time (a virtual ``lavfi`` source) streams like a
    camera. When the consumer falls behind, a camera's driver drops the frames it cannot buffer.

    Args:
        device: ``/dev/video0`` (default) for V4L2, or what ``input_format`` takes (for ``lavfi``,
            a filter graph such as ``testsrc2=size=320x240:rate=25``).
        input_format: FFmpeg input format (default ``v4l2``).
        video_size: ``WIDTHxHEIGHT`` to ask the device for (default: its own).
        framerate: Frame rate to ask the device for (default: its own).
        max_seconds: Stop after this much video (default ``None``: until :meth:`close`).

    Raises:
        SourceError: the device cannot be opened or has no video stream.
    """

    def __init__(
        self,
        device: str = "/dev/video0",
        *,
        input_format: str = "v4l2",
        video_size: str | None = None,
        framerate: float | None = None,
        max_seconds: float | None = None,
    ) -> None:
        if max_seconds is not None and not max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0 or None, got {max_seconds}")
        options = {}
        if video_size:
            options["video_size"] = video_size
        if framerate:
            options["framerate"] = f"{framerate:g}"
        self.device = device
        try:
            self._container = av.open(device, format=input_format, options=options)
        except (av.error.FFmpegError, ValueError, OSError) as e:
            raise SourceError(f"cannot open {input_format} device {device!r} ({_one_line(e)})") from e
        if not self._container.streams.video:
            self._container.close()
            raise SourceError(f"{input_format} device {device!r} has no video stream")
        self._stream = self._container.streams.video[0]
        ctx = self._stream.codec_context
        rate = self._stream.average_rate or self._stream.guessed_rate or framerate or 25
        self.width, self.height, self.fps = int(ctx.width), int(ctx.height), float(rate)
        self.max_seconds = max_seconds
        self.captured = 0
        super().__init__()

    def _frames(self) -> Iterator[np.ndarray]:
        start: float | None = None
        first_time: float | None = None
        try:
            for frame in self._container.decode(self._stream):
                stamp = frame.time if frame.time is not None else self.captured / self.fps
                if first_time is None:
                    first_time, start = stamp, time.monotonic()
                offset = stamp - first_time
                if self.max_seconds is not None and offset >= self.max_seconds:
                    return
                assert start is not None
                delay = start + offset - time.monotonic()
                if (delay > 0 and self._closed.wait(delay)) or self._closed.is_set():
                    return
                image = frame.to_ndarray(format="rgb24")
                if image.shape[:2] != (self.height, self.width):
                    raise SourceError(
                        f"{self.device}: the frame size changed to {image.shape[1]}x{image.shape[0]}"
                    )
                self.captured += 1
                yield image
        except av.error.FFmpegError as e:
            raise SourceError(
                f"{self.device}: capture failed after {self.captured} frames ({_one_line(e)})"
            ) from e

    def _release(self) -> None:
        self._container.close()
