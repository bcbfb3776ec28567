"""Jacobian-based saliency map attack (Papernot, McDaniel, Jha, Fredrikson, Celik and Swami,
"The Limitations of Deep Learning in Adversarial Settings", IEEE EuroS&P 2016): a targeted
L0 attack that changes few input samples, each by a fixed amount.

The saliency map ranks input features by how much raising them helps the target class ``t``
while hurting the others: with ``a_i = dZ_t/dx_i`` and ``b_i = sum_{o != t} dZ_o/dx_i`` (on the
logits ``Z``), feature ``i`` is salient when ``a_i`` and ``b_i`` have opposite signs, with
strength ``|a_i| * |b_i|``; moving it along ``sign(a_i)`` raises ``Z_t`` and lowers the rest.

Adaptation to 16,000-sample waveforms: the paper searches *pairs* of features per iteration
(``O(n^2)`` pairs, 1.3e8 for one second of audio) and changes each by ``theta`` (the full range
in the paper). Here each iteration instead takes the ``k`` samples, not changed before, with the
largest single-sample saliency (both directions at once: the paper's increasing and decreasing
variants combined); when fewer than ``k`` samples are salient, the rest are taken by
``|a_i - b_i|`` (the gradient of ``Z_t - sum_{o != t} Z_o``), moved along ``sign(a_i - b_i)``.
Each chosen sample moves by ``theta`` (sample units), clipped to the input bounds; samples that
already sit on the bound they would move toward are skipped. A clip stops when its label is the
target or when its L0 budget, ``gamma`` times its length, is spent: every sample changes at most
once, so at most ``floor(gamma * samples)`` samples differ from the clip.

Untargeted use: with no ``target``, each clip's target is its runner-up class (the second
highest logit on the clean clip), the cheapest label change in the model's own ranking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from avsentry.pipelines.recognizers.base import DifferentiableRecognizer
from avsentry.tools.attacks.base import AttackResult, finish


@dataclass(frozen=True, slots=True, kw_only=True)
class JSMA:
    """Saliency map attack for waveforms (L0).

    Attributes:
        theta: How far each chosen sample moves, in sample units (the input range is
            usually [-1, 1]; the default, half of it, echoes the paper's full-range change:
            smaller moves barely register through the model's log-mel front end).
        gamma: Fraction of the clip's samples that may change (the L0 budget), in (0, 1];
            0.02 is 320 samples of a 1 s clip at 16 kHz.
        k: Samples changed per iteration (fewer: more, better-aimed iterations).
    """

    theta: float = 1.0
    gamma: float = 0.02
    k: int = 16
    name: str = "jsma"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.theta) and self.theta > 0):
            raise ValueError(f"theta must be a positive number, got {self.theta}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")

    def run(
        self,
        model: DifferentiableRecognizer,
        x: np.ndarray,
        y: np.ndarray,
        *,
        target: np.ndarray | None = None,
        seed: int = 0,
    ) -> AttackResult:
        """Attack ``(batch, samples)`` clips with true labels ``y (batch,)`` toward ``target``.

        Without ``target`` each clip's runner-up class is its target, and success is judged as
        untargeted (the label left ``y``). The attack is deterministic; ``seed`` is accepted for
        the common interface. A clip costs ``queries = 2 * iterations it was active + 1``
        forward+backward passes (the target's gradient and the sum of all logits' gradient).
        """
        del seed  # deterministic
        dev = model.device
        lo, hi = model.spec.input_bounds
        xn = np.asarray(x, np.float32)
        x0 = torch.as_tensor(xn, device=dev)
        n, samples = x0.shape
        yt = torch.as_tensor(np.asarray(y), device=dev, dtype=torch.long)
        if target is None:
            with torch.no_grad():
                clean = model.logits(x0)
            goal = clean.scatter(1, yt[:, None], -math.inf).argmax(1)
        else:
            goal = torch.as_tensor(np.asarray(target), device=dev, dtype=torch.long)
        max_changes = int(self.gamma * samples)
        picks = torch.arange(self.k, device=dev)

        adv = x0.clone()
        used = torch.zeros_like(x0, dtype=torch.bool)
        changed = torch.zeros(n, dtype=torch.int64, device=dev)
        iters = torch.zeros(n, dtype=torch.int64, device=dev)
        for _ in range(math.ceil(max_changes / self.k) + 1):
            point = adv.detach().requires_grad_(True)
            logits = model.logits(point)
            active = (logits.argmax(1) != goal) & (changed < max_changes)
            if not bool(active.any()):
                break
            (a,) = torch.autograd.grad(logits.gather(1, goal[:, None]).sum(), point, retain_graph=True)
            (everything,) = torch.autograd.grad(logits.sum(), point)
            with torch.no_grad():
                b = everything - a
                salient = a * b < 0
                direction = torch.where(salient, a.sign(), (a - b).sign())
                movable = ~used & (direction != 0)
                movable &= ~((direction > 0) & (adv >= hi)) & ~((direction < 0) & (adv <= lo))
                sal = torch.where(salient, a.abs() * b.abs(), 0.0)
                fallback = (a - b).abs()
                # Salient samples first (score in [2, 3]), then the fallback ranking ([0, 1]).
                score = torch.where(
                    salient & movable,
                    2 + sal / sal.amax(1, keepdim=True).clamp_min(1e-30),
                    torch.where(movable, fallback / fallback.amax(1, keepdim=True).clamp_min(1e-30), -1.0),
                )
                top, idx = score.topk(self.k, dim=1)
                room = (max_changes - changed)[:, None]
                take = (top >= 0) & (picks[None, :] < room) & active[:, None]
                old = adv.gather(1, idx)
                moved = (old + self.theta * direction.gather(1, idx)).clamp(lo, hi)
                adv = adv.scatter(1, idx, torch.where(take, moved, old))
                used = used.scatter(1, idx, used.gather(1, idx) | take)
                changed += take.sum(1)
                iters += active
        queries = iters.cpu().numpy() * 2 + 1
        return finish(model, xn, adv, np.asarray(y), target, queries=queries)
