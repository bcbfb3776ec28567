"""Offline certification studies (:mod:`tools.certification`) on held-out speech."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from avsentry.pipelines.smoothing import lower_confidence_bound
from avsentry.pipelines.types import Certified
from avsentry.tools.certification import (
    CertifiedAccuracy,
    certified_accuracy,
    certified_detection,
    max_certifiable_radius,
    max_radius_table,
)

# digits by each of the four held-out voices, two other words, one background
CLIPS = [0, 5, 10, 15, 22, 33, 40, 43, 46]
SMALL = {"n0": 8, "n": 64, "alpha": 0.001, "progress": False}


@pytest.fixture(scope="module")
def few(heldout_speech) -> dict[str, np.ndarray]:
    return {"x": heldout_speech["x"][CLIPS], "y": heldout_speech["y"][CLIPS]}


@pytest.fixture(scope="module")
def curves(model_torch, few) -> list[CertifiedAccuracy]:
    return certified_accuracy(
        model_torch, few["x"], few["y"], sigmas={"waveform": (0.01, 0.05), "logmel": (0.25,)}, seed=3, **SMALL
    )


def test_certified_accuracy_is_non_increasing_in_radius_and_at_most_clean_accuracy(curves) -> None:
    assert [(c.representation, c.sigma) for c in curves] == [
        ("waveform", 0.01),
        ("waveform", 0.05),
        ("logmel", 0.25),
    ]
    for c in curves:
        acc = np.array(c.certified_accuracy)
        assert len(acc) == len(c.radii) and list(c.radii) == sorted(c.radii)
        assert np.all(np.diff(acc) <= 0)
        assert np.all(acc <= c.clean_accuracy)
        assert 0 <= c.abstain_rate <= 1 - c.clean_accuracy + 1e-12
        assert c.clean_accuracy >= 0.5  # real held-out digits: the smoothed model mostly works
        assert c.as_dict()["clips"] == len(CLIPS)


def test_certified_radii_never_exceed_the_largest_certifiable_radius(curves) -> None:
    for c in curves:
        assert c.max_radius == max_certifiable_radius(c.sigma, c.n, c.alpha)
        radii = [r.radius for r in c.certificates if isinstance(r, Certified)]
        assert radii and max(radii) <= c.max_radius * (1 + 1e-9)
        # no clip is certified beyond the cap: the curve is zero past it
        beyond = [a for r, a in zip(c.radii, c.certified_accuracy, strict=True) if r > c.max_radius]
        assert all(a == 0 for a in beyond)


def test_same_seed_gives_identical_certificates_another_seed_other_noise(model_torch, few, curves) -> None:
    again = certified_accuracy(
        model_torch, few["x"], few["y"], sigmas={"waveform": (0.05,), "logmel": (0.25,)}, seed=3, **SMALL
    )
    for a, b in zip(curves[1:], again, strict=True):
        assert a.as_dict() == b.as_dict()
        for ca, cb in zip(a.certificates, b.certificates, strict=True):
            assert type(ca) is type(cb) and np.array_equal(ca.counts, cb.counts)
    other = certified_accuracy(model_torch, few["x"], few["y"], sigmas={"logmel": (0.25,)}, seed=4, **SMALL)
    assert any(
        not np.array_equal(a.counts, b.counts)
        for a, b in zip(curves[2].certificates, other[0].certificates, strict=True)
    )


def test_a_clip_certificate_does_not_depend_on_the_other_clips(model_torch, few, curves) -> None:
    # per-clip generators: clip 0 alone gets the same noise as clip 0 of the batch
    alone = certified_accuracy(
        model_torch, few["x"][:1], few["y"][:1], sigmas={"logmel": (0.25,)}, seed=3, batch_size=64, **SMALL
    )
    assert np.array_equal(alone[0].certificates[0].counts, curves[2].certificates[0].counts)


def test_max_certifiable_radius_is_the_closed_form_and_grows_with_n() -> None:
    for n in (32, 100, 1000, 10000):
        r = max_certifiable_radius(0.25, n, 0.001)
        assert r == pytest.approx(0.25 * norm.ppf(0.001 ** (1 / n)), rel=1e-12)
        # the Clopper-Pearson bound CERTIFY uses, with all n votes for c_A
        assert r == pytest.approx(0.25 * norm.ppf(lower_confidence_bound(n, n, 0.001)), rel=1e-9)
    table = max_radius_table(sigmas=(0.05, 0.5), ns=(32, 100, 1000, 10000), alpha=0.001)
    for sigma, row in table.items():
        values = list(row.values())
        assert list(row) == [32, 100, 1000, 10000]
        assert all(b > a > 0 for a, b in zip(values, values[1:], strict=False))
        assert values == pytest.approx([max_certifiable_radius(sigma, n, 0.001) for n in row])
    assert table[0.5][1000] == pytest.approx(10 * table[0.05][1000])
    assert max_certifiable_radius(1.0, 5, 0.001) == 0.0  # 0.001 ** (1/5) < 1/2: always abstains
    with pytest.raises(ValueError):
        max_certifiable_radius(0.0, 100, 0.001)


def test_certified_detection_rarely_flags_clean_held_out_speech(model_torch, few) -> None:
    out = certified_detection(model_torch, few["x"], few["y"], sigma=0.02, seed=1, **SMALL)
    assert len(out.windows) == len(CLIPS)
    assert out.flag_rate <= 2 / len(CLIPS)
    assert out.median_radius is not None and 0 < out.median_radius <= out.max_radius
    for w, x in zip(out.windows, few["x"], strict=True):
        if isinstance(w.certificate, Certified):
            assert w.radius == w.certificate.radius
            assert w.snr_db == pytest.approx(20 * math.log10(np.linalg.norm(x.astype(np.float64)) / w.radius))
            assert w.flagged == (w.certificate.label != w.raw_label)
        else:
            assert w.flagged and w.radius is None and w.snr_db is None
    passed = [w.snr_db for w in out.windows if not w.flagged]
    assert out.median_snr_db == pytest.approx(float(np.median(passed)))


def test_certified_detection_flags_a_raw_label_that_differs_from_the_smoothed_one(model_torch, few) -> None:
    clean = certified_detection(model_torch, few["x"], None, sigma=0.05, seed=1, **SMALL)
    raw = np.array([w.raw_label for w in clean.windows])
    i = next(k for k, w in enumerate(clean.windows) if not w.flagged)
    raw[i] = (raw[i] + 1) % len(model_torch.spec.labels)  # as if an attack had moved the raw label
    out = certified_detection(model_torch, few["x"], None, sigma=0.05, seed=1, raw_labels=raw, **SMALL)
    assert out.windows[i].flagged and not clean.windows[i].flagged
    assert [w.flagged for k, w in enumerate(out.windows) if k != i] == [
        w.flagged for k, w in enumerate(clean.windows) if k != i
    ]
    assert out.smoothed_accuracy is None and out.raw_accuracy is None


def test_certified_detection_uses_the_same_certificates_as_the_accuracy_study(
    model_torch, few, curves
) -> None:
    out = certified_detection(model_torch, few["x"], few["y"], sigma=0.05, seed=3, **SMALL)
    study = curves[1]
    assert (study.representation, study.sigma) == ("waveform", 0.05)
    for w, c in zip(out.windows, study.certificates, strict=True):
        assert type(w.certificate) is type(c) and np.array_equal(w.certificate.counts, c.counts)
    assert out.smoothed_accuracy == pytest.approx(study.clean_accuracy)
    assert out.abstain_rate == pytest.approx(study.abstain_rate)


@pytest.mark.gpu
def test_certification_runs_on_cuda(few) -> None:
    from avsentry.pipelines.recognizers import load_recognizer

    model = load_recognizer("digits", backend="torch", device="cuda")
    out = certified_detection(model, few["x"], few["y"], sigma=0.05, seed=1, **SMALL)
    again = certified_detection(model, torch.from_numpy(few["x"]), few["y"], sigma=0.05, seed=1, **SMALL)
    assert out.as_dict() == again.as_dict()
    assert out.flag_rate <= 2 / len(CLIPS)
