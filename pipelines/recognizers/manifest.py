"""Model manifests: how a user plugs in their own ONNX or PyTorch model.

A manifest is a JSON or TOML file next to the weights::

    name = "my-kws"
    modality = "audio"
    sample_rate_hz = 16000
    window_samples = 16000
    labels = ["yes", "no", "_unknown_"]
    input_bounds = [-1.0, 1.0]
    output = "logits"                 # or "probabilities"

    [backends.onnx]
    path = "my-kws.onnx"              # relative to the manifest

    [backends.torch]
    format = "torchscript"            # torchscript | torch_export (.pt2) | digitnet (state dict)
    path = "my-kws.pt"

The embedded default model's ``card.json`` is a manifest too (plus training and calibration
facts). ``load_recognizer("digits")`` loads it.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from avsentry.pipelines.recognizers.base import SmoothableRecognizer
from avsentry.pipelines.types import ModelSpec

BACKENDS = ("torch", "onnx")
TORCH_FORMATS = ("torchscript", "torch_export", "digitnet")
DEFAULT_MODEL = "digits"


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    """A parsed manifest: the spec, where each backend's weights are, and any extra fields."""

    spec: ModelSpec
    root: Path
    backends: dict[str, dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)

    def path_for(self, backend: str) -> Path:
        return self.root / self.backends[backend]["path"]


def embedded_models() -> dict[str, Path]:
    """Names of the models shipped inside the package -> their card paths."""
    base = Path(str(resources.files("avsentry.pipelines").joinpath("models")))
    return {p.parent.name: p for p in sorted(base.glob("*/card.json"))}


def read_manifest(ref: str | Path) -> Manifest:
    """Parse a manifest file, or the card of an embedded model given by name.

    Raises:
        FileNotFoundError: no such file or embedded model.
        ValueError: the manifest is malformed (the message names the field).
    """
    models = embedded_models()
    path = models[str(ref)] if str(ref) in models else Path(ref)
    if not path.is_file():
        known = ", ".join(models) or "none"
        raise FileNotFoundError(f"no model manifest at {ref!r} (embedded models: {known})")
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {e}") from e
    required = ("name", "labels", "sample_rate_hz", "window_samples", "backends")
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"{path}: manifest lacks {', '.join(missing)}")
    spec = ModelSpec(
        name=str(data["name"]),
        modality=str(data.get("modality", "audio")),
        labels=tuple(str(x) for x in data["labels"]),
        sample_rate_hz=int(data["sample_rate_hz"]),
        window_samples=int(data["window_samples"]),
        input_bounds=tuple(float(v) for v in data.get("input_bounds", (-1.0, 1.0))),  # type: ignore[arg-type]
        output=str(data.get("output", "logits")),
    )
    backends = dict(data["backends"])
    unknown = set(backends) - set(BACKENDS)
    if not backends or unknown:
        raise ValueError(f"{path}: backends must be a non-empty subset of {BACKENDS}, got {sorted(backends)}")
    for name, b in backends.items():
        if "path" not in b:
            raise ValueError(f"{path}: backends.{name} lacks 'path'")
    if "torch" in backends and backends["torch"].get("format") not in TORCH_FORMATS:
        raise ValueError(f"{path}: backends.torch.format must be one of {TORCH_FORMATS}")
    extra = {k: v for k, v in data.items() if k not in (*required, "modality", "input_bounds", "output")}
    return Manifest(spec=spec, root=path.parent, backends=backends, extra=extra)


def load_recognizer(
    ref: str | Path = DEFAULT_MODEL,
    *,
    backend: str = "torch",
    device: str | torch.device | None = None,
) -> SmoothableRecognizer:
    """Load a recognizer from a manifest path or an embedded model name.

    Args:
        ref: Manifest file (JSON/TOML) or embedded model name (default ``"digits"``).
        backend: ``"torch"`` (differentiable) or ``"onnx"`` (ONNX Runtime).
        device: ``"cpu"``, ``"cuda[:N]"`` or ``None``/``"auto"`` (CUDA when present).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    m = read_manifest(ref)
    if backend not in m.backends:
        raise ValueError(f"model {m.spec.name!r} has no {backend} backend (has: {', '.join(m.backends)})")
    path = m.path_for(backend)
    if not path.is_file():
        raise FileNotFoundError(f"model weights not found: {path}")
    if backend == "onnx":
        from avsentry.pipelines.recognizers.onnx_backend import OnnxRecognizer

        return OnnxRecognizer(path, m.spec, device=device)
    from avsentry.pipelines.recognizers.torch_backend import TorchRecognizer

    fmt = m.backends["torch"]["format"]
    module: torch.nn.Module
    if fmt == "digitnet":
        from avsentry.pipelines.recognizers.digitnet import DigitNet, DigitNetConfig

        module = DigitNet(DigitNetConfig.from_dict(m.extra["config"]))
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    elif fmt == "torchscript":
        module = torch.jit.load(str(path), map_location="cpu")
    else:
        module = torch.export.load(str(path)).module()
    return TorchRecognizer(module, m.spec, device=device)
