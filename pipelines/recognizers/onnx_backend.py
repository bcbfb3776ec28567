"""ONNX Runtime backend: a ``.onnx`` model, CUDA execution provider when available, else CPU.

The graph's input is checked against the manifest when the session is created (rank, window
length, fixed batch size, element type), so a model exported with another layout fails at load
with a message that says which field to write, not with an ONNX Runtime traceback mid-stream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from avsentry.pipelines.recognizers.base import resolve_device, softmax_np
from avsentry.pipelines.recognizers.inputs import BATCH, ModelInput, check_output, in_batches_of
from avsentry.pipelines.types import ModelSpec

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64"}


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


def _session(path: Path, device: torch.device, threads: int) -> ort.InferenceSession:
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), opts, providers=providers_for(device))
    except Exception as e:  # onnxruntime raises its own exception types for unreadable graphs
        raise ValueError(f"{path}: ONNX Runtime cannot load it: {str(e).strip()[:300]}") from e
    if len(session.get_inputs()) != 1:
        raise ValueError(f"{path}: expected one input, found {[i.name for i in session.get_inputs()]}")
    return session


def graph_input(path: Path, session: ort.InferenceSession, declared: ModelInput) -> ModelInput:
    """The input the graph takes, checked against the manifest's ``declared`` one.

    A symbolic batch axis stays ``"batch"``; a fixed one becomes the batch size (batches are
    split). The manifest's dtype and scale are kept; the graph's element type must match.
    """
    info = session.get_inputs()[0]
    shape = list(info.shape)
    if len(declared.window) > 1:  # video: the graph takes the manifest's layout
        return _checked(path, info, shape, declared, tuple(declared.shape[1:]))  # type: ignore[arg-type]
    window = declared.samples
    want = " or ".join(f"[batch{', 1' if r == 3 else ''}, {window}]" for r in (2, 3))
    if len(shape) not in (2, 3) or (len(shape) == 3 and isinstance(shape[1], int) and shape[1] != 1):
        raise ValueError(f"{path}: input {info.name!r} has shape {shape}; avsentry feeds {want}")
    if isinstance(shape[-1], int) and shape[-1] != window:
        raise ValueError(
            f"{path}: input {info.name!r} takes {shape[-1]} samples but the manifest's window_samples is "
            f"{window}; set [input] window_samples = {shape[-1]} (at the model's sample_rate_hz)"
        )
    # a manifest without a channel axis takes the graph's (below); one with it needs it in the graph
    if len(shape) == 2 and len(declared.shape) == 3:
        raise ValueError(
            f"{path}: input {info.name!r} has rank {len(shape)} ({shape}) but the manifest's [input] shape "
            f"is {list(declared.shape)}"
        )
    return _checked(path, info, shape, declared, (1, window) if len(shape) == 3 else (window,))


def _checked(path: Path, info: Any, shape: list, declared: ModelInput, rest: tuple[int, ...]) -> ModelInput:
    """The graph's input (batch axis, element type) with the window layout ``rest``."""
    if len(shape) != 1 + len(rest) or any(
        isinstance(g, int) and g > 0 and g != r for g, r in zip(shape[1:], rest, strict=True)
    ):
        raise ValueError(
            f"{path}: input {info.name!r} has shape {shape} but the manifest's [input] shape is "
            f"{list(declared.shape)}"
        )
    batch: int | str = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else BATCH
    if declared.fixed_batch is not None and batch not in (BATCH, declared.fixed_batch):
        raise ValueError(f"{path}: fixed batch {batch} but the manifest says {declared.fixed_batch}")
    dtype = _ORT_TYPES.get(info.type)
    if dtype is None:
        raise ValueError(f"{path}: input {info.name!r} is {info.type}; avsentry feeds float32/16/64 windows")
    if dtype != declared.dtype and declared.dtype != "float32":
        raise ValueError(f"{path}: input is {dtype} but the manifest's [input] dtype is {declared.dtype}")
    return ModelInput(
        shape=(declared.fixed_batch or batch, *rest),
        window=declared.window,
        dtype=dtype,
        scale=declared.scale,
    )


def _fixed_batch(session: ort.InferenceSession) -> int | None:
    b = session.get_inputs()[0].shape[0]
    return b if isinstance(b, int) and b > 0 else None


def _run_graph(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0], dtype=np.float32)


class OnnxRecognizer:
    """Runs an ONNX model on windows ``(batch, *window)`` float32 (audio windows or video clips).

    Smoothing works on the window itself (``waveform``, or ``pixels`` for video; noise drawn by
    torch and handed to ONNX Runtime), plus every representation the model ships in stages
    (``stages[rep] = (encode, classify)``: window -> rep and rep -> scores graphs), as the
    embedded model does for its log-mel front end, so ``--backend onnx`` runs the same defence as torch.

    Args:
        path: The ``.onnx`` file (waveform -> scores).
        spec: What the model expects and returns.
        device: ``"cpu"``, ``"cuda[:N]"`` or ``None``/``"auto"``.
        intra_op_threads: ORT intra-op threads (0 = ORT default).
        model_input: The manifest's input (layout, dtype, scale); checked against the graph.
        stages: Staged graphs per representation.

    Raises:
        ValueError: the graph's input does not match the manifest, or its output is not one score
            per label on a probe batch of silence.
    """

    def __init__(
        self,
        path: str | Path,
        spec: ModelSpec,
        *,
        device: str | torch.device | None = None,
        intra_op_threads: int = 0,
        model_input: ModelInput | None = None,
        stages: dict[str, tuple[Path, Path]] | None = None,
    ) -> None:
        path = Path(path)
        self.spec = spec
        self.device = resolve_device(device)
        self.session = _session(path, self.device, intra_op_threads)
        declared = model_input or ModelInput.for_window(spec.window_shape)
        self.input = graph_input(path, self.session, declared)
        self._stages = {
            rep: (_session(enc, self.device, intra_op_threads), _session(cls, self.device, intra_op_threads))
            for rep, (enc, cls) in (stages or {}).items()
        }
        self._identity = spec.input.identity_representation
        self.representations: tuple[str, ...] = (self._identity, *self._stages)
        # one window more than a fixed batch, so the split path is probed too
        b = (self.input.fixed_batch or 1) + 1
        for rep in self.representations:
            what = path.name if rep == self._identity else f"{path.name} ({rep} stages)"
            try:
                out_z = self.logits_from(
                    self.encode(torch.zeros(b, *spec.window_shape, device=self.device), rep), rep
                )
            except Exception as e:  # ORT's own error types
                raise ValueError(
                    f"{what}: fails on a probe batch of silence (check the manifest's [input] and the "
                    f"graphs' inputs): {str(e).strip()[:300]}"
                ) from e
            check_output(tuple(out_z.shape), b, len(spec.labels), what)

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.input.run(lambda x: _run_graph(self.session, x), np.asarray(batch, dtype=np.float32))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        out = self._run(batch)
        return softmax_np(out) if self.spec.output == "logits" else out

    def encode(self, batch: torch.Tensor, representation: str) -> torch.Tensor:
        """Waveforms -> ``representation``; a stage's encode graph takes what the whole model
        takes (the manifest's [input] layout, dtype and scale)."""
        self._check_rep(representation)
        if representation == self._identity:
            return batch
        enc = self._stages[representation][0]
        x = batch.detach().cpu().numpy().astype(np.float32)
        z = in_batches_of(_fixed_batch(enc), lambda p: _run_graph(enc, self.input.adapt(p)), x)
        return torch.from_numpy(z).to(batch.device)

    def logits_from(self, z: torch.Tensor, representation: str) -> torch.Tensor:
        self._check_rep(representation)
        if representation == self._identity:
            out = self._run(z.detach().cpu().numpy())
        else:
            cls = self._stages[representation][1]
            zn = z.detach().cpu().numpy().astype(np.float32)
            out = in_batches_of(_fixed_batch(cls), lambda p: _run_graph(cls, p), zn)
        if self.spec.output == "probabilities":
            out = np.log(np.clip(out, 1e-12, None))
        return torch.from_numpy(out).to(z.device)

    def _check_rep(self, representation: str) -> None:
        if representation not in self.representations:
            raise ValueError(
                f"ONNX model {self.spec.name!r} offers representations {self.representations}, "
                f"not {representation!r}"
            )
