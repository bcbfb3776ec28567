"""The shipped digit model through both backends, and user models through manifests."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from avsentry.pipelines.recognizers import Recognizer, load_recognizer, read_manifest
from avsentry.pipelines.recognizers.digitnet import REPRESENTATIONS, DigitNet, DigitNetConfig
from avsentry.tools import synth


def test_torch_and_onnx_agree_on_heldout_top1(model_torch, model_onnx, heldout_speech) -> None:
    x = heldout_speech["x"]
    pt, po = model_torch.predict(x), model_onnx.predict(x)
    assert pt.shape == po.shape == (len(x), len(synth.LABELS))
    np.testing.assert_array_equal(pt.argmax(1), po.argmax(1))
    np.testing.assert_allclose(pt, po, atol=1e-4)


def test_shipped_model_recognizes_heldout_voices(model_torch, heldout_speech) -> None:
    pred = model_torch.predict(heldout_speech["x"]).argmax(1)
    acc = np.mean(pred == heldout_speech["y"])
    assert acc >= 0.9, f"held-out accuracy {acc:.3f}"


def test_shipped_model_calls_real_foreign_speech_unknown(model_torch, heldout_real_speech) -> None:
    """Real people (held-out speakers, other languages) are other speech, not digits."""
    pred = model_torch.predict(heldout_real_speech["x"]).argmax(1)
    unknown = np.mean(pred == synth.LABELS.index(synth.UNKNOWN))
    said = [synth.LABELS[k] for k in pred if synth.LABELS[k] != synth.UNKNOWN]
    assert unknown >= 0.9, (unknown, said)


def test_batch_equals_per_item(model_torch, heldout_speech) -> None:
    x = heldout_speech["x"][:5]
    whole = model_torch.predict(x)
    single = np.concatenate([model_torch.predict(x[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(whole, single, atol=1e-5)


@pytest.mark.parametrize("representation", REPRESENTATIONS)
def test_representations_compose_to_the_full_model(model_torch, heldout_speech, representation) -> None:
    x = torch.from_numpy(heldout_speech["x"][:4])
    with torch.no_grad():
        z = model_torch.encode(x, representation)
        np.testing.assert_allclose(
            model_torch.logits_from(z, representation), model_torch.logits(x), atol=1e-4
        )


def test_gradients_flow_from_logits_to_samples(model_torch, heldout_speech) -> None:
    x = torch.from_numpy(heldout_speech["x"][:2]).requires_grad_(True)
    model_torch.logits(x)[:, 3].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_card_is_a_complete_manifest() -> None:
    m = read_manifest("digits")
    assert m.spec.labels == synth.LABELS
    assert m.spec.sample_rate_hz == 16000 and m.spec.window_samples == 16000
    assert m.spec.input_bounds == (-1.0, 1.0)
    card = m.extra
    acc = card["heldout_accuracy"]
    assert 0.9 <= acc["overall"] <= 1 and set(acc["per_engine"]) == {
        "espeak",
        "flite",
        "festival",
        "procedural",
        "real",
    }
    # the real-speech evaluation: per source (real speakers apart), at 16 kHz and by telephone
    ev = card["speech_evaluation"]
    sources = {"espeak", "flite", "festival", "procedural", "real:allison", "real:carlo"}
    assert set(ev["wideband_16k"]["per_source"]) == set(ev["telephone_8k"]["per_source"]) == sources
    assert np.asarray(ev["confusion"]["wideband_16k"]).sum() == acc["n_windows"]
    assert ev["connected_digits"]["judged_windows"] >= 100
    assert set(det_groups := card["detector"]["calibration_by_group"]) == {
        "digits",
        "other_speech",
        "real_speech",
        "background",
    }, det_groups
    agree = card["onnx_agreement"]
    assert agree["n_windows"] == acc["n_windows"] and agree["top1_agreement"] >= 0.999
    det = card["detector"]
    assert det["target_fpr"] == 0.01 and 0 < det["threshold"] < 2
    # group-conditional calibration: every clean group at or under the target on held-out voices
    assert all(g["fpr"] <= det["target_fpr"] for g in det["test"]["by_group"].values())


def test_user_onnx_model_through_toml_manifest(tmp_path, model_onnx, heldout_speech) -> None:
    onnx_path = read_manifest("digits").path_for("onnx")
    (tmp_path / "m.onnx").write_bytes(onnx_path.read_bytes())
    labels = ", ".join(f'"{lb}"' for lb in synth.LABELS)
    (tmp_path / "kws.toml").write_text(
        f'name = "my-kws"\nsample_rate_hz = 16000\nwindow_samples = 16000\nlabels = [{labels}]\n'
        '[backends.onnx]\npath = "m.onnx"\n'
    )
    rec = load_recognizer(tmp_path / "kws.toml", backend="onnx", device="cpu")
    assert isinstance(rec, Recognizer) and rec.spec.name == "my-kws"
    np.testing.assert_allclose(
        rec.predict(heldout_speech["x"][:4]), model_onnx.predict(heldout_speech["x"][:4]), atol=1e-6
    )
    with pytest.raises(ValueError, match="no torch backend"):
        load_recognizer(tmp_path / "kws.toml", backend="torch")


def test_user_torchscript_model_with_probability_output(tmp_path) -> None:
    class Energy(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            e = x.pow(2).mean(dim=1, keepdim=True)
            return torch.cat([e, 1 - e], dim=1)

    torch.jit.script(Energy()).save(str(tmp_path / "e.pt"))
    (tmp_path / "e.json").write_text(
        json.dumps(
            {
                "name": "energy",
                "sample_rate_hz": 8000,
                "window_samples": 100,
                "labels": ["loud", "quiet"],
                "output": "probabilities",
                "backends": {"torch": {"format": "torchscript", "path": "e.pt"}},
            }
        )
    )
    rec = load_recognizer(tmp_path / "e.json", backend="torch", device="cpu")
    x = np.stack([np.full(100, 0.9, np.float32), np.zeros(100, np.float32)])
    p = rec.predict(x)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
    assert list(p.argmax(1)) == [0, 1]
    assert rec.representations == ("waveform",)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"name": "x"}', "lacks"),
        (
            '{"name": "x", "labels": ["a"], "sample_rate_hz": 1, "window_samples": 1, '
            '"backends": {"onnx": {"path": "m"}}}',
            "two distinct",
        ),
        (
            '{"name": "x", "labels": ["a", "b"], "sample_rate_hz": 1, "window_samples": 1, '
            '"backends": {"tf": {}}}',
            "backends",
        ),
    ],
)
def test_malformed_manifests_get_clear_errors(tmp_path, content, message) -> None:
    p = tmp_path / "m.json"
    p.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_manifest(p)


def test_missing_model_and_bad_device() -> None:
    with pytest.raises(FileNotFoundError, match="embedded models: actions, digits"):
        load_recognizer("no-such-model")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_recognizer("digits", device="cuda")


@pytest.mark.gpu
def test_cuda_backends_agree_with_cpu(heldout_speech) -> None:
    x = heldout_speech["x"]
    cpu = load_recognizer("digits", backend="torch", device="cpu").predict(x)
    gpu = load_recognizer("digits", backend="torch", device="cuda").predict(x)
    ort_gpu = load_recognizer("digits", backend="onnx", device="cuda")
    assert "CUDAExecutionProvider" in ort_gpu.providers
    np.testing.assert_array_equal(cpu.argmax(1), gpu.argmax(1))
    np.testing.assert_array_equal(cpu.argmax(1), ort_gpu.predict(x).argmax(1))


def test_gradients_stay_finite_where_the_spectrum_underflows() -> None:
    """A window whose tail is at denormal level (as an attack's iterate reached in a 200-clip
    evaluation) has STFT bins so small that ``abs``'s gradient on them is NaN; the model's
    magnitude keeps a finite gradient there, and the same values."""
    rec = load_recognizer("digits", device="cpu")
    x = 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    x[:, 8000:] = 1e-42 * torch.randn(2, 8000, generator=torch.Generator().manual_seed(1))
    x.requires_grad_(True)
    with_grad = rec.logits(x)
    (grad,) = torch.autograd.grad(with_grad[:, 3].sum(), x)
    assert torch.isfinite(grad).all()
    with torch.no_grad():
        torch.testing.assert_close(with_grad.detach(), rec.logits(x.detach()), rtol=0, atol=1e-4)


def test_agc_makes_the_label_independent_of_loudness(heldout_speech) -> None:
    """DigitNet's automatic gain control (``agc_rms``): the same weights give the same logits for
    a window at any level above the AGC floor, and without it they do not; a v3-style config
    (no ``agc_rms`` key) still loads."""
    m = read_manifest("digits")
    stored = dict(m.extra["config"])
    weights = torch.load(m.path_for("torch"), map_location="cpu", weights_only=True)
    nets = {}
    for agc in (0.05, None):
        net = DigitNet(DigitNetConfig.from_dict({**stored, "agc_rms": agc}))
        net.load_state_dict(weights)
        nets[agc] = net.eval()
    stored.pop("agc_rms", None)
    assert DigitNetConfig.from_dict(stored).agc_rms is None
    x = torch.tensor(heldout_speech["x"][:24])
    x = x * (0.02 / x.pow(2).mean(1, keepdim=True).sqrt())  # every window at RMS 0.02
    with torch.no_grad():
        for agc, net in nets.items():
            quiet, loud = net(x * 0.25), net(x * 4.0)
            if agc is None:
                assert (quiet - loud).abs().max() > 0.5
            else:
                torch.testing.assert_close(quiet, loud, atol=2e-4, rtol=1e-4)
