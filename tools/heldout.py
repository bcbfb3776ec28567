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


def heldout_speech_set(
    *, per_digit: int = 20, unknown: int = 0, seed: int = 1, progress: bool = True
) -> dict[str, np.ndarray]:
    """A labelled clean set synthesised afresh from held-out voices only (no corpus needed).

    Each digit is spoken by ``per_digit`` voices: flite ``rms``, festival ``ked_diphone``, then
    held-out espeak-ng variants across its English accents at drawn speeds and pitches;
    ``unknown`` words of the bundled word list (``_unknown_``) by held-out voices too. Each clip
    sits at a random position of a 1 s window. Deterministic for a seed.

    Returns:
        ``x`` ``(n, 16000)`` float32, ``y`` label indices, ``engine``, ``voice``, ``text``,
        ``source``.
    """
    rng = np.random.default_rng(seed)
    variants = [v for v in synth.espeak_variants() if synth.is_heldout_voice("espeak", f"en+{v}")]
    fixed = [("flite", "rms"), ("festival", "ked_diphone")]

    def voices(k: int) -> list[tuple[str, str, dict[str, float]]]:
        out: list[tuple[str, str, dict[str, float]]] = [(e, v, {}) for e, v in fixed[:k]]
        while len(out) < k:
            accent = synth.ESPEAK_ACCENTS[int(rng.integers(len(synth.ESPEAK_ACCENTS)))]
            variant = variants[int(rng.integers(len(variants)))]
            params = {"speed_wpm": float(rng.integers(130, 200)), "pitch": float(rng.integers(30, 70))}
            out.append(("espeak", f"{accent}+{variant}", params))
        return out

    utts = [
        synth.Utterance(text=d, label=d, engine=e, voice=v, params=p)
        for d in synth.DIGITS
        for e, v, p in voices(per_digit)
    ]
    words = synth.read_word_list("unknown_words.txt")
    for e, v, p in voices(unknown):
        w = words[int(rng.integers(len(words)))]
        utts.append(synth.Utterance(text=w, label=synth.UNKNOWN, engine=e, voice=v, params=p))
    assert all(u.heldout for u in utts)
    clips = synth.synthesize(utts, progress=progress)
    xs = [augment.place(rng, synth.trim_silence(c), speed=False) for c in clips]
    return {
        "x": np.stack(xs).astype(np.float32),
        "y": np.array([synth.LABELS.index(u.label) for u in utts], dtype=np.int64),
        "engine": np.array([u.engine for u in utts]),
        "voice": np.array([u.voice for u in utts]),
        "text": np.array([u.text for u in utts]),
        "source": np.array([source_of(u.engine, u.voice) for u in utts]),
    }
