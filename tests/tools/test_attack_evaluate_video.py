"""``avsentry attack`` and ``evaluate`` on the embedded action model, as a user runs them: real
subprocesses, real H.264 (the defence, and BPDA through it in the adaptive attack), files on disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from avsentry.pipelines.video_io import read_video
from avsentry.tools.attacks.catalog import check_modality, parse_attack_spec


def avsentry(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "avsentry", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def attacked(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("video-attacks")
    r = avsentry(
        "attack",
        "--model",
        "actions",
        "--device",
        "cpu",
        "--clips",
        "6",
        "--attack",
        "frame_saliency:mode=refresh,eps=8/255",
        "--attack",
        "adaptive:eps=8/255,steps=10,eot=1",
        "--out",
        str(out),
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    assert "frame_saliency-refresh-8of255: success" in r.stdout and "mean frames changed" in r.stdout
    return out


def test_attack_writes_exact_clips_mp4_gif_and_the_manifest(attacked: Path) -> None:
    rows = [json.loads(line) for line in (attacked / "manifest.jsonl").read_text().splitlines()]
    saliency = [r for r in rows if r["attack"] == "frame_saliency"]
    assert saliency and all(r["model"] == "actions" for r in rows)
    # documented budget: 8/255 a frame with refresh fools most clips, touching a few frames
    assert np.mean([r["success"] for r in saliency]) >= 0.8
    assert all(0 < r["frames_changed"] < 16 for r in saliency if r["success"])
    assert all(r["linf"] <= 8 / 255 + 1e-6 for r in rows)
    first = saliency[0]
    adv = np.load(attacked / first["file"])
    clean = np.load(attacked / first["clean_file"])
    assert adv.shape == clean.shape == (16, 112, 112, 3) and adv.dtype == np.float32
    changed = np.abs(adv - clean).reshape(16, -1).max(axis=1) > 0
    assert int(changed.sum()) == first["frames_changed"]
    for suffix in (".mp4", ".gif"):
        frames, fps = read_video((attacked / first["file"]).with_suffix(suffix))
        assert frames.shape == (16, 112, 112, 3) and fps == pytest.approx(25, rel=0.02)


def test_evaluate_judges_the_manifest_with_frames_and_the_h264_table(attacked: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    r = avsentry(
        "evaluate",
        "--model",
        "actions",
        "--device",
        "cpu",
        "--adversarial",
        str(attacked / "manifest.jsonl"),
        "--no-certify",
        "--out",
        str(out),
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    attacks = {a["attack"]: a for a in report["attacks"]}
    fs = attacks["frame_saliency-refresh-8of255"]
    assert fs["frames_per_clip"] == 16 and 0 < fs["mean_frames_changed"] < 16
    rows = report["h264_restoration"]["rows"]
    assert [row["crf"] for row in rows] == [18, 23, 28, 33, 38, 43]
    assert all(0 <= row["clean_accuracy"] <= 1 for row in rows)
    md = (out / "report.md").read_text()
    assert "Does H.264 alone restore the clean label?" in md and "frames changed" in md
    for plot in ("roc.png", "examples.png", "detection_vs_snr.png"):
        assert (out / plot).stat().st_size > 1000


def test_attack_specs_know_their_modality() -> None:
    spec = parse_attack_spec("frame_saliency:mode=frames,frames=0/5/9,eps=4/255")
    assert spec.attack.frames == (0, 5, 9) and spec.attack.eps == pytest.approx(4 / 255)
    assert spec.label == "frame_saliency-frames-4of255"
    check_modality(spec, "video")
    check_modality(parse_attack_spec("pgd:eps=4/255"), "video")
    with pytest.raises(ValueError, match="frame_saliency works on video models, not audio"):
        check_modality(spec, "audio")
    with pytest.raises(ValueError, match="cw works on audio models, not video"):
        check_modality(parse_attack_spec("cw"), "video")


def test_audio_attacks_on_the_video_model_are_refused_in_one_line(tmp_path: Path) -> None:
    r = avsentry(
        "attack", "--model", "actions", "--device", "cpu", "--attack", "jsma", "--out", str(tmp_path)
    )
    assert r.returncode == 1 and "jsma works on audio models, not video" in r.stderr
    assert "Traceback" not in r.stderr
