"""Shared fixtures: seeded generators, the shipped model, and real held-out speech.

Held-out speech is synthesised once per session by the project's own engines (espeak-ng, flite,
festival) with voices the shipped model never saw in training.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from avsentry.pipelines.recognizers import load_recognizer
from avsentry.tools import augment, synth

HELDOUT_ESPEAK = ("en-us", "en-gb-x-rp")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def model_torch():
    return load_recognizer("digits", backend="torch", device="cpu")


@pytest.fixture(scope="session")
def model_onnx():
    return load_recognizer("digits", backend="onnx", device="cpu")


def _heldout_variants(k: int) -> list[str]:
    return [v for v in synth.espeak_variants() if synth.is_heldout_voice("espeak", f"en+{v}")][:k]


@pytest.fixture(scope="session")
def heldout_speech(tmp_path_factory) -> dict[str, np.ndarray]:
    """1 s windows of held-out voices: every digit by 4 voices, 6 other words, 4 backgrounds.

    Returns dict with ``x`` (n, 16000) float32, ``y`` labels (indices into synth.LABELS) and
    ``clips`` (the trimmed clips, for files).
    """
    if synth.missing_programs():
        pytest.fail(f"speech engines missing: {synth.missing_programs()} (run tools/setup.sh)")
    variants = _heldout_variants(2)
    utts = []
    for d in synth.DIGITS:
        utts.append(synth.Utterance(text=d, label=d, engine="flite", voice="rms"))
        utts.append(synth.Utterance(text=d, label=d, engine="festival", voice="ked_diphone"))
        for accent, v in zip(HELDOUT_ESPEAK, variants, strict=True):
            utts.append(
                synth.Utterance(
                    text=d,
                    label=d,
                    engine="espeak",
                    voice=f"{accent}+{v}",
                    params={"speed_wpm": 160, "pitch": 50},
                )
            )
    for w in ("hello", "kitchen", "weather", "please", "garden", "yellow"):
        utts.append(synth.Utterance(text=w, label=synth.UNKNOWN, engine="flite", voice="rms"))
    assert all(u.heldout for u in utts)
    clips = synth.synthesize(utts, progress=False)
    gen = np.random.default_rng(5)
    xs = [augment.place(gen, c, speed=False) for c in clips]
    ys = [synth.LABELS.index(u.label) for u in utts]
    for _ in range(4):
        xs.append(augment.background(gen))
        ys.append(synth.LABELS.index(synth.BACKGROUND))
    return {"x": np.stack(xs).astype(np.float32), "y": np.array(ys), "clips": clips}


@pytest.fixture(scope="session")
def digit_wav(tmp_path_factory, heldout_speech) -> Path:
    """A 16 kHz mono WAV of three held-out digits with pauses: 'three', 'seven', 'one'."""
    import wave

    clips = heldout_speech["clips"]
    pause = np.zeros(8000, np.float32)
    parts = [pause]
    for d in (3, 7, 1):
        parts += [clips[4 * d], pause]
    audio = np.concatenate(parts)
    path = tmp_path_factory.mktemp("audio") / "digits.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


@pytest.fixture(scope="session")
def heldout_real_speech() -> dict[str, np.ndarray]:
    """1 s windows of real people the shipped model never heard: 20 prompts each of the held-out
    speakers of :mod:`tools.realspeech` (Mexican Spanish, Italian; 8 kHz telephone recordings),
    a random 1 s crop of each. All are other speech: ``_unknown_``."""
    from avsentry.tools import realspeech

    if realspeech.missing_speakers():
        pytest.fail(f"real recordings missing: {realspeech.missing_speakers()} (run tools/setup.sh)")
    gen = np.random.default_rng(9)
    xs, speakers = [], []
    for spk in (s for s in realspeech.SPEAKERS if s.heldout):
        files = realspeech.recordings(spk.name)
        for k in gen.choice(len(files), size=20, replace=False):
            clip = synth.trim_silence(realspeech.read(spk.name, files[int(k)]))
            xs.append(augment.place(gen, clip, speed=False))
            speakers.append(spk.name)
    return {"x": np.stack(xs).astype(np.float32), "speaker": np.array(speakers)}


@pytest.fixture(scope="session")
def write_wav():
    """``write_wav(path, audio, rate)``: ``(frames,)`` or ``(frames, channels)`` float audio as a
    16-bit PCM WAV; returns the path."""

    def write(path: Path, audio: np.ndarray, rate: int) -> Path:
        x = audio if audio.ndim == 2 else audio[:, None]
        path.parent.mkdir(parents=True, exist_ok=True)
        with wave.open(str(path), "wb") as w:
            w.setnchannels(x.shape[1])
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
        return path

    return write
