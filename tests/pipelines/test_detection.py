"""The disagreement detector on real speech, real codecs and a real white-box attack."""

from __future__ import annotations

import numpy as np
import pytest

from avsentry.pipelines.detection import Detector, DetectorConfig, calibrate_threshold, verdict_to_dict
from avsentry.pipelines.recognizers import read_manifest
from avsentry.pipelines.smoothing import SmoothingConfig
from avsentry.tools import synth
from avsentry.tools.attacks import PGD


@pytest.fixture(scope="module")
def detector(model_torch) -> Detector:
    cfg, calibrated = DetectorConfig.from_card(read_manifest("digits").extra["detector"])
    assert calibrated
    return Detector(model_torch, cfg)


def test_calibrated_threshold_bounds_fpr_on_fresh_scores() -> None:
    gen = np.random.default_rng(0)
    cal, fresh = gen.exponential(size=2000), gen.exponential(size=200_000)
    thr = calibrate_threshold(cal, 0.01)
    assert np.mean(fresh > thr) <= 0.013  # conformal guarantee + sampling slack
    assert np.mean(fresh > thr) >= 0.005  # and not needlessly conservative
    with pytest.raises(ValueError, match="too few"):
        calibrate_threshold(cal[:50], 0.01)


def test_confident_threshold_holds_the_target_on_most_calibration_sets() -> None:
    """Exponential clean scores, so a threshold t has FPR exp(-t) exactly. Plain split conformal
    bounds only the expected FPR: about half of all calibration sets overshoot the target. At 95 %
    confidence at most about 5 % may."""
    gen = np.random.default_rng(1)
    sets = gen.exponential(size=(400, 1100))
    plain = np.array([np.exp(-calibrate_threshold(s, 0.01)) for s in sets])
    sure = np.array([np.exp(-calibrate_threshold(s, 0.01, confidence=0.95)) for s in sets])
    assert 0.3 < np.mean(plain > 0.01) < 0.7
    assert np.mean(sure > 0.01) <= 0.08
    assert np.mean(sure) >= 0.004  # not needlessly strict: about 0.55 % on average
    # 0.99^m <= 0.05 needs m >= 299
    with pytest.raises(ValueError, match="95% confidence"):
        calibrate_threshold(sets[0, :298], 0.01, confidence=0.95)
    assert calibrate_threshold(sets[0, :299], 0.01, confidence=0.95) == sets[0, :299].max()


def test_clean_heldout_windows_are_rarely_flagged(detector, heldout_speech) -> None:
    verdicts = detector.analyze(heldout_speech["x"])
    flagged = sum(v.flagged for v in verdicts)
    # 50 clean windows at a 1 % target: P(>= 4 flags) < 0.2 % under the target rate.
    assert flagged <= 3, [
        (synth.LABELS[y], v.score) for v, y in zip(verdicts, heldout_speech["y"], strict=True) if v.flagged
    ]
    raw_acc = np.mean([v.raw_label == y for v, y in zip(verdicts, heldout_speech["y"], strict=True)])
    assert raw_acc >= 0.9


def test_pgd_examples_fool_the_model_and_are_flagged(detector, model_torch, heldout_speech) -> None:
    """Untargeted L-inf PGD 40 dB below each window's peak: on 193 held-out windows the shipped
    detector flagged 74 % of them at its calibrated 1 % FPR threshold (the noise-flooding path
    undoes them; the codecs and log-mel smoothing mostly do not)."""
    y = heldout_speech["y"]
    pick = np.flatnonzero(y < 10)[::2][:20]
    x = heldout_speech["x"][pick]
    peak = np.abs(x).max(axis=1, keepdims=True)
    res = PGD(eps=0.5 * 10 ** (-40 / 20), steps=40).run(model_torch, x / peak * 0.5, y[pick], seed=0)
    assert res.success.mean() >= 0.9
    verdicts = detector.analyze(res.adversarial / 0.5 * peak)
    flagged = np.array([v.flagged for v in verdicts])
    assert flagged[res.success].mean() >= 0.55
    for v in verdicts:
        if v.flagged:
            assert v.reasons[0].startswith("score")


def test_verdict_does_not_depend_on_batch_company(detector, heldout_speech) -> None:
    x = heldout_speech["x"][:3]
    together = detector.analyze(x, keys=[10, 20, 30])
    alone = detector.analyze(x[2:], keys=[30])
    assert together[2].score == pytest.approx(alone[0].score, abs=1e-6)
    np.testing.assert_array_equal(together[2].smoothed.counts, alone[0].smoothed.counts)
    again = detector.analyze(x, keys=[10, 20, 30])
    assert [v.score for v in again] == [v.score for v in together]


def test_verdict_json_view_has_every_field(detector, heldout_speech) -> None:
    (v,) = detector.analyze(heldout_speech["x"][:1])
    d = verdict_to_dict(v, synth.LABELS)
    assert set(d) == {"raw", "transforms", "smoothed", "score", "flagged", "reasons"}
    assert [t["name"] for t in d["transforms"]] == [*detector.config.transforms, "smoothing"]
    assert {"label", "abstain", "radius", "p_value", "counts"} <= set(d["smoothed"])
    assert sum(d["smoothed"]["counts"].values()) == detector.config.smoothing.n


def test_bad_windows_are_rejected(detector) -> None:
    with pytest.raises(ValueError, match="NaN or Inf"):
        detector.analyze(np.full((1, 16000), np.nan, np.float32))
    with pytest.raises(ValueError, match="windows"):
        detector.analyze(np.zeros((1, 8000), np.float32))
    assert detector.analyze(np.zeros((0, 16000), np.float32)) == []


def test_config_from_card_tracks_calibration() -> None:
    card = read_manifest("digits").extra["detector"]
    _, same = DetectorConfig.from_card(card, seed=3)
    assert same
    cfg, other = DetectorConfig.from_card(card, transforms=["mp3"])
    assert not other and cfg.transforms == ("mp3",) and cfg.threshold == card["threshold"]
    cfg, _ = DetectorConfig.from_card(card, smoothing=False)
    assert cfg.smoothing is None
    with pytest.raises(ValueError, match="n0"):
        DetectorConfig(smoothing=SmoothingConfig(n=8, n0=8))
    with pytest.raises(ValueError):
        DetectorConfig(transforms=("no-such-transform:x=1",))
