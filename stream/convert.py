"""Conversion between the protobuf contract (avsentry.v1) and ``pipelines`` types.

The only module that knows both sides: request configs become validated :class:`StreamSettings`,
chunk bytes become float32 frames, detector verdicts become ``Verdict`` messages.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np

from avsentry.pipelines.detection import DetectorConfig, WindowVerdict
from avsentry.pipelines.recognizers import Manifest
from avsentry.pipelines.session import Window
from avsentry.pipelines.types import Abstain, Certified, Prediction
from avsentry.stream._proto.avsentry.v1 import guard_pb2 as pb
from avsentry.stream.errors import InvalidRequest

ENCODINGS: dict[int, tuple[str, int]] = {
    pb.AUDIO_ENCODING_PCM16: ("<i2", 2),
    pb.AUDIO_ENCODING_FLOAT32: ("<f4", 4),
}
MIN_RATE_HZ, MAX_RATE_HZ = 8_000, 192_000
MAX_CHANNELS = 8
DEFAULT_HOP_MS = 500
MAX_SMOOTHING_N = 10_000


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamSettings:
    """A validated stream configuration."""

    request_id: str
    model: str
    encoding: int
    sample_rate_hz: int
    channels: int
    window: int  # model-rate samples
    hop: int  # model-rate samples
    detector: DetectorConfig
    interim: bool

    @property
    def frame_bytes(self) -> int:
        return ENCODINGS[self.encoding][1] * self.channels


def settings_from_proto(
    cfg: pb.StreamConfig,
    manifest: Manifest,
    *,
    default_detector: dict | None,
    threshold: float | None,
    require_audio_format: bool = True,
) -> StreamSettings:
    """Validate a ``StreamConfig`` against a model; raises :class:`InvalidRequest` with a reason."""
    spec = manifest.spec
    if require_audio_format:
        if cfg.encoding not in ENCODINGS:
            raise InvalidRequest("encoding must be AUDIO_ENCODING_PCM16 or AUDIO_ENCODING_FLOAT32")
        if not MIN_RATE_HZ <= cfg.sample_rate_hz <= MAX_RATE_HZ:
            raise InvalidRequest(
                f"sample_rate_hz must be in [{MIN_RATE_HZ}, {MAX_RATE_HZ}], got {cfg.sample_rate_hz}"
            )
    channels = cfg.channels or 1
    if not 1 <= channels <= MAX_CHANNELS:
        raise InvalidRequest(f"channels must be in [1, {MAX_CHANNELS}], got {cfg.channels}")
    window_ms = round(1000 * spec.window_samples / spec.sample_rate_hz)
    if cfg.window_ms and cfg.window_ms != window_ms:
        raise InvalidRequest(
            f"model {spec.name!r} takes {window_ms} ms windows, got window_ms={cfg.window_ms}"
        )
    hop_ms = cfg.hop_ms or DEFAULT_HOP_MS
    if not 10 <= hop_ms <= window_ms:
        raise InvalidRequest(f"hop_ms must be in [10, {window_ms}], got {cfg.hop_ms}")
    if cfg.smoothing_n > MAX_SMOOTHING_N:
        raise InvalidRequest(f"smoothing_n must be <= {MAX_SMOOTHING_N}, got {cfg.smoothing_n}")
    if not np.isfinite(cfg.smoothing_sigma) or cfg.smoothing_sigma < 0:
        raise InvalidRequest(f"smoothing_sigma must be >= 0, got {cfg.smoothing_sigma}")
    transforms = None
    if cfg.transforms:
        transforms = [] if list(cfg.transforms) == ["none"] else list(cfg.transforms)
    try:
        detector, _ = DetectorConfig.from_card(
            default_detector,
            transforms=transforms,
            n=cfg.smoothing_n or None,
            sigma=cfg.smoothing_sigma or None,
            smoothing=False if cfg.disable_smoothing else None,
            threshold=threshold,
        )
    except (ValueError, TypeError) as e:
        raise InvalidRequest(str(e)) from e
    return StreamSettings(
        request_id=cfg.request_id or uuid.uuid4().hex,
        model=spec.name,
        encoding=cfg.encoding,
        sample_rate_hz=cfg.sample_rate_hz or spec.sample_rate_hz,
        channels=channels,
        window=spec.window_samples,
        hop=round(hop_ms * spec.sample_rate_hz / 1000),
        detector=detector,
        interim=cfg.interim_results,
    )


def decode_chunk(data: bytes, settings: StreamSettings, *, max_frames: int) -> np.ndarray:
    """Chunk bytes -> ``(frames, channels)`` float32; checks whole frames, size and finiteness."""
    if len(data) % settings.frame_bytes:
        raise InvalidRequest(
            f"chunk of {len(data)} bytes is not whole frames of {settings.frame_bytes} bytes "
            f"({settings.channels} channel(s))"
        )
    frames = len(data) // settings.frame_bytes
    if frames > max_frames:
        raise InvalidRequest(f"chunk of {frames} frames exceeds the limit of {max_frames} frames")
    dtype, _ = ENCODINGS[settings.encoding]
    x = np.frombuffer(data, dtype=dtype).reshape(frames, settings.channels)
    if settings.encoding == pb.AUDIO_ENCODING_PCM16:
        return x.astype(np.float32) / 32768.0
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise InvalidRequest("chunk contains NaN or Inf samples")
    return x


def encode_pcm(frames: np.ndarray, encoding: int) -> bytes:
    """``(frames, channels)`` or ``(frames,)`` float32 -> chunk bytes (clients use this)."""
    x = np.asarray(frames, dtype=np.float32)
    if encoding == pb.AUDIO_ENCODING_PCM16:
        return (np.clip(x, -1, 1) * 32767).round().astype("<i2").tobytes()
    return x.astype("<f4").tobytes()


def verdict_to_proto(
    v: WindowVerdict,
    *,
    labels: tuple[str, ...],
    window: Window,
    settings: StreamSettings,
    latency_ms: float,
) -> pb.Verdict:
    """A final verdict message."""
    msg = _window_fields(window, settings, labels[v.raw_label], v.raw_confidence, latency_ms)
    msg.is_final = True
    for o in v.defended:
        msg.defended.add(name=o.name, label=labels[o.label], confidence=o.confidence, distance=o.distance)
    if v.smoothed is not None:
        sm = msg.smoothed
        sm.abstain = not isinstance(v.smoothed, Prediction)
        if isinstance(v.smoothed, Prediction):
            sm.label = labels[v.smoothed.label]
        sm.p_value = v.smoothed.p_value
        for i, c in enumerate(v.smoothed.counts):
            if c:
                sm.counts[labels[i]] = int(c)
        if isinstance(v.certificate, Certified):
            sm.certified_label = labels[v.certificate.label]
            sm.radius = v.certificate.radius
            sm.p_lower = v.certificate.p_lower
        elif isinstance(v.certificate, Abstain):
            sm.p_lower = v.certificate.p_lower
    msg.score = v.score
    if settings.detector.threshold is not None:
        msg.threshold = settings.detector.threshold
    msg.flagged = v.flagged
    msg.reasons.extend(v.reasons)
    return msg


def interim_to_proto(
    probs: np.ndarray, *, labels: tuple[str, ...], window: Window, settings: StreamSettings, latency_ms: float
) -> pb.Verdict:
    """A raw-only interim verdict (``is_final`` false)."""
    k = int(np.argmax(probs))
    return _window_fields(window, settings, labels[k], float(probs[k]), latency_ms)


def _window_fields(
    window: Window, settings: StreamSettings, raw_label: str, raw_conf: float, latency_ms: float
) -> pb.Verdict:
    rate = settings.sample_rate_hz
    return pb.Verdict(
        request_id=settings.request_id,
        window_index=window.index,
        start_sample=window.start_in,
        end_sample=window.end_in,
        start_s=window.start_in / rate,
        end_s=window.end_in / rate,
        model=settings.model,
        raw_label=raw_label,
        raw_confidence=raw_conf,
        latency_ms=latency_ms,
    )


def model_info(manifest: Manifest, *, is_default: bool) -> pb.ModelInfo:
    spec = manifest.spec
    det = manifest.extra.get("detector") or {}
    cfg, _ = DetectorConfig.from_card(det or None)
    info = pb.ModelInfo(
        name=spec.name,
        modality=spec.modality,
        labels=list(spec.labels),
        sample_rate_hz=spec.sample_rate_hz,
        window_samples=spec.window_samples,
        threshold=float(det.get("threshold") or 0.0),
        target_fpr=float(det.get("target_fpr") or 0.0),
        measured_fpr=float(det.get("measured_fpr") or 0.0),
        transforms=list(cfg.transforms),
        is_default=is_default,
    )
    if cfg.smoothing is not None:
        info.smoothing_n = cfg.smoothing.n
        info.smoothing_sigma = cfg.smoothing.sigma
        info.smoothing_representation = cfg.smoothing.representation
    return info
