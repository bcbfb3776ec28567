"""NES: black-box attacks with a limited query budget (Ilyas, Engstrom, Athalye & Lin, ICML 2018,
"Black-box adversarial attacks with limited queries and information").

The gradient of a loss is estimated from queries alone by natural evolution strategies: for
``samples_per_draw / 2`` antithetic Gaussian directions ``u_i``,
``g = sum_i (L(x + sigma u_i) - L(x - sigma u_i)) u_i / (samples_per_draw * sigma)``; the estimate
then drives PGD-style steps (``sign(g)`` for L-inf, ``g / ||g||_2`` for L2, with momentum)
projected onto the :class:`~avsentry.tools.attacks.base.Budget` ball and the input bounds. Each
item stops on its own as soon as the current point succeeds, or when its next draw would pass
``max_queries``; the result reports the queries each item spent.

Anything that answers queries can be attacked: an :class:`Oracle` maps a ``(batch, samples)``
batch to an :class:`OracleAnswer` (per-row top-1 labels and confidences, the probabilities when
the oracle exposes them, and optionally the guard's ``flagged`` and detector ``score``). A
:class:`~avsentry.pipelines.recognizers.base.Recognizer` (torch or ONNX) is wrapped in
:class:`RecognizerOracle`; a guard server answers through ``avsentry.stream.oracle``.

The loss to maximise, per row:

- with probabilities (the full-information setting): cross-entropy or the Carlini-Wagner margin
  on log-probabilities, as in :func:`~avsentry.tools.attacks.base.logits_loss`;
- with only the top-1 label and its confidence ``c`` (the partial-information setting a guard
  server exposes: each verdict has ``raw_label``, ``raw_confidence``, ``score``, ``flagged``), a
  bound on the same cross-entropy: untargeted, ``-log c`` while the label is still the true one
  (exactly its cross-entropy) and ``-log(1 - c)`` once it is not (``p_y <= 1 - c``); targeted,
  ``log c`` when the label is the target and ``log(1 - c)`` otherwise, so other labels' confidence
  is pushed down until the target surfaces (weak: there is no signal toward a target that never
  comes first).

With ``detector_weight > 0`` and an oracle that reports a detector score, ``detector_weight *
score`` is subtracted from the loss, so the attack also steers away from the guard's flag; with
``evade=True`` an item counts as a success only when its label succeeds *and* it is not flagged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from avsentry.pipelines.recognizers.base import Recognizer
from avsentry.tools.attacks.base import AttackResult, Budget, logits_loss, perturbation_stats


class OracleAnswer(Protocol):
    """What an oracle says about a batch of ``b`` rows (read-only attributes).

    Attributes:
        labels: Top-1 label per row, ``(b,)`` int (indices into the model's labels).
        confidence: The top-1 label's probability per row, ``(b,)`` float.
        probabilities: ``(b, classes)`` probabilities, or ``None`` when the oracle hides them.
        flagged: Whether the guard flagged each row, ``(b,)`` bool, or ``None`` (no guard).
        score: The guard's detector score per row, ``(b,)`` float, or ``None`` (no guard).
    """

    @property
    def labels(self) -> np.ndarray: ...
    @property
    def confidence(self) -> np.ndarray: ...
    @property
    def probabilities(self) -> np.ndarray | None: ...
    @property
    def flagged(self) -> np.ndarray | None: ...
    @property
    def score(self) -> np.ndarray | None: ...


@runtime_checkable
class Oracle(Protocol):
    """Anything that answers queries: ``(b, samples)`` float32 rows in, one answer per row."""

    def query(self, batch: np.ndarray) -> OracleAnswer: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """A plain :class:`OracleAnswer`."""

    labels: np.ndarray
    confidence: np.ndarray
    probabilities: np.ndarray | None = None
    flagged: np.ndarray | None = None
    score: np.ndarray | None = None


class RecognizerOracle:
    """The full-information oracle of an undefended recognizer (any backend, ONNX included).

    Args:
        recognizer: Answers with ``predict``.
        batch_size: Rows per ``predict`` call (bounds memory for large draws).
    """

    def __init__(self, recognizer: Recognizer, *, batch_size: int = 256) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.recognizer = recognizer
        self.batch_size = batch_size

    def query(self, batch: np.ndarray) -> Answer:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        probs = np.concatenate(
            [self.recognizer.predict(x[s : s + self.batch_size]) for s in range(0, len(x), self.batch_size)]
        )
        return Answer(labels=probs.argmax(1), confidence=probs.max(1), probabilities=probs)


def oracle_loss(
    answer: OracleAnswer,
    goal: np.ndarray,
    targeted: bool,
    *,
    kind: str = "ce",
    detector_weight: float = 0.0,
) -> np.ndarray:
    """Per-row loss to maximise from an oracle's answer (see the module docstring).

    Args:
        answer: The oracle's answer for ``b`` rows.
        goal: The true label (untargeted) or the target per row, ``(b,)``.
        targeted: Whether ``goal`` holds targets.
        kind: ``"ce"`` or ``"margin"`` (used with probabilities; the top-1 proxy is always the
            cross-entropy bound).
        detector_weight: Weight of the detector score subtracted from the loss (when reported).
    """
    goal = np.asarray(goal, dtype=np.int64)
    if answer.probabilities is not None:
        logp = torch.from_numpy(np.log(np.clip(np.asarray(answer.probabilities, np.float64), 1e-30, None)))
        loss = logits_loss(logp, torch.from_numpy(goal), targeted, kind).numpy()
    else:
        c = np.clip(np.asarray(answer.confidence, np.float64), 1e-9, 1 - 1e-9)
        hit = np.asarray(answer.labels) == goal
        loss = (
            np.where(hit, np.log(c), np.log1p(-c)) if targeted else np.where(hit, -np.log(c), -np.log1p(-c))
        )
    if detector_weight and answer.score is not None:
        loss = loss - detector_weight * np.asarray(answer.score, np.float64)
    return np.asarray(loss, np.float64)


@dataclass(frozen=True, slots=True, kw_only=True)
class NES:
    """NES gradient estimation + PGD, within a per-item query budget.

    Attributes:
        budget: The perturbation ball (norm, absolute ``eps`` or ``snr_db``).
        max_queries: Oracle queries per item, at most (the initial check included).
        samples_per_draw: Queries per gradient estimate (antithetic pairs: even, >= 2).
        fd_sigma: Search scale in sample units; ``None``: half of each item's per-sample radius
            (L-inf: ``eps``; L2: ``eps / sqrt(samples)``).
        step_ratio: Step size as a fraction of each item's radius.
        momentum: Weight of the previous direction in the gradient estimate (0: none).
        loss: ``"ce"`` or ``"margin"`` when the oracle gives probabilities.
        detector_weight: Weight of the guard's detector score subtracted from the loss.
        evade: Count an item as a success only when it is also not flagged.
        bounds: Input bounds for an oracle that is not a recognizer (a recognizer's own
            ``spec.input_bounds`` take precedence).
    """

    budget: Budget = field(default_factory=lambda: Budget(norm="linf", snr_db=20.0))
    max_queries: int = 2000
    samples_per_draw: int = 50
    fd_sigma: float | None = None
    step_ratio: float = 0.1
    momentum: float = 0.9
    loss: str = "ce"
    detector_weight: float = 0.0
    evade: bool = False
    bounds: tuple[float, float] = (-1.0, 1.0)
    name: str = "nes"

    def __post_init__(self) -> None:
        if self.samples_per_draw < 2 or self.samples_per_draw % 2:
            raise ValueError(f"samples_per_draw must be even and >= 2, got {self.samples_per_draw}")
        if self.max_queries < self.samples_per_draw + 2:
            raise ValueError(
                f"max_queries ({self.max_queries}) must allow at least one draw and check "
                f"({self.samples_per_draw + 2})"
            )
        if self.fd_sigma is not None and not self.fd_sigma > 0:
            raise ValueError(f"fd_sigma must be > 0, got {self.fd_sigma}")
        if not self.step_ratio > 0:
            raise ValueError(f"step_ratio must be > 0, got {self.step_ratio}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.loss not in ("ce", "margin"):
            raise ValueError(f"loss must be 'ce' or 'margin', got {self.loss!r}")
        if self.detector_weight < 0:
            raise ValueError(f"detector_weight must be >= 0, got {self.detector_weight}")

    def run(
        self,
        model: Oracle | Recognizer | Any,
        x: np.ndarray,
        y: np.ndarray,
        *,
        target: np.ndarray | None = None,
        seed: int = 0,
    ) -> AttackResult:
        """Attack ``(batch, samples)`` clips through ``model`` (an :class:`Oracle`, or a
        recognizer that is wrapped in :class:`RecognizerOracle`); success is judged on the
        oracle's own answers."""
        if isinstance(model, Oracle):
            oracle: Oracle = model
            lo, hi = self.bounds
        elif isinstance(model, Recognizer):
            oracle = RecognizerOracle(model)
            lo, hi = model.spec.input_bounds
        else:
            raise TypeError(f"model must be an Oracle (query) or a Recognizer (predict), got {type(model)!r}")
        x0 = np.ascontiguousarray(x, dtype=np.float64)
        if x0.ndim != 2:
            raise ValueError(f"expected (batch, samples) clips, got shape {x0.shape}")
        n, samples = x0.shape
        y = np.asarray(y, dtype=np.int64)
        targeted = target is not None
        goal = np.asarray(target if targeted else y, dtype=np.int64)
        eps = self.budget.per_item(x0).astype(np.float64)
        linf = self.budget.norm == "linf"
        per_sample = eps if linf else eps / math.sqrt(samples)
        sigma = np.full(n, self.fd_sigma) if self.fd_sigma is not None else 0.5 * per_sample
        step = self.step_ratio * eps
        half = self.samples_per_draw // 2
        rng = np.random.default_rng(seed)

        first = oracle.query(x0.astype(np.float32))
        before = np.asarray(first.labels, dtype=np.int64).copy()
        labels = before.copy()
        done = self._success(first, goal, targeted)
        queries = np.ones(n, dtype=np.int64)
        adv = x0.copy()
        direction = np.zeros_like(x0)
        while True:
            active = np.flatnonzero(~done & (queries + self.samples_per_draw + 1 <= self.max_queries))
            if not len(active):
                break
            u = rng.standard_normal((len(active), half, samples))
            s = sigma[active, None, None]
            probes = np.concatenate([adv[active, None] + s * u, adv[active, None] - s * u], axis=1)
            ans = oracle.query(np.clip(probes, lo, hi).reshape(-1, samples).astype(np.float32))
            loss = oracle_loss(
                ans,
                np.repeat(goal[active], 2 * half),
                targeted,
                kind=self.loss,
                detector_weight=self.detector_weight,
            ).reshape(len(active), 2 * half)
            diff = loss[:, :half] - loss[:, half:]
            grad = np.einsum("ih,ihs->is", diff, u) / (self.samples_per_draw * sigma[active, None])
            grad /= np.maximum(np.linalg.norm(grad, axis=1, keepdims=True), 1e-30)
            d = self.momentum * direction[active] + (1 - self.momentum) * grad
            direction[active] = d
            if linf:
                moved = adv[active] + step[active, None] * np.sign(d)
                delta = np.clip(moved - x0[active], -eps[active, None], eps[active, None])
            else:
                unit = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-30)
                delta = adv[active] + step[active, None] * unit - x0[active]
                norm = np.linalg.norm(delta, axis=1, keepdims=True)
                delta *= np.minimum(1.0, eps[active, None] / np.maximum(norm, 1e-30))
            adv[active] = np.clip(x0[active] + delta, lo, hi)
            check = oracle.query(adv[active].astype(np.float32))
            labels[active] = np.asarray(check.labels, dtype=np.int64)
            done[active] = self._success(check, goal[active], targeted)
            queries[active] += self.samples_per_draw + 1

        a = adv.astype(np.float32)
        return AttackResult(
            adversarial=a,
            original_labels=before,
            adversarial_labels=labels,
            success=done,
            queries=queries,
            **perturbation_stats(np.asarray(x, np.float32), a),
        )

    def _success(self, answer: OracleAnswer, goal: np.ndarray, targeted: bool) -> np.ndarray:
        lab = np.asarray(answer.labels, dtype=np.int64)
        ok = lab == goal if targeted else lab != goal
        if self.evade:
            if answer.flagged is None:
                raise ValueError("evade=True needs an oracle that reports flagged")
            ok &= ~np.asarray(answer.flagged, dtype=bool)
        return np.asarray(ok, dtype=bool)
