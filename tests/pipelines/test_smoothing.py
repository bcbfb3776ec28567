"""Randomized smoothing against classifiers whose output probabilities are known exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import beta, binomtest, norm

from avsentry.pipelines import smoothing
from avsentry.pipelines.smoothing import SmoothingConfig
from avsentry.pipelines.types import Abstain, AudioInput, Certified, ModelSpec, Prediction


class ThresholdClassifier:
    """f(z) = class 0 if z[..., 0] < c else class 1 (class 2 never).

    With input 0 and noise N(0, sigma^2), P(f = 0) = Phi(c / sigma) exactly.
    """

    representations = ("waveform",)
    device = torch.device("cpu")

    def __init__(self, c: float) -> None:
        self.c = c
        self.spec = ModelSpec(
            name="threshold", labels=("a", "b", "c"), input=AudioInput(sample_rate_hz=1, window_samples=4)
        )

    def encode(self, batch: torch.Tensor, representation: str) -> torch.Tensor:
        return batch

    def logits_from(self, z: torch.Tensor, representation: str) -> torch.Tensor:
        first = (z[:, 0] < self.c).float()
        return torch.stack([first, 1 - first, torch.full_like(first, -1.0)], dim=1) * 10

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.logits_from(torch.as_tensor(batch), "waveform").softmax(1).numpy()


def test_certified_radius_matches_cohen_formula_for_known_pA() -> None:
    sigma, p_a = 0.5, 0.9
    model = ThresholdClassifier(c=sigma * norm.ppf(p_a))
    cfg = SmoothingConfig(
        sigma=sigma, representation="waveform", n=20000, n0=100, alpha=0.001, batch_size=4096
    )
    gen = torch.Generator().manual_seed(0)
    (res,) = smoothing.certify(model, torch.zeros(1, 4), cfg, gen)
    assert isinstance(res, Certified)
    assert res.label == 0
    k = int(res.counts[0])
    assert res.counts.sum() == cfg.n
    # Clopper-Pearson one-sided lower bound, computed independently.
    assert res.p_lower == pytest.approx(beta.ppf(cfg.alpha, k, cfg.n - k + 1), rel=1e-9)
    assert res.radius == pytest.approx(sigma * norm.ppf(res.p_lower), rel=1e-9)
    # And the empirical p_A is near the true one, so the radius is just under sigma * Phi^-1(0.9).
    assert abs(k / cfg.n - p_a) < 0.01
    assert sigma * norm.ppf(p_a) - 0.05 < res.radius < sigma * norm.ppf(p_a)


def test_certify_abstains_when_lower_bound_below_half() -> None:
    model = ThresholdClassifier(c=0.0)  # p_A = 0.5 exactly
    cfg = SmoothingConfig(sigma=1.0, representation="waveform", n=2000, n0=100)
    (res,) = smoothing.certify(model, torch.zeros(1, 4), cfg, torch.Generator().manual_seed(3))
    assert isinstance(res, Abstain)
    assert res.p_lower < 0.5


def test_predict_abstains_on_a_coin_flip_and_answers_when_clear() -> None:
    cfg = SmoothingConfig(sigma=1.0, representation="waveform", n=200, alpha=0.01)
    gen = torch.Generator().manual_seed(1)
    (coin,) = smoothing.predict(ThresholdClassifier(c=0.0), torch.zeros(1, 4), cfg, gen)
    assert isinstance(coin, Abstain)
    assert coin.p_value > cfg.alpha
    (clear,) = smoothing.predict(ThresholdClassifier(c=3.0), torch.zeros(1, 4), cfg, gen)
    assert isinstance(clear, Prediction) and clear.label == 0
    assert clear.p_value <= cfg.alpha


@pytest.mark.parametrize(
    ("counts", "alpha", "expect"),
    [
        ([10, 0, 0], 0.05, 0),
        ([6, 4, 0], 0.05, None),
        ([0, 30, 20], 0.5, 1),
        ([0, 0, 0], 0.05, None),
    ],
)
def test_predict_from_counts_uses_two_sided_binomial_test(counts, alpha, expect) -> None:
    res = smoothing.predict_from_counts(np.array(counts), alpha)
    top = sorted(counts, reverse=True)
    p = binomtest(top[0], top[0] + top[1], 0.5).pvalue if top[0] + top[1] else 1.0
    assert res.p_value == pytest.approx(p)
    if expect is None:
        assert isinstance(res, Abstain)
    else:
        assert isinstance(res, Prediction) and res.label == expect


def test_lower_confidence_bound_edge_cases() -> None:
    assert smoothing.lower_confidence_bound(0, 10, 0.05) == 0.0
    # all successes: the exact bound is alpha ** (1 / n)
    assert smoothing.lower_confidence_bound(32, 32, 0.05) == pytest.approx(0.05 ** (1 / 32))


def test_same_seed_same_counts_and_per_item_generators_ignore_batch_company() -> None:
    model = ThresholdClassifier(c=0.1)
    cfg = SmoothingConfig(sigma=1.0, representation="waveform", n=64, batch_size=16)
    z = torch.zeros(3, 4)
    a = smoothing.sample_counts(model, z, 64, cfg, torch.Generator().manual_seed(9))
    b = smoothing.sample_counts(model, z, 64, cfg, torch.Generator().manual_seed(9))
    np.testing.assert_array_equal(a, b)
    assert (a.sum(axis=1) == 64).all()
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    together = smoothing.sample_counts(model, z, 64, cfg, gens)
    alone = smoothing.sample_counts(model, z[2:], 64, cfg, [torch.Generator().manual_seed(3)])
    np.testing.assert_array_equal(together[2], alone[0])


def test_mean_probs_are_distributions(model_torch, heldout_speech) -> None:
    cfg = SmoothingConfig(sigma=0.25, representation="logmel", n=16)
    z = model_torch.encode(torch.from_numpy(heldout_speech["x"][:3]), "logmel")
    counts, probs = smoothing.sample_counts(
        model_torch, z, 16, cfg, torch.Generator().manual_seed(0), return_mean_probs=True
    )
    assert counts.shape == probs.shape == (3, len(model_torch.spec.labels))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("representation", ["waveform", "spectrogram", "logmel"])
def test_smoothed_digit_model_agrees_with_truth_on_clean_speech(
    model_torch, heldout_speech, representation
) -> None:
    sigma = {"waveform": 0.002, "spectrogram": 0.01, "logmel": 0.25}[representation]
    cfg = SmoothingConfig(sigma=sigma, representation=representation, n=32, alpha=0.05)
    x, y = heldout_speech["x"], heldout_speech["y"]
    res = smoothing.predict(model_torch, torch.from_numpy(x), cfg, torch.Generator().manual_seed(0))
    correct = np.mean([isinstance(r, Prediction) and r.label == t for r, t in zip(res, y, strict=True)])
    assert correct >= 0.8


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="sigma"):
        SmoothingConfig(sigma=0)
    with pytest.raises(ValueError, match="alpha"):
        SmoothingConfig(alpha=1.5)
    with pytest.raises(ValueError, match="n and n0"):
        SmoothingConfig(n=0)


def test_votes_count_like_bincount_and_ignore_the_forward_batch_size() -> None:
    """With one generator per item, an item's n copies are one draw: the votes do not depend on
    how many copies go through the model at once (when n <= batch_size)."""
    model = ThresholdClassifier(c=0.1)
    z = torch.zeros(5, 4)
    runs = []
    for batch_size in (16, 40, 4096):
        cfg = SmoothingConfig(sigma=1.0, representation="waveform", n=16, batch_size=batch_size)
        gens = [torch.Generator().manual_seed(s) for s in range(5)]
        votes, probs = smoothing.sample_votes(model, z, 16, cfg, gens)
        assert votes.shape == (5, 16) and probs.shape == (5, 3)
        runs.append(votes)
        counts = smoothing.count_votes(votes, 3)
        expect = np.stack([np.bincount(v, minlength=3) for v in votes.numpy()])
        np.testing.assert_array_equal(counts, expect)
        np.testing.assert_array_equal(smoothing.count_votes(votes[:, 4:], 3).sum(axis=1), 12)
    for other in runs[1:]:
        torch.testing.assert_close(other, runs[0], rtol=0, atol=0)


def test_noisy_copies_fill_a_given_buffer() -> None:
    z = torch.arange(6.0).view(2, 3)
    buffer = torch.empty(100)
    out = smoothing.noisy_copies(z, 4, 0.0, [torch.Generator().manual_seed(s) for s in (1, 2)], out=buffer)
    assert out.shape == (8, 3) and out.data_ptr() == buffer.data_ptr()
    torch.testing.assert_close(out, z.repeat_interleave(4, dim=0))


@pytest.mark.gpu
def test_smoothing_runs_on_cuda_with_per_item_generators() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    dev = torch.device("cuda")
    model = ThresholdClassifier(c=0.1)
    model.device = dev
    cfg = SmoothingConfig(sigma=1.0, representation="waveform", n=64, batch_size=32)
    z = torch.zeros(3, 4, device=dev)

    def gens(seeds):
        return [torch.Generator(device=dev).manual_seed(s) for s in seeds]

    together = smoothing.sample_counts(model, z, 64, cfg, gens((1, 2, 3)))
    alone = smoothing.sample_counts(model, z[2:], 64, cfg, gens((3,)))
    np.testing.assert_array_equal(together[2], alone[0])
    assert (together.sum(axis=1) == 64).all()


def test_waveform_rms_noise_is_relative_to_the_window_and_played_at_the_reference_level() -> None:
    captured: list[torch.Tensor] = []

    class Spy(ThresholdClassifier):
        def logits_from(self, z: torch.Tensor, representation: str) -> torch.Tensor:
            assert representation == "waveform"
            captured.append(z.clone())
            return super().logits_from(z, representation)

    model = Spy(0.0)
    assert smoothing.offered_representations(model) == ("waveform", "waveform_rms")
    loud, quiet = torch.tensor([[0.4, -0.4, 0.4, -0.4]]), torch.tensor([[0.004, -0.004, 0.004, -0.004]])
    z_loud = smoothing.encode(model, loud, "waveform_rms")
    assert torch.allclose(z_loud, smoothing.encode(model, loud * 3, "waveform_rms"))
    assert torch.allclose(z_loud.pow(2).mean(), torch.tensor(1.0))
    # below the floor the gain stops growing: silence is not blown up to full scale
    z_quiet = smoothing.encode(model, quiet * 1e-3, "waveform_rms")
    assert torch.allclose(z_quiet, quiet * 1e-3 / smoothing.RMS_FLOOR)
    smoothing.logits_from(model, z_loud, "waveform_rms")
    assert torch.allclose(captured[-1].pow(2).mean().sqrt(), torch.tensor(smoothing.RMS_LEVEL))


@pytest.mark.parametrize("norm_scale", [0.5, 1.0, 4.0])
def test_guaranteed_snr_covers_every_perturbation_quieter_than_it(norm_scale) -> None:
    """A perturbation of the received window quieter than the guaranteed SNR moves its
    waveform_rms image by less than the certified radius, in the worst direction (orthogonal to
    the window) and in random ones."""
    gen = torch.Generator().manual_seed(0)
    d = 16000
    x = torch.randn(1, d, generator=gen) * 0.05 * norm_scale
    model = ThresholdClassifier(0.0)
    for radius in (0.05, 0.5, 2.0):
        snr = smoothing.guaranteed_snr_db(float(x.norm()), radius, "waveform_rms", d)
        assert snr is not None and np.isfinite(snr)
        size = float(x.norm()) * 10 ** (-snr / 20)
        z = smoothing.encode(model, x, "waveform_rms")
        for direction in range(20):
            e = torch.randn(1, d, generator=gen)
            if direction == 0:  # orthogonal to x: the direction that turns the image the most
                e = e - (e * x).sum() / (x * x).sum() * x
            e = e / e.norm()
            moved = smoothing.encode(model, x + 0.999 * size * e, "waveform_rms") - z
            assert float(moved.norm()) < radius
        # and the bound is tight: a little louder, orthogonally, leaves the radius
        e = torch.randn(1, d, generator=gen)
        e = e - (e * x).sum() / (x * x).sum() * x
        e = e / e.norm()
        moved = smoothing.encode(model, x + 1.05 * size * e, "waveform_rms") - z
        assert float(moved.norm()) > radius
    # in the plain waveform representation it is ||x|| / R
    assert smoothing.guaranteed_snr_db(10.0, 0.1, "waveform", d) == pytest.approx(40.0)
    assert smoothing.guaranteed_snr_db(10.0, 0.1, "logmel", d) is None
