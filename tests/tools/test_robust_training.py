"""Adversarial training options of `avsentry train`: the training attack respects its budget and
hurts the model more than noise of the same size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avsentry.pipelines.recognizers.digitnet import DigitNet, DigitNetConfig
from avsentry.pipelines.recognizers.manifest import read_manifest
from avsentry.tools.attacks import Budget
from avsentry.tools.train import RECIPE_VERSION, TrainConfig, adversarial_batch, lineage, version_after


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
    with pytest.raises(ValueError, match="consistency_weight needs waveform_noise_sigma"):
        TrainConfig(consistency_weight=1.0)
    with pytest.raises(ValueError, match="consistency_copies"):
        TrainConfig(waveform_noise_sigma=0.5, consistency_weight=1.0, consistency_copies=0)


def test_consistency_term_is_zero_for_agreeing_members_and_pulls_them_together(heldout_speech) -> None:
    """The consistency term (Jeong & Shin) over a window and its waveform_rms noisy copies: zero
    when the model answers every member alike (a constant model), positive for the shipped model
    on real speech, and a few gradient steps on it alone bring the raw and noisy predictions
    closer."""
    from avsentry.tools.train import consistency_loss

    x = torch.tensor(heldout_speech["x"][:16])
    cfg = TrainConfig(waveform_noise_sigma=0.6, consistency_weight=1.0, consistency_copies=2)

    class Constant(torch.nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return torch.zeros(len(w), 12) + torch.arange(12.0)

    assert consistency_loss(Constant(), x, cfg, torch.Generator().manual_seed(0)).item() == pytest.approx(
        0, abs=1e-6
    )
    m = read_manifest("digits")
    net = DigitNet(DigitNetConfig.from_dict(m.extra["config"]))
    net.load_state_dict(torch.load(m.path_for("torch"), map_location="cpu", weights_only=True))
    net.eval()  # fixed BatchNorm statistics: the term alone moves the weights
    before = consistency_loss(net, x, cfg, torch.Generator().manual_seed(1)).item()
    assert before > 0
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    for step in range(5):
        opt.zero_grad()
        consistency_loss(net, x, cfg, torch.Generator().manual_seed(100 + step)).backward()
        opt.step()
    with torch.no_grad():
        after = consistency_loss(net, x, cfg, torch.Generator().manual_seed(1)).item()
    assert after < before, (before, after)


def test_a_fine_tuned_card_records_every_stage_behind_its_weights(tmp_path) -> None:
    """``lineage`` follows ``training.init`` from card to card, oldest first, and stops with a
    note where a card is missing; the fine-tune's version is one after its init's."""

    def stage(name: str, init: str | None, version: int) -> str:
        d = tmp_path / name
        d.mkdir()
        card = {"version": version, "training": {"steps": version * 100, "init": init}}
        (d / "card.json").write_text(json.dumps(card), encoding="utf-8")
        return str(d / "model.pt")

    base = stage("base", None, 3)
    first = stage("first", base, 4)
    second = stage("second", first, 5)
    got = lineage(second)
    assert [s["weights"] for s in got] == [base, first, second]
    assert [s["training"]["steps"] for s in got] == [300, 400, 500]
    assert lineage(None) == []
    orphan = lineage(str(tmp_path / "nowhere" / "model.pt"))
    assert len(orphan) == 1 and "no " in orphan[0]["training"]
    # a card that already carries its lineage is not walked again
    (tmp_path / "first" / "card.json").write_text(
        json.dumps({"version": 4, "training": {"init": base}, "lineage": [{"weights": "v0"}]}),
        encoding="utf-8",
    )
    assert [s["weights"] for s in lineage(second)] == ["v0", first, second]
    # a fine-tune is one version after its init; from scratch, the recipe's version
    assert version_after(second) == 6
    assert version_after(None) == RECIPE_VERSION
    # the model card of a fine-tune, lineage and all, is a manifest the tools accept
    card = json.loads(read_manifest("digits").path.read_text(encoding="utf-8"))
    card["lineage"] = got
    (tmp_path / "second" / "card.json").write_text(json.dumps(card), encoding="utf-8")
    assert read_manifest(tmp_path / "second" / "card.json").extra["lineage"] == got
