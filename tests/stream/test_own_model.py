"""The README's "Guard your own model in 5 minutes", step by step, with the commands it gives: a
small keyword spotter trained here and exported to TorchScript and ONNX, its manifest, refusal
while uncalibrated, ``avsentry calibrate`` on a folder of clean WAVs, a real server on 127.0.0.1
serving the card (ONNX Runtime), ``avsentry stream`` reading the verdicts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from avsentry.stream.commands import local_server
from avsentry.stream.config import ServerConfig, load_config

AVSENTRY = [sys.executable, "-m", "avsentry"]


def run(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, check=check, timeout=600)


@pytest.fixture(scope="module")
def kws(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tutorial")
    run(sys.executable, "-m", "avsentry.tools.tutorial", "my-kws", cwd=d)
    return d


def test_guard_your_own_model(kws) -> None:
    clean_yes = "my-kws/recordings/clean/yes/0000.wav"
    # uncalibrated: refused with what to do, or run on request with every verdict saying so
    r = run(
        *AVSENTRY, "check", "--model", "my-kws/kws.toml", "--device", "cpu", clean_yes, cwd=kws, check=False
    )
    assert (
        r.returncode == 1 and "avsentry calibrate --model" in r.stderr and "--allow-uncalibrated" in r.stderr
    )
    r = run(
        *AVSENTRY, "check", "--model", "my-kws/kws.toml", "--allow-uncalibrated", "--json", clean_yes, cwd=kws
    )
    (v,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert (
        v["threshold"] is None
        and not v["flagged"]
        and any(s.startswith("uncalibrated") for s in v["reasons"])
    )
    with pytest.raises(ValueError, match="allow-uncalibrated"):
        with local_server(ServerConfig(port=0, device="cpu", model=str(kws / "my-kws/kws.toml"), max_load=0)):
            pass

    calibrate = [*AVSENTRY, "calibrate", "--model", "my-kws/kws.toml", "--clean", "my-kws/recordings/clean"]
    calibrate += ["--other", "my-kws/recordings/other", "--device", "cpu", "--quiet"]
    r = run(*calibrate, cwd=kws)
    assert "threshold" in r.stdout and "wrote my-kws/kws.card.json" in r.stdout
    card = json.loads((kws / "my-kws/kws.card.json").read_text())
    assert (kws / "my-kws/kws.card.scores.png").stat().st_size > 0
    det = card["detector"]
    assert det["threshold"] > 0 and set(det["calibration_by_group"]) == {"commands", "other", "no_speech"}
    assert card["calibration"]["accuracy"]["raw"] >= 0.8  # the tutorial's model works on unseen voices
    again = run(*calibrate, cwd=kws, check=False)  # never silently overwritten
    assert again.returncode == 1 and "--force" in again.stderr

    cfg = ServerConfig(
        port=0, device="cpu", backend="onnx", model=str(kws / "my-kws/kws.card.json"), max_load=0
    )
    with local_server(cfg) as server:
        r = run(
            *AVSENTRY,
            "stream",
            "--server",
            f"127.0.0.1:{server.port}",
            "--model",
            "my-kws",
            "--rate",
            "0",
            "--json",
            clean_yes,
            cwd=kws,
        )
    (v,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert v["model"] == "my-kws" and v["raw_label"] == "yes" and v["calibrated"] is True
    assert v["threshold"] == pytest.approx(det["threshold"], rel=1e-6)
    assert [d["name"].split(":")[0] for d in v["defended"]] == [
        t.split(":")[0] for t in det["config"]["transforms"]
    ] + (["smoothing"] if det["config"].get("smoothing") else [])


def test_allow_uncalibrated_is_a_boolean(tmp_path) -> None:
    p = tmp_path / "server.toml"
    p.write_text('[model]\nallow_uncalibrated = "false"\n', encoding="utf-8")
    with pytest.raises(ValueError, match="allow_uncalibrated must be true or false"):
        load_config(p)
