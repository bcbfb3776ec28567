"""Adversarial training options of `avsentry train`: the training attack respects its budget and
hurts the model more than noise of the same size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avsentry.pipelines.recognizers.digitnet import DigitNet, DigitNetConfig
from avsentry.pipelines.recognizers.manifest import read_manifest
from avsentry.tools.attacks import Budget
from avsentry.tools.train import TrainConfig, adversarial_batch


@pytest.fixture(scope="module")
def digitnet() -> DigitNet:
    m = read_manifest("digits")
    net = DigitNet(DigitNetConfig.from_dict(m.extra["config"]))
    net.load_state_dict(torch.load(m.path_for("torch"), map_location="cpu", weights_only=True))
    return net.train()


@pytest.mark.parametrize("kind", ["fgsm", "pgd"])
def test_training_attack_respects_its_budget_and_raises_the_loss(digitnet, heldout_speech, kind) -> None:
    x = torch.tensor(heldout_speech["x"][:12])
    y = torch.tensor(heldout_speech["y"][:12])
    cfg = TrainConfig(adversarial=kind, adv_snr_db=30.0, adv_steps=3)
    adv = adversarial_batch(digitnet, x, y, cfg, torch.Generator().manual_seed(0))
    eps = Budget(norm="linf", snr_db=30.0).per_item(x.numpy())
    assert np.all((adv - x).abs().amax(1).numpy() <= eps + 1e-6)
    assert digitnet.training  # the attack ran BatchNorm in eval mode and restored the mode
    digitnet.eval()
    with torch.no_grad():
        noise = x + torch.sign(torch.randn(x.shape)) * torch.tensor(eps)[:, None]
        loss = {
            k: F.cross_entropy(digitnet(v), y).item()
            for k, v in (("clean", x), ("adv", adv), ("noise", noise))
        }
    digitnet.train()
    assert loss["adv"] > 2 * max(loss["clean"], loss["noise"]), loss


def test_robust_training_options_are_validated() -> None:
    with pytest.raises(ValueError, match="adversarial"):
        TrainConfig(adversarial="trades")
    with pytest.raises(ValueError, match="adv_alpha"):
        TrainConfig(adversarial="fgsm", adv_alpha=1.5)
    with pytest.raises(ValueError, match="waveform_noise_sigma"):
        TrainConfig(waveform_noise_sigma=-0.1)
