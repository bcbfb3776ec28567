"""The ``avsentry`` command line.

Online commands live here (the server and its clients, from the streaming issue); offline ones
(``check``, ``train``, ``calibrate``, ``bench``) are thin wrappers over ``pipelines`` and
``tools``, imported lazily so ``avsentry --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="digits",
        help="embedded model name or a manifest file (JSON/TOML); default: digits",
    )
    p.add_argument(
        "--backend",
        choices=("torch", "onnx"),
        default="torch",
        help="inference backend (default: torch)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda, cuda:N or auto (CUDA when present; default: auto)",
    )


def _add_detector_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("detector (defaults: the configuration the model card was calibrated for)")
    g.add_argument(
        "--transforms",
        default=None,
        help="comma-separated transform specs, e.g. 'mp3,opus:bitrate_kbps=12,quantize:bits=6'; "
        "'none' for no transforms",
    )
    g.add_argument("--n", type=int, default=None, help="smoothing: noisy samples per window")
    g.add_argument("--n0", type=int, default=None, help="smoothing: of those, samples that select the class")
    g.add_argument("--sigma", type=float, default=None, help="smoothing: noise standard deviation")
    g.add_argument(
        "--representation",
        choices=("waveform", "spectrogram", "logmel"),
        default=None,
        help="smoothing: where the noise is added",
    )
    g.add_argument("--alpha", type=float, default=None, help="smoothing: test / bound failure probability")
    g.add_argument("--no-smoothing", action="store_true", help="skip randomized smoothing")
    g.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="flag when score > this (default: the calibrated threshold in the model card)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed for transform and smoothing randomness")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avsentry",
        description="Guard voice recognizers against adversarial examples: codec, squeezing and "
        "randomized-smoothing defences with a calibrated disagreement detector.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "check",
        help="offline verdicts for each window of audio files",
        description="Cut each file into windows (model window, --hop-ms apart), run the "
        "recognizer raw, after each transform and under randomized smoothing, and print "
        "one verdict per window. Any sample rate or channel count (resampled to the "
        "model rate, downmixed to mono).",
    )
    p.add_argument(
        "files",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="WAV, FLAC, MP3 (anything FFmpeg decodes)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per window on stdout")
    p.add_argument("--hop-ms", type=float, default=500.0, help="hop between windows in ms (default: 500)")
    p.add_argument("--fail-on-flag", action="store_true", help="exit 3 when any window is flagged")
    _add_model_args(p)
    _add_detector_args(p)

    p = sub.add_parser(
        "serve",
        help="run the gRPC guard service",
        description="Serve avsentry.v1.Guard (plus grpc.health.v1 and reflection). With no "
        "options it serves the embedded digits model in plaintext on 127.0.0.1:50051. "
        "Settings come from --config (TOML, see stream/config.py) and these flags.",
    )
    p.add_argument("--config", type=Path, help="TOML configuration file")
    p.add_argument("--address", help="listen address (default 127.0.0.1; others need TLS or --insecure)")
    p.add_argument("--port", type=int, help="listen port (default 50051; 0 picks a free one)")
    p.add_argument(
        "--insecure", action="store_true", default=None, help="allow plaintext on a non-loopback address"
    )
    p.add_argument("--model", help="default model: embedded name or manifest path (default digits)")
    p.add_argument("--backend", choices=("torch", "onnx"))
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--max-streams", type=int)
    p.add_argument("--max-batch", type=int, help="windows per device batch (default 64)")
    p.add_argument("--max-wait-ms", type=float, help="longest wait to fill a batch (default 10)")
    p.add_argument("--workers", type=int, help="batches in flight (default 2)")
    p.add_argument(
        "--torch-threads", type=int, help="torch intra-op threads (default 1; 0 = torch's default, all cores)"
    )
    p.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (default off)")
    p.add_argument("--tls-cert", type=Path)
    p.add_argument("--tls-key", type=Path)
    p.add_argument("--tls-client-ca", type=Path, help="require client certificates signed by this CA (mTLS)")
    p.add_argument("--token-file", type=Path, help="require 'authorization: Bearer <token>' (token in file)")

    def add_client_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--server", default="127.0.0.1:50051", help="host:port (default 127.0.0.1:50051)")
        p.add_argument("--json", action="store_true", help="one JSON verdict per line")
        p.add_argument("--interim", action="store_true", help="also print quick raw-only interim verdicts")
        p.add_argument("--model", default="", help="model name on the server (default: its default)")
        p.add_argument("--transforms", default=None, help="comma-separated transform specs, or 'none'")
        p.add_argument("--n", type=int, default=0, help="smoothing samples per window (default: server's)")
        p.add_argument("--hop-ms", type=int, default=0, help="hop between windows (default 500)")
        p.add_argument("--ca", type=Path, help="CA certificate to verify the server (enables TLS)")
        p.add_argument("--cert", type=Path, help="client certificate (mutual TLS)")
        p.add_argument("--key", type=Path, help="client key (mutual TLS)")
        p.add_argument("--token-file", type=Path, help="file holding the bearer token")

    p = sub.add_parser("stream", help="stream a file to a server at real time, print verdicts live")
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument(
        "--rate", type=float, default=1.0, help="pace: 1 = real time, 2 = twice as fast, 0 = unpaced"
    )
    add_client_args(p)

    p = sub.add_parser("mic", help="stream a microphone to a server, print verdicts live")
    p.add_argument("--list-devices", action="store_true", help="list input devices and exit")
    p.add_argument("--input-device", default=None, help="device index or name (default: system default)")
    p.add_argument(
        "--samplerate", type=int, default=None, help="capture rate (default: the device's native rate)"
    )
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--seconds", type=float, default=None, help="stop after this much audio (default: Ctrl-C)")
    p.add_argument(
        "--buffer-ms",
        type=int,
        default=2000,
        help="capture queue; the oldest audio is dropped (and counted) past it (default 2000)",
    )
    add_client_args(p)

    p = sub.add_parser("models", help="list the embedded models and their calibration")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser(
        "demo",
        help="serve the default model and stream the bundled clean and adversarial clips",
        description="Start a server on a free local port with the embedded model, stream the "
        "bundled clean clip and then the adversarial one through it at real time (or --rate), "
        "and print each verdict.",
    )
    p.add_argument("--rate", type=float, default=1.0, help="pace (default 1 = real time; 0 = unpaced)")
    p.add_argument("--device", default="auto")

    p = sub.add_parser(
        "train",
        help="synthesise data and train the default digit recognizer",
        description="Reproduce the embedded digits model: synthesise the corpus with "
        "espeak-ng, flite and festival's English, Italian, Czech and Finnish voices (if --data "
        "is absent or was made by another recipe), train, evaluate on held-out "
        "voices, export ONNX, calibrate the detector and write a model card.",
    )
    p.add_argument(
        "--data", type=Path, default=Path("data/synth/clips.npz"), help="corpus (built if absent or stale)"
    )
    p.add_argument("--out", type=Path, default=Path("runs/digits"), help="output directory")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 5000)")
    p.add_argument("--batch-size", type=int, default=None, help="windows per step (default 128)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 3e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument(
        "--synth-scale",
        type=float,
        default=1.0,
        help="fraction of the corpus recipe to synthesise (for quick trials)",
    )
    p.add_argument("--no-calibrate", action="store_true", help="skip detector calibration")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser(
        "calibrate",
        help="calibrate the detector threshold on held-out clean audio",
        description="Score held-out clean windows (digits, other speech, background) with "
        "the detector, set the threshold for a target false-positive rate on one half of "
        "the held-out clips (split by voice and text; per group of digits, other speech and "
        "background, each held at the target with --confidence), measure the FPR on the other "
        "half, and store both in the model card.",
    )
    p.add_argument(
        "--card", type=Path, required=True, help="card.json to update (e.g. runs/digits/card.json)"
    )
    p.add_argument("--data", type=Path, default=Path("data/synth/clips.npz"))
    p.add_argument(
        "--target-fpr", type=float, default=0.01, help="false-positive rate to hold (default 0.01)"
    )
    p.add_argument(
        "--confidence",
        type=float,
        default=0.95,
        help="probability that each group's FPR stays at or under the target over calibration "
        "sets (default 0.95; 0: only its expectation, plain split conformal)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    _add_detector_args(p)

    p = sub.add_parser("bench", help="benchmarks (not tests)")
    bsub = p.add_subparsers(dest="bench", required=True, metavar="WHAT")
    b = bsub.add_parser("core", help="inference, transforms and smoothing speed on 1 s windows")
    _add_model_args(b)
    b.add_argument("--repeat", type=int, default=5, help="timed repetitions per measurement")
    b.add_argument("--batch", type=int, default=32, help="windows per batch for raw inference")
    b = bsub.add_parser(
        "stream", help="latency and capacity of a local server under concurrent real-time streams"
    )
    b.add_argument("--streams", default="1,8,16,24,32", help="comma-separated stream counts to run")
    b.add_argument("--seconds", type=float, default=20.0, help="audio per stream")
    b.add_argument("--n", type=int, default=32, help="smoothing samples per window")
    b.add_argument("--transforms", default=None, help="transform specs (default: the model's calibrated set)")
    b.add_argument("--device", default="auto")
    b.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    b.add_argument("--workers", type=int, default=2)
    b.add_argument(
        "--torch-threads", type=int, default=None, help="server torch threads (default: serve's, 1)"
    )
    b.add_argument("--max-batch", type=int, default=64)
    b.add_argument("--max-wait-ms", type=float, default=10.0)
    b.add_argument("--p99-ms", type=float, default=250.0, help="latency budget for 'real time'")
    b.add_argument(
        "--sync",
        action="store_true",
        help="start all streams at the same instant (worst case) instead of spread over one hop",
    )
    b.add_argument("--json", action="store_true", help="also print a JSON summary")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            from avsentry.stream.offline import run_check

            return run_check(args)
        if args.command == "models":
            return _models(args)
        if args.command == "demo":
            from avsentry.stream.commands import run_demo

            return run_demo(args)
        if args.command == "serve":
            from avsentry.stream.commands import run_serve

            return run_serve(args)
        if args.command == "stream":
            from avsentry.stream.commands import run_stream

            return run_stream(args)
        if args.command == "mic":
            from avsentry.stream.commands import run_mic

            return run_mic(args)
        if args.command == "train":
            from avsentry.tools.train import run_cli

            return run_cli(args)
        if args.command == "calibrate":
            from avsentry.pipelines.detection import DetectorConfig
            from avsentry.stream.offline import detector_config_overrides
            from avsentry.tools.calibrate import run_cli as calibrate_cli

            cfg, _ = DetectorConfig.from_card(None, **detector_config_overrides(args))
            return calibrate_cli(args, cfg)
        if args.command == "bench":
            if args.bench == "stream":
                from avsentry.stream.bench import bench_stream

                bench_stream(args)
                return EXIT_OK
            from avsentry.tools.bench import run_cli as bench_cli

            return bench_cli(args)
    except KeyboardInterrupt:
        print("avsentry: interrupted", file=sys.stderr)
        return 130
    except (CliError, FileNotFoundError, ValueError, RuntimeError, OSError) as e:
        print(f"avsentry {args.command}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # a gRPC status or an audio-source error from a client command: one line
        import grpc

        from avsentry.stream.sources import SourceError

        if isinstance(e, SourceError):
            print(f"avsentry {args.command}: error: {e}", file=sys.stderr)
            return EXIT_ERROR
        if isinstance(e, grpc.RpcError):
            print(f"avsentry {args.command}: error: {e.code().name}: {e.details()}", file=sys.stderr)  # type: ignore[attr-defined]
            return EXIT_ERROR
        raise
    parser.error(f"unknown command {args.command!r}")
    return EXIT_USAGE


def _models(args: argparse.Namespace) -> int:
    from avsentry.pipelines.recognizers import embedded_models, read_manifest

    rows = []
    for name in embedded_models():
        m = read_manifest(name)
        det = m.extra.get("detector", {})
        rows.append(
            {
                "name": m.spec.name,
                "labels": list(m.spec.labels),
                "sample_rate_hz": m.spec.sample_rate_hz,
                "window_samples": m.spec.window_samples,
                "backends": sorted(m.backends),
                "heldout_accuracy": m.extra.get("heldout_accuracy", {}).get("overall"),
                "threshold": det.get("threshold"),
                "target_fpr": det.get("target_fpr"),
                "measured_fpr": det.get("measured_fpr"),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(
                f"{r['name']}: {len(r['labels'])} labels ({', '.join(r['labels'])}), "
                f"{r['sample_rate_hz']} Hz, window {r['window_samples']} samples, backends "
                f"{'/'.join(r['backends'])}, held-out top-1 {r['heldout_accuracy']}, threshold "
                f"{r['threshold']} (target FPR {r['target_fpr']}, measured {r['measured_fpr']})"
            )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
