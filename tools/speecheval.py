"""Evaluation of the digit recognizer on held-out voices: per source, through the telephone,
as a confusion matrix, and on connected digits.

Every figure here is on voices (speakers) never trained on (:func:`tools.heldout.heldout_windows`):
held-out espeak-ng variants, flite rms, festival ked_diphone, and the held-out real speakers of
:mod:`tools.realspeech` (people, other languages: their windows should be ``_unknown_``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avsentry.pipelines.windowing import frame
from avsentry.tools import augment, synth

# A recognizer as the evaluation calls it. A window's answer is right when it is the window's
# label; for real speech (other languages) that label is _unknown_.
Predict = Callable[[np.ndarray], np.ndarray]  # (n, samples) windows -> (n,) label indices


def source_of(engine: str, voice: str) -> str:
    """The evaluation source of a clip: its engine, and for real recordings the speaker."""
    return f"real:{voice}" if engine == "real" else engine


def telephone_windows(data: dict[str, np.ndarray], *, seed: int = 3) -> dict[str, np.ndarray]:
    """``data`` (as from :func:`tools.heldout.heldout_windows`) through the 8 kHz telephone round
    trip with G.711 mu-law (:func:`tools.augment.telephone`), background windows included."""
    rng = np.random.default_rng(seed)
    out = dict(data)
    out["x"] = np.stack([augment.telephone(rng, w, codec="g711-mulaw") for w in data["x"]])
    return out


def per_source(pred: np.ndarray, data: dict[str, np.ndarray]) -> dict[str, dict]:
    """Top-1 accuracy per source, and for each the share of digit windows called a digit
    (right or wrong) and of other-speech windows called ``_unknown_``."""
    y = data["y"]
    source = data["source"]
    unknown = synth.LABELS.index(synth.UNKNOWN)
    out: dict[str, dict] = {}
    for s in sorted(np.unique(source)):
        m = source == s
        digits = m & (y < 10)
        other = m & (y == unknown)
        rep: dict = {"accuracy": float(np.mean(pred[m] == y[m])), "n": int(m.sum())}
        if digits.any():
            rep["digit_accuracy"] = float(np.mean(pred[digits] == y[digits]))
            rep["digit_windows"] = int(digits.sum())
        if other.any():
            rep["other_speech_as_unknown"] = float(np.mean(pred[other] == unknown))
            rep["other_speech_windows"] = int(other.sum())
        out[str(s)] = rep
    return out


def confusion(pred: np.ndarray, y: np.ndarray, n_classes: int = len(synth.LABELS)) -> np.ndarray:
    """``(n_classes, n_classes)`` counts, row = true label, column = predicted."""
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (y, pred), 1)
    return m


def plot_confusions(
    matrices: dict[str, np.ndarray], path: Path, labels: Sequence[str] = synth.LABELS
) -> None:
    """Row-normalised confusion matrices side by side, saved as a PNG (matplotlib, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(matrices), figsize=(6.2 * len(matrices), 5.6), squeeze=False)
    short = [lb.strip("_")[:4] for lb in labels]
    for ax, (title, m) in zip(axes[0], matrices.items(), strict=True):
        rows = m.sum(1, keepdims=True)
        norm = np.divide(m, rows, out=np.zeros(m.shape, dtype=float), where=rows > 0)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if m[i, j]:
                    ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")  # fmt: skip
        ax.set_xticks(range(len(labels)), short, rotation=60, fontsize=7)
        ax.set_yticks(range(len(labels)), short, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass(frozen=True, slots=True)
class DigitString:
    """Digits spoken in a row by one voice: the audio and where each digit lies in it."""

    audio: np.ndarray
    digits: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]  # (start, stop) samples of each digit's speech
    voice: str


def digit_string(
    clips: Sequence[np.ndarray], digits: Sequence[str], voice: str, rng: np.random.Generator
) -> DigitString:
    """Concatenate single-digit clips with 80-250 ms pauses (typical of read digit strings), with
    200 ms of silence before and after."""
    lead = int(0.2 * synth.SAMPLE_RATE_HZ)
    parts, spans, pos = [np.zeros(lead, np.float32)], [], lead
    for k, c in enumerate(clips):
        spans.append((pos, pos + len(c)))
        parts.append(c.astype(np.float32))
        pos += len(c)
        gap = lead if k == len(clips) - 1 else int(rng.uniform(0.08, 0.25) * synth.SAMPLE_RATE_HZ)
        parts.append(np.zeros(gap, np.float32))
        pos += gap
    return DigitString(np.concatenate(parts), tuple(digits), tuple(spans), voice)


def heldout_digit_strings(
    clips: synth.ClipSet, *, count: int = 60, length: int = 4, seed: int = 5
) -> list[DigitString]:
    """``count`` strings of ``length`` random digits, each by one held-out synthetic voice (every
    digit of a string from the same voice)."""
    rng = np.random.default_rng(seed)
    held = clips.heldout & np.isin(clips.label, synth.DIGITS) & (clips.engine != "real")
    by_voice: dict[str, dict[str, list[int]]] = {}
    for i in np.flatnonzero(held):
        by_voice.setdefault(f"{clips.engine[i]}:{clips.voice[i]}", {}).setdefault(
            str(clips.label[i]), []
        ).append(int(i))
    voices = sorted(v for v, d in by_voice.items() if len(d) == len(synth.DIGITS))
    out: list[DigitString] = []
    if not voices:
        return out
    for _ in range(count):
        voice = voices[int(rng.integers(len(voices)))]
        digits = [synth.DIGITS[int(k)] for k in rng.integers(0, 10, size=length)]
        idx = [int(rng.choice(by_voice[voice][d])) for d in digits]
        out.append(digit_string([clips.clip(i) for i in idx], digits, voice, rng))
    return out


def window_targets(s: DigitString, starts: np.ndarray, window: int) -> list[str | None]:
    """For each window, the digit it must be: the one digit whose speech lies wholly inside it
    while no other digit does (``None``: no whole digit, or two, where any answer is accepted)."""
    out: list[str | None] = []
    for st in starts:
        inside = [d for d, (a, b) in zip(s.digits, s.spans, strict=True) if a >= st and b <= st + window]
        out.append(inside[0] if len(inside) == 1 else None)
    return out


def connected_digits(predict: Predict, strings: Sequence[DigitString], *, hop: int = 8000) -> dict:
    """Windows of the strings as the service cuts them (1 s, ``hop`` samples), judged where
    :func:`window_targets` names a digit: the share right, and what the others were called."""
    right = total = 0
    errors: dict[str, int] = {}
    for s in strings:
        windows, starts = frame(s.audio, window=synth.SAMPLE_RATE_HZ, hop=hop)
        targets = window_targets(s, starts, synth.SAMPLE_RATE_HZ)
        pred = predict(windows)
        for t, p in zip(targets, pred, strict=True):
            if t is None:
                continue
            total += 1
            label = synth.LABELS[int(p)]
            if label == t:
                right += 1
            else:
                errors[label] = errors.get(label, 0) + 1
    return {
        "strings": len(strings),
        "judged_windows": total,
        "accuracy": right / total if total else float("nan"),
        "wrong_answers": dict(sorted(errors.items(), key=lambda kv: -kv[1])),
        "hop_samples": hop,
    }
