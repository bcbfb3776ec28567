"""Offline certification studies of randomized smoothing (``avsentry evaluate``).

Randomized smoothing (Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized
Smoothing", ICML 2019; reference implementation locuslab/smoothing ``core.py`` and
``certify.py``) turns the recognizer ``f`` into ``g(x) = argmax_c P(f(x + e) = c)``,
``e ~ N(0, sigma^2 I)``, and CERTIFY returns a label ``c_A`` with an L2 radius
``R = sigma * Phi^-1(p_A_lower)`` within which ``g`` provably keeps ``c_A`` (with probability at
least ``1 - alpha`` over the Monte Carlo noise), or abstains. Three studies:

- :func:`certified_accuracy`: the paper's certified-accuracy curve, per representation and sigma:
  the fraction of clips whose certified label is right with radius at least ``r``.
- :func:`max_certifiable_radius` / :func:`max_radius_table`: the largest radius CERTIFY can ever
  return with ``n`` estimation samples (all votes agree), which caps every curve.
- :func:`certified_detection`: the guard's certified-disagreement rule (flag a window when ``g``
  abstains or ``g``'s certified label differs from the raw label), with ``R`` per window in
  waveform L2 units and as a signal-to-perturbation ratio in dB.

Noise copies go through :func:`avsentry.pipelines.smoothing.sample_counts` (batched forward
passes on ``model.device``, CPU or CUDA); each clip's noise comes from its own
``torch.Generator`` seeded by ``(seed, clip index)``, so results are reproducible and do not
depend on batching or on the other clips.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import norm
from tqdm import tqdm

from avsentry.pipelines.recognizers.base import SmoothableRecognizer
from avsentry.pipelines.smoothing import (
    SmoothingConfig,
    certify_from_counts,
    encode,
    guaranteed_snr_db,
    sample_counts,
)
from avsentry.pipelines.types import Abstain, Certified

DEFAULT_RADII = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5)
DEFAULT_SIGMAS = (0.01, 0.05, 0.1, 0.25, 0.5)
DEFAULT_TABLE_NS = (32, 100, 1000, 10000)


@dataclass(frozen=True, slots=True, kw_only=True)
class CertifiedAccuracy:
    """Certified accuracy of the smoothed classifier for one representation and sigma.

    Attributes:
        representation: Where the noise was added (``waveform``, ``spectrogram``, ``logmel``).
        sigma: Noise standard deviation, in the units of ``representation``.
        n: Estimation samples per clip.
        n0: Selection samples per clip.
        alpha: Failure probability of each certificate.
        radii: The radii ``r`` of the curve, in the units of ``representation``.
        certified_accuracy: Per radius, the fraction of clips whose certified label equals the
            true label with radius ``>= r`` (abstentions count as wrong); ``(len(radii),)``.
        clean_accuracy: Fraction of clips whose certified label equals the true label, at any
            radius (the smoothed classifier's clean accuracy, abstentions wrong).
        abstain_rate: Fraction of clips where CERTIFY abstained.
        max_radius: :func:`max_certifiable_radius` for ``sigma``, ``n``, ``alpha``.
        certificates: CERTIFY's outcome per clip, ``(clips,)``.
    """

    representation: str
    sigma: float
    n: int
    n0: int
    alpha: float
    radii: tuple[float, ...]
    certified_accuracy: tuple[float, ...]
    clean_accuracy: float
    abstain_rate: float
    max_radius: float
    certificates: tuple[Certified | Abstain, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (no per-clip certificates)."""
        return {
            "representation": self.representation,
            "sigma": self.sigma,
            "n": self.n,
            "n0": self.n0,
            "alpha": self.alpha,
            "clips": len(self.certificates),
            "clean_accuracy": self.clean_accuracy,
            "abstain_rate": self.abstain_rate,
            "max_radius": self.max_radius,
            "certified_accuracy": {
                f"{r:g}": a for r, a in zip(self.radii, self.certified_accuracy, strict=True)
            },
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowCertificate:
    """The certified-detection rule on one window.

    Attributes:
        raw_label: The recognizer's own top-1 class on the window.
        certificate: CERTIFY's outcome for ``g`` at the window (``Certified`` or ``Abstain``).
        radius: Certified L2 radius in the units of the representation (waveform samples for
            ``waveform``); ``None`` when ``g`` abstains.
        snr_db: The radius as a signal-to-perturbation ratio of the window,
            ``20 * log10(||x||_2 / radius)`` in dB (``inf`` for a zero radius): no perturbation
            quieter than this, relative to the window, changes the raw label unflagged (lower is
            a stronger guarantee). ``None`` when ``g`` abstains or the representation is not
            ``waveform``.
        flagged: ``True`` when ``g`` abstains or certifies a label other than ``raw_label``.
    """

    raw_label: int
    certificate: Certified | Abstain
    radius: float | None
    snr_db: float | None
    flagged: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class CertifiedDetection:
    """The certified-detection rule over a set of windows, with its summary.

    Attributes:
        representation: Where the noise was added.
        sigma: Noise standard deviation, in the units of ``representation``.
        n: Estimation samples per window.
        n0: Selection samples per window.
        alpha: Failure probability of each certificate.
        windows: Per window outcome, ``(clips,)``.
        flag_rate: Fraction of windows flagged (on clean input: the false-positive rate the rule
            costs).
        abstain_rate: Fraction of windows where ``g`` abstained.
        median_radius: Median certified radius over the windows that pass (not flagged);
            ``None`` when none pass.
        median_snr_db: Median of ``snr_db`` over the windows that pass; ``None`` when none pass
            or the representation is not ``waveform``.
        smoothed_accuracy: Fraction of windows whose certified label equals the true label
            (abstentions wrong); ``None`` without labels.
        raw_accuracy: Fraction of windows whose raw label equals the true label; ``None``
            without labels.
        max_radius: :func:`max_certifiable_radius` for ``sigma``, ``n``, ``alpha``.
    """

    representation: str
    sigma: float
    n: int
    n0: int
    alpha: float
    windows: tuple[WindowCertificate, ...]
    flag_rate: float
    abstain_rate: float
    median_radius: float | None
    median_snr_db: float | None
    smoothed_accuracy: float | None
    raw_accuracy: float | None
    max_radius: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (no per-window outcomes)."""
        return {
            "representation": self.representation,
            "sigma": self.sigma,
            "n": self.n,
            "n0": self.n0,
            "alpha": self.alpha,
            "clips": len(self.windows),
            "flag_rate": self.flag_rate,
            "abstain_rate": self.abstain_rate,
            "median_radius": self.median_radius,
            "median_snr_db": self.median_snr_db,
            "smoothed_accuracy": self.smoothed_accuracy,
            "raw_accuracy": self.raw_accuracy,
            "max_radius": self.max_radius,
        }


def max_certifiable_radius(sigma: float, n: int, alpha: float) -> float:
    """Largest radius CERTIFY can return with ``n`` estimation samples.

    When all ``n`` votes go to ``c_A`` the one-sided Clopper-Pearson lower bound is
    ``p_lower = alpha ** (1 / n)``, so ``R_max = sigma * Phi^-1(alpha ** (1 / n))``; no clip can be
    certified further, however robust. ``0.0`` when even unanimity gives ``p_lower < 1/2`` (then
    CERTIFY always abstains).

    Args:
        sigma: Noise standard deviation, in the units of the representation.
        n: Estimation samples.
        alpha: Failure probability of the certificate.

    Returns:
        The radius, in the units of ``sigma``.
    """
    if not sigma > 0 or n < 1 or not 0 < alpha < 1:
        raise ValueError(f"need sigma > 0, n >= 1, 0 < alpha < 1; got {sigma}, {n}, {alpha}")
    p_lower = alpha ** (1.0 / n)
    if p_lower < 0.5:
        return 0.0
    return float(sigma * norm.ppf(p_lower))


def max_radius_table(
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    ns: Sequence[int] = DEFAULT_TABLE_NS,
    alpha: float = 0.001,
) -> dict[float, dict[int, float]]:
    """:func:`max_certifiable_radius` for every ``sigma`` (rows) and ``n`` (columns).

    Args:
        sigmas: Noise standard deviations, in the units of the representation.
        ns: Estimation sample counts; defaults to 32, 100, 1000, 10000.
        alpha: Failure probability of the certificate (Cohen et al. use 0.001).

    Returns:
        ``{sigma: {n: radius}}``.
    """
    return {float(s): {int(n): max_certifiable_radius(s, n, alpha) for n in ns} for s in sigmas}


def clip_generators(count: int, seed: int, device: torch.device) -> list[torch.Generator]:
    """One ``torch.Generator`` on ``device`` per clip, seeded by ``(seed, clip index)``."""
    states = [np.random.SeedSequence([seed, i]).generate_state(1, dtype=np.uint64)[0] for i in range(count)]
    return [torch.Generator(device=device).manual_seed(int(s) & 0x7FFF_FFFF_FFFF_FFFF) for s in states]


def _certify_clips(
    model: SmoothableRecognizer,
    x: torch.Tensor,
    cfg: SmoothingConfig,
    generators: Sequence[torch.Generator],
    bar: tqdm,
) -> list[Certified | Abstain]:
    """CERTIFY for each clip of ``x`` ``(clips, samples)`` (on ``model.device``): ``n0``
    selection copies, then ``n`` estimation copies, from each clip's own generator."""
    out: list[Certified | Abstain] = []
    chunk = max(1, cfg.batch_size // max(cfg.n, cfg.n0))
    for s in range(0, len(x), chunk):
        z = encode(model, x[s : s + chunk], cfg.representation)
        gens = list(generators[s : s + chunk])
        selection = sample_counts(model, z, cfg.n0, cfg, gens)
        estimation = sample_counts(model, z, cfg.n, cfg, gens)
        assert isinstance(selection, np.ndarray) and isinstance(estimation, np.ndarray)
        pairs = zip(selection, estimation, strict=True)
        out += [certify_from_counts(a, b, cfg.alpha, cfg.sigma) for a, b in pairs]
        bar.update(len(z))
    return out


def _as_waves(model: SmoothableRecognizer, x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(clips, *window_shape)`` inputs (audio windows or video clips) on the model's device."""
    wave = torch.as_tensor(x, dtype=torch.float32).to(model.device)
    shape = tuple(model.spec.window_shape)
    if wave.ndim != 1 + len(shape) or tuple(wave.shape[1:]) != shape:
        raise ValueError(f"expected (clips, {', '.join(map(str, shape))}) inputs, got {tuple(wave.shape)}")
    return wave


@torch.no_grad()
def certified_accuracy(
    model: SmoothableRecognizer,
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | Sequence[int],
    *,
    sigmas: Sequence[float] | Mapping[str, Sequence[float]] = DEFAULT_SIGMAS,
    representations: Sequence[str] = ("waveform", "logmel"),
    n: int = 1000,
    n0: int = 64,
    alpha: float = 0.001,
    radii: Sequence[float] = DEFAULT_RADII,
    seed: int = 0,
    batch_size: int = 512,
    progress: bool = True,
) -> list[CertifiedAccuracy]:
    """Certified accuracy curves (Cohen et al., Sec. 4) per representation and sigma.

    For every clip, CERTIFY selects ``c_A`` on ``n0`` noisy copies and lower-bounds
    ``p_A`` on ``n`` fresh ones; the clip counts at radius ``r`` when ``c_A`` is its true label and
    the certified radius is at least ``r``. Clip ``i``'s noise comes from a generator seeded by
    ``(seed, i)`` (see :func:`clip_generators`), the same for every sigma and representation.

    Args:
        model: Smoothable recognizer; noise is drawn and the model runs on ``model.device``.
        x: ``(clips, window_samples)`` float32 waveforms in ``[-1, 1]`` (or video clips in
            ``[0, 1]``, certified in ``pixels``).
        y: ``(clips,)`` true class indices.
        sigmas: Noise standard deviations, each in the units of the representation, for every
            representation; or a mapping ``representation -> sigmas``. Defaults to 0.01, 0.05,
            0.1, 0.25, 0.5.
        representations: Where to add the noise (``waveform``, ``spectrogram``, ``logmel``);
            ignored when ``sigmas`` is a mapping (its keys are used).
        n: Estimation samples per clip.
        n0: Selection samples per clip.
        alpha: Failure probability of each certificate.
        radii: Radii of the curve, in the units of each representation; defaults to
            0.01 ... 1.5.
        seed: Seed of the per-clip generators.
        batch_size: Noisy copies per forward pass.
        progress: Show a tqdm bar (one step per clip per sigma).

    Returns:
        One :class:`CertifiedAccuracy` per (representation, sigma), in order.
    """
    wave = _as_waves(model, x)
    labels = np.asarray(y, dtype=np.int64)
    if labels.shape != (len(wave),):
        raise ValueError(f"y must have one label per clip: {labels.shape} for {len(wave)} clips")
    plan = (
        {str(r): tuple(s) for r, s in sigmas.items()}
        if isinstance(sigmas, Mapping)
        else {str(r): tuple(sigmas) for r in representations}
    )
    radii_t = tuple(float(r) for r in radii)
    total = len(wave) * sum(len(s) for s in plan.values())
    rows: list[CertifiedAccuracy] = []
    with tqdm(total=total, desc="certifying", unit="clip", disable=not progress) as bar:
        for rep, rep_sigmas in plan.items():
            for sigma in rep_sigmas:
                cfg = SmoothingConfig(
                    sigma=float(sigma), representation=rep, n=n, n0=n0, alpha=alpha, batch_size=batch_size
                )
                bar.set_postfix(representation=rep, sigma=f"{sigma:g}")
                certs = _certify_clips(model, wave, cfg, clip_generators(len(wave), seed, model.device), bar)
                right = np.array(
                    [isinstance(c, Certified) and c.label == t for c, t in zip(certs, labels, strict=True)]
                )
                radius = np.array([c.radius if isinstance(c, Certified) else -np.inf for c in certs])
                rows.append(
                    CertifiedAccuracy(
                        representation=rep,
                        sigma=float(sigma),
                        n=n,
                        n0=n0,
                        alpha=alpha,
                        radii=radii_t,
                        certified_accuracy=tuple(float(np.mean(right & (radius >= r))) for r in radii_t),
                        clean_accuracy=float(np.mean(right)),
                        abstain_rate=float(np.mean([isinstance(c, Abstain) for c in certs])),
                        max_radius=max_certifiable_radius(float(sigma), n, alpha),
                        certificates=tuple(certs),
                    )
                )
    return rows


@torch.no_grad()
def certified_detection(
    model: SmoothableRecognizer,
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | Sequence[int] | None,
    *,
    sigma: float,
    n: int = 1000,
    n0: int = 64,
    alpha: float = 0.001,
    representation: str = "waveform",
    raw_labels: np.ndarray | Sequence[int] | None = None,
    seed: int = 0,
    batch_size: int = 512,
    progress: bool = True,
) -> CertifiedDetection:
    """Certified disagreement detection: flag a window unless ``g`` certifies its raw label.

    The rule: at the received window ``x'``, run CERTIFY for the smoothed classifier ``g``; flag
    when ``g`` abstains or its certified label ``c`` differs from the raw label ``f(x')``.

    What a pass guarantees, exactly. The certificate is about ``g`` at ``x'``: ``g(x' + e) = c``
    for every ``||e||_2 < R(x')``. Write ``x' = x + delta`` with ``x`` the clean window. If the
    window passes, ``f(x') = c`` and, when ``||delta||_2 < R(x')``, also ``g(x) = c``. So an
    attacker who wants the raw label to become some ``c != g(x)`` *without being flagged* must use
    ``||delta||_2 >= R(x')``, the radius reported at the window it submits: any unflagged
    window's raw label equals what ``g`` says on every input within ``R`` of it, the clean one
    included when it is that close. ``snr_db`` restates ``R`` as an SNR of the window
    (:func:`~avsentry.pipelines.smoothing.guaranteed_snr_db`; ``20 * log10(||x'||_2 / R)`` in the
    ``waveform`` representation).
    What it does not say:

    - It is relative to ``g(x)``, not to the true label: if ``g`` is wrong on the clean window, a
      perturbation that moves ``f`` to ``g``'s wrong label passes.
    - ``R`` is measured at the attacked point, not fixed in advance around ``x``; it is bounded by
      :func:`max_certifiable_radius`, and perturbations larger than ``R`` that move ``g`` and
      ``f`` together are not excluded.
    - Each certificate holds with probability at least ``1 - alpha`` over the Monte Carlo noise,
      per window (over many windows, about ``alpha`` of them may be wrongly certified), and only
      for noise the attacker does not know: a fixed, public seed lets an adaptive attacker search
      for ``x'`` where this particular draw over-estimates ``p_A``.
    - With ``representation`` other than ``waveform`` or ``waveform_rms``, ``R`` is in that
      representation's units and bounds nothing about waveform perturbations (``snr_db`` is then
      ``None``).
    - On clean windows where ``f`` and ``g`` disagree (or ``g`` abstains) the rule flags: that is
      its false-positive cost, ``flag_rate`` on clean input.

    Args:
        model: Smoothable recognizer; noise is drawn and the model runs on ``model.device``.
        x: ``(clips, window_samples)`` float32 received windows in ``[-1, 1]``.
        y: ``(clips,)`` true class indices for the accuracy figures, or ``None``.
        sigma: Noise standard deviation, in the units of ``representation`` (waveform: sample
            values on the ``[-1, 1]`` scale).
        n: Estimation samples per window.
        n0: Selection samples per window.
        alpha: Failure probability of each certificate.
        representation: Where to add the noise; ``waveform`` for a waveform-domain guarantee.
        raw_labels: ``(clips,)`` raw labels to check against ``g`` (e.g. another backend's, or a
            recognizer behind a transform); by default ``model``'s top-1 on ``x``.
        seed: Seed of the per-window generators (window ``i`` uses ``(seed, i)``).
        batch_size: Noisy copies per forward pass.
        progress: Show a tqdm bar.

    Returns:
        The per-window outcomes and their summary.
    """
    wave = _as_waves(model, x)
    if raw_labels is None:
        chunks = [model.predict(wave[s : s + 256].cpu().numpy()) for s in range(0, len(wave), 256)]
        raw = np.concatenate([np.argmax(p, axis=1) for p in chunks] or [np.zeros(0)]).astype(np.int64)
    else:
        raw = np.asarray(raw_labels, dtype=np.int64)
    if raw.shape != (len(wave),):
        raise ValueError(f"raw_labels must have one label per clip: {raw.shape} for {len(wave)} clips")
    labels = None if y is None else np.asarray(y, dtype=np.int64)
    if labels is not None and labels.shape != (len(wave),):
        raise ValueError(f"y must have one label per clip: {labels.shape} for {len(wave)} clips")
    cfg = SmoothingConfig(
        sigma=float(sigma), representation=representation, n=n, n0=n0, alpha=alpha, batch_size=batch_size
    )
    desc = f"certifying (sigma={sigma:g})"
    with tqdm(total=len(wave), desc=desc, unit="clip", disable=not progress) as bar:
        certs = _certify_clips(model, wave, cfg, clip_generators(len(wave), seed, model.device), bar)
    norms = torch.linalg.vector_norm(wave, dim=1).cpu().numpy().astype(np.float64)
    windows: list[WindowCertificate] = []
    for cert, r, norm_x in zip(certs, raw, norms, strict=True):
        if isinstance(cert, Certified):
            snr = guaranteed_snr_db(norm_x, cert.radius, representation, wave.shape[1])
            windows.append(
                WindowCertificate(
                    raw_label=int(r),
                    certificate=cert,
                    radius=cert.radius,
                    snr_db=snr,
                    flagged=cert.label != int(r),
                )
            )
        else:
            windows.append(
                WindowCertificate(raw_label=int(r), certificate=cert, radius=None, snr_db=None, flagged=True)
            )
    passed = [w for w in windows if not w.flagged]
    radii = [w.radius for w in passed if w.radius is not None]
    snrs = [w.snr_db for w in passed if w.snr_db is not None]
    count = max(1, len(windows))
    return CertifiedDetection(
        representation=representation,
        sigma=float(sigma),
        n=n,
        n0=n0,
        alpha=alpha,
        windows=tuple(windows),
        flag_rate=sum(w.flagged for w in windows) / count,
        abstain_rate=sum(isinstance(w.certificate, Abstain) for w in windows) / count,
        median_radius=float(np.median(radii)) if radii else None,
        median_snr_db=float(np.median(snrs)) if snrs else None,
        smoothed_accuracy=None if labels is None else _certified_right(certs, labels) / count,
        raw_accuracy=None if labels is None else int(np.sum(raw == labels)) / count,
        max_radius=max_certifiable_radius(float(sigma), n, alpha),
    )


def _certified_right(certs: Sequence[Certified | Abstain], labels: np.ndarray) -> int:
    """How many certificates name the true label (abstentions are wrong)."""
    return sum(isinstance(c, Certified) and c.label == int(t) for c, t in zip(certs, labels, strict=True))
