"""Carlini & Wagner's L2 attack (Carlini and Wagner, "Towards Evaluating the Robustness of Neural
Networks", IEEE S&P 2017): the smallest L2 perturbation that changes the label.

The adversarial is written as ``x' = mid + half * tanh(w)`` (mid and half of the model's input
bounds), so it never leaves them, and Adam minimises over ``w``

    ``||x' - x||_2^2 + c * f(x')``,  ``f = max(Z_y - max_{j != y} Z_j, -kappa)`` (untargeted)
    or ``f = max(max_{j != t} Z_j - Z_t, -kappa)`` (targeted toward ``t``)

on the logits ``Z``. A binary search over the constant ``c``, per clip, finds the smallest
constant that still fools the model; every step's iterate is a candidate, and each clip keeps
the successful one with the smallest L2 distance. With a :class:`~avsentry.tools.attacks.base.Budget`
(L2), candidates larger than the budget are rejected: a clip with none left is returned
unchanged (and counts as a failure).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from avsentry.pipelines.recognizers.base import DifferentiableRecognizer
from avsentry.tools.attacks.base import AttackResult, Budget, finish, logits_loss

# w = atanh(x * (1 - _TANH_MARGIN)) keeps the clips that touch the bounds finite in tanh space.
_TANH_MARGIN = 1e-6


@dataclass(frozen=True, slots=True, kw_only=True)
class CarliniWagnerL2:
    """Carlini-Wagner L2 attack, targeted or untargeted.

    Attributes:
        binary_search_steps: Rounds of the binary search over the constant ``c`` (each one a
            full Adam run from the clip).
        steps: Adam steps per round.
        learning_rate: Adam's step size, in tanh space (about sample units near zero). Adam
            moves every sample by about this much per step, so a 1 s clip's perturbation grows
            by up to ``learning_rate * sqrt(16000)`` in L2 per step: 1e-4 gives 0.013, a fine
            grain against typical speech norms of 2-20.
        initial_const: ``c`` of the first round; multiplied by 10 per round until a clip is
            fooled, then bisected.
        kappa: Confidence: the margin the adversarial must reach (logit units, ``>= 0``); the
            loss stops pulling beyond it.
        abort_early: End a round when the batch's loss stopped falling (checked every tenth
            of ``steps``).
        budget: Optional L2 limit (absolute ``eps`` or ``snr_db``); adversarials above it are
            rejected.
    """

    binary_search_steps: int = 5
    steps: int = 100
    learning_rate: float = 1e-4
    initial_const: float = 1e-2
    kappa: float = 0.0
    abort_early: bool = True
    budget: Budget | None = None
    name: str = "cw"

    def __post_init__(self) -> None:
        if self.binary_search_steps < 1 or self.steps < 1:
            raise ValueError(
                f"binary_search_steps and steps must be >= 1, got {self.binary_search_steps} and {self.steps}"
            )
        if not (self.learning_rate > 0 and self.initial_const > 0):
            raise ValueError(
                "learning_rate and initial_const must be > 0, "
                f"got {self.learning_rate} and {self.initial_const}"
            )
        if not (math.isfinite(self.kappa) and self.kappa >= 0):
            raise ValueError(f"kappa must be a finite number >= 0, got {self.kappa}")
        if self.budget is not None and self.budget.norm != "l2":
            raise ValueError(f"the Carlini-Wagner L2 attack takes an L2 budget, got {self.budget.describe()}")

    def run(
        self,
        model: DifferentiableRecognizer,
        x: np.ndarray,
        y: np.ndarray,
        *,
        target: np.ndarray | None = None,
        seed: int = 0,
    ) -> AttackResult:
        """Attack ``(batch, samples)`` clips with true labels ``y (batch,)``, or toward ``target``.

        The attack is deterministic; ``seed`` is accepted for the common interface. Each clip
        costs ``queries = rounds run * steps run + 1`` forward+backward passes.

        Returns:
            Per clip the smallest successful adversarial found (within the budget), or the clip
            itself when none was.
        """
        del seed  # deterministic
        dev = model.device
        lo, hi = (float(b) for b in model.spec.input_bounds)
        mid, half = (hi + lo) / 2, (hi - lo) / 2
        xn = np.asarray(x, np.float32)
        x0 = torch.as_tensor(xn, device=dev)
        n = len(x0)
        targeted = target is not None
        goal = torch.as_tensor(target if targeted else y, device=dev, dtype=torch.long)
        limit = (
            torch.as_tensor(self.budget.per_item(xn), device=dev)
            if self.budget is not None
            else torch.full((n,), math.inf, device=dev)
        )
        w0 = torch.atanh(((x0 - mid) / half).clamp(-1, 1) * (1 - _TANH_MARGIN))

        const = torch.full((n,), self.initial_const, device=dev)
        lower = torch.zeros(n, device=dev)
        upper = torch.full((n,), math.inf, device=dev)
        best = x0.clone()
        best_l2 = torch.full((n,), math.inf, device=dev)
        check_every = max(math.ceil(self.steps / 10), 1)
        queries = 1
        for _ in range(self.binary_search_steps):
            w = w0.clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=self.learning_rate)
            found = torch.zeros(n, dtype=torch.bool, device=dev)
            previous = math.inf
            for step in range(self.steps):
                adv = mid + half * torch.tanh(w)
                margin = logits_loss(model.logits(adv), goal, targeted, "margin")
                l2sq = (adv - x0).pow(2).sum(1)
                loss = (l2sq - const * margin.clamp(max=self.kappa)).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                queries += 1
                with torch.no_grad():
                    ok = (margin > 0) & (margin >= self.kappa)
                    l2 = l2sq.sqrt()
                    better = ok & (l2 < best_l2) & (l2 <= limit)
                    best[better] = adv[better]
                    best_l2 = torch.where(better, l2, best_l2)
                    found |= ok
                if self.abort_early and step % check_every == 0:
                    if not loss.item() <= 0.9999 * previous:
                        break
                    previous = loss.item()
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(torch.isinf(upper), const * 10, (lower + upper) / 2)
        return finish(model, xn, best.clamp(lo, hi), np.asarray(y), target, queries=queries)
