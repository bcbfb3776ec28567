"""`avsentry attack` and `avsentry evaluate` as a user runs them: adversarial WAVs and their
manifest, a report with plots and JSON, reproducible with a seed, from a folder of recordings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from avsentry.cli import main
from avsentry.pipelines.audio_io import read_audio
from avsentry.pipelines.detection import Detector, DetectorConfig
from avsentry.pipelines.recognizers import read_manifest
from avsentry.tools import synth
from avsentry.tools.attacks.catalog import parse_attack_spec
from avsentry.tools.evaluate import detection_metrics, evaluate

TINY_CERT = [
    "--certify-clips", "4", "--certify-n", "16", "--certify-n0", "4", "--certify-sigmas", "0.1",
    "--certify-representations", "logmel", "--detection-sigmas", "0.02",
]  # fmt: skip
MANIFEST_FIELDS = {
    "file", "clean_file", "source", "index", "model", "true_label", "target", "attack", "label", "spec",
    "parameters", "seed", "adversarial_label", "success", "l2", "linf", "l0", "snr_db", "queries",
}  # fmt: skip


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory, heldout_speech, write_wav) -> Path:
    """A user's folder of labelled recordings: DIR/<label>/*.wav, 16-bit, 16 kHz."""
    root = tmp_path_factory.mktemp("clean")
    x, y = heldout_speech["x"], heldout_speech["y"]
    for k in np.flatnonzero(y < 10)[::4][:10]:
        write_wav(root / synth.LABELS[y[k]] / f"clip{k}.wav", x[k], 16000)
    return root


@pytest.fixture(scope="module")
def attacked(tmp_path_factory, clean_dir) -> Path:
    out = tmp_path_factory.mktemp("attacks")
    argv = ["attack", "--device", "cpu", "--clean", str(clean_dir), "--clips", "10", "--quiet"]
    argv += [
        "--attack",
        "fgsm:eps=30db",
        "--attack",
        "pgd:eps=25db,steps=20,target=random",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    return out


def test_attack_writes_exact_float_wavs_and_a_complete_manifest(attacked) -> None:
    rows = [json.loads(line) for line in (attacked / "manifest.jsonl").read_text().splitlines()]
    assert {r["label"] for r in rows} == {"fgsm-linf-30db", "pgd-linf-25db-to-random"}
    for r in rows:
        assert set(r) == MANIFEST_FIELDS
        adv = read_audio(attacked / r["file"], sample_rate_hz=16000)
        clean = read_audio(attacked / r["clean_file"], sample_rate_hz=16000)
        d = adv - clean
        # the file holds the adversarial exactly: its perturbation is the one recorded
        assert np.abs(d).max() == pytest.approx(r["linf"], rel=1e-4, abs=1e-7)
        assert r["snr_db"] >= (30 if r["attack"] == "fgsm" else 25) - 0.01
        if r["target"] is not None:
            assert r["target"] != r["true_label"]
            assert r["success"] == (r["adversarial_label"] == r["target"])
    pgd = [r for r in rows if r["attack"] == "pgd"]
    assert np.mean([r["success"] for r in pgd]) >= 0.7


def test_evaluate_judges_a_manifest_and_writes_the_report(attacked, tmp_path) -> None:
    out = tmp_path / "report"
    argv = ["evaluate", "--device", "cpu", "--adversarial", str(attacked / "manifest.jsonl"), "--quiet"]
    assert main([*argv, "--out", str(out), *TINY_CERT]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [a["attack"] for a in report["attacks"]] == ["fgsm-linf-30db", "pgd-linf-25db-to-random"]
    pgd = report["attacks"][1]
    assert pgd["success_rate"] >= 0.7 and 0 <= pgd["combined"]["auc"] <= 1
    assert set(pgd["per_transform"]) == {"mp3", "opus", "aac", "noise", "smoothing"}
    assert report["certification"]["curves"][0]["representation"] == "logmel"
    md = (out / "report.md").read_text()
    assert "| pgd-linf-25db-to-random |" in md and "Certified detection" in md
    for png in ("roc.png", "detection_vs_snr.png", "examples.png", "certified_accuracy.png"):
        assert (out / png).stat().st_size > 10_000, png
        assert f"({png})" in md


def test_evaluation_is_reproducible_with_a_seed(model_torch, heldout_speech) -> None:
    cfg, _ = DetectorConfig.from_card(read_manifest("digits").extra["detector"])
    det = Detector(model_torch, cfg)
    x, y = heldout_speech["x"][:12], heldout_speech["y"][:12]
    specs = [parse_attack_spec("pgd:eps=30db,steps=5"), parse_attack_spec("fgm:eps=30db,target=random")]
    a = evaluate(det, x, y, specs, seed=4, progress=False)
    b = evaluate(det, x, y, specs, seed=4, progress=False)

    def numbers(ev):  # noqa: ANN001, ANN202
        return json.dumps([{k: v for k, v in m.items() if k != "seconds"} for m in ev.to_json()["attacks"]])

    assert numbers(a) == numbers(b)
    np.testing.assert_array_equal(a.outcomes[0].result.adversarial, b.outcomes[0].result.adversarial)


def test_detection_metrics_on_known_scores() -> None:
    clean = np.linspace(0, 1, 1000)
    m = detection_metrics(clean, np.full(10, 2.0))
    assert m["auc"] == 1.0 and m["tpr_at_fpr_0.01"] == 1.0
    m = detection_metrics(clean, np.array([0.5, 0.995, 2.0, np.nan]))
    assert m["tpr_at_fpr_0.01"] == 0.75  # above the 99th percentile (0.991): 0.995, 2.0 and the NaN
    assert detection_metrics(clean, np.array([]))["auc"] is None
