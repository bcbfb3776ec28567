"""How a window's raw and defended softmax outputs become one detector score (the scoring seam).

- :class:`MaxDistance` (feature squeezing, Xu et al., NDSS 2018): the largest L1 distance between
  the raw softmax and any defended one, in [0, 2]. One squeezer that moves a lot on clean speech
  (the noise flood) sets the threshold for all, and the others' signal is lost under it.
- :class:`ConformalCombination`: each defended output's distance, and the largest distance, are
  turned into conformal p-values against clean reference windows (the fraction of reference
  windows at least as far: ``(1 + #{ref >= d}) / (m + 1)``, Vovk et al.);
  the per-output p-values are combined by Fisher's method (``-2 sum log p``, itself turned into a
  p-value against the reference windows' own statistics), and the score is
  ``-log10(min(p_max, p_fisher))``. A window is suspicious when the largest distance is rare for
  clean speech *or* when several defences disagree more than they jointly do on clean speech,
  even if none alone is extreme: an adaptive attacker that keeps each distance just under the
  old max threshold still leaves the codecs jointly far from where clean speech puts them. The
  threshold is calibrated on other clean windows than the reference (``tools/calibrate.py``), so
  its false-positive guarantee is the usual split-conformal one whatever the dependence between
  the defences.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCORINGS = ("max", "conformal")


@dataclass(frozen=True, slots=True)
class MaxDistance:
    """Score = largest distance (0 when there is no defended output)."""

    kind: str = "max"

    def score(self, distances: Mapping[str, float]) -> float:
        return max(distances.values(), default=0.0)

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": self.kind}


@dataclass(frozen=True, slots=True, kw_only=True)
class ConformalCombination:
    """Score = ``-log10`` of the smaller of two conformal p-values (see module doc).

    Attributes:
        reference: Per defended output name, the sorted distances of the clean reference windows;
            plus ``"max"`` (their largest distance) and ``"fisher"`` (their Fisher statistic
            against the per-output references, leave-in).
    """

    reference: Mapping[str, np.ndarray]
    kind: str = "conformal"
    _sorted: dict[str, np.ndarray] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        missing = {"max", "fisher"} - set(self.reference)
        if missing or len(self.reference) < 3:
            raise ValueError(
                f"conformal reference needs per-output distances, 'max' and 'fisher'; lacks {missing}"
            )
        arrays = {}
        for name, values in self.reference.items():
            a = np.sort(np.asarray(values, dtype=np.float64))
            if a.ndim != 1 or len(a) < 20 or not np.isfinite(a).all():
                raise ValueError(f"conformal reference {name!r}: need >= 20 finite values")
            arrays[name] = a
        object.__setattr__(self, "_sorted", arrays)

    @classmethod
    def fit(cls, distances: Mapping[str, np.ndarray]) -> ConformalCombination:
        """A reference from clean windows' distances ``{name: (m,)}``."""
        d = {k: np.asarray(v, np.float64) for k, v in distances.items()}
        partial = {k: np.sort(v) for k, v in d.items()}
        fisher = np.array(
            [
                _fisher({k: float(v[i]) for k, v in d.items()}, partial)
                for i in range(len(next(iter(d.values()))))
            ]
        )
        return cls(reference={**d, "max": np.max(np.stack(list(d.values())), axis=0), "fisher": fisher})

    @property
    def outputs(self) -> tuple[str, ...]:
        """The defended outputs the reference was made with."""
        return tuple(k for k in self._sorted if k not in ("max", "fisher"))

    def score(self, distances: Mapping[str, float]) -> float:
        known = {k: v for k, v in distances.items() if k in self._sorted and k not in ("max", "fisher")}
        if not distances:
            return 0.0
        p_max = _p_value(self._sorted["max"], max(distances.values()))
        p_fisher = _p_value(self._sorted["fisher"], _fisher(known, self._sorted)) if known else 1.0
        return float(-math.log10(min(p_max, p_fisher)))

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": self.kind, "outputs": list(self.outputs), "m": len(self._sorted["max"])}

    def to_dict(self) -> dict[str, Any]:
        """The card form: ``{"kind": "conformal", "reference": {name: "v1 v2 ..."}}``, each
        output's sorted reference values as one string of 5-digit numbers (a readable card)."""
        return {
            "kind": self.kind,
            "reference": {k: " ".join(f"{v:.5g}" for v in a) for k, a in self._sorted.items()},
        }


def _p_value(reference: np.ndarray, value: float) -> float:
    """``(1 + #{reference >= value}) / (m + 1)`` for sorted ``reference``; NaN counts as extreme."""
    if not math.isfinite(value):
        return 1.0 / (len(reference) + 1) if value > 0 or math.isnan(value) else 1.0
    above = len(reference) - int(np.searchsorted(reference, value, side="left"))
    return (1 + above) / (len(reference) + 1)


def _fisher(distances: Mapping[str, float], reference: Mapping[str, np.ndarray]) -> float:
    return float(-2 * sum(math.log(_p_value(reference[k], v)) for k, v in distances.items()))


def scoring_from_card(section: Mapping[str, Any] | None) -> MaxDistance | ConformalCombination:
    """The scoring a card's ``detector.scoring`` describes (absent: :class:`MaxDistance`)."""
    if not section or section.get("kind", "max") == "max":
        return MaxDistance()
    if section.get("kind") != "conformal":
        raise ValueError(f"unknown scoring kind {section.get('kind')!r}; known: {', '.join(SCORINGS)}")
    return ConformalCombination(
        reference={
            k: np.array(v.split(), dtype=np.float64)
            if isinstance(v, str)
            else np.asarray(v, dtype=np.float64)
            for k, v in section["reference"].items()
        }
    )
