"""Attack interface and result type shared by every attack family (foolbox v3 style)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from avsentry.pipelines.recognizers.base import DifferentiableRecognizer


@dataclass(frozen=True, slots=True, kw_only=True)
class AttackResult:
    """Adversarial examples and how they fared against the undefended model.

    Attributes:
        adversarial: ``(batch, samples)`` float32 inputs, within the model's input bounds.
        original_labels / adversarial_labels: Undefended top-1 before and after, ``(batch,)``.
        success: Untargeted: label changed from the true one; targeted: reached the target.
        linf / l2: Perturbation norms per item.
        snr_db: Signal-to-perturbation ratio per item, in dB.
    """

    adversarial: np.ndarray
    original_labels: np.ndarray
    adversarial_labels: np.ndarray
    success: np.ndarray
    linf: np.ndarray
    l2: np.ndarray
    snr_db: np.ndarray


class Attack(Protocol):
    name: str

    def run(
        self,
        model: DifferentiableRecognizer,
        x: np.ndarray,
        y: np.ndarray,
        *,
        target: np.ndarray | None = None,
        seed: int = 0,
    ) -> AttackResult:
        """Attack ``(batch, samples)`` inputs with true labels ``y`` (or toward ``target``)."""
        ...


def finish(
    model: DifferentiableRecognizer,
    x: np.ndarray,
    adv: torch.Tensor,
    y: np.ndarray,
    target: np.ndarray | None,
) -> AttackResult:
    """Measure an attack's outcome and pack it."""
    a = adv.detach().cpu().numpy().astype(np.float32)
    before = model.predict(x).argmax(1)
    after = model.predict(a).argmax(1)
    success = after == target if target is not None else after != y
    d = a - x
    sig = np.sqrt(np.mean(x**2, axis=1)) + 1e-12
    noise = np.sqrt(np.mean(d**2, axis=1)) + 1e-12
    return AttackResult(
        adversarial=a,
        original_labels=before,
        adversarial_labels=after,
        success=success,
        linf=np.abs(d).max(axis=1),
        l2=np.sqrt((d**2).sum(axis=1)),
        snr_db=20 * np.log10(sig / noise),
    )
