"""Make the bundled demo clips (``python -m avsentry.tools.make_demo``).

``demo_1_clean.wav``: "seven" by a held-out voice (never trained on), one 1 s window, 16 kHz.
``demo_2_adversarial.wav``: the same window after a targeted L-inf PGD attack (Madry et al.)
against the shipped model that makes the raw recognizer hear "two"; the perturbation
(eps 0.004 of full scale, roughly 40 dB below the speech) survives 16-bit PCM.
"""

from __future__ import annotations

import argparse
import wave
from pathlib import Path

import numpy as np

from avsentry.pipelines.recognizers import DifferentiableRecognizer, load_recognizer, read_manifest
from avsentry.tools import augment, synth
from avsentry.tools.attacks import PGD, Budget


def write_wav(path: Path, audio: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.round(np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())


def make(out_dir: Path, *, eps: float = 0.004, word: str = "seven", target: str = "two") -> dict:
    model = load_recognizer("digits", backend="torch", device="cpu")
    assert isinstance(model, DifferentiableRecognizer)
    labels = model.spec.labels
    utt = synth.Utterance(text=word, label=word, engine="flite", voice="rms")
    assert utt.heldout
    (clip,) = synth.synthesize([utt], progress=False)
    x = augment.place(np.random.default_rng(3), clip / np.abs(clip).max() * 0.5, speed=False)[None]
    tgt = np.array([labels.index(target)])
    res = PGD(budget=Budget(norm="linf", eps=eps), steps=100).run(
        model, x, np.array([labels.index(word)]), target=tgt, seed=0
    )
    adv = np.round(res.adversarial * 32767) / 32767  # what the 16-bit file will hold
    got = labels[int(model.predict(adv.astype(np.float32)).argmax())]
    if got != target:
        raise RuntimeError(f"attack did not survive 16-bit PCM (model hears {got!r}); raise eps")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_wav(out_dir / "demo_1_clean.wav", x[0], model.spec.sample_rate_hz)
    write_wav(out_dir / "demo_2_adversarial.wav", adv[0], model.spec.sample_rate_hz)
    return {
        "clean": labels[int(model.predict(x).argmax())],
        "adversarial": got,
        "snr_db": float(res.snr_db[0]),
        "linf": float(res.linf[0]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=read_manifest("digits").root)
    p.add_argument("--eps", type=float, default=0.004)
    args = p.parse_args()
    print(make(args.out, eps=args.eps))


if __name__ == "__main__":
    main()
