"""The frame-saliency attack on video recognizers (Inkawhich, Inkawhich, Chen & Li, "Adversarial
Attacks for Optical Flow-Based Action Recognition Classifiers", 2018).

A frame's saliency is the mean absolute gradient of the loss over its pixels. Frames are
perturbed whole, each with an L-inf FGSM step of ``eps`` (``sign`` of the gradient on that frame),
in decreasing saliency, until the label changes, so a clip is fooled by perturbing as few frames
as the model needs:

- ``one_shot``: every frame at once, from one gradient (FGSM on the clip; the baseline).
- ``iterative``: one gradient, then frames one at a time in its saliency order.
- ``refresh``: the gradient and saliency are recomputed after each frame, at the current clip,
  and the most salient frame not yet perturbed is next.
- ``frames``: only the frames the user names (``frames=(0, 5, 9)``), from one gradient.

Untargeted ascends the true label's loss; targeted descends the target's. Clips are ``(batch,
frames, height, width, 3)`` in the model's input bounds; :func:`frames_changed` counts the frames
an attack touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from avsentry.pipelines.recognizers.base import DifferentiableRecognizer
from avsentry.tools.attacks.base import AttackResult, ClassifierObjective, clip_to_bounds, finish

MODES = ("one_shot", "iterative", "refresh", "frames")


def frames_changed(x: np.ndarray, adv: np.ndarray) -> np.ndarray:
    """Per clip, how many frames differ from the clean clip: ``(batch,)`` int64."""
    d = np.abs(np.asarray(adv, np.float32) - np.asarray(x, np.float32))
    return (d.reshape(d.shape[0], d.shape[1], -1).max(axis=2) > 0).sum(axis=1).astype(np.int64)


@dataclass(frozen=True, slots=True, kw_only=True)
class FrameSaliency:
    """Perturb the most salient frames of each clip first.

    Attributes:
        eps: L-inf step on each perturbed frame, in the model's input units (pixels in [0, 1]:
            ``8/255`` by default).
        mode: One of :data:`MODES` (default ``iterative``).
        frames: The frames to perturb, for ``mode="frames"``.
        loss: ``"ce"`` or ``"margin"``.
    """

    eps: float = 8 / 255
    mode: str = "iterative"
    frames: tuple[int, ...] = field(default_factory=tuple)
    loss: str = "ce"
    name: str = "frame_saliency"

    def __post_init__(self) -> None:
        if not self.eps > 0:
            raise ValueError(f"eps must be positive, got {self.eps}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if (self.mode == "frames") != bool(self.frames):
            raise ValueError("frames= goes with mode='frames' (and only with it)")

    def run(
        self,
        model: DifferentiableRecognizer,
        x: np.ndarray,
        y: np.ndarray,
        *,
        target: np.ndarray | None = None,
        seed: int = 0,
    ) -> AttackResult:
        """Attack clips ``x`` with true labels ``y`` (or toward ``target``); deterministic
        (``seed`` is accepted for the common interface). ``queries`` counts gradients."""
        del seed
        xn = np.asarray(x, np.float32)
        if xn.ndim != 5:
            raise ValueError(f"frame saliency attacks video clips (batch, frames, h, w, 3), got {xn.shape}")
        n_frames = xn.shape[1]
        if any(not 0 <= f < n_frames for f in self.frames):
            raise ValueError(f"frames {self.frames} outside 0..{n_frames - 1}")
        dev = model.device
        lo, hi = model.spec.input_bounds
        obj = ClassifierObjective(model, kind=self.loss)
        x0 = torch.as_tensor(xn, device=dev)
        goal = torch.as_tensor(target if target is not None else y, device=dev, dtype=torch.long)
        targeted = target is not None

        def gradient(at: torch.Tensor) -> torch.Tensor:
            at = at.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(obj.loss(at, goal, targeted).sum(), at)
            return g

        def fooled(at: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                labels = model.logits(at).argmax(1)
            return labels == goal if targeted else labels != goal

        grad = gradient(x0)
        queries = np.ones(len(xn), np.int64)
        if self.mode in ("one_shot", "frames"):
            mask = torch.zeros(n_frames, dtype=torch.bool, device=dev)
            mask[list(self.frames) if self.mode == "frames" else slice(None)] = True
            step = grad.sign() * mask.view(1, -1, 1, 1, 1)
            adv = clip_to_bounds(x0 + self.eps * step, x0, lo, hi)
            return finish(model, xn, adv, np.asarray(y), target, queries=queries)
        adv = x0.clone()
        done = torch.zeros(len(xn), dtype=torch.bool, device=dev)
        used = torch.zeros(len(xn), n_frames, dtype=torch.bool, device=dev)
        rows = torch.arange(len(xn), device=dev)
        for k in range(n_frames):
            saliency = grad.abs().flatten(2).mean(dim=2).masked_fill(used, -1.0)  # (batch, frames)
            frame = saliency.argmax(dim=1)
            active = ~done
            used[rows[active], frame[active]] = True
            step = grad[rows, frame].sign() * self.eps
            candidate = adv.clone()
            candidate[rows, frame] = adv[rows, frame] + step
            candidate = clip_to_bounds(candidate, x0, lo, hi)
            adv = torch.where(active.view(-1, 1, 1, 1, 1), candidate, adv)
            done = done | fooled(adv)
            if bool(done.all()) or k == n_frames - 1:
                break
            if self.mode == "refresh":
                grad = gradient(adv)
                queries += (~done).cpu().numpy()
        return finish(model, xn, adv, np.asarray(y), target, queries=queries)
