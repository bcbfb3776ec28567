"""Randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019).

The smoothed classifier ``g(x) = argmax_c P(f(x + e) = c)``, ``e ~ N(0, sigma^2 I)``, is
estimated by Monte Carlo. ``predict`` follows the paper's PREDICT (abstain unless a two-sided
binomial test of the top two counts rejects at ``alpha``); ``certify`` follows CERTIFY (select
``c_A`` on ``n0`` samples, lower-bound ``p_A`` on ``n`` fresh samples with a one-sided
Clopper-Pearson interval, radius ``sigma * Phi^-1(p_A_lower)``, abstain if ``p_A_lower < 1/2``).
Reference implementation: locuslab/smoothing ``core.py``.

Noise is drawn on the recognizer's device with a seeded ``torch.Generator``, in one of the
recognizer's representations (``waveform``, ``spectrogram`` magnitude or normalized ``logmel``);
the certified radius is in that representation's units. Sampling is split from the statistics
(:func:`sample_counts` vs :func:`predict_from_counts` / :func:`certify_from_counts`) so a server
can batch the noisy forward passes of many streams together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import beta, binomtest, norm

from avsentry.pipelines.recognizers.base import SmoothableRecognizer
from avsentry.pipelines.types import Abstain, Certified, Prediction


@dataclass(frozen=True, slots=True, kw_only=True)
class SmoothingConfig:
    """Parameters of the smoothed classifier.

    Attributes:
        sigma: Noise standard deviation, in the units of ``representation``.
        representation: Where the noise is added: ``waveform``, ``spectrogram`` or ``logmel``.
        n: Monte Carlo samples for PREDICT (and the estimation samples of CERTIFY).
        n0: Selection samples for CERTIFY.
        alpha: Failure probability of the test / confidence bound.
        batch_size: Noisy copies per forward pass.
    """

    sigma: float = 0.25
    representation: str = "logmel"
    n: int = 32
    n0: int = 16
    alpha: float = 0.05
    batch_size: int = 512

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        if self.n < 1 or self.n0 < 1:
            raise ValueError(f"n and n0 must be >= 1, got n={self.n}, n0={self.n0}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


Generators = torch.Generator | Sequence[torch.Generator]


def noisy_copies(z: torch.Tensor, n: int, sigma: float, generator: Generators) -> torch.Tensor:
    """``n`` Gaussian-noised copies of each item: ``(batch, *shape)`` -> ``(batch * n, *shape)``.

    Copies of item ``i`` occupy rows ``i*n .. i*n+n-1``. Noise is drawn on ``z.device``, from
    ``generator``, or from ``generator[i]`` for item ``i`` when a sequence is given (then an
    item's noise does not depend on the rest of the batch).
    """
    shape = (n, *z.shape[1:])
    if isinstance(generator, torch.Generator):
        noise = torch.randn((z.shape[0], *shape), generator=generator, device=z.device, dtype=z.dtype)
    else:
        if len(generator) != z.shape[0]:
            raise ValueError(f"need one generator per item: {len(generator)} for {z.shape[0]}")
        noise = torch.stack(
            [torch.randn(shape, generator=g, device=z.device, dtype=z.dtype) for g in generator]
        )
    # in place, broadcasting z over the n copies: no repeated copy of z is materialised
    return noise.mul_(sigma).add_(z.unsqueeze(1)).view(z.shape[0] * n, *z.shape[1:])


@torch.no_grad()
def sample_counts(
    model: SmoothableRecognizer,
    z: torch.Tensor,
    n: int,
    cfg: SmoothingConfig,
    generator: Generators,
    *,
    return_mean_probs: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Class votes of ``n`` noisy copies of each item of ``z`` (already in the representation).

    Args:
        model: Recognizer offering ``logits_from(z, representation)``.
        z: ``(batch, *shape)`` inputs in ``cfg.representation``.
        n: Noisy samples per item.
        cfg: Smoothing parameters (sigma, representation, batch size).
        generator: Seeded generator on ``z.device``, or one per item (see :func:`noisy_copies`).
        return_mean_probs: Also return the mean softmax over the noisy copies.

    Returns:
        ``(batch, classes)`` int64 counts (and ``(batch, classes)`` float32 mean probabilities).
    """
    b = z.shape[0]
    n_classes = len(model.spec.labels)
    counts = torch.zeros(b, n_classes, dtype=torch.int64, device=z.device)
    probs = torch.zeros(b, n_classes, dtype=torch.float32, device=z.device)
    per_item = max(1, cfg.batch_size // max(1, n))
    for s in range(0, b, per_item):
        chunk = z[s : s + per_item]
        remaining = n
        while remaining > 0:
            k = min(remaining, max(1, cfg.batch_size // len(chunk)))
            gen = generator if isinstance(generator, torch.Generator) else generator[s : s + len(chunk)]
            logits = model.logits_from(noisy_copies(chunk, k, cfg.sigma, gen), cfg.representation)
            logits = logits.view(len(chunk), k, n_classes)
            top = logits.argmax(dim=-1)
            counts[s : s + len(chunk)] += torch.nn.functional.one_hot(top, n_classes).sum(dim=1)
            if return_mean_probs:
                probs[s : s + len(chunk)] += logits.float().softmax(dim=-1).sum(dim=1)
            remaining -= k
    out = counts.cpu().numpy()
    if return_mean_probs:
        return out, (probs / n).cpu().numpy()
    return out


def predict_from_counts(counts: np.ndarray, alpha: float) -> Prediction | Abstain:
    """PREDICT's decision from one item's vote counts ``(classes,)``."""
    order = np.argsort(counts, kind="stable")[::-1]
    c_a, c_b = int(counts[order[0]]), int(counts[order[1]])
    p_value = float(binomtest(c_a, c_a + c_b, 0.5).pvalue) if c_a + c_b > 0 else 1.0
    if p_value > alpha:
        return Abstain(counts=counts, p_value=p_value)
    return Prediction(label=int(order[0]), counts=counts, p_value=p_value)


def lower_confidence_bound(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion."""
    if k <= 0:
        return 0.0
    return float(beta.ppf(alpha, k, n - k + 1))


def certify_from_counts(
    selection: np.ndarray, estimation: np.ndarray, alpha: float, sigma: float
) -> Certified | Abstain:
    """CERTIFY's decision: ``c_A`` from ``selection`` counts, its bound from ``estimation``."""
    c_a = int(np.argmax(selection))
    n = int(estimation.sum())
    p_lower = lower_confidence_bound(int(estimation[c_a]), n, alpha)
    if p_lower < 0.5:
        return Abstain(counts=estimation, p_lower=p_lower)
    return Certified(label=c_a, radius=float(sigma * norm.ppf(p_lower)), p_lower=p_lower, counts=estimation)


def predict(
    model: SmoothableRecognizer,
    x: torch.Tensor,
    cfg: SmoothingConfig,
    generator: torch.Generator,
) -> list[Prediction | Abstain]:
    """Smoothed prediction for each waveform in ``x`` ``(batch, samples)``."""
    z = model.encode(x.to(model.device), cfg.representation)
    counts = sample_counts(model, z, cfg.n, cfg, generator)
    assert isinstance(counts, np.ndarray)
    return [predict_from_counts(c, cfg.alpha) for c in counts]


def certify(
    model: SmoothableRecognizer,
    x: torch.Tensor,
    cfg: SmoothingConfig,
    generator: torch.Generator,
) -> list[Certified | Abstain]:
    """Certified prediction and L2 radius for each waveform in ``x`` ``(batch, samples)``."""
    z = model.encode(x.to(model.device), cfg.representation)
    selection = sample_counts(model, z, cfg.n0, cfg, generator)
    estimation = sample_counts(model, z, cfg.n, cfg, generator)
    assert isinstance(selection, np.ndarray) and isinstance(estimation, np.ndarray)
    return [
        certify_from_counts(s, e, cfg.alpha, cfg.sigma) for s, e in zip(selection, estimation, strict=True)
    ]
