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
