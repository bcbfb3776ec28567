"""ONNX Runtime backend: a ``.onnx`` model, CUDA execution provider when available, else CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from avsentry.pipelines.recognizers.base import resolve_device, softmax_np
from avsentry.pipelines.types import ModelSpec


def providers_for(device: torch.device) -> list[str]:
    """ORT execution providers for ``device``; CUDA only if this onnxruntime build has it."""
    available = ort.get_available_providers()
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise ValueError(
                "CUDA requested but this onnxruntime has no CUDAExecutionProvider "
                "(install the 'gpu' extra: onnxruntime-gpu)"
            )
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]  # type: ignore[list-item]
    return ["CPUExecutionProvider"]


class OnnxRecognizer:
    """Runs an ONNX model with input ``(batch, window_samples)`` float32.

    Smoothing works in the ``waveform`` representation only (the graph is opaque); noise is drawn
    by torch and handed to ONNX Runtime.

    Args:
        path: The ``.onnx`` file.
        spec: What the model expects and returns.
        device: ``"cpu"``, ``"cuda[:N]"`` or ``None``/``"auto"``.
        intra_op_threads: ORT intra-op threads (0 = ORT default).
    """

    representations: tuple[str, ...] = ("waveform",)

    def __init__(
        self,
        path: str | Path,
        spec: ModelSpec,
        *,
        device: str | torch.device | None = None,
        intra_op_threads: int = 0,
    ) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        self.spec = spec
        self.device = resolve_device(device)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=providers_for(self.device))
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{path}: expected one input, found {[i.name for i in inputs]}")
        self._input = inputs[0].name

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def _run(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self._input: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return np.asarray(out, dtype=np.float32)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        out = self._run(batch)
        return softmax_np(out) if self.spec.output == "logits" else out

    def encode(self, batch: torch.Tensor, representation: str) -> torch.Tensor:
        self._check_rep(representation)
        return batch

    def logits_from(self, z: torch.Tensor, representation: str) -> torch.Tensor:
        self._check_rep(representation)
        out = self._run(z.detach().cpu().numpy())
        if self.spec.output == "probabilities":
            out = np.log(np.clip(out, 1e-12, None))
        return torch.from_numpy(out).to(z.device)

    def _check_rep(self, representation: str) -> None:
        if representation != "waveform":
            raise ValueError(f"ONNX model {self.spec.name!r} offers only the 'waveform' representation")
