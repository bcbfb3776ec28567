"""Bring-your-own-model: manifests, every backend and input layout, load-time checks, and the
embedded model through ONNX giving the torch backend's verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from avsentry.pipelines.detection import UNCALIBRATED_REASON, Detector, DetectorConfig
from avsentry.pipelines.recognizers import load_recognizer, read_manifest

WINDOW = 4000
LABELS = ["a", "b", "_unknown_"]


class Tiny(nn.Module):
    """(batch, samples) -> 3 logits; or (batch, 1, samples) with ``channel``; ``scale`` undone."""

    def __init__(self, *, channel: bool = False, scale: float = 1.0, outputs: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv1d(1, 8, 64, stride=32)
        self.fc = nn.Linear(8, outputs)
        self.channel, self.scale = channel, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x / self.scale
        if not self.channel:
            x = x.unsqueeze(1)
        return self.fc(torch.relu(self.conv(x)).mean(-1))


def export(tmp: Path, kind: str, module: nn.Module, example: torch.Tensor, *, dynamic: bool = True) -> str:
    module.eval()
    if kind == "torchscript":
        torch.jit.script(module).save(str(tmp / "m.pt"))
        return "m.pt"
    if kind == "torch_export":
        shapes = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic else None
        torch.export.save(torch.export.export(module, (example,), dynamic_shapes=shapes), str(tmp / "m.pt2"))
        return "m.pt2"
    torch.onnx.export(
        module,
        (example,),
        str(tmp / "m.onnx"),
        input_names=["audio"],
        dynamic_axes={"audio": {0: "batch"}} if dynamic else None,
        dynamo=False,
    )
    return "m.onnx"


def manifest(tmp: Path, backend: str, path: str, fmt: str = "", extra: str = "", labels=LABELS) -> Path:
    table = f'[backends.{backend}]\npath = "{path}"\n' + (f'format = "{fmt}"\n' if fmt else "")
    text = (
        f'name = "tiny"\nlabels = {json.dumps(labels)}\n\n[input]\nsample_rate_hz = 16000\n'
        f"window_samples = {WINDOW}\n{extra}\n{table}"
    )
    p = tmp / "tiny.toml"
    p.write_text(text, encoding="utf-8")
    return p


@pytest.fixture
def windows(rng) -> np.ndarray:
    return (0.1 * rng.standard_normal((7, WINDOW))).astype(np.float32)


def expected(module: nn.Module, x: np.ndarray, *, channel: bool = False, scale: float = 1.0) -> np.ndarray:
    t = torch.from_numpy(x) * scale
    with torch.no_grad():
        return module(t.unsqueeze(1) if channel else t).softmax(-1).numpy()


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize(
    ("backend", "kind"), [("torch", "torchscript"), ("torch", "torch_export"), ("onnx", "onnx")]
)
def test_every_backend_runs_with_default_settings(tmp_path, windows, backend, kind) -> None:
    module = Tiny()
    path = export(tmp_path, kind, module, torch.zeros(2, WINDOW))
    rec = load_recognizer(
        manifest(tmp_path, backend, path, kind if backend == "torch" else ""), backend=backend
    )
    np.testing.assert_allclose(rec.predict(windows), expected(module, windows), atol=1e-5)
    # the default defence (no [defence], no card) runs on it: waveform smoothing, no threshold
    m = read_manifest(tmp_path / "tiny.toml")
    cfg, calibrated = DetectorConfig.from_card(m.detector)
    assert not calibrated and cfg.threshold is None and cfg.smoothing.representation == "waveform"
    v = Detector(rec, cfg).analyze(windows[:2])
    assert all(UNCALIBRATED_REASON in w.reasons and not w.flagged for w in v)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_onnx_layouts_fixed_batch_and_scale(tmp_path, windows) -> None:
    # a (batch, 1, samples) graph: read off the graph, no manifest field needed
    module = Tiny(channel=True)
    export(tmp_path, "onnx", module, torch.zeros(2, 1, WINDOW))
    rec = load_recognizer(manifest(tmp_path, "onnx", "m.onnx"), backend="onnx")
    np.testing.assert_allclose(rec.predict(windows), expected(module, windows, channel=True), atol=1e-5)
    # a batch fixed at export (3): 7 windows go as 3 + 3 + 1 padded
    module = Tiny()
    export(tmp_path, "onnx", module, torch.zeros(3, WINDOW), dynamic=False)
    rec = load_recognizer(manifest(tmp_path, "onnx", "m.onnx"), backend="onnx")
    assert rec.input.fixed_batch == 3
    np.testing.assert_allclose(rec.predict(windows), expected(module, windows), atol=1e-5)
    assert rec.predict(windows[:0]).shape == (0, 3)
    # a model trained on int16 amplitudes
    module = Tiny(scale=32768.0)
    export(tmp_path, "onnx", module, torch.zeros(2, WINDOW))
    rec = load_recognizer(manifest(tmp_path, "onnx", "m.onnx", extra="scale = 32768.0"), backend="onnx")
    np.testing.assert_allclose(rec.predict(windows), expected(Tiny(), windows), atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_wrong_inputs_and_outputs_fail_at_load_with_the_field_to_fix(tmp_path) -> None:
    module = Tiny()
    export(tmp_path, "onnx", module, torch.zeros(2, 2000))  # a graph for 2000 samples
    with pytest.raises(ValueError, match="window_samples"):
        load_recognizer(manifest(tmp_path, "onnx", "m.onnx"), backend="onnx")
    export(tmp_path, "onnx", module, torch.zeros(2, WINDOW))
    with pytest.raises(ValueError, match="rank"):
        load_recognizer(
            manifest(tmp_path, "onnx", "m.onnx", extra=f'shape = ["batch", 1, {WINDOW}]'), backend="onnx"
        )
    with pytest.raises(ValueError, match=r"one score per label"):
        load_recognizer(manifest(tmp_path, "onnx", "m.onnx", labels=["a", "b", "c", "d"]), backend="onnx")
    path = export(tmp_path, "torchscript", Tiny(channel=True), torch.zeros(2, 1, WINDOW))
    with pytest.raises(ValueError, match=r"\[input\] shape"):  # the module wants a channel axis
        load_recognizer(manifest(tmp_path, "torch", path, "torchscript"))
    rec = load_recognizer(
        manifest(tmp_path, "torch", path, "torchscript", extra=f'shape = ["batch", 1, {WINDOW}]')
    )
    assert rec.predict(np.zeros((2, WINDOW), np.float32)).shape == (2, 3)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("smoothing = false\n", r"'smoothing' belongs in \[defence\] smoothing"),
        ("[defence]\nsigma = 0.1\n", r"\[defence\]: unknown key"),
        ("[defence]\ntransforms = ['mp4']\n", "mp4"),
        ("[defence.smoothing]\nrepresentation = 'spectrogram'\n", "needs a sigma"),
        ("[label_roles]\nother = ['zzz']\n", "label_roles"),
        ("[label_roles]\nother = ['_unknown_']\nno_speech = ['_unknown_']\n", "two roles"),
        ("[defence.smoothing]\nn0 = 40\n", "n0"),
        ("[defence.smoothing]\nsigma = -1.0\n", "sigma"),
        ("[input]\nsample_rate_hz = 16000\nwindow_samples = 4000\nlayout = 'x'\n", "unknown key"),
    ],
)
def test_manifest_fields_are_checked(tmp_path, text, message) -> None:
    p = tmp_path / "m.toml"
    base = 'name = "m"\nlabels = ["a", "_unknown_"]\nsample_rate_hz = 16000\nwindow_samples = 4000\n'
    p.write_text(base + text + '\n[backends.onnx]\npath = "m.onnx"\n', encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_manifest(p)


VIDEO = 'name = "v"\nlabels = ["wave", "_background_"]\nmodality = "video"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[input]\nframes = 8\nheight = 32\nwidth = 32\n", "needs frames, height, width and fps"),
        ("[input]\nframes = 8\nheight = 32\nwidth = 32\nfps = 0\n", "fps must be a positive number"),
        ("[input]\nframes = 8\nheight = 32\nwidth = 32\nfps = 25\nsample_rate_hz = 16000\n", "unknown key"),
        (
            "[input]\nframes = 8\nheight = 32\nwidth = 32\nfps = 25\nshape = ['batch', 8, 3, 32, 32]\n",
            r"does not fit windows \[8, 32, 32, 3\]",
        ),
        (
            "[input]\nframes = 8\nheight = 32\nwidth = 32\nfps = 25\n[defence]\ntransforms = ['mp3']\n",
            "'mp3' is for audio; a video model takes h264, jpeg, median, rescale",
        ),
    ],
)
def test_video_manifest_fields_are_checked(tmp_path, text, message) -> None:
    p = tmp_path / "v.toml"
    p.write_text(VIDEO + text + '\n[backends.onnx]\npath = "v.onnx"\n', encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_manifest(p)


def test_video_manifest_defaults(tmp_path) -> None:
    p = tmp_path / "v.toml"
    text = "[input]\nframes = 8\nheight = 32\nwidth = 48\nfps = 12.5\nshape = ['batch', 3, 8, 32, 48]\n"
    p.write_text(VIDEO + text + '\n[backends.onnx]\npath = "v.onnx"\n', encoding="utf-8")
    m = read_manifest(p)
    assert m.spec.window_shape == (8, 32, 48, 3) and m.spec.video.fps == 12.5
    assert m.spec.input_bounds == (0.0, 1.0)
    assert m.defence["transforms"] == ["h264", "jpeg"]
    assert m.defence["smoothing"]["representation"] == "pixels"
    x = np.zeros((2, 8, 32, 48, 3), np.float32)
    assert m.input.adapt(x).shape == (2, 3, 8, 32, 48)  # channels first, as the manifest says


def test_defence_and_roles_come_from_the_manifest(tmp_path) -> None:
    p = tmp_path / "m.toml"
    p.write_text(
        'name = "m"\nlabels = ["go", "stop", "_unknown_", "_silence_"]\n'
        "[input]\nsample_rate_hz = 8000\nwindow_samples = 8000\n"
        '[backends.onnx]\npath = "m.onnx"\n[defence]\ntransforms = ["opus"]\nsmoothing = false\n',
        encoding="utf-8",
    )
    m = read_manifest(p)
    assert m.roles == ("command", "command", "other", "no_speech")
    text = p.read_text(encoding="utf-8").replace("[defence]", "[label_roles]\nother = ['stop']\n[defence]")
    p.write_text(text, encoding="utf-8")  # a role given replaces that role's defaults only
    assert read_manifest(p).roles == ("command", "other", "command", "no_speech")
    cfg, calibrated = DetectorConfig.from_card(m.detector)
    assert cfg.smoothing is None and [t.split(":")[0] for t in cfg.transforms] == ["opus"] and not calibrated


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_embedded_model_through_onnx_gives_the_torch_verdicts(model_torch, heldout_speech) -> None:
    """The shipped card's calibrated defence (log-mel smoothing via the exported stages) on both
    backends: same raw labels, votes and flags, scores within a tolerance."""
    m = read_manifest("digits")
    cfg, calibrated = DetectorConfig.from_card(m.detector)
    assert calibrated and cfg.smoothing.representation == "logmel"
    onnx = load_recognizer("digits", backend="onnx", device="cpu")
    assert "logmel" in onnx.representations
    x = heldout_speech["x"][::40][:16]
    a = Detector(model_torch, cfg).analyze(x)
    b = Detector(onnx, cfg).analyze(x)
    for va, vb in zip(a, b, strict=True):
        assert va.raw_label == vb.raw_label and va.flagged == vb.flagged
        assert [o.label for o in va.defended] == [o.label for o in vb.defended]
        assert abs(va.score - vb.score) < 0.05
