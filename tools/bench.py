"""Benchmarks (``avsentry bench core``): speed of the defence core on 1 s windows; and
(``avsentry bench video``) the H.264 defence against IBM ART's and the video detector.

Not tests: they print figures for this machine and assert nothing. Each figure is the fastest of
``--repeat`` timed runs after one warm-up run (the run least disturbed by other load on a shared
machine), except the smoothing ratios: medians of interleaved runs. "CPU" figures are process
CPU time (all threads: codec pool, torch), the cost that decides how many streams a machine can
serve; "wall" figures are elapsed time.

Sections:

- raw inference: the recognizer alone.
- transforms: each defence's single-threaded cost per window. A segment-wise codec round trips
  its parts independently: an isolated window pays for all parts, a window of a stream at a hop
  of one part (0.5 s by default) only for its new part; the other is reused from the previous
  window (:class:`~avsentry.pipelines.detection.StreamState`).
- randomized smoothing: one window's ``n`` noisy copies, against the bare batched forward pass of
  the same copies (the ratio is the smoothing overhead: noise, counting, statistics).
- full detector, as ``avsentry serve`` runs it (torch threads 1, two batches in flight): windows/s
  and CPU per window for batches of isolated windows, and for a stream-like load (one window per
  stream per batch at a 0.5 s hop, each stream with its StreamState, as the server batches).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import threading
import time
from collections.abc import Callable

import numpy as np
import torch

from avsentry.pipelines.detection import Detector, DetectorConfig
from avsentry.pipelines.recognizers import load_recognizer, read_manifest
from avsentry.pipelines.smoothing import SmoothingConfig, noisy_copies, sample_counts
from avsentry.pipelines.transforms import (
    CodecProcessPool,
    SegmentedTransform,
    make_transform,
    transform_names,
)


def timeit(fn: Callable[[], object], *, repeat: int, device: torch.device, warm_up: bool = True) -> float:
    """Fastest wall seconds of ``fn`` over ``repeat`` runs, after one warm-up."""
    return measure(fn, repeat=repeat, device=device, warm_up=warm_up)[0]


def measure(
    fn: Callable[[], object], *, repeat: int, device: torch.device, warm_up: bool = True
) -> tuple[float, float]:
    """Fastest ``(wall, process CPU)`` seconds of ``fn`` over ``repeat`` runs, after one warm-up
    (both from the run with the least wall time)."""
    if warm_up:
        fn()
    best = (float("inf"), float("inf"))
    for _ in range(max(1, repeat)):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, (time.perf_counter() - w0, time.process_time() - c0))
    return best


def paired_medians(
    a: Callable[[], object], b: Callable[[], object], *, repeat: int, device: torch.device
) -> tuple[float, float]:
    """Median wall seconds of ``a`` and of ``b`` over ``repeat`` runs each, interleaved so that
    both see the same load on a shared machine (a ratio of medians: single fast outliers, which
    the forward pass on this CPU shows now and then, do not decide it)."""
    times_a, times_b = [], []
    a(), b()
    for _ in range(max(1, repeat)):
        times_a.append(timeit(a, repeat=1, device=device, warm_up=False))
        times_b.append(timeit(b, repeat=1, device=device, warm_up=False))
    return statistics.median(times_a), statistics.median(times_b)


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
    rate, window = spec.sample_rate_hz, spec.window_samples
    rng = np.random.default_rng(0)
    x = speechlike(rng, args.batch, window, rate)
    rec = load_recognizer(args.model, backend=args.backend, device=args.device)
    dev = rec.device
    say(
        f"# avsentry bench core: model {spec.name}, backend {args.backend}, device {dev}, "
        f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, window {spec.window_s:.2f} s; "
        f"fastest of {rep} runs"
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

    det_cfg, _ = DetectorConfig.from_card(manifest.detector)
    say(
        f"## transforms: single-threaded CPU per {spec.window_s:.2f} s window "
        f"(segment-wise codecs: isolated window = every part; stream at a one-part hop = the new part)"
    )
    few = x[: min(8, len(x))]
    for name in transform_names("audio"):
        tr = make_transform(name, sample_rate_hz=rate)
        if isinstance(tr, SegmentedTransform):
            bounds = tr.segment_bounds(window)
            parts = [w[a:b] for w in few for a, b in bounds]

            def run_parts(tr: SegmentedTransform = tr, parts: list = parts) -> None:
                for part in parts:
                    tr.apply_segment(part)

            _, cpu = measure(run_parts, repeat=rep, device=dev)
            per_part = cpu / len(parts)
            say(
                f"{name:14s} {per_part * len(bounds) * 1000:7.2f} ms isolated, "
                f"{per_part * 1000:7.2f} ms in a stream ({len(bounds)} parts of "
                f"{(bounds[0][1] - bounds[0][0]) / rate:.2f} s)"
            )
        else:
            _, cpu = measure(
                lambda tr=tr: tr.apply(few, np.random.default_rng(0)),  # type: ignore[misc]
                repeat=rep,
                device=dev,
            )
            say(f"{name:14s} {cpu / len(few) * 1000:7.2f} ms")

    threads = torch.get_num_threads()
    say(
        "## randomized smoothing, one window (n noisy copies; ratio = smoothing / bare batched forward "
        f"of the same copies; torch threads {threads}, and 1 as served)"
    )
    w = torch.from_numpy(x[:1]).to(dev)
    for representation in getattr(rec, "representations", ()):
        for n in (32, 100):
            cfg = SmoothingConfig(n=n, n0=8, representation=representation, sigma=0.25)
            gens = [torch.Generator(device=dev).manual_seed(0)]

            def smooth(cfg: SmoothingConfig = cfg, gens: list = gens) -> None:
                with torch.no_grad():
                    z = rec.encode(w, cfg.representation)
                    sample_counts(rec, z, cfg.n, cfg, gens)

            with torch.no_grad():
                noisy = noisy_copies(rec.encode(w, representation), n, 0.25, gens)

            def bare(noisy: torch.Tensor = noisy, representation: str = representation) -> None:
                with torch.no_grad():
                    rec.logits_from(noisy, representation)

            ts, tb = paired_medians(smooth, bare, repeat=4 * rep, device=dev)
            torch.set_num_threads(1)
            try:
                ts1, tb1 = paired_medians(smooth, bare, repeat=4 * rep, device=dev)
            finally:
                torch.set_num_threads(threads)
            say(
                f"{representation:11s} n={n:3d}: smoothing {ts * 1000:7.2f} ms, "
                f"bare forward {tb * 1000:7.2f} ms, ratio {ts / tb:4.2f}, "
                f"{1 / ts:7.1f} smoothed windows/s; 1 thread: {ts1 * 1000:7.2f} ms, ratio {ts1 / tb1:4.2f}"
            )

    sm = det_cfg.smoothing
    smoothing = f"smoothing n={sm.n} on {sm.representation}" if sm else "no smoothing"
    names = "/".join(t.split(":")[0] for t in det_cfg.transforms)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pool = CodecProcessPool()
    try:
        for executor, where in (
            (None, f"codecs on a pool of {os.cpu_count()} threads"),
            (pool, f"codecs in {pool.processes} worker processes, as avsentry serve runs them"),
        ):
            say(
                f"## full detector (raw + {names} + {smoothing}): {SERVED_WORKERS} batches at once, "
                f"torch threads 1, {where}"
            )
            detector = Detector(rec, det_cfg, executor=executor)
            if executor is None:
                for transform in detector.transforms:
                    say(f"  {transform!r}")
            for what, per_s, cpu_ms in _bench_detector(
                detector, args.batch, repeat=max(1, rep // 2), rng=rng
            ):
                # process CPU time does not see the worker processes: no CPU figure for them
                cpu_note = f", {cpu_ms:.1f} ms CPU per window" if executor is None else ""
                say(
                    f"{what}: {per_s:.1f} windows/s{cpu_note} -> {per_s / 2:.1f} real-time streams at a "
                    "0.5 s hop if CPU-bound"
                )
    finally:
        torch.set_num_threads(threads)
        pool.shutdown(cancel_futures=True)
    return lines


# Batches in flight at once, as `avsentry serve` runs them (its default batching workers).
SERVED_WORKERS = 2


def _bench_detector(
    detector: Detector, batch: int, *, repeat: int, rng: np.random.Generator
) -> list[tuple[str, float, float]]:
    """(what, windows/s, ms of process CPU per window) of ``detector`` for isolated windows and for
    a stream-like load, with :data:`SERVED_WORKERS` threads each analyzing its own batches."""
    spec = detector.recognizer.spec
    window, rate = spec.window_samples, spec.sample_rate_hz
    hop, steps = window // 2, 4
    dev = detector.recognizer.device
    isolated = speechlike(rng, batch * SERVED_WORKERS, window, rate)
    audio = speechlike(rng, batch * SERVED_WORKERS, window + hop * steps, rate)

    def concurrently(work: Callable[[int], object]) -> tuple[float, float]:
        pool = [threading.Thread(target=work, args=(k,)) for k in range(SERVED_WORKERS)]
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        w0, c0 = time.perf_counter(), time.process_time()
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - w0, time.process_time() - c0

    def analyze_isolated(k: int) -> None:
        rows = slice(k * batch, (k + 1) * batch)
        detector.analyze(isolated[rows], keys=list(range(k * batch, (k + 1) * batch)))

    best = min(concurrently(analyze_isolated) for _ in range(repeat + 1))
    n = batch * SERVED_WORKERS
    rows = [(f"isolated windows, {SERVED_WORKERS} batches of {batch}", n / best[0], best[1] / n * 1000)]
    # Streams 0..n-1, worker k serving streams k*batch..(k+1)*batch-1: one window of each of its
    # streams per batch, a hop apart, like the server's batcher under a steady load.
    runs = []
    for _ in range(repeat):
        states = [detector.stream_state() for _ in range(n)]

        def step(k: int, start: int, states: list = states) -> None:
            rows = slice(k * batch, (k + 1) * batch)
            detector.analyze(
                audio[rows, start : start + window],
                keys=[start] * batch,
                starts=[start] * batch,
                states=states[rows],
            )

        concurrently(functools.partial(step, start=0))  # first windows: nothing to reuse (untimed)
        total = (0.0, 0.0)
        for j in range(1, steps + 1):
            wall, cpu = concurrently(functools.partial(step, start=j * hop))
            total = (total[0] + wall, total[1] + cpu)
        runs.append(total)
    wall, cpu = min(runs)
    n_windows = n * steps
    rows.append(
        (
            f"stream-like, {n} streams at a {hop / rate:.2f} s hop, one window of each per batch",
            n_windows / wall,
            cpu / n_windows * 1000,
        )
    )
    return rows


def run_cli(args: argparse.Namespace) -> int:
    """``avsentry bench core``."""
    bench_core(args)
    return 0


# -- avsentry bench video ---------------------------------------------------------------------
def bench_video(args: argparse.Namespace) -> list[str]:
    """``avsentry bench video``: the H.264 defence against IBM ART's ``VideoCompression`` on the
    same clips, and the whole video detector's throughput as ``serve`` runs it.

    Clips are held-out procedural clips of the action model (16 frames of 112x112). ART's
    defence writes each clip to an MP4 file through an ``ffmpeg`` subprocess (libx264 at its
    default preset) and reads it back through another; ours round trips in memory through PyAV
    (libx264, ``ultrafast``, no B-frames), so the like-for-like row with ART's preset is printed
    too. Process CPU includes the ffmpeg children's time for ART.
    """
    from avsentry.pipelines.detection import Detector, DetectorConfig
    from avsentry.tools import videosynth

    lines: list[str] = []

    def say(s: str) -> None:
        print(s, flush=True)
        lines.append(s)

    model = load_recognizer(args.model, backend="torch", device=args.device)
    dev = model.device
    spec = model.spec.video
    x8, _ = videosynth.render_batch(videosynth.HELDOUT_SEED, 5000, args.clips)
    clips = x8.astype(np.float32) / 255
    say(
        f"# avsentry bench video: {args.clips} clips of {spec.frames}x{spec.height}x{spec.width} at "
        f"{spec.fps:g} fps, crf {args.crf}, device={dev}, cpus={os.cpu_count()}, torch threads "
        f"{torch.get_num_threads()}"
    )
    say(f"{'H.264 round trip':<52} {'clips/s':>9} {'ms CPU/clip':>12}")
    rows: list[tuple[str, float, float]] = []
    rng = np.random.default_rng(0)
    for preset in ("ultrafast", "medium"):
        codec = make_transform("h264", fps=spec.fps, crf=args.crf, preset=preset)
        wall, cpu = _timed(functools.partial(codec.apply, clips, rng), repeat=args.repeat)
        rows.append(
            (f"avsentry h264 (PyAV in memory, preset {preset})", args.clips / wall, cpu / args.clips * 1000)
        )
    art = _art_video_compression(args.crf)
    if isinstance(art, str):
        rows.append((f"ART VideoCompression: not run ({art})", float("nan"), float("nan")))
    else:
        wall, cpu = _timed(lambda: art(clips)[0], repeat=args.repeat, children=True)
        rows.append(
            ("ART 1.20 VideoCompression (ffmpeg subprocess, mp4)", args.clips / wall, cpu / args.clips * 1000)
        )
    for what, per_s, ms in rows:
        say(f"{what:<52} {per_s:9.1f} {ms:12.1f}")
    if not isinstance(art, str):
        ours, like, theirs = rows[0][1], rows[1][1], rows[2][1]
        say(
            f"speed-up over ART: {ours / theirs:.1f}x at our default preset, "
            f"{like / theirs:.1f}x at ART's preset"
        )

    manifest = read_manifest(args.model)
    config, _ = DetectorConfig.from_card(manifest.detector, seed=0, n=args.n)
    torch.set_num_threads(1)  # as serve runs it: the cores go to the batch workers and codecs
    pool = CodecProcessPool()  # as serve runs codecs by default: one worker process per CPU
    detector = Detector(model, config, executor=pool)
    batch = args.batch
    fed = np.concatenate([clips] * max(1, -(-batch * SERVED_WORKERS // len(clips))))[: batch * SERVED_WORKERS]

    def work(k: int) -> None:
        rows_k = slice(k * batch, (k + 1) * batch)
        detector.analyze(fed[rows_k], keys=list(range(k * batch, (k + 1) * batch)))

    def concurrently() -> float:
        pool = [threading.Thread(target=work, args=(k,)) for k in range(SERVED_WORKERS)]
        t0 = time.perf_counter()
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        return time.perf_counter() - t0

    concurrently()  # warm-up
    wall = min(concurrently() for _ in range(args.repeat))
    per_s = batch * SERVED_WORKERS / wall
    per_stream = spec.fps / spec.frames  # clips a real-time stream needs per second, one clip a hop
    pool.shutdown()
    say(
        f"full detector ({', '.join(config.transforms) or 'no transforms'}, smoothing n={args.n}): "
        f"{per_s:.1f} clips/s with {SERVED_WORKERS} workers of {batch} clips, torch threads 1 "
        f"= {per_s / per_stream:.1f} real-time {spec.fps:g} fps streams at a hop of one clip"
    )
    return lines


def _timed(fn: Callable[[], object], *, repeat: int, children: bool = False) -> tuple[float, float]:
    """Fastest ``(wall, CPU)`` of ``fn`` after a warm-up; CPU counts child processes too when
    ``children`` (ART's ffmpeg)."""
    fn()
    best = (float("inf"), float("inf"))
    for _ in range(max(1, repeat)):
        t0, c0 = time.perf_counter(), _cpu(children)
        fn()
        wall, cpu = time.perf_counter() - t0, _cpu(children) - c0
        if wall < best[0]:
            best = (wall, cpu)
    return best


def _cpu(children: bool) -> float:
    t = os.times()
    return t.user + t.system + ((t.children_user + t.children_system) if children else 0.0)


def _art_video_compression(crf: int) -> Callable[[np.ndarray], tuple[np.ndarray, object]] | str:
    """ART's ``VideoCompression`` defence, or why it cannot run here."""
    import shutil

    if shutil.which("ffmpeg") is None:
        return "no ffmpeg binary; tools/setup.sh --dev installs it"
    try:
        from art.defences.preprocessor import VideoCompression
    except ImportError:
        return "IBM ART is not installed; tools/setup.sh --dev installs it"
    try:
        import ffmpeg  # noqa: F401  # ART's VideoCompression needs ffmpeg-python
    except ImportError:
        return "ffmpeg-python is not installed; tools/setup.sh --dev installs it"
    return VideoCompression(video_format="mp4", constant_rate_factor=crf, channels_first=False)  # type: ignore[no-any-return]


def run_video_cli(args: argparse.Namespace) -> int:
    """``avsentry bench video``."""
    bench_video(args)
    return 0
