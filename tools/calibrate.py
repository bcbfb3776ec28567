"""Detector calibration (``avsentry calibrate``): threshold for a target false-positive rate.

Clean held-out windows (voices never trained on: digits, other words and phrases, real speech of
held-out people from :mod:`tools.realspeech`, procedural background), each once as recorded or
synthesised and once through the training channel degradations (noise, room
reverberation, telephone codecs...), are scored by the detector. The held-out clips are split in
two halves by a hash of voice and text, so every held-out voice is in both: the threshold is set
on the calibration half (:func:`pipelines.detection.calibrate_threshold` per group of digits,
synthetic other speech, real speech and background, keeping the largest, so no group exceeds the
target; by default each group's threshold holds the target with 95 % confidence over calibration
sets) and the false-positive rate is measured on the other half, per group and per source, with a
Clopper-Pearson 95 % upper bound. Accuracy of the raw, transformed and smoothed predictions and
certified accuracy are measured on the same windows.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
from scipy.stats import beta
from tqdm import tqdm

from avsentry.pipelines.detection import Detector, DetectorConfig, WindowVerdict, calibrate_threshold
from avsentry.pipelines.recognizers import load_recognizer, read_manifest
from avsentry.pipelines.recognizers.manifest import load_document
from avsentry.pipelines.scoring import ConformalCombination, MaxDistance
from avsentry.pipelines.smoothing import detection_radius, guaranteed_snr_db
from avsentry.pipelines.types import Certified, Prediction
from avsentry.tools import augment, synth
from avsentry.tools.heldout import heldout_windows

# Probability, over calibration sets, that each group's false-positive rate stays at or under the
# target (plain split conformal only bounds its expectation: half of all calibration sets exceed).
DEFAULT_CONFIDENCE = 0.95


def calibration_windows(clips: synth.ClipSet, *, seed: int = 7) -> dict[str, np.ndarray]:
    """Clean + degraded held-out windows with their labels and a calibration/test split mask."""
    clean = heldout_windows(clips, seed=seed)
    rng = np.random.default_rng(seed)
    speech = clean["engine"] != "procedural"
    degraded = clean["x"].copy()
    degraded[speech] = augment.degrade(rng, clean["x"][speech], pitch_prob=0.0)
    data = {k: np.concatenate([v, v]) for k, v in clean.items()}
    data["x"] = np.concatenate([clean["x"], degraded])
    data["condition"] = np.array(["clean"] * len(clean["y"]) + ["degraded"] * len(clean["y"]))
    # Halves by clip (voice and text), so both copies of a clip stay together and every held-out
    # voice is in both halves. A split by voice put all of flite rms in one half and all of
    # festival ked in the other (each about half of a group's windows): the halves were not
    # exchangeable and the measured FPR said more about one voice than about the threshold.
    n = len(clean["y"])
    by_clip = np.array(
        [
            int(hashlib.sha256(f"{v}\0{t}".encode()).hexdigest(), 16) % 2 == 0
            for v, t in zip(clean["voice"], clean["text"], strict=True)
        ]
    )
    first_half = np.where(clean["voice"] == "background", np.arange(n) % 2 == 0, by_clip)
    data["calibration"] = np.concatenate([first_half, first_half])
    # Within the calibration half, a quarter of the clips (by another bit of the same hash) is the
    # reference of conformal scoring; the threshold is set on the rest, so it is calibrated on
    # windows the score was not fitted to.
    second_bit = np.array(
        [
            (int(hashlib.sha256(f"{v}\0{t}".encode()).hexdigest(), 16) >> 1) % 2 == 0
            for v, t in zip(clean["voice"], clean["text"], strict=True)
        ]
    )
    reference = first_half & np.where(clean["voice"] == "background", np.arange(n) % 4 == 0, second_bit)
    data["reference"] = np.concatenate([reference, reference])
    return data


def score_windows(
    detector: Detector, x: np.ndarray, *, batch: int = 64, progress: bool = True
) -> list[WindowVerdict]:
    out: list[WindowVerdict] = []
    with tqdm(total=len(x), desc="scoring", unit="window", disable=not progress) as bar:
        for s in range(0, len(x), batch):
            out += detector.analyze(x[s : s + batch], keys=range(s, s + len(x[s : s + batch])))
            bar.update(len(x[s : s + batch]))
    return out


def fpr_upper(k: int, n: int, level: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound on a rate of ``k`` in ``n``."""
    return 1.0 if k >= n else float(beta.ppf(level, k + 1, n - k))


def summarize(
    scores: np.ndarray,
    data: dict[str, np.ndarray],
    threshold: float,
    mask: np.ndarray,
    group: np.ndarray,
) -> dict:
    """FPR of per-window ``scores`` on ``mask`` windows (overall, by group, source, condition)."""
    fp = ~(scores <= threshold)  # a NaN score is flagged
    rep: dict = {"n": int(mask.sum()), "false_positives": int(fp[mask].sum())}
    rep["fpr"] = float(fp[mask].mean())
    rep["fpr_upper95"] = fpr_upper(int(fp[mask].sum()), int(mask.sum()))
    for key, values in (
        ("by_group", group),
        ("by_source", data["source"]),
        ("by_condition", data["condition"]),
    ):
        rep[key] = {
            str(g): {"n": int((mask & (values == g)).sum()), "fpr": float(fp[mask & (values == g)].mean())}
            for g in dict.fromkeys(values[mask])
        }
    return rep


def accuracy(verdicts: list[WindowVerdict], y: np.ndarray) -> dict:
    acc: dict = {"raw": float(np.mean([v.raw_label == t for v, t in zip(verdicts, y, strict=True)]))}
    names = [o.name for o in verdicts[0].defended] if verdicts else []
    for j, name in enumerate(names):
        acc[name] = float(np.mean([v.defended[j].label == t for v, t in zip(verdicts, y, strict=True)]))
    if verdicts and verdicts[0].smoothed is not None:
        acc["smoothed_predict"] = float(
            np.mean(
                [
                    isinstance(v.smoothed, Prediction) and v.smoothed.label == t
                    for v, t in zip(verdicts, y, strict=True)
                ]
            )
        )
        acc["smoothed_abstain_rate"] = float(
            np.mean([not isinstance(v.smoothed, Prediction) for v in verdicts])
        )
        radii = np.array(
            [
                v.certificate.radius
                if isinstance(v.certificate, Certified) and v.certificate.label == t
                else -1.0
                for v, t in zip(verdicts, y, strict=True)
            ]
        )
        acc["certified"] = {f"r>={r}": float(np.mean(radii >= r)) for r in (0.0, 0.25, 0.5, 1.0)}
    return acc


def calibrate(
    card_path: Path,
    data_path: Path,
    cfg: DetectorConfig,
    *,
    target_fpr: float,
    confidence: float | None = DEFAULT_CONFIDENCE,
    device: str,
    scoring: str = "max",
    progress: bool = True,
    out: Path | None = None,
) -> dict:
    """Calibrate ``cfg`` for the model at ``card_path`` on the digit corpus ``data_path``; writes
    the card with its new ``detector`` section to ``out`` (default: in place) and returns it.

    ``confidence``: probability, over calibration sets, that each group's FPR stays at or under
    ``target_fpr`` (None: only its expectation does). ``scoring``: ``"conformal"`` fits the
    reference of :class:`~avsentry.pipelines.scoring.ConformalCombination` on a quarter of the
    held-out clips and sets the threshold on another quarter; ``"max"`` scores by the largest
    distance and sets the threshold on the whole calibration half.
    """
    manifest = read_manifest(card_path)
    rec = load_recognizer(card_path, backend="torch", device=device)
    clips = synth.load(data_path)
    data = calibration_windows(clips)
    detector = Detector(
        rec,
        DetectorConfig(
            transforms=cfg.transforms, smoothing=cfg.smoothing, seed=cfg.seed, certified=cfg.certified
        ),
    )
    verdicts = score_windows(detector, data["x"], progress=progress)
    group = groups(data["y"], manifest.spec.labels, data["engine"])
    cfg, section, _ = fit_detector(
        verdicts,
        cfg,
        data,
        group,
        target_fpr=target_fpr,
        confidence=confidence,
        scoring=scoring,
        method="group-conditional, training-conditional split conformal (Vovk 2012) on held-out "
        "clean windows (clean + degraded): per group (digits, synthetic other speech, real speech of "
        "held-out people, background) the smallest order statistic of the calibration scores whose "
        "FPR exceeds the target with probability <= 1 - confidence (a group too small for that: the "
        "ceil((m+1)(1-target))-th smallest, expected FPR <= target) on half the held-out clips "
        "(split by a hash of voice and text); the largest of the four kept; FPR measured on the "
        "other half",
    )
    card = load_document(manifest.path)
    card["detector"] = section
    card["defended_accuracy"] = {
        "windows": int(len(data["y"])),
        "note": "held-out voices, clean + degraded windows, all classes",
        **accuracy(verdicts, data["y"]),
    }
    write_card(card, manifest.root, out or card_path)
    return card


def write_card(card: dict, root: Path, out: Path) -> None:
    """Write ``card`` (a manifest whose paths are relative to ``root``) as JSON at ``out``, its
    weight paths made relative to ``out``'s folder."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    card = json.loads(json.dumps(card))
    for b in card.get("backends", {}).values():
        tables = [b, *b.get("representations", {}).values()]
        for t in tables:
            for key in ("path", "encode", "classify"):
                if key in t:
                    t[key] = os.path.relpath((Path(root) / t[key]).resolve(), out.parent.resolve())
    out.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


def fit_detector(
    verdicts: list[WindowVerdict],
    cfg: DetectorConfig,
    data: dict[str, np.ndarray],
    group: np.ndarray,
    *,
    target_fpr: float,
    confidence: float | None,
    scoring: str,
    method: str,
) -> tuple[DetectorConfig, dict, np.ndarray]:
    """From the clean windows' verdicts under ``cfg``: certified detection's ``p_min`` (if on),
    the scoring (``max``, or ``conformal`` fitted on ``data["reference"]``), the group-conditional
    threshold on ``data["calibration"]`` and the FPR on the rest. Returns the calibrated config,
    the card's ``detector`` section and each window's score.

    Raises:
        ValueError: no finite threshold holds the target, or no ``p_min`` fits its budget.
    """
    cal = data["calibration"]
    # certified detection: smoothing acts through its rule; the windows the rule flags count as
    # flagged whatever the threshold (score +inf), so the threshold holds the target for the union
    certified = cfg.certified is not None
    scored = [j for j, o in enumerate(verdicts[0].defended) if not (certified and o.name == "smoothing")]
    uncertified = np.zeros(len(verdicts), dtype=bool)
    if cfg.certified is not None:
        p_min, uncertified = choose_p_min(verdicts, cal, group, cfg.certified, target_fpr / 2)
        cfg = dataclasses.replace(cfg, certified=p_min)
    if scoring == "conformal":
        ref = data["reference"]
        names = [verdicts[0].defended[j].name for j in scored]
        dist = np.array([[v.defended[j].distance for j in scored] for v in verdicts])
        fitted = ConformalCombination.fit({n: dist[ref, j] for j, n in enumerate(names)})
        cfg = dataclasses.replace(cfg, scoring=fitted)
        scores = np.array(
            [
                fitted.score(dict(zip(names, row, strict=True))) if np.isfinite(row).all() else np.nan
                for row in dist
            ]
        )
        cal = cal & ~ref
    elif scoring == "max":
        cfg = dataclasses.replace(cfg, scoring=MaxDistance())
        scores = np.array([v.score for v in verdicts])
    else:
        raise ValueError(f"scoring must be 'max' or 'conformal', got {scoring!r}")
    scores = np.where(uncertified, np.inf, scores)
    threshold, per_group = calibrate_threshold_for(scores, cal, target_fpr, group, confidence=confidence)
    if not np.isfinite(threshold):
        raise ValueError(f"no finite threshold holds the {target_fpr:.2%} target on these scores")
    for g, v in per_group.items():
        if "too few" in v["guarantee"]:
            print(
                f"warning: {v['m']} calibration windows of {g} are too few for a {target_fpr:.2%} "
                f"target; its threshold is its largest score ({v['guarantee']})",
                file=sys.stderr,
            )
    test = summarize(scores, data, threshold, ~data["calibration"], group)
    section: dict = {
        "config": cfg.fingerprint(),
        "threshold": threshold,
        "target_fpr": target_fpr,
        "measured_fpr": test["fpr"],
        "measured_fpr_upper95": test["fpr_upper95"],
        "confidence": confidence,
        "calibration_windows": int(cal.sum()),
        "calibration_by_group": per_group,
        "test": test,
        "method": (
            "conformal scoring (pipelines/scoring.py) fitted on a quarter of the held-out clips, "
            if scoring == "conformal"
            else ""
        )
        + method,
    }
    if isinstance(cfg.scoring, ConformalCombination):
        section["scoring"] = cfg.scoring.to_dict()
    if cfg.certified is not None:
        section["certified_detection"] = certified_summary(verdicts, uncertified, data, group, cfg)
    return dataclasses.replace(cfg, threshold=threshold), section, scores


P_MIN_GRID = (0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01)


def choose_p_min(
    verdicts: list[WindowVerdict], cal: np.ndarray, group: np.ndarray, largest: float, budget: float
) -> tuple[float, np.ndarray]:
    """Certified detection's ``p_min``: the largest of :data:`P_MIN_GRID` (at most ``largest``)
    whose rule flags at most ``budget`` of each group's clean calibration windows (the largest
    ``p_min`` gives the largest guaranteed radius). Returns it and which windows its rule flags.

    Raises:
        ValueError: even the smallest ``p_min`` flags more than the budget in some group.
    """
    p = np.array([-1.0 if v.raw_p_lower is None else v.raw_p_lower for v in verdicts])
    grid = [largest] + [g for g in P_MIN_GRID if g < largest]
    for p_min in grid:
        flags = p < p_min
        rates = {str(g): float(flags[cal & (group == g)].mean()) for g in np.unique(group[cal])}
        if max(rates.values()) <= budget:
            return p_min, flags
    raise ValueError(
        f"certified detection flags more than {budget:.2%} of a group's clean calibration windows even "
        f"at p_min {grid[-1]:g} ({', '.join(f'{g} {r:.2%}' for g, r in rates.items())}): use a smaller "
        "--sigma or a model trained with noise (avsentry train --waveform-noise-sigma)"
    )


def certified_summary(
    verdicts: list[WindowVerdict],
    uncertified: np.ndarray,
    data: dict[str, np.ndarray],
    group: np.ndarray,
    cfg: DetectorConfig,
) -> dict:
    """What certified detection costs and gives on the held-out test half: the share of clean
    windows its rule flags (overall and per group) and, for the clean windows it passes, the SNR
    down to which any perturbation that changes their raw label is flagged (median, and the 90th
    percentile: 90 % of passing windows are covered at least down to it)."""
    s = cfg.smoothing
    assert s is not None and cfg.certified is not None
    test = ~data["calibration"]
    snr = np.full(len(verdicts), np.nan)
    for i, v in enumerate(verdicts):
        r = detection_radius(v.raw_p_lower or 0.0, s.sigma, cfg.certified)
        g = guaranteed_snr_db(float(np.linalg.norm(data["x"][i])), r, s.representation, data["x"].shape[1])
        if r > 0 and g is not None:
            snr[i] = g
    passed = test & ~uncertified & np.isfinite(snr)
    return {
        "p_min": cfg.certified,
        "rule_flag_rate": float(uncertified[test].mean()),
        "rule_flag_rate_by_group": {
            str(g): float(uncertified[test & (group == g)].mean()) for g in np.unique(group[test])
        },
        "guaranteed_snr_db_median": float(np.median(snr[passed])) if passed.any() else None,
        "guaranteed_snr_db_p90": float(np.percentile(snr[passed], 90)) if passed.any() else None,
        "covered_share": float(passed.sum() / max(1, (test & ~uncertified).sum())),
        "note": "rule: flag a window when the lower confidence bound of its raw label's share of "
        "the noisy votes is under p_min; a clean window that passes cannot have its raw label "
        "changed unflagged by a perturbation quieter than its guaranteed SNR (with probability "
        "1 - 2 alpha); covered_share: passing test windows with a positive radius",
    }


GROUPS = ("digits", "other_speech", "real_speech", "background")


def groups(y: np.ndarray, labels: tuple[str, ...], engine: np.ndarray) -> np.ndarray:
    """The clean-audio group of each window: digits, other_speech (synthetic), real_speech
    (recordings of people, :mod:`tools.realspeech`) or background."""
    other = np.where(engine == "real", "real_speech", "other_speech")
    return np.where(y < 10, "digits", np.where(labels.index(synth.UNKNOWN) == y, other, "background"))


def calibrate_threshold_for(
    scores: np.ndarray,
    mask: np.ndarray,
    target_fpr: float,
    group: np.ndarray,
    *,
    confidence: float | None = DEFAULT_CONFIDENCE,
) -> tuple[float, dict[str, dict]]:
    """Group-conditional calibration: the largest of the per-group thresholds, so that digits,
    other speech, real speech and background each stay at or under the target rate (not just
    their mix).

    Each group's threshold holds the target with probability ``confidence`` over calibration sets
    (:func:`~pipelines.detection.calibrate_threshold`). A group with too few windows for that gets
    the split-conformal threshold (expected FPR <= target); one too small even for that (fewer
    than ``1/target - 1`` windows, e.g. from a ``--synth-scale`` corpus) gets its largest score,
    whose expected FPR is <= ``1/(m+1)``. Returns the threshold and, per group, its window count,
    threshold and the guarantee it got.
    """
    per_group: dict[str, dict] = {}
    for g in np.unique(group[mask]):
        s = scores[mask & (group == g)]
        t, guarantee = _group_threshold(s, target_fpr, confidence)
        per_group[str(g)] = {"m": int(len(s)), "threshold": t, "guarantee": guarantee}
    return max(v["threshold"] for v in per_group.values()), per_group


def _group_threshold(scores: np.ndarray, target_fpr: float, confidence: float | None) -> tuple[float, str]:
    """The strongest guarantee ``scores`` allow: confident, then expected, then the largest score."""
    if confidence:
        try:
            return calibrate_threshold(scores, target_fpr, confidence=confidence), (
                f"P(FPR > target) <= {1 - confidence:.0%}"
            )
        except ValueError:
            pass
    try:
        return calibrate_threshold(scores, target_fpr), "expected FPR <= target"
    except ValueError:
        m = len(scores)
        return float(scores.max()), f"expected FPR <= 1/(m+1) = {1 / (m + 1):.1%} (too few windows)"


def run_cli(args: argparse.Namespace, cfg: DetectorConfig) -> int:
    """``avsentry calibrate`` without ``--clean``: calibrate ``cfg`` (the model's defence with the
    flags applied) for the digit model on the synthetic corpus, write a new card and print the
    figures."""
    from avsentry.tools.calibrate_recordings import card_output

    manifest = read_manifest(args.model)
    if manifest.spec.labels != synth.LABELS:
        raise ValueError(
            f"the synthetic corpus has the digit model's labels, not {manifest.spec.name!r}'s; calibrate "
            "it on your own clean recordings: avsentry calibrate --model MANIFEST --clean DIR"
        )
    if not Path(args.data).is_file():
        raise FileNotFoundError(
            f"corpus {args.data} not found: 'avsentry train' synthesises it (about 15 min), or calibrate "
            "on your own recordings with --clean DIR"
        )
    out = card_output(manifest, args.out, overwrite=args.force)
    card = calibrate(
        manifest.path,
        args.data,
        cfg,
        out=out,
        target_fpr=args.target_fpr,
        confidence=args.confidence or None,
        device=args.device,
        scoring=args.scoring,
        progress=not args.quiet,
    )
    d = card["detector"]
    print(
        f"threshold {d['threshold']:.4f} for target FPR {d['target_fpr']:.2%} "
        + (f"at {d['confidence']:.0%} confidence" if d["confidence"] else "in expectation")
        + "; measured FPR on "
        f"{d['test']['n']} held-out test windows: {d['measured_fpr']:.2%} "
        f"(95% upper bound {d['measured_fpr_upper95']:.2%}); by group: "
        + ", ".join(f"{g} {v['fpr']:.2%} (n={v['n']})" for g, v in d["test"]["by_group"].items())
    )
    acc = card["defended_accuracy"]
    print(
        "accuracy on held-out windows: "
        + ", ".join(f"{k} {v:.3f}" for k, v in acc.items() if isinstance(v, float))
    )
    print(f"certified accuracy: {acc.get('certified')}")
    cd = d.get("certified_detection")
    if cd:
        print(
            f"certified detection (p_min {cd['p_min']:g}): its rule flags {cd['rule_flag_rate']:.2%} of "
            "clean test windows; "
            f"passing windows are guaranteed down to {cd['guaranteed_snr_db_median']:.1f} dB SNR "
            f"(median; 90% of them down to {cd['guaranteed_snr_db_p90']:.1f} dB)"
        )
    print(f"wrote {out}; use it: avsentry check --model {out} FILE")
    return 0
