"""FGSM/FGM, BIM and PGD on the shipped model: budgets (absolute and in dB), bounds, seeds,
targets, and the attack-spec parser."""

from __future__ import annotations

import numpy as np
import pytest

from avsentry.tools import synth
from avsentry.tools.attacks import FGM, PGD, Budget, run_attack
from avsentry.tools.attacks.base import choose_targets, perturbation_stats
from avsentry.tools.attacks.catalog import ATTACK_NAMES, parse_attack_spec


@pytest.fixture(scope="module")
def digits(model_torch, heldout_speech):
    """Eight held-out digit windows the model gets right."""
    x, y = heldout_speech["x"], heldout_speech["y"]
    ok = np.flatnonzero((y < 10) & (model_torch.predict(x).argmax(1) == y))[::5][:8]
    return x[ok], y[ok]


def test_budget_in_db_bounds_the_snr_and_absolute_budget_the_amplitude(digits) -> None:
    x, _ = digits
    for norm in ("linf", "l2"):
        eps = Budget(norm=norm, snr_db=30).per_item(x)
        rng = np.random.default_rng(0)
        d = rng.standard_normal(x.shape)
        if norm == "linf":
            d = np.sign(d) * eps[:, None]
        else:
            d = d / np.linalg.norm(d, axis=1, keepdims=True) * eps[:, None]
        snr = perturbation_stats(x, x + d)["snr_db"]
        assert np.all(snr >= 30 - 1e-3), snr  # the ball's edge is exactly 30 dB (L2) or more (L-inf)
    assert np.all(Budget(norm="linf", eps=0.002).per_item(x) == np.float32(0.002))
    with pytest.raises(ValueError, match="exactly one"):
        Budget(norm="linf")
    assert Budget.parse("l2", "25dB") == Budget(norm="l2", snr_db=25.0)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_fools_the_model_within_a_30db_budget(model_torch, digits, norm) -> None:
    """PGD, 20 steps, perturbation 30 dB under each clip: all eight digits change label."""
    x, y = digits
    res = PGD(budget=Budget(norm=norm, snr_db=30), steps=20).run(model_torch, x, y, seed=0)
    assert res.success.mean() >= 0.85
    assert np.all(res.snr_db >= 30 - 0.01)
    assert res.adversarial.min() >= -1 and res.adversarial.max() <= 1
    assert np.all(res.queries == 21)


def test_fgsm_respects_an_absolute_linf_budget(model_torch, digits) -> None:
    x, y = digits
    res = FGM(budget=Budget(norm="linf", eps=0.003)).run(model_torch, x, y)
    assert np.all(res.linf <= 0.003 + 1e-6), res.linf
    # one step of exactly eps on (almost) every sample not clipped by the bounds
    assert np.median(res.linf) == pytest.approx(0.003, rel=1e-3)
    assert res.success.any()


def test_targeted_pgd_reaches_the_target_and_same_seed_same_result(model_torch, digits) -> None:
    x, y = digits
    target = choose_targets(y, synth.LABELS, "next", np.random.default_rng(0))
    assert target is not None and np.all(target != y)
    attack = PGD(budget=Budget(norm="linf", snr_db=25), steps=30, restarts=2)
    a = run_attack(attack, model_torch, x, y, target=target, seed=3, batch_size=4, progress=False)
    b = run_attack(attack, model_torch, x, y, target=target, seed=3, batch_size=4, progress=False)
    assert a.success.mean() >= 0.75
    np.testing.assert_array_equal(a.adversarial, b.adversarial)
    assert np.all(a.adversarial_labels[a.success] == target[a.success])


def test_bim_is_deterministic_without_a_random_start(model_torch, digits) -> None:
    x, y = digits
    bim = parse_attack_spec("bim:eps=30db,steps=10").attack
    a = bim.run(model_torch, x[:3], y[:3], seed=1)
    b = bim.run(model_torch, x[:3], y[:3], seed=2)
    np.testing.assert_array_equal(a.adversarial, b.adversarial)


def test_attack_specs_parse_with_clear_errors() -> None:
    s = parse_attack_spec("pgd:eps=30db,norm=l2,steps=7,restarts=2,target=random")
    assert s.attack.budget == Budget(norm="l2", snr_db=30.0)
    assert (s.attack.steps, s.attack.restarts, s.target) == (7, 2, "random")
    assert s.label == "pgd-l2-30db-to-random"
    assert parse_attack_spec("fgm").attack.budget.norm == "l2"
    assert parse_attack_spec("fgsm:eps=0.002").attack.budget == Budget(norm="linf", eps=0.002)
    with pytest.raises(ValueError, match="unknown parameter 'stepz'.*steps"):
        parse_attack_spec("pgd:stepz=3")
    with pytest.raises(ValueError, match="unknown attack"):
        parse_attack_spec("foo")
    with pytest.raises(ValueError, match="steps"):
        parse_attack_spec("pgd:steps=many")
    for name in ATTACK_NAMES:  # every family builds with its defaults
        assert parse_attack_spec(name).family == name


def test_choose_targets_never_picks_the_true_label() -> None:
    y = np.arange(10).repeat(5)
    t = choose_targets(y, synth.LABELS, "random", np.random.default_rng(1))
    assert t is not None and np.all(t != y) and np.all(t < 10)
    with pytest.raises(ValueError, match="true label"):
        choose_targets(y, synth.LABELS, "three", np.random.default_rng(1))
    assert choose_targets(y, synth.LABELS, "none", np.random.default_rng(1)) is None
