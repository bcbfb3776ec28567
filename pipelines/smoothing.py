"""Randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019).

The smoothed classifier ``g(x) = argmax_c P(f(x + e) = c)``, ``e ~ N(0, sigma^2 I)``, is
estimated by Monte Carlo. ``predict`` follows the paper's PREDICT (abstain unless a two-sided
binomial test of the top two counts rejects at ``alpha``); ``certify`` follows CERTIFY (select
``c_A`` on ``n0`` samples, lower-bound ``p_A`` on ``n`` fresh samples with a one-sided
Clopper-Pearson interval, radius ``sigma * Phi^-1(p_A_lower)``, abstain if ``p_A_lower < 1/2``).
Reference implementation: locuslab/smoothing ``core.py``.

Noise is drawn on the recognizer's device with a seeded ``torch.Generator``, in one of the
recognizer's representations (``waveform``, ``spectrogram`` magnitude or normalized ``logmel``),
or in ``waveform_rms``, which every waveform model offers: the window divided by its RMS, so
``sigma`` is the noise level relative to the window (``sigma = 1`` is noise as loud as the
speech) and a certified radius is one signal-to-perturbation ratio whatever the window's loudness
(:func:`guaranteed_snr_db`); the certified radius is in the representation's units. Sampling is
split from the statistics (:func:`sample_counts` vs :func:`predict_from_counts` /
:func:`certify_from_counts`) so a server can batch the noisy forward passes of many streams
together.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import beta, binomtest, norm

from avsentry.pipelines.levels import LEVEL_FLOOR, gain_normalize
from avsentry.pipelines.recognizers.base import SmoothableRecognizer
from avsentry.pipelines.types import Abstain, Certified, Prediction

WAVEFORM_RMS = "waveform_rms"
# waveform_rms: windows quieter than this RMS are scaled by 1 / RMS_FLOOR instead of 1 / RMS (so
# silence is not blown up into full-scale noise); noisy copies are scaled to RMS_LEVEL (about the
# level of the training speech, -26 dBFS) before the model, a fixed gain the certificate survives.
RMS_FLOOR = LEVEL_FLOOR
RMS_LEVEL = 0.05


def offered_representations(model: SmoothableRecognizer) -> tuple[str, ...]:
    """The representations smoothing can use with ``model``: its own, plus ``waveform_rms``."""
    own = tuple(model.representations)
    return own + (WAVEFORM_RMS,) if "waveform" in own and WAVEFORM_RMS not in own else own


def rms_normalize(x: torch.Tensor) -> torch.Tensor:
    """``(batch, samples)`` -> each window divided by ``max(RMS, RMS_FLOOR)`` (the ``waveform_rms``
    representation; :func:`avsentry.pipelines.levels.gain_normalize` to RMS 1, the map a
    recognizer's automatic gain control uses)."""
    return gain_normalize(x, 1.0, RMS_FLOOR)


def encode(model: SmoothableRecognizer, x: torch.Tensor, representation: str) -> torch.Tensor:
    """Waveforms ``(batch, samples)`` on ``model.device`` -> inputs in ``representation``."""
    if representation == WAVEFORM_RMS and WAVEFORM_RMS not in model.representations:
        return rms_normalize(model.encode(x, "waveform"))
    return model.encode(x, representation)


def logits_from(model: SmoothableRecognizer, z: torch.Tensor, representation: str) -> torch.Tensor:
    """Logits for inputs already in ``representation`` (``waveform_rms`` copies are played to the
    model at ``RMS_LEVEL``)."""
    if representation == WAVEFORM_RMS and WAVEFORM_RMS not in model.representations:
        return model.logits_from(z * RMS_LEVEL, "waveform")
    return model.logits_from(z, representation)


def guaranteed_snr_db(norm_x: float, radius: float, representation: str, samples: int) -> float | None:
    """The signal-to-perturbation ratio (dB, relative to the received window of L2 norm
    ``norm_x``) above which every waveform perturbation stays within the certified ``radius``.

    - ``waveform`` (and ``pixels``, noise on a video clip itself): ``20 log10(norm_x / radius)``.
    - ``waveform_rms``: the normalization ``N`` maps a perturbation ``delta`` of the received
      ``x'`` to at most ``sqrt(d) * 2 sin(asin(rho) / 2)`` with ``rho = ||delta|| / ||x'||``
      while both stay above the floor (they differ by an angle of at most ``asin(rho)`` and
      ``N`` puts them on the sphere of radius ``sqrt(d)``), and to at most
      ``||delta|| / RMS_FLOOR`` anywhere (``N`` is a projection scaled by ``1 / RMS_FLOOR``).
      The larger of the two covered perturbations is returned; about ``20 log10(sqrt(d) / R)``
      for any window well above the floor.
    - other representations bound nothing about the waveform: ``None``.

    ``inf`` for a zero radius (nothing is covered), ``-inf`` for a silent window.
    """
    if representation not in ("waveform", "pixels", WAVEFORM_RMS):
        return None
    if radius <= 0:
        return math.inf
    if norm_x <= 0:
        return -math.inf
    if representation != WAVEFORM_RMS:
        return 20.0 * math.log10(norm_x / radius)
    root_d = math.sqrt(samples)
    covered = radius * RMS_FLOOR  # the global Lipschitz bound
    theta = 2.0 * math.asin(min(1.0, radius / (2.0 * root_d)))  # the angle the radius allows
    rho = 1.0 if theta >= math.pi / 2 else math.sin(theta)
    # valid while the whole ball around x' stays above the floor
    covered = max(covered, min(rho * norm_x, norm_x - RMS_FLOOR * root_d))
    return 20.0 * math.log10(norm_x / covered) if covered > 0 else math.inf


@dataclass(frozen=True, slots=True, kw_only=True)
class SmoothingConfig:
    """Parameters of the smoothed classifier.

    Attributes:
        sigma: Noise standard deviation, in the units of ``representation`` (``waveform_rms``:
            relative to the window's RMS).
        representation: Where the noise is added: ``waveform``, ``waveform_rms``,
            ``spectrogram`` or ``logmel``.
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


def noisy_copies(
    z: torch.Tensor, n: int, sigma: float, generator: Generators, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``n`` Gaussian-noised copies of each item: ``(batch, *shape)`` -> ``(batch * n, *shape)``.

    Copies of item ``i`` occupy rows ``i*n .. i*n+n-1``. Noise is drawn on ``z.device``, from
    ``generator``, or from ``generator[i]`` for item ``i`` when a sequence is given (then an
    item's noise does not depend on the rest of the batch). Each item's noise is drawn straight
    into its rows and ``z`` is added in place, broadcast over the copies: no other copy is made.

    Args:
        z: ``(batch, *shape)`` inputs.
        n: Copies per item.
        sigma: Noise standard deviation.
        generator: One generator on ``z.device``, or one per item.
        out: Optional contiguous buffer of at least ``batch * n * prod(shape)`` elements of
            ``z.dtype`` on ``z.device`` to fill (reused across calls to save allocations).
    """
    b = z.shape[0]
    shape = (b, n, *z.shape[1:])
    numel = math.prod(shape)
    if out is None:
        noise = torch.empty(shape, device=z.device, dtype=z.dtype)
    else:
        noise = out.view(-1)[:numel].view(shape)
    if isinstance(generator, torch.Generator):
        torch.randn(shape, generator=generator, out=noise)
    else:
        if len(generator) != b:
            raise ValueError(f"need one generator per item: {len(generator)} for {b}")
        for i, g in enumerate(generator):
            torch.randn(shape[1:], generator=g, out=noise[i])
    # noise <- z + sigma * noise, in one pass
    torch.add(z.unsqueeze(1), noise, alpha=sigma, out=noise)
    return noise.view(b * n, *z.shape[1:])


@torch.no_grad()
def sample_votes(
    model: SmoothableRecognizer,
    z: torch.Tensor,
    n: int,
    cfg: SmoothingConfig,
    generator: Generators,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 class of ``n`` noisy copies of each item of ``z`` (already in the representation).

    Copies go through the model in forward passes of about ``cfg.batch_size`` copies (whole items
    when ``n <= cfg.batch_size``). With one generator per item, an item's noise depends only on
    its own generator (and, when ``n > cfg.batch_size``, on ``cfg.batch_size``).

    Args:
        model: Recognizer offering ``logits_from(z, representation)``.
        z: ``(batch, *shape)`` inputs in ``cfg.representation``.
        n: Noisy samples per item.
        cfg: Smoothing parameters (sigma, representation, batch size).
        generator: Seeded generator on ``z.device``, or one per item (see :func:`noisy_copies`).

    Returns:
        ``(batch, n)`` int64 votes, in the order the copies were drawn, and the
        ``(batch, classes)`` float32 mean softmax over the copies; both on ``z.device``.
    """
    b = z.shape[0]
    n_classes = len(model.spec.labels)
    votes = torch.empty(b, n, dtype=torch.int64, device=z.device)
    probs = torch.zeros(b, n_classes, dtype=torch.float32, device=z.device)
    items = max(1, cfg.batch_size // max(1, n))  # items per forward pass
    copies = min(n, max(1, cfg.batch_size))  # copies per item per forward pass
    buffer = torch.empty(min(b, items) * copies * math.prod(z.shape[1:]), device=z.device, dtype=z.dtype)
    for s in range(0, b, items):
        chunk = z[s : s + items]
        gen = generator if isinstance(generator, torch.Generator) else generator[s : s + len(chunk)]
        for start in range(0, n, copies):
            k = min(copies, n - start)
            batch = noisy_copies(chunk, k, cfg.sigma, gen, out=buffer)
            logits = logits_from(model, batch, cfg.representation).view(len(chunk), k, n_classes)
            votes[s : s + len(chunk), start : start + k] = logits.argmax(dim=-1)
            probs[s : s + len(chunk)] += logits.float().softmax(dim=-1).sum(dim=1)
    return votes, probs.div_(n)


def count_votes(votes: torch.Tensor, n_classes: int) -> np.ndarray:
    """``(batch, copies)`` class votes -> ``(batch, n_classes)`` int64 counts (numpy)."""
    b = votes.shape[0]
    offsets = torch.arange(b, device=votes.device).unsqueeze(1) * n_classes
    flat = (votes + offsets).reshape(-1)
    return torch.bincount(flat, minlength=b * n_classes).view(b, n_classes).cpu().numpy()


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
    votes, probs = sample_votes(model, z, n, cfg, generator)
    counts = count_votes(votes, len(model.spec.labels))
    if return_mean_probs:
        return counts, probs.cpu().numpy()
    return counts


def predict_from_counts(counts: np.ndarray, alpha: float) -> Prediction | Abstain:
    """PREDICT's decision from one item's vote counts ``(classes,)``."""
    order = np.argsort(counts, kind="stable")[::-1]
    c_a, c_b = int(counts[order[0]]), int(counts[order[1]])
    p_value = _two_sided_p_value(c_a, c_a + c_b)
    if p_value > alpha:
        return Abstain(counts=counts, p_value=p_value)
    return Prediction(label=int(order[0]), counts=counts, p_value=p_value)


@functools.lru_cache(maxsize=65536)
def _two_sided_p_value(k: int, n: int) -> float:
    """Two-sided binomial test of ``k`` successes in ``n`` at ``p = 1/2`` (cached: counts are
    small integers and scipy's test costs about 0.25 ms a call)."""
    return float(binomtest(k, n, 0.5).pvalue) if n > 0 else 1.0


def lower_confidence_bound(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion."""
    if k <= 0:
        return 0.0
    return _beta_quantile(float(alpha), int(k), int(n - k + 1))


@functools.lru_cache(maxsize=65536)
def _beta_quantile(q: float, a: int, b: int) -> float:
    return float(beta.ppf(q, a, b))


@functools.lru_cache(maxsize=65536)
def _normal_quantile(p: float) -> float:
    return float(norm.ppf(p))


def detection_radius(p_lower: float, sigma: float, p_min: float) -> float:
    """The L2 radius (in the noise representation's units) that certified detection guarantees
    for a window whose raw label ``y`` has noisy-vote probability at least ``p_lower``, when the
    rule flags any window whose raw label's bound is under ``p_min``:
    ``sigma * (Phi^-1(p_lower) - Phi^-1(1 - p_min))``, 0 when that is not positive.

    Why: ``Phi^-1(p_y(.))`` is ``1/sigma``-Lipschitz for the smoothed probabilities (Salman et
    al. 2019, Lemma 1; Cohen et al.'s Theorem 1 is the case ``p_min = 1/2``). A perturbed window
    that passes with another raw label ``t`` has ``p_t >= p_min``, so ``p_y <= 1 - p_min`` there,
    which needs a move of at least this radius from where ``p_y >= p_lower``. The same bound read
    from the received window (``p_lower`` of its raw label) limits how far a clean window with
    another passing label can be. Each bound holds with probability ``1 - alpha``.
    """
    if not 0 < p_min < 1 or p_lower <= 0:
        return 0.0
    r = sigma * (_normal_quantile(min(p_lower, 1 - 1e-16)) - _normal_quantile(1.0 - p_min))
    return max(0.0, float(r))


def certify_from_counts(
    selection: np.ndarray, estimation: np.ndarray, alpha: float, sigma: float
) -> Certified | Abstain:
    """CERTIFY's decision: ``c_A`` from ``selection`` counts, its bound from ``estimation``."""
    c_a = int(np.argmax(selection))
    n = int(estimation.sum())
    p_lower = lower_confidence_bound(int(estimation[c_a]), n, alpha)
    if p_lower < 0.5:
        return Abstain(counts=estimation, p_lower=p_lower)
    radius = float(sigma * _normal_quantile(p_lower))
    return Certified(label=c_a, radius=radius, p_lower=p_lower, counts=estimation)


def predict(
    model: SmoothableRecognizer,
    x: torch.Tensor,
    cfg: SmoothingConfig,
    generator: torch.Generator,
) -> list[Prediction | Abstain]:
    """Smoothed prediction for each waveform in ``x`` ``(batch, samples)``."""
    z = encode(model, x.to(model.device), cfg.representation)
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
    z = encode(model, x.to(model.device), cfg.representation)
    selection = sample_counts(model, z, cfg.n0, cfg, generator)
    estimation = sample_counts(model, z, cfg.n, cfg, generator)
    assert isinstance(selection, np.ndarray) and isinstance(estimation, np.ndarray)
    return [
        certify_from_counts(s, e, cfg.alpha, cfg.sigma) for s, e in zip(selection, estimation, strict=True)
    ]
