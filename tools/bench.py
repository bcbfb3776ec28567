"""Benchmarks (``avsentry bench core``): speed of the defence core on 1 s windows.

Not tests: they print figures for this machine and assert nothing. Each figure is the median
of ``--repeat`` timed runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from avsentry.pipelines.detection import Detector, DetectorConfig
from avsentry.pipelines.recognizers import load_recognizer, read_manifest
from avsentry.pipelines.smoothing import SmoothingConfig, noisy_copies, sample_counts
from avsentry.pipelines.transforms import TRANSFORM_NAMES, make_transform


def timeit(fn: Callable[[], object], *, repeat: int, device: torch.device) -> float:
    """Median wall seconds of ``fn`` over ``repeat`` runs, after one warm-up."""
    fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def speechlike(rng: np.random.Generator, batch: int, samples: int, rate: int) -> np.ndarray:
    """Amplitude-modulated harmonic signals plus noise: a codec workload like speech."""
    t = np.arange(samples) / rate
    out = np.empty((batch, samples), np.float32)
    for i in range(batch):
        f0 = rng.uniform(90, 220)
        x = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6)) / k for k in range(1, 20))
        env = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(2, 5) * t))
        out[i] = 0.3 * np.asarray(x) * env / 3 + 0.01 * rng.standard_normal(samples)
    return np.clip(out, -1, 1)


def bench_core(args: argparse.Namespace) -> list[str]:
    """Run the core benchmark; returns the printed lines."""
    lines: list[str] = []

    def say(s: str) -> None:
        print(s, flush=True)
        lines.append(s)

    rep = args.repeat
    manifest = read_manifest(args.model)
    spec = manifest.spec
    rng = np.random.default_rng(0)
    x = speechlike(rng, args.batch, spec.window_samples, spec.sample_rate_hz)
    rec = load_recognizer(args.model, backend=args.backend, device=args.device)
    dev = rec.device
    say(
        f"# avsentry bench core: model {spec.name}, backend {args.backend}, device {dev}, "
        f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, window {spec.window_s:.2f} s"
    )

    say("## raw inference")
    for backend in ("torch", "onnx"):
        if backend not in manifest.backends:
            continue
        r = (
            rec
            if backend == args.backend
            else load_recognizer(args.model, backend=backend, device=args.device)
        )
        for b in (1, args.batch):
            t = timeit(lambda r=r, b=b: r.predict(x[:b]), repeat=rep, device=dev)  # type: ignore[misc]
            say(f"{backend:5s} batch {b:3d}: {t * 1000:8.2f} ms  -> {b / t:8.1f} windows/s")

    say(f"## transforms (batch of {args.batch} one-second windows; time per audio second)")
    audio_s = args.batch * spec.window_s
    det_cfg, _ = DetectorConfig.from_card(manifest.extra.get("detector"))
    for name in TRANSFORM_NAMES:
        tr = make_transform(name, sample_rate_hz=spec.sample_rate_hz)
        t = timeit(lambda tr=tr: tr.apply(x, np.random.default_rng(0)), repeat=rep, device=dev)  # type: ignore[misc]
        say(f"{name:14s} {t / audio_s * 1000:8.2f} ms per audio second ({t * 1000:8.1f} ms per batch)")

    say("## randomized smoothing, one window (n noisy copies; ratio = smoothing / bare batched forward)")
    w = torch.from_numpy(x[:1]).to(dev)
    for representation in rec.representations:
        for n in (32, 100):
            cfg = SmoothingConfig(n=n, n0=8, representation=representation, sigma=0.25)
            gen = torch.Generator(device=dev).manual_seed(0)

            def smooth(cfg: SmoothingConfig = cfg, gen: torch.Generator = gen) -> None:
                with torch.no_grad():
                    z = rec.encode(w, cfg.representation)
                    sample_counts(rec, z, cfg.n, cfg, gen)

            with torch.no_grad():
                noisy = noisy_copies(rec.encode(w, representation), n, 0.25, gen)

            def bare(noisy: torch.Tensor = noisy, representation: str = representation) -> None:
                with torch.no_grad():
                    rec.logits_from(noisy, representation)

            ts = timeit(smooth, repeat=rep, device=dev)
            tb = timeit(bare, repeat=rep, device=dev)
            say(
                f"{representation:11s} n={n:3d}: smoothing {ts * 1000:7.2f} ms, "
                f"bare forward {tb * 1000:7.2f} ms, "
                f"ratio {ts / tb:4.2f}, {1 / ts:7.1f} smoothed windows/s"
            )

    sm = det_cfg.smoothing
    smoothing = f"smoothing n={sm.n} on {sm.representation}" if sm else "no smoothing"
    say(
        f"## full detector (raw + {'/'.join(det_cfg.transforms)} + {smoothing}), "
        f"batch of {args.batch} windows"
    )
    detector = Detector(rec, det_cfg)
    t = timeit(lambda: detector.analyze(x), repeat=max(1, rep // 2), device=dev)
    say(
        f"{t * 1000:.1f} ms per batch -> {args.batch / t:.1f} windows/s -> about {args.batch / t / 2:.1f} "
        "real-time streams at a 0.5 s hop"
    )
    return lines


def run_cli(args: argparse.Namespace) -> int:
    """``avsentry bench core``."""
    bench_core(args)
    return 0
