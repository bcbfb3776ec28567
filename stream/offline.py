"""``avsentry check``: a verdict for every window of audio files (or clip of video files), in
process, without a server.

A file is judged exactly as the server judges it when the file is streamed (``avsentry stream
FILE``): decoded at its own rate and channels by :class:`~avsentry.pipelines.audio_io.AudioFile`,
cut by a :class:`~avsentry.pipelines.session.StreamSession` (downmix, resample to the model's
rate, a window every hop, the last one zero-padded), judged by the
:class:`~avsentry.pipelines.detection.Detector` with each window's noise keyed by its start, and
rendered as :class:`~avsentry.pipelines.report.VerdictRecord` s, so ``check --json`` prints the
fields ``stream --json`` prints, and a server started with ``--noise-seed N`` gives the verdicts
``check --noise-seed N`` gives.

:class:`VerdictPrinter` is the one place verdicts become lines on stdout, for ``check`` here and
for the streaming clients (:mod:`avsentry.stream.commands`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from avsentry.pipelines.audio_io import AudioFile, AudioReadError
from avsentry.pipelines.detection import Detector, DetectorConfig
from avsentry.pipelines.recognizers import load_recognizer, read_manifest
from avsentry.pipelines.report import VerdictRecord, format_line, from_verdict, to_dict, window_fields
from avsentry.pipelines.session import Window, open_session
from avsentry.pipelines.types import ModelSpec
from avsentry.pipelines.video_io import VideoFile, VideoReadError

EXIT_FLAGGED = 3
# Files at least this long (declared duration, in seconds) get a progress bar on a terminal.
PROGRESS_MIN_S = 30.0
# Windows judged per detector call.
BATCH_WINDOWS = 32


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _print_line(line: str) -> None:
    print(line, flush=True)


class VerdictPrinter:
    """Prints verdict records on stdout, one line each, and counts them.

    Args:
        as_json: One JSON object per line (:func:`~avsentry.pipelines.report.to_dict`) instead of
            the text line (:func:`~avsentry.pipelines.report.format_line`).
        prefix: Put before each text line.

    Attributes:
        write: Writes one line (default: ``print`` to stdout, flushed); replaceable, e.g. to
            print around a progress bar.
        windows / flagged: Final verdicts printed, and how many of them were flagged (interim
            verdicts are printed but not counted).
    """

    def __init__(self, *, as_json: bool, prefix: str = "") -> None:
        self.as_json = as_json
        self.prefix = prefix
        self.write: Callable[[str], None] = _print_line
        self.windows = 0
        self.flagged = 0

    def __call__(self, record: VerdictRecord) -> None:
        if record.is_final:
            self.windows += 1
            self.flagged += record.flagged
        line = json.dumps(to_dict(record)) if self.as_json else format_line(record, prefix=self.prefix)
        self.write(line)

    def summary(self) -> str:
        """``"W windows, K flagged"``."""
        return f"{plural(self.windows, 'window')}, {self.flagged} flagged"

    def exit_status(self, *, fail_on_flag: bool) -> int:
        """3 when a window was flagged and ``fail_on_flag``, else 0."""
        return EXIT_FLAGGED if fail_on_flag and self.flagged else 0


def detector_config_overrides(args: argparse.Namespace) -> dict:
    """The detector flags of ``check``/``calibrate`` as ``DetectorConfig.from_card`` overrides
    (``--transforms`` arrives parsed, a tuple of specs; ``--noise-seed -1`` draws a random seed)."""
    transforms = getattr(args, "transforms", None)
    seed = getattr(args, "noise_seed", 0)
    return dict(
        transforms=None if transforms is None else list(transforms),
        n=getattr(args, "n", None),
        n0=getattr(args, "n0", None),
        sigma=getattr(args, "sigma", None),
        representation=getattr(args, "representation", None),
        alpha=getattr(args, "alpha", None),
        smoothing=False if getattr(args, "no_smoothing", False) else None,
        threshold=getattr(args, "threshold", None),
        certified=getattr(args, "certified_detection", None),
        seed=secrets.randbits(62) if seed == -1 else seed,
    )


def detector_from_args(args: argparse.Namespace) -> tuple[Detector, bool]:
    """The detector for ``--model``: the card's calibrated defence with the flags applied, and
    whether its threshold was calibrated for exactly that defence."""
    manifest = read_manifest(args.model)
    cfg, calibrated = DetectorConfig.from_card(manifest.detector, **detector_config_overrides(args))
    rec = load_recognizer(args.model, backend=args.backend, device=args.device)
    return Detector(rec, cfg), calibrated


def uncalibrated_warning(model: str) -> str:
    return (
        f"model {model!r} is uncalibrated: there is no threshold, so nothing is flagged by score "
        "(every verdict says so); calibrate it: avsentry calibrate --model MANIFEST --clean DIR"
    )


def refuse_uncalibrated(model: str, threshold: float | None, *, allowed: bool, flag: str) -> None:
    """Raise unless the model has a threshold or running it without one was ``allowed``.

    Raises:
        ValueError: the model is uncalibrated and not allowed; the message says what to do.
    """
    if threshold is None and not allowed:
        raise ValueError(
            f"model {model!r} has no calibrated threshold, so this guard would flag nothing. Calibrate "
            f"it on your clean recordings (avsentry calibrate --model MANIFEST --clean DIR, then use the "
            f"card it writes), give a --threshold, or pass {flag} to run it anyway"
        )


def hop_samples(hop_ms: float, *, rate_hz: float, window: int, unit: str = "sample") -> int:
    """A hop in model-rate steps (audio samples, video frames), as the server computes it.

    Raises:
        ValueError: a hop under one step or longer than the window (it would skip input).
    """
    hop = round(hop_ms * rate_hz / 1000)
    per_s = "Hz" if unit == "sample" else "fps"
    if hop > window:
        raise ValueError(
            f"--hop-ms {hop_ms:g} is longer than the model's {1000 * window / rate_hz:g} ms window "
            f"({window} {unit}s at {rate_hz:g} {per_s}): windows would skip input"
        )
    if hop < 1:
        raise ValueError(f"--hop-ms {hop_ms:g} is shorter than one {unit} at {rate_hz:g} {per_s}")
    return hop


AUDIO_HOP_MS = 500  # the server's default hop too (stream/config.py), and calibrate's


def default_hop_ms(spec: ModelSpec) -> float:
    """500 ms for audio, as the server and ``calibrate`` use, so ``check`` cuts the windows they
    cut; a whole clip for video (consecutive clips)."""
    return AUDIO_HOP_MS if spec.modality == "audio" else 1000 * spec.window_s


def model_hop(spec: ModelSpec, hop_ms: float | None) -> int:
    """``--hop-ms`` (default :func:`default_hop_ms`) in the model's steps."""
    return hop_samples(
        default_hop_ms(spec) if hop_ms is None else hop_ms,
        rate_hz=spec.input.rate_hz,
        window=spec.window_shape[0],
        unit="sample" if spec.modality == "audio" else "frame",
    )


@contextlib.contextmanager
def _stream_of(
    spec: ModelSpec, path: Path, hop: int
) -> Iterator[tuple[Any, Iterator[np.ndarray], float, float | None]]:
    """A session cutting the file into the model's windows, the file's blocks, its rate (Hz or
    fps) and its declared duration."""
    if spec.modality == "video":
        with VideoFile(path) as reader:
            info = reader.info
            session = open_session(spec, rate_hz=info.fps, hop=hop, frame_size=(info.height, info.width))
            yield session, reader.blocks(), info.fps, info.duration_s
        return
    with AudioFile(path) as audio:
        session = open_session(spec, rate_hz=audio.info.sample_rate_hz, hop=hop, channels=audio.info.channels)
        yield session, audio.blocks(), audio.info.sample_rate_hz, audio.info.duration_s


def check_file(
    detector: Detector,
    path: Path,
    *,
    hop: int,
    calibrated: bool,
    batch: int = BATCH_WINDOWS,
    on_progress: Callable[[float, float | None], None] | None = None,
) -> Iterator[VerdictRecord]:
    """The verdict of every window (audio) or clip (video) of one file, in order, cut and keyed
    as the server does.

    Args:
        detector: Judges the windows; its config's threshold is the one in force.
        path: Any file FFmpeg decodes: audio for an audio model, video for a video model.
        hop: Hop in model-rate samples or frames (see :func:`model_hop`).
        calibrated: Whether the threshold was calibrated for the detector's config.
        batch: Windows per detector call (verdicts do not depend on it).
        on_progress: Called with (seconds judged, declared duration or ``None``).

    Raises:
        AudioReadError / VideoReadError: missing, unreadable, empty or non-finite input, or
            limits passed (possibly after some verdicts were yielded).
    """
    spec = detector.recognizer.spec
    state = detector.stream_state()
    error_type = VideoReadError if spec.modality == "video" else AudioReadError
    with _stream_of(spec, path, hop) as (session, blocks, rate, duration_s):

        def judge(windows: list[Window]) -> Iterator[VerdictRecord]:
            if not windows:
                return
            starts = [w.start for w in windows]
            x = np.stack([w.data for w in windows])
            verdicts = detector.analyze(x, keys=starts, starts=starts, states=[state] * len(windows))
            for w, v in zip(windows, verdicts, strict=True):
                yield from_verdict(
                    v,
                    spec.labels,
                    threshold=detector.config.threshold,
                    calibrated=calibrated,
                    **window_fields(
                        request_id=str(path),
                        model=spec.name,
                        window_index=w.index,
                        start_sample=w.start_in,
                        end_sample=w.end_in,
                        sample_rate_hz=rate,
                    ),
                )
            if on_progress is not None:
                on_progress(windows[-1].end_in / rate, duration_s)

        if on_progress is not None:
            on_progress(0.0, duration_s)
        pending: list[Window] = []
        for block in blocks:
            try:
                pending += session.push(block)
            except ValueError as e:
                if isinstance(e, AudioReadError | VideoReadError):
                    raise
                raise error_type(f"{path}: {e}") from e
            if len(pending) >= batch:
                yield from judge(pending)
                pending = []
        pending += session.flush()
        yield from judge(pending)


class _Progress:
    """A tqdm bar on stderr over one file's seconds, for long files on a terminal."""

    def __init__(self, path: Path, *, quiet: bool, medium: str = "audio") -> None:
        self.path = path
        self.quiet = quiet
        self.medium = medium
        self._bar: Any = None

    def update(self, seconds: float, duration_s: float | None) -> None:
        if self.quiet:
            return
        if self._bar is None:
            if duration_s is not None and duration_s < PROGRESS_MIN_S:
                return
            from tqdm import tqdm

            if duration_s is None:  # the header does not say: count seconds, no percentage
                total, fmt = None, "{desc}: {n:.0f} s of " + self.medium + " [{elapsed}]"
            else:
                total = round(duration_s, 1)
                fmt = (
                    "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s of "
                    + self.medium
                    + " [{elapsed}<{remaining}]"
                )
            self._bar = tqdm(
                total=total,
                desc=self.path.name,
                unit="s",
                file=sys.stderr,
                leave=False,
                disable=None,  # off when stderr is not a terminal
                bar_format=fmt,
            )
        total = self._bar.total
        target = seconds if total is None else min(seconds, total)
        if target > self._bar.n:
            self._bar.update(target - self._bar.n)

    def write(self, line: str) -> None:
        """Print a line on stdout without tearing the bar."""
        if self._bar is not None and not self._bar.disable:
            self._bar.write(line, file=sys.stdout)
            sys.stdout.flush()
        else:
            _print_line(line)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def run_check(args: argparse.Namespace) -> int:
    """``avsentry check``: 0, 1 when a file could not be read, 3 on a flag with ``--fail-on-flag``."""
    manifest = read_manifest(args.model)
    spec = manifest.spec
    hop = model_hop(spec, args.hop_ms)
    detector, calibrated = detector_from_args(args)
    refuse_uncalibrated(
        spec.name, detector.config.threshold, allowed=args.allow_uncalibrated, flag="--allow-uncalibrated"
    )
    if detector.config.threshold is None:
        print(f"avsentry check: WARNING: {uncalibrated_warning(spec.name)}", file=sys.stderr)
    if not calibrated and detector.config.threshold is not None and args.threshold is None:
        print(
            "avsentry check: warning: the model card's threshold was calibrated for another detector "
            "configuration; FPR is unknown (run avsentry calibrate)",
            file=sys.stderr,
        )
    printer = VerdictPrinter(as_json=args.json)
    failed = 0
    for path in args.files:
        if len(args.files) > 1:
            printer.prefix = f"{path} "  # text lines say which file; JSON has it in request_id
        progress = _Progress(path, quiet=args.quiet, medium=spec.modality)
        printer.write = progress.write
        error = None
        try:
            for record in check_file(
                detector, path, hop=hop, calibrated=calibrated, on_progress=progress.update
            ):
                printer(record)
        except (AudioReadError, VideoReadError) as e:
            error = e
        finally:
            progress.close()
        if error is not None:
            failed += 1
            print(f"avsentry check: error: {error}", file=sys.stderr, flush=True)
    if not args.quiet and failed < len(args.files):  # nothing to sum up when every file failed
        summary = f"{plural(len(args.files), 'file')}, {printer.summary()}"
        if failed:
            summary += f", {failed} unreadable"
        print(f"avsentry check: {summary}", file=sys.stderr, flush=True)
    if failed:
        return 1
    return printer.exit_status(fail_on_flag=args.fail_on_flag)
