"""`avsentry train-video` end to end on a tiny budget: it trains, evaluates on held-out clips,
exports ONNX, calibrates, and writes a card that loads as a video model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from avsentry.pipelines.recognizers import load_recognizer, read_manifest
from avsentry.tools import videosynth


def test_train_video_writes_a_loadable_calibrated_card(tmp_path: Path) -> None:
    out = tmp_path / "actions"
    args = [
        "train-video",
        "--out",
        str(out),
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--calibration-clips",
        "44",
    ]
    r = subprocess.run(
        [sys.executable, "-m", "avsentry", *args, "--device", "cpu", "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert "held-out top-1" in r.stdout and "threshold" in r.stdout
    card = json.loads((out / "card.json").read_text())
    assert card["modality"] == "video" and card["heldout_accuracy"]["clips"] == 550
    assert card["detector"]["config"]["smoothing"]["representation"] == "pixels"
    m = read_manifest(out / "card.json")
    assert m.calibrated
    x, _ = videosynth.render_batch(videosynth.HELDOUT_SEED, 0, 2)
    p_torch = load_recognizer(out / "card.json", device="cpu").predict(x.astype(np.float32) / 255)
    p_onnx = load_recognizer(out / "card.json", backend="onnx", device="cpu").predict(
        x.astype(np.float32) / 255
    )
    np.testing.assert_allclose(p_torch, p_onnx, atol=1e-4)


def test_clips_are_a_pure_function_of_seed_and_index() -> None:
    a, ya = videosynth.render_batch(5, 30, 3)
    b, yb = videosynth.render_batch(5, 30, 3)
    c, _ = videosynth.render_batch(6, 30, 3)
    np.testing.assert_array_equal(a, b)
    assert list(ya) == list(yb) == [30 % 11, 31 % 11, 32 % 11]
    assert not np.array_equal(a, c)
