"""Detector calibration (``avsentry calibrate``): group-conditional thresholds."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from avsentry.pipelines.detection import calibrate_threshold
from avsentry.tools.calibrate import calibrate_threshold_for, choose_p_min


def test_groups_too_small_for_the_confidence_fall_back_to_plain_conformal() -> None:
    gen = np.random.default_rng(2)
    speech, background = gen.exponential(size=1000), gen.exponential(size=150) * 0.1
    scores = np.concatenate([speech, background])
    group = np.array(["digits"] * 1000 + ["background"] * 150)
    thr, per_group = calibrate_threshold_for(scores, np.ones(len(group), bool), 0.01, group, confidence=0.95)
    assert per_group["digits"]["guarantee"] == "P(FPR > target) <= 5%"
    assert per_group["background"]["guarantee"] == "expected FPR <= target"
    assert per_group["background"]["threshold"] == calibrate_threshold(background, 0.01)
    assert thr == per_group["digits"]["threshold"] == calibrate_threshold(speech, 0.01, confidence=0.95)
    # a group too small even for the plain rule (a --synth-scale corpus) gets its largest score
    thr, per_group = calibrate_threshold_for(
        scores[:1040], np.ones(1040, bool), 0.01, group[:1040], confidence=0.95
    )
    assert per_group["background"]["threshold"] == background[:40].max()
    assert per_group["background"]["guarantee"].startswith("expected FPR <= 1/(m+1) = 2.4%")


def test_certified_p_min_is_the_largest_whose_rule_fits_half_the_budget_in_every_group() -> None:
    gen = np.random.default_rng(3)
    # digits: 2 % of windows have a fragile raw label (bound 0.15-0.3), the rest are solid
    p = np.concatenate([gen.uniform(0.9, 1.0, 980), gen.uniform(0.15, 0.3, 20), gen.uniform(0.6, 1.0, 500)])
    group = np.array(["digits"] * 1000 + ["background"] * 500)
    verdicts = [SimpleNamespace(raw_p_lower=float(v)) for v in p]
    cal = np.ones(len(p), bool)
    p_min, flags = choose_p_min(verdicts, cal, group, 0.5, 0.005)
    assert p_min == 0.1 and not flags.any()  # 0.2 would flag about 1 % of digits
    p_min, flags = choose_p_min(verdicts, cal, group, 0.5, 0.05)
    assert p_min == 0.5 and flags.sum() == 20
    # a group whose raw labels vanish under noise cannot be calibrated: the error names the rates
    verdicts[-1] = SimpleNamespace(raw_p_lower=None)
    verdicts[-2] = SimpleNamespace(raw_p_lower=0.0)
    with pytest.raises(ValueError, match="background 0.40%"):
        choose_p_min(verdicts, cal, group, 0.5, 0.002)
