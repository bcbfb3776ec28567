"""Sparse masked attacks in the time-frequency domain (in the spirit of masked/sparse audio
adversarial examples, e.g. MSAE; L0 selection by gradient saliency as in JSMA, Papernot et al.,
EuroS&P 2016).

The perturbation lives in the STFT of the waveform (Hann window, ``n_fft`` 512, hop 128 by
default): complex coefficients ``Z`` multiplied by a mask ``M`` and brought back by the inverse
STFT, ``delta = istft(M * Z)``. The mask is either chosen (a time range in seconds and/or a
frequency band in Hz) or learned: after ``warmup_steps`` steps with the whole (chosen) region
open, only the top-``k`` fraction of its TF bins by accumulated gradient magnitude stays open (an
L0 budget in TF bins). ``Z`` is optimised with Adam (or signed PGD steps) on the model's loss and
after every step projected onto

- an optional L1 (or L2) ball on the masked coefficients, ``||M * Z|| <= coef_ratio * ||STFT(x)||``
  (in the same norm, L1 over complex magnitudes), and
- the waveform :class:`~avsentry.tools.attacks.base.Budget`, by *scaling* ``Z`` (the largest
  factor ``<= 1`` that fits), not clipping, so the perturbation keeps its time-frequency support:
  its STFT stays inside the mask up to the window's own leakage (a couple of bins in frequency,
  ``n_fft / hop`` frames in time), and no sample outside the mask's frames moves.

The adversarial is then clipped to the model's input bounds, which can leak outside the mask only
where the clip itself reaches the bounds.

The result's ``l0`` counts TF bins used (non-zero masked coefficients), not samples.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from avsentry.pipelines.recognizers.base import DifferentiableRecognizer
from avsentry.tools.attacks.base import AttackResult, Budget, ClassifierObjective, Objective, finish


@dataclass(frozen=True, slots=True, kw_only=True)
class SparseTF:
    """Masked STFT-domain attack.

    Attributes:
        budget: Waveform ball after the inverse STFT (enforced by scaling the coefficients);
            default L2, which scaling fits better than L-inf (one peak would shrink everything).
        time_s: Chosen mask: ``(start, end)`` seconds whose frames (by centre) may change.
        band_hz: Chosen mask: ``(low, high)`` Hz whose bins may change.
        k: Learned mask: the fraction of the (chosen) region's TF bins kept open, in ``(0, 1]``;
            ``None``: the chosen region as is.
        warmup_steps: Steps with the whole region open before the learned mask is picked.
        coef_ratio: Radius of the coefficient ball as a fraction of the clip's own STFT norm;
            ``None``: no coefficient budget.
        coef_norm: ``"l1"`` (sum of complex magnitudes) or ``"l2"``.
        steps: Optimisation steps after the warm-up.
        lr: Step size, in units of each item's per-sample radius per TF bin (a bin of magnitude
            ``n_fft / 2`` times the radius is a sinusoid of that amplitude).
        optimizer: ``"adam"`` or ``"pgd"`` (signed steps of ``lr``).
        n_fft / hop: STFT size and hop in samples (Hann window).
        loss: ``"ce"`` or ``"margin"``.

    The attack is deterministic (``seed`` is accepted for the common interface). Items stop
    changing at their first success (judged on the undefended model, as for PGD); failures
    return their last iterate.
    """

    budget: Budget = field(default_factory=lambda: Budget(norm="l2", snr_db=20.0))
    time_s: tuple[float, float] | None = None
    band_hz: tuple[float, float] | None = None
    k: float | None = None
    warmup_steps: int = 5
    coef_ratio: float | None = None
    coef_norm: str = "l1"
    steps: int = 100
    lr: float = 0.05
    optimizer: str = "adam"
    n_fft: int = 512
    hop: int = 128
    loss: str = "ce"
    name: str = "sparse_tf"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.warmup_steps < 0:
            raise ValueError(f"need steps >= 1 and warmup_steps >= 0, got {self.steps}, {self.warmup_steps}")
        if self.k is not None and not 0 < self.k <= 1:
            raise ValueError(f"k must be in (0, 1], got {self.k}")
        if self.k is not None and self.warmup_steps < 1:
            raise ValueError("a learned mask (k) needs warmup_steps >= 1")
        for what, rng in (("time_s", self.time_s), ("band_hz", self.band_hz)):
            if rng is not None and not (len(rng) == 2 and 0 <= rng[0] < rng[1]):
                raise ValueError(f"{what} must be (low, high) with 0 <= low < high, got {rng}")
        if self.coef_ratio is not None and not self.coef_ratio > 0:
            raise ValueError(f"coef_ratio must be > 0, got {self.coef_ratio}")
        if self.coef_norm not in ("l1", "l2"):
            raise ValueError(f"coef_norm must be 'l1' or 'l2', got {self.coef_norm!r}")
        if self.optimizer not in ("adam", "pgd"):
            raise ValueError(f"optimizer must be 'adam' or 'pgd', got {self.optimizer!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.n_fft < 2 or not 1 <= self.hop <= self.n_fft // 2:
            raise ValueError(f"need n_fft >= 2 and 1 <= hop <= n_fft / 2, got {self.n_fft}, {self.hop}")

    def region(self, samples: int, sample_rate_hz: int) -> np.ndarray:
        """The chosen mask, ``(n_fft // 2 + 1, frames)`` bool (all open when nothing is chosen)."""
        frames = 1 + samples // self.hop
        t = np.arange(frames) * self.hop / sample_rate_hz
        f = np.arange(self.n_fft // 2 + 1) * sample_rate_hz / self.n_fft
        in_t = (t >= self.time_s[0]) & (t <= self.time_s[1]) if self.time_s else np.ones(frames, bool)
        in_f = (f >= self.band_hz[0]) & (f <= self.band_hz[1]) if self.band_hz else np.ones(len(f), bool)
        return in_f[:, None] & in_t[None, :]

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
        xn = np.ascontiguousarray(x, dtype=np.float32)
        n, samples = xn.shape
        x0 = torch.as_tensor(xn, device=dev)
        eps = torch.as_tensor(self.budget.per_item(xn), device=dev)
        goal = torch.as_tensor(target if target is not None else y, device=dev, dtype=torch.long)
        targeted = target is not None
        window = torch.hann_window(self.n_fft, device=dev)

        def stft(w: torch.Tensor) -> torch.Tensor:
            return torch.stft(w, self.n_fft, self.hop, window=window, center=True, return_complex=True)

        def istft(z: torch.Tensor) -> torch.Tensor:
            return torch.istft(z, self.n_fft, self.hop, window=window, center=True, length=samples)

        region = torch.as_tensor(self.region(samples, model.spec.sample_rate_hz), device=dev)
        mask = region.expand(n, *region.shape).clone()
        per_sample = eps if self.budget.norm == "linf" else eps / math.sqrt(samples)
        unit = (per_sample * self.n_fft / 2)[:, None, None]  # coefficient per unit of P
        coef_radius = None
        if self.coef_ratio is not None:
            spec = stft(x0).abs()
            ref = spec.sum((1, 2)) if self.coef_norm == "l1" else spec.pow(2).sum((1, 2)).sqrt()
            coef_radius = self.coef_ratio * ref
        p = torch.zeros((n, *region.shape, 2), device=dev, requires_grad=True)
        opt = torch.optim.Adam([p], lr=self.lr) if self.optimizer == "adam" else None
        saliency = torch.zeros(mask.shape, device=dev)

        def perturbation() -> torch.Tensor:
            return istft(torch.view_as_complex(p) * unit * mask)

        before = model.predict(xn).argmax(1)
        best = x0.clone()
        best_l0 = torch.zeros(n, dtype=torch.long, device=dev)
        done = torch.zeros(n, dtype=torch.bool, device=dev)
        total = self.warmup_steps + self.steps if self.k is not None else self.steps
        spent = 0
        for i in range(total):
            spent += 1
            if self.k is not None and i == self.warmup_steps:
                mask = _top_k(saliency, region, self.k)
                with torch.no_grad():
                    p.mul_(mask[..., None])
                if opt is not None:
                    opt = torch.optim.Adam([p], lr=self.lr)
            adv = x0 + perturbation()
            loss = obj.loss(adv, goal, targeted)
            (grad,) = torch.autograd.grad(-loss[~done].sum() if opt else loss[~done].sum(), p)
            with torch.no_grad():
                if self.k is not None and i < self.warmup_steps:
                    saliency += torch.linalg.vector_norm(grad, dim=-1)
                if opt is not None:
                    p.grad = grad
                    opt.step()
                else:
                    p.add_(self.lr * grad.sign())
                p.mul_(mask[..., None])
                if coef_radius is not None:
                    z = torch.view_as_complex(p) * unit
                    p.copy_(torch.view_as_real(_project_coef(z, coef_radius, self.coef_norm) / unit))
                delta = perturbation()
                scale = _ball_scale(delta, eps, self.budget.norm)
                p.mul_(scale[:, None, None, None])
                adv = (x0 + delta * scale[:, None]).clamp(lo, hi)
                used = ((torch.linalg.vector_norm(p, dim=-1) > 0) & mask).sum((1, 2))
                if self.k is not None and i < self.warmup_steps:
                    continue  # the warm-up only ranks bins; its iterates are not sparse yet
                labels = model.logits(adv).argmax(1)
                ok = ~done & ((labels == goal) if targeted else (labels != goal))
                best[ok] = adv[ok]
                best_l0[ok] = used[ok]
                done |= ok
            if bool(done.all()):
                break
        best[~done] = adv[~done]  # the failures: the last iterate
        best_l0[~done] = used[~done]
        res = finish(model, xn, best, np.asarray(y), target, queries=spent + 1, before=before)
        return dataclasses.replace(res, l0=best_l0.cpu().numpy().astype(np.int64))


def _top_k(saliency: torch.Tensor, region: torch.Tensor, k: float) -> torch.Tensor:
    """Per item, the ``k`` fraction of ``region``'s bins with the largest saliency, ``(n, F, T)``."""
    count = max(1, math.ceil(k * int(region.sum())))
    s = saliency.masked_fill(~region, -1.0).flatten(1)
    keep = torch.zeros_like(s, dtype=torch.bool)
    keep.scatter_(1, s.topk(count, dim=1).indices, True)
    return keep.view(saliency.shape) & region


def _project_coef(z: torch.Tensor, radius: torch.Tensor, norm: str) -> torch.Tensor:
    """Project complex ``(n, F, T)`` coefficients onto per-item L1 (of magnitudes) or L2 balls."""
    mag = z.abs().flatten(1)
    if norm == "l2":
        scale = torch.clamp(radius / mag.norm(dim=1).clamp_min(1e-30), max=1.0)
        return z * scale[:, None, None]
    # Euclidean projection of the magnitudes onto the L1 ball (Duchi et al., ICML 2008)
    inside = mag.sum(1) <= radius
    u = mag.sort(dim=1, descending=True).values
    css = u.cumsum(1)
    ks = torch.arange(1, u.shape[1] + 1, device=z.device, dtype=u.dtype)
    rho = ((u - (css - radius[:, None]) / ks) > 0).sum(1).clamp_min(1)
    theta = ((css.gather(1, (rho - 1)[:, None]).squeeze(1) - radius) / rho).clamp_min(0)
    theta = torch.where(inside, torch.zeros_like(theta), theta)
    new = (mag - theta[:, None]).clamp_min(0).view_as(z.real)
    return torch.polar(new, z.angle())


def _ball_scale(delta: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """Per item, the largest factor ``s <= 1`` with ``s * delta`` in the budget ball, ``(n,)``."""
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    return torch.clamp(eps / size.clamp_min(1e-30), max=1.0)
