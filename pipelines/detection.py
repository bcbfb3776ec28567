"""Disagreement detection: is this window likely adversarial?

Feature squeezing (Xu, Evans & Qi, NDSS 2018) applied to audio (as in Yang et al., ICLR 2019,
"Characterizing audio adversarial examples using temporal dependency" and Rajaratnam et al.,
2018, for compression defences): adversarial perturbations are brittle, so the recognizer's
softmax on the raw window and on defended copies (codec round trips, quantization, randomized
smoothing) diverge far more than on clean input. The score is the largest L1 distance between
the raw softmax and any defended softmax; the flag is ``score > threshold``, with the threshold
calibrated on held-out clean audio to a target false-positive rate (:func:`calibrate_threshold`).
Label disagreements and a smoothed abstention are reported as reasons.

Randomized smoothing per window uses one draw of ``n`` noisy copies: PREDICT on all ``n`` votes,
and CERTIFY with the first ``n0`` copies selecting ``c_A`` and the other ``n - n0`` bounding it.
Each window's noise comes from its own generator seeded by ``(seed, key)``, so a window's verdict
does not depend on what else is in the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import beta

from avsentry.pipelines.recognizers.base import SmoothableRecognizer
from avsentry.pipelines.smoothing import (
    SmoothingConfig,
    certify_from_counts,
    predict_from_counts,
    sample_counts,
)
from avsentry.pipelines.transforms import TRANSFORM_NAMES, make_transform, parse_transform_spec
from avsentry.pipelines.transforms.base import Transform
from avsentry.pipelines.types import Abstain, Certified, Prediction

DEFAULT_TRANSFORMS = ("mp3", "opus", "aac", "noise")


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectorConfig:
    """What the detector runs per window.

    Attributes:
        transforms: Transform specs (``"mp3"``, ``"opus:bitrate_kbps=12"``...).
        smoothing: Randomized-smoothing parameters, or ``None`` to skip smoothing.
        threshold: Flag when the score exceeds this (from calibration); ``None`` never flags.
        seed: Base seed for transform and smoothing randomness.
    """

    transforms: tuple[str, ...] = DEFAULT_TRANSFORMS
    smoothing: SmoothingConfig | None = field(default_factory=lambda: SmoothingConfig(n=32, n0=8))
    threshold: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for spec in self.transforms:
            name, _ = parse_transform_spec(spec)  # raises ValueError on a malformed spec
            if name not in TRANSFORM_NAMES:
                raise ValueError(f"unknown transform {name!r}; known: {', '.join(TRANSFORM_NAMES)}")
        if self.smoothing is not None and self.smoothing.n0 >= self.smoothing.n:
            raise ValueError(
                f"smoothing n0 ({self.smoothing.n0}) must be < n ({self.smoothing.n}): the first n0 "
                "copies select the class and the rest certify it"
            )
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ValueError("threshold must be finite")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    @classmethod
    def from_card(cls, detector: dict | None, **overrides: Any) -> tuple[DetectorConfig, bool]:
        """The calibrated configuration stored in a model card, with overrides applied.

        Args:
            detector: The card's ``detector`` section (``None`` if the model is uncalibrated).
            overrides: Any of ``transforms`` (sequence of specs), ``n``, ``n0``, ``sigma``,
                ``representation``, ``alpha``, ``smoothing`` (``False`` disables it),
                ``threshold``, ``seed``; ``None`` values are ignored.

        Returns:
            The config, and whether the threshold in force was calibrated for exactly it.
        """
        detector = detector or {}
        fp = detector.get("config") or {}
        o = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(o) - {
            "transforms",
            "n",
            "n0",
            "sigma",
            "representation",
            "alpha",
            "smoothing",
            "threshold",
            "seed",
        }
        if unknown:
            raise TypeError(f"unknown overrides: {sorted(unknown)}")
        stored = fp.get("smoothing", {}) if fp else {}  # None: calibrated without smoothing
        smoothing: SmoothingConfig | None = None
        if o.get("smoothing", stored is not None):
            base = SmoothingConfig(**stored) if stored else SmoothingConfig(n=32, n0=8)
            smoothing = SmoothingConfig(
                sigma=float(o.get("sigma", base.sigma)),  # type: ignore[arg-type]
                representation=str(o.get("representation", base.representation)),
                n=int(o.get("n", base.n)),  # type: ignore[call-overload]
                n0=int(o.get("n0", base.n0)),  # type: ignore[call-overload]
                alpha=float(o.get("alpha", base.alpha)),  # type: ignore[arg-type]
            )
        transforms = tuple(o.get("transforms", fp.get("transforms", DEFAULT_TRANSFORMS)))  # type: ignore[call-overload]
        cfg = cls(transforms=transforms, smoothing=smoothing, seed=int(o.get("seed", 0)))  # type: ignore[call-overload]
        threshold = o.get("threshold", detector.get("threshold"))
        calibrated = "threshold" not in o and bool(fp) and cfg.fingerprint() == fp
        cfg = cls(
            transforms=cfg.transforms,
            smoothing=cfg.smoothing,
            seed=cfg.seed,
            threshold=None if threshold is None else float(threshold),
        )  # type: ignore[arg-type]
        return cfg, calibrated

    def fingerprint(self) -> dict:
        """The fields a calibrated threshold depends on (stored in the model card)."""
        s = self.smoothing
        return {
            "transforms": list(self.transforms),
            "smoothing": None
            if s is None
            else {
                "sigma": s.sigma,
                "representation": s.representation,
                "n": s.n,
                "n0": s.n0,
                "alpha": s.alpha,
            },
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class DefendedOutput:
    """The recognizer's answer on one defended copy of a window."""

    name: str
    label: int
    confidence: float
    distance: float


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowVerdict:
    """Everything the detector concluded about one window.

    Attributes:
        raw_label / raw_confidence: Top-1 on the untouched window.
        defended: One entry per transform, plus ``"smoothing"`` (mean noisy softmax).
        smoothed: PREDICT outcome over all ``n`` votes (``None`` without smoothing).
        certificate: CERTIFY outcome (``Certified`` with radius, or ``Abstain``).
        score: Largest L1 distance between raw and defended softmax, in [0, 2].
        flagged: ``score > threshold``.
        reasons: Human-readable signals (score over threshold, label changes, abstention).
    """

    raw_label: int
    raw_confidence: float
    raw_probs: np.ndarray = field(repr=False)
    defended: tuple[DefendedOutput, ...]
    smoothed: Prediction | Abstain | None
    certificate: Certified | Abstain | None
    score: float
    flagged: bool
    reasons: tuple[str, ...]


class Detector:
    """Runs raw, transformed and smoothed predictions on batches of windows.

    Args:
        recognizer: The model under guard.
        config: Transforms, smoothing and threshold.
    """

    def __init__(self, recognizer: SmoothableRecognizer, config: DetectorConfig | None = None) -> None:
        self.recognizer = recognizer
        self.config = config or DetectorConfig()
        rate = recognizer.spec.sample_rate_hz
        self.transforms: list[Transform] = []
        for spec in self.config.transforms:
            name, params = parse_transform_spec(spec)
            self.transforms.append(make_transform(name, sample_rate_hz=rate, **params))
        s = self.config.smoothing
        if s is not None and s.representation not in recognizer.representations:
            raise ValueError(
                f"smoothing representation {s.representation!r} is not offered by model "
                f"{recognizer.spec.name!r} (offers {recognizer.representations})"
            )

    def _generators(self, keys: Sequence[int]) -> list[torch.Generator]:
        dev = self.recognizer.device
        return [
            torch.Generator(device=dev).manual_seed(hash((self.config.seed, int(k))) & 0x7FFF_FFFF_FFFF)
            for k in keys
        ]

    def analyze(
        self,
        windows: np.ndarray,
        keys: Sequence[int] | None = None,
        *,
        on_raw: Callable[[np.ndarray], None] | None = None,
    ) -> list[WindowVerdict]:
        """Verdicts for ``(batch, window_samples)`` float32 windows.

        Args:
            windows: Mono windows at the model's rate, in its input bounds. Not modified.
            keys: Per-window integers (e.g. start sample) that seed its randomness;
                defaults to ``0..batch-1``.
            on_raw: Called with the raw probabilities ``(batch, classes)`` as soon as they are
                known, before the defences run (for interim results).
        """
        x = np.asarray(windows, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.recognizer.spec.window_samples:
            raise ValueError(
                f"expected (batch, {self.recognizer.spec.window_samples}) windows, got {x.shape}"
            )
        if not np.isfinite(x).all():
            raise ValueError("windows contain NaN or Inf")
        keys = list(range(len(x))) if keys is None else list(keys)
        if len(keys) != len(x):
            raise ValueError("keys must have one entry per window")
        if len(x) == 0:
            return []
        raw = self.recognizer.predict(x)
        if on_raw is not None:
            on_raw(raw)
        defended: list[tuple[str, np.ndarray]] = []
        for t in self.transforms:
            defended.append((t.name, self.recognizer.predict(self._transform(t, x, keys))))
        smoothed: list = [None] * len(x)
        certs: list = [None] * len(x)
        s = self.config.smoothing
        if s is not None:
            sel, est, mean_probs = self.smooth(x, keys)
            defended.append(("smoothing", mean_probs))
            smoothed = [predict_from_counts(a + b, s.alpha) for a, b in zip(sel, est, strict=True)]
            certs = [certify_from_counts(a, b, s.alpha, s.sigma) for a, b in zip(sel, est, strict=True)]
        return [self._verdict(i, raw[i], defended, smoothed[i], certs[i]) for i in range(len(x))]

    def _transform(self, t: Transform, x: np.ndarray, keys: Sequence[int]) -> np.ndarray:
        """Apply ``t``; a randomized transform draws each window's randomness from its key."""
        if not getattr(t, "randomized", False):
            return t.apply(x, np.random.default_rng(self.config.seed))
        return np.concatenate(
            [
                t.apply(
                    x[i : i + 1],
                    np.random.default_rng([self.config.seed, int(k) & 0x7FFF_FFFF_FFFF]),
                )
                for i, k in enumerate(keys)
            ]
        )

    @torch.no_grad()
    def smooth(self, x: np.ndarray, keys: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Selection counts ``(batch, C)`` from ``n0`` copies, estimation counts from ``n - n0``,
        and the mean softmax over all ``n`` copies."""
        s = self.config.smoothing
        assert s is not None
        rec = self.recognizer
        z = rec.encode(torch.from_numpy(x).to(rec.device), s.representation)
        gens = self._generators(keys)
        sel, p_sel = sample_counts(rec, z, s.n0, s, gens, return_mean_probs=True)
        est, p_est = sample_counts(rec, z, s.n - s.n0, s, gens, return_mean_probs=True)
        mean = (p_sel * s.n0 + p_est * (s.n - s.n0)) / s.n
        return sel, est, mean.astype(np.float32)

    def _verdict(
        self,
        i: int,
        raw: np.ndarray,
        defended: list[tuple[str, np.ndarray]],
        smoothed: Prediction | Abstain | None,
        cert: Certified | Abstain | None,
    ) -> WindowVerdict:
        labels = self.recognizer.spec.labels
        raw_label = int(np.argmax(raw))
        outs = []
        reasons = []
        for name, probs in defended:
            p = probs[i]
            label = int(np.argmax(p))
            outs.append(
                DefendedOutput(
                    name=name,
                    label=label,
                    confidence=float(p[label]),
                    distance=float(np.abs(p - raw).sum()),
                )
            )
            if label != raw_label:
                reasons.append(f"{name} says {labels[label]}")
        score = max((o.distance for o in outs), default=0.0)
        thr = self.config.threshold
        flagged = thr is not None and score > thr
        if isinstance(smoothed, Abstain):
            reasons.append("smoothing abstained")
        elif isinstance(smoothed, Prediction) and smoothed.label != raw_label:
            reasons.append(f"smoothed vote says {labels[smoothed.label]}")
        if flagged:
            reasons.insert(0, f"score {score:.3f} > threshold {thr:.3f}")
        return WindowVerdict(
            raw_label=raw_label,
            raw_confidence=float(raw[raw_label]),
            raw_probs=raw,
            defended=tuple(outs),
            smoothed=smoothed,
            certificate=cert,
            score=score,
            flagged=flagged,
            reasons=tuple(reasons),
        )


def calibrate_threshold(
    clean_scores: np.ndarray, target_fpr: float, *, confidence: float | None = None
) -> float:
    """Threshold whose false-positive rate on exchangeable clean windows is <= ``target_fpr``.

    The threshold is the k-th smallest of ``m`` clean scores; the false-positive rate it gives on
    new clean windows from the same distribution is then ``1 - Beta(k, m + 1 - k)`` distributed
    over draws of the calibration set.

    - ``confidence=None``: split conformal, ``k = ceil((m + 1)(1 - target))``, so the *expected*
      false-positive rate is <= ``target_fpr`` (any one calibration set may give more).
    - ``confidence=c``: training-conditional split conformal (Vovk, 2012): the smallest ``k`` with
      ``P(FPR > target_fpr) <= 1 - c``, i.e. the rate stays under the target with probability
      ``c`` over calibration sets. Needs ``m > log(1 - c) / log(1 - target)`` scores (299 for
      95 % and 1 %).

    Raises:
        ValueError: too few scores for the target and confidence.
    """
    s = np.sort(np.asarray(clean_scores, dtype=np.float64))
    if not 0 < target_fpr < 1:
        raise ValueError(f"target_fpr must be in (0, 1), got {target_fpr}")
    m = len(s)
    if confidence is None:
        k = math.ceil((m + 1) * (1 - target_fpr))
    else:
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {confidence}")
        ranks = np.arange(1, m + 1)
        # P(coverage < 1 - target) for each rank; it falls as the rank grows
        too_low = beta.cdf(1 - target_fpr, ranks, m + 1 - ranks)
        ok = np.flatnonzero(too_low <= 1 - confidence)
        k = int(ranks[ok[0]]) if ok.size else m + 1
    if k > m:
        how = "" if confidence is None else f" at {confidence:.0%} confidence"
        raise ValueError(f"{m} clean windows are too few for a {target_fpr:.2%} target FPR{how}")
    return float(s[k - 1])


def verdict_to_dict(v: WindowVerdict, labels: Sequence[str]) -> dict:
    """A JSON-ready view of a verdict, labels spelled out."""
    smoothed: dict = {
        "label": None,
        "abstain": v.smoothed is None or isinstance(v.smoothed, Abstain),
    }
    if isinstance(v.smoothed, Prediction):
        smoothed["label"] = labels[v.smoothed.label]
    if v.smoothed is not None:
        smoothed["p_value"] = v.smoothed.p_value
        smoothed["counts"] = {labels[i]: int(c) for i, c in enumerate(v.smoothed.counts) if c}
    if isinstance(v.certificate, Certified):
        smoothed["certified_label"] = labels[v.certificate.label]
        smoothed["radius"] = v.certificate.radius
        smoothed["p_lower"] = v.certificate.p_lower
    else:
        smoothed["certified_label"] = None
        smoothed["radius"] = 0.0
    return {
        "raw": {"label": labels[v.raw_label], "confidence": v.raw_confidence},
        "transforms": [
            {
                "name": o.name,
                "label": labels[o.label],
                "confidence": o.confidence,
                "distance": o.distance,
            }
            for o in v.defended
        ],
        "smoothed": smoothed,
        "score": v.score,
        "flagged": v.flagged,
        "reasons": list(v.reasons),
    }
