"""``avsentry serve``, ``stream``, ``mic``, ``camera`` and ``demo``: the online commands.

The clients print every verdict through :class:`~avsentry.stream.offline.VerdictPrinter` (the
renderer ``avsentry check`` uses), after converting it to a
:class:`~avsentry.pipelines.report.VerdictRecord`, and end with a summary on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from avsentry.stream._proto.avsentry.v1 import guard_pb2 as pb
from avsentry.stream.client import GuardClient
from avsentry.stream.config import ServerConfig, load_config
from avsentry.stream.convert import record_from_proto
from avsentry.stream.logs import configure as configure_logging
from avsentry.stream.offline import VerdictPrinter
from avsentry.stream.server import RunningServer, serve_forever, start_server

DEFAULT_SERVER = "127.0.0.1:50051"


def _read_token(path: Path | None) -> str | None:
    return None if path is None else Path(path).read_text(encoding="utf-8").strip()


def serve_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``serve`` flags as ``load_config`` overrides (``None``: not given, the file's value)."""
    return {
        "address": args.address,
        "port": args.port,
        "insecure": args.insecure,
        "max_streams": args.max_streams,
        "grace_s": args.grace_s,
        "model": args.model,
        "backend": args.backend,
        "device": args.device,
        "allow_uncalibrated": args.allow_uncalibrated,
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "workers": args.workers,
        "inference": args.inference[0] if args.inference else None,
        "ray_address": args.inference[1] if args.inference else None,
        "torch_threads": args.torch_threads,
        "max_load": args.max_load,
        "lock": args.lock,
        "noise_seed": args.noise_seed,
        "hop_ms": args.hop_ms,
        "transforms": args.transforms,
        "smoothing_n": args.n,
        "sigma": args.sigma,
        "representation": args.representation,
        "smoothing": False if args.no_smoothing else None,
        "threshold": args.threshold,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "metrics_port": args.metrics_port,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_client_ca": args.tls_client_ca,
        "token": _read_token(args.token_file),
    }


def run_serve(args: argparse.Namespace) -> int:
    config = load_config(args.config, **serve_overrides(args))

    def ready(r: RunningServer) -> None:
        scheme = "mTLS" if r.config.tls_client_ca else "TLS" if r.config.tls else "plaintext"
        extra = (
            f", metrics on http://{r.config.metrics_address}:{r.metrics_port}/metrics"
            if r.metrics_port
            else ""
        )
        auth = ", bearer token required" if r.config.token else ""
        pool = r.inference_pool
        where = (
            ""
            if pool is None
            else f", detectors on Ray Serve app {r.config.pool_app!r} "
            f"({pool.description.get('device', '?')} replicas)"
        )
        print(
            f"avsentry serving {', '.join(r.service.registry.manifests)} on {r.config.address}:{r.port} "
            f"({scheme}{auth}{extra}{where}); Ctrl-C to stop",
            flush=True,
        )

    configure_logging(config.log_level, config.log_format)
    asyncio.run(serve_forever(config, ready=ready))
    print("avsentry: stopped", flush=True)
    return 0


def _client(args: argparse.Namespace) -> GuardClient:
    return GuardClient(
        args.server or DEFAULT_SERVER,
        ca=args.ca,
        cert=args.cert,
        key=args.key,
        token=_read_token(args.token_file),
    )


def stream_config(args: argparse.Namespace) -> dict[str, Any]:
    """The detector and stream flags of ``stream``/``mic``/``camera`` as ``make_config`` fields
    (zeros and empties: the server's default); audio callers add the sample encoding."""
    transforms: list[str] = []
    if args.transforms is not None:
        transforms = list(args.transforms) or ["none"]
    return {
        "model": args.model or "",
        "transforms": transforms,
        "smoothing_n": args.n or 0,
        "smoothing_sigma": args.sigma or 0.0,
        "smoothing_representation": args.representation or "",
        "disable_smoothing": args.no_smoothing,
        "threshold": args.threshold,
        "hop_ms": args.hop_ms or 0,
        "interim_results": args.interim,
        "reconnect_s": args.reconnect_s,
    }


def print_verdicts(verdicts: Iterator[pb.Verdict], printer: VerdictPrinter) -> None:
    """Render each ``Verdict`` as it arrives (the one verdict schema)."""
    for v in verdicts:
        printer(record_from_proto(v))


def _finish(command: str, args: argparse.Namespace, printer: VerdictPrinter, extra: str = "") -> int:
    if not args.quiet:
        print(f"avsentry {command}: {printer.summary()}{extra}", file=sys.stderr, flush=True)
    return printer.exit_status(fail_on_flag=args.fail_on_flag)


def run_stream(args: argparse.Namespace) -> int:
    """``avsentry stream``: 0, or 3 on a flag with ``--fail-on-flag``.

    A file with a video stream goes to StreamVideo when it has no audio or ``--model`` names a
    video model on the server; anything else streams its audio to StreamAudio.
    """
    if args.rate < 0:
        raise ValueError(f"--rate must be >= 0, got {args.rate}")
    from avsentry.stream.sources import FileSource
    from avsentry.stream.video_sources import VideoFileSource

    printer = VerdictPrinter(as_json=args.json)
    with _client(args) as client:
        if _streams_video(args.file, args.model, client):
            with VideoFileSource(args.file, rate=args.rate) as video:
                config = video_stream_config(args, client)
                print_verdicts(client.stream_video_source(video, **config), printer)
        else:
            with FileSource(args.file, rate=args.rate) as source:
                config = stream_config(args) | {"encoding": args.encoding}
                print_verdicts(client.stream_source(source, **config), printer)
    return _finish("stream", args, printer)


def _streams_video(path: Path, model: str | None, client: GuardClient) -> bool:
    from avsentry.pipelines.video_io import media_streams

    has_audio, has_video = media_streams(path)
    if not has_video:
        return False
    if not has_audio:
        return True
    return bool(model) and _served_model(client, model, "video") is not None


def _served_model(client: GuardClient, name: str | None, modality: str) -> pb.ModelInfo | None:
    """The server's model called ``name`` if it takes ``modality``; without a name, the model a
    call of that modality gets (the default model, else the first of that modality)."""
    models = client.list_models()
    if name:
        return next((m for m in models if m.name == name and m.modality == modality), None)
    ordered = sorted(models, key=lambda m: not m.is_default)
    return next((m for m in ordered if m.modality == modality), None)


def video_stream_config(args: argparse.Namespace, client: GuardClient) -> dict[str, Any]:
    """:func:`stream_config` as ``make_video_config`` fields: ``--hop-ms`` becomes model frames
    (the server's model fps), and frames travel as ``--pixel-format``."""
    config = stream_config(args)
    hop_ms = config.pop("hop_ms")
    if hop_ms:
        model = _served_model(client, args.model, "video")
        if model is None:
            raise ValueError(f"the server has no video model {args.model or ''}".rstrip())
        config["hop_frames"] = max(1, round(hop_ms * model.fps / 1000))
    config["pixel_format"] = args.pixel_format
    return config


def run_mic(args: argparse.Namespace) -> int:
    """``avsentry mic``: until Ctrl-C or ``--seconds``; 0, or 3 on a flag with ``--fail-on-flag``."""
    from avsentry.stream.sources import MicSource, format_devices, list_input_devices

    if args.list_devices:
        print(format_devices(list_input_devices()))
        return 0
    device: int | str | None = args.input_device
    if isinstance(device, str) and device.isdigit():
        device = int(device)
    printer = VerdictPrinter(as_json=args.json)
    with (
        _client(args) as client,
        MicSource(
            device,
            sample_rate_hz=args.samplerate,
            channels=args.channels,
            max_seconds=args.seconds,
            buffer_ms=args.buffer_ms,
        ) as source,
    ):
        if not args.quiet:
            print(
                f"avsentry mic: capturing {source.channels} channel(s) at {source.sample_rate_hz} Hz; "
                "Ctrl-C to stop",
                file=sys.stderr,
                flush=True,
            )
        try:
            config = stream_config(args) | {"encoding": args.encoding}
            print_verdicts(client.stream_source(source, **config), printer)
        except KeyboardInterrupt:
            pass
        dropped = (
            f"; {source.overflows} block(s) dropped because the stream fell behind, "
            f"{source.input_overflows} input overflow(s) reported by the device"
        )
    return _finish("mic", args, printer, dropped)


def run_camera(args: argparse.Namespace) -> int:
    """``avsentry camera``: until Ctrl-C or ``--seconds``; 0, or 3 on a flag with ``--fail-on-flag``."""
    from avsentry.stream.video_sources import CameraSource

    printer = VerdictPrinter(as_json=args.json)
    with (
        _client(args) as client,
        CameraSource(
            args.input_device,
            input_format=args.input_format,
            video_size=args.video_size,
            framerate=args.framerate,
            max_seconds=args.seconds,
        ) as source,
    ):
        if not args.quiet:
            print(
                f"avsentry camera: capturing {source.width}x{source.height} at {source.fps:g} fps from "
                f"{args.input_device}; Ctrl-C to stop",
                file=sys.stderr,
                flush=True,
            )
        try:
            print_verdicts(client.stream_video_source(source, **video_stream_config(args, client)), printer)
        except KeyboardInterrupt:
            pass
        captured = f"; {source.captured} frame(s) captured"
    return _finish("camera", args, printer, captured)


def demo_clips() -> list[Path]:
    base = Path(str(resources.files("avsentry.pipelines").joinpath("models", "digits")))
    return sorted(base.glob("demo_*.wav"))


@contextmanager
def local_server(config: ServerConfig) -> Iterator[RunningServer]:
    """A server on its own event-loop thread, for the demo and benchmarks."""
    loop = asyncio.new_event_loop()
    started: dict = {}
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            started["server"] = loop.run_until_complete(start_server(config))
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            started["error"] = e
        ready.set()
        if "server" in started:
            loop.run_forever()

    thread = threading.Thread(target=run, name="avsentry-local-server", daemon=True)
    thread.start()
    ready.wait()
    if "error" in started:
        raise started["error"]
    try:
        yield started["server"]
    finally:
        asyncio.run_coroutine_threadsafe(started["server"].stop(1.0), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


def run_demo(args: argparse.Namespace) -> int:
    clips = demo_clips()
    if not clips:
        raise FileNotFoundError("no bundled demo clips in pipelines/models/digits")
    with local_server(ServerConfig(port=0, device=args.device)) as server:
        print(f"avsentry demo: server on 127.0.0.1:{server.port}, model digits", flush=True)
        printer = VerdictPrinter(as_json=False, prefix="  ")
        with GuardClient(f"127.0.0.1:{server.port}") as client:
            for clip in clips:
                print(f"--- streaming {clip.name} at {args.rate:g}x real time", flush=True)
                print_verdicts(client.stream_file(clip, rate=args.rate), printer)
    return 0
