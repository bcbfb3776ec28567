"""Minimal-perturbation attacks on the shipped digit model: Carlini-Wagner L2, DeepFool, JSMA.

Each runs on a few held-out digit clips the model gets right and is held to what its paper
promises: a label change with a small perturbation (CW, DeepFool) or few changed samples (JSMA),
within the model's input bounds and the attack's budget. Clip counts and steps are kept small so
each test takes seconds on two CPU cores.
"""

from __future__ import annotations

import numpy as np
import pytest

from avsentry.tools.attacks.base import AttackResult, Budget
from avsentry.tools.attacks.cw import CarliniWagnerL2
from avsentry.tools.attacks.deepfool import DeepFool
from avsentry.tools.attacks.jsma import JSMA

# Digits zero to five, voices rotating over flite, festival and the two espeak-ng ones.
CLIPS = (0, 5, 10, 15, 18, 23)


@pytest.fixture(scope="module")
def digits(model_torch, heldout_speech) -> tuple[np.ndarray, np.ndarray]:
    """``(6, 16000)`` held-out digit clips and their labels, all classified correctly."""
    x = heldout_speech["x"][list(CLIPS)]
    y = heldout_speech["y"][list(CLIPS)]
    assert (model_torch.predict(x).argmax(1) == y).all()
    return x, y


def runner_up(model, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = model.predict(x)
    p[np.arange(len(y)), y] = -1
    return p.argmax(1)


def assert_in_bounds(model, r: AttackResult) -> None:
    lo, hi = model.spec.input_bounds
    assert r.adversarial.dtype == np.float32
    assert r.adversarial.min() >= lo and r.adversarial.max() <= hi


def test_cw_targeted_reaches_the_target_within_its_l2_budget(model_torch, digits) -> None:
    """CW L2 (2 search rounds x 50 Adam steps, lr 1e-4, c0 1e-2, kappa 0) with an L2 budget of
    30 dB below each clip moves 4 clips to the next digit (measured: all 4 already in the first
    round, at 35-52 dB SNR; 41-57 dB after 4 rounds)."""
    x, y = (a[:4] for a in digits)
    target = (y + 1) % 10
    budget = Budget(norm="l2", snr_db=30)
    r = CarliniWagnerL2(binary_search_steps=2, steps=50, budget=budget).run(model_torch, x, y, target=target)
    assert r.success.sum() >= 3
    assert (r.adversarial_labels[r.success] == target[r.success]).all()
    assert (r.l2 <= budget.per_item(x) * 1.001).all()
    assert (r.snr_db[r.success] >= 30 - 0.01).all()
    assert (r.adversarial[~r.success] == x[~r.success]).all()  # nothing within budget: unchanged
    assert_in_bounds(model_torch, r)
    assert (r.queries > 1).all() and (r.queries <= 2 * 50 + 1).all()


def test_cw_rejects_adversarials_above_its_budget(model_torch, digits) -> None:
    """An untargeted CW run whose L2 budget (80 dB below the clip) is far below anything that fools
    the model returns the clips unchanged, as failures; a CW run needs an L2 budget."""
    x, y = (a[:2] for a in digits)
    attack = CarliniWagnerL2(binary_search_steps=2, steps=20, budget=Budget(norm="l2", snr_db=80))
    r = attack.run(model_torch, x, y)
    assert not r.success.any()
    assert (r.adversarial == x).all()
    assert (r.adversarial_labels == y).all()
    with pytest.raises(ValueError, match="L2 budget"):
        CarliniWagnerL2(budget=Budget(norm="linf", eps=0.01))


def test_deepfool_l2_fools_with_a_quiet_perturbation(model_torch, digits) -> None:
    """DeepFool L2 (overshoot 0.02, up to 50 iterations, 4 candidate classes) fools 4 clips with a
    perturbation far below the speech (measured: all, SNR 33-66 dB, median 46 dB)."""
    x, y = (a[:4] for a in digits)
    r = DeepFool(candidates=4).run(model_torch, x, y)
    assert r.success.sum() >= 3
    assert np.median(r.snr_db) > 20
    assert_in_bounds(model_torch, r)
    assert (r.queries >= 4).all()


def test_deepfool_linf_is_projected_onto_its_budget_and_deterministic(model_torch, digits) -> None:
    """DeepFool L-inf (4 candidate classes) with an L-inf budget 15 dB below each clip's RMS fools
    most of 4 clips within it (measured: all unprojected, SNR 30-51 dB; 3 of 4 at a 20 dB
    budget); the seed changes nothing (no randomness)."""
    x, y = (a[:4] for a in digits)
    budget = Budget(norm="linf", snr_db=15)
    attack = DeepFool(norm="linf", candidates=4, budget=budget)
    r = attack.run(model_torch, x, y, seed=1)
    assert r.success.sum() >= 3
    assert (r.linf <= budget.per_item(x) * 1.001).all()
    assert_in_bounds(model_torch, r)
    np.testing.assert_array_equal(attack.run(model_torch, x, y, seed=2).adversarial, r.adversarial)


def test_deepfool_refuses_a_target(model_torch, digits) -> None:
    x, y = digits
    with pytest.raises(ValueError, match="untargeted"):
        DeepFool().run(model_torch, x[:1], y[:1], target=(y[:1] + 1) % 10)


def test_jsma_reaches_the_runner_up_changing_few_samples(model_torch, digits) -> None:
    """Targeted JSMA (theta 1.0, gamma 0.02 = at most 320 of 16,000 samples, 16 per iteration)
    toward each clip's runner-up class reaches it on most of 6 clips (measured: 5 of 6)."""
    x, y = digits
    target = runner_up(model_torch, x, y)
    attack = JSMA(theta=1.0, gamma=0.02, k=16)
    r = attack.run(model_torch, x, y, target=target)
    assert r.success.sum() >= 4
    assert (r.adversarial_labels[r.success] == target[r.success]).all()
    assert (r.l0 <= int(0.02 * x.shape[1])).all()
    assert_in_bounds(model_torch, r)
    assert (r.queries <= 2 * 20 + 1).all()


def test_jsma_untargeted_attacks_the_runner_up_deterministically(model_torch, digits) -> None:
    """Without a target JSMA aims at the runner-up class and succeeds when the label leaves the
    true one; the same clips give the same adversarials whatever the seed."""
    x, y = (a[:2] for a in digits)
    attack = JSMA(theta=1.0, gamma=0.02, k=16)
    untargeted = attack.run(model_torch, x, y, seed=0)
    targeted = attack.run(model_torch, x, y, target=runner_up(model_torch, x, y), seed=1)
    np.testing.assert_array_equal(untargeted.adversarial, targeted.adversarial)
    assert untargeted.success.all()
    assert (untargeted.adversarial_labels != y).all()
    assert (untargeted.l0 <= 320).all()
