"""The field's reference implementations next to ours: IBM's Adversarial Robustness Toolbox
(ART; Nicolae et al., 2018) runs FGSM, PGD and Carlini-Wagner L2 on the same clips, and the guard
judges them like any other attack (``avsentry evaluate --art``; needs the ``art`` extra).

ART sees the same torch module as our attacks (waveform in, logits out, inputs clipped to the
model's bounds); budgets are the same per-clip L-inf radii (30 dB under each clip's RMS).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from avsentry.tools.attacks.base import AttackResult, Budget, perturbation_stats
from avsentry.tools.attacks.catalog import AttackSpec

ART_SNR_DB = 30.0


def _classifier(recognizer: Any) -> Any:
    try:
        from art.estimators.classification import PyTorchClassifier
    except ImportError as e:
        raise RuntimeError(
            "--art needs IBM's Adversarial Robustness Toolbox: pip install -e '.[art]' "
            "(tools/setup.sh --dev installs it)"
        ) from e
    spec = recognizer.spec

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = recognizer.module

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return recognizer.logits(x)

    return PyTorchClassifier(
        model=Logits(),
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(spec.window_samples,),
        nb_classes=len(spec.labels),
        clip_values=spec.input_bounds,
        device_type="gpu" if recognizer.device.type == "cuda" else "cpu",
    )


def art_attacks(classifier: Any, eps: np.ndarray) -> dict[str, Any]:
    """ART's FGSM, PGD (20 steps) and CW-L2 (3 binary-search steps, 50 iterations), untargeted."""
    from art.attacks.evasion import CarliniL2Method, FastGradientMethod, ProjectedGradientDescent

    e = eps[:, None]
    return {
        "art-fgsm": FastGradientMethod(classifier, norm=np.inf, eps=e, eps_step=e, batch_size=len(eps)),
        "art-pgd": ProjectedGradientDescent(
            classifier,
            norm=np.inf,
            eps=e,
            eps_step=e * 2.5 / 20,
            max_iter=20,
            batch_size=len(eps),
            verbose=False,
        ),
        "art-cw-l2": CarliniL2Method(
            classifier,
            binary_search_steps=3,
            max_iter=50,
            learning_rate=0.01,
            batch_size=len(eps),
            verbose=False,
        ),
    }


def run(detector: Any, ev: Any, *, guard: Any, seed: int = 0, progress: bool = True) -> list[Any]:
    """ART's attacks on the clips ``ev`` attacked, judged by ``guard``; returns outcomes to add
    to ``ev.outcomes`` (their metrics filled in)."""
    from avsentry.tools.evaluate import AttackOutcome, attack_metrics, guard_scores

    rec = detector.recognizer
    classifier = _classifier(rec)
    idx = np.flatnonzero(ev.clean.raw == ev.y)
    x, y = ev.x[idx], ev.y[idx]
    eps = Budget(norm="linf", snr_db=ART_SNR_DB).per_item(x)
    np.random.seed(seed)  # ART draws its random starts from numpy's global generator
    outcomes = []
    for name, attack in art_attacks(classifier, eps).items():
        t = time.perf_counter()
        adv = attack.generate(x=x.astype(np.float32)).astype(np.float32)
        secs = time.perf_counter() - t
        before = rec.predict(x).argmax(1)
        after = rec.predict(adv).argmax(1)
        res = AttackResult(
            adversarial=adv,
            original_labels=before,
            adversarial_labels=after,
            success=after != y,
            queries=np.zeros(len(adv), dtype=np.int64),
            **perturbation_stats(x, adv),
        )
        budget = "" if name == "art-cw-l2" else f":eps={ART_SNR_DB:g}db"
        spec = AttackSpec(family=name, attack=None, target="none", text=f"{name}{budget}")
        scores = guard_scores(guard, adv, desc=f"{name} guard", progress=progress)
        o = AttackOutcome(spec=spec, result=res, scores=scores, attacked=idx, y=y, target=None, seconds=secs)
        o.metrics = attack_metrics(ev.y, ev.clean, o)
        outcomes.append(o)
    return outcomes
