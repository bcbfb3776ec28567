"""Training of the default spoken-digit recognizer (``avsentry train``).

Reproduces ``pipelines/models/digits``: synthesises the corpus (:mod:`tools.synth`) if absent,
trains :class:`~pipelines.recognizers.digitnet.DigitNet` with class- and engine-balanced batches
and heavy augmentation (:mod:`tools.augment`, SpecAugment, and Gaussian noise on the normalized
log-mel features so the randomized-smoothing base classifier is accurate under noise, as in Cohen
et al. 2019), evaluates on held-out voices and writes weights, an ONNX export and a model card.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipelines.recognizers.digitnet import DigitNet, DigitNetConfig
from tools import augment, synth

WINDOW = synth.SAMPLE_RATE_HZ


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainConfig:
    """Training hyper-parameters (stored in the model card)."""

    steps: int = 5000
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-3
    label_smoothing: float = 0.05
    feature_noise_sigma: float = 0.25
    feature_noise_prob: float = 0.5
    unknown_weight: float = 1.0
    freq_warp: float = 0.15
    tilt_db: float = 6.0
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError("steps must be >= 1 and batch_size >= 2")


class BatchSampler:
    """Class-balanced, engine-balanced windows from the training clips, augmented."""

    def __init__(self, clips: synth.ClipSet, *, seed: int, unknown_weight: float = 2.0) -> None:
        self.clips = clips
        self.rng = np.random.default_rng(seed)
        self.by_class: dict[str, dict[str, np.ndarray]] = {}
        for label in synth.LABELS:
            if label == synth.BACKGROUND:
                continue
            m = clips.label == label
            engines = {str(e): np.flatnonzero(m & (clips.engine == e)) for e in np.unique(clips.engine[m])}
            if engines:
                self.by_class[label] = engines
        missing = [lb for lb in synth.LABELS if lb != synth.BACKGROUND and lb not in self.by_class]
        if missing:
            raise ValueError(f"training clips lack classes: {missing}")
        w = np.array([unknown_weight if lb == synth.UNKNOWN else 1.0 for lb in synth.LABELS])
        self.class_p = w / w.sum()

    def windows(self, n: int, *, degrade: bool = True) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        ys = rng.choice(len(synth.LABELS), size=n, p=self.class_p)
        xs = np.zeros((n, WINDOW), dtype=np.float32)
        for i, y in enumerate(ys):
            label = synth.LABELS[y]
            if label == synth.BACKGROUND:
                xs[i] = augment.background(rng)
                continue
            engines = self.by_class[label]
            pool = engines[list(engines)[rng.integers(len(engines))]]
            xs[i] = augment.place(rng, self.clips.clip(int(rng.choice(pool))))
        if degrade:
            speech = ys != synth.LABELS.index(synth.BACKGROUND)
            xs[speech] = augment.degrade(rng, xs[speech])
        return xs, ys.astype(np.int64)

    def stream(
        self, batch_size: int, *, prefetch: int = 4
    ) -> Generator[tuple[np.ndarray, np.ndarray], None, None]:
        """Batches prepared in a background thread."""
        q: queue.Queue = queue.Queue(maxsize=prefetch)
        stop = threading.Event()

        def work() -> None:
            while not stop.is_set():
                q.put(self.windows(batch_size))

        t = threading.Thread(target=work, daemon=True)
        t.start()
        try:
            while True:
                yield q.get()
        finally:
            stop.set()
            while not q.empty():
                q.get_nowait()


def heldout_windows(clips: synth.ClipSet, *, seed: int = 1, per_clip: int = 1) -> dict[str, np.ndarray]:
    """Deterministic evaluation windows from held-out voices: each clip at a random position.

    Phrases (longer than a window) give a random 1 s crop. Adds an equal share of procedural
    background windows. No channel degradation: this is the clean held-out set.
    """
    rng = np.random.default_rng(seed)
    held = np.flatnonzero(clips.heldout)
    xs, ys, engines, voices = [], [], [], []
    for i in held:
        for _ in range(per_clip):
            xs.append(augment.place(rng, clips.clip(int(i)), speed=False))
            ys.append(synth.LABELS.index(str(clips.label[i])))
            engines.append(str(clips.engine[i]))
            voices.append(str(clips.voice[i]))
    n_bg = max(1, len(xs) // 12)
    for _ in range(n_bg):
        xs.append(augment.background(rng))
        ys.append(synth.LABELS.index(synth.BACKGROUND))
        engines.append("procedural")
        voices.append("background")
    return {
        "x": np.stack(xs).astype(np.float32),
        "y": np.array(ys, dtype=np.int64),
        "engine": np.array(engines),
        "voice": np.array(voices),
    }


@torch.no_grad()
def predict_labels(model: DigitNet, x: np.ndarray, *, device: str = "cpu", batch: int = 256) -> np.ndarray:
    model.eval()
    out = []
    for s in range(0, len(x), batch):
        out.append(model(torch.from_numpy(x[s : s + batch]).to(device)).argmax(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def accuracy_report(pred: np.ndarray, data: dict[str, np.ndarray]) -> dict:
    """Overall, per-engine and per-class top-1 accuracy."""
    y = data["y"]
    digit = y < 10
    rep: dict = {
        "overall": float(np.mean(pred == y)),
        "digits": float(np.mean(pred[digit] == y[digit])) if digit.any() else None,
        "n_windows": int(len(y)),
        "per_engine": {},
        "per_class": {},
    }
    for e in np.unique(data["engine"]):
        m = data["engine"] == e
        rep["per_engine"][str(e)] = {"accuracy": float(np.mean(pred[m] == y[m])), "n": int(m.sum())}
    for k, label in enumerate(synth.LABELS):
        m = y == k
        if m.any():
            rep["per_class"][label] = {"accuracy": float(np.mean(pred[m] == k)), "n": int(m.sum())}
    return rep


def fit_normalisation(model: DigitNet, sampler: BatchSampler, n: int = 2048) -> None:
    """Set per-mel-bin mean/std of log energies from ``n`` augmented training windows."""
    x, _ = sampler.windows(n)
    with torch.no_grad():
        model.feat_mean.zero_()
        model.feat_std.fill_(1.0)
        f = torch.cat([model.logmel(torch.from_numpy(x[s : s + 256])) for s in range(0, n, 256)])
        model.feat_mean.copy_(f.mean(dim=(0, 2)).unsqueeze(1))
        model.feat_std.copy_(f.std(dim=(0, 2)).unsqueeze(1).clamp_min(1e-3))


def freq_warp(mag: torch.Tensor, max_warp: float, gen: torch.Generator) -> torch.Tensor:
    """Vocal tract length perturbation (Jaitly & Hinton, 2013): stretch the frequency axis of a
    magnitude spectrogram ``(batch, freqs, frames)`` by a random factor in ``1 +- max_warp``."""
    b, n_freq, _ = mag.shape
    alpha = 1 + (torch.rand(b, 1, generator=gen) * 2 - 1).to(mag.device) * max_warp
    pos = (torch.arange(n_freq, device=mag.device)[None, :] / alpha).clamp(max=n_freq - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n_freq - 1)
    w = (pos - lo)[:, :, None]
    take = lambda idx: mag.gather(1, idx[:, :, None].expand(-1, -1, mag.shape[2]))  # noqa: E731
    return take(lo) * (1 - w) + take(hi) * w


def spectral_tilt(mag: torch.Tensor, max_db: float, gen: torch.Generator) -> torch.Tensor:
    """Random smooth equalisation (timbre / channel colour): a gain curve of three random
    cosines over the frequency axis, up to ``max_db`` dB, per example."""
    b, n_freq, _ = mag.shape
    f = torch.linspace(0, torch.pi, n_freq)
    k = torch.arange(1, 4, dtype=torch.float32)
    amp = (torch.rand(b, 3, generator=gen) * 2 - 1) * max_db / 3
    phase = torch.rand(b, 3, generator=gen) * 2 * torch.pi
    db = (amp[:, :, None] * torch.cos(k[None, :, None] * f[None, None, :] + phase[:, :, None])).sum(1)
    return mag * (10 ** (db / 20)).to(mag.device)[:, :, None]


def spec_augment(f: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One frequency mask (<= 6 bins) and one time mask (<= 10 frames) per example."""
    b, n_mels, frames = f.shape
    dev = f.device
    fw = torch.randint(0, 7, (b, 1), generator=gen).to(dev)
    f0 = (torch.rand(b, 1, generator=gen).to(dev) * (n_mels - fw)).long()
    tw = torch.randint(0, 11, (b, 1), generator=gen).to(dev)
    t0 = (torch.rand(b, 1, generator=gen).to(dev) * (frames - tw)).long()
    mi = torch.arange(n_mels, device=dev)[None, :]
    ti = torch.arange(frames, device=dev)[None, :]
    fmask = (mi >= f0) & (mi < f0 + fw)
    tmask = (ti >= t0) & (ti < t0 + tw)
    return f.masked_fill(fmask[:, :, None] | tmask[:, None, :], 0.0)


def train(
    clips: synth.ClipSet,
    cfg: TrainConfig,
    *,
    model_config: DigitNetConfig | None = None,
    progress: bool = True,
) -> tuple[DigitNet, dict]:
    """Train on the non-held-out clips. Returns the model (eval mode, CPU) and a log dict."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_clips = clips.select(~clips.heldout)
    sampler = BatchSampler(train_clips, seed=cfg.seed, unknown_weight=cfg.unknown_weight)
    model = DigitNet(model_config or DigitNetConfig(n_classes=len(synth.LABELS)))
    fit_normalisation(model, sampler)
    model.to(cfg.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.15)
    losses: list[float] = []
    t0 = time.perf_counter()
    batches = sampler.stream(cfg.batch_size)
    with tqdm(total=cfg.steps, desc="training", unit="step", disable=not progress) as bar:
        for step in range(cfg.steps):
            xb, yb = next(batches)
            x = torch.from_numpy(xb).to(cfg.device)
            y = torch.from_numpy(yb).to(cfg.device)
            mag = spectral_tilt(freq_warp(model.magnitude(x), cfg.freq_warp, gen), cfg.tilt_db, gen)
            f = spec_augment(model.logmel_from_magnitude(mag), gen)
            noisy = torch.rand(len(f), 1, 1, generator=gen).to(cfg.device) < cfg.feature_noise_prob
            noise = torch.randn(f.shape, generator=gen).to(cfg.device) * cfg.feature_noise_sigma
            f = torch.where(noisy, f + noise, f)
            loss = F.cross_entropy(model.classify(f), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            if step % 25 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
            bar.update(1)
    batches.close()
    model.cpu().eval()
    return model, {"seconds": time.perf_counter() - t0, "final_loss": float(np.mean(losses[-100:]))}


def export_onnx(model: DigitNet, path: Path) -> None:
    """Export waveform -> logits with a dynamic batch axis, weights embedded in the file."""
    example = torch.zeros(2, WINDOW)
    model.eval()
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["waveform"],
        output_names=["logits"],
        dynamic_shapes={"wave": {0: torch.export.Dim("batch", min=1, max=4096)}},
        dynamo=True,
        external_data=False,
        verbose=False,
    )


def write_model(model: DigitNet, out_dir: Path, card: dict) -> None:
    """Write ``model.pt`` (state dict), ``model.onnx`` and ``card.json`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_dir / "model.pt")
    export_onnx(model, out_dir / "model.onnx")
    (out_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


LIMITATIONS = (
    "A demonstration model: trained and evaluated on synthetic speech only (espeak-ng, flite, "
    "festival); accuracy on recorded human speech is not measured. Held-out figures are on voices "
    "never trained on, but those voices come from the same engines. The model itself is not "
    "adversarially robust: untargeted L-inf PGD 50 dB below the speech peak changes its answer "
    "almost always; the avsentry detector, not the model, is the defence."
)


def base_card(model: DigitNet, cfg: TrainConfig, clips: synth.ClipSet) -> dict:
    """Model card fields known after training (accuracy and calibration are added later)."""
    c = model.config
    return {
        "name": "digits",
        "version": 1,
        "description": "Spoken digits zero..nine plus _background_ and _unknown_ (other speech), "
        "trained on speech synthesised offline by espeak-ng, flite and festival.",
        "modality": "audio",
        "architecture": "DigitNet (log-mel front end + temporal-conv ResNet)",
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "labels": list(synth.LABELS),
        "sample_rate_hz": c.sample_rate_hz,
        "window_samples": WINDOW,
        "input": {"name": "waveform", "shape": ["batch", WINDOW], "dtype": "float32"},
        "input_bounds": [-1.0, 1.0],
        "output": "logits",
        "backends": {
            "torch": {"format": "digitnet", "path": "model.pt"},
            "onnx": {"path": "model.onnx"},
        },
        "config": c.to_dict(),
        "representations": ["waveform", "spectrogram", "logmel"],
        "limitations": LIMITATIONS,
        "training": asdict(cfg),
        "data": {
            "recipe": "tools/synth.py plan(): digits by 8 espeak-ng English accents x 101 variants "
            "(random speed 120-220 wpm, pitch 15-85), flite kal/kal16/awb/rms/slt and festival "
            "kal_diphone/ked_diphone/cmu_us_slt_arctic_hts (16 renditions each, duration stretch "
            "0.8-1.3); _unknown_: 224 other words and 50 everyday phrases (1 s crops), none "
            "sounding like a digit; "
            "_background_: procedural silence/noise/hum/tones/clicks.",
            "augmentation": "speed x0.85-1.15, gain, reverb (p=0.3), noise 5-30 dB SNR (p=0.8), "
            "telephone band-pass 300-3400 Hz with mu-law (p=0.15), low-pass 2-7 kHz (p=0.2), "
            "vocal-tract-length warp +-15 %, random spectral tilt +-6 dB, SpecAugment, "
            "Gaussian noise on normalized log-mel "
            "(sigma 0.25, p=0.5)",
            "heldout_voices": "flite rms, festival ked_diphone, espeak-ng variants with "
            "sha256(variant) % 7 == 0 under all accents",
            "clips": {s: int(np.sum(clips.heldout == h)) for s, h in (("train", False), ("heldout", True))},
        },
    }


def run(
    *,
    data: Path,
    out_dir: Path,
    cfg: TrainConfig,
    synth_scale: float = 1.0,
    progress: bool = True,
) -> dict:
    """The whole recipe: synthesise if needed, train, evaluate on held-out voices, export.

    Returns the model card written to ``out_dir/card.json``.
    """
    if not data.exists():
        missing = synth.missing_programs()
        if missing:
            raise RuntimeError(
                f"cannot synthesise training data: {', '.join(missing)} not installed (run tools/setup.sh)"
            )
        print(f"synthesising the corpus into {data} ...")
        synth.build(data, seed=cfg.seed, scale=synth_scale, progress=progress)
    clips = synth.load(data)
    for line in synth.summarize(clips):
        print(line)
    model, log = train(clips, cfg, progress=progress)
    held = heldout_windows(clips)
    report = accuracy_report(predict_labels(model, held["x"]), held)
    print(
        f"held-out top-1: {report['overall']:.4f} (digits {report['digits']:.4f}) over "
        f"{report['n_windows']} windows; per engine: "
        + ", ".join(f"{e} {v['accuracy']:.3f}" for e, v in report["per_engine"].items())
    )
    card = base_card(model, cfg, clips)
    card["heldout_accuracy"] = report
    card["training"]["seconds"] = round(log["seconds"], 1)
    card["training"]["final_loss"] = round(log["final_loss"], 4)
    write_model(model, out_dir, card)
    return card


def run_cli(args) -> int:  # noqa: ANN001 - argparse namespace from stream.cli
    """``avsentry train``: the whole recipe, then detector calibration into the card."""
    from pipelines.detection import DetectorConfig
    from pipelines.recognizers.base import resolve_device
    from tools.calibrate import calibrate

    device = str(resolve_device(args.device))
    given = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr}
    cfg = TrainConfig(seed=args.seed, device=device, **{k: v for k, v in given.items() if v is not None})
    card = run(
        data=args.data,
        out_dir=args.out,
        cfg=cfg,
        synth_scale=args.synth_scale,
        progress=not args.quiet,
    )
    if not args.no_calibrate:
        card = calibrate(
            args.out / "card.json",
            args.data,
            DetectorConfig(),
            target_fpr=0.01,
            device=device,
            progress=not args.quiet,
        )
        d = card["detector"]
        print(
            f"detector threshold {d['threshold']:.4f} (target FPR 1%), measured FPR "
            f"{d['measured_fpr']:.2%} on {d['test']['n']} held-out windows"
        )
    print(
        f"wrote {args.out}/model.pt, model.onnx, card.json "
        f"(held-out top-1 {card['heldout_accuracy']['overall']:.4f})"
    )
    return 0
