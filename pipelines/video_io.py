"""Video in and out: PyAV decodes every container FFmpeg knows (MP4, AVI, MKV, WebM, GIF...)
and encodes the clips the tools save (MP4 with H.264, GIF).

- :class:`VideoFile` reads a file's first video stream as ``(n, height, width, 3)`` uint8 RGB
  blocks at its own size and frame rate. The header is checked against :class:`VideoLimits`
  before decoding (frame size, rate, declared duration) and decoding stops as soon as the frames
  pass the duration cap, so a small file that declares or decompresses to hours costs nothing.
- :func:`read_video` reads a whole (short) file into memory.
- :func:`write_video` writes uint8 clips as MP4 (H.264) or GIF.

Frames are timed by the stream's average frame rate; a variable-frame-rate file (many GIFs) is
read as if its frames were evenly spaced at that rate.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

MAX_SIDE = 4096
MAX_FPS = 240.0


class VideoReadError(ValueError):
    """The file is missing, unreadable, has no video stream, or is out of the limits."""


class VideoTooLong(VideoReadError):
    """The video passes the duration cap (declared in its header, or once decoded)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class VideoLimits:
    """What :class:`VideoFile` accepts.

    Attributes:
        max_side: Largest frame width or height in pixels (default 4096).
        max_fps: Highest frame rate (default 240).
        max_seconds: Longest video; ``None`` for no cap.
    """

    max_side: int = MAX_SIDE
    max_fps: float = MAX_FPS
    max_seconds: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class VideoInfo:
    """A file's first video stream, from its header."""

    width: int
    height: int
    fps: float
    duration_s: float | None
    codec: str


class VideoFile:
    """Decodes a file's first video stream in blocks of RGB frames.

    Args:
        source: A path, or the file's bytes.
        limits: Size, rate and duration caps (default :class:`VideoLimits`).

    Raises:
        VideoReadError: missing or unreadable file, no video stream, or limits passed.
    """

    def __init__(self, source: str | Path | bytes, limits: VideoLimits | None = None) -> None:
        self.limits = limits or VideoLimits()
        what = "video bytes" if isinstance(source, bytes) else str(source)
        self._what = what
        target: str | io.BytesIO = io.BytesIO(source) if isinstance(source, bytes) else str(source)
        if not isinstance(source, bytes) and not Path(source).is_file():
            raise VideoReadError(f"{what}: no such file")
        try:
            self._container = av.open(target, "r")
        except (av.error.FFmpegError, UnicodeDecodeError) as e:
            raise VideoReadError(f"{what}: not a video FFmpeg can read ({_one_line(e)})") from e
        if not self._container.streams.video:
            self._container.close()
            raise VideoReadError(f"{what}: holds no video stream")
        stream = self._container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        width, height = int(stream.codec_context.width), int(stream.codec_context.height)
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif self._container.duration is not None:
            duration = self._container.duration / av.time_base
        self.info = VideoInfo(
            width=width, height=height, fps=fps, duration_s=duration, codec=stream.codec_context.name
        )
        self._stream = stream
        try:
            self._check()
        except VideoReadError:
            self._container.close()
            raise

    def _check(self) -> None:
        i, lim = self.info, self.limits
        if not 0 < i.fps <= lim.max_fps:
            raise VideoReadError(f"{self._what}: frame rate {i.fps:g} fps is outside (0, {lim.max_fps:g}]")
        if not (1 <= i.width <= lim.max_side and 1 <= i.height <= lim.max_side):
            raise VideoReadError(
                f"{self._what}: frame size {i.width}x{i.height} is outside 1..{lim.max_side}"
            )
        if lim.max_seconds is not None and i.duration_s is not None and i.duration_s > lim.max_seconds:
            raise VideoTooLong(
                f"{self._what}: {i.duration_s:.0f} s is longer than the {lim.max_seconds:g} s cap"
            )

    def __enter__(self) -> VideoFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    def blocks(self, frames: int = 16) -> Iterator[np.ndarray]:
        """``(n <= frames, height, width, 3)`` uint8 RGB blocks, in order.

        Raises:
            VideoReadError: corrupt data, a frame of another size, or the duration cap passed.
        """
        cap = None if self.limits.max_seconds is None else int(self.limits.max_seconds * self.info.fps) + 1
        size = (self.info.height, self.info.width)
        block: list[np.ndarray] = []
        count = 0
        try:
            for frame in self._container.decode(self._stream):
                image = frame.to_ndarray(format="rgb24")
                if image.shape[:2] != size:
                    raise VideoReadError(
                        f"{self._what}: frame {count} is {image.shape[1]}x{image.shape[0]}, "
                        f"the stream said {size[1]}x{size[0]}"
                    )
                count += 1
                if cap is not None and count > cap:
                    raise VideoTooLong(f"{self._what}: longer than the {self.limits.max_seconds:g} s cap")
                block.append(image)
                if len(block) == frames:
                    yield np.stack(block)
                    block = []
        except av.error.FFmpegError as e:
            raise VideoReadError(f"{self._what}: corrupt video after {count} frames ({_one_line(e)})") from e
        if block:
            yield np.stack(block)
        if count == 0:
            raise VideoReadError(f"{self._what}: no frame could be decoded")


def media_streams(path: str | Path) -> tuple[bool, bool]:
    """Whether a file holds (audio, video) streams; ``(False, False)`` when FFmpeg cannot open it.
    A cover image (an attached picture) is not video."""
    try:
        with av.open(str(path), "r") as container:
            video = any(
                not (s.disposition & av.stream.Disposition.attached_pic) for s in container.streams.video
            )
            return bool(container.streams.audio), video
    except (av.error.FFmpegError, UnicodeDecodeError, OSError):
        return False, False


def read_video(source: str | Path | bytes, limits: VideoLimits | None = None) -> tuple[np.ndarray, float]:
    """A whole file: ``(frames, height, width, 3)`` uint8 RGB and its frame rate."""
    with VideoFile(source, limits) as video:
        return np.concatenate(list(video.blocks())), video.info.fps


def write_video(path: str | Path, clip: np.ndarray, *, fps: float, crf: int = 18) -> None:
    """Write ``(frames, height, width, 3)`` uint8 RGB: H.264 (yuv420p) in the container the
    suffix names (``.mp4``, ``.mkv``, ``.avi``...), VP9 for ``.webm``, or an animated GIF (FFmpeg's
    GIF encoder, 8-bit palette) for ``.gif``."""
    path = Path(path)
    clip = np.asarray(clip, dtype=np.uint8)
    gif = path.suffix.lower() == ".gif"
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as container:
        if gif:
            stream = container.add_stream("gif", rate=rate)
            stream.pix_fmt = "rgb8"
        elif path.suffix.lower() == ".webm":
            stream = container.add_stream("libvpx-vp9", rate=rate)
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf), "b": "0", "deadline": "realtime"}
        else:
            stream = container.add_stream("libx264", rate=rate)
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf), "preset": "fast"}
        h, w = clip.shape[1:3]
        if not gif and (h % 2 or w % 2):
            clip = np.pad(clip, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        stream.height, stream.width = clip.shape[1:3]
        for i, image in enumerate(clip):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def _one_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
