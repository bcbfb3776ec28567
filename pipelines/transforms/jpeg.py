"""Per-frame JPEG compression as a video defence (Dziugaite et al., "A study of the effect of
JPG compression on adversarial images", 2016; Das et al., "Keeping the Bad Guys Out", 2017).

Every frame is coded and decoded on its own by libjpeg (through Pillow, in memory), at 4:2:0
chroma subsampling: the 8x8 DCT quantization discards the high-frequency detail perturbations
live in.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image

from avsentry.pipelines.transforms.base import VideoTransform, check_int, from_pixels, to_pixels


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class JpegRoundTrip(VideoTransform):
    """JPEG-compress every frame.

    Attributes:
        fps: Frame rate (from the model's input spec; JPEG does not use it). Default 25.
        quality: libjpeg quality, 1 (worst) to 95. Default 75.
    """

    name = "jpeg"

    fps: float = 25.0
    quality: int = 75

    def __post_init__(self) -> None:
        self._check_fps()
        check_int(self.name, "quality", self.quality, low=1, high=95)
        self._self_test()

    def _apply(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        pixels = to_pixels(batch)
        out = np.empty_like(pixels)
        for index in np.ndindex(*pixels.shape[:2]):
            buffer = io.BytesIO()
            Image.fromarray(pixels[index]).save(buffer, format="JPEG", quality=self.quality, subsampling=2)
            buffer.seek(0)
            with Image.open(buffer) as decoded:
                out[index] = np.asarray(decoded.convert("RGB"))
        return from_pixels(out)
