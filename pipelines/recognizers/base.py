"""Recognizer interfaces: what the defences, the server and the attacks need from a model.

``Recognizer`` is all the server needs (probabilities for a batch, any backend, ONNX Runtime
included). ``SmoothableRecognizer`` adds torch-tensor access by representation so randomized
smoothing can add noise on the device. ``DifferentiableRecognizer`` adds differentiable logits for
white-box attacks.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

from avsentry.pipelines.types import ModelSpec


@runtime_checkable
class Recognizer(Protocol):
    """Any backend: a batch of windows in, class probabilities out."""

    spec: ModelSpec

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """``(batch, window_samples)`` float32 -> ``(batch, classes)`` float32 probabilities."""
        ...


@runtime_checkable
class SmoothableRecognizer(Recognizer, Protocol):
    """A recognizer that runs on torch tensors and exposes its input representations."""

    device: torch.device
    representations: tuple[str, ...]

    def encode(self, batch: torch.Tensor, representation: str) -> torch.Tensor:
        """Waveforms ``(batch, samples)`` on ``device`` -> inputs in ``representation``."""
        ...

    def logits_from(self, z: torch.Tensor, representation: str) -> torch.Tensor:
        """Logits ``(batch, classes)`` for inputs already in ``representation``."""
        ...


@runtime_checkable
class DifferentiableRecognizer(SmoothableRecognizer, Protocol):
    """A recognizer whose logits are differentiable w.r.t. the input samples."""

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """``(batch, samples)`` tensor on ``device`` -> ``(batch, classes)`` logits, with grad."""
        ...


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` picks CUDA when present, else CPU; otherwise validated as given."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}: use cpu, cuda or cuda:N")
    return dev


def softmax_np(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
