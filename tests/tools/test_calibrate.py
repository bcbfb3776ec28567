"""Detector calibration (``avsentry calibrate``): group-conditional thresholds."""

from __future__ import annotations

import numpy as np

from avsentry.pipelines.detection import calibrate_threshold
from avsentry.tools.calibrate import calibrate_threshold_for


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
