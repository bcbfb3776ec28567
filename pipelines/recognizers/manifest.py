"""Model manifests: how a user plugs in their own ONNX or PyTorch model.

A manifest is a TOML (or JSON) file next to the weights; every field is checked when it is read
and a wrong one is named in the error::

    name = "my-kws"
    labels = ["yes", "no", "_unknown_", "_silence_"]
    output = "logits"                 # or "probabilities"

    [input]
    sample_rate_hz = 16000
    window_samples = 16000
    shape = ["batch", 16000]          # or ["batch", 1, 16000]; an int for a fixed batch size
    dtype = "float32"                 # float16, float64
    scale = 1.0                       # the model sees window * scale (32768: int16 range)
    bounds = [-1.0, 1.0]              # valid window range (attacks clip to it)

    [label_roles]                     # default: _silence_/_background_/_noise_ and _unknown_/_other_
    no_speech = ["_silence_"]
    other = ["_unknown_"]

    [backends.onnx]
    path = "my-kws.onnx"              # relative to the manifest

    [backends.torch]
    format = "torchscript"            # torchscript | torch_export (.pt2) | digitnet (state dict)
    path = "my-kws.pt"

    [defence]                         # optional; `avsentry calibrate` measures and picks these
    transforms = ["mp3", "opus", "aac", "noise"]
    [defence.smoothing]               # or `smoothing = false`
    representation = "waveform"
    sigma = 0.002
    n = 32

An ONNX backend may also ship a model in stages, so smoothing can add its noise between them
(``[backends.onnx.representations.logmel] encode = "front.onnx", classify = "back.onnx"``).

A model card (``card.json``, as the embedded default model's and what ``avsentry calibrate``
writes) is a manifest plus training and calibration facts; its ``detector`` section is the
calibrated defence. ``load_recognizer("digits")`` loads the embedded one.
"""

from __future__ import annotations

import json
import tomllib
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from avsentry.pipelines.recognizers.base import SmoothableRecognizer
from avsentry.pipelines.recognizers.inputs import BATCH, ModelInput
from avsentry.pipelines.transforms import normalize_transform_spec, transform_modality, transform_names
from avsentry.pipelines.types import MODALITIES, AudioInput, ModelSpec, VideoInput

BACKENDS = ("torch", "onnx")
TORCH_FORMATS = ("torchscript", "torch_export", "digitnet", "actionnet")
DEFAULT_MODEL = "digits"
ROLES = ("no_speech", "other")
COMMAND = "command"  # the role of every label that is neither
# Label names that take a role unless [label_roles] says otherwise (compared without underscores).
DEFAULT_ROLE_NAMES = {
    "no_speech": ("background", "silence", "noise", "nospeech"),
    "other": ("unknown", "other", "filler", "garbage"),
}
# The defence of a model nobody calibrated: the four codec/noise squeezers and smoothing on the
# waveform (every model offers it; sigma in sample units, 0.002 is noise at -54 dBFS; the window's
# level is kept, so models with a silence class keep it, which waveform_rms's fixed playback level
# would not). `avsentry calibrate` measures which of these the model's accuracy survives and picks
# the sigma.
DEFAULT_DEFENCE: dict[str, Any] = {
    "transforms": ["mp3", "opus", "aac", "noise"],
    "smoothing": {"representation": "waveform", "sigma": 0.002, "n": 32, "n0": 8, "alpha": 0.05},
}
# The same for a video model: an H.264 and a JPEG round trip, and smoothing in pixel space
# (sigma in [0, 1] pixel units; 0.1 is noise of about 25 grey levels).
DEFAULT_VIDEO_DEFENCE: dict[str, Any] = {
    "transforms": ["h264", "jpeg"],
    "smoothing": {"representation": "pixels", "sigma": 0.1, "n": 16, "n0": 4, "alpha": 0.05},
}
DEFAULT_DEFENCES = {"audio": DEFAULT_DEFENCE, "video": DEFAULT_VIDEO_DEFENCE}
_SMOOTHING_KEYS = ("representation", "sigma", "n", "n0", "alpha")
# The sigma a representation gets when none is given for it (units differ: samples; the window's
# RMS; normalized log-mel).
DEFAULT_SIGMAS = {"waveform": 0.002, "waveform_rms": 0.1, "logmel": 0.25, "pixels": 0.1}

_FIELDS = {
    "name",
    "modality",
    "labels",
    "output",
    "input",
    "label_roles",
    "backends",
    "defence",
    # the same, at the top level, as model cards written before [input] existed
    "sample_rate_hz",
    "window_samples",
    "input_bounds",
}
# Facts a model card carries for people (and `detector`, the calibrated defence).
_CARD_FIELDS = {
    "version",
    "description",
    "architecture",
    "parameters",
    "config",
    "representations",
    "limitations",
    "training",
    "lineage",
    "data",
    "heldout_accuracy",
    "speech_evaluation",
    "onnx_agreement",
    "detector",
    "defended_accuracy",
    "calibration",
}
_INPUT_KEYS = ("sample_rate_hz", "window_samples", "shape", "dtype", "scale", "bounds", "name")
_VIDEO_INPUT_KEYS = ("frames", "height", "width", "fps", "shape", "dtype", "scale", "bounds", "name")
_MISPLACED = {
    "transforms": "[defence] transforms",
    "smoothing": "[defence] smoothing",
    "sigma": "[defence.smoothing] sigma",
    "representation": "[defence.smoothing] representation",
    "n": "[defence.smoothing] n",
    "threshold": "the card `avsentry calibrate` writes (or --threshold)",
    "shape": "[input] shape",
    "dtype": "[input] dtype",
    "scale": "[input] scale",
    "path": "[backends.onnx] or [backends.torch] path",
    "format": "[backends.torch] format",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    """A parsed manifest.

    Attributes:
        spec: What the recognizer expects and returns.
        path: The manifest file.
        input: The model's input tensor (layout, dtype, scale, fixed batch).
        roles: Each label's role: ``command``, ``other`` (speech the model does not act on) or
            ``no_speech``.
        backends: Per backend, its table (``path``, ``format``, ``representations``).
        defence: The manifest's ``[defence]``, completed with :data:`DEFAULT_DEFENCE` (the
            defence in force when the model has no calibrated ``detector``).
        extra: The card's other fields (``detector``, training facts...).
    """

    spec: ModelSpec
    path: Path
    input: ModelInput
    roles: tuple[str, ...]
    backends: dict[str, dict[str, Any]]
    defence: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.path.parent

    def path_for(self, backend: str, key: str = "path") -> Path:
        return self.root / self.backends[backend][key]

    @property
    def calibrated(self) -> bool:
        return (self.extra.get("detector") or {}).get("threshold") is not None

    @property
    def detector(self) -> dict[str, Any]:
        """The ``detector`` section ``DetectorConfig.from_card`` reads: the card's calibrated one,
        or the manifest's defence with no threshold."""
        det = self.extra.get("detector")
        return det if det else {"config": self.defence}

    def labels_with_role(self, role: str) -> tuple[int, ...]:
        return tuple(i for i, r in enumerate(self.roles) if r == role)


def embedded_models() -> dict[str, Path]:
    """Names of the models shipped inside the package -> their card paths."""
    base = Path(str(resources.files("avsentry.pipelines").joinpath("models")))
    return {p.parent.name: p for p in sorted(base.glob("*/card.json"))}


def manifest_path(ref: str | Path) -> Path:
    """The file behind ``ref``: an embedded model's name or a path."""
    models = embedded_models()
    path = models[str(ref)] if str(ref) in models else Path(ref)
    if not path.is_file():
        known = ", ".join(models) or "none"
        raise FileNotFoundError(f"no model manifest at {str(ref)!r} (embedded models: {known})")
    return path


def load_document(path: Path) -> dict[str, Any]:
    """A manifest file's fields: TOML for ``.toml``, else JSON."""
    text = path.read_text(encoding="utf-8")
    is_toml = path.suffix.lower() == ".toml"
    try:
        data = tomllib.loads(text) if is_toml else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{path}: not valid {'TOML' if is_toml else 'JSON'}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a manifest is a table of fields, got {type(data).__name__}")
    return data


def read_manifest(ref: str | Path) -> Manifest:
    """Parse and check a manifest file, or the card of an embedded model given by name.

    Raises:
        FileNotFoundError: no such file or embedded model.
        ValueError: the manifest is malformed (the message names the file and the field).
    """
    path = manifest_path(ref)
    try:
        return _parse(load_document(path), path)
    except (TypeError, ValueError) as e:
        msg = str(e)
        raise ValueError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from e


def _parse(data: dict[str, Any], path: Path) -> Manifest:
    unknown = sorted(set(data) - _FIELDS - _CARD_FIELDS)
    if unknown:
        hints = [f"{k!r} belongs in {_MISPLACED[k]}" for k in unknown if k in _MISPLACED]
        raise ValueError(
            f"unknown field(s) {', '.join(map(repr, unknown))}"
            + (f" ({'; '.join(hints)})" if hints else "")
            + f"; known: {', '.join(sorted(_FIELDS - {'sample_rate_hz', 'window_samples', 'input_bounds'}))}"
        )
    for key in ("name", "labels", "backends"):
        if key not in data:
            raise ValueError(f"manifest lacks {key!r}")
    labels = data["labels"]
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"labels must be a list of names, got {labels!r}")
    modality = str(data.get("modality", "audio"))
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    inp = _table(data.get("input", {}), "input")
    spec_input: AudioInput | VideoInput
    if modality == "video":
        spec_input, model_input = _video_input(inp)
    else:
        spec_input, model_input = _audio_input(inp, data)
    spec = ModelSpec(
        name=str(data["name"]),
        labels=tuple(labels),
        input=spec_input,
        output=str(data.get("output", "logits")),
    )
    backends = _backends(_table(data["backends"], "backends"))
    extra = {k: v for k, v in data.items() if k in _CARD_FIELDS}
    return Manifest(
        spec=spec,
        path=path,
        input=model_input,
        roles=_roles(spec.labels, _table(data.get("label_roles", {}), "label_roles")),
        backends=backends,
        defence=_defence(data.get("defence"), modality),
        extra=extra,
    )


def _audio_input(inp: dict[str, Any], data: dict[str, Any]) -> tuple[AudioInput, ModelInput]:
    # the card's older descriptive `input` (name, shape, dtype) reads the same way
    unknown_in = sorted(set(inp) - set(_INPUT_KEYS))
    if unknown_in:
        raise ValueError(f"[input]: unknown key(s) {unknown_in}; known: {', '.join(_INPUT_KEYS)}")
    rate = inp.get("sample_rate_hz", data.get("sample_rate_hz"))
    shape = inp.get("shape")
    window = inp.get("window_samples", data.get("window_samples"))
    if window is None and isinstance(shape, list) and shape and isinstance(shape[-1], int):
        window = shape[-1]
    if rate is None or window is None:
        raise ValueError("[input] needs sample_rate_hz and window_samples (or a shape that ends in it)")
    rate, window = _int(rate, "[input] sample_rate_hz"), _int(window, "[input] window_samples")
    if shape is None:
        shape = [BATCH, window]
    if not isinstance(shape, list):
        raise ValueError(f"[input] shape must be a list such as ['batch', {window}], got {shape!r}")
    if shape and shape[-1] != window:
        raise ValueError(f"[input] shape {shape} does not end in window_samples = {window}")
    model_input = ModelInput(
        shape=tuple(shape), dtype=str(inp.get("dtype", "float32")), scale=float(inp.get("scale", 1.0))
    )
    bounds = _bounds(inp.get("bounds", data.get("input_bounds", (-1.0, 1.0))))
    return AudioInput(sample_rate_hz=rate, window_samples=window, bounds=bounds), model_input


def _video_input(inp: dict[str, Any]) -> tuple[VideoInput, ModelInput]:
    unknown_in = sorted(set(inp) - set(_VIDEO_INPUT_KEYS))
    if unknown_in:
        raise ValueError(f"[input]: unknown key(s) {unknown_in}; known: {', '.join(_VIDEO_INPUT_KEYS)}")
    missing = [k for k in ("frames", "height", "width", "fps") if k not in inp]
    if missing:
        raise ValueError(f"[input] of a video model needs frames, height, width and fps; missing {missing}")
    fps = inp["fps"]
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not fps > 0:
        raise ValueError(f"[input] fps must be a positive number, got {fps!r}")
    video = VideoInput(
        frames=_int(inp["frames"], "[input] frames"),
        height=_int(inp["height"], "[input] height"),
        width=_int(inp["width"], "[input] width"),
        fps=float(fps),
        bounds=_bounds(inp.get("bounds", (0.0, 1.0))),
    )
    shape = inp.get("shape", [BATCH, *video.shape])
    if not isinstance(shape, list):
        raise ValueError(
            f"[input] shape must be a list such as ['batch', {', '.join(map(str, video.shape))}]"
        )
    model_input = ModelInput(
        shape=tuple(shape),
        window=video.shape,
        dtype=str(inp.get("dtype", "float32")),
        scale=float(inp.get("scale", 1.0)),
    )
    return video, model_input


def _bounds(bounds: Any) -> tuple[float, float]:
    if not (isinstance(bounds, list | tuple) and len(bounds) == 2):
        raise ValueError(f"[input] bounds must be [low, high], got {bounds!r}")
    return (float(bounds[0]), float(bounds[1]))


def _table(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"[{name}] must be a table, got {value!r}")
    return value


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _backends(backends: dict[str, Any]) -> dict[str, dict[str, Any]]:
    unknown = set(backends) - set(BACKENDS)
    if not backends or unknown:
        raise ValueError(f"backends must be a non-empty subset of {BACKENDS}, got {sorted(backends)}")
    for name, b in backends.items():
        b = _table(b, f"backends.{name}")
        if not isinstance(b.get("path"), str):
            raise ValueError(f"[backends.{name}] lacks 'path' (the weights, relative to the manifest)")
    torch_b = backends.get("torch")
    if torch_b is not None and torch_b.get("format") not in TORCH_FORMATS:
        raise ValueError(
            f"[backends.torch] format must be one of {TORCH_FORMATS}, got {torch_b.get('format')!r}"
        )
    for rep, stages in _table(backends.get("onnx", {}).get("representations", {}), "onnx").items():
        if not isinstance(stages, dict) or set(stages) != {"encode", "classify"}:
            raise ValueError(
                f"[backends.onnx.representations.{rep}] needs exactly 'encode' (waveform -> {rep}) "
                f"and 'classify' ({rep} -> scores) graph paths, got {stages!r}"
            )
    return {k: dict(v) for k, v in backends.items()}


def _roles(labels: tuple[str, ...], table: dict[str, Any]) -> tuple[str, ...]:
    unknown = set(table) - set(ROLES)
    if unknown:
        raise ValueError(f"[label_roles]: unknown role(s) {sorted(unknown)}; known: {', '.join(ROLES)}")
    roles: dict[str, str] = {}
    for role, names in table.items():
        if not isinstance(names, list) or not all(n in labels for n in names):
            raise ValueError(f"[label_roles] {role} must list labels of the model, got {names!r}")
        twice = [n for n in names if n in roles]
        if twice:
            raise ValueError(f"[label_roles]: {twice} listed under two roles")
        roles.update(dict.fromkeys(names, role))
    for label in labels:  # a role not given takes its labels by name
        key = label.strip("_").replace("_", "").lower()
        for role, names in DEFAULT_ROLE_NAMES.items():
            if role not in table and key in names and label not in roles:
                roles[label] = role
    out = tuple(roles.get(label, COMMAND) for label in labels)
    if COMMAND not in out:
        raise ValueError("[label_roles] leaves no label to guard: at least one label must be neither role")
    return out


def _defence(value: Any, modality: str = "audio") -> dict[str, Any]:
    """``[defence]`` completed with the modality's default (:data:`DEFAULT_DEFENCES`), in the
    detector card's form."""
    default = DEFAULT_DEFENCES[modality]
    table = _table(value if value is not None else {}, "defence")
    unknown = set(table) - {"transforms", "smoothing"}
    if unknown:
        raise ValueError(f"[defence]: unknown key(s) {sorted(unknown)}; known: transforms, smoothing")
    transforms = table.get("transforms", default["transforms"])
    if not isinstance(transforms, list) or not all(isinstance(t, str) for t in transforms):
        raise ValueError(f"[defence] transforms must be a list of specs such as 'mp3', got {transforms!r}")
    for t in transforms:
        normalize_transform_spec(t)  # names a wrong transform or parameter
        if transform_modality(t) != modality:
            raise ValueError(
                f"[defence] transform {t!r} is for {transform_modality(t)}; a {modality} model takes "
                f"{', '.join(transform_names(modality))}"
            )
    smoothing = table.get("smoothing", True)
    if smoothing is False:
        return {"transforms": list(transforms), "smoothing": None}
    if smoothing is True:
        smoothing = {}
    smoothing = _table(smoothing, "defence.smoothing")
    unknown = set(smoothing) - set(_SMOOTHING_KEYS)
    if unknown:
        known = ", ".join(_SMOOTHING_KEYS)
        raise ValueError(f"[defence.smoothing]: unknown key(s) {sorted(unknown)}; known: {known}")
    from avsentry.pipelines.smoothing import SmoothingConfig  # here: smoothing imports this package

    rep = smoothing.get("representation", default["smoothing"]["representation"])
    if "sigma" not in smoothing and rep in DEFAULT_SIGMAS:
        smoothing = {**smoothing, "sigma": DEFAULT_SIGMAS[rep]}
    if "sigma" not in smoothing:
        raise ValueError(f"[defence.smoothing] representation {rep!r} needs a sigma in its units")
    merged = {**default["smoothing"], **smoothing}
    try:
        checked = SmoothingConfig(**merged)
    except (TypeError, ValueError) as e:
        raise ValueError(f"[defence.smoothing]: {e}") from e
    if checked.n0 >= checked.n:
        raise ValueError(f"[defence.smoothing]: n0 ({checked.n0}) must be < n ({checked.n})")
    return {"transforms": list(transforms), "smoothing": merged}


def load_recognizer(
    ref: str | Path = DEFAULT_MODEL,
    *,
    backend: str = "torch",
    device: str | torch.device | None = None,
) -> SmoothableRecognizer:
    """Load a recognizer from a manifest path or an embedded model name, and probe it once with
    a batch of silence (so a wrong input layout or output size fails here, clearly, and not in
    the middle of a stream).

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
        raise FileNotFoundError(f"model weights not found: {path} (named by {m.path})")
    if backend == "onnx":
        from avsentry.pipelines.recognizers.onnx_backend import OnnxRecognizer

        stages = {
            rep: (m.root / s["encode"], m.root / s["classify"])
            for rep, s in m.backends["onnx"].get("representations", {}).items()
        }
        return OnnxRecognizer(path, m.spec, device=device, model_input=m.input, stages=stages)
    from avsentry.pipelines.recognizers.torch_backend import TorchRecognizer

    fmt = m.backends["torch"]["format"]
    module: torch.nn.Module
    try:
        if fmt == "actionnet":
            from avsentry.pipelines.recognizers.actionnet import ActionNet, ActionNetConfig

            module = ActionNet(ActionNetConfig.from_dict(m.extra["config"]))
            module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        elif fmt == "digitnet":
            from avsentry.pipelines.recognizers.digitnet import DigitNet, DigitNetConfig

            module = DigitNet(DigitNetConfig.from_dict(m.extra["config"]))
            module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        elif fmt == "torchscript":
            module = torch.jit.load(str(path), map_location="cpu")
        else:
            with warnings.catch_warnings():  # torch's own loader reads weights from a read-only buffer
                warnings.filterwarnings("ignore", message="The given buffer is not writable")
                module = torch.export.load(str(path)).module()
    except (RuntimeError, KeyError, ValueError) as e:
        raise ValueError(f"{path}: cannot load it as {fmt} ({m.path}): {e}") from e
    return TorchRecognizer(module, m.spec, device=device, model_input=m.input, what=f"{fmt} {path.name}")
