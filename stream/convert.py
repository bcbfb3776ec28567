"""Conversion between the protobuf contract (avsentry.v1) and ``pipelines`` types.

The only module that knows both sides: request configs become validated :class:`StreamSettings`
(bounded by the server's :class:`~avsentry.stream.policy.DefencePolicy`), chunk bytes become
float32 frames, and verdicts travel as :class:`~avsentry.pipelines.report.VerdictRecord` — the
one verdict schema — converted to ``Verdict`` messages on the server and back on the client.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, replace

import numpy as np

from avsentry.pipelines.audio_io import MAX_CHANNELS, MAX_RATE_HZ, MIN_RATE_HZ
from avsentry.pipelines.detection import DEFAULT_SMOOTHING, DetectorConfig, changed_smoothing
from avsentry.pipelines.recognizers import Manifest
from avsentry.pipelines.report import DefendedRecord, SmoothedRecord, VerdictRecord
from avsentry.pipelines.smoothing import SmoothingConfig
from avsentry.stream._proto.avsentry.v1 import guard_pb2 as pb
from avsentry.stream.errors import InvalidRequest
from avsentry.stream.policy import DefencePolicy

ENCODINGS: dict[int, tuple[str, int]] = {
    pb.AUDIO_ENCODING_PCM16: ("<i2", 2),
    pb.AUDIO_ENCODING_FLOAT32: ("<f4", 4),
}
MAX_REQUEST_ID_CHARS = 128


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamSettings:
    """A validated stream configuration.

    Attributes:
        window / hop: Model-rate samples.
        detector: The defence this stream runs (threshold included).
        calibrated: Whether the threshold in force was calibrated for exactly ``detector``.
    """

    request_id: str
    model: str
    encoding: int
    sample_rate_hz: int
    channels: int
    window: int
    hop: int
    hop_ms: int
    detector: DetectorConfig
    calibrated: bool
    interim: bool

    @property
    def frame_bytes(self) -> int:
        return ENCODINGS[self.encoding][1] * self.channels


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelDefence:
    """A served model's default defence: its detector config (threshold included), whether the
    card calibrated that threshold for it, and the default hop."""

    detector: DetectorConfig
    calibrated: bool
    hop_ms: int


def settings_from_proto(
    cfg: pb.StreamConfig,
    manifest: Manifest,
    *,
    default: ModelDefence,
    policy: DefencePolicy,
    require_audio_format: bool = True,
) -> StreamSettings:
    """Validate a ``StreamConfig`` against a model and the server's policy.

    Raises:
        InvalidRequest: a malformed or out-of-bounds field (INVALID_ARGUMENT).
        PolicyViolation: a setting the policy forbids, e.g. weakening a locked defence.
    """
    spec = manifest.spec
    request_id = cfg.request_id or uuid.uuid4().hex
    if len(request_id) > MAX_REQUEST_ID_CHARS or not request_id.isascii() or not request_id.isprintable():
        raise InvalidRequest(f"request_id must be at most {MAX_REQUEST_ID_CHARS} printable ASCII characters")
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
    hop_ms = cfg.hop_ms or default.hop_ms
    policy.check_hop(hop_ms, window_ms)
    detector = _requested_detector(cfg, default.detector, policy)
    policy.check_strengthens(detector, default.detector, hop_ms=hop_ms, default_hop_ms=default.hop_ms)
    same = (
        detector.fingerprint() == default.detector.fingerprint()
        and detector.threshold == default.detector.threshold
    )
    return StreamSettings(
        request_id=request_id,
        model=spec.name,
        encoding=cfg.encoding,
        sample_rate_hz=cfg.sample_rate_hz or spec.sample_rate_hz,
        channels=channels,
        window=spec.window_samples,
        hop=round(hop_ms * spec.sample_rate_hz / 1000),
        hop_ms=hop_ms,
        detector=detector,
        calibrated=default.calibrated and same,
        interim=cfg.interim_results,
    )


def _requested_detector(
    cfg: pb.StreamConfig, default: DetectorConfig, policy: DefencePolicy
) -> DetectorConfig:
    """The default defence with the client's changes, each within the policy's bounds."""
    transforms = default.transforms
    if cfg.transforms:
        transforms = () if list(cfg.transforms) == ["none"] else tuple(cfg.transforms)
        policy.check_transforms(transforms)
    smoothing = default.smoothing
    if cfg.disable_smoothing:
        smoothing = None
    elif cfg.smoothing_n or cfg.smoothing_sigma or cfg.smoothing_representation:
        if not math.isfinite(cfg.smoothing_sigma) or cfg.smoothing_sigma < 0:
            raise InvalidRequest(f"smoothing_sigma must be a finite number >= 0, got {cfg.smoothing_sigma}")
        base = smoothing or SmoothingConfig(**DEFAULT_SMOOTHING)
        n = cfg.smoothing_n or base.n
        try:
            smoothing = changed_smoothing(
                base,
                sigma=float(cfg.smoothing_sigma) or None,
                representation=cfg.smoothing_representation or None,
                n=n,
                n0=min(base.n0, max(1, n // 4)),
            )
        except ValueError as e:
            raise InvalidRequest(str(e)) from e
        policy.check_smoothing(smoothing)
    threshold = default.threshold
    if cfg.HasField("threshold"):
        if not math.isfinite(cfg.threshold) or cfg.threshold < 0:
            raise InvalidRequest(f"threshold must be a finite number >= 0, got {cfg.threshold}")
        threshold = float(cfg.threshold)
    try:
        return replace(default, transforms=transforms, smoothing=smoothing, threshold=threshold)
    except ValueError as e:
        raise InvalidRequest(str(e)) from e


def decode_chunk(data: bytes, settings: StreamSettings, *, max_frames: int) -> np.ndarray:
    """Chunk bytes -> ``(frames, channels)`` float32 in [-1, 1]; checks whole frames, size and
    finiteness (float samples beyond full scale are clipped, as a sound card would)."""
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
    if not np.isfinite(x).all():
        raise InvalidRequest("chunk contains NaN or Inf samples")
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def encode_pcm(frames: np.ndarray, encoding: int) -> bytes:
    """``(frames, channels)`` or ``(frames,)`` float32 -> chunk bytes (clients use this)."""
    x = np.asarray(frames, dtype=np.float32)
    if encoding == pb.AUDIO_ENCODING_PCM16:  # the inverse of decode_chunk's x / 32768
        return np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2").tobytes()
    return x.astype("<f4").tobytes()


def record_to_proto(r: VerdictRecord) -> pb.Verdict:
    """The ``Verdict`` message of a record (field for field)."""
    msg = pb.Verdict(
        request_id=r.request_id,
        window_index=r.window_index,
        start_sample=r.start_sample,
        end_sample=r.end_sample,
        start_s=r.start_s,
        end_s=r.end_s,
        model=r.model,
        raw_label=r.raw_label,
        raw_confidence=r.raw_confidence,
        score=r.score,
        calibrated=r.calibrated,
        flagged=r.flagged,
        reasons=list(r.reasons),
        latency_ms=r.latency_ms,
        is_final=r.is_final,
    )
    for d in r.defended:
        msg.defended.add(name=d.name, label=d.label, confidence=d.confidence, distance=d.distance)
    if r.smoothed is not None:
        s = r.smoothed
        msg.smoothed.CopyFrom(
            pb.SmoothedPrediction(
                label=s.label,
                abstain=s.abstain,
                counts=s.counts,
                p_value=s.p_value,
                certified_label=s.certified_label,
                radius=s.radius,
                p_lower=s.p_lower,
            )
        )
        if s.raw_p_lower is not None:
            msg.smoothed.raw_p_lower = s.raw_p_lower
        if s.guaranteed_snr_db is not None:
            msg.smoothed.guaranteed_snr_db = s.guaranteed_snr_db
    if r.threshold is not None:
        msg.threshold = r.threshold
    return msg


def record_from_proto(msg: pb.Verdict) -> VerdictRecord:
    """The record of a ``Verdict`` message (what clients render)."""
    smoothed = None
    if msg.HasField("smoothed"):
        s = msg.smoothed
        smoothed = SmoothedRecord(
            label=s.label,
            abstain=s.abstain,
            counts=dict(s.counts),
            p_value=s.p_value,
            certified_label=s.certified_label,
            radius=s.radius,
            p_lower=s.p_lower,
            raw_p_lower=s.raw_p_lower if s.HasField("raw_p_lower") else None,
            guaranteed_snr_db=s.guaranteed_snr_db if s.HasField("guaranteed_snr_db") else None,
        )
    return VerdictRecord(
        request_id=msg.request_id,
        window_index=msg.window_index,
        start_sample=msg.start_sample,
        end_sample=msg.end_sample,
        start_s=msg.start_s,
        end_s=msg.end_s,
        model=msg.model,
        raw_label=msg.raw_label,
        raw_confidence=msg.raw_confidence,
        defended=tuple(
            DefendedRecord(name=d.name, label=d.label, confidence=d.confidence, distance=d.distance)
            for d in msg.defended
        ),
        smoothed=smoothed,
        score=msg.score,
        threshold=msg.threshold if msg.HasField("threshold") else None,
        calibrated=msg.calibrated,
        flagged=msg.flagged,
        reasons=tuple(msg.reasons),
        latency_ms=msg.latency_ms,
        is_final=msg.is_final,
    )


def model_info(manifest: Manifest, defence: ModelDefence, *, is_default: bool) -> pb.ModelInfo:
    spec = manifest.spec
    det = manifest.detector
    cfg = defence.detector
    info = pb.ModelInfo(
        name=spec.name,
        modality=spec.modality,
        labels=list(spec.labels),
        sample_rate_hz=spec.sample_rate_hz,
        window_samples=spec.window_samples,
        target_fpr=float(det.get("target_fpr") or 0.0),
        measured_fpr=float(det.get("measured_fpr") or 0.0) if defence.calibrated else 0.0,
        transforms=list(cfg.transforms),
        is_default=is_default,
    )
    if cfg.threshold is not None:
        info.threshold = cfg.threshold
    if cfg.smoothing is not None:
        info.smoothing_n = cfg.smoothing.n
        info.smoothing_sigma = cfg.smoothing.sigma
        info.smoothing_representation = cfg.smoothing.representation
    return info


def replace_format(settings: StreamSettings, *, sample_rate_hz: int, channels: int) -> StreamSettings:
    """The settings for audio whose rate and channels come from a file header, not the config."""
    return replace(settings, sample_rate_hz=sample_rate_hz, channels=channels)
