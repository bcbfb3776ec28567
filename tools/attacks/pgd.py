"""Projected gradient descent (Madry et al., ICLR 2018), L-inf and L2, with random start.

Untargeted (maximise the loss of the true label) or targeted (minimise the loss of the target).
The iterate is projected onto the epsilon ball around the input and clipped to the model's input
bounds after each step. BIM (Kurakin et al., 2017) is this with no random start.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from avsentry.pipelines.recognizers.base import DifferentiableRecognizer
from avsentry.tools.attacks.base import AttackResult, finish


@dataclass(frozen=True, slots=True, kw_only=True)
class PGD:
    """PGD attack.

    Attributes:
        norm: ``"linf"`` or ``"l2"``.
        eps: Radius of the perturbation ball (sample units; waveform in [-1, 1]).
        step_size: Step per iteration; default ``2.5 * eps / steps``.
        steps: Iterations.
        random_start: Start from a random point in the ball.
    """

    norm: str = "linf"
    eps: float = 0.002
    step_size: float | None = None
    steps: int = 50
    random_start: bool = True
    name: str = "pgd"

    def __post_init__(self) -> None:
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {self.norm!r}")
        if not self.eps > 0 or self.steps < 1:
            raise ValueError("eps must be > 0 and steps >= 1")

    def run(
        self,
        model: DifferentiableRecognizer,
        x: np.ndarray,
        y: np.ndarray,
        *,
        target: np.ndarray | None = None,
        seed: int = 0,
    ) -> AttackResult:
        dev = model.device
        lo, hi = model.spec.input_bounds
        x0 = torch.as_tensor(np.asarray(x, np.float32), device=dev)
        goal = torch.as_tensor(target if target is not None else y, device=dev, dtype=torch.long)
        sign = -1.0 if target is not None else 1.0
        step = self.step_size or 2.5 * self.eps / self.steps
        gen = torch.Generator(device=dev).manual_seed(seed)
        delta = torch.zeros_like(x0)
        if self.random_start:
            if self.norm == "linf":
                delta = (torch.rand(x0.shape, generator=gen, device=dev) * 2 - 1) * self.eps
            else:
                r = torch.randn(x0.shape, generator=gen, device=dev)
                delta = (
                    r
                    / r.norm(dim=1, keepdim=True)
                    * self.eps
                    * torch.rand(len(x0), 1, generator=gen, device=dev)
                )
        adv = (x0 + delta).clamp(lo, hi)
        for _ in range(self.steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(model.logits(adv), goal)
            (grad,) = torch.autograd.grad(loss, adv)
            with torch.no_grad():
                if self.norm == "linf":
                    adv = adv + sign * step * grad.sign()
                    adv = x0 + (adv - x0).clamp(-self.eps, self.eps)
                else:
                    g = grad / (grad.norm(dim=1, keepdim=True) + 1e-12)
                    adv = adv + sign * step * g
                    d = adv - x0
                    d = d * torch.clamp(self.eps / (d.norm(dim=1, keepdim=True) + 1e-12), max=1.0)
                    adv = x0 + d
                adv = adv.clamp(lo, hi)
        return finish(model, np.asarray(x, np.float32), adv, np.asarray(y), target)
