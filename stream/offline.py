"""``avsentry check`` and ``avsentry demo``: verdicts for audio files without a server."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avsentry.pipelines.audio_io import AudioReadError, read_audio
from avsentry.pipelines.detection import Detector, DetectorConfig, WindowVerdict, verdict_to_dict
from avsentry.pipelines.recognizers import load_recognizer, read_manifest
from avsentry.pipelines.types import Abstain, Certified, Prediction
from avsentry.pipelines.windowing import frame

EXIT_FLAGGED = 3


@dataclass(frozen=True, slots=True)
class FileWindow:
    file: str
    start_s: float
    end_s: float
    verdict: WindowVerdict


def detector_config_overrides(args: argparse.Namespace) -> dict:
    """The detector flags of ``check``/``calibrate`` as ``DetectorConfig.from_card`` overrides."""
    transforms = None
    if getattr(args, "transforms", None) is not None:
        transforms = (
            []
            if args.transforms.strip() in ("", "none")
            else [t.strip() for t in args.transforms.split(",") if t.strip()]
        )
    return dict(
        transforms=transforms,
        n=getattr(args, "n", None),
        n0=getattr(args, "n0", None),
        sigma=getattr(args, "sigma", None),
        representation=getattr(args, "representation", None),
        alpha=getattr(args, "alpha", None),
        smoothing=False if getattr(args, "no_smoothing", False) else None,
        threshold=getattr(args, "threshold", None),
        seed=getattr(args, "seed", 0),
    )


def detector_from_args(args: argparse.Namespace) -> tuple[Detector, bool]:
    """Build the detector for ``--model`` with the card's calibrated config and CLI overrides."""
    manifest = read_manifest(args.model)
    cfg, calibrated = DetectorConfig.from_card(
        manifest.extra.get("detector"), **detector_config_overrides(args)
    )
    rec = load_recognizer(args.model, backend=args.backend, device=args.device)
    return Detector(rec, cfg), calibrated


def check_file(detector: Detector, path: Path, *, hop_s: float, batch: int = 32) -> Iterator[FileWindow]:
    """Verdicts for each window of one file (raises AudioReadError on bad input)."""
    spec = detector.recognizer.spec
    audio = read_audio(path, sample_rate_hz=spec.sample_rate_hz)
    lo, hi = spec.input_bounds
    if audio.min() < lo or audio.max() > hi:
        audio = np.clip(audio, lo, hi)
    hop = max(1, round(hop_s * spec.sample_rate_hz))
    windows, starts = frame(audio, window=spec.window_samples, hop=hop)
    rate = spec.sample_rate_hz
    for s in range(0, len(windows), batch):
        verdicts = detector.analyze(windows[s : s + batch], keys=starts[s : s + batch].tolist())
        for start, v in zip(starts[s : s + batch], verdicts, strict=True):
            end = min(len(audio), int(start) + spec.window_samples)
            yield FileWindow(file=str(path), start_s=int(start) / rate, end_s=end / rate, verdict=v)


def format_window(w: FileWindow, labels: tuple[str, ...]) -> str:
    """One human-readable line per window."""
    v = w.verdict
    parts = [
        f"{w.file} {w.start_s:6.2f}-{w.end_s:6.2f}s",
        f"raw {labels[v.raw_label]} {v.raw_confidence:.2f}",
    ]
    parts.append(" ".join(f"{o.name}:{labels[o.label]}" for o in v.defended if o.name != "smoothing"))
    if isinstance(v.smoothed, Prediction):
        sm = f"smoothed {labels[v.smoothed.label]}"
    elif isinstance(v.smoothed, Abstain):
        sm = "smoothed ABSTAIN"
    else:
        sm = "smoothed -"
    if isinstance(v.certificate, Certified):
        sm += f" (r={v.certificate.radius:.2f})"
    parts.append(sm)
    parts.append(f"score {v.score:.3f}")
    parts.append("FLAGGED: " + "; ".join(v.reasons) if v.flagged else "ok")
    return " | ".join(p for p in parts if p)


def run_check(args: argparse.Namespace) -> int:
    if args.hop_ms <= 0:
        raise ValueError(f"--hop-ms must be > 0, got {args.hop_ms}")
    detector, calibrated = detector_from_args(args)
    if not calibrated and detector.config.threshold is not None and args.threshold is None:
        print(
            "avsentry check: warning: the model card's threshold was calibrated for another detector "
            "configuration; FPR is unknown (run avsentry calibrate)",
            file=sys.stderr,
        )
    labels = detector.recognizer.spec.labels
    failed = flagged = 0
    for path in args.files:
        try:
            for w in check_file(detector, path, hop_s=args.hop_ms / 1000):
                flagged += w.verdict.flagged
                if args.json:
                    obj = {
                        "file": w.file,
                        "start_s": round(w.start_s, 4),
                        "end_s": round(w.end_s, 4),
                    }
                    obj.update(verdict_to_dict(w.verdict, labels))
                    obj["threshold"] = detector.config.threshold
                    print(json.dumps(obj), flush=True)
                else:
                    print(format_window(w, labels), flush=True)
        except AudioReadError as e:
            failed += 1
            print(f"avsentry check: error: {e}", file=sys.stderr)
    if failed:
        return 1
    return EXIT_FLAGGED if args.fail_on_flag and flagged else 0
