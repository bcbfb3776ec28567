"""The evaluation report: how well the guard detects and resists attacks, measured.

Over a clean labelled set and its adversarial versions, judged by the guard (the in-process
:class:`~avsentry.pipelines.detection.Detector`, or a running server's verdicts over gRPC):

- clean accuracy and the clean flag rate at the guard's threshold;
- per attack and budget: success rate on the undefended model, accuracy under attack, guarded
  accuracy (right label, or flagged), evasion rate (fooled and not flagged), detection ROC AUC and
  TPR at 1 % and 0.1 % FPR (thresholds from this clean set's scores) for the combined score and
  for each transform's distance alone, the flag rate at the deployed threshold, and mean
  L2 / L-inf / SNR of the perturbations;
- the perturbation ratio ``eps_r`` (mean L2 of DeepFool's minimal perturbations on a compared
  model over the evaluated one), when a second model is given;
- certified accuracy of randomized smoothing per representation and sigma
  (:mod:`avsentry.tools.certification`) and certified detection in the waveform domain;
- for video models: the frames each attack changed, and whether an H.264 round trip alone (at
  each of :data:`CRFS`) brings the clean label back on the successful adversarials (the
  compression defence of the video tutorial), next to what it costs clean accuracy.

Detection metrics count only successful adversarials (an attack that did not change the label
has nothing to detect). ROC curves follow scikit-learn. The report is Markdown with PNG plots
(matplotlib, Agg) and the same numbers as JSON next to it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from avsentry.pipelines.detection import UNCERTIFIED_REASON, Detector
from avsentry.tools import certification
from avsentry.tools.attackgen import attack_clips
from avsentry.tools.attacks.base import AttackResult, choose_targets, perturbation_stats, run_attack
from avsentry.tools.attacks.catalog import AttackSpec, check_modality, parse_attack_spec
from avsentry.tools.attacks.frame_saliency import frames_changed

FPRS = (0.01, 0.001)
CRFS = (18, 23, 28, 33, 38, 43)

SUITES: dict[str, tuple[str, ...]] = {
    "standard": (
        "fgsm:eps=30db",
        "bim:eps=30db,steps=20",
        "pgd:eps=30db,steps=20",
        "pgd:eps=30db,norm=l2,steps=20",
        "cw",
        "deepfool",
        "jsma",
        "nes:eps=30db",
        "sparse",
        "pgd:eps=30db,steps=20,target=random",
        "adaptive:eps=40db",
        "adaptive:eps=30db",
        "adaptive:eps=20db",
        "adaptive:eps=20db,target=random",
    ),
    "quick": ("fgsm:eps=30db", "pgd:eps=30db,steps=20", "adaptive:eps=30db,steps=30,eot=2"),
    "none": (),
}
"""Attack lists of ``avsentry evaluate --suite``; budgets chosen so each succeeds on the bare
digit model (README, "Evaluation")."""

VIDEO_SUITES: dict[str, tuple[str, ...]] = {
    "standard": (
        "fgsm:eps=4/255",
        "pgd:eps=4/255,steps=20",
        "frame_saliency:mode=one_shot,eps=8/255",
        "frame_saliency:mode=iterative,eps=8/255",
        "frame_saliency:mode=refresh,eps=8/255",
        "adaptive:eps=4/255,steps=50,eot=4",
        "adaptive:eps=8/255,steps=50,eot=4",
    ),
    "quick": (
        "fgsm:eps=4/255",
        "frame_saliency:mode=refresh,eps=8/255",
        "adaptive:eps=4/255,steps=20,eot=2",
    ),
    "none": (),
}
"""The same suites for video models (pixels in [0, 1]: 4/255 is an L-inf step of 4 grey levels)."""


class DefendedLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def distance(self) -> float: ...


class VerdictLike(Protocol):
    """What the evaluation reads of a verdict (a local ``WindowVerdict`` or a server's)."""

    @property
    def raw_label(self) -> int: ...
    @property
    def score(self) -> float: ...
    @property
    def flagged(self) -> bool: ...
    @property
    def reasons(self) -> Sequence[str]: ...
    @property
    def defended(self) -> Sequence[DefendedLike]: ...


Guard = Callable[[np.ndarray], Sequence[VerdictLike]]
"""``(n, samples)`` windows -> one verdict each."""


@dataclass(frozen=True, slots=True)
class Scores:
    """Per-window outcome of the guard."""

    raw: np.ndarray
    score: np.ndarray
    flagged: np.ndarray
    distances: dict[str, np.ndarray]

    @staticmethod
    def of(verdicts: Sequence[VerdictLike]) -> Scores:
        """The verdicts' outcomes; ``score`` is the guard's combined score: the detector score,
        or ``inf`` for a window certified detection flags (it is flagged at every threshold)."""
        names = [d.name for d in verdicts[0].defended] if verdicts else []
        return Scores(
            raw=np.array([v.raw_label for v in verdicts], dtype=np.int64),
            score=np.array(
                [
                    np.inf if any(r.startswith(UNCERTIFIED_REASON) for r in v.reasons) else v.score
                    for v in verdicts
                ],
                dtype=np.float64,
            ),
            flagged=np.array([v.flagged for v in verdicts], dtype=bool),
            distances={
                n: np.array([next(d.distance for d in v.defended if d.name == n) for v in verdicts])
                for n in names
            },
        )


def guard_scores(
    guard: Guard, x: np.ndarray, *, batch_size: int = 32, desc: str = "guard", progress: bool = True
) -> Scores:
    """Run the guard over ``(n, samples)`` windows in batches, with a progress bar."""
    verdicts: list[VerdictLike] = []
    for s in tqdm(range(0, len(x), batch_size), desc=desc, unit="batch", leave=False, disable=not progress):
        verdicts.extend(guard(x[s : s + batch_size]))
    return Scores.of(verdicts)


def detection_metrics(clean: np.ndarray, adversarial: np.ndarray) -> dict[str, Any]:
    """ROC AUC and TPR at each of :data:`FPRS` (threshold: the clean scores' quantile, strict >).

    Non-finite scores count as the largest. ``None`` when either side is empty.
    """
    if len(clean) == 0 or len(adversarial) == 0:
        return {"auc": None, **{f"tpr_at_fpr_{f:g}": None for f in FPRS}}
    c = np.nan_to_num(np.asarray(clean, np.float64), nan=np.inf)
    a = np.nan_to_num(np.asarray(adversarial, np.float64), nan=np.inf)
    big = max(np.max(c[np.isfinite(c)], initial=0), np.max(a[np.isfinite(a)], initial=0)) + 1
    c, a = np.where(np.isinf(c), big, c), np.where(np.isinf(a), big, a)
    labels = np.r_[np.zeros(len(c)), np.ones(len(a))]
    out: dict[str, Any] = {"auc": float(roc_auc_score(labels, np.r_[c, a]))}
    for f in FPRS:
        thr = float(np.quantile(c, 1 - f, method="higher"))
        out[f"tpr_at_fpr_{f:g}"] = float(np.mean(a > thr))
    return out


@dataclass
class AttackOutcome:
    """One attack's adversarials, their guard scores and the metrics."""

    spec: AttackSpec
    result: AttackResult
    scores: Scores
    attacked: np.ndarray  # indices into the clean set
    y: np.ndarray  # true labels of the attacked clips
    target: np.ndarray | None
    seconds: float
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def fooled(self) -> np.ndarray:
        """Per attacked clip: the guard's raw label is the target (targeted) or not the truth."""
        if self.target is not None:
            return np.asarray(self.scores.raw == self.target)
        return np.asarray(self.scores.raw != self.y)


def attack_metrics(
    y: np.ndarray, clean: Scores, outcome: AttackOutcome, clean_x: np.ndarray | None = None
) -> dict[str, Any]:
    """The metrics of one attack (see module doc); ``y``: labels of the whole clean set (clips
    not attacked, i.e. already wrong, count as wrong under attack); ``clean_x``: the attacked
    clips, for the frames changed when they are video."""
    r, s, idx = outcome.result, outcome.scores, outcome.attacked
    n = len(y)
    y_att = y[idx]
    fooled = outcome.fooled
    correct_under_attack = np.zeros(n, dtype=bool)
    correct_under_attack[idx] = s.raw == y_att
    guarded = correct_under_attack.copy()
    guarded[idx] |= s.flagged
    succ = fooled
    m: dict[str, Any] = {
        "attack": outcome.spec.label,
        "spec": outcome.spec.text,
        "attacked": int(len(idx)),
        "success_rate": float(succ.mean()) if len(idx) else None,
        "accuracy_under_attack": float(correct_under_attack.mean()),
        "guarded_accuracy": float(guarded.mean()),
        "evasion_rate": float((succ & ~s.flagged).mean()) if len(idx) else None,
        "flag_rate_successful": float(s.flagged[succ].mean()) if succ.any() else None,
        "mean_l2": float(np.mean(r.l2[succ])) if succ.any() else None,
        "mean_linf": float(np.mean(r.linf[succ])) if succ.any() else None,
        "median_snr_db": float(np.median(r.snr_db[succ])) if succ.any() else None,
        "mean_snr_db": float(np.mean(r.snr_db[succ][np.isfinite(r.snr_db[succ])])) if succ.any() else None,
        "mean_queries": float(np.mean(r.queries)) if len(idx) else None,
        "seconds": round(outcome.seconds, 1),
        "combined": detection_metrics(clean.score, s.score[succ]),
        "per_transform": {
            name: detection_metrics(clean.distances[name], s.distances[name][succ])
            for name in clean.distances
        },
    }
    if clean_x is not None and clean_x.ndim == 5:  # video clips: frames the attack changed
        changed = frames_changed(clean_x, r.adversarial)
        m["mean_frames_changed"] = float(changed[succ].mean()) if succ.any() else None
        m["frames_per_clip"] = int(clean_x.shape[1])
    return m


@dataclass
class Evaluation:
    """Everything a report needs; :meth:`to_json` gives its machine-readable form."""

    labels: tuple[str, ...]
    x: np.ndarray
    y: np.ndarray
    clean: Scores
    threshold: float | None
    outcomes: list[AttackOutcome]
    summary: dict[str, Any]
    certification: dict[str, Any] | None = None
    perturbation_ratio: dict[str, Any] | None = None
    restoration: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "attacks": [o.metrics for o in self.outcomes],
            "certification": self.certification,
            "perturbation_ratio": self.perturbation_ratio,
            "h264_restoration": self.restoration,
        }


def evaluate(
    detector: Detector,
    x: np.ndarray,
    y: np.ndarray,
    specs: Sequence[AttackSpec],
    *,
    guard: Guard | None = None,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> Evaluation:
    """Attack the clips the model gets right with each spec and judge everything by ``guard``.

    Args:
        detector: The in-process guard: its recognizer is what white-box attacks see (torch), and
            adaptive attacks attack all of it.
        x: ``(n, samples)`` clean windows; y: their labels.
        specs: Attacks (:func:`~avsentry.tools.attacks.catalog.parse_attack_spec`).
        guard: Gives the verdicts (default ``detector.analyze``; or a server's).
        seed: Seeds targets and attacks.
        batch_size: Clips per attack batch.
        progress: Show progress bars.
    """
    judge: Guard = guard or detector.analyze
    threshold = detector.config.threshold
    labels = tuple(detector.recognizer.spec.labels)
    t0 = time.perf_counter()
    clean = guard_scores(judge, x, desc="clean", progress=progress)
    correct = np.flatnonzero(clean.raw == y)
    summary: dict[str, Any] = {
        "clips": int(len(x)),
        "clean_accuracy": float(np.mean(clean.raw == y)),
        "clean_flag_rate": float(clean.flagged.mean()),
        "threshold": threshold,
        "seed": seed,
    }
    rng = np.random.default_rng(seed)
    outcomes = []
    for spec in tqdm(specs, desc="attacks", unit="attack", disable=not progress):
        target = choose_targets(y[correct], labels, spec.target, rng)
        t = time.perf_counter()
        res = attack_clips(
            spec,
            detector,
            x[correct],
            y[correct],
            target,
            seed=seed,
            batch_size=batch_size,
            progress=progress,
        )
        secs = time.perf_counter() - t
        scores = guard_scores(judge, res.adversarial, desc=f"{spec.label} guard", progress=progress)
        o = AttackOutcome(
            spec=spec, result=res, scores=scores, attacked=correct, y=y[correct], target=target, seconds=secs
        )
        o.metrics = attack_metrics(y, clean, o, x[correct])
        outcomes.append(o)
    summary["attack_seconds"] = round(time.perf_counter() - t0, 1)
    return Evaluation(
        labels=labels, x=x, y=y, clean=clean, threshold=threshold, outcomes=outcomes, summary=summary
    )


def evaluate_files(
    guard: Guard,
    x: np.ndarray,
    y: np.ndarray,
    adversarial: Sequence[tuple[AttackSpec, np.ndarray, np.ndarray, np.ndarray | None]],
    *,
    labels: Sequence[str],
    threshold: float | None = None,
) -> Evaluation:
    """Judge adversarials made earlier (``avsentry attack`` manifests) against their clean clips.

    Args:
        adversarial: Per attack: its spec, the adversarial windows, the index of each one's clean
            clip in ``x``, and its target labels (or ``None``).
    """
    clean = guard_scores(guard, x, desc="clean")
    outcomes = []
    for spec, adv, idx, target in adversarial:
        scores = guard_scores(guard, adv, desc=f"{spec.label} guard")
        stats = perturbation_stats(x[idx], adv)
        res = AttackResult(
            adversarial=adv,
            original_labels=clean.raw[idx],
            adversarial_labels=scores.raw,
            success=(scores.raw == target) if target is not None else scores.raw != y[idx],
            queries=np.zeros(len(adv), dtype=np.int64),
            **stats,
        )
        o = AttackOutcome(
            spec=spec,
            result=res,
            scores=scores,
            attacked=np.asarray(idx),
            y=y[idx],
            target=target,
            seconds=0.0,
        )
        o.metrics = attack_metrics(y, clean, o, x[idx])
        outcomes.append(o)
    summary = {
        "clips": int(len(x)),
        "clean_accuracy": float(np.mean(clean.raw == y)),
        "clean_flag_rate": float(clean.flagged.mean()),
        "threshold": threshold,
    }
    return Evaluation(
        labels=tuple(labels), x=x, y=y, clean=clean, threshold=threshold, outcomes=outcomes, summary=summary
    )


def h264_restoration(
    model: Any, ev: Evaluation, *, fps: float, crfs: Sequence[int] = CRFS, batch_size: int = 32
) -> dict[str, Any]:
    """Does an H.264 round trip alone undo the attacks? Per CRF: clean accuracy after it, and per
    attack the share of successful adversarials whose label it brings back to the clean one."""
    from avsentry.pipelines.transforms import make_transform

    def labels_after(clips: np.ndarray, crf: int) -> np.ndarray:
        codec = make_transform("h264", fps=fps, crf=crf)
        out = []
        for s in range(0, len(clips), batch_size):
            coded = codec.apply(clips[s : s + batch_size], np.random.default_rng(0))
            out.append(model.predict(coded).argmax(1))
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    rows = []
    for crf in crfs:
        row: dict[str, Any] = {"crf": crf, "clean_accuracy": float(np.mean(labels_after(ev.x, crf) == ev.y))}
        for o in ev.outcomes:
            ok = o.fooled
            restored = labels_after(o.result.adversarial[ok], crf) == o.y[ok] if ok.any() else np.zeros(0)
            row[o.metrics["attack"]] = float(restored.mean()) if ok.any() else None
        rows.append(row)
    return {"fps": fps, "rows": rows}


def restoration_markdown(r: dict[str, Any]) -> list[str]:
    attacks = [k for k in r["rows"][0] if k not in ("crf", "clean_accuracy")]
    lines = [
        "## Does H.264 alone restore the clean label?",
        "",
        "Each successful adversarial clip through one H.264 round trip (libx264, ultrafast, no "
        "B-frames) at each CRF: the share whose label returns to the clean one; clean accuracy "
        "after the same round trip beside it.",
        "",
        "| CRF | clean accuracy | " + " | ".join(f"{a} restored" for a in attacks) + " |",
        "|---|---|" + "---|" * len(attacks),
    ]
    for row in r["rows"]:
        cells = [_fmt(row[a], True) for a in attacks]
        lines.append(f"| {row['crf']} | {_fmt(row['clean_accuracy'], True)} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def perturbation_ratio(
    model: Any, compared: Any, x: np.ndarray, y: np.ndarray, *, seed: int = 0
) -> dict[str, Any]:
    """``eps_r``: mean L2 of DeepFool's minimal successful perturbations on ``compared`` over the
    same on ``model`` (> 1: ``compared`` needs larger perturbations, i.e. is more robust)."""
    from avsentry.tools.attacks.deepfool import DeepFool

    out: dict[str, Any] = {}
    for name, m in (("evaluated", model), ("compared", compared)):
        ok = np.flatnonzero(m.predict(x).argmax(1) == y)
        res = run_attack(DeepFool(), m, x[ok], y[ok], seed=seed, desc=f"deepfool ({name})")
        out[name] = {
            "clips": int(len(ok)),
            "success_rate": float(res.success.mean()),
            "mean_l2": float(np.mean(res.l2[res.success])) if res.success.any() else math.nan,
        }
    out["eps_r"] = out["compared"]["mean_l2"] / out["evaluated"]["mean_l2"]
    return out


# -- the report ------------------------------------------------------------------------------


def _fmt(v: Any, pct: bool = False, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if pct:
        return f"{100 * v:.1f} %"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def headline_table(ev: Evaluation) -> str:
    """The Markdown table of every attack's main numbers (video: with the frames changed)."""
    video = any("mean_frames_changed" in o.metrics for o in ev.outcomes)
    rows = [
        "| attack | success | acc. under attack | guarded acc. | evasion | flagged (at threshold) "
        "| AUC | TPR@1% | TPR@0.1% | median SNR dB | mean L2 | mean L∞ | "
        + ("frames changed | " if video else "")
        + "s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if video else "") + "---|",
    ]
    for o in ev.outcomes:
        m = o.metrics
        c = m["combined"]
        frames = ""
        if video:
            frames = f"{_fmt(m.get('mean_frames_changed'), digits=1)} of {m.get('frames_per_clip', '-')} | "
        rows.append(
            f"| {m['attack']} | {_fmt(m['success_rate'], True)} | {_fmt(m['accuracy_under_attack'], True)} "
            f"| {_fmt(m['guarded_accuracy'], True)} | {_fmt(m['evasion_rate'], True)} "
            f"| {_fmt(m['flag_rate_successful'], True)} | {_fmt(c['auc'])} "
            f"| {_fmt(c['tpr_at_fpr_0.01'], True)} "
            f"| {_fmt(c['tpr_at_fpr_0.001'], True)} | {_fmt(m['median_snr_db'], digits=1)} "
            f"| {_fmt(m['mean_l2'])} | {_fmt(m['mean_linf'], digits=4)} | {frames}{m['seconds']} |"
        )
    return "\n".join(rows)


def per_transform_table(ev: Evaluation) -> str:
    names = list(ev.clean.distances)
    rows = [
        "| attack | " + " | ".join(f"{n} AUC / TPR@1%" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for o in ev.outcomes:
        pt = o.metrics["per_transform"]
        cells = [f"{_fmt(pt[n]['auc'])} / {_fmt(pt[n]['tpr_at_fpr_0.01'], True)}" for n in names]
        rows.append(f"| {o.metrics['attack']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def write_report(ev: Evaluation, out: Path, *, title: str = "avsentry evaluation", command: str = "") -> Path:
    """Write ``report.md``, ``report.json`` and the plots into ``out``; returns the Markdown path."""
    from avsentry.tools import evalplots

    out.mkdir(parents=True, exist_ok=True)
    plots = evalplots.write_all(ev, out)
    s = ev.summary
    lines = [
        f"# {title}",
        "",
        f"Command: `{command}`" if command else "",
        "",
        f"- clips: {s['clips']}; clean accuracy {_fmt(s['clean_accuracy'], True)}; "
        f"clean flag rate {_fmt(s['clean_flag_rate'], True)} at threshold {_fmt(s['threshold'], digits=4)}",
        "- success: label changed (untargeted) or reached the target, on the undefended model, over "
        "the clips it got right; evasion: success and not flagged; guarded accuracy: right label or "
        "flagged, over all clips; AUC and TPR at a fixed FPR: thresholds from this clean set's "
        "scores, successful adversarials only; flagged: at the deployed threshold.",
        "",
        "## Attacks",
        "",
        headline_table(ev),
        "",
        "## Detection per transform (each transform's distance as the score)",
        "",
        per_transform_table(ev),
        "",
    ]
    if ev.perturbation_ratio:
        pr = ev.perturbation_ratio
        lines += [
            "## Perturbation ratio",
            "",
            f"eps_r = {pr['eps_r']:.3f} (DeepFool mean L2: evaluated {pr['evaluated']['mean_l2']:.4f}, "
            f"compared {pr['compared']['mean_l2']:.4f})",
            "",
        ]
    if ev.restoration:
        lines += restoration_markdown(ev.restoration)
    if ev.certification:
        lines += certification_markdown(ev.certification)
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    md = out / "report.md"
    md.write_text("\n".join(lines), encoding="utf-8")
    (out / "report.json").write_text(
        json.dumps(ev.to_json(), indent=1, default=_json_default), encoding="utf-8"
    )
    return md


def certification_study(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    sigmas: Sequence[float],
    representations: Sequence[str],
    detection_sigmas: Sequence[float],
    n: int,
    n0: int,
    alpha: float,
    seed: int,
    progress: bool,
) -> dict[str, Any]:
    """Certified accuracy per representation and sigma, the largest certifiable radius per n and
    sigma, and the certified-detection rule at each waveform sigma (clean flag rate it costs,
    median radius and its SNR)."""
    curves = certification.certified_accuracy(
        model,
        x,
        y,
        sigmas=sigmas,
        representations=representations,
        n=n,
        n0=n0,
        alpha=alpha,
        seed=seed,
        progress=progress,
    )
    detection = [
        certification.certified_detection(
            model, x, y, sigma=s, n=n, n0=n0, alpha=alpha, seed=seed, progress=progress
        ).as_dict()
        for s in detection_sigmas
    ]
    table = certification.max_radius_table(sigmas=sigmas, alpha=alpha)
    return {
        "curves": [c.as_dict() for c in curves],
        "max_radius": {f"{s:g}": {str(k): v for k, v in row.items()} for s, row in table.items()},
        "detection": detection,
    }


def certification_markdown(c: dict[str, Any]) -> list[str]:
    """The report's certification sections."""
    curves = c["curves"]
    radii = list(curves[0]["certified_accuracy"]) if curves else []
    lines = [
        "## Certified accuracy (randomized smoothing, Cohen et al. CERTIFY)",
        "",
        f"n = {curves[0]['n']}, n0 = {curves[0]['n0']}, alpha = {curves[0]['alpha']}, "
        f"{curves[0]['clips']} clips; radius in each representation's own units."
        if curves
        else "",
        "",
        "| representation | sigma | clean | abstain | max radius | "
        + " | ".join(f"r={r}" for r in radii)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(radii),
    ]
    for cv in curves:
        cells = " | ".join(_fmt(v, True) for v in cv["certified_accuracy"].values())
        lines.append(
            f"| {cv['representation']} | {cv['sigma']:g} | {_fmt(cv['clean_accuracy'], True)} "
            f"| {_fmt(cv['abstain_rate'], True)} | {cv['max_radius']:.3f} | {cells} |"
        )
    ns = list(next(iter(c["max_radius"].values()))) if c["max_radius"] else []
    lines += [
        "",
        "Largest radius CERTIFY can return (all n votes agree), per sigma and n:",
        "",
        "| sigma | " + " | ".join(f"n={k}" for k in ns) + " |",
        "|---|" + "---|" * len(ns),
    ]
    for s, row in c["max_radius"].items():
        lines.append(f"| {s} | " + " | ".join(f"{v:.3f}" for v in row.values()) + " |")
    if not c["detection"]:  # video: no waveform study
        return [*lines, ""]
    lines += [
        "",
        "## Certified detection (waveform smoothing)",
        "",
        "Rule: flag a window when the smoothed classifier g abstains or certifies a label other "
        "than the raw one. A window that passes carries radius R: no L2 perturbation smaller than "
        "R, i.e. quieter than the SNR below, can have changed the raw label without being flagged.",
        "",
        "| sigma | n | clean flag rate | abstain | median R | median SNR guarantee dB "
        "| smoothed acc. | max R |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in c["detection"]:
        lines.append(
            f"| {d['sigma']:g} | {d['n']} | {_fmt(d['flag_rate'], True)} | {_fmt(d['abstain_rate'], True)} "
            f"| {_fmt(d['median_radius'], digits=4)} | {_fmt(d['median_snr_db'], digits=1)} "
            f"| {_fmt(d['smoothed_accuracy'], True)} | {d['max_radius']:.4f} |"
        )
    return lines + [""]


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def run_cli(
    args: argparse.Namespace, detector: Detector, *, guard: Guard | None = None, argv: Sequence[str] = ()
) -> int:
    """``avsentry evaluate``: attack (or read a manifest), judge, certify, write the report."""
    from avsentry.tools import attackgen

    spec_m = detector.recognizer.spec
    progress = not args.quiet
    t0 = time.perf_counter()
    if args.adversarial is not None:
        clean, adversarial = attackgen.read_attack_manifest(args.adversarial, spec_m)
        ev = evaluate_files(
            guard or detector.analyze,
            clean.x,
            clean.y,
            adversarial,
            labels=spec_m.labels,
            threshold=detector.config.threshold,
        )
    else:
        video = spec_m.modality == "video"
        suites = VIDEO_SUITES if video else SUITES
        specs = [parse_attack_spec(t) for t in (args.attacks or suites[args.suite])]
        for spec in specs:
            check_modality(spec, spec_m.modality)
        clean = attackgen.clean_set(args, spec_m)
        ev = evaluate(
            detector,
            clean.x,
            clean.y,
            specs,
            guard=guard,
            seed=args.seed,
            batch_size=args.batch_size,
            progress=progress,
        )
        if args.art:
            from avsentry.tools import artcompare

            ev.outcomes += artcompare.run(
                detector, ev, guard=guard or detector.analyze, seed=args.seed, progress=progress
            )
    if args.compare_model:
        from avsentry.pipelines.recognizers import load_recognizer

        other = load_recognizer(args.compare_model, backend="torch", device=detector.recognizer.device)
        k = min(len(clean.x), args.certify_clips)
        ev.perturbation_ratio = perturbation_ratio(
            detector.recognizer, other, clean.x[:k], clean.y[:k], seed=args.seed
        )
    video = spec_m.modality == "video"
    if video and ev.outcomes:
        ev.restoration = h264_restoration(detector.recognizer, ev, fps=spec_m.video.fps)
    if not args.no_certify:
        k = min(len(clean.x), args.certify_clips)
        ev.certification = certification_study(
            detector.recognizer,
            clean.x[:k],
            clean.y[:k],
            sigmas=[float(v) for v in args.certify_sigmas.split(",")],
            # video: noise in pixel space; certified detection is a waveform study
            representations=["pixels"]
            if video
            else [v.strip() for v in args.certify_representations.split(",")],
            detection_sigmas=[]
            if video
            else [float(v) for v in args.detection_sigmas.split(",") if v.strip()],
            n=args.certify_n,
            n0=args.certify_n0,
            alpha=args.certify_alpha,
            seed=args.seed,
            progress=progress,
        )
    ev.summary["total_seconds"] = round(time.perf_counter() - t0, 1)
    md = write_report(ev, Path(args.out), command=" ".join(["avsentry", *list(argv)[1:]]))
    print(headline_table(ev))
    print(
        f"evaluate: wrote {md} and {md.with_suffix('.json')} in {ev.summary['total_seconds']:.0f} s",
        file=sys.stderr,
    )
    return 0
