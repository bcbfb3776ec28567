"""Video defence transforms on real codecs: shape, dtype, frame count and order kept, input
untouched, deterministic, close to the input, identity (BPDA) gradient, parameters vetted."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from avsentry.pipelines.transforms import (
    Transform,
    make_transform,
    transform_defaults,
    transform_for_input,
    transform_names,
)
from avsentry.pipelines.types import AudioInput, VideoInput
from avsentry.tools import videosynth

VIDEO = transform_names("video")
# Floors on the PSNR (dB) of the output against two synthetic action clips at default settings,
# 3 dB under what was measured (h264 crf 28: 27.8, jpeg q75: 28.5, median of 3: 30.4,
# rescale 0.5: 29.4).
PSNR_FLOOR_DB = {"h264": 24.8, "jpeg": 25.5, "median": 27.4, "rescale": 26.4}


@functools.cache
def _transform(name: str) -> Transform:
    return make_transform(name, fps=25.0)


@pytest.fixture(scope="module")
def clips() -> np.ndarray:
    """Two synthetic action clips, float32 RGB in [0, 1]."""
    a = videosynth.render("move_left", 11, 0)
    b = videosynth.render("rotate_cw", 11, 4)
    return np.stack([a, b]).astype(np.float32) / 255.0


def psnr(reference: np.ndarray, estimate: np.ndarray) -> float:
    mse = float(np.mean((reference.astype(np.float64) - estimate) ** 2))
    return 10 * np.log10(1.0 / mse)


@pytest.mark.parametrize("name", VIDEO)
def test_shape_dtype_and_input_untouched(name: str, clips: np.ndarray) -> None:
    before = clips.copy()
    out = _transform(name).apply(clips, np.random.default_rng(0))
    assert isinstance(_transform(name), Transform)
    assert out.shape == clips.shape and out.dtype == np.float32
    assert np.all((out >= 0) & (out <= 1))
    np.testing.assert_array_equal(clips, before)
    assert not np.shares_memory(out, clips)


@pytest.mark.parametrize("name", VIDEO)
def test_close_to_the_input_and_deterministic(name: str, clips: np.ndarray) -> None:
    out = _transform(name).apply(clips, np.random.default_rng(0))
    again = _transform(name).apply(clips.copy(), np.random.default_rng(5))
    np.testing.assert_array_equal(out, again)
    value = psnr(clips, out)
    assert value > PSNR_FLOOR_DB[name], f"{name}: PSNR {value:.1f} dB"
    assert not np.array_equal(out, clips)  # it does transform


@pytest.mark.parametrize("name", VIDEO)
def test_batch_equals_per_item(name: str, clips: np.ndarray) -> None:
    both = _transform(name).apply(clips, np.random.default_rng(0))
    for i in range(len(clips)):
        one = _transform(name).apply(clips[i : i + 1], np.random.default_rng(0))
        np.testing.assert_allclose(one[0], both[i], atol=1e-6)


@pytest.mark.parametrize("name", ["h264", "jpeg", "rescale"])
def test_frames_keep_their_order(name: str) -> None:
    """Every frame has its own brightness; frame i of the output is closest to frame i of the
    input (a codec that dropped, duplicated or reordered frames would fail)."""
    levels = np.linspace(0.1, 0.9, 13)
    rng = np.random.default_rng(3)
    clip = np.clip(levels[:, None, None, None] + rng.normal(0, 0.02, (13, 48, 64, 3)), 0, 1)
    out = _transform(name).apply(clip[None].astype(np.float32), np.random.default_rng(0))[0]
    distance = np.abs(out.mean(axis=(1, 2, 3))[:, None] - clip.mean(axis=(1, 2, 3))[None, :])
    assert list(distance.argmin(axis=1)) == list(range(13))


def test_h264_handles_odd_sizes_and_single_frames() -> None:
    rng = np.random.default_rng(0)
    for shape in [(1, 1, 33, 45, 3), (2, 5, 17, 31, 3)]:
        out = _transform("h264").apply(rng.uniform(0, 1, shape).astype(np.float32), rng)
        assert out.shape == shape


def test_temporal_median_removes_a_single_frame_perturbation(clips: np.ndarray) -> None:
    """A perturbation on one frame only (what a one-frame saliency attack makes) is gone after
    the median, while the clean clip is kept close."""
    clean = clips[:1]
    attacked = clean.copy()
    attacked[0, 7] = np.clip(
        attacked[0, 7] + 0.2 * np.sign(np.random.default_rng(0).normal(size=attacked[0, 7].shape)), 0, 1
    )
    median = _transform("median")
    out_clean = median.apply(clean, np.random.default_rng(0))
    out_attacked = median.apply(attacked, np.random.default_rng(0))
    residual = np.abs(out_attacked[0, 7] - out_clean[0, 7]).mean()
    perturbation = np.abs(attacked[0, 7] - clean[0, 7]).mean()
    assert residual < 0.15 * perturbation  # measured 0.078 (the sensor noise moves the median)


@pytest.mark.parametrize("name", VIDEO)
def test_gradient_is_identity_bpda(name: str, clips: np.ndarray) -> None:
    x = torch.tensor(clips[:1], requires_grad=True)
    y = _transform(name).differentiable(x, np.random.default_rng(0))
    np.testing.assert_array_equal(
        y.detach().numpy(), _transform(name).apply(clips[:1], np.random.default_rng(0))
    )
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    (y * upstream).sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, upstream, rtol=0, atol=0)


@pytest.mark.parametrize("name", VIDEO)
def test_rejects_bad_batches(name: str) -> None:
    t = _transform(name)
    with pytest.raises(ValueError, match="expected"):
        t.apply(np.zeros((2, 16, 3), np.float32), np.random.default_rng(0))
    bad = np.zeros((1, 2, 8, 8, 3), np.float32)
    bad[0, 1, 2, 2, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        t.apply(bad, np.random.default_rng(0))


@pytest.mark.parametrize(
    "spec, message",
    [
        ("h264:crf=60", "crf must be in"),
        ("h264:preset=warp", "preset must be one of"),
        ("h264:gop=0", "gop must be in"),
        ("jpeg:quality=0", "quality must be in"),
        ("rescale:factor=1.5", "factor must be in"),
        ("median:frames=4", "frames must be odd"),
        ("h264:fps=30", "fps is not a transform parameter"),
    ],
)
def test_bad_parameters_fail_at_construction(spec: str, message: str) -> None:
    from avsentry.pipelines.transforms import transform_from_spec

    with pytest.raises(ValueError, match=message):
        transform_from_spec(spec, fps=25.0)


def test_transforms_are_built_for_a_models_modality() -> None:
    video = VideoInput(frames=16, height=112, width=112, fps=30.0)
    audio = AudioInput(sample_rate_hz=16000, window_samples=16000)
    assert transform_for_input("h264", video).fps == 30.0  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="h264 is a video transform; this model takes audio"):
        transform_for_input("h264", audio)
    with pytest.raises(ValueError, match="mp3 is an audio transform; this model takes video"):
        transform_for_input("mp3", video)
    assert set(transform_defaults("h264")) == {"crf", "preset", "gop"}
