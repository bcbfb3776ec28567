"""Recognizer protocols, backends (torch, ONNX Runtime) and model manifests."""

from avsentry.pipelines.recognizers.base import (
    DifferentiableRecognizer,
    Recognizer,
    SmoothableRecognizer,
    resolve_device,
)
from avsentry.pipelines.recognizers.manifest import Manifest, embedded_models, load_recognizer, read_manifest

__all__ = [
    "DifferentiableRecognizer",
    "Manifest",
    "Recognizer",
    "SmoothableRecognizer",
    "embedded_models",
    "load_recognizer",
    "read_manifest",
    "resolve_device",
]
