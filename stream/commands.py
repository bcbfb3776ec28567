"""``avsentry serve``, ``stream``, ``mic`` and ``demo``: the online commands."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from avsentry.stream.client import GuardClient, format_verdict, verdict_to_dict
from avsentry.stream.config import ServerConfig, load_config
from avsentry.stream.logs import configure as configure_logging
from avsentry.stream.server import RunningServer, serve_forever, start_server


def run_serve(args: argparse.Namespace) -> int:
    token = None
    if args.token_file is not None:
        token = Path(args.token_file).read_text(encoding="utf-8").strip()
    config = load_config(
        args.config,
        address=args.address,
        port=args.port,
        insecure=args.insecure,
        model=args.model,
        backend=args.backend,
        device=args.device,
        max_streams=args.max_streams,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        workers=args.workers,
        torch_threads=args.torch_threads,
        metrics_port=args.metrics_port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        token=token,
    )

    def ready(r: RunningServer) -> None:
        scheme = "mTLS" if r.config.tls_client_ca else "TLS" if r.config.tls else "plaintext"
        extra = (
            f", metrics on http://{r.config.metrics_address}:{r.metrics_port}/metrics"
            if r.metrics_port
            else ""
        )
        auth = ", bearer token required" if r.config.token else ""
        print(
            f"avsentry serving {', '.join(r.service.registry.manifests)} on {r.config.address}:{r.port} "
            f"({scheme}{auth}{extra}); Ctrl-C to stop",
            flush=True,
        )

    configure_logging(config.log_level, config.log_format)
    asyncio.run(serve_forever(config, ready=ready))
    print("avsentry: stopped", flush=True)
    return 0


def _client(args: argparse.Namespace) -> GuardClient:
    token = Path(args.token_file).read_text(encoding="utf-8").strip() if args.token_file else None
    return GuardClient(args.server, ca=args.ca, cert=args.cert, key=args.key, token=token)


def _stream_config(args: argparse.Namespace) -> dict:
    transforms: list[str] = []
    if args.transforms is not None:
        transforms = (
            ["none"]
            if args.transforms.strip() in ("", "none")
            else [t.strip() for t in args.transforms.split(",") if t.strip()]
        )
    return {
        "model": args.model,
        "transforms": transforms,
        "smoothing_n": args.n,
        "hop_ms": args.hop_ms,
        "interim_results": args.interim,
    }


def _print_verdicts(verdicts: Iterator, *, as_json: bool, prefix: str = "") -> int:
    flagged = 0
    for v in verdicts:
        flagged += v.flagged
        if as_json:
            print(json.dumps(verdict_to_dict(v)), flush=True)
        else:
            print(format_verdict(v, prefix=prefix), flush=True)
    return flagged


def run_stream(args: argparse.Namespace) -> int:
    if args.rate < 0:
        raise ValueError(f"--rate must be >= 0, got {args.rate}")
    from avsentry.stream.sources import FileSource

    with _client(args) as client, FileSource(args.file, rate=args.rate) as source:
        _print_verdicts(client.stream_source(source, **_stream_config(args)), as_json=args.json)
    return 0


def run_mic(args: argparse.Namespace) -> int:
    from avsentry.stream.sources import MicSource, format_devices, list_input_devices

    if args.list_devices:
        print(format_devices(list_input_devices()))
        return 0
    device: int | str | None = args.input_device
    if isinstance(device, str) and device.isdigit():
        device = int(device)
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
        print(
            f"avsentry mic: capturing {source.channels} channel(s) at {source.sample_rate_hz} Hz; "
            "Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        try:
            _print_verdicts(client.stream_source(source, **_stream_config(args)), as_json=args.json)
        except KeyboardInterrupt:
            pass
        print(
            f"avsentry mic: {source.overflows} block(s) dropped because the stream fell behind, "
            f"{source.input_overflows} input overflow(s) reported by the device",
            file=sys.stderr,
            flush=True,
        )
    return 0


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
        with GuardClient(f"127.0.0.1:{server.port}") as client:
            for clip in clips:
                print(f"--- streaming {clip.name} at {args.rate:g}x real time", flush=True)
                _print_verdicts(client.stream_file(clip, rate=args.rate), as_json=False, prefix="  ")
    return 0
