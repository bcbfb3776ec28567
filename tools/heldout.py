"""The clean held-out evaluation set: windows from voices never trained on.

Training (held-out accuracy in the model card) and calibration (threshold and measured
false-positive rate) both read it, so it lives here rather than in either.
"""

from __future__ import annotations

import numpy as np

from avsentry.tools import augment, synth
from avsentry.tools.speecheval import source_of


def heldout_windows(clips: synth.ClipSet, *, seed: int = 1, per_clip: int = 1) -> dict[str, np.ndarray]:
    """Deterministic evaluation windows from held-out voices: each clip at a random position.

    Phrases and real recordings (longer than a window) give a random 1 s crop. Adds procedural
    background windows (one for every twelve clips). No channel degradation: this is the clean
    held-out set. ``source``: the engine, and for real recordings the speaker
    (:func:`tools.speecheval.source_of`).
    """
    rng = np.random.default_rng(seed)
    held = np.flatnonzero(clips.heldout)
    xs, ys, engines, voices, texts, sources = [], [], [], [], [], []
    for i in held:
        for _ in range(per_clip):
            xs.append(augment.place(rng, clips.clip(int(i)), speed=False))
            ys.append(synth.LABELS.index(str(clips.label[i])))
            engines.append(str(clips.engine[i]))
            voices.append(str(clips.voice[i]))
            texts.append(str(clips.text[i]))
            sources.append(source_of(str(clips.engine[i]), str(clips.voice[i])))
    n_bg = max(1, len(xs) // 12)
    for _ in range(n_bg):
        xs.append(augment.background(rng))
        ys.append(synth.LABELS.index(synth.BACKGROUND))
        engines.append("procedural")
        voices.append("background")
        texts.append("")
        sources.append("procedural")
    return {
        "x": np.stack(xs).astype(np.float32),
        "y": np.array(ys, dtype=np.int64),
        "engine": np.array(engines),
        "voice": np.array(voices),
        "text": np.array(texts),
        "source": np.array(sources),
    }
