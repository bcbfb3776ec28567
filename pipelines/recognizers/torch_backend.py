"""PyTorch backend: any ``nn.Module`` mapping windows (waveforms or clips) to scores, CPU or CUDA.

Modules that implement ``encode(wave, representation)`` and ``logits_from(z, representation)``
(as :class:`~pipelines.recognizers.digitnet.DigitNet` does) expose their inner representations
to randomized smoothing; any other module offers the window itself only (``waveform``, ``pixels``).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch
from torch import nn

from avsentry.pipelines.recognizers.base import resolve_device
from avsentry.pipelines.recognizers.inputs import ModelInput, check_output
from avsentry.pipelines.types import ModelSpec


class TorchRecognizer:
    """Wraps a torch module as a differentiable, smoothable recognizer.

    Args:
        module: The model's input (``model_input``) -> ``(batch, classes)``; put in eval mode here
            (a ``torch.export`` program's module is already an inference graph).
        spec: What the module expects and returns.
        device: ``"cpu"``, ``"cuda[:N]"`` or ``None``/``"auto"`` (CUDA when present).
        model_input: The module's input layout, dtype, scale and fixed batch (default
            ``(batch, window_samples)`` float32).
        what: How errors name the model (e.g. ``"torchscript kws.pt"``).

    Raises:
        ValueError: the module fails on a probe batch of silence, or its output is not one score
            per label.
    """

    def __init__(
        self,
        module: nn.Module,
        spec: ModelSpec,
        *,
        device: str | torch.device | None = None,
        model_input: ModelInput | None = None,
        what: str = "",
    ) -> None:
        self.spec = spec
        self.device = resolve_device(device)
        self.input = model_input or ModelInput.for_window(spec.window_shape)
        self.module = module.to(self.device)
        if not isinstance(module, torch.fx.GraphModule):  # exported graphs refuse eval(); they are one
            self.module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        staged = hasattr(module, "encode") and hasattr(module, "logits_from")
        reps = getattr(module, "representations", None) or (
            ("waveform", "spectrogram", "logmel") if staged else (spec.input.identity_representation,)
        )
        self.representations: tuple[str, ...] = tuple(reps)
        self._staged = staged
        self._probe(what or f"model {spec.name!r}")

    def _probe(self, what: str) -> None:
        b = (self.input.fixed_batch or 1) + 1  # one more than a fixed batch: the split is probed too
        x = torch.zeros(b, *self.spec.window_shape, device=self.device)
        try:
            with torch.no_grad():
                out = self.logits(x)
        except Exception as e:  # any failure of foreign code is the manifest's problem to explain
            shape = [b, *self.input.shape[1:]]
            raise ValueError(
                f"{what} fails on a {self.input.dtype} input of shape {shape} (the manifest's [input] "
                f"shape, dtype and scale): {type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
            ) from e
        check_output(tuple(out.shape), b, len(self.spec.labels), what)

    def _as_logits(self, out: torch.Tensor) -> torch.Tensor:
        return out if self.spec.output == "logits" else torch.log(out.clamp_min(1e-12))

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        return self._as_logits(self.input.run(lambda x: self.module(x).float(), batch))

    def encode(self, batch: torch.Tensor, representation: str) -> torch.Tensor:
        self._check_rep(representation)
        return cast(Any, self.module).encode(batch, representation) if self._staged else batch

    def logits_from(self, z: torch.Tensor, representation: str) -> torch.Tensor:
        self._check_rep(representation)
        if self._staged:
            return self._as_logits(cast(Any, self.module).logits_from(z, representation))
        return self.logits(z)

    @torch.no_grad()
    def predict(self, batch: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.asarray(batch, dtype=np.float32), device=self.device)
        return self.logits(x).float().softmax(dim=-1).cpu().numpy()

    def _check_rep(self, representation: str) -> None:
        if representation not in self.representations:
            raise ValueError(
                f"model {self.spec.name!r} offers representations {self.representations}, "
                f"not {representation!r}"
            )
