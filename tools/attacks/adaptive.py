"""Adaptive attacks on the whole guard: BPDA through the codecs, EOT over the noise, and a loss
that keeps every defended view in agreement with the raw prediction so the flag does not fire.

The honest test of a detection defence is an attacker who has read its code (Athalye, Carlini &
Wagner, ICML 2018; Tramer et al., NeurIPS 2020, "On adaptive attacks to adversarial example
defenses"). This one knows the detector's configuration (its transforms with their parameters,
the smoothing representation and sigma, and the threshold) but not the per-window seed:

- **BPDA** (backward pass differentiable approximation): each codec round trip (MP3, Opus, AAC,
  and any other transform) runs for real in the forward pass and as the identity in the backward
  pass (:meth:`~avsentry.pipelines.transforms.base.BaseTransform.differentiable`);
- **EOT** (expectation over transformation): the randomized views (the noise squeezer and the
  Gaussian copies of randomized smoothing, in the smoothing representation) are drawn afresh
  ``eot`` times per step and their losses averaged;
- **the loss** drives the raw prediction to the goal label *and* every defended view to the same
  label, minus ``distance_weight`` times the L1 distance between the raw softmax and each view's
  softmax (the detector's score is the largest of those distances), i.e. it minimises the
  detector score while fooling the model.

Untargeted, the goal is each clip's runner-up class on the clean input (the easiest label to
reach without disagreement). Every few steps the attacker runs its own copy of the detector (same
configuration and threshold, its own seed, since the service's seed is secret) and freezes a clip
at the first iterate that copy lets through: the quietest perturbation on the path that evades.
Success means fooled *and* not flagged by the real detector (run on the final adversarial with
the detector's own seed): :class:`GuardAttack` reports that as ``success``, and ``flagged``
alongside.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from avsentry.pipelines.detection import Detector
from avsentry.pipelines.recognizers.base import DifferentiableRecognizer
from avsentry.pipelines.smoothing import encode, logits_from
from avsentry.pipelines.transforms import Transform
from avsentry.tools.attacks.base import AttackResult, Budget, generator, logits_loss
from avsentry.tools.attacks.pgd import PGD


@dataclass
class GuardObjective:
    """The detector-aware loss (see module doc); ``loss`` returns ``(batch,)`` values to maximise.

    Args:
        model: The guarded recognizer (differentiable).
        transforms: The detector's transforms (BPDA in the backward pass).
        smoothing: ``(representation, sigma)`` of the detector's smoothing, or ``None``.
        eot: Fresh draws of the randomized views per loss evaluation.
        distance_weight: Weight of the raw-vs-view softmax L1 distances.
        seed: Seeds the EOT draws (the attacker's own randomness, not the detector's).
    """

    model: DifferentiableRecognizer
    transforms: list[Transform]
    smoothing: tuple[str, float] | None
    eot: int = 4
    distance_weight: float = 1.0
    seed: int = 0
    _rng: np.random.Generator = field(init=False, repr=False)
    _gen: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.eot < 1:
            raise ValueError(f"eot must be >= 1, got {self.eot}")
        self._rng = np.random.default_rng(self.seed)
        self._gen = generator(self.model.device, self.seed)

    @classmethod
    def of(cls, detector: Detector, **kw: object) -> GuardObjective:
        """The objective against ``detector``'s transforms and smoothing."""
        s = detector.config.smoothing
        model = detector.recognizer
        if not isinstance(model, DifferentiableRecognizer):
            raise TypeError("adaptive attacks need a differentiable (torch) recognizer")
        return cls(
            model=model,
            transforms=list(detector.transforms),
            smoothing=None if s is None else (s.representation, s.sigma),
            **kw,  # type: ignore[arg-type]
        )

    def views(self, adv: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Raw logits and, per defended view and EOT draw, the view's logits (differentiable)."""
        m = self.model
        raw = m.logits(adv)
        views: list[torch.Tensor] = []
        for t in self.transforms:
            draws = self.eot if getattr(t, "randomized", False) else 1
            for _ in range(draws):
                views.append(m.logits(t.differentiable(adv, self._rng)))
        if self.smoothing is not None:
            rep, sigma = self.smoothing
            z = encode(m, adv, rep)
            for _ in range(self.eot):
                noise = torch.randn(z.shape, generator=self._gen, device=z.device, dtype=z.dtype)
                views.append(logits_from(m, z + sigma * noise, rep))
        return raw, views

    def loss(self, adv: torch.Tensor, goal: torch.Tensor, targeted: bool) -> torch.Tensor:
        raw, views = self.views(adv)
        total = logits_loss(raw, goal, targeted)
        p_raw = raw.softmax(1)
        for v in views:
            total = total + logits_loss(v, goal, targeted) / len(views)
            total = total - self.distance_weight * (v.softmax(1) - p_raw).abs().sum(1) / len(views)
        return total


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardAttack:
    """PGD with the :class:`GuardObjective` against a :class:`Detector`: BPDA + EOT.

    Attributes:
        budget: The perturbation ball.
        steps: PGD iterations.
        restarts: Random restarts (a clip keeps the first that fools the raw model).
        eot: Fresh randomized views per step.
        distance_weight: Weight of the softmax-distance term.
        step_ratio: PGD step as a fraction of the radius (default ``2.5 / steps``).
        check_every: Steps between runs of the attacker's copy of the detector.
    """

    budget: Budget = field(default_factory=lambda: Budget(norm="linf", snr_db=30.0))
    steps: int = 100
    restarts: int = 1
    eot: int = 4
    distance_weight: float = 1.0
    step_ratio: float | None = None
    check_every: int = 5
    name: str = "adaptive"

    def run(
        self,
        detector: Detector,
        x: np.ndarray,
        y: np.ndarray,
        *,
        target: np.ndarray | None = None,
        seed: int = 0,
    ) -> tuple[AttackResult, np.ndarray]:
        """Attack clips against ``detector``.

        Returns:
            The result (``success``: fooled and not flagged) and ``flagged`` ``(batch,)`` from the
            real detector on the adversarials.
        """
        model = detector.recognizer
        if not isinstance(model, DifferentiableRecognizer):
            raise TypeError("adaptive attacks need a differentiable (torch) recognizer")
        xn = np.asarray(x, np.float32)
        y = np.asarray(y, np.int64)
        goal = target
        if goal is None:  # untargeted: the clean runner-up class
            p = model.predict(xn)
            p[np.arange(len(y)), y] = -1.0
            goal = p.argmax(1)
        pgd = PGD(
            budget=self.budget,
            steps=self.steps,
            restarts=self.restarts,
            step_ratio=self.step_ratio,
            name=self.name,
        )
        objective = GuardObjective.of(detector, eot=self.eot, distance_weight=self.distance_weight, seed=seed)
        shadow = Detector(
            model,
            dataclasses.replace(
                detector.config, seed=int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])
            ),
            executor=detector.executor,
        )
        goal_t = torch.as_tensor(goal, device=model.device)
        y_t = torch.as_tensor(y, device=model.device)

        def evades(adv: torch.Tensor) -> torch.Tensor:
            labels = model.logits(adv).argmax(1)
            fooled = labels == goal_t if target is not None else labels != y_t
            out = torch.zeros_like(fooled)
            idx = torch.nonzero(fooled).flatten().tolist()
            if idx:
                verdicts = shadow.analyze(adv[idx].cpu().numpy())
                out[idx] = torch.tensor([not v.flagged for v in verdicts], device=out.device)
            return out

        res = pgd.run(
            model,
            xn,
            y,
            target=goal,
            seed=seed,
            objective=objective,
            stop_when=evades,
            check_every=self.check_every,
        )
        fooled = res.adversarial_labels == target if target is not None else res.adversarial_labels != y
        verdicts = detector.analyze(res.adversarial)
        flagged = np.array([v.flagged for v in verdicts], dtype=bool)
        views = len(objective.transforms) + (self.eot if objective.smoothing else 0)
        return (
            dataclasses.replace(
                res,
                success=fooled & ~flagged,
                queries=res.queries * (1 + views),
            ),
            flagged,
        )
