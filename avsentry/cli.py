"""The ``avsentry`` command line: one tool over the server, its clients and the offline commands.

Commands share option groups, built once and attached with argparse ``parents=``, so a flag has
the same name, type, default and meaning wherever it appears:

- **model** (``check``, ``serve``, ``calibrate``, ``bench core``): ``--model --backend --device``.
- **detector** (``check``, ``stream``, ``mic``, ``camera``, ``serve``, ``calibrate``):
  ``--transforms --n --sigma --representation --no-smoothing --threshold --hop-ms``. A flag not
  given keeps the default defence: the model card's calibrated one (``check``, ``serve``) or the
  server's (``stream``, ``mic``, ``camera``).
- **output** (``check``, ``stream``, ``mic``, ``camera``): ``--json --fail-on-flag --quiet``;
  every verdict is rendered by :mod:`avsentry.pipelines.report`, so ``check --json`` and
  ``stream --json`` print the same schema.
- **connection** (``stream``, ``mic``, ``camera``, ``models --server``): ``--server --ca --cert
  --key --token-file``.

Exit status: 0 success, 1 an error (one line on stderr), 2 a malformed command line (argparse),
3 a window was flagged under ``--fail-on-flag``, 130 interrupted. Everything heavy (torch, grpc,
PyAV) is imported by the command that needs it, so ``avsentry --help`` stays fast. This is the
one module that may import both ``avsentry.stream`` and ``avsentry.tools``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_FLAGGED = 0, 1, 2, 3
DEFAULT_SERVER = "127.0.0.1:50051"
REPRESENTATIONS = ("waveform", "waveform_rms", "spectrogram", "logmel", "pixels")


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


class _VersionAction(argparse.Action):
    """``--version``; reads the installed version only when asked (keeps ``--help`` fast)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(
            option_strings,
            dest=dest,
            default=argparse.SUPPRESS,
            nargs=0,
            help="print the version and exit",
            **kwargs,
        )

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from avsentry import __version__

        print(f"avsentry {__version__}")
        parser.exit()


# -- value types (argparse reports a bad value as a usage error, exit 2) ------------------------
def transform_list(text: str) -> tuple[str, ...]:
    """``"mp3,opus:bitrate_kbps=12,segments=2,noise"`` -> its specs; ``"none"`` or ``""`` -> ().

    A comma followed by ``key=value`` without a ``:`` continues the previous spec's parameters.
    """
    if text.strip().lower() in ("", "none"):
        return ()
    specs: list[str] = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        if "=" in token and ":" not in token and specs:
            specs[-1] += "," + token
        else:
            specs.append(token)
    return tuple(specs)


def inference_engine(text: str) -> tuple[str, str]:
    """``--inference``: local, ray or ray=ADDRESS."""
    from avsentry.stream.config import parse_inference

    try:
        return parse_inference(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def probability(text: str) -> float:
    value = positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def noise_seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < -1:
        raise argparse.ArgumentTypeError(f"must be -1 (random) or >= 0, got {value}")
    return value


# -- shared option groups -------------------------------------------------------------------
def model_options() -> argparse.ArgumentParser:
    """``--model --backend --device``: the recognizer that runs here (``check``, ``serve``).

    Defaults are ``None`` ("not given"): ``check`` then uses digits/torch/auto, ``serve`` its
    config file's values (the same when there is none).
    """
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=None,
        metavar="NAME|MANIFEST",
        help="embedded model name or a manifest file (JSON/TOML) (default: digits)",
    )
    g.add_argument(
        "--backend", choices=("torch", "onnx"), default=None, help="inference backend (default: torch)"
    )
    g.add_argument(
        "--device",
        default=None,
        metavar="DEVICE",
        help="cpu, cuda, cuda:N or auto (default: auto, CUDA when present)",
    )
    return p


def detector_options(*, hop: bool = True) -> argparse.ArgumentParser:
    """The defence that judges each window (see the module docstring)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group(
        "detector",
        "How each window is judged. A flag not given keeps the default defence: the model card's "
        "calibrated one (check, serve) or the server's (stream, mic, camera). Under a changed defence "
        "the card's threshold stays in force but is reported uncalibrated (calibrated: false, "
        "false-positive rate unknown).",
    )
    g.add_argument(
        "--transforms",
        type=transform_list,
        default=None,
        metavar="SPECS",
        help="comma-separated transform specs, e.g. 'mp3,opus:bitrate_kbps=12,quantize:bits=6', or "
        "'none' (default: the calibrated set, mp3,opus,aac,noise for digits)",
    )
    g.add_argument(
        "--n",
        type=positive_int,
        default=None,
        help="randomized smoothing: noisy copies per window (default: the card's, 32)",
    )
    g.add_argument(
        "--sigma",
        type=positive_float,
        default=None,
        help="randomized smoothing: noise standard deviation, in the units of --representation "
        "(default: the card's, 0.25 for the digits' logmel; with another --representation: 0.002 "
        "waveform, 0.1 waveform_rms, 0.25 logmel)",
    )
    g.add_argument(
        "--representation",
        choices=REPRESENTATIONS,
        default=None,
        help="randomized smoothing: where the noise is added; waveform_rms is the waveform "
        "divided by its RMS, so --sigma is relative to the window (1 = noise as loud as it) "
        "(default: the card's, logmel for digits, waveform for an uncalibrated manifest)",
    )
    g.add_argument(
        "--no-smoothing",
        action="store_true",
        help="skip randomized smoothing (default: smoothing on)",
    )
    g.add_argument(
        "--threshold",
        type=non_negative_float,
        default=None,
        help="flag a window when its score exceeds this, on the scale of the model card's scoring "
        "(conformal: -log10 of a clean p-value, e.g. 2 = rarer than 1 in 100 clean windows; max: "
        "the largest L1 distance, 0-2) (default: the calibrated threshold in the model card)",
    )
    if hop:
        g.add_argument(
            "--hop-ms",
            type=positive_int,
            default=None,
            metavar="MS",
            help="hop between window starts in ms, at most the model's window (default: 500; for "
            "check on a video model, one whole clip; the server's for stream and mic)",
        )
    return p


def add_allow_uncalibrated(p: argparse.ArgumentParser, *, default: bool | None) -> None:
    p.add_argument(
        "--allow-uncalibrated",
        action="store_true",
        default=default,
        help="run a model that has no calibrated threshold (no card from avsentry calibrate, no "
        "--threshold): it flags nothing by score, and every verdict's reasons say so (default: "
        "refused with a message)",
    )


def add_certified_detection(g: argparse._ArgumentGroup) -> None:
    """``--certified-detection [P_MIN]`` / ``--no-certified-detection`` (``check``, ``calibrate``,
    ``attack``, ``evaluate``)."""
    g.add_argument(
        "--certified-detection",
        nargs="?",
        const=True,
        type=probability,
        default=None,
        metavar="P_MIN",
        help="also flag every window whose raw label holds under the smoothing noise with a "
        "probability bound under P_MIN (default 0.5, or the card's; calibrate lowers it until the "
        "rule flags at most half the target rate); a window that passes reports the SNR down to "
        "which no perturbation could have changed its label unflagged (use a waveform "
        "representation, e.g. --representation waveform_rms) (default: the card's)",
    )
    g.add_argument(
        "--no-certified-detection",
        dest="certified_detection",
        action="store_const",
        const=False,
        help="turn certified detection off (default: the card's)",
    )


def certified_detection_options() -> argparse.ArgumentParser:
    """Certified detection alone, for commands without the other in-process options."""
    p = argparse.ArgumentParser(add_help=False)
    add_certified_detection(p.add_argument_group("certified detection"))
    return p


def offline_detector_options() -> argparse.ArgumentParser:
    """Detector settings only an in-process detector takes (``check``, ``calibrate``)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("detector, in-process only")
    g.add_argument(
        "--n0",
        type=positive_int,
        default=None,
        help="randomized smoothing: of the --n copies, those that select the class (default: the card's, 8)",
    )
    g.add_argument(
        "--alpha",
        type=positive_float,
        default=None,
        help="randomized smoothing: test and bound failure probability (default: the card's, 0.05)",
    )
    add_certified_detection(g)
    g.add_argument(
        "--noise-seed",
        "--seed",
        dest="noise_seed",
        type=noise_seed,
        default=0,
        metavar="N",
        help="seed of the transform and smoothing noise; each window's noise is keyed by its start, "
        "so the same audio gives the same verdict (-1: a random seed; default: 0, what "
        "'serve --noise-seed 0' uses)",
    )
    return p


def output_options() -> argparse.ArgumentParser:
    """``--json --fail-on-flag --quiet``: how verdicts are printed (``check``, ``stream``, ``mic``)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("output")
    g.add_argument(
        "--json",
        action="store_true",
        help="one JSON verdict per line on stdout (default: one text line per verdict)",
    )
    g.add_argument(
        "--fail-on-flag",
        action="store_true",
        help="exit with status 3 when any window is flagged (default: 0)",
    )
    g.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar or summary on stderr; errors are still printed (default: both shown; "
        "the progress bar only on a terminal)",
    )
    return p


def connection_options() -> argparse.ArgumentParser:
    """``--server --ca --cert --key --token-file``: how clients reach a server."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection")
    g.add_argument(
        "--server",
        default=None,
        metavar="HOST:PORT",
        help=f"server address (default: {DEFAULT_SERVER}; models without it lists the embedded models)",
    )
    g.add_argument(
        "--ca",
        type=Path,
        default=None,
        metavar="PEM",
        help="CA certificate to verify the server; enables TLS (default: plaintext)",
    )
    g.add_argument(
        "--cert",
        type=Path,
        default=None,
        metavar="PEM",
        help="client certificate for mutual TLS (default: none)",
    )
    g.add_argument(
        "--key", type=Path, default=None, metavar="PEM", help="client key for mutual TLS (default: none)"
    )
    g.add_argument(
        "--token-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="file holding the bearer token sent as 'authorization: Bearer <token>' (default: none)",
    )
    return p


def _remote_args(p: argparse.ArgumentParser, *, audio: bool = True, video: bool = False) -> None:
    """What ``stream``, ``mic`` and ``camera`` send besides the detector: model, interim results,
    and how samples (``--encoding``) or frames (``--pixel-format``) travel."""
    g = p.add_argument_group("stream")
    g.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help="model name on the server, as 'avsentry models --server' lists (default: the "
        "server's default model; for video, the server's default video model)",
    )
    g.add_argument(
        "--interim",
        action="store_true",
        help="also print quick raw-only interim verdicts (default: final verdicts only)",
    )
    g.add_argument(
        "--reconnect-s",
        type=non_negative_float,
        default=30.0,
        metavar="S",
        help="when the server dies or drains mid-stream, reconnect (to another replica behind the "
        "same address) for up to S seconds and resume at the first window without a verdict, "
        "resending its input: no window lost or repeated; 0 = fail at once (default: 30)",
    )
    if audio:
        g.add_argument(
            "--encoding",
            choices=("float32", "pcm16"),
            default="float32",
            help="audio sample encoding on the wire: float32 sends exactly the decoded samples (what "
            "check judges), pcm16 half the bytes (default: float32)",
        )
    if video:
        g.add_argument(
            "--pixel-format",
            choices=("jpeg", "rgb24", "i420"),
            default="jpeg",
            help="video frames on the wire: jpeg (quality 90, compact), rgb24 (exact, what check "
            "judges), i420 (YUV 4:2:0, half of rgb24) (default: jpeg)",
        )


# -- the parser -----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avsentry",
        description="Guard voice recognizers against adversarial examples: codec, squeezing and "
        "randomized-smoothing defences with a calibrated disagreement detector.",
        epilog="Exit status: 0 ok, 1 error, 2 bad command line, 3 a window was flagged (--fail-on-flag).",
    )
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    model = model_options()
    detector = detector_options()
    offline = offline_detector_options()
    output = output_options()
    connection = connection_options()

    p = sub.add_parser(
        "check",
        parents=[model, detector, offline, output],
        help="offline verdicts for each window of audio files (or clip of video files), no server",
        description="Decode each file at its own rate and channels, cut it into windows exactly "
        "as the server does (downmix, resample to the model's rate, a model window every "
        "--hop-ms, the last one zero-padded; for a video model: frames scaled to the model's size "
        "and brought to its frame rate, a clip every --hop-ms, the last one padded with black), "
        "judge each window raw, after each transform and under randomized smoothing, and print "
        "one verdict per window, in the schema of 'stream --json'. A summary ('N files, W "
        "windows, K flagged') ends on stderr, with a progress bar on a terminal for files of 30 s "
        "and more.",
    )
    p.add_argument(
        "files",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="WAV, FLAC, MP3... for an audio model; MP4, AVI, MKV, WebM, GIF... for a video model "
        "(anything FFmpeg decodes)",
    )
    add_allow_uncalibrated(p, default=False)

    p = sub.add_parser(
        "serve",
        parents=[model, detector],
        help="run the gRPC guard service",
        description="Serve avsentry.v1.Guard (plus grpc.health.v1 and reflection). With no "
        "options it serves the embedded digits model in plaintext on 127.0.0.1:50051. "
        "Settings come from --config (TOML, every key documented in stream/config.py) and these "
        "flags, which win; a flag not given keeps the file's value, or the default shown. The "
        "model and detector flags set the default model and its default defence.",
    )
    p.add_argument("--config", type=Path, metavar="TOML", help="configuration file (default: none)")
    add_allow_uncalibrated(p, default=None)
    g = p.add_argument_group("listening")
    g.add_argument("--address", help="listen address (default: 127.0.0.1; others need TLS or --insecure)")
    g.add_argument("--port", type=int, help="listen port (default: 50051; 0 picks a free one)")
    g.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow plaintext on a non-loopback address (default: refused)",
    )
    g.add_argument(
        "--max-streams", type=positive_int, help="open StreamAudio and CheckAudio calls (default: 64)"
    )
    g.add_argument(
        "--grace-s",
        type=non_negative_float,
        metavar="S",
        help="on SIGINT/SIGTERM, seconds open calls get to finish (default: 10)",
    )
    g = p.add_argument_group("defence policy")
    g.add_argument(
        "--lock",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="clients may only strengthen the default defence (default: --lock)",
    )
    g.add_argument(
        "--noise-seed",
        type=noise_seed,
        metavar="N",
        help="-1: a secret random seed per start and fresh noise per stream; >= 0: reproducible "
        "noise, the same verdicts as 'check --noise-seed N' (default: -1)",
    )
    g = p.add_argument_group("capacity and batching")
    g.add_argument(
        "--max-load",
        type=non_negative_float,
        metavar="SHARE",
        help="admit a call only while committed detector work stays under this share of the "
        "measured throughput, in [0, 1]; 0 = no admission control (default: 0.85)",
    )
    g.add_argument("--max-batch", type=positive_int, help="windows per device batch (default: 64)")
    g.add_argument(
        "--max-wait-ms",
        type=non_negative_float,
        metavar="MS",
        help="once a worker is free, longest wait for more windows to batch with (default: 0; on a GPU a "
        "few ms can pay)",
    )
    g.add_argument("--workers", type=positive_int, help="batches in flight (default: 2)")
    g.add_argument(
        "--inference",
        type=inference_engine,
        metavar="local|ray[=ADDRESS]",
        help="where detectors run: local, in this process; ray, on a Ray Serve inference pool "
        "(the ray extra) in a local Ray instance this server starts; ray=ADDRESS, on the pool app "
        "already deployed on that cluster, e.g. ray=auto (default: local)",
    )
    g.add_argument(
        "--torch-threads",
        type=int,
        help="torch intra-op threads (default: 1; 0 = torch's default, all cores)",
    )
    g = p.add_argument_group("logging and metrics")
    g.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), help="log level (default: info)"
    )
    g.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="one line per event, key=value text or JSON (default: text)",
    )
    g.add_argument(
        "--metrics-port", type=int, help="Prometheus /metrics on this port of 127.0.0.1 (default: 0, off)"
    )
    g = p.add_argument_group("security")
    g.add_argument("--tls-cert", type=Path, metavar="PEM", help="server certificate (default: plaintext)")
    g.add_argument("--tls-key", type=Path, metavar="PEM", help="server key (default: none)")
    g.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="PEM",
        help="require client certificates signed by this CA, mutual TLS (default: none)",
    )
    g.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="require 'authorization: Bearer <token>', token read from this file (default: none)",
    )

    p = sub.add_parser(
        "stream",
        parents=[detector, output, connection],
        help="stream an audio or video file to a server at real time, print verdicts live",
        description="Stream a file at its native rate and channels (or frame size and rate) to a "
        "server, paced at --rate x real time, and print each verdict as it comes back (the "
        "schema of 'check --json'); a summary ('W windows, K flagged') ends on stderr. A file "
        "with video and no audio (or with --model naming a video model) streams its frames to "
        "StreamVideo, one verdict per clip; anything else streams its audio.",
    )
    p.add_argument(
        "file",
        type=Path,
        metavar="FILE",
        help="WAV, FLAC, MP3..., or MP4, MKV, AVI, WebM, GIF (anything FFmpeg decodes)",
    )
    p.add_argument(
        "--rate",
        type=non_negative_float,
        default=1.0,
        help="pace: 1 = real time, 2 = twice as fast, 0 = unpaced (default: 1)",
    )
    _remote_args(p, video=True)

    p = sub.add_parser(
        "mic",
        parents=[detector, output, connection],
        help="stream a microphone to a server, print verdicts live",
        description="Capture from an input device at its native rate and stream it to a server; "
        "print each verdict as it comes back. Ctrl-C (or --seconds) ends it with a summary on "
        "stderr.",
    )
    g = p.add_argument_group("capture")
    g.add_argument("--list-devices", action="store_true", help="list input devices and exit")
    g.add_argument(
        "--input-device", default=None, metavar="INDEX|NAME", help="input device (default: the system's)"
    )
    g.add_argument(
        "--samplerate",
        type=positive_int,
        default=None,
        metavar="HZ",
        help="capture rate in Hz (default: the device's native rate)",
    )
    g.add_argument("--channels", type=positive_int, default=1, help="channels to capture (default: 1)")
    g.add_argument(
        "--seconds",
        type=positive_float,
        default=None,
        help="stop after this many seconds of audio (default: until Ctrl-C)",
    )
    g.add_argument(
        "--buffer-ms",
        type=positive_int,
        default=2000,
        metavar="MS",
        help="capture queue in ms; the oldest audio past it is dropped and counted (default: 2000)",
    )
    _remote_args(p)

    p = sub.add_parser(
        "camera",
        parents=[detector, output, connection],
        help="stream a webcam (or any FFmpeg video device) to a server, print verdicts live",
        description="Capture frames from a video device through FFmpeg (PyAV) and stream them to "
        "a server's StreamVideo; print each clip's verdict as it comes back. Ctrl-C (or "
        "--seconds) ends it with a summary on stderr. Without a camera, '--input-format lavfi "
        "--input-device testsrc2=size=320x240:rate=25' streams FFmpeg's virtual test source.",
    )
    g = p.add_argument_group("capture")
    g.add_argument(
        "--input-device",
        default="/dev/video0",
        metavar="DEVICE",
        help="the device, as --input-format takes it (default: /dev/video0)",
    )
    g.add_argument(
        "--input-format",
        default="v4l2",
        metavar="FORMAT",
        help="FFmpeg input format: v4l2, lavfi, x11grab... (default: v4l2)",
    )
    g.add_argument(
        "--video-size",
        default=None,
        metavar="WxH",
        help="frame size to ask the device for, e.g. 640x480 (default: the device's)",
    )
    g.add_argument(
        "--framerate",
        type=positive_float,
        default=None,
        metavar="FPS",
        help="frame rate to ask the device for (default: the device's)",
    )
    g.add_argument(
        "--seconds",
        type=positive_float,
        default=None,
        help="stop after this many seconds of video (default: until Ctrl-C)",
    )
    _remote_args(p, audio=False, video=True)

    p = sub.add_parser(
        "models",
        parents=[connection],
        help="list the embedded models, or a server's models (--server)",
        description="List the models embedded in this installation with their calibration, or "
        "with --server the models a server serves (its ListModels call) with their default "
        "defence.",
    )
    p.add_argument("--json", action="store_true", help="a JSON list on stdout (default: one line per model)")

    p = sub.add_parser(
        "demo",
        help="serve the default model and stream the bundled clean and adversarial clips",
        description="Start a server on a free local port with the embedded model, stream the "
        "bundled clean clip and then the adversarial one through it at real time (or --rate), "
        "and print each verdict.",
    )
    p.add_argument(
        "--rate",
        type=non_negative_float,
        default=1.0,
        help="pace: 1 = real time, 0 = unpaced (default: 1)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")

    p = sub.add_parser(
        "train",
        help="synthesise data and train the default digit recognizer",
        description="Train the digit recognizer: from scratch, the embedded model v3 (digits; "
        "digits-v4 is v3 fine-tuned twice with --init, recipe in the README): build the "
        "corpus (if --data is absent or was made by another recipe) from espeak-ng, flite and "
        "festival's English, Italian, Czech and Finnish voices, the neural Piper voice joe, and"
        " real recordings of people speaking Spanish, French, Italian and Russian (Debian's "
        "asterisk prompt packages) as other speech; train with simulated rooms, babble, "
        "telephone codecs and speaker warps; evaluate on held-out voices and speakers per "
        "source at 16 kHz and through an 8 kHz telephone round trip, on connected digits, with "
        "a confusion-matrix plot; export ONNX, calibrate the detector and write a model card. "
        "About 35 minutes on 2 CPU cores.",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=Path("data/synth/clips.npz"),
        help="corpus, built if absent or stale (default: data/synth/clips.npz)",
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs/digits"), help="output directory (default: runs/digits)"
    )
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: 5000)")
    p.add_argument("--batch-size", type=int, default=None, help="windows per step (default: 128)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 3e-3)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    p.add_argument(
        "--synth-scale",
        type=float,
        default=1.0,
        help="fraction of the corpus recipe to synthesise, for quick trials (default: 1)",
    )
    p.add_argument(
        "--leave-out",
        metavar="ENGINE",
        default=None,
        help="diagnostic: hold out every voice of one engine too (e.g. piper, the neural voice) and "
        "report it as held out; the model is for measuring, not for shipping",
    )
    g = p.add_argument_group("robust training")
    g.add_argument(
        "--adversarial",
        choices=("none", "fgsm", "pgd"),
        default=None,
        help="adversarial training on the waveform: fgsm, the mixed loss a*J(x) + (1-a)*J(x + "
        "eps*sign(grad J)) (Sallo et al.); pgd, the same with --adv-steps PGD steps (Madry et al.) "
        "(default: none)",
    )
    g.add_argument("--adv-alpha", type=float, default=None, help="weight a of the clean loss (default: 0.5)")
    g.add_argument(
        "--adv-snr-db",
        type=float,
        default=None,
        help="L-inf budget of the training attack, dB under each window's RMS (default: 30)",
    )
    g.add_argument("--adv-steps", type=int, default=None, help="PGD steps of --adversarial pgd (default: 3)")
    g.add_argument(
        "--waveform-noise-sigma",
        type=float,
        default=None,
        help="Gaussian noise on a share (--waveform-noise-prob) of the training windows, relative "
        "to each window's RMS (the waveform_rms smoothing representation; 1.0 is noise as loud as "
        "the speech), sigma drawn uniformly up to this: a base classifier for waveform_rms "
        "smoothing and certified detection (default: 0, off)",
    )
    g.add_argument(
        "--waveform-noise-prob",
        type=float,
        default=None,
        help="share of training windows that get the waveform noise (default: 0.5)",
    )
    g.add_argument(
        "--consistency-weight",
        type=float,
        default=None,
        help="consistency regularization (Jeong & Shin 2020): weight of the KL divergence between "
        "the model's prediction on each raw window, on noisy waveform_rms copies of it (sigma up to "
        "--waveform-noise-sigma) and their mean; it makes the raw label agree with the smoothed "
        "one, which lowers certified detection's clean flag rate (default: 0, off)",
    )
    g.add_argument(
        "--agc-rms",
        type=float,
        default=None,
        metavar="RMS",
        help="automatic gain control in the model: each window scaled to this RMS before its "
        "spectrogram (0.05 is -26 dBFS, the level waveform_rms smoothing plays its copies at), so "
        "the raw label does not depend on loudness and agrees with the smoothed one; weights "
        "from --init of a model without it carry over (default: none; digits-v4 was fine-tuned with 0.05)",
    )
    g.add_argument(
        "--init",
        type=Path,
        default=None,
        metavar="MODEL_PT",
        help="fine-tune from these weights (e.g. pipelines/models/digits/model.pt) instead of "
        "training from scratch; use with fewer --steps and a lower --lr",
    )
    p.add_argument("--no-calibrate", action="store_true", help="skip detector calibration")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser(
        "train-video",
        help="train the default video (action) recognizer on procedural clips",
        description="Reproduce the embedded 'actions' model: train ActionNet (a small 3D CNN on "
        "16-frame 112x112 clips) on fresh procedural clips of a shape moving left, right, up or "
        "down, rotating either way, growing, shrinking, bouncing, blinking, or standing still "
        "(_background_), drawn every step by a worker process (tools/videosynth.py); measure "
        "held-out accuracy on clips of another generator seed stream; export ONNX; calibrate "
        "the default video defence (H.264 and JPEG round trips, smoothing in pixel space) on a "
        "third stream; write a model card. About 20 minutes on 2 CPU cores.",
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs/actions"), help="output directory (default: runs/actions)"
    )
    p.add_argument("--steps", type=positive_int, default=1500, help="optimizer steps (default: 1500)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="clips per step (default: 32)")
    p.add_argument("--lr", type=positive_float, default=3e-3, help="peak learning rate (default: 3e-3)")
    p.add_argument("--seed", type=int, default=0, help="training seed, 0 to 999 (default: 0)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    p.add_argument(
        "--calibration-clips",
        type=positive_int,
        default=2200,
        help="clean clips the detector is calibrated (every other one) and tested on (default: 2200)",
    )
    p.add_argument("--no-calibrate", action="store_true", help="skip detector calibration")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser(
        "calibrate",
        parents=[model, detector, offline],
        help="calibrate a model's guard: the defence its accuracy survives and the threshold",
        description="With --clean DIR (your clean recordings, DIR/<label>/*.wav|flac|mp3...; "
        "--other DIR: speech or sounds that are none of the model's commands): judge every window "
        "the service would cut from them, measure the accuracy of the raw model, of each transform "
        "and of smoothing at several sigmas, keep the transforms and the largest sigma that stay "
        "within --tolerance of the raw accuracy (flags given here are kept as given), set the "
        "threshold for --target-fpr on half the recordings (per group of the manifest's label roles: "
        "commands, other, no_speech; each held with --confidence) and measure the FPR on the other "
        "half. It writes a new card (the manifest plus the calibrated detector) next to the "
        "manifest, NAME.card.json (runs/NAME/card.json for an embedded model), never over an "
        "existing file without --force, and a histogram of the clean scores. Without --clean it "
        "calibrates the digit model on the project's synthetic corpus (--data, built by "
        "'avsentry train'): held-out digits, other speech, real speech and background.",
    )
    p.add_argument(
        "--clean",
        type=Path,
        default=None,
        metavar="DIR",
        help="your clean labelled recordings, DIR/<label>/* (default: none, the digit corpus)",
    )
    p.add_argument(
        "--other",
        type=Path,
        default=None,
        metavar="DIR",
        help="recordings of speech or sounds that are none of the model's labels, any depth (default: none)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the new card (default: NAME.card.json next to the manifest)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing --out (default: refuse)")
    p.add_argument(
        "--tolerance",
        type=probability,
        default=0.05,
        help="with --clean: a transform or sigma is kept when its accuracy is at most this far under "
        "the raw model's (default: 0.05)",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=Path("data/synth/clips.npz"),
        help="without --clean: the digit corpus (default: data/synth/clips.npz, written by 'avsentry train')",
    )
    p.add_argument(
        "--target-fpr", type=probability, default=0.01, help="false-positive rate to hold (default: 0.01)"
    )
    p.add_argument(
        "--scoring",
        choices=("max", "conformal"),
        default="max",
        help="how distances become the score: max (the largest distance) or conformal (each "
        "defence's distance and the largest one as p-values against clean reference windows, "
        "Fisher-combined; README, 'Evaluation of the default model'; digit corpus only) "
        "(default: max)",
    )
    p.add_argument(
        "--confidence",
        type=float,
        default=0.95,
        help="probability that each group's FPR stays at or under the target over calibration "
        "sets (default: 0.95; 0: only its expectation, plain split conformal)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    attack_help = (
        "SPEC is NAME or NAME:key=value,... with NAME one of fgsm, fgm, bim, pgd, cw, deepfool, "
        "jsma, nes, sparse, adaptive (audio) or fgsm, fgm, bim, pgd, frame_saliency, adaptive "
        "(video); eps=0.002 or eps=4/255 (input units: samples, or pixels in [0, 1]) or eps=30db "
        "(perturbation at least 30 dB under each clip), norm=linf|l2, target=none|random|next|LABEL, "
        "and the attack's own parameters (steps=, restarts=, frame_saliency's mode=one_shot|"
        "iterative|refresh|frames and frames=0/5/9, ...; a wrong key lists the known ones). "
        "'adaptive' attacks the whole guard (BPDA through the codecs, H.264 included, EOT over "
        "the noise) as configured by the detector options."
    )
    clean = argparse.ArgumentParser(add_help=False)
    g = clean.add_argument_group("clean set")
    g.add_argument(
        "--clean",
        default="heldout",
        metavar="heldout|DIR",
        help="clean clips: 'heldout' (the digit model's held-out voices, synthesised here; the "
        "action model's held-out procedural clips) or a folder of your labelled recordings, "
        "DIR/<label>/*.wav|flac|mp3... (video: *.mp4|mkv|avi|webm|gif, the first clip of each) "
        "(default: heldout)",
    )
    g.add_argument("--clips", type=positive_int, default=40, help="clean clips to use (default: 40)")
    g.add_argument(
        "--seed", type=int, default=0, help="seed of targets, attacks and the clean set (default: 0)"
    )
    g.add_argument("--batch-size", type=positive_int, default=16, help="clips per attack batch (default: 16)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser(
        "attack",
        parents=[model, detector_options(hop=False), certified_detection_options(), clean],
        help="generate adversarial examples (WAV files or video clips + a JSONL manifest)",
        description="Attack the clean clips the model gets right, on the waveform through the "
        "model's own feature front end (or on the pixels of video clips), and write the "
        "adversarials with their clean originals (32-bit float WAVs; for video, the exact clip as "
        ".npy plus .mp4 and .gif to watch) and a manifest.jsonl (source, true label, target, "
        "attack, parameters, seed, success, L2, L-inf, L0, SNR dB, queries; frames changed for "
        "video). " + attack_help,
    )
    p.add_argument(
        "--attack",
        dest="attacks",
        action="append",
        metavar="SPEC",
        help="an attack; repeat for several (default: pgd:eps=30db; video: "
        "frame_saliency:mode=refresh,eps=8/255)",
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs/attacks"), help="output folder (default: runs/attacks)"
    )
    g = p.add_argument_group("black box over gRPC")
    g.add_argument(
        "--server",
        default=None,
        metavar="HOST:PORT",
        help="run nes against a running server, using only its verdicts (default: the local model)",
    )

    p = sub.add_parser(
        "evaluate",
        parents=[model, detector_options(hop=False), certified_detection_options(), clean],
        help="attack, judge and report: detection ROC/AUC, accuracy under attack, certified accuracy",
        description="Attack the clean set with each attack (or read adversarials an earlier "
        "'avsentry attack' wrote), judge clean and adversarial windows with the guard (in-process, "
        "or a running server with --server), and write report.md, report.json and plots: clean "
        "accuracy; per attack, success, accuracy under attack, guarded accuracy, evasion, "
        "detection AUC and TPR at 1 %% and 0.1 %% FPR (combined and per transform), SNR/L2/L-inf; "
        "certified accuracy of randomized smoothing per representation and sigma; certified "
        "detection. For a video model: the frames each attack changed, and a table of whether an "
        "H.264 round trip at CRF 18 to 43 restores the clean label (pixel-space certification; "
        "--server and --art are audio only). " + attack_help,
    )
    p.add_argument(
        "--attack",
        dest="attacks",
        action="append",
        metavar="SPEC",
        help="an attack; repeat for several (default: the standard suite, see --suite)",
    )
    p.add_argument(
        "--suite",
        choices=("standard", "quick", "none"),
        default="standard",
        help="attacks when no --attack is given: standard (every family, adaptive at 40/30/20 dB; "
        "video: fgsm, pgd, the three frame-saliency modes, adaptive at 4/255 and 8/255), quick "
        "(fgsm, pgd, adaptive at 30 dB; video: fgsm, frame saliency, adaptive at 4/255) or none "
        "(default: standard)",
    )
    p.add_argument(
        "--adversarial",
        type=Path,
        default=None,
        metavar="MANIFEST",
        help="judge the adversarials of this manifest.jsonl (from 'avsentry attack') instead of attacking",
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs/evaluation"), help="report folder (default: runs/evaluation)"
    )
    p.add_argument(
        "--server",
        default=None,
        metavar="HOST:PORT",
        help="judge with a running server's verdicts (CheckAudio) instead of the in-process detector",
    )
    p.add_argument(
        "--compare-model",
        default=None,
        metavar="NAME|MANIFEST",
        help="also report the perturbation ratio eps_r of this model over --model (DeepFool)",
    )
    p.add_argument(
        "--art",
        action="store_true",
        help="also run IBM ART's FGSM, PGD and Carlini-Wagner L2 on the same clips (needs the 'art' extra)",
    )
    g = p.add_argument_group("certification")
    g.add_argument(
        "--no-certify", action="store_true", help="skip certified accuracy and certified detection"
    )
    g.add_argument("--certify-clips", type=positive_int, default=40, help="clips to certify (default: 40)")
    g.add_argument(
        "--certify-n", type=positive_int, default=100, help="CERTIFY estimation copies n (default: 100)"
    )
    g.add_argument(
        "--certify-n0", type=positive_int, default=16, help="CERTIFY selection copies n0 (default: 16)"
    )
    g.add_argument(
        "--certify-sigmas",
        default="0.01,0.05,0.1,0.25,0.5",
        help="comma-separated sigmas (default: 0.01,0.05,0.1,0.25,0.5)",
    )
    g.add_argument(
        "--certify-representations",
        default="waveform,spectrogram,logmel",
        help="comma-separated representations (default: waveform,spectrogram,logmel; video: pixels)",
    )
    g.add_argument(
        "--certify-alpha",
        type=positive_float,
        default=0.001,
        help="CERTIFY failure probability (default: 0.001)",
    )
    g.add_argument(
        "--detection-sigmas",
        default="0.01,0.02,0.05,0.1",
        help="waveform sigmas of certified detection, '' for none (default: 0.01,0.02,0.05,0.1)",
    )

    p = sub.add_parser("bench", help="benchmarks (not tests)")
    bsub = p.add_subparsers(dest="bench", required=True, metavar="WHAT")
    b = bsub.add_parser(
        "core", parents=[model], help="inference, transforms and smoothing speed on 1 s windows"
    )
    b.add_argument("--repeat", type=int, default=5, help="timed repetitions per measurement (default: 5)")
    b.add_argument("--batch", type=int, default=32, help="windows per batch for raw inference (default: 32)")
    b = bsub.add_parser(
        "video",
        help="the H.264 defence against IBM ART's VideoCompression, and the video detector's throughput",
        description="Time the H.264 round trip (ours, in memory, at two presets) and IBM ART's "
        "VideoCompression (ffmpeg subprocess; needs tools/setup.sh --dev) on the same held-out "
        "action clips, then the whole video detector as serve runs it (2 workers, torch threads "
        "1, codecs in worker processes): clips/s and the real-time streams that makes.",
    )
    b.add_argument(
        "--model", default="actions", help="video model, embedded name or manifest (default: actions)"
    )
    b.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    b.add_argument("--clips", type=positive_int, default=32, help="clips per timed run (default: 32)")
    b.add_argument("--crf", type=int, default=28, help="H.264 constant rate factor for both (default: 28)")
    b.add_argument("--n", type=positive_int, default=16, help="smoothing copies per clip (default: 16)")
    b.add_argument("--batch", type=positive_int, default=8, help="clips per detector batch (default: 8)")
    b.add_argument("--repeat", type=positive_int, default=3, help="timed repetitions (default: 3)")
    b = bsub.add_parser(
        "replica",
        help="windows/s of one inference-pool replica (serve --inference ray), e.g. on a GPU",
        description="Time the work of one Ray Serve inference replica (avsentry.stream.pool) in "
        "this process, without Ray: the replica's InferenceWorker judging batches of isolated "
        "windows (the pool keeps no per-stream codec reuse), --concurrency calls at once as its "
        "@serve.batch runs them, for each smoothing n, with the model's defence and with "
        "smoothing alone. The figure sizes a pool: streams = replicas x windows/s x hop.",
    )
    b.add_argument("--model", default="digits", help="embedded name or manifest (default: digits)")
    b.add_argument("--backend", choices=("torch", "onnx"), default="torch", help="(default: torch)")
    b.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    b.add_argument(
        "--n", default="32,100", help="comma-separated smoothing copies per window (default: 32,100)"
    )
    b.add_argument("--batch", type=positive_int, default=64, help="windows per detector call (default: 64)")
    b.add_argument(
        "--concurrency",
        type=positive_int,
        default=2,
        help="detector calls at once, as a replica runs them (default: 2)",
    )
    b.add_argument(
        "--codec-processes",
        type=int,
        default=-1,
        help="codec worker processes (default: -1, one per CPU; 0: threads)",
    )
    b.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads (default: 1)")
    b.add_argument("--repeat", type=positive_int, default=3, help="timed repetitions (default: 3)")
    b = bsub.add_parser(
        "stream", help="latency and capacity of a local server under concurrent real-time streams"
    )
    b.add_argument(
        "--streams", default="1,8,16,24,32", help="comma-separated stream counts (default: 1,8,16,24,32)"
    )
    b.add_argument("--seconds", type=float, default=20.0, help="audio per stream in s (default: 20)")
    b.add_argument(
        "--n", type=int, default=None, help="smoothing copies per window (default: 32; with --video 16)"
    )
    b.add_argument(
        "--video",
        action="store_true",
        help="stream 112x112 video at 25 fps to the embedded action model instead of speech "
        "(default: speech)",
    )
    b.add_argument("--transforms", default=None, help="transform specs (default: the model's calibrated set)")
    b.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    b.add_argument("--backend", choices=("torch", "onnx"), default="torch", help="(default: torch)")
    b.add_argument("--workers", type=int, default=2, help="server batch workers (default: 2)")
    b.add_argument(
        "--torch-threads", type=int, default=None, help="server torch threads (default: serve's, 1)"
    )
    b.add_argument("--max-batch", type=int, default=64, help="windows per batch (default: 64)")
    b.add_argument("--max-wait-ms", type=float, default=0.0, help="server batch fill wait in ms (default: 0)")
    b.add_argument(
        "--p99-ms", type=float, default=250.0, help="latency budget for 'real time' (default: 250)"
    )
    b.add_argument(
        "--sync",
        action="store_true",
        help="start all streams at the same instant (worst case) instead of spread over one hop "
        "(default: spread)",
    )
    b.add_argument(
        "--max-load",
        type=float,
        default=None,
        help="the local server's admission limit, share of its measured throughput (default: serve's, 0.85; "
        "0 = admit every stream)",
    )
    b.add_argument(
        "--noise-floor-db",
        type=float,
        default=-60.0,
        help="white noise under the speech, dBFS RMS, as a microphone has (default: -60; -200 or less: "
        "none, digital silence between words, which flatters the figures)",
    )
    b.add_argument(
        "--target",
        default=None,
        metavar="HOST:PORT",
        help="benchmark the server (or load balancer) at this address instead of starting one",
    )
    b.add_argument("--json", action="store_true", help="also print a JSON summary")
    return parser


# -- dispatch -------------------------------------------------------------------------------
_LOCAL_MODEL_DEFAULTS = {"model": "digits", "backend": "torch", "device": "auto"}


def _resolve_local_model(args: argparse.Namespace) -> None:
    """``check`` and ``bench core`` run the model here: "not given" means digits/torch/auto."""
    for name, value in _LOCAL_MODEL_DEFAULTS.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)


def _audio_only(args: argparse.Namespace, what: str = "") -> None:
    """Commands (or options) not built for video yet say so, instead of failing deep inside."""
    from avsentry.pipelines.recognizers import read_manifest

    spec = read_manifest(args.model).spec
    if spec.modality != "audio":
        raise CliError(
            f"model {spec.name!r} takes {spec.modality}; {what or args.command} supports audio models "
            "so far (for video: check, attack, evaluate, train-video, bench video)"
        )


def _check(args: argparse.Namespace) -> int:
    from avsentry.stream.offline import run_check

    _resolve_local_model(args)
    return run_check(args)


def _serve(args: argparse.Namespace) -> int:
    from avsentry.stream.commands import run_serve

    return run_serve(args)


def _stream(args: argparse.Namespace) -> int:
    from avsentry.stream.commands import run_stream

    return run_stream(args)


def _mic(args: argparse.Namespace) -> int:
    from avsentry.stream.commands import run_mic

    return run_mic(args)


def _camera(args: argparse.Namespace) -> int:
    from avsentry.stream.commands import run_camera

    return run_camera(args)


def _demo(args: argparse.Namespace) -> int:
    from avsentry.stream.commands import run_demo

    return run_demo(args)


def _train(args: argparse.Namespace) -> int:
    from avsentry.tools.train import run_cli

    return run_cli(args)


def _train_video(args: argparse.Namespace) -> int:
    from avsentry.pipelines.recognizers.base import resolve_device
    from avsentry.tools.train_video import VideoTrainConfig, calibrate, run

    device = str(resolve_device(args.device))
    cfg = VideoTrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    card = run(args.out, cfg, device=device, quiet=args.quiet)
    acc = card["heldout_accuracy"]
    print(
        f"held-out top-1 {acc['top1']:.4f} on {acc['clips']} clips; "
        f"training {card['training']['seconds']:.0f} s"
    )
    if not args.no_calibrate:
        det = calibrate(args.out / "card.json", clips=args.calibration_clips, device=device, quiet=args.quiet)
        test = det["test"]
        print(
            f"threshold {det['threshold']:.3f}; clean FPR {test['fpr']:.2%} on {test['n']} test clips "
            f"(95% upper bound {test['fpr_upper95']:.2%}); path accuracy "
            + ", ".join(f"{k} {v:.3f}" for k, v in det["path_accuracy"].items())
        )
    print(f"wrote {args.out / 'card.json'}")
    return EXIT_OK


def _calibrate(args: argparse.Namespace) -> int:
    from avsentry.pipelines.detection import DetectorConfig
    from avsentry.pipelines.recognizers import read_manifest
    from avsentry.stream.offline import detector_config_overrides
    from avsentry.tools.calibrate import run_cli
    from avsentry.tools.calibrate_recordings import calibrate_recordings, report

    _resolve_local_model(args)
    _audio_only(args)
    if args.threshold is not None:
        raise CliError("calibrate sets the threshold; --threshold is for check and serve")
    manifest = read_manifest(args.model)
    cfg, _ = DetectorConfig.from_card(manifest.detector, **detector_config_overrides(args))
    if args.clean is None:
        if args.other is not None:
            raise CliError("--other needs --clean (your clean recordings)")
        return run_cli(args, cfg)
    if args.scoring != "max":
        raise CliError("--scoring conformal calibrates on the digit corpus only; use max with --clean")
    flags = {"transforms": args.transforms, "sigma": args.sigma, "smoothing": args.no_smoothing}
    given = {name for name, flag in flags.items() if flag not in (None, False)}
    card, out = calibrate_recordings(
        args.model,
        args.clean,
        cfg,
        other=args.other,
        given=given,
        out=args.out,
        overwrite=args.force,
        target_fpr=args.target_fpr,
        confidence=args.confidence or None,
        tolerance=args.tolerance,
        hop_ms=500 if args.hop_ms is None else args.hop_ms,
        backend=args.backend,
        device=args.device,
        progress=not args.quiet,
    )
    report(card, out)
    return EXIT_OK


def _offline_detector(args: argparse.Namespace) -> Any:
    """``attack`` and ``evaluate``: the model's calibrated detector here, with the detector flags
    applied and the service's default noise seed (0)."""
    from avsentry.stream.offline import detector_from_args

    _resolve_local_model(args)
    if args.server:
        _audio_only(args, f"{args.command} --server")
    if getattr(args, "art", False):
        _audio_only(args, f"{args.command} --art")
    args.noise_seed = 0
    detector, _ = detector_from_args(args)
    return detector


def _attack(args: argparse.Namespace) -> int:
    from avsentry.tools.attackgen import run_cli

    detector = _offline_detector(args)
    oracle = None
    if args.server:
        from avsentry.stream.client import GuardClient
        from avsentry.stream.oracle import GuardOracle

        oracle = GuardOracle(GuardClient(args.server, timeout_s=60.0), model=detector.recognizer.spec.name)
    return run_cli(args, detector, oracle=oracle)


def _evaluate(args: argparse.Namespace) -> int:
    from avsentry.tools.evaluate import run_cli

    detector = _offline_detector(args)
    guard = None
    if args.server:
        from avsentry.stream.client import GuardClient
        from avsentry.stream.oracle import RemoteGuard

        guard = RemoteGuard(GuardClient(args.server, timeout_s=120.0), model=detector.recognizer.spec.name)
    return run_cli(args, detector, guard=guard, argv=sys.argv)


def _bench(args: argparse.Namespace) -> int:
    if args.bench == "video":
        from avsentry.tools.bench import run_video_cli

        return run_video_cli(args)
    if args.bench == "replica":
        from avsentry.stream.bench import run_replica_cli

        return run_replica_cli(args)
    if args.bench == "stream":
        from avsentry.stream.bench import bench_stream

        bench_stream(args)
        return EXIT_OK
    from avsentry.tools.bench import run_cli

    _resolve_local_model(args)
    _audio_only(args)
    return run_cli(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "check": _check,
    "serve": _serve,
    "stream": _stream,
    "mic": _mic,
    "camera": _camera,
    "models": lambda args: _models(args),
    "demo": _demo,
    "train": _train,
    "train-video": _train_video,
    "calibrate": _calibrate,
    "attack": _attack,
    "evaluate": _evaluate,
    "bench": _bench,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("avsentry: interrupted", file=sys.stderr)
        return 130
    except (CliError, FileNotFoundError, ValueError, RuntimeError, OSError) as e:
        print(f"avsentry {args.command}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # a gRPC status or an audio-source error from a client command: one line
        if "grpc" in sys.modules:
            import grpc

            if isinstance(e, grpc.RpcError):
                details = e.details()  # type: ignore[attr-defined]
                print(f"avsentry {args.command}: error: {e.code().name}: {details}", file=sys.stderr)  # type: ignore[attr-defined]
                return EXIT_ERROR
        if "avsentry.stream.sources" in sys.modules:
            from avsentry.stream.sources import SourceError

            if isinstance(e, SourceError):
                print(f"avsentry {args.command}: error: {e}", file=sys.stderr)
                return EXIT_ERROR
        raise


# -- avsentry models ------------------------------------------------------------------------
def _models(args: argparse.Namespace) -> int:
    """The embedded models, or with ``--server`` a server's (ListModels), in one row schema."""
    if args.server is None:
        rows = _embedded_models()
    else:
        from avsentry.stream.client import GuardClient, model_info_to_dict

        token = _read_token(args.token_file)
        with GuardClient(
            args.server, ca=args.ca, cert=args.cert, key=args.key, token=token, timeout_s=30
        ) as c:
            rows = [model_info_to_dict(m) for m in c.list_models()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(_model_line(r))
    return EXIT_OK


def _read_token(path: Path | None) -> str | None:
    return None if path is None else Path(path).read_text(encoding="utf-8").strip()


def _embedded_models() -> list[dict]:
    from avsentry.pipelines.detection import DetectorConfig
    from avsentry.pipelines.recognizers import embedded_models, read_manifest
    from avsentry.pipelines.recognizers.manifest import DEFAULT_MODEL

    rows = []
    for name in sorted(embedded_models(), key=lambda n: n != DEFAULT_MODEL):  # the default first
        m = read_manifest(name)
        det = m.detector
        cfg, calibrated = DetectorConfig.from_card(det)
        s = cfg.smoothing
        rows.append(
            {
                "name": m.spec.name,
                "modality": m.spec.modality,
                "labels": list(m.spec.labels),
                **_input_fields(m.spec),
                "threshold": cfg.threshold,
                "target_fpr": det.get("target_fpr"),
                "measured_fpr": det.get("measured_fpr") if calibrated else None,
                "transforms": list(cfg.transforms),
                "smoothing_n": s.n if s else 0,
                "smoothing_sigma": s.sigma if s else 0.0,
                "smoothing_representation": s.representation if s else "",
                "backends": sorted(m.backends),
                "heldout_accuracy": _heldout(m.extra.get("heldout_accuracy") or {}),
            }
        )
    return rows


def _heldout(accuracy: dict) -> float | None:
    """A card's overall held-out top-1 (``overall`` in the digits card, ``top1`` in the actions one)."""
    value = accuracy.get("overall", accuracy.get("top1"))
    return None if value is None else float(value)


def _input_fields(spec: Any) -> dict:
    """What a model takes, per modality (the rows of ``avsentry models``)."""
    if spec.modality == "video":
        v = spec.video
        return {"frames": v.frames, "height": v.height, "width": v.width, "fps": v.fps}
    return {"sample_rate_hz": spec.sample_rate_hz, "window_samples": spec.window_samples}


def _model_line(r: dict) -> str:
    smoothing = (
        f"smoothing n={r['smoothing_n']} sigma={r['smoothing_sigma']:g} {r['smoothing_representation']}"
        if r["smoothing_n"]
        else "no smoothing"
    )
    threshold = "none" if r["threshold"] is None else f"{r['threshold']:.3f}"
    parts = [
        f"{r['name']}{' (default)' if r.get('is_default') else ''}: {len(r['labels'])} labels "
        f"({', '.join(r['labels'])})",
        f"{r['frames']} frames of {r['width']}x{r['height']} at {r['fps']:g} fps"
        if "frames" in r
        else f"{r['sample_rate_hz']} Hz, window {r['window_samples']} samples",
        f"defence {','.join(r['transforms']) or 'no transforms'}; {smoothing}",
        f"threshold {threshold} (target FPR {r['target_fpr']}, measured {r['measured_fpr']})",
    ]
    if "backends" in r:
        parts.append(f"backends {'/'.join(r['backends'])}, held-out top-1 {r['heldout_accuracy']}")
    return " | ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
