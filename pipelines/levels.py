"""Level normalization shared by the recognizers' automatic gain control and ``waveform_rms``
smoothing: one map, so the raw window and the smoothing copies are heard at the same level."""

from __future__ import annotations

import torch

# Windows quieter than this RMS (about -60 dBFS) are scaled as if they had it, so digital silence
# is not blown up into full-scale noise.
LEVEL_FLOOR = 1e-3


def gain_normalize(wave: torch.Tensor, rms: float = 1.0, floor: float = LEVEL_FLOOR) -> torch.Tensor:
    """``(batch, samples)`` -> each window scaled to RMS ``rms`` (by ``rms / floor`` when it is
    quieter than ``floor``). With ``rms`` 1 the map is ``P(x) / floor``, ``P`` the projection
    onto the ball of radius ``floor * sqrt(samples)``: continuous, and never amplifying noise
    more than ``1 / floor``."""
    level = wave.pow(2).mean(dim=-1, keepdim=True).sqrt()
    return wave / (level.clamp_min(floor) / rms)
