"""Reading audio files (WAV, FLAC, MP3, anything FFmpeg decodes) into mono float32 via PyAV.

Any sample rate and channel count: FFmpeg's resampler (libswresample) converts to the target
rate, then channels are averaged to mono.
"""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np


class AudioReadError(ValueError):
    """The file is missing, unreadable, empty or holds non-finite samples."""


def read_audio(source: str | Path | bytes, *, sample_rate_hz: int) -> np.ndarray:
    """Decode the first audio stream of a file (path) or of in-memory file bytes to mono float32
    at ``sample_rate_hz``.

    Returns:
        ``(samples,)`` float32.

    Raises:
        AudioReadError: with a one-line message naming the file and the problem.
    """
    opened: io.BytesIO | str
    if isinstance(source, bytes):
        path: Path | str = "<audio bytes>"
        opened = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.exists():
            raise AudioReadError(f"{path}: no such file")
        if not path.is_file():
            raise AudioReadError(f"{path}: not a regular file")
        opened = str(path)
    chunks: list[np.ndarray] = []
    try:
        with av.open(opened, mode="r") as container:
            if not container.streams.audio:
                raise AudioReadError(f"{path}: no audio stream")
            stream = container.streams.audio[0]
            # Keep the channels through the resampler and average them ourselves: FFmpeg's own
            # stereo->mono matrix scales each side by 1/sqrt(2), which lifts identical channels
            # by 3 dB and can clip.
            resampler = av.AudioResampler(format="fltp", rate=sample_rate_hz)
            for frame in container.decode(stream):
                raw = frame.to_ndarray()
                if raw.dtype.kind == "f" and not np.isfinite(raw).all():
                    raise AudioReadError(f"{path}: audio contains NaN or Inf samples")
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().mean(axis=0))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().mean(axis=0))
    except AudioReadError:
        raise
    except (av.error.FFmpegError, ValueError, UnicodeDecodeError) as e:
        raise AudioReadError(f"{path}: cannot decode audio ({e.__class__.__name__}: {e})") from e
    audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if audio.size == 0:
        raise AudioReadError(f"{path}: no audio samples")
    if not np.isfinite(audio).all():
        raise AudioReadError(f"{path}: audio contains NaN or Inf samples")
    return audio
