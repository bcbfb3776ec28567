"""Training of the default video recognizer (``avsentry train-video``).

Reproduces ``pipelines/models/actions``: :class:`~pipelines.recognizers.actionnet.ActionNet` on
fresh procedural clips (:mod:`tools.videosynth`) every step, drawn by a worker process while the
main process trains, so the network never sees a clip twice and the held-out clips (another
generator seed stream) are never trained on. Half of each batch gets Gaussian pixel noise of a
random deviation up to ``noise_sigma`` so the randomized-smoothing base classifier stays accurate
under the noise the guard adds (Cohen et al. 2019). Writes the weights, an ONNX export, and a
model card with the held-out accuracy per class.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from avsentry.pipelines.recognizers.actionnet import PIXELS, ActionNet, ActionNetConfig
from avsentry.tools import videosynth

MODEL_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class VideoTrainConfig:
    """Training hyper-parameters (stored in the model card)."""

    steps: int = 1500
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-3
    label_smoothing: float = 0.05
    noise_sigma: float = 0.15
    noise_prob: float = 0.5
    heldout_clips: int = 550
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.heldout_clips < len(videosynth.ACTIONS):
            raise ValueError("steps and batch_size must be >= 1, heldout_clips >= one per class")
        if not 0 <= self.seed < 1000:  # seed streams 1,000,003 and 2,000,003 are held out
            raise ValueError(f"seed must be in [0, 1000), got {self.seed}")


class _Batches(torch.utils.data.Dataset):
    """Batch ``i`` of the training stream: clips ``i * batch .. (i + 1) * batch - 1``."""

    def __init__(self, steps: int, batch: int, seed: int) -> None:
        self.steps, self.batch, self.seed = steps, batch, seed

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        clips, labels = videosynth.render_batch(videosynth.TRAIN_SEED + self.seed, i * self.batch, self.batch)
        order = np.random.default_rng([self.seed, i]).permutation(len(labels))
        return torch.from_numpy(clips[order]), torch.from_numpy(labels[order])


def heldout_set(count: int) -> tuple[np.ndarray, np.ndarray]:
    """The held-out clips: ``count`` clips of the :data:`~tools.videosynth.HELDOUT_SEED` stream."""
    return videosynth.render_batch(videosynth.HELDOUT_SEED, 0, count)


def to_float(clips: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``(batch, frames, h, w, 3)`` -> float32 in [0, 1], as the pipeline holds clips."""
    x = torch.as_tensor(clips)
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


@torch.no_grad()
def predict(model: ActionNet, clips: np.ndarray, *, device: str = "cpu", batch: int = 64) -> np.ndarray:
    """Top-1 labels of uint8 clips."""
    model.eval()
    out = [
        model(to_float(clips[i : i + batch]).to(device)).argmax(-1).cpu().numpy()
        for i in range(0, len(clips), batch)
    ]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def train(cfg: VideoTrainConfig, *, device: str = "cpu", quiet: bool = False) -> ActionNet:
    """Train ActionNet from scratch on fresh synthetic clips."""
    torch.manual_seed(cfg.seed)
    model = ActionNet(ActionNetConfig(n_classes=len(videosynth.ACTIONS))).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.15)
    loader = torch.utils.data.DataLoader(
        _Batches(cfg.steps, cfg.batch_size, cfg.seed), batch_size=None, num_workers=1, prefetch_factor=4
    )
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    model.train()
    bar = tqdm(loader, total=cfg.steps, desc="train-video", unit="step", disable=quiet)
    for clips, labels in bar:
        x = to_float(clips).to(device)
        y = labels.to(device)
        noisy = torch.rand(len(x), device=device, generator=gen) < cfg.noise_prob
        sigma = cfg.noise_sigma * torch.rand(len(x), device=device, generator=gen) * noisy
        x = x + sigma.view(-1, 1, 1, 1, 1) * torch.randn(x.shape, device=device, generator=gen)
        loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return model


def export_onnx(model: ActionNet, path: Path) -> None:
    """ONNX graph ``clips (batch, frames, h, w, 3) -> logits``, dynamic batch."""
    cfg = model.config
    dummy = torch.rand(2, cfg.frames, cfg.height, cfg.width, 3)
    torch.onnx.export(
        model.cpu().eval(),
        (dummy,),
        str(path),
        input_names=["clips"],
        output_names=["logits"],
        dynamic_axes={"clips": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


def card(model: ActionNet, cfg: VideoTrainConfig, accuracy: dict, seconds: float) -> dict:
    """The model card of a trained ActionNet (a manifest plus training facts)."""
    c = model.config
    return {
        "name": "actions",
        "version": MODEL_VERSION,
        "description": (
            "Synthetic action recognizer: which of ten motions a shape makes in a 16-frame clip "
            "(or _background_: nothing moves). The default video model of avsentry."
        ),
        "modality": "video",
        "architecture": (
            "ActionNet: 2x spatial average pool, frames + temporal differences, four 3x3x3 "
            "Conv3d+BN+ReLU blocks, global mean and max pool, linear"
        ),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "labels": list(videosynth.ACTIONS),
        "input": {
            "frames": c.frames,
            "height": c.height,
            "width": c.width,
            "fps": videosynth.FPS,
            "shape": ["batch", c.frames, c.height, c.width, 3],
            "dtype": "float32",
            "bounds": [0.0, 1.0],
        },
        "output": "logits",
        "backends": {"torch": {"format": "actionnet", "path": "model.pt"}, "onnx": {"path": "model.onnx"}},
        "config": c.to_dict(),
        "representations": [PIXELS],
        "limitations": [
            "Trained only on procedural clips (tools/videosynth.py): one moving shape on textured, "
            "cluttered synthetic backgrounds. It knows nothing of real footage or human actions.",
            "Inputs are RGB in [0, 1], 16 frames of 112x112 at 25 fps; other rates change the motion "
            "it sees.",
        ],
        "training": {**asdict(cfg), "seconds": round(seconds, 1), "torch": torch.__version__},
        "data": {
            "generator": "avsentry.tools.videosynth",
            "train_seed_stream": videosynth.TRAIN_SEED + cfg.seed,
            "heldout_seed_stream": videosynth.HELDOUT_SEED,
            "train_clips_seen": cfg.steps * cfg.batch_size,
        },
        "heldout_accuracy": accuracy,
        "label_roles": {"no_speech": ["_background_"]},
    }


def evaluate(model: ActionNet, clips: np.ndarray, labels: np.ndarray) -> dict:
    pred = predict(model, clips)
    per = {
        name: float((pred[labels == k] == k).mean())
        for k, name in enumerate(videosynth.ACTIONS)
        if (labels == k).any()
    }
    return {"top1": float((pred == labels).mean()), "clips": int(len(labels)), "per_class": per}


def run(out: Path, cfg: VideoTrainConfig, *, device: str = "cpu", quiet: bool = False) -> dict:
    """Train, evaluate on held-out clips, export and write the card into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = train(cfg, device=device, quiet=quiet)
    seconds = time.perf_counter() - t0
    return finish(model.cpu(), out, cfg, seconds)


def finish(model: ActionNet, out: Path, cfg: VideoTrainConfig, seconds: float) -> dict:
    """Evaluate a trained model on the held-out clips, save it, export ONNX, write the card."""
    clips, labels = heldout_set(cfg.heldout_clips)
    acc = evaluate(model, clips, labels)
    torch.save(model.state_dict(), out / "model.pt")
    export_onnx(model, out / "model.onnx")
    doc = card(model, cfg, acc, seconds)
    (out / "card.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return doc


CALIBRATION_SEED = 2_000_003  # clean clips for the threshold: neither trained on nor the held-out test


def calibrate(
    card_path: Path,
    *,
    clips: int = 2200,
    target_fpr: float = 0.01,
    backend: str = "torch",
    device: str = "cpu",
    quiet: bool = False,
) -> dict:
    """Calibrate the default video defence of a trained card in place (its ``detector`` section).

    Judges ``clips`` clean clips of the :data:`CALIBRATION_SEED` stream with the card's
    ``[defence]`` (default: H.264 and JPEG round trips, smoothing in pixel space), sets the
    threshold on every other clip for ``target_fpr`` per group (actions, ``_background_``) with
    :func:`avsentry.tools.calibrate.fit_detector`, measures the false-positive rate on the other
    half, and reports each path's accuracy.
    """
    from avsentry.pipelines.detection import Detector, DetectorConfig
    from avsentry.pipelines.recognizers import load_recognizer, read_manifest
    from avsentry.tools.calibrate import DEFAULT_CONFIDENCE, fit_detector

    manifest = read_manifest(card_path)
    cfg, _ = DetectorConfig.from_card(manifest.detector)
    detector = Detector(load_recognizer(card_path, backend=backend, device=device), cfg)
    verdicts: list = []
    labels = []
    for start in tqdm(range(0, clips, 64), desc="calibration clips", unit="batch", disable=quiet):
        x8, y8 = videosynth.render_batch(CALIBRATION_SEED, start, min(64, clips - start))  # a batch at a time
        verdicts += detector.analyze(x8.astype(np.float32) / 255.0, keys=range(start, start + len(y8)))
        labels.append(y8)
    y = np.concatenate(labels)
    background = videosynth.ACTIONS.index("_background_")
    group = np.where(y == background, "background", "actions")
    data = {
        "calibration": np.arange(len(y)) % 2 == 0,
        "source": np.full(len(y), "videosynth"),
        "condition": np.full(len(y), "clean"),
    }
    calibrated, section, _ = fit_detector(
        verdicts,
        cfg,
        data,
        group,
        target_fpr=target_fpr,
        confidence=DEFAULT_CONFIDENCE,
        scoring="max",
        method=f"{clips} clean clips of videosynth stream {CALIBRATION_SEED}, every other one for the "
        "threshold (per group: actions, background), the rest for the measured FPR",
    )
    paths = {"raw": np.array([v.raw_label for v in verdicts])}
    for j, out in enumerate(verdicts[0].defended):
        paths[out.name] = np.array([v.defended[j].label for v in verdicts])
    section["path_accuracy"] = {name: float((pred == y).mean()) for name, pred in paths.items()}
    doc = json.loads(card_path.read_text(encoding="utf-8"))
    doc["detector"] = section
    card_path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return section
