"""Spatial down- and up-scaling as a video defence (Xie et al., "Mitigating Adversarial Effects
Through Randomization", ICLR 2018; Guo et al., "Countering Adversarial Images using Input
Transformations", ICLR 2018).

Each frame is shrunk by ``factor`` with area averaging and scaled back with bilinear
interpolation, a low-pass filter that removes detail finer than about ``1 / factor`` pixels.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from avsentry.pipelines.transforms.base import VideoTransform, check_float


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Rescale(VideoTransform):
    """Scale every frame down by ``factor`` and back up.

    Attributes:
        fps: Frame rate (from the model's input spec; unused). Default 25.
        factor: Size of the small frame relative to the input, in (0, 1). Default 0.5.
    """

    name = "rescale"

    fps: float = 25.0
    factor: float = 0.5

    def __post_init__(self) -> None:
        self._check_fps()
        check_float(self.name, "factor", self.factor, low=0.0, high=1.0)
        self._self_test()

    def _apply(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        b, t, h, w, c = batch.shape
        x = torch.from_numpy(np.ascontiguousarray(batch)).reshape(b * t, h, w, c).permute(0, 3, 1, 2)
        small = (max(1, round(h * self.factor)), max(1, round(w * self.factor)))
        with torch.no_grad():
            y = F.interpolate(F.interpolate(x, size=small, mode="area"), size=(h, w), mode="bilinear")
        return y.permute(0, 2, 3, 1).reshape(b, t, h, w, c).clamp(0.0, 1.0).numpy()
