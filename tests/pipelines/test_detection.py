"""The disagreement detector on real speech, real codecs and a real white-box attack."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from scipy.stats import norm

from avsentry.pipelines.detection import (
    Detector,
    DetectorConfig,
    StreamState,
    calibrate_threshold,
)
from avsentry.pipelines.recognizers import read_manifest
from avsentry.pipelines.smoothing import SmoothingConfig, guaranteed_snr_db
from avsentry.pipelines.types import AudioInput, ModelSpec
from avsentry.pipelines.windowing import frame
from avsentry.tools import synth
from avsentry.tools.attacks import PGD, Budget


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


def test_clean_real_speech_is_rarely_flagged(detector, heldout_real_speech) -> None:
    """Real people the model never heard (other languages, telephone recordings): 40 windows at a
    1 % target rate, P(>= 4 flags) < 1 % if the rate holds."""
    verdicts = detector.analyze(heldout_real_speech["x"])
    flagged = [(v.raw_label, round(v.score, 3)) for v in verdicts if v.flagged]
    assert len(flagged) <= 3, flagged


def test_pgd_examples_fool_the_model_and_are_flagged(detector, model_torch, heldout_speech) -> None:
    """Untargeted L-inf PGD 40 dB below each window's peak: on 193 held-out windows the shipped
    detector flagged 74 % of them at its calibrated 1 % FPR threshold (the noise-flooding path
    undoes them; the codecs and log-mel smoothing mostly do not)."""
    y = heldout_speech["y"]
    pick = np.flatnonzero(y < 10)[::2][:20]
    x = heldout_speech["x"][pick]
    peak = np.abs(x).max(axis=1, keepdims=True)
    res = PGD(budget=Budget(norm="linf", eps=0.5 * 10 ** (-40 / 20)), steps=40).run(
        model_torch, x / peak * 0.5, y[pick], seed=0
    )
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
    assert not other and cfg.transforms == ("mp3:bitrate_kbps=32,quality=7,segments=2",)
    assert cfg.threshold == card["threshold"]
    cfg, _ = DetectorConfig.from_card(card, smoothing=False)
    assert cfg.smoothing is None
    with pytest.raises(ValueError, match="n0"):
        DetectorConfig(smoothing=SmoothingConfig(n=8, n0=8))
    with pytest.raises(ValueError):
        DetectorConfig(transforms=("no-such-transform:x=1",))


def test_equal_defences_have_equal_configs() -> None:
    """Specs are stored in canonical form, so a config keyed cache sees one defence once."""
    a = DetectorConfig(transforms=("mp3", " opus", "aac:bitrate_kbps=32 ", "noise"))
    b = DetectorConfig(
        transforms=["mp3:segments=2,bitrate_kbps=32", "opus:bitrate_kbps=16", "aac", "noise:snr_db=10"]
    )
    assert a == b and hash(a) == hash(b) and repr(a) == repr(b)
    assert a.fingerprint()["transforms"] == list(a.transforms)
    assert DetectorConfig(transforms=("mp3:bitrate_kbps=24",)) != DetectorConfig(transforms=("mp3",))
    with pytest.raises(ValueError, match="sample_rate_hz is not a transform parameter"):
        DetectorConfig(transforms=("mp3:sample_rate_hz=8000",))
    with pytest.raises(ValueError, match="sequence of specs"):
        DetectorConfig(transforms="mp3")  # type: ignore[arg-type]


def test_only_a_card_with_the_exact_canonical_specs_counts_as_calibrated() -> None:
    """A card calibrated with bare names ("mp3") or partial specs was calibrated with whatever the
    defaults were then; the defaults may have changed since (mp3's LAME quality did), so such a
    card does not vouch for today's defence. Calibration writes canonical specs."""
    card = read_manifest("digits").extra["detector"]
    assert DetectorConfig.from_card(card)[1]
    assert card["config"]["transforms"] == list(DetectorConfig.from_card(card)[0].transforms)

    def with_specs(*specs: str) -> dict:
        return {**card, "config": {**card["config"], "transforms": list(specs)}}

    default = ["mp3", "opus", "aac", "noise"]
    assert not DetectorConfig.from_card(with_specs(*default))[1]
    assert not DetectorConfig.from_card(with_specs("mp3:bitrate_kbps=32,segments=2", "opus", "aac", "noise"))[
        1
    ]
    other = with_specs("mp3:bitrate_kbps=64", "opus", "aac", "noise")
    assert not DetectorConfig.from_card(other, transforms=default)[1]
    assert not DetectorConfig.from_card(with_specs("flac"), transforms=default)[1]


@pytest.fixture(scope="module")
def stream_windows(heldout_speech) -> tuple[np.ndarray, np.ndarray]:
    """Eight windows at a 0.5 s hop over 4.5 s of held-out digits and pauses, and their starts."""
    pause = np.zeros(2000, np.float32)
    parts = [p for k in (4, 12, 28, 36, 8, 20, 32) for p in (heldout_speech["clips"][k], pause)]
    audio = np.concatenate(parts).astype(np.float32)
    assert len(audio) >= 16000 * 9 // 2
    windows, starts = frame(audio[: 16000 * 9 // 2], window=16000, hop=8000)
    return windows[:8], starts[:8]


class _Recording:
    """A recognizer proxy that keeps what went into ``predict``."""

    def __init__(self, recognizer) -> None:
        self._recognizer = recognizer
        self.inputs: list[np.ndarray] = []

    def __getattr__(self, name: str):
        return getattr(self._recognizer, name)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.inputs.append(np.array(batch))
        return self._recognizer.predict(batch)


def test_reused_segments_give_the_copies_of_fresh_windows(model_torch, stream_windows) -> None:
    """Windows of a stream analyzed in batches with a StreamState (shared halves encoded once,
    within a batch and across batches) get exactly the codec copies they get alone, so the same
    verdicts (up to float rounding of the batched forward pass)."""
    windows, starts = stream_windows
    rec = _Recording(model_torch)
    detector = Detector(rec, DetectorConfig(transforms=("mp3", "opus", "aac"), smoothing=None))
    fresh, fresh_copies = [], []
    for w, k in zip(windows, starts, strict=True):
        fresh += detector.analyze(w[np.newaxis], keys=[k])
        fresh_copies.append(rec.inputs[-1])  # (3 codecs, samples)
    state = detector.stream_state()
    reused = []
    for s in range(0, len(windows), 3):
        rows = slice(s, s + 3)
        n = len(windows[rows])
        reused += detector.analyze(
            windows[rows], keys=starts[rows].tolist(), starts=starts[rows].tolist(), states=[state] * n
        )
        copies = rec.inputs[-1].reshape(3, n, -1)  # (codec, window, samples)
        for i in range(n):
            np.testing.assert_array_equal(copies[:, i], fresh_copies[s + i])
    for a, b in zip(fresh, reused, strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-5)
        assert [o.label for o in a.defended] == [o.label for o in b.defended]
    # 8 windows x 2 halves x 3 codecs = 48 parts; 7 x 3 are shared by two windows: 5 x 3 inside
    # a batch (round tripped once, never looked up in the state) and 2 x 3 across batch edges
    # (found in the state).
    assert state.hits == 6
    assert state.misses == 48 - 21
    assert len(state) <= 3 * 3  # only what a later window can still use


def test_cached_and_fresh_segments_give_identical_verdicts(detector, stream_windows) -> None:
    """The same batch, once with every part encoded afresh and once with its parts from a
    warm StreamState: bit-identical verdicts."""
    windows, starts = stream_windows
    batch, keys = windows[4:6], starts[4:6].tolist()
    fresh = detector.analyze(batch, keys=keys)
    state = detector.stream_state()
    detector.analyze(batch, keys=keys, starts=keys, states=[state, state])
    before = state.hits
    cached = detector.analyze(batch, keys=keys, starts=keys, states=[state, state])
    assert state.hits - before == 3 * 3  # the three distinct halves of both windows, per codec
    assert [v.score for v in cached] == [v.score for v in fresh]
    assert [v.defended for v in cached] == [v.defended for v in fresh]


def test_batches_of_one_stream_can_run_at_once(detector, stream_windows) -> None:
    windows, starts = stream_windows
    expected = [v.score for v in detector.analyze(windows, keys=starts.tolist())]
    state = detector.stream_state()
    got: dict[int, list[float]] = {}

    def run(half: int) -> None:
        rows = slice(4 * half, 4 * half + 4)
        verdicts = detector.analyze(
            windows[rows], keys=starts[rows].tolist(), starts=starts[rows].tolist(), states=[state] * 4
        )
        got[half] = [v.score for v in verdicts]

    threads = [threading.Thread(target=run, args=(h,)) for h in (1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got[0] + got[1] == expected


def test_stream_state_memory_stays_bounded(detector, stream_windows) -> None:
    """A long stream keeps only the parts later windows may still need: the halves of the last
    window and the one before it."""
    windows, _ = stream_windows
    audio = np.tile(np.concatenate(windows[::2]), 3)  # 12 s, continuous
    long_windows, starts = frame(audio, window=16000, hop=8000)
    mp3_only = Detector(detector.recognizer, DetectorConfig(transforms=("mp3",), smoothing=None))
    state = mp3_only.stream_state()
    for window, start in zip(long_windows, starts, strict=True):
        mp3_only.analyze(window[np.newaxis], starts=[start], states=[state])
        assert len(state) <= 3
    assert state.hits == len(long_windows) - 1  # every first half but the very first
    with pytest.raises(ValueError, match="another detector"):
        detector.analyze(windows[:1], starts=[0], states=[state])
    with pytest.raises(ValueError, match="starts"):
        mp3_only.analyze(windows[:1], states=[state])
    assert isinstance(state, StreamState)


class _NanRecognizer:
    """Returns NaN probabilities for windows whose first sample is positive."""

    spec = ModelSpec(
        name="nan", labels=("a", "b"), input=AudioInput(sample_rate_hz=16000, window_samples=16000)
    )
    representations = ("waveform",)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        out = np.tile(np.array([0.9, 0.1], np.float32), (len(batch), 1))
        out[batch[:, 0] > 0] = np.nan
        return out


@pytest.mark.parametrize("threshold", [None, 0.5])
def test_non_finite_scores_are_always_flagged(threshold) -> None:
    detector = Detector(
        _NanRecognizer(),  # type: ignore[arg-type]
        DetectorConfig(transforms=("quantize",), smoothing=None, threshold=threshold),
    )
    x = np.zeros((2, 16000), np.float32)
    x[1, 0] = 0.5
    ok, bad = detector.analyze(x)
    assert not ok.flagged and ok.score == 0.0
    assert bad.flagged and not np.isfinite(bad.score)
    assert bad.reasons[0] == "non-finite score"
    # the same whichever defended output is NaN first
    raw = np.array([0.9, 0.1], np.float32)
    for order in ([raw, np.full(2, np.nan)], [np.full(2, np.nan), raw]):
        defended = [(f"t{j}", p[np.newaxis]) for j, p in enumerate(order)]
        v = detector._verdict(0, raw, defended, None, None, None, 1.0)
        assert v.flagged and np.isnan(v.score) and v.reasons[0] == "non-finite score"


def test_certified_detection_flags_raw_labels_the_votes_do_not_back(model_torch, heldout_speech) -> None:
    """The certified rule alone (no transforms, no threshold): clean held-out digits pass with a
    guarantee in dB; PGD examples that change the raw label but not the noisy votes are flagged by
    the rule, and are not without it (with the shipped model at sigma 0.1, 8 of the 12 PGD
    examples at 40 dB: noise 20 dB under the speech undoes most of them)."""
    smooth = SmoothingConfig(sigma=0.1, representation="waveform_rms", n=200, n0=20, alpha=0.01)
    with pytest.raises(ValueError, match="needs smoothing"):
        DetectorConfig(transforms=(), smoothing=None, certified=0.5)
    with pytest.raises(ValueError, match="p_min"):
        DetectorConfig(transforms=(), smoothing=smooth, certified=1.5)
    cfg = DetectorConfig(transforms=(), smoothing=smooth, certified=0.5)
    assert cfg.fingerprint()["certified"] == {"p_min": 0.5}
    assert "certified" not in DetectorConfig(transforms=(), smoothing=smooth).fingerprint()
    y = heldout_speech["y"]
    pick = np.flatnonzero(y < 10)[::2][:12]
    x = heldout_speech["x"][pick]
    det = Detector(model_torch, cfg)
    clean = det.analyze(x)
    passed = [(v, w) for v, w in zip(clean, x, strict=True) if not v.flagged]
    assert len(passed) >= 9, [v.reasons for v in clean]
    for v, w in passed:
        assert v.raw_p_lower >= 0.5
        # all 200 votes for the raw label is the best case: the guarantee is no better than that
        best = smooth.sigma * norm.ppf(0.01 ** (1 / 200))
        assert v.guaranteed_snr_db >= 20 * np.log10(np.sqrt(16000) / best) - 0.01
        radius = smooth.sigma * norm.ppf(v.raw_p_lower)
        assert v.guaranteed_snr_db == pytest.approx(
            guaranteed_snr_db(float(np.linalg.norm(w)), radius, "waveform_rms", 16000)
        )
    peak = np.abs(x).max(axis=1, keepdims=True)
    res = PGD(budget=Budget(norm="linf", eps=0.5 * 10 ** (-40 / 20)), steps=40).run(
        model_torch, x / peak * 0.5, y[pick], seed=0
    )
    adv = res.adversarial / 0.5 * peak
    verdicts = det.analyze(adv)
    fooled = [v for v, ok in zip(verdicts, res.success, strict=True) if ok]
    assert len(fooled) >= 9
    unbacked = [v for v in fooled if v.raw_p_lower < 0.5]
    assert len(unbacked) >= 0.5 * len(fooled)
    for v in unbacked:
        assert v.flagged and v.reasons[0].startswith("not certified") and v.guaranteed_snr_db is None
    plain = Detector(model_torch, DetectorConfig(transforms=(), smoothing=smooth)).analyze(adv)
    assert not any(v.flagged for v in plain)
    # a smaller p_min flags fewer windows, for a smaller guaranteed radius
    lenient = Detector(model_torch, DetectorConfig(transforms=(), smoothing=smooth, certified=0.05))
    again = lenient.analyze(x)
    assert sum(v.flagged for v in again) <= sum(v.flagged for v in clean)
    for v, w in zip(again, clean, strict=True):
        if v.guaranteed_snr_db is not None and w.guaranteed_snr_db is not None:
            assert v.guaranteed_snr_db > w.guaranteed_snr_db
