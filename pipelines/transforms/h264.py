"""H.264 compression round trip as a video defence.

Lossy video coding removes the fine, high-frequency pixel patterns adversarial perturbations are
made of, and a compressed clip often gets its clean label back (Jia et al., "ComDefend", CVPR
2019 for images; Wei et al., "Sparse Adversarial Perturbations for Videos", AAAI 2019, and the
frame-saliency study of Inkawhich et al., 2018, for video). Encoded with libx264 and decoded with
FFmpeg's H.264 decoder through PyAV, in memory, with no container: frames go to the encoder as
RGB, come back in presentation order, one for each frame in.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from avsentry.pipelines.transforms.base import VideoTransform, check_int, from_pixels, to_pixels

PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


def round_trip(clip: np.ndarray, *, fps: float, crf: int, preset: str, gop: int) -> np.ndarray:
    """``(frames, h, w, 3)`` uint8 RGB -> the same after an H.264 encode and decode.

    Odd frame sizes are padded by edge replication for the encoder's 4:2:0 chroma and cropped back.
    """
    frames, h, w, _ = clip.shape
    ph, pw = h + h % 2, w + w % 2
    if (ph, pw) != (h, w):
        clip = np.pad(clip, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)), mode="edge")
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = pw, ph, "yuv420p"
    rate = Fraction(fps).limit_denominator(1001)
    enc.time_base = 1 / rate
    enc.framerate = rate
    enc.gop_size = gop
    enc.max_b_frames = 0
    enc.options = {"crf": str(crf), "preset": preset, "threads": "1"}
    packets = []
    for i, image in enumerate(clip):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = i
        packets += enc.encode(frame)
    packets += enc.encode(None)
    dec = av.CodecContext.create("h264", "r")
    dec.options = {"threads": "1"}
    # one converter for the clip: its cached swscale context makes YUV -> RGB 5x cheaper than a
    # fresh one per frame (frame.to_ndarray(format=...)), with the same pixels
    rgb = VideoReformatter()
    out = [rgb.reformat(f, format="rgb24").to_ndarray() for p in packets for f in dec.decode(p)]
    out += [rgb.reformat(f, format="rgb24").to_ndarray() for f in dec.decode(None)]
    if len(out) != frames:  # the codec's contract, checked: one frame out per frame in
        raise RuntimeError(f"h264 round trip returned {len(out)} frames for {frames}")
    return np.stack(out)[:, :h, :w]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class H264RoundTrip(VideoTransform):
    """Encode each clip with libx264 and decode it back.

    Attributes:
        fps: Frame rate the clip is coded at (from the model's input spec). Default 25.
        crf: Constant rate factor, 0 (lossless) to 51 (worst). Default 28.
        preset: libx264 speed preset (:data:`PRESETS`). Default ``ultrafast``.
        gop: Frames between key frames. Default 16 (one per default clip).
    """

    name = "h264"

    fps: float = 25.0
    crf: int = 28
    preset: str = "ultrafast"
    gop: int = 16

    def __post_init__(self) -> None:
        self._check_fps()
        check_int(self.name, "crf", self.crf, low=0, high=51)
        check_int(self.name, "gop", self.gop, low=1, high=600)
        if self.preset not in PRESETS:
            raise ValueError(f"{self.name}: preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        self._self_test()

    def _apply(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        pixels = to_pixels(batch)
        out = np.stack(
            [round_trip(c, fps=self.fps, crf=self.crf, preset=self.preset, gop=self.gop) for c in pixels]
        )
        return from_pixels(out)
