"""`avsentry evaluate --server`: a running server's verdicts judge the adversarials."""

from __future__ import annotations

import json

import numpy as np

from avsentry.cli import main
from avsentry.pipelines.detection import Detector, DetectorConfig
from avsentry.pipelines.recognizers import read_manifest
from avsentry.stream.oracle import RemoteGuard


def test_remote_guard_gives_one_verdict_per_window_like_the_local_detector(
    client, model_torch, heldout_speech
) -> None:
    guard = RemoteGuard(client, model="digits")
    x = heldout_speech["x"][:5]
    remote = guard(x)
    cfg, _ = DetectorConfig.from_card(read_manifest("digits").extra["detector"])
    local = Detector(model_torch, cfg).analyze(x)
    assert len(remote) == 5
    assert [v.raw_label for v in remote] == [v.raw_label for v in local]
    # the raw path is deterministic: same softmax, so codec distances agree to float precision
    for r, lo in zip(remote, local, strict=True):
        assert [d.name for d in r.defended] == [d.name for d in lo.defended]
        assert (
            r.defended[0].distance == np.float32(lo.defended[0].distance)
            or abs(r.defended[0].distance - lo.defended[0].distance) < 1e-4
        )


def test_evaluate_through_a_running_server(server, tmp_path) -> None:
    out = tmp_path / "remote"
    argv = ["evaluate", "--device", "cpu", "--server", f"127.0.0.1:{server.port}", "--clips", "10"]
    argv += ["--attack", "pgd:eps=30db,steps=10", "--no-certify", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    (pgd,) = report["attacks"]
    assert pgd["attacked"] >= 8 and pgd["success_rate"] >= 0.7
    assert report["summary"]["clean_accuracy"] >= 0.9
