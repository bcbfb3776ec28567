"""A keyword spotter of your own in a minute: the model of the README's "Guard your own model".

``python -m avsentry.tools.tutorial DIR`` makes everything the tutorial starts from, as a user
with their own model would have it:

- ``DIR/recordings/train``: "yes", "no", other words and silence by espeak-ng voices (installed by
  ``tools/setup.sh``), to train on;
- ``DIR/recordings/clean/<label>/*.wav``: the same words by other voices, speeds and pitches (the
  clean recordings ``avsentry calibrate --clean`` takes), and ``DIR/recordings/other/*.wav``:
  everyday phrases, speech the model is not for (``--other``);
- ``DIR/kws.pt`` (TorchScript) and ``DIR/kws.onnx``: a small log-mel CNN trained on the first set
  in a few seconds on a CPU, exported the way any PyTorch user exports;
- ``DIR/kws.toml``: its manifest.

Nothing here is avsentry-specific except the manifest: the model is a plain ``nn.Module``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torchaudio
from scipy.io import wavfile
from torch import nn

RATE = 16000
WINDOW = RATE
LABELS = ("yes", "no", "_unknown_", "_silence_")
OTHER_WORDS = ("apple", "table", "river", "window", "yellow", "morning", "paper", "garden", "music", "happy")
PHRASES = (
    "the weather is lovely today",
    "please pass me the salt",
    "I will call you back tomorrow",
    "where did you leave the keys",
    "the train leaves at noon",
    "turn left at the next corner",
)
TRAIN_VOICES = ("en-us", "en", "en-us+m3", "en+f2", "en-us+f4", "en+m7")
CLEAN_VOICES = ("en-gb-x-rp", "en-us+f3", "en+m4", "en-029")

MANIFEST = """\
name = "my-kws"
labels = ["yes", "no", "_unknown_", "_silence_"]
output = "logits"

[input]
sample_rate_hz = 16000
window_samples = 16000
shape = ["batch", 16000]

[backends.torch]
format = "torchscript"
path = "kws.pt"

[backends.onnx]
path = "kws.onnx"
"""


class KeywordNet(nn.Module):
    """Waveform (batch, 16000) -> logits (batch, 4): log-mel, three conv blocks, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(RATE, n_fft=400, hop_length=160, n_mels=32)
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Linear(32, len(LABELS))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        feats = torch.log(self.mel(wave) + 1e-6).unsqueeze(1)
        return self.head(self.net(feats).mean(dim=(2, 3)))


def espeak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    x = np.frombuffer(wav[44:], dtype="<i2").astype(np.float32) / 32768.0  # espeak-ng: 22050 Hz PCM
    return torchaudio.functional.resample(torch.from_numpy(x.copy()), 22050, RATE).numpy()


def clip(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One second: the word at a random place, a random level, a little noise."""
    out = np.zeros(WINDOW, np.float32)
    x = x[:WINDOW]
    start = int(rng.integers(0, WINDOW - len(x) + 1))
    out[start : start + len(x)] = x * rng.uniform(0.3, 1.0) / max(1e-3, float(np.abs(x).max()))
    return out + rng.normal(0, rng.uniform(1e-4, 3e-3), WINDOW).astype(np.float32)


def make_recordings(root: Path, voices: tuple[str, ...], per_voice: int, seed: int) -> list[tuple[Path, str]]:
    rng = np.random.default_rng(seed)
    files = []
    for label in LABELS:
        (root / label).mkdir(parents=True, exist_ok=True)
    k = 0
    for voice in voices:
        for _ in range(per_voice):
            speed, pitch = int(rng.integers(120, 200)), int(rng.integers(20, 80))
            items = [("yes", "yes"), ("no", "no"), (str(rng.choice(OTHER_WORDS)), "_unknown_")]
            for text, label in items:
                x = clip(espeak(text, voice, speed, pitch), rng)
                files.append((root / label / f"{k:04d}.wav", label))
                wavfile.write(files[-1][0], RATE, x)
                k += 1
            silence = rng.normal(0, rng.uniform(1e-4, 1e-2), WINDOW).astype(np.float32)
            files.append((root / "_silence_" / f"{k:04d}.wav", "_silence_"))
            wavfile.write(files[-1][0], RATE, silence)
            k += 1
    return files


def train(files: list[tuple[Path, str]], *, steps: int, seed: int) -> KeywordNet:
    torch.manual_seed(seed)
    x = torch.from_numpy(np.stack([wavfile.read(f)[1] for f, _ in files]).astype(np.float32))
    y = torch.tensor([LABELS.index(lab) for _, lab in files])
    model = KeywordNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (32,), generator=g)
        shift = int(torch.randint(-2000, 2000, (1,), generator=g))
        xb = torch.roll(x[idx], shift, dims=1) * torch.empty(32, 1).uniform_(0.5, 1.5, generator=g)
        loss = nn.functional.cross_entropy(model(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def make(out: Path, *, steps: int = 300, seed: int = 0) -> Path:
    """Write the tutorial's recordings, model and manifest under ``out``; returns the manifest."""
    rec = out / "recordings"
    files = make_recordings(rec / "train", TRAIN_VOICES, per_voice=6, seed=seed)
    make_recordings(rec / "clean", CLEAN_VOICES, per_voice=4, seed=seed + 1)
    (rec / "other").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 2)
    for k, text in enumerate(PHRASES):
        x = espeak(text, CLEAN_VOICES[k % len(CLEAN_VOICES)], int(rng.integers(130, 180)), 50)
        wavfile.write(rec / "other" / f"{k:02d}.wav", RATE, 0.5 * x / max(1e-3, float(np.abs(x).max())))
    model = train(files, steps=steps, seed=seed)
    # the two exports a PyTorch user makes: TorchScript and ONNX (batch axis dynamic)
    torch.jit.script(model).save(str(out / "kws.pt"))
    torch.onnx.export(
        model,
        (torch.zeros(2, WINDOW),),
        str(out / "kws.onnx"),
        input_names=["audio"],
        output_names=["logits"],
        dynamic_shapes={"wave": {0: torch.export.Dim("batch", min=1, max=4096)}},
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    (out / "kws.toml").write_text(MANIFEST, encoding="utf-8")
    return out / "kws.toml"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m avsentry.tools.tutorial",
        description="Make the README tutorial's keyword spotter: recordings by espeak-ng voices, a "
        "small model trained on them and exported to TorchScript and ONNX, and its manifest.",
    )
    p.add_argument("out", type=Path, help="folder to write into (created)")
    p.add_argument("--steps", type=int, default=300, help="training steps (default: 300)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = make(args.out, steps=args.steps, seed=args.seed)
    print(
        f"wrote {manifest}, {args.out}/kws.pt, {args.out}/kws.onnx and {args.out}/recordings/",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
