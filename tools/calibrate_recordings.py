"""``avsentry calibrate --model M --clean DIR [--other DIR]``: calibrate the guard of any model on
the user's own clean recordings.

1. Every window the service would cut from each recording (:func:`tools.recordings.served_windows`)
   is judged; recordings are split in two halves by a hash of their path (calibration and test).
2. On the calibration half's labelled recordings (their loudest window): the accuracy of the raw
   model, of each candidate transform and of the smoothed classifier at each candidate sigma.
   A transform is kept if its accuracy stays within ``tolerance`` of the raw model's; smoothing
   gets the largest sigma whose accuracy does (none: smoothing is off, and the card says why).
   Flags given on the command line (``--transforms``, ``--sigma``, ``--no-smoothing``...) are kept
   as given instead.
3. The threshold: per group (``commands``, ``other`` and ``no_speech``, from the manifest's label
   roles; ``--other`` recordings are ``other``) the order statistic that holds the target FPR
   with ``confidence`` (:func:`tools.calibrate.fit_detector`, as for the digit model), the largest
   kept; the FPR is measured on the test half.
4. A new card (the manifest plus the calibrated ``detector`` and the measurements) is written next
   to the manifest, never over an existing file unless asked, with a histogram of the clean
   scores.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from avsentry.pipelines.detection import Detector, DetectorConfig, WindowVerdict
from avsentry.pipelines.recognizers import load_recognizer, read_manifest
from avsentry.pipelines.recognizers.manifest import COMMAND, Manifest, embedded_models, load_document
from avsentry.pipelines.smoothing import SmoothingConfig, offered_representations
from avsentry.pipelines.transforms import normalize_transform_spec
from avsentry.pipelines.types import Prediction
from avsentry.tools.calibrate import DEFAULT_CONFIDENCE, fit_detector, score_windows, write_card
from avsentry.tools.recordings import audio_files, labelled_files, served_windows

# sigmas tried per representation: waveform in sample units (-66 to -34 dBFS noise); waveform_rms
# relative to the window (34, 26, 20 and 14 dB under it); any other: the configured one x 1/4..2
SIGMA_GRID = {"waveform": (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02), "waveform_rms": (0.02, 0.05, 0.1, 0.2)}
SIGMA_FACTORS = (0.25, 0.5, 1.0, 2.0)
CANDIDATE_TRANSFORMS = ("mp3", "opus", "aac", "noise")
ROLE_GROUPS = {COMMAND: "commands", "other": "other", "no_speech": "no_speech"}
DEFAULT_TOLERANCE = 0.05


def card_output(manifest: Manifest, out: Path | None, *, overwrite: bool) -> Path:
    """Where the new card goes: ``out``, or next to the manifest (``NAME.card.json``; under
    ``runs/NAME/`` for an embedded model).

    Raises:
        ValueError: ``out`` is not a ``.json`` file (a card is JSON).
        FileExistsError: it exists and ``overwrite`` is false.
    """
    if out is None:
        embedded = manifest.path in embedded_models().values()
        out = (
            Path("runs") / manifest.spec.name / "card.json"
            if embedded
            else manifest.path.with_name(f"{manifest.path.stem}.card.json")
        )
    out = Path(out)
    if out.suffix.lower() != ".json":
        raise ValueError(f"--out {out}: a card is JSON; name it *.json")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another --out or pass --force to replace it")
    return out


def recording_windows(
    manifest: Manifest, clean: Path, other: Path | None, *, hop: int, progress: bool = True
) -> dict[str, np.ndarray]:
    """Windows of the clean recordings (and ``other`` ones) with what calibration needs per
    window: ``x``, ``y`` (label index; -1 for ``other`` recordings), ``group``, ``loudest`` (the
    recording's loudest window), ``calibration`` (its half), ``clip``, ``source``, ``condition``."""
    spec = manifest.spec
    files: list[tuple[Path, int, str, str]] = []
    for f, label in labelled_files(clean, spec.labels):
        i = spec.labels.index(label)
        files.append((f, i, ROLE_GROUPS[manifest.roles[i]], str(f.relative_to(clean))))
    if other is not None:
        files += [(f, -1, "other", f"other/{f.relative_to(other)}") for f in audio_files(other)]
    # halves: within each label (and the --other set), recordings in the order of a hash of their
    # path relative to the folder given, alternately, so every label is in both halves and the
    # split does not change when the folders move
    halves: dict[str, bool] = {}
    for key in dict.fromkeys((y, g) for _, y, g, _ in files):
        names = sorted(
            (r for _, y, g, r in files if (y, g) == key), key=lambda r: hashlib.sha256(r.encode()).digest()
        )
        halves.update({r: j % 2 == 0 for j, r in enumerate(names)})
        if len(names) < 2:
            label = "--other" if key[0] < 0 else spec.labels[key[0]]
            print(f"warning: one recording of {label}: it is in the calibration half only", file=sys.stderr)
    cols: dict[str, list] = {k: [] for k in ("x", "y", "group", "loudest", "calibration", "clip", "source")}
    for k, (f, y, group, rel) in enumerate(tqdm(files, desc="reading", unit="file", disable=not progress)):
        x, loudest = served_windows(
            f, sample_rate_hz=spec.sample_rate_hz, window=spec.window_samples, hop=hop
        )
        half = halves[rel]
        cols["x"].append(x)
        for j in range(len(x)):
            cols["y"].append(y)
            cols["group"].append(group)
            cols["loudest"].append(j == loudest)
            cols["calibration"].append(half)
            cols["clip"].append(k)
            cols["source"].append("other" if y < 0 else spec.labels[y])
    data = {k: np.asarray(v) for k, v in cols.items() if k != "x"}
    data["x"] = np.concatenate(cols["x"]).astype(np.float32)
    data["condition"] = np.full(len(data["y"]), "recorded")
    labelled = data["y"] >= 0
    if not (labelled & data["calibration"]).any() or not (labelled & ~data["calibration"]).any():
        raise ValueError(
            f"{clean}: too few recordings to split into a calibration and a test half "
            f"({int(len(set(data['clip'][labelled].tolist())))} labelled); give at least a few per label"
        )
    return data


def sweep(
    detector_for: Callable[[DetectorConfig], Detector],
    data: dict[str, np.ndarray],
    *,
    sigmas: tuple[float, ...],
    transforms: tuple[str, ...],
    smoothing: SmoothingConfig | None,
    progress: bool,
) -> dict:
    """Accuracy of the raw model, each transform and smoothing at each sigma on the calibration
    half's labelled recordings (loudest window each)."""
    pick = data["loudest"] & data["calibration"] & (data["y"] >= 0)
    x, y = data["x"][pick], data["y"][pick]
    out: dict = {"recordings": int(pick.sum())}
    det = detector_for(DetectorConfig(transforms=transforms, smoothing=None))
    verdicts = score_windows(det, x, progress=False)
    out["raw"] = float(np.mean([v.raw_label == t for v, t in zip(verdicts, y, strict=True)]))
    out["transforms"] = {
        spec: float(np.mean([v.defended[j].label == t for v, t in zip(verdicts, y, strict=True)]))
        for j, spec in enumerate(det.config.transforms)
    }
    out["smoothing"] = {}
    if smoothing is not None:
        for sigma in tqdm(sigmas, desc="smoothing sigmas", unit="sigma", disable=not progress):
            cfg = DetectorConfig(transforms=(), smoothing=dataclasses.replace(smoothing, sigma=sigma))
            vs = score_windows(detector_for(cfg), x, progress=False)
            right = [
                isinstance(v.smoothed, Prediction) and v.smoothed.label == t
                for v, t in zip(vs, y, strict=True)
            ]
            out["smoothing"][f"{sigma:g}"] = float(np.mean(right))
    return out


def choose(
    measured: dict, tolerance: float, smoothing: SmoothingConfig | None
) -> tuple[tuple[str, ...], SmoothingConfig | None, list[str]]:
    """The transforms and smoothing whose accuracy stays within ``tolerance`` of the raw model's,
    and why each left-out one was left out."""
    floor = measured["raw"] - tolerance
    notes = []
    kept = tuple(t for t, acc in measured["transforms"].items() if acc >= floor)
    for t, acc in measured["transforms"].items():
        if acc < floor:
            notes.append(
                f"{t} left out: accuracy {acc:.1%}, more than {tolerance:.0%} under the raw model's "
                f"{measured['raw']:.1%}"
            )
    if smoothing is None:
        return kept, None, notes
    ok = [float(s) for s, acc in measured["smoothing"].items() if acc >= floor]
    if not ok:
        notes.append(
            f"smoothing off: at every sigma tried ({', '.join(measured['smoothing'])}) its accuracy "
            f"falls more than {tolerance:.0%} under the raw model's"
        )
        return kept, None, notes
    return kept, dataclasses.replace(smoothing, sigma=max(ok)), notes


def calibrate_recordings(
    model: str | Path,
    clean: Path,
    cfg: DetectorConfig,
    *,
    other: Path | None = None,
    given: set[str] = frozenset(),  # type: ignore[assignment]
    out: Path | None = None,
    overwrite: bool = False,
    target_fpr: float = 0.01,
    confidence: float | None = DEFAULT_CONFIDENCE,
    tolerance: float = DEFAULT_TOLERANCE,
    hop_ms: int = 500,
    backend: str = "torch",
    device: str = "auto",
    scoring: str = "max",
    progress: bool = True,
) -> tuple[dict, Path]:
    """Calibrate the guard of ``model`` on the recordings in ``clean`` (and ``other``); returns the
    new card and where it was written.

    ``cfg``: the defence to start from (the command's flags over the manifest's); the fields
    named in ``given`` (``transforms``, ``smoothing``, ``sigma``) are kept as they are, the others
    are chosen by measurement.

    Raises:
        FileExistsError: the output exists and ``overwrite`` is false.
        ValueError: unusable recordings, or no threshold holds the target.
    """
    manifest = read_manifest(model)
    out = card_output(manifest, out, overwrite=overwrite)
    rec = load_recognizer(model, backend=backend, device=device)
    if cfg.smoothing is not None and cfg.smoothing.representation not in offered_representations(rec):
        raise ValueError(
            f"model {manifest.spec.name!r} offers smoothing representations {offered_representations(rec)}, "
            f"not {cfg.smoothing.representation!r}"
        )
    hop = max(1, round(hop_ms * manifest.spec.sample_rate_hz / 1000))
    data = recording_windows(
        manifest, clean, other, hop=min(hop, manifest.spec.window_samples), progress=progress
    )

    def detector_for(c: DetectorConfig) -> Detector:
        return Detector(rec, dataclasses.replace(c, seed=cfg.seed))

    candidates = (
        cfg.transforms
        if "transforms" in given
        else tuple(dict.fromkeys(normalize_transform_spec(t) for t in cfg.transforms + CANDIDATE_TRANSFORMS))
    )
    sigmas: tuple[float, ...] = ()
    if cfg.smoothing is not None:
        rep, sigma = cfg.smoothing.representation, cfg.smoothing.sigma
        sigmas = (
            (sigma,) if "sigma" in given else SIGMA_GRID.get(rep, tuple(sigma * f for f in SIGMA_FACTORS))
        )
    measured = sweep(
        detector_for, data, sigmas=sigmas, transforms=candidates, smoothing=cfg.smoothing, progress=progress
    )
    transforms, smoothing, notes = choose(measured, tolerance, cfg.smoothing)
    if "transforms" in given:
        transforms = cfg.transforms
    if "sigma" in given:
        smoothing = cfg.smoothing
    final = dataclasses.replace(cfg, transforms=transforms, smoothing=smoothing, threshold=None)
    if final.certified is not None and smoothing is None:
        raise ValueError(
            "certified detection needs smoothing, and smoothing was left out: " + "; ".join(notes)
        )
    verdicts: list[WindowVerdict] = score_windows(detector_for(final), data["x"], progress=progress)
    group = data["group"]
    final, section, scores = fit_detector(
        verdicts,
        final,
        data,
        group,
        target_fpr=target_fpr,
        confidence=confidence,
        scoring=scoring,
        method="group-conditional, training-conditional split conformal (Vovk 2012) on the clean "
        "recordings given to avsentry calibrate: per group (commands, other, no_speech, from the "
        "manifest's label roles) the smallest order statistic of the calibration scores whose FPR "
        "exceeds the target with probability <= 1 - confidence, on half the recordings (split by "
        "a hash of the path); the largest kept; FPR measured on the other half",
    )
    card = load_document(manifest.path)
    card["detector"] = section
    card["calibration"] = {
        "clean": str(clean),
        "other": None if other is None else str(other),
        "recordings": int(len(set(data["clip"].tolist()))),
        "windows": int(len(data["y"])),
        "hop_ms": hop_ms,
        "tolerance": tolerance,
        "accuracy": measured,
        "notes": notes,
    }
    card.pop("defence", None)  # the calibrated detector is the defence now
    write_card(card, manifest.root, out)
    plot_scores(scores, group, data["calibration"], section["threshold"], out.with_suffix(".scores.png"))
    return card, out


def plot_scores(scores: np.ndarray, group: np.ndarray, cal: np.ndarray, threshold: float, path: Path) -> None:
    """Histogram of the clean windows' scores per group, with the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    finite = np.isfinite(scores)
    top = max(float(threshold) * 1.2, float(scores[finite].max(initial=0.0)) + 1e-6)
    bins = [float(b) for b in np.linspace(0.0, top, 40)]
    for g in dict.fromkeys(group.tolist()):
        ax.hist(
            scores[finite & (group == g)], bins=bins, alpha=0.5, label=f"{g} (n={int((group == g).sum())})"
        )
    ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("score of clean windows")
    ax.set_ylabel("windows")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary_lines(card: dict, out: Path) -> list[str]:
    d, c = card["detector"], card["calibration"]
    acc = c["accuracy"]
    cfg = d["config"]
    s = cfg.get("smoothing")
    lines = [
        f"calibrated {card['name']!r} on {c['recordings']} recordings ({c['windows']} windows, "
        f"{acc['recordings']} labelled in the calibration half)",
        f"accuracy: raw {acc['raw']:.1%}; "
        + ", ".join(f"{t} {a:.1%}" for t, a in acc["transforms"].items())
        + (
            "; smoothing " + ", ".join(f"sigma {k} {a:.1%}" for k, a in acc["smoothing"].items())
            if acc["smoothing"]
            else ""
        ),
        f"defence: transforms {', '.join(cfg['transforms']) or 'none'}; smoothing "
        + (f"{s['representation']} sigma {s['sigma']:g}, n {s['n']}" if s else "off"),
        *(f"  {n}" for n in c["notes"]),
        f"threshold {d['threshold']:.4f} for target FPR {d['target_fpr']:.2%}; measured FPR on "
        f"{d['test']['n']} test windows: {d['measured_fpr']:.2%} "
        f"(95% upper bound {d['measured_fpr_upper95']:.2%}); "
        "by group: "
        + ", ".join(f"{g} {v['fpr']:.2%} (n={v['n']})" for g, v in d["test"]["by_group"].items()),
        f"wrote {out} and {out.with_suffix('.scores.png')}; use it: avsentry check --model {out} FILE",
    ]
    if d["test"]["n"] < 100:
        lines.append(
            f"warning: {d['test']['n']} test windows measure the FPR coarsely; more recordings give a "
            "tighter threshold and bound"
        )
    return lines


def report(card: dict, out: Path) -> None:
    for line in summary_lines(card, out):
        print(line, file=sys.stdout)
