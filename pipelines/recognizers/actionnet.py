"""ActionNet: the default video recognizer, a small 3D CNN on short RGB clips.

A C3D-style network (Tran et al., ICCV 2015) cut down for CPUs: a 2x spatial average pool, the
frames and their temporal differences (a motion cue, as the temporal stream of two-stream
networks; Simonyan & Zisserman, NeurIPS 2014) stacked as six input channels, then four 3x3x3
convolution blocks (batch norm, ReLU) that halve space and, from the second on, time, global
average and max pooling and a linear head. It reads clips as the video pipeline holds them:
``(batch, frames, height, width, 3)`` float32 RGB in [0, 1]. Randomized smoothing adds its noise
in that pixel space (the only representation it offers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

PIXELS = "pixels"
REPRESENTATIONS = (PIXELS,)


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionNetConfig:
    """Architecture of :class:`ActionNet` (stored in the model card)."""

    n_classes: int = 11
    frames: int = 16
    height: int = 112
    width: int = 112
    channels: tuple[int, ...] = (8, 16, 32, 64)
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if self.n_classes < 2 or len(self.channels) < 2:
            raise ValueError("need at least 2 classes and 2 convolution blocks")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ActionNetConfig:
        return cls(**{**d, "channels": tuple(d.get("channels", cls().channels))})


def _block(c_in: int, c_out: int, stride: tuple[int, int, int]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
    )


class ActionNet(nn.Module):
    """Clips ``(batch, frames, height, width, 3)`` in [0, 1] -> logits ``(batch, n_classes)``."""

    def __init__(self, config: ActionNetConfig | None = None) -> None:
        super().__init__()
        cfg = config or ActionNetConfig()
        self.config = cfg
        c = cfg.channels
        blocks = [_block(6, c[0], (1, 2, 2))]
        blocks += [_block(c[i], c[i + 1], (2, 2, 2)) for i in range(len(c) - 1)]
        self.features = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(2 * c[-1], cfg.n_classes)
        self.representations = REPRESENTATIONS

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self._from_pooled(self._pooled(clips))

    @staticmethod
    def _pooled(clips: torch.Tensor) -> torch.Tensor:
        """2x spatial average pool on the channels-last input, the cheapest place to shrink it:
        ``(batch, frames, h, w, 3)`` -> ``(batch, 3, frames, h/2, w/2)``."""
        b, t, h, w, c = clips.shape
        x = F.avg_pool2d(clips.reshape(b * t, h, w, c).permute(0, 3, 1, 2), 2)
        return x.reshape(b, t, c, h // 2, w // 2).transpose(1, 2)

    def _from_pooled(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()  # elementwise work on the transposed view cost more than the convolutions
        motion = F.pad(x[:, :, 1:] - x[:, :, :-1], (0, 0, 0, 0, 1, 0))  # zero motion at frame 0
        h = self.features(torch.cat([(x - 0.45) * 4.0, 4.0 * motion], dim=1)).flatten(2)
        # mean and max over time and space: a small moving shape is a few cells of the last map,
        # which the mean alone dilutes
        return self.head(self.dropout(torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)))

    # -- representation API used by randomized smoothing -----------------------------------
    # Noise "in pixel space" is drawn where it is cheap and exactly equivalent: the network sees
    # pixels only through the 2x2 average pool, and the mean of four i.i.d. N(0, s^2) pixels is
    # N(0, s^2 / 4), independent across blocks. So encode returns z = 2 * pool(x), smoothing adds
    # sigma * N to z (4x fewer samples, no pooling of the noisy copies), and logits_from reads
    # z / 2 = pool(x) + (sigma / 2) N: the same distribution as pool(x + sigma N) with N over the
    # full frame, hence the same smoothed classifier. z is a 1-Lipschitz (L2) map of x (Cauchy-
    # Schwarz on each 2x2 block), so a certified radius in z covers pixel perturbations as large.
    def encode(self, clips: torch.Tensor, representation: str) -> torch.Tensor:
        if representation != PIXELS:
            raise ValueError(f"unknown representation {representation!r}; expected one of {REPRESENTATIONS}")
        return 2.0 * self._pooled(clips)

    def logits_from(self, z: torch.Tensor, representation: str) -> torch.Tensor:
        if representation != PIXELS:
            raise ValueError(f"unknown representation {representation!r}; expected one of {REPRESENTATIONS}")
        return self._from_pooled(0.5 * z)
