"""What every attack family shares (foolbox v3 / torchattacks style): budgets, objectives,
targets, the result type, batching with progress, and seeding.

An attack is a frozen dataclass of its parameters with ``run(model, x, y, *, target, seed)`` on
one batch of ``(batch, samples)`` waveforms; :func:`run_attack` splits a large set into batches,
shows a progress bar and seeds each batch from ``(seed, batch index)``, so the same seed and batch
size give the same adversarials.

Budgets are in sample units (waveform in the model's input bounds, usually [-1, 1]) or relative
to each clip's signal, in dB (:class:`Budget`): ``snr_db=30`` means the perturbation is at least
30 dB quieter than the clip (L2: ``||delta||_2 <= ||x||_2 * 10^(-30/20)``; L-inf: every sample's
change is at most the clip's RMS times ``10^(-30/20)``, so its RMS, too, stays 30 dB down).

White-box attacks maximise an :class:`Objective` of the adversarial batch. The default,
:class:`ClassifierObjective`, is the undefended model's cross-entropy (or Carlini-Wagner margin);
adaptive attacks (:mod:`~avsentry.tools.attacks.adaptive`) swap in one that sees the whole guard.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from avsentry.pipelines.recognizers.base import DifferentiableRecognizer, Recognizer

NORMS = ("linf", "l2")


@dataclass(frozen=True, slots=True, kw_only=True)
class Budget:
    """How large a perturbation may be.

    Exactly one of ``eps`` (absolute, in sample units) and ``snr_db`` (relative to each clip) is
    set.

    Attributes:
        norm: ``"linf"`` or ``"l2"``.
        eps: Radius of the ball in sample units.
        snr_db: The perturbation is at least this many dB quieter than the clip (see module doc).
    """

    norm: str = "linf"
    eps: float | None = None
    snr_db: float | None = None

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if (self.eps is None) == (self.snr_db is None):
            raise ValueError("give exactly one of eps (absolute) and snr_db (relative to the clip)")
        if self.eps is not None and not (math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"eps must be a positive number, got {self.eps}")
        if self.snr_db is not None and not math.isfinite(self.snr_db):
            raise ValueError(f"snr_db must be finite, got {self.snr_db}")

    @classmethod
    def parse(cls, norm: str, text: str) -> Budget:
        """``"0.002"`` or ``"4/255"`` (absolute) or ``"30db"`` / ``"30dB"`` (relative to the clip)."""
        t = text.strip().lower()
        try:
            if t.endswith("db"):
                return cls(norm=norm, snr_db=float(t[:-2]))
            num, slash, den = t.partition("/")
            return cls(norm=norm, eps=float(num) / float(den) if slash else float(num))
        except (ValueError, ZeroDivisionError) as e:
            raise ValueError(f"budget {text!r}: {e}") from None

    def per_item(self, x: np.ndarray) -> np.ndarray:
        """Per-clip radius ``(batch,)`` float32 for ``(batch, *item)`` clips (audio windows or
        video clips; norms over each whole item)."""
        if self.eps is not None:
            return np.full(len(x), self.eps, dtype=np.float32)
        assert self.snr_db is not None
        scale = 10 ** (-self.snr_db / 20)
        x64 = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        ref = np.sqrt((x64**2).sum(axis=1)) if self.norm == "l2" else np.sqrt((x64**2).mean(axis=1))
        return np.maximum(ref * scale, 1e-8).astype(np.float32)

    def describe(self) -> str:
        return f"{self.norm} eps={self.eps:g}" if self.eps is not None else f"{self.norm} {self.snr_db:g} dB"


class Objective(Protocol):
    """What a white-box attack maximises.

    ``loss(adv, goal, targeted)`` returns ``(batch,)`` values to maximise (their sum is
    differentiated); ``labels(adv)`` the label the attack's success is judged on.
    """

    model: DifferentiableRecognizer

    def loss(self, adv: torch.Tensor, goal: torch.Tensor, targeted: bool) -> torch.Tensor: ...


@dataclass
class ClassifierObjective:
    """The undefended model's loss: cross-entropy, or the Carlini-Wagner margin.

    Untargeted: maximise CE of the true label (or ``max_{j != y} z_j - z_y``). Targeted:
    maximise ``-CE`` of the target (or ``z_t - max_{j != t} z_j``). The margin is clamped at
    ``kappa`` so a confidently fooled item stops pulling.
    """

    model: DifferentiableRecognizer
    kind: str = "ce"
    kappa: float = math.inf

    def loss(self, adv: torch.Tensor, goal: torch.Tensor, targeted: bool) -> torch.Tensor:
        return logits_loss(self.model.logits(adv), goal, targeted, self.kind, self.kappa)


def logits_loss(
    logits: torch.Tensor, goal: torch.Tensor, targeted: bool, kind: str = "ce", kappa: float = math.inf
) -> torch.Tensor:
    """Per-item loss to maximise from ``(batch, classes)`` logits (see :class:`ClassifierObjective`)."""
    if kind == "ce":
        ce = F.cross_entropy(logits, goal, reduction="none")
        return -ce if targeted else ce
    if kind != "margin":
        raise ValueError(f"loss kind must be 'ce' or 'margin', got {kind!r}")
    own = logits.gather(1, goal[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(goal, logits.shape[1]).bool(), -math.inf).amax(1)
    m = own - other if targeted else other - own
    return m.clamp(max=kappa)


@dataclass(frozen=True, slots=True, kw_only=True)
class AttackResult:
    """Adversarial examples and how they fared against the undefended model.

    Attributes:
        adversarial: ``(batch, samples)`` float32 inputs, within the model's input bounds.
        original_labels / adversarial_labels: Undefended top-1 before and after, ``(batch,)``.
        success: Untargeted: label changed from the true one; targeted: reached the target.
        linf / l2: Perturbation norms per item.
        snr_db: Signal-to-perturbation ratio per item, in dB (``inf`` when unchanged).
        queries: Model evaluations spent per item (forward or forward+backward passes).
        l0: Samples changed per item.
    """

    adversarial: np.ndarray
    original_labels: np.ndarray
    adversarial_labels: np.ndarray
    success: np.ndarray
    linf: np.ndarray
    l2: np.ndarray
    snr_db: np.ndarray
    queries: np.ndarray
    l0: np.ndarray

    def __len__(self) -> int:
        return len(self.adversarial)

    @staticmethod
    def concatenate(parts: Sequence[AttackResult]) -> AttackResult:
        return AttackResult(
            **{
                f.name: np.concatenate([getattr(p, f.name) for p in parts])
                for f in dataclasses.fields(AttackResult)
            }
        )


class Attack(Protocol):
    """An attack family with its parameters fixed."""

    @property
    def name(self) -> str: ...

    def run(
        self,
        model: Any,
        x: np.ndarray,
        y: np.ndarray,
        *,
        target: np.ndarray | None = None,
        seed: int = 0,
    ) -> AttackResult:
        """Attack ``(batch, samples)`` inputs with true labels ``y`` (or toward ``target``)."""
        ...


def params_of(attack: Attack) -> dict[str, Any]:
    """An attack's parameters as JSON-ready values (for manifests and reports)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(attack):  # type: ignore[arg-type]
        v = getattr(attack, f.name)
        if isinstance(v, Budget):
            out.update({"norm": v.norm, "eps": v.eps, "budget_snr_db": v.snr_db})
        elif isinstance(v, int | float | str | bool) or v is None:
            out[f.name] = v
        elif isinstance(v, tuple | list):
            out[f.name] = list(v)
    return out


def perturbation_stats(x: np.ndarray, adv: np.ndarray) -> dict[str, np.ndarray]:
    """Per-item L-inf, L2, L0 (values changed) and SNR in dB of ``adv - x``, over each whole item."""
    x64 = np.asarray(x, np.float64).reshape(len(x), -1)
    d = np.asarray(adv, np.float64).reshape(len(x), -1) - x64
    sig = np.sqrt((x64**2).sum(axis=1))
    noise = np.sqrt((d**2).sum(axis=1))
    with np.errstate(divide="ignore"):
        snr = np.where(noise > 0, 20 * np.log10(np.maximum(sig, 1e-12) / np.maximum(noise, 1e-300)), np.inf)
    return {
        "linf": np.abs(d).max(axis=1).astype(np.float32),
        "l2": noise.astype(np.float32),
        "l0": (np.abs(d) > 0).sum(axis=1).astype(np.int64),
        "snr_db": snr.astype(np.float32),
    }


def finish(
    model: Recognizer,
    x: np.ndarray,
    adv: torch.Tensor | np.ndarray,
    y: np.ndarray,
    target: np.ndarray | None,
    *,
    queries: np.ndarray | int = 0,
    before: np.ndarray | None = None,
) -> AttackResult:
    """Measure an attack's outcome against the undefended model and pack it."""
    a = adv.detach().cpu().numpy() if isinstance(adv, torch.Tensor) else np.asarray(adv)
    a = np.ascontiguousarray(a, dtype=np.float32)
    if before is None:
        before = model.predict(x).argmax(1)
    after = model.predict(a).argmax(1)
    success = after == target if target is not None else after != np.asarray(y)
    q = np.broadcast_to(np.asarray(queries, dtype=np.int64), (len(a),)).copy()
    return AttackResult(
        adversarial=a,
        original_labels=np.asarray(before),
        adversarial_labels=after,
        success=success,
        queries=q,
        **perturbation_stats(x, a),
    )


def per_item(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(batch,)`` values shaped to broadcast over ``(batch, *item)`` tensors like ``like``."""
    return values.view(-1, *([1] * (like.ndim - 1)))


def item_norm(x: torch.Tensor) -> torch.Tensor:
    """L2 norm of each item of ``(batch, *item)``, shaped to broadcast over it."""
    return per_item(x.flatten(1).norm(dim=1), x)


def project(delta: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """Project ``(batch, *item)`` perturbations onto per-item balls of radius ``eps (batch,)``."""
    e = per_item(eps, delta)
    if norm == "linf":
        return torch.maximum(torch.minimum(delta, e), -e)
    return delta * torch.clamp(e / item_norm(delta).clamp_min(1e-12), max=1.0)


def clip_to_bounds(adv: torch.Tensor, x0: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Clip to the model's input bounds, but never past the clean sample itself: a clean input
    already outside the bounds (a clipped recording) keeps its value, so clipping never adds to
    the perturbation beyond the budget."""
    return torch.maximum(torch.minimum(adv, torch.clamp(x0, min=hi)), torch.clamp(x0, max=lo))


def random_start(shape: torch.Size, eps: torch.Tensor, norm: str, gen: torch.Generator) -> torch.Tensor:
    """A uniform point in each item's L-inf ball, or a uniformly scaled random direction in its L2 ball."""
    dev = eps.device
    if norm == "linf":
        u = torch.rand(shape, generator=gen, device=dev) * 2 - 1
        return u * per_item(eps, u)
    r = torch.randn(shape, generator=gen, device=dev)
    r = r / item_norm(r).clamp_min(1e-12)
    return r * per_item(eps * torch.rand(shape[0], generator=gen, device=dev), r)


def normalized_step(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit size: ``sign(g)`` (L-inf) or ``g / ||g||_2`` (L2)."""
    if norm == "linf":
        return grad.sign()
    return grad / item_norm(grad).clamp_min(1e-12)


def generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)


def choose_targets(
    y: np.ndarray, labels: Sequence[str], mode: str, rng: np.random.Generator
) -> np.ndarray | None:
    """Targets for a targeted attack.

    Args:
        y: True labels ``(batch,)``.
        labels: The model's label names.
        mode: ``"none"`` (untargeted: returns ``None``), ``"random"`` (a uniformly drawn label
            other than the true one, among labels not starting with ``_`` when there are at
            least two such), ``"next"`` (the next such label, cyclically), or a label name.
        rng: Draws the random targets.

    Raises:
        ValueError: An unknown label name, or a fixed target equal to some item's true label.
    """
    if mode == "none":
        return None
    words = [i for i, name in enumerate(labels) if not name.startswith("_")]
    pool = words if len(words) >= 2 else list(range(len(labels)))
    y = np.asarray(y, dtype=np.int64)
    if mode == "random":
        out = []
        for label in y:
            options = [c for c in pool if c != label]
            out.append(options[int(rng.integers(len(options)))])
        return np.array(out, dtype=np.int64)
    if mode == "next":
        return np.array(
            [pool[(pool.index(int(v)) + 1) % len(pool)] if int(v) in pool else pool[0] for v in y],
            dtype=np.int64,
        )
    if mode not in labels:
        raise ValueError(f"target {mode!r} is not a label of the model ({', '.join(labels)})")
    t = labels.index(mode)
    if (y == t).any():
        raise ValueError(f"target {mode!r} is the true label of {int((y == t).sum())} clip(s)")
    return np.full(len(y), t, dtype=np.int64)


def run_attack(
    attack: Attack,
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    target: np.ndarray | None = None,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = True,
    desc: str | None = None,
) -> AttackResult:
    """Run ``attack`` over ``(n, *item)`` clips (audio windows, video clips) in batches, with a
    progress bar.

    Batch ``k`` is attacked with seed ``hash((seed, k))``: the same seed and batch size give the
    same result.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    if x.ndim < 2 or len(x) != len(y) or (target is not None and len(target) != len(y)):
        raise ValueError(f"expected (n, *item) clips and n labels/targets, got {x.shape} and {len(y)}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    parts = []
    with tqdm(total=len(x), desc=desc or attack.name, unit="clip", disable=not progress, leave=False) as bar:
        for k, s in enumerate(range(0, len(x), batch_size)):
            sl = slice(s, s + batch_size)
            parts.append(
                attack.run(
                    model,
                    x[sl],
                    y[sl],
                    target=None if target is None else np.asarray(target[sl], dtype=np.int64),
                    seed=int(np.random.SeedSequence([seed, k]).generate_state(1)[0]),
                )
            )
            bar.update(len(x[sl]))
    if not parts:
        raise ValueError("no clips to attack")
    return AttackResult.concatenate(parts)
