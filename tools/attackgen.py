"""The offline attack generator behind ``avsentry attack``: clean clips in, adversarial WAVs (or
video clips) and a JSONL manifest out; and the readers ``avsentry evaluate`` uses to judge them
later.

Clean clips come from the project's held-out voices (:func:`avsentry.tools.heldout.heldout_speech_set`)
or from a folder of the user's labelled recordings, ``DIR/<label>/*.<ext>`` (any format PyAV
decodes; the label is a label of the model). A recording is decoded to mono at the model's rate;
a longer one is cut to the window with the most energy, a shorter one is centred in a silent
window.

Adversarials are written as 32-bit float WAVs (a 16-bit file would round away perturbations
quieter than about -90 dBFS) under ``OUT/<attack label>/NNNNN.wav`` with the clean clip under
``OUT/clean/NNNNN.wav``; one manifest line per adversarial records the source, true label,
target, attack, parameters, seed, success, L2, L-inf, L0, SNR dB and queries.

For a video model the clean set is the held-out stream of the procedural action generator
(:mod:`avsentry.tools.videosynth`) or ``DIR/<label>/*.mp4`` (the first clip of each file). Each
clip is written three times: ``NNNNN.npy`` (the exact float32 clip, what ``evaluate`` reads back),
``NNNNN.mp4`` (H.264, CRF 18) and ``NNNNN.gif`` to look at; the manifest also records the frames
each adversarial changed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.io import wavfile
from tqdm.auto import tqdm

from avsentry.pipelines.audio_io import read_audio
from avsentry.pipelines.detection import Detector
from avsentry.pipelines.types import ModelSpec
from avsentry.tools.attacks.base import AttackResult, choose_targets, params_of, run_attack
from avsentry.tools.attacks.catalog import (
    BLACK_BOX,
    GUARD_ATTACKS,
    AttackSpec,
    check_modality,
    parse_attack_spec,
)
from avsentry.tools.attacks.frame_saliency import frames_changed
from avsentry.tools.recordings import CleanSet, folder_set, folder_video_set

MANIFEST = "manifest.jsonl"
#: what ``avsentry attack`` runs without ``--attack``
DEFAULT_ATTACK = {"audio": "pgd:eps=30db", "video": "frame_saliency:mode=refresh,eps=8/255"}


def heldout_set(labels: Sequence[str], *, clips: int, seed: int = 1, progress: bool = True) -> CleanSet:
    """``clips`` held-out clips of the digit model: digits (nine in ten) and other words."""
    from avsentry.tools import heldout, synth

    if tuple(labels) != synth.LABELS:
        raise ValueError("the held-out voices fit the digits model only: give --clean DIR for another model")
    per_digit = max(1, (clips * 9 // 10) // 10)
    data = heldout.heldout_speech_set(
        per_digit=per_digit, unknown=max(0, clips - 10 * per_digit), seed=seed, progress=progress
    )
    names = tuple(f"{e}/{v}/{t}" for e, v, t in zip(data["engine"], data["voice"], data["text"], strict=True))
    return CleanSet(x=data["x"], y=data["y"], names=names)


def heldout_video_set(labels: Sequence[str], *, clips: int, seed: int = 1) -> CleanSet:
    """``clips`` held-out clips of the action model (class-balanced, from clip ``1000 * seed`` of
    the held-out generator stream), float32 in [0, 1]."""
    from avsentry.tools import videosynth

    if tuple(labels) != videosynth.ACTIONS:
        raise ValueError("the procedural held-out clips fit the actions model only: give --clean DIR")
    start = 1000 * seed
    x, y = videosynth.render_batch(videosynth.HELDOUT_SEED, start, clips)
    names = tuple(f"videosynth/heldout/{start + k}/{labels[int(c)]}" for k, c in enumerate(y))
    return CleanSet(x=x.astype(np.float32) / 255.0, y=y, names=names)


def write_wav(path: Path, audio: np.ndarray, rate: int) -> None:
    """A mono 32-bit float WAV (exact samples)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    wavfile.write(path, rate, np.asarray(audio, np.float32))


def write_item(path: Path, item: np.ndarray, spec: ModelSpec) -> Path:
    """Write one clip at ``path`` (no suffix): a WAV for audio; for video the exact ``.npy`` plus
    ``.mp4`` and ``.gif`` to watch. Returns the file ``evaluate`` reads back."""
    if spec.modality == "audio":
        out = path.with_suffix(".wav")
        write_wav(out, item, spec.sample_rate_hz)
        return out
    from avsentry.pipelines.video_io import write_video

    path.parent.mkdir(parents=True, exist_ok=True)
    out = path.with_suffix(".npy")
    np.save(out, np.asarray(item, np.float32))
    frames = np.rint(np.clip(item, 0.0, 1.0) * 255).astype(np.uint8)
    for suffix in (".mp4", ".gif"):
        write_video(path.with_suffix(suffix), frames, fps=spec.video.fps)
    return out


def read_item(path: Path, spec: ModelSpec) -> np.ndarray:
    """A clip :func:`write_item` wrote (or, for audio, any audio file at the model's rate)."""
    if spec.modality == "video":
        x = np.load(path, allow_pickle=False)
        if x.shape != spec.window_shape:
            raise ValueError(f"{path}: a clip of shape {x.shape}, the model takes {spec.window_shape}")
        return x.astype(np.float32)
    return read_audio(path, sample_rate_hz=spec.sample_rate_hz)


def write_attack(
    out: Path,
    spec: AttackSpec,
    result: AttackResult,
    clean: CleanSet,
    idx: np.ndarray,
    target: np.ndarray | None,
    *,
    model_spec: ModelSpec,
    seed: int,
) -> list[dict[str, Any]]:
    """Write one attack's adversarials and clean originals; returns the manifest records."""
    labels, model = model_spec.labels, model_spec.name
    video = model_spec.modality == "video"
    changed = frames_changed(clean.x[idx], result.adversarial) if video else None
    records = []
    for k, i in enumerate(idx):
        clean_path = (out / "clean" / f"{int(i):05d}").with_suffix(".npy" if video else ".wav")
        if not clean_path.exists():
            clean_path = write_item(clean_path.with_suffix(""), clean.x[i], model_spec)
        adv_path = write_item(out / spec.label / f"{int(i):05d}", result.adversarial[k], model_spec)
        records.append(
            {
                "file": str(adv_path.relative_to(out)),
                "clean_file": str(clean_path.relative_to(out)),
                "source": clean.names[i],
                "index": int(i),
                "model": model,
                "true_label": labels[int(clean.y[i])],
                "target": None if target is None else labels[int(target[k])],
                "attack": spec.family,
                "label": spec.label,
                "spec": spec.text,
                "parameters": params_of(spec.attack),
                "seed": seed,
                "adversarial_label": labels[int(result.adversarial_labels[k])],
                "success": bool(result.success[k]),
                "l2": float(result.l2[k]),
                "linf": float(result.linf[k]),
                "l0": int(result.l0[k]),
                "snr_db": float(result.snr_db[k]),
                "queries": int(result.queries[k]),
                **({"frames_changed": int(changed[k])} if changed is not None else {}),
            }
        )
    return records


def read_attack_manifest(
    path: Path, spec: ModelSpec
) -> tuple[CleanSet, list[tuple[AttackSpec, np.ndarray, np.ndarray, np.ndarray | None]]]:
    """The clean set and, per attack, ``(spec, adversarials, clean indices, targets)`` of a
    manifest written by ``avsentry attack`` (paths relative to the manifest's folder)."""
    path = Path(path)
    root = path.parent
    labels = spec.labels
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path}: empty manifest")
    clean_files: dict[int, tuple[str, str, str]] = {}
    for r in rows:
        clean_files.setdefault(int(r["index"]), (r["clean_file"], r["true_label"], r["source"]))
    order = sorted(clean_files)
    pos = {i: k for k, i in enumerate(order)}

    def load(rel: str) -> np.ndarray:
        return read_item(root / rel, spec)

    for r in rows:
        if r["true_label"] not in labels:
            raise ValueError(f"{path}: label {r['true_label']!r} is not a label of the model")
    clean = CleanSet(
        x=np.stack([load(clean_files[i][0]) for i in order]),
        y=np.array([labels.index(clean_files[i][1]) for i in order], dtype=np.int64),
        names=tuple(clean_files[i][2] for i in order),
    )
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["spec"], []).append(r)
    out = []
    for spec_text, rs in groups.items():
        attack = parse_attack_spec(spec_text)
        adv = np.stack([load(r["file"]) for r in rs])
        idx = np.array([pos[int(r["index"])] for r in rs])
        tg = None if rs[0]["target"] is None else np.array([labels.index(r["target"]) for r in rs])
        out.append((attack, adv, idx, tg))
    return clean, out


def clean_set(args: argparse.Namespace, spec: ModelSpec) -> CleanSet:
    """The clean set the ``--clean`` and ``--clips`` options name."""
    if spec.modality == "video":
        if args.clean == "heldout":
            return heldout_video_set(spec.labels, clips=args.clips, seed=1 + args.seed)
        return folder_video_set(Path(args.clean), spec, limit=args.clips)
    if args.clean == "heldout":
        return heldout_set(spec.labels, clips=args.clips, seed=1 + args.seed, progress=not args.quiet)
    return folder_set(
        Path(args.clean),
        spec.labels,
        sample_rate_hz=spec.sample_rate_hz,
        window=spec.window_samples,
        limit=args.clips,
    )


def attack_clips(
    spec: AttackSpec,
    detector: Detector,
    x: np.ndarray,
    y: np.ndarray,
    target: np.ndarray | None,
    *,
    seed: int,
    batch_size: int,
    progress: bool,
    oracle: Any = None,
) -> AttackResult:
    """Run one parsed attack on clips: guard attacks against ``detector``, black-box ones against
    ``oracle`` when given (else the model), white-box ones against the model."""
    if spec.family in GUARD_ATTACKS:
        parts = []
        starts = range(0, len(x), batch_size)
        for k, s in enumerate(tqdm(starts, desc=spec.label, unit="batch", leave=False, disable=not progress)):
            sl = slice(s, s + batch_size)
            res, _ = spec.attack.run(
                detector, x[sl], y[sl], target=None if target is None else target[sl], seed=seed + k
            )
            parts.append(res)
        return AttackResult.concatenate(parts)
    model: Any = oracle if (oracle is not None and spec.family in BLACK_BOX) else detector.recognizer
    return run_attack(
        spec.attack,
        model,
        x,
        y,
        target=target,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
        desc=spec.label,
    )


def run_cli(args: argparse.Namespace, detector: Detector, *, oracle: Any = None) -> int:
    """``avsentry attack``: attack, write WAVs and the manifest, print a summary line per attack."""
    spec_m = detector.recognizer.spec
    video = spec_m.modality == "video"
    specs = [parse_attack_spec(t) for t in (args.attacks or [DEFAULT_ATTACK[spec_m.modality]])]
    for spec in specs:
        check_modality(spec, spec_m.modality)
    clean = clean_set(args, spec_m)
    raw = detector.recognizer.predict(clean.x).argmax(1)
    idx = np.flatnonzero(raw == clean.y)
    print(
        f"attack: {len(idx)} of {len(clean.y)} clean clips are recognised correctly; attacking those",
        file=sys.stderr,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    with open(out / MANIFEST, "w", encoding="utf-8") as f:
        for spec in specs:
            target = choose_targets(clean.y[idx], spec_m.labels, spec.target, rng)
            res = attack_clips(
                spec,
                detector,
                clean.x[idx],
                clean.y[idx],
                target,
                seed=args.seed,
                batch_size=args.batch_size,
                progress=not args.quiet,
                oracle=oracle,
            )
            records = write_attack(out, spec, res, clean, idx, target, model_spec=spec_m, seed=args.seed)
            for rec in records:
                f.write(json.dumps(rec) + "\n")
            ok = res.success
            snr = f"median SNR {np.median(res.snr_db[ok]):.1f} dB" if ok.any() else "no success"
            frames = ""
            if video and ok.any():
                changed = [r["frames_changed"] for r, hit in zip(records, ok, strict=True) if hit]
                frames = f", mean frames changed {np.mean(changed):.1f}"
            print(
                f"{spec.label}: success {ok.mean():.1%} ({int(ok.sum())}/{len(ok)}), {snr}{frames}, "
                f"mean queries {res.queries.mean():.0f}"
            )
    print(f"attack: wrote {out / MANIFEST}", file=sys.stderr)
    return 0
