"""Fast gradient method (Goodfellow et al., ICLR 2015; L2 variant of Miyato et al., 2016).

One step of size ``eps`` along the normalized gradient of the loss: ``sign(grad)`` for L-inf
(FGSM), ``grad / ||grad||_2`` for L2 (FGM). Untargeted ascends the true label's loss; targeted
descends the target's. The result is clipped to the model's input bounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from avsentry.pipelines.recognizers.base import DifferentiableRecognizer
from avsentry.tools.attacks.base import (
    AttackResult,
    Budget,
    ClassifierObjective,
    Objective,
    clip_to_bounds,
    finish,
    normalized_step,
    per_item,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class FGM:
    """FGSM (``norm="linf"``) / FGM (``norm="l2"``).

    Attributes:
        budget: Step size = perturbation radius (absolute or in dB relative to each clip).
        loss: ``"ce"`` (cross-entropy) or ``"margin"`` (Carlini-Wagner logit margin).
    """

    budget: Budget = field(default_factory=lambda: Budget(norm="linf", snr_db=30.0))
    loss: str = "ce"
    name: str = "fgm"

    def run(
        self,
        model: DifferentiableRecognizer,
        x: np.ndarray,
        y: np.ndarray,
        *,
        target: np.ndarray | None = None,
        seed: int = 0,
        objective: Objective | None = None,
    ) -> AttackResult:
        obj = objective or ClassifierObjective(model, kind=self.loss)
        dev = model.device
        lo, hi = model.spec.input_bounds
        x0 = torch.as_tensor(np.asarray(x, np.float32), device=dev)
        eps = torch.as_tensor(self.budget.per_item(x), device=dev)
        goal = torch.as_tensor(target if target is not None else y, device=dev, dtype=torch.long)
        adv = x0.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(obj.loss(adv, goal, target is not None).sum(), adv)
        with torch.no_grad():
            step = per_item(eps, grad) * normalized_step(grad, self.budget.norm)
            adv = clip_to_bounds(x0 + step, x0, lo, hi)
        return finish(model, np.asarray(x, np.float32), adv, np.asarray(y), target, queries=1)
