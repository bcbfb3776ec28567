"""DeepFool (Moosavi-Dezfooli, Fawzi and Frossard, "DeepFool: a simple and accurate method to fool
deep neural networks", CVPR 2016): a small untargeted perturbation found by walking to the
nearest linearised decision boundary.

At each iteration the classifier is linearised around the current point. For each candidate
class ``k`` (the ``candidates - 1`` classes with the highest original logits other than the true
one), the boundary between the true class ``y`` and ``k`` is ``f_k = Z_k - Z_y = 0`` with normal
``w_k = grad f_k``; it lies ``|f_k| / ||w_k||_2`` away in L2 (``|f_k| / ||w_k||_1`` in L-inf, the
dual norm). The nearest one is stepped onto (``|f_k| / ||w_k||_2^2 * w_k``, or
``|f_k| / ||w_k||_1 * sign(w_k)``), the steps are summed, and the clip is moved to
``x + (1 + overshoot) * total``, clipped to the input bounds, until its label changes or
``max_iter`` iterations have run. An optional budget projects the final perturbation onto its
ball.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from avsentry.pipelines.recognizers.base import DifferentiableRecognizer
from avsentry.tools.attacks.base import NORMS, AttackResult, Budget, finish, project


@dataclass(frozen=True, slots=True, kw_only=True)
class DeepFool:
    """DeepFool, L2 or L-inf; untargeted only.

    Attributes:
        norm: ``"l2"`` or ``"linf"``: the distance to the boundaries that is minimised.
        overshoot: The summed step is scaled by ``1 + overshoot`` to cross the boundary.
        max_iter: Linearisations at most.
        candidates: Classes considered, the true one included: the true class and the
            ``candidates - 1`` others with the highest logits on the clean clip (all classes if
            the model has fewer).
        budget: Optional ball (any norm) the final perturbation is projected onto; ``None``
            leaves it as found.
    """

    norm: str = "l2"
    overshoot: float = 0.02
    max_iter: int = 50
    candidates: int = 10
    budget: Budget | None = None
    name: str = "deepfool"

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if not (math.isfinite(self.overshoot) and self.overshoot >= 0):
            raise ValueError(f"overshoot must be a finite number >= 0, got {self.overshoot}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")
        if self.candidates < 2:
            raise ValueError(f"candidates must be >= 2 (the true class and one other), got {self.candidates}")

    def run(
        self,
        model: DifferentiableRecognizer,
        x: np.ndarray,
        y: np.ndarray,
        *,
        target: np.ndarray | None = None,
        seed: int = 0,
    ) -> AttackResult:
        """Move ``(batch, samples)`` clips with true labels ``y (batch,)`` across their nearest boundary.

        The attack is deterministic; ``seed`` is accepted for the common interface. A clip costs
        ``queries = (candidates - 1) * iterations it was still correctly classified + 1``
        forward+backward passes (one gradient per candidate class and iteration).

        Raises:
            ValueError: ``target`` is given (DeepFool has no targeted form; use
                :class:`~avsentry.tools.attacks.cw.CarliniWagnerL2` or
                :class:`~avsentry.tools.attacks.jsma.JSMA`).
        """
        del seed  # deterministic
        if target is not None:
            raise ValueError(
                "DeepFool is untargeted (it crosses the nearest boundary, whatever class lies "
                "behind it); use CarliniWagnerL2 or JSMA for a targeted attack"
            )
        dev = model.device
        lo, hi = model.spec.input_bounds
        xn = np.asarray(x, np.float32)
        x0 = torch.as_tensor(xn, device=dev)
        n = len(x0)
        rows = torch.arange(n, device=dev)
        yt = torch.as_tensor(np.asarray(y), device=dev, dtype=torch.long)
        with torch.no_grad():
            clean = model.logits(x0)
        k = min(self.candidates, clean.shape[1])
        others = clean.scatter(1, yt[:, None], -math.inf).topk(k - 1, dim=1).indices  # (batch, k-1)

        adv = x0.clone()
        total = torch.zeros_like(x0)
        iters = torch.zeros(n, dtype=torch.int64, device=dev)
        for it in range(self.max_iter + 1):
            point = adv.detach().requires_grad_(True)
            logits = model.logits(point)
            active = logits.argmax(1) == yt
            if not bool(active.any()) or it == self.max_iter:
                break
            f = logits.gather(1, others) - logits.gather(1, yt[:, None])  # (batch, k-1), < 0 while y wins
            grads = torch.stack(
                [torch.autograd.grad(f[:, j].sum(), point, retain_graph=j < k - 2)[0] for j in range(k - 1)],
                dim=1,
            )  # (batch, k-1, samples)
            with torch.no_grad():
                dual = grads.norm(dim=2) if self.norm == "l2" else grads.abs().sum(2)
                dist = f.abs() / (dual + 1e-8)
                nearest = dist.argmin(1)
                w = grads[rows, nearest]
                d = dist[rows, nearest] + 1e-4  # a hair past the linearised boundary
                if self.norm == "l2":
                    step = d[:, None] * w / (w.norm(dim=1, keepdim=True) + 1e-8)
                else:
                    step = d[:, None] * w.sign()
                total = torch.where(active[:, None], total + step, total)
                adv = torch.where(active[:, None], (x0 + (1 + self.overshoot) * total).clamp(lo, hi), adv)
                iters += active
        if self.budget is not None:
            eps = torch.as_tensor(self.budget.per_item(xn), device=dev)
            adv = (x0 + project(adv - x0, eps, self.budget.norm)).clamp(lo, hi)
        queries = iters.cpu().numpy() * (k - 1) + 1
        return finish(model, xn, adv, np.asarray(y), None, queries=queries)
