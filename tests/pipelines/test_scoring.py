"""Scoring strategies: the largest distance, and the conformal combination of the defences."""

from __future__ import annotations

import numpy as np
import pytest

from avsentry.pipelines.detection import DetectorConfig
from avsentry.pipelines.scoring import ConformalCombination, MaxDistance, scoring_from_card

NAMES = ("mp3", "opus", "noise")


@pytest.fixture(scope="module")
def fitted() -> ConformalCombination:
    rng = np.random.default_rng(0)
    ref = {n: np.abs(rng.normal(0, s, 500)) for n, s in zip(NAMES, (0.1, 0.1, 0.5), strict=True)}
    return ConformalCombination.fit(ref)


def test_max_distance_is_the_largest() -> None:
    assert MaxDistance().score({"a": 0.2, "b": 1.5}) == 1.5
    assert MaxDistance().score({}) == 0.0


def test_conformal_score_grows_with_each_distance_and_is_bounded(fitted) -> None:
    base = {"mp3": 0.05, "opus": 0.05, "noise": 0.2}
    s0 = fitted.score(base)
    for n in NAMES:
        assert fitted.score({**base, n: base[n] * 4}) >= s0
    # beyond every reference window: the smallest p-value, 1 / (m + 1)
    assert fitted.score({n: 10.0 for n in NAMES}) == pytest.approx(np.log10(501))
    assert fitted.score({n: 0.0 for n in NAMES}) == pytest.approx(0.0)


def test_joint_disagreement_is_caught_when_no_single_distance_is_extreme(fitted) -> None:
    """Every codec at its clean 97th percentile: no one distance is rare, all together are."""
    ref = fitted._sorted
    q = {n: float(np.quantile(ref[n], 0.97)) for n in NAMES}
    p_joint = 10 ** -fitted.score(q)
    assert p_joint < 0.01
    p_max_only = (1 + np.sum(ref["max"] >= max(q.values()))) / (len(ref["max"]) + 1)
    assert p_max_only > 0.02


def test_card_round_trip_gives_the_same_scores(fitted) -> None:
    again = scoring_from_card(fitted.to_dict())
    rng = np.random.default_rng(1)
    for _ in range(20):
        d = {n: float(v) for n, v in zip(NAMES, np.abs(rng.normal(0, 0.3, 3)), strict=True)}
        assert again.score(d) == pytest.approx(fitted.score(d), abs=1e-4)


def test_from_card_keeps_the_scoring_and_its_calibration(fitted) -> None:
    cfg = DetectorConfig(transforms=("mp3", "opus", "noise"), smoothing=None, scoring=fitted)
    card = {"config": cfg.fingerprint(), "threshold": 2.0, "scoring": fitted.to_dict()}
    got, calibrated = DetectorConfig.from_card(card)
    assert calibrated and got.scoring.kind == "conformal" and got.threshold == 2.0
    # another defence: same scoring and threshold, but reported uncalibrated
    other, calibrated = DetectorConfig.from_card(card, transforms=["mp3"])
    assert not calibrated and other.scoring.kind == "conformal"
    # max scoring asked for: the card's threshold is on the conformal scale, so none is kept
    plain, calibrated = DetectorConfig.from_card(card, scoring="max")
    assert not calibrated and plain.threshold is None and plain.scoring.kind == "max"


def test_a_reference_too_small_is_refused() -> None:
    with pytest.raises(ValueError, match=">= 20"):
        ConformalCombination.fit({"mp3": np.zeros(5), "opus": np.zeros(5)})
