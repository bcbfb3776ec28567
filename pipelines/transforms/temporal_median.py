"""Temporal median filtering as a video defence.

Each pixel becomes the median of its values over ``frames`` consecutive frames centred on it
(edges replicated). Perturbations confined to single frames, such as those of the frame-saliency
attack (Inkawhich et al., "Adversarial Attacks for Optical Flow-Based Action Recognition
Classifiers", 2018) or sparse video attacks (Wei et al., AAAI 2019), are voted out by their
neighbours; steady motion survives. The temporal analogue of Xu et al.'s median smoothing
squeezer (NDSS 2018).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from avsentry.pipelines.transforms.base import VideoTransform, check_int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TemporalMedian(VideoTransform):
    """Median over a centred window of frames.

    Attributes:
        fps: Frame rate (from the model's input spec; unused). Default 25.
        frames: Window length in frames, odd, 3 to 15. Default 3.
    """

    name = "median"

    fps: float = 25.0
    frames: int = 3

    def __post_init__(self) -> None:
        self._check_fps()
        check_int(self.name, "frames", self.frames, low=3, high=15)
        if self.frames % 2 == 0:
            raise ValueError(f"{self.name}: frames must be odd, got {self.frames}")
        self._self_test()

    def _apply(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        k = self.frames // 2
        padded = np.pad(batch, ((0, 0), (k, k), (0, 0), (0, 0), (0, 0)), mode="edge")
        t = batch.shape[1]
        stack = np.stack([padded[:, i : i + t] for i in range(self.frames)])
        return np.median(stack, axis=0).astype(np.float32)
