"""Labelled recordings on disk: ``DIR/<label>/*.<ext>``, any format PyAV decodes.

The user's clean set for ``avsentry attack``/``evaluate`` (:func:`folder_set`, one window per
recording; :func:`folder_video_set`, the first clip of each video) and for ``avsentry calibrate
--clean`` (:func:`served_windows`, every window the service
would cut from each recording). A recording is decoded to mono at the model's rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avsentry.pipelines.audio_io import read_audio
from avsentry.pipelines.types import ModelSpec
from avsentry.pipelines.windowing import frame

AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".webm", ".au"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".avi", ".webm", ".gif", ".mov"})


@dataclass(frozen=True, slots=True)
class CleanSet:
    """Labelled clean windows: ``x`` ``(n, samples)`` float32, ``y`` label indices, ``names``
    (where each came from)."""

    x: np.ndarray
    y: np.ndarray
    names: tuple[str, ...]


def loudest_window(audio: np.ndarray, window: int, *, hop: int | None = None) -> np.ndarray:
    """The ``window``-sample stretch of ``audio`` with the most energy (zero-padded, centred,
    when shorter)."""
    a = np.asarray(audio, np.float32)
    if len(a) <= window:
        out = np.zeros(window, np.float32)
        s = (window - len(a)) // 2
        out[s : s + len(a)] = a
        return out
    hop = hop or max(1, window // 10)
    energy = np.concatenate([[0.0], np.cumsum(a.astype(np.float64) ** 2)])
    starts = np.arange(0, len(a) - window + 1, hop)
    best = int(starts[np.argmax(energy[starts + window] - energy[starts])])
    return a[best : best + window].copy()


def folder_set(
    root: Path, labels: Sequence[str], *, sample_rate_hz: int, window: int, limit: int | None = None
) -> CleanSet:
    """Clean clips from ``root/<label>/*`` (see module doc).

    Raises:
        ValueError: No subfolder named after a model label, no audio files, or an undecodable file.
    """
    files = labelled_files(root, labels)
    files = files[:limit] if limit else files
    xs = [loudest_window(read_audio(f, sample_rate_hz=sample_rate_hz), window) for f, _ in files]
    return CleanSet(
        x=np.stack(xs),
        y=np.array([labels.index(lab) for _, lab in files], dtype=np.int64),
        names=tuple(str(f.relative_to(root)) for f, _ in files),
    )


def folder_video_set(root: Path, spec: ModelSpec, *, limit: int | None = None) -> CleanSet:
    """Clean clips from ``root/<label>/*.mp4`` (any video FFmpeg decodes): the first clip of each
    file, scaled and retimed to the model as the server does (a shorter file is padded black).

    Raises:
        ValueError: No subfolder named after a model label, no video files, or an undecodable file.
    """
    from avsentry.pipelines.session import open_session
    from avsentry.pipelines.video_io import VideoFile

    files = labelled_files(root, spec.labels, suffixes=VIDEO_SUFFIXES)
    files = files[:limit] if limit else files
    clips = []
    for f, _ in files:
        with VideoFile(f) as video:
            info = video.info
            session = open_session(
                spec, rate_hz=info.fps, hop=spec.window_shape[0], frame_size=(info.height, info.width)
            )
            windows = []
            for block in video.blocks():
                windows += session.push(block)
                if windows:
                    break
            windows += session.flush() if not windows else []
        clips.append(windows[0].data)
    return CleanSet(
        x=np.stack(clips).astype(np.float32),
        y=np.array([spec.labels.index(lab) for _, lab in files], dtype=np.int64),
        names=tuple(str(f.relative_to(root)) for f, _ in files),
    )


def labelled_files(
    root: Path, labels: Sequence[str], *, suffixes: frozenset[str] = AUDIO_SUFFIXES
) -> list[tuple[Path, str]]:
    """``(file, label)`` of every audio (or ``suffixes``) file in ``root/<label>/``, sorted.

    Raises:
        FileNotFoundError: no such folder.
        ValueError: a subfolder that is not a label of the model, or no audio files.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"clean set folder not found: {root}")
    folders = sorted(d for d in root.iterdir() if d.is_dir())
    unknown = [d.name for d in folders if d.name not in labels]
    if unknown:
        raise ValueError(f"{root}: subfolders {unknown} are not labels of the model ({', '.join(labels)})")
    files = [(f, d.name) for d in folders for f in sorted(d.iterdir()) if f.suffix.lower() in suffixes]
    if not files:
        kind = "audio" if suffixes is AUDIO_SUFFIXES else "video"
        raise ValueError(f"{root}: no {kind} files in <label>/ subfolders (labels: {', '.join(labels)})")
    return files


def audio_files(root: Path) -> list[Path]:
    """Every audio file under ``root`` (any depth), sorted.

    Raises:
        FileNotFoundError: no such folder.
        ValueError: no audio files in it.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"folder not found: {root}")
    files = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise ValueError(f"{root}: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
    return files


def served_windows(path: Path, *, sample_rate_hz: int, window: int, hop: int) -> tuple[np.ndarray, int]:
    """Every window the service would judge in ``path`` (a window every ``hop`` samples, the last
    one zero-padded) and the index of the loudest one (the one a label of the whole recording
    describes best)."""
    x, _ = frame(read_audio(path, sample_rate_hz=sample_rate_hz), window=window, hop=hop)
    if len(x) == 0:
        raise ValueError(f"{path}: no audio")
    return x, int(np.argmax((x.astype(np.float64) ** 2).sum(axis=1)))
