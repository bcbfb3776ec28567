"""Projected gradient descent (Madry et al., ICLR 2018), L-inf and L2, with random restarts;
BIM (Kurakin et al., ICLR 2017 workshop) is PGD without a random start.

Each step moves ``step`` along the normalized gradient of the objective (``sign`` for L-inf,
unit L2 direction for L2), projects back onto the budget ball around the input and clips to the
model's input bounds. With ``restarts > 1`` the attack runs again from fresh random starts and
keeps, per clip, the first run that succeeds (else the one with the highest final objective).

``stop_when`` (given to :meth:`PGD.run`) freezes a clip at the first checked iterate that meets
the caller's criterion (e.g. "fooled and not flagged" for adaptive attacks): the smallest
perturbation along the path that does the job, rather than the last one.
"""

from __future__ import annotations

from collections.abc import Callable
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
    generator,
    normalized_step,
    per_item,
    project,
    random_start,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class PGD:
    """PGD / BIM attack.

    Attributes:
        budget: The perturbation ball (norm, absolute ``eps`` or ``snr_db``).
        steps: Iterations per run.
        step_ratio: Step size as a fraction of each clip's radius; default ``2.5 / steps``
            (Madry et al.'s rule), so the iterate can cross the ball.
        restarts: Runs from independent random starts (BIM: 1 run from the input).
        random_start: Start each run at a random point of the ball.
        loss: ``"ce"`` or ``"margin"`` (Carlini-Wagner logit margin).
    """

    budget: Budget = field(default_factory=lambda: Budget(norm="linf", snr_db=30.0))
    steps: int = 50
    step_ratio: float | None = None
    restarts: int = 1
    random_start: bool = True
    loss: str = "ce"
    name: str = "pgd"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.restarts < 1:
            raise ValueError(f"steps and restarts must be >= 1, got {self.steps} and {self.restarts}")
        if self.step_ratio is not None and not self.step_ratio > 0:
            raise ValueError(f"step_ratio must be > 0, got {self.step_ratio}")

    @classmethod
    def bim(cls, **kw: object) -> PGD:
        """Basic iterative method: PGD with no random start, one run."""
        return cls(random_start=False, restarts=1, name="bim", **kw)  # type: ignore[arg-type]

    def run(
        self,
        model: DifferentiableRecognizer,
        x: np.ndarray,
        y: np.ndarray,
        *,
        target: np.ndarray | None = None,
        seed: int = 0,
        objective: Objective | None = None,
        stop_when: Callable[[torch.Tensor], torch.Tensor] | None = None,
        check_every: int = 5,
    ) -> AttackResult:
        """Attack one batch.

        Args:
            model: The recognizer whose labels judge success.
            x: ``(batch, samples)`` clips; y: true labels; target: goal labels (targeted).
            seed: Seeds the random starts.
            objective: What to maximise (default: the model's ``loss``).
            stop_when: ``(batch, samples)`` iterate -> ``(batch,)`` bool: clips meeting it are
                frozen there (checked every ``check_every`` steps and at the end of a run).
            check_every: Steps between ``stop_when`` checks.
        """
        obj = objective or ClassifierObjective(model, kind=self.loss)
        dev = model.device
        xn = np.asarray(x, np.float32)
        x0 = torch.as_tensor(xn, device=dev)
        eps = torch.as_tensor(self.budget.per_item(xn), device=dev)
        goal = torch.as_tensor(target if target is not None else y, device=dev, dtype=torch.long)
        targeted = target is not None
        step = eps * (self.step_ratio or 2.5 / self.steps)
        gen = generator(dev, seed)
        lo, hi = model.spec.input_bounds
        best = x0.clone()
        best_loss = torch.full((len(x0),), -torch.inf, device=dev)
        done = torch.zeros(len(x0), dtype=torch.bool, device=dev)
        before = model.predict(xn).argmax(1)
        runs = 0
        for _ in range(self.restarts):
            runs += 1
            delta = (
                random_start(x0.shape, eps, self.budget.norm, gen)
                if self.random_start
                else torch.zeros_like(x0)
            )
            adv = clip_to_bounds(x0 + delta, x0, lo, hi)
            frozen = done.clone()
            for k in range(1, self.steps + 1):
                adv.requires_grad_(True)
                (grad,) = torch.autograd.grad(obj.loss(adv, goal, targeted).sum(), adv)
                with torch.no_grad():
                    moved = adv + per_item(step, adv) * normalized_step(grad, self.budget.norm)
                    moved = clip_to_bounds(x0 + project(moved - x0, eps, self.budget.norm), x0, lo, hi)
                    adv = torch.where(per_item(frozen, adv), adv.detach(), moved)
                    if stop_when is not None and (k % check_every == 0 or k == self.steps):
                        hit = ~frozen & stop_when(adv)
                        best[hit] = adv[hit]
                        frozen |= hit
                        done |= hit
                        if bool(frozen.all()):
                            break
            with torch.no_grad():
                final = obj.loss(adv, goal, targeted)
                labels = model.logits(adv).argmax(1)
                ok = labels == goal if targeted else labels != goal
                if stop_when is not None:
                    ok = frozen
                take = ~done & (ok | (final > best_loss))
                best[take] = adv[take]
                best_loss = torch.where(take, final, best_loss)
                done |= ok
            if bool(done.all()):
                break
        queries = self.steps * runs + 1
        return finish(model, xn, best, np.asarray(y), target, queries=queries, before=before)
