"""``avsentry bench stream``: verdict latency and capacity under concurrent real-time streams; and
``avsentry bench replica``: windows/s of one inference-pool replica.

Starts ``avsentry serve`` in a subprocess (its own interpreter, as in production; or uses the
server at ``--target``), then for each stream count N runs N client streams at once (their starts
spread over one hop, or all in step with ``--sync``), each sending ``--seconds`` of speech (the
bundled clean clip repeated at random gains and offsets over a microphone-like noise floor, so no
two windows are alike) in 100 ms chunks paced at real time. For every verdict it records the
latency from the moment the chunk completing its window was sent to the moment the verdict
arrived. Prints p50/p95/p99 latency, the real-time factor (wall time from the first chunk to the
last verdict over audio duration; 1.0 is the floor for paced streams), windows lost (expected -
received; must be 0), streams refused by admission control (RESOURCE_EXHAUSTED before any
verdict), and the largest N that stayed within the p99 budget with nothing lost or refused.
Not a test: nothing is asserted.

With ``--video`` the server guards the embedded action model and each stream sends ``--seconds``
of 112x112 video at 25 fps (a textured square moving over a gradient with sensor noise, different
per stream) as raw RGB frames paced at real time, one verdict per 16-frame clip; latency runs from
the clip's last frame being sent.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import grpc
import numpy as np
import torch

from avsentry.pipelines.audio_io import read_audio
from avsentry.pipelines.detection import DetectorConfig, changed_smoothing
from avsentry.pipelines.windowing import frame
from avsentry.stream.client import GuardClient
from avsentry.stream.inference import Batch, InferenceWorker
from avsentry.stream.registry import synthetic_stream

CHUNK_MS = 100
RATE = 16_000
VIDEO_MODEL = "actions"


@dataclass
class StreamResult:
    latencies_ms: list[float] = field(default_factory=list)
    server_latencies_ms: list[float] = field(default_factory=list)
    received: int = 0
    expected: int = 0
    wall_s: float = 0.0
    error: str | None = None
    refused: bool = False  # RESOURCE_EXHAUSTED before any verdict: admission control said no


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _audio(seconds: float, *, seed: int, noise_floor_db: float | None) -> np.ndarray:
    """One stream's speech: the bundled clean clip repeated at random gains (-6 to 0 dB) and
    offsets, over white noise ``noise_floor_db`` dBFS (RMS) as a microphone has. Every stream and
    every repetition differs: exact repeats (or digital silence) would let the detector reuse
    codec work it cannot reuse on real audio, and flatter the figures (by about 2x)."""
    from avsentry.stream.commands import demo_clips

    clip = read_audio(demo_clips()[0], sample_rate_hz=RATE)
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    out = np.zeros(n + len(clip), np.float32)
    pos = int(rng.integers(0, len(clip) // 2))
    while pos < n:
        out[pos : pos + len(clip)] += clip * np.float32(10 ** (rng.uniform(-6, 0) / 20))
        pos += len(clip) + int(rng.integers(0, RATE // 4))
    out = out[:n]
    if noise_floor_db is not None:
        out += np.float32(10 ** (noise_floor_db / 20)) * rng.standard_normal(n).astype(np.float32)
    return np.clip(out, -1, 1)


def _one_stream(
    client: GuardClient, audio: np.ndarray, cfg: dict, result: StreamResult, start_at: float
) -> None:
    chunk = RATE * CHUNK_MS // 1000
    sent_at: list[float] = []

    def chunks():
        while time.perf_counter() < start_at:
            time.sleep(0.001)
        t0 = time.perf_counter()
        for k, s in enumerate(range(0, len(audio), chunk)):
            delay = t0 + k * CHUNK_MS / 1000 - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent_at.append(time.perf_counter())
            yield audio[s : s + chunk, None]

    result.expected = len(frame(audio, window=RATE, hop=RATE // 2)[1])
    try:
        for v in client.stream(chunks(), sample_rate_hz=RATE, **cfg):
            now = time.perf_counter()
            last_chunk = min(len(sent_at) - 1, max(0, (min(v.end_sample, len(audio)) - 1) // chunk))
            result.latencies_ms.append((now - sent_at[last_chunk]) * 1000)
            result.server_latencies_ms.append(v.latency_ms)
            result.received += 1
        result.wall_s = time.perf_counter() - start_at
    except grpc.RpcError as e:  # counted as lost windows and reported
        result.error = f"{e.code().name}: {e.details()}"
        result.refused = e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and result.received == 0
    except Exception as e:  # noqa: BLE001 - counted as lost windows and reported
        result.error = f"{type(e).__name__}: {e}"


def _video(seconds: float, *, seed: int) -> np.ndarray:
    """One stream's frames: ``seconds`` of the action model's size and rate, uint8 RGB."""
    from avsentry.pipelines.recognizers import read_manifest
    from avsentry.stream.registry import synthetic_stream

    spec = read_manifest(VIDEO_MODEL).spec
    frames = synthetic_stream(spec, round(seconds * spec.video.fps), np.random.default_rng(seed))
    return np.rint(frames * 255).astype(np.uint8)


def _one_video_stream(
    client: GuardClient, frames: np.ndarray, cfg: dict, result: StreamResult, start_at: float
) -> None:
    fps, clip = 25.0, 16
    sent_at: list[float] = []

    def paced():
        while time.perf_counter() < start_at:
            time.sleep(0.001)
        t0 = time.perf_counter()
        for k, frame_k in enumerate(frames):
            delay = t0 + k / fps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent_at.append(time.perf_counter())
            yield frame_k

    result.expected = -(-len(frames) // clip)
    h, w = frames.shape[1:3]
    try:
        for v in client.stream_video(paced(), width=w, height=h, fps=fps, pixel_format="rgb24", **cfg):
            now = time.perf_counter()
            last = min(len(sent_at), v.end_sample, len(frames)) - 1
            result.latencies_ms.append((now - sent_at[last]) * 1000)
            result.server_latencies_ms.append(v.latency_ms)
            result.received += 1
        result.wall_s = time.perf_counter() - start_at
    except grpc.RpcError as e:
        result.error = f"{e.code().name}: {e.details()}"
        result.refused = e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and result.received == 0
    except Exception as e:  # noqa: BLE001 - counted as lost clips and reported
        result.error = f"{type(e).__name__}: {e}"


def run_level(
    target: str, n: int, audios: list[np.ndarray], cfg: dict, *, sync: bool = False, video: bool = False
) -> dict:
    """N streams at once. Stream k starts k/N of a hop after the first (arrivals spread over the
    hop, as independent users' are), or all at the same instant with ``sync`` (the worst case:
    every stream completes a window at the same moment). With ``video`` the inputs are frames."""
    results = [StreamResult() for _ in range(n)]
    t0 = time.perf_counter() + 0.5
    starts = [t0 if sync else t0 + 0.5 * k / n for k in range(n)]
    # one channel (one HTTP/2 connection) for all streams, as a gateway would send them: the load
    # generator shares the machine with the server and should cost it as little as possible
    with GuardClient(target) as client:
        one = _one_video_stream if video else _one_stream
        threads = [
            threading.Thread(target=one, args=(client, audios[k], cfg, results[k], starts[k]))
            for k in range(n)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    lat = np.array([x for r in results for x in r.latencies_ms])
    srv = np.array([x for r in results for x in r.server_latencies_ms])
    audio_s = len(audios[0]) / (25.0 if video else RATE)
    out = {
        "streams": n,
        "windows": int(sum(r.received for r in results)),
        "lost": int(sum(r.expected - r.received for r in results)),
        "refused": sum(1 for r in results if r.refused),
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "p95_ms": float(np.percentile(lat, 95)) if lat.size else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan"),
        "server_p99_ms": float(np.percentile(srv, 99)) if srv.size else float("nan"),
        "rtf": float(max((r.wall_s for r in results), default=0.0) / audio_s),
        "errors": sorted({r.error for r in results if r.error}),
    }
    return out


def _start_server(args: argparse.Namespace, log) -> tuple[subprocess.Popen, str]:
    """``avsentry serve`` in its own interpreter, as in production; returns it and its address."""
    port = _free_port()
    cmd = [sys.executable, "-m", "avsentry", "serve", "--port", str(port), "--log-level", "warning"]
    cmd += ["--device", args.device, "--backend", args.backend, "--workers", str(args.workers)]
    if getattr(args, "video", False):
        cmd += ["--model", VIDEO_MODEL]
    cmd += ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]
    if args.torch_threads is not None:
        cmd += ["--torch-threads", str(args.torch_threads)]
    if getattr(args, "max_load", None) is not None:
        cmd += ["--max-load", str(args.max_load)]
    server = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    if "serving" not in line:
        server.kill()
        log.seek(0)
        raise RuntimeError(f"server did not start: {line.strip()} {log.read()[-2000:]}")
    return server, f"127.0.0.1:{port}"


def bench_stream(args: argparse.Namespace) -> list[dict]:
    """Run the benchmark; returns one row per stream count."""
    counts = [int(x) for x in str(args.streams).split(",") if x.strip()]
    if not counts or min(counts) < 1:
        raise ValueError("--streams needs positive integers, e.g. 1,8,16,24")
    target = getattr(args, "target", None)
    with tempfile.TemporaryFile("w+") as log:
        server = None
        if not target:
            server, target = _start_server(args, log)
        try:
            return _run_levels(args, target, counts, started=server is not None)
        finally:
            if server is not None:
                server.terminate()
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.kill()


def _run_levels(args: argparse.Namespace, target: str, counts: list[int], *, started: bool) -> list[dict]:
    video = bool(getattr(args, "video", False))
    cfg: dict = {"smoothing_n": args.n or (16 if video else 32)}
    if args.transforms is not None:
        cfg["transforms"] = [t for t in args.transforms.split(",") if t] or ["none"]
    floor = None if args.noise_floor_db is None or args.noise_floor_db <= -200 else args.noise_floor_db
    if video:
        audios = [_video(args.seconds, seed=k) for k in range(max(counts))]
    else:
        audios = [_audio(args.seconds, seed=k, noise_floor_db=floor) for k in range(max(counts))]
    where = (
        f"a local avsentry serve (workers={args.workers}, max_batch={args.max_batch})" if started else target
    )
    what = (
        "112x112 video per stream (raw RGB frames at 25 fps, real time, a verdict per 16-frame clip)"
        if video
        else f"speech per stream (noise floor {'none' if floor is None else f'{floor:g} dBFS'}), "
        f"{CHUNK_MS} ms chunks at real time"
    )
    print(
        f"# avsentry bench stream: {args.seconds:g} s of {what} "
        f"({'all in step' if args.sync else 'starts spread over one hop'}), n={cfg['smoothing_n']}, "
        f"transforms={cfg.get('transforms', 'model default')}, device={args.device}, server: {where}, "
        f"cpus={os.cpu_count()}",
        flush=True,
    )
    print(
        f"{'streams':>7} {'refused':>7} {'windows':>7} {'lost':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
        f"{'srv p99':>8} {'RTF':>6}",
        flush=True,
    )
    rows = []
    for n in counts:
        r = run_level(target, n, audios, cfg, sync=args.sync, video=video)
        rows.append(r)
        print(
            f"{r['streams']:7d} {r['refused']:7d} {r['windows']:7d} {r['lost']:5d} {r['p50_ms']:8.1f} "
            f"{r['p95_ms']:8.1f} {r['p99_ms']:8.1f} {r['server_p99_ms']:8.1f} {r['rtf']:6.3f}"
            + (f"  errors: {r['errors']}" if r["errors"] else ""),
            flush=True,
        )
    ok = [r["streams"] for r in rows if r["lost"] == 0 and r["p99_ms"] <= args.p99_ms]
    best = max(ok) if ok else 0
    print(
        f"largest N in real time (p99 <= {args.p99_ms:g} ms, 0 lost, none refused) among those run: {best}",
        flush=True,
    )
    if args.json:
        print(json.dumps({"rows": rows, "largest_realtime_streams": best}))
    return rows


# -- avsentry bench replica -------------------------------------------------------------------


def bench_replica(args: argparse.Namespace) -> list[str]:
    """Windows/s of one inference-pool replica: the :class:`~avsentry.stream.inference.InferenceWorker`
    a Ray Serve replica holds, judging batches of isolated windows (the pool keeps no stream
    state) with ``--concurrency`` detector calls at once, as the replica's ``@serve.batch``
    runs them. One line per smoothing ``n``, for the model's defence and for smoothing alone."""
    lines: list[str] = []

    def say(s: str) -> None:
        print(s, flush=True)
        lines.append(s)

    ns = [int(x) for x in str(args.n).split(",") if x.strip()]
    if not ns or min(ns) < 2:
        raise ValueError("--n needs whole numbers >= 2, e.g. 32,100")
    worker = InferenceWorker(
        (args.model,),
        backend=args.backend,
        device=args.device,
        codec_processes=args.codec_processes,
        torch_threads=args.torch_threads,
    )
    try:
        name = worker.registry.default
        manifest = worker.registry.manifests[name]
        spec = manifest.spec
        rng = np.random.default_rng(0)
        window = spec.window_shape[0]
        windows = np.stack(
            [synthetic_stream(spec, window, rng) for _ in range(args.batch * args.concurrency)]
        )
        device = worker.device
        gpu = f" ({torch.cuda.get_device_name(torch.device(device))})" if device.startswith("cuda") else ""
        codecs = "threads" if worker.pool is None else f"{worker.pool.processes} processes"
        say(
            f"# avsentry bench replica: {name} on {device}{gpu}, backend {args.backend}, torch threads "
            f"{torch.get_num_threads()}, codecs in {codecs}; {args.concurrency} detector calls at once of "
            f"{args.batch} isolated windows; best of {args.repeat}"
        )
        base, _ = DetectorConfig.from_card(manifest.detector)
        for n in ns:
            default = changed_smoothing(base.smoothing)
            sm = changed_smoothing(default, n=n, n0=min(default.n0, n // 2))
            for label, transforms in (
                ("+".join(t.split(":")[0] for t in base.transforms) + " + smoothing", base.transforms),
                ("smoothing alone", ()),
            ):
                config = DetectorConfig(
                    transforms=transforms,
                    smoothing=sm,
                    seed=0,
                    threshold=base.threshold,
                    scoring=base.scoring,
                )
                per_s = _replica_rate(worker, name, config, windows, args)
                hop_s = spec.window_s / 2
                say(
                    f"n={n:<4d} {label:<40s} {per_s:9.1f} windows/s -> {per_s * hop_s:7.1f} real-time "
                    f"streams at a {hop_s:g} s hop"
                )
    finally:
        worker.close()
    return lines


def _replica_rate(
    worker: InferenceWorker, name: str, config: DetectorConfig, windows: np.ndarray, args: argparse.Namespace
) -> float:
    parts = np.array_split(windows, args.concurrency)

    def call(k: int) -> None:
        x = parts[k]
        (judged,) = worker.judge([Batch(model=name, config=config, windows=x, keys=tuple(range(len(x))))])
        if judged.error:
            raise RuntimeError(judged.error)

    def once() -> float:
        threads = [threading.Thread(target=call, args=(k,)) for k in range(args.concurrency)]
        t0 = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return time.perf_counter() - t0

    once()  # warm-up: detector built, kernels and codec workers ready
    return len(windows) / min(once() for _ in range(args.repeat))


def run_replica_cli(args: argparse.Namespace) -> int:
    """``avsentry bench replica``."""
    bench_replica(args)
    return 0
