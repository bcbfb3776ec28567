"""The embedded video recognizer ('actions'): its backends agree, it names held-out clips, and the
calibrated detector lets clean clips through and flags a clip attacked in pixel space."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from avsentry.pipelines.detection import Detector, DetectorConfig
from avsentry.pipelines.recognizers import load_recognizer, read_manifest
from avsentry.tools import videosynth


@functools.cache
def _heldout(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Held-out clips (another generator seed stream than training), float32 in [0, 1]."""
    clips, labels = videosynth.render_batch(videosynth.HELDOUT_SEED, 1000, count)
    return clips.astype(np.float32) / 255.0, labels


def test_card_describes_a_video_model() -> None:
    m = read_manifest("actions")
    assert m.spec.modality == "video"
    assert m.spec.window_shape == (16, 112, 112, 3)
    assert m.spec.labels == videosynth.ACTIONS
    assert m.calibrated and m.extra["heldout_accuracy"]["top1"] >= 0.95
    with pytest.raises(ValueError, match="takes video, not audio"):
        _ = m.spec.sample_rate_hz


def test_torch_and_onnx_agree_and_name_held_out_clips() -> None:
    x, y = _heldout(44)
    torch_rec = load_recognizer("actions", device="cpu")
    onnx_rec = load_recognizer("actions", backend="onnx", device="cpu")
    p_torch, p_onnx = torch_rec.predict(x), onnx_rec.predict(x)
    np.testing.assert_allclose(p_torch, p_onnx, atol=1e-4)
    # the card's 550-clip figure is >= 0.95; 44 clips of another part of the stream, a looser bound
    assert (p_torch.argmax(1) == y).mean() >= 0.9


def test_detector_passes_clean_clips_and_flags_a_pixel_attack() -> None:
    m = read_manifest("actions")
    cfg, calibrated = DetectorConfig.from_card(m.detector)
    assert calibrated
    rec = load_recognizer("actions", device="cpu")
    det = Detector(rec, cfg)
    x, y = _heldout(11)
    keep = rec.predict(x).argmax(1) == y
    x, y = x[keep], y[keep]
    clean = det.analyze(x)
    assert sum(v.flagged for v in clean) <= 1
    # untargeted L-inf PGD in pixel space, 4/255 (under the 8-bit step of a few grey levels)
    eps, step = 4 / 255, 1 / 255
    xt = torch.from_numpy(x)
    adv = xt.clone()
    target = torch.from_numpy(y)
    for _ in range(10):
        adv.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(rec.logits(adv), target)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = (xt + (adv.detach() + step * grad.sign() - xt).clamp(-eps, eps)).clamp(0, 1)
    fooled = rec.predict(adv.numpy()).argmax(1) != y
    assert fooled.mean() >= 0.8
    verdicts = det.analyze(adv.numpy()[fooled])
    assert np.mean([v.flagged for v in verdicts]) >= 0.8, [v.reasons for v in verdicts]


def test_pixel_noise_drawn_after_the_pool_is_the_same_smoothed_classifier() -> None:
    """Smoothing draws its pixel noise on the pooled clip (z = 2 pool(x), z + sigma N): without
    noise z gives the raw logits, z is 1-Lipschitz in x, and the votes match those of full-frame
    noise pool(x + sigma N) within Monte-Carlo error."""
    rec = load_recognizer("actions", device="cpu")
    net = rec.module
    x, _ = _heldout(6)
    xt = torch.from_numpy(x[5:])  # a clip whose votes split under sigma 0.2 (measured about 2:1)
    with torch.no_grad():
        z = net.encode(xt, "pixels")
        torch.testing.assert_close(net.logits_from(z, "pixels"), net(xt), rtol=1e-5, atol=1e-5)
        delta = torch.randn(xt.shape, generator=torch.Generator().manual_seed(1)) * 0.05
        assert (net.encode(xt + delta, "pixels") - z).norm() <= delta.norm()
        sigma, n = 0.2, 400
        g = torch.Generator().manual_seed(0)
        full = net(xt[:1] + sigma * torch.randn((n, *xt.shape[1:]), generator=g)).argmax(1)
        pooled = net.logits_from(
            z[:1] + sigma * torch.randn((n, *z.shape[1:]), generator=g), "pixels"
        ).argmax(1)
    p_full = torch.bincount(full, minlength=11).double() / n
    p_pooled = torch.bincount(pooled, minlength=11).double() / n
    assert p_full.max() < 0.95  # the votes spread, so a wrong noise scale would show
    # each vote share within 5 standard errors of the binomial (n = 400: 0.125 at p = 0.5)
    assert torch.all((p_full - p_pooled).abs() <= 5 * torch.sqrt(p_full * (1 - p_full) / n * 2) + 1e-9)
