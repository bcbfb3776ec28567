"""The plots of the evaluation report (matplotlib, Agg backend): ROC curves per attack, detection
rate against perturbation SNR, certified-accuracy curves, and clean vs adversarial examples as
waveforms and spectrograms."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from avsentry.tools.evaluate import Evaluation


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc(ev: Evaluation, path: Path) -> Path:
    """ROC of the combined score, clean vs each attack's successful adversarials."""
    from sklearn.metrics import roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5))
    c = np.nan_to_num(ev.clean.score, nan=2.0, posinf=2.0)
    for o in ev.outcomes:
        ok = o.fooled
        if not ok.any():
            continue
        a = np.nan_to_num(o.scores.score[ok], nan=2.0, posinf=2.0)
        fpr, tpr, _ = roc_curve(np.r_[np.zeros(len(c)), np.ones(len(a))], np.r_[c, a])
        auc = o.metrics["combined"]["auc"]
        ax.plot(fpr, tpr, label=f"{o.metrics['attack']} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlim(0, 1)
    ax.axvline(0.01, color="grey", lw=0.5)
    ax.set_xlabel("false-positive rate (clean windows flagged)")
    ax.set_ylabel("true-positive rate (successful adversarials flagged)")
    ax.set_title("Detection ROC, combined score")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def detection_vs_snr(ev: Evaluation, path: Path) -> Path:
    """Flag rate at the deployed threshold of successful adversarials, binned by SNR."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.arange(0, 75, 5)
    for o in ev.outcomes:
        ok = o.fooled
        snr = o.result.snr_db[ok]
        fl = o.scores.flagged[ok]
        xs, ys = [], []
        for lo in bins:
            k = (snr >= lo) & (snr < lo + 5)
            if k.sum() >= 2:
                xs.append(lo + 2.5)
                ys.append(fl[k].mean())
        if xs:
            ax.plot(xs, ys, "o-", label=o.metrics["attack"], ms=3)
    ax.set_xlabel("perturbation SNR (dB, higher = quieter)")
    ax.set_ylabel("flagged at the deployed threshold")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Detection rate vs perturbation size")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def examples(ev: Evaluation, path: Path, sample_rate_hz: int = 16000) -> Path:
    """Waveform and spectrogram of one clean clip and its adversarial under each of up to 3 attacks
    (video: :func:`video_examples`)."""
    if ev.x.ndim == 5:
        return video_examples(ev, path)
    plt = _plt()
    picks = [o for o in ev.outcomes if o.fooled.any()][:3]
    rows = 1 + len(picks)
    fig, axes = plt.subplots(rows, 2, figsize=(10, 2.2 * rows), squeeze=False)
    i = None
    if picks:
        i = int(np.flatnonzero(picks[0].fooled)[0])
    j = int(picks[0].attacked[i]) if picks and i is not None else 0
    series = [("clean: " + ev.labels[int(ev.y[j])], ev.x[j])]
    for o in picks:
        k = int(np.flatnonzero(o.attacked == j)[0])
        lab = ev.labels[int(o.scores.raw[k])]
        series.append(
            (f"{o.metrics['attack']}: {lab} (SNR {o.result.snr_db[k]:.1f} dB)", o.result.adversarial[k])
        )
    for r, (name, w) in enumerate(series):
        t = np.arange(len(w)) / sample_rate_hz
        axes[r, 0].plot(t, w, lw=0.4)
        axes[r, 0].set_title(name, fontsize=8)
        axes[r, 0].set_ylim(-1, 1)
        with np.errstate(divide="ignore"):  # digital silence has -inf dB
            axes[r, 1].specgram(w, NFFT=512, Fs=sample_rate_hz, noverlap=384, cmap="magma", vmin=-140)
        axes[r, 1].set_title("spectrogram", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def video_examples(ev: Evaluation, path: Path) -> Path:
    """One clean clip and its adversarial under each of up to 3 attacks: the frame the attack
    changed most, and the perturbation there (amplified to the full range)."""
    plt = _plt()
    picks = [o for o in ev.outcomes if o.fooled.any()][:3]
    j = int(picks[0].attacked[int(np.flatnonzero(picks[0].fooled)[0])]) if picks else 0
    clean = ev.x[j]
    series = [(f"clean: {ev.labels[int(ev.y[j])]}", clean)]
    for o in picks:
        hits = np.flatnonzero(o.attacked == j)
        if len(hits):
            k = int(hits[0])
            series.append(
                (f"{o.metrics['attack']}: {ev.labels[int(o.scores.raw[k])]}", o.result.adversarial[k])
            )
    diffs = [np.abs(clip - clean).reshape(len(clean), -1).max(axis=1) for _, clip in series]
    frame = int(np.argmax(np.max(diffs, axis=0)))
    fig, axes = plt.subplots(len(series), 2, figsize=(5.5, 2.7 * len(series)), squeeze=False)
    for r, (name, clip) in enumerate(series):
        axes[r, 0].imshow(np.clip(clip[frame], 0, 1))
        axes[r, 0].set_title(f"{name} (frame {frame})", fontsize=8)
        delta = clip[frame] - clean[frame]
        scale = max(float(np.abs(delta).max()), 1e-8)
        axes[r, 1].imshow(np.clip(0.5 + 0.5 * delta / scale, 0, 1))
        axes[r, 1].set_title(f"perturbation x{0.5 / scale:.0f}" if r else "(none)", fontsize=8)
        for ax in axes[r]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def certified_accuracy(c: dict, path: Path) -> Path:
    """Certified accuracy against radius, one panel per representation, a curve per sigma."""
    plt = _plt()
    reps = list(dict.fromkeys(cv["representation"] for cv in c["curves"]))
    fig, axes = plt.subplots(1, len(reps), figsize=(4.5 * len(reps), 3.6), squeeze=False)
    for ax, rep in zip(axes[0], reps, strict=True):
        for cv in (cv for cv in c["curves"] if cv["representation"] == rep):
            r = [float(k) for k in cv["certified_accuracy"]]
            ax.plot(r, list(cv["certified_accuracy"].values()), "o-", ms=3, label=f"sigma {cv['sigma']:g}")
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(f"L2 radius ({rep} units)")
        ax.set_ylabel("certified accuracy")
        ax.set_title(rep)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_all(ev: Evaluation, out: Path) -> list[Path]:
    """Every plot the evaluation has data for; returns their paths."""
    paths = []
    if ev.outcomes:
        paths += [roc(ev, out / "roc.png"), detection_vs_snr(ev, out / "detection_vs_snr.png")]
        paths.append(examples(ev, out / "examples.png"))
    if ev.certification:
        paths.append(certified_accuracy(ev.certification, out / "certified_accuracy.png"))
    return paths
