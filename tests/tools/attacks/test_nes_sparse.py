"""NES (black-box, query-limited) on the ONNX model, and the sparse time-frequency attack on the
torch model: success, budgets, query accounting and the mask's support."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avsentry.tools.attacks.base import Budget
from avsentry.tools.attacks.nes import NES, Answer, RecognizerOracle, oracle_loss
from avsentry.tools.attacks.sparse import SparseTF, _project_coef

# heldout_speech holds 4 voices per digit: flite rms, festival ked, espeak en-us, espeak en-gb.
# NES at 20 dB (L-inf) and 2000 queries fools about half of the 40 digit clips (measured: 19 of
# 40 with the top-1 answer only); these three need 150-700 queries with probabilities.
NES_CLIPS = [8, 12, 16]  # "two", "three", "four" by flite


class Top1Oracle:
    """A recognizer seen as a guard server shows it: top-1 label and confidence only."""

    def __init__(self, recognizer) -> None:
        self.inner = RecognizerOracle(recognizer)

    def query(self, batch: np.ndarray) -> Answer:
        a = self.inner.query(batch)
        return Answer(labels=a.labels, confidence=a.confidence)


@pytest.fixture(scope="module")
def nes_clips(model_onnx, heldout_speech):
    x, y = heldout_speech["x"][NES_CLIPS], heldout_speech["y"][NES_CLIPS]
    assert np.all(model_onnx.predict(x).argmax(1) == y)
    return x, y


@pytest.fixture(scope="module")
def digits(model_torch, heldout_speech):
    """Eight held-out digit windows the model gets right, one voice after another."""
    x, y = heldout_speech["x"], heldout_speech["y"]
    ok = np.flatnonzero((y < 10) & (model_torch.predict(x).argmax(1) == y))[::5][:8]
    return x[ok], y[ok]


def test_nes_fools_the_onnx_model_within_its_query_and_linf_budgets(model_onnx, nes_clips) -> None:
    """Untargeted NES, 20 dB L-inf, 2000 queries, 50 samples per draw: all three clips flip."""
    x, y = nes_clips
    attack = NES(budget=Budget(norm="linf", snr_db=20), max_queries=2000, samples_per_draw=50)
    res = attack.run(model_onnx, x, y, seed=0)
    assert res.success.all(), res.queries
    assert np.all(res.queries <= 2000)
    # one initial check, then a draw plus a check per step
    assert np.all((res.queries - 1) % 51 == 0)
    eps = attack.budget.per_item(x)
    assert np.all(res.linf <= eps * (1 + 1e-5)), (res.linf, eps)
    assert res.adversarial.min() >= -1 and res.adversarial.max() <= 1
    # success is the model's own verdict on the returned adversarials
    after = model_onnx.predict(res.adversarial).argmax(1)
    assert np.array_equal(after, res.adversarial_labels) and np.all(after != y)


def test_nes_with_top1_answers_only_is_seeded_and_stops_at_its_budget(model_onnx, nes_clips) -> None:
    """With labels and confidences only: same seed, same adversarial; a budget too small for a
    clip stops it at (not past) max_queries."""
    x, y = nes_clips[0][1:2], nes_clips[1][1:2]  # "three": ~150 queries
    oracle = Top1Oracle(model_onnx)
    attack = NES(budget=Budget(norm="linf", snr_db=20), max_queries=1000)
    a = attack.run(oracle, x, y, seed=3)
    b = attack.run(oracle, x, y, seed=3)
    assert a.success.all() and np.array_equal(a.adversarial, b.adversarial)
    short = NES(budget=Budget(norm="linf", snr_db=40), max_queries=200).run(oracle, x, y, seed=0)
    assert not short.success.any() and short.queries[0] <= 200
    assert short.queries[0] + 51 > 200  # it stopped only because the next step would not fit


def test_top1_proxy_is_the_cross_entropy_while_the_label_holds() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1]])
    full = Answer(labels=probs.argmax(1), confidence=probs.max(1), probabilities=probs)
    top1 = Answer(labels=probs.argmax(1), confidence=probs.max(1), score=np.array([0.5, 1.0]))
    y = np.array([0, 0])
    ce = oracle_loss(full, y, targeted=False)
    proxy = oracle_loss(top1, y, targeted=False)
    assert ce == pytest.approx(-np.log([0.7, 0.3]))
    assert proxy[0] == pytest.approx(ce[0])  # label still y: exactly its cross-entropy
    assert proxy[1] == pytest.approx(-np.log(0.4)) and proxy[1] <= ce[1]  # p_y <= 1 - c
    # the detector term pulls the loss down by weight * score
    assert oracle_loss(top1, y, targeted=False, detector_weight=2.0) == pytest.approx(proxy - [1.0, 2.0])


def test_sparse_attack_changes_only_the_chosen_time_frequency_region(model_torch, heldout_speech) -> None:
    """0.25-0.75 s x 300-3000 Hz, 20 dB (L2): most digits flip, and the perturbation's STFT is
    inside the region up to the Hann window's leakage (a few bins and frames). The clips stay
    clear of the input bounds, whose clipping is the one thing that may leak further."""
    x, y = heldout_speech["x"], heldout_speech["y"]
    ok = (y < 10) & (model_torch.predict(x).argmax(1) == y) & (np.abs(x).max(1) < 0.9)
    pick = np.flatnonzero(ok)[::3][:8]
    x, y = x[pick], y[pick]
    attack = SparseTF(
        budget=Budget(norm="l2", snr_db=20), time_s=(0.25, 0.75), band_hz=(300.0, 3000.0), steps=50
    )
    res = attack.run(model_torch, x, y, seed=0)
    assert res.success.mean() >= 0.75, res.success
    assert np.all(res.snr_db >= 20 - 0.01)
    assert res.adversarial.min() >= -1 and res.adversarial.max() <= 1
    region = torch.as_tensor(attack.region(x.shape[1], 16000))
    assert 0 < int(region.sum()) < region.numel() // 4
    assert np.all((res.l0 > 0) & (res.l0 <= int(region.sum())))
    d = torch.as_tensor(res.adversarial - x)
    power = torch.stft(d, 512, 128, window=torch.hann_window(512), return_complex=True).abs() ** 2
    near = F.max_pool2d(region[None, None].float(), (7, 9), stride=1, padding=(3, 4))[0, 0] > 0
    total = power.sum((1, 2))
    assert torch.all(power[:, ~region].sum(1) <= 0.05 * total)
    assert torch.all(power[:, ~near].sum(1) <= 1e-4 * total)
    # outside the time range (plus half a window) not a sample moves
    assert np.all(res.adversarial[:, : 4000 - 256] == x[:, : 4000 - 256])
    assert np.all(res.adversarial[:, 12000 + 256 :] == x[:, 12000 + 256 :])


def test_sparse_attack_with_a_learned_mask_uses_at_most_k_of_the_bins(model_torch, digits) -> None:
    """Top 3 % of TF bins by gradient (after 5 warm-up steps), 20 dB (L2), 40 steps: untargeted
    (measured: all 40 held-out digit clips); top 5 % targeted to the next digit (37 of 40)."""
    x, y = digits
    bins = 257 * 126
    res = SparseTF(budget=Budget(norm="l2", snr_db=20), k=0.03, steps=40).run(model_torch, x, y, seed=0)
    assert res.success.mean() >= 0.85, res.success
    assert np.all(res.l0 <= math.ceil(0.03 * bins))
    assert np.all(res.snr_db >= 20 - 0.01)
    assert np.all(res.queries <= 5 + 40 + 1)
    target = (y + 1) % 10
    attack = SparseTF(budget=Budget(norm="l2", snr_db=20), k=0.05, steps=40)
    res = attack.run(model_torch, x, y, target=target)
    assert res.success.mean() >= 0.75, res.success
    assert np.all(res.adversarial_labels[res.success] == target[res.success])
    assert np.all(res.l0 <= math.ceil(0.05 * bins))


def test_coefficient_l1_projection_keeps_phases_and_meets_the_radius() -> None:
    gen = torch.Generator().manual_seed(0)
    z = torch.complex(torch.randn(2, 5, 4, generator=gen), torch.randn(2, 5, 4, generator=gen))
    radius = torch.tensor([1.0, 1e6])
    p = _project_coef(z, radius, "l1")
    assert p[0].abs().sum() == pytest.approx(1.0, rel=1e-5)
    assert torch.allclose(p[1], z[1])  # already inside
    kept = p[0].abs() > 0
    assert torch.allclose(p[0][kept].angle(), z[0][kept].angle(), atol=1e-5)
    assert kept.sum() < kept.numel()  # the L1 projection zeroes the small coefficients
