"""Conversion between the protobuf contract (avsentry.v1) and ``pipelines`` types.

The only module that knows both sides: request configs become validated :class:`StreamSettings`
(bounded by the server's :class:`~avsentry.stream.policy.DefencePolicy`), chunk bytes become
float32 frames, and verdicts travel as :class:`~avsentry.pipelines.report.VerdictRecord` — the
one verdict schema — converted to ``Verdict`` messages on the server and back on the client.
"""

from __future__ import annotations

import io
import math
import uuid
from dataclasses import dataclass, replace

import numpy as np

from avsentry.pipelines.audio_io import MAX_CHANNELS, MAX_RATE_HZ, MIN_RATE_HZ
from avsentry.pipelines.detection import DEFAULT_SMOOTHING, DetectorConfig, changed_smoothing
from avsentry.pipelines.recognizers import Manifest
from avsentry.pipelines.report import DefendedRecord, SmoothedRecord, VerdictRecord
from avsentry.pipelines.smoothing import SmoothingConfig
from avsentry.pipelines.video_io import MAX_SIDE
from avsentry.stream._proto.avsentry.v1 import guard_pb2 as pb
from avsentry.stream.errors import InvalidRequest, clip
from avsentry.stream.policy import DefencePolicy

ENCODINGS: dict[int, tuple[str, int]] = {
    pb.AUDIO_ENCODING_PCM16: ("<i2", 2),
    pb.AUDIO_ENCODING_FLOAT32: ("<f4", 4),
}
MAX_REQUEST_ID_CHARS = 128
# What one video stream may send: frames decode and scale off the event loop but outside the
# detector's measured cost, so their size and rate are bounded (1080p at 60 fps at most)
MAX_STREAM_PIXELS = 1920 * 1088
MAX_STREAM_FPS = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioFormat:
    """How a stream's audio travels: sample encoding, rate and interleaved channels."""

    encoding: int
    sample_rate_hz: int
    channels: int

    @property
    def rate_hz(self) -> float:
        return float(self.sample_rate_hz)

    @property
    def frame_bytes(self) -> int:
        return ENCODINGS[self.encoding][1] * self.channels

    def log_fields(self) -> dict[str, object]:
        return {"rate_hz": self.sample_rate_hz, "channels": self.channels}


@dataclass(frozen=True, slots=True, kw_only=True)
class VideoFormat:
    """How a stream's frames travel: pixel format, frame size and rate."""

    pixel_format: int
    width: int
    height: int
    fps: float

    @property
    def rate_hz(self) -> float:
        return self.fps

    @property
    def frame_size(self) -> tuple[int, int]:
        """``(height, width)``."""
        return (self.height, self.width)

    @property
    def frame_bytes(self) -> int | None:
        """Bytes of one raw frame (``None`` for JPEG, whose size varies)."""
        if self.pixel_format == pb.PIXEL_FORMAT_RGB24:
            return self.width * self.height * 3
        if self.pixel_format == pb.PIXEL_FORMAT_I420:
            return self.width * self.height + 2 * _half(self.width) * _half(self.height)
        return None

    def log_fields(self) -> dict[str, object]:
        return {
            "fps": self.fps,
            "size": f"{self.width}x{self.height}",
            "pixel_format": pb.PixelFormat.Name(self.pixel_format),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamSettings:
    """A validated stream configuration, audio or video.

    Attributes:
        format: How the client's data travels (:class:`AudioFormat` or :class:`VideoFormat`).
        window / hop: Model-rate samples (audio) or frames (video).
        resume_window: The first window of a resumed stream (0: a new stream).
        detector: The defence this stream runs (threshold included).
        calibrated: Whether the threshold in force was calibrated for exactly ``detector``.
    """

    request_id: str
    model: str
    format: AudioFormat | VideoFormat
    window: int
    hop: int
    hop_ms: int
    detector: DetectorConfig
    calibrated: bool
    interim: bool
    resume_window: int = 0

    @property
    def rate_hz(self) -> float:
        """The client stream's rate: samples or frames per second."""
        return self.format.rate_hz


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
    """Validate a ``StreamConfig`` against an audio model and the server's policy.

    Raises:
        InvalidRequest: a malformed or out-of-bounds field, or a video model (INVALID_ARGUMENT).
        PolicyViolation: a setting the policy forbids, e.g. weakening a locked defence.
    """
    spec = manifest.spec
    if spec.modality != "audio":
        raise InvalidRequest(f"model {spec.name!r} takes {spec.modality}: use StreamVideo / CheckVideo")
    request_id = _request_id(cfg)
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
    window_ms = round(1000 * spec.window_s)
    if cfg.window_ms and cfg.window_ms != window_ms:
        raise InvalidRequest(
            f"model {spec.name!r} takes {window_ms} ms windows, got window_ms={cfg.window_ms}"
        )
    hop_ms = cfg.hop_ms or default.hop_ms
    detector, calibrated = _defence(cfg, default, policy, hop_ms=hop_ms, window_ms=window_ms)
    return StreamSettings(
        request_id=request_id,
        model=spec.name,
        format=AudioFormat(
            encoding=cfg.encoding,
            sample_rate_hz=cfg.sample_rate_hz or spec.sample_rate_hz,
            channels=channels,
        ),
        window=spec.window_samples,
        hop=round(hop_ms * spec.sample_rate_hz / 1000),
        hop_ms=hop_ms,
        detector=detector,
        calibrated=calibrated,
        interim=cfg.interim_results,
        resume_window=cfg.resume_window,
    )


def video_settings_from_proto(
    cfg: pb.VideoConfig,
    manifest: Manifest,
    *,
    default: ModelDefence,
    policy: DefencePolicy,
    require_video_format: bool = True,
) -> StreamSettings:
    """Validate a ``VideoConfig`` against a video model and the server's policy (the defence
    fields are checked exactly as :func:`settings_from_proto` checks them).

    Args:
        require_video_format: Check pixel format, size and rate (a stream); ``False`` for a file,
            whose header gives them (:func:`replace_format`).

    Raises:
        InvalidRequest: a malformed or out-of-bounds field, or an audio model (INVALID_ARGUMENT).
        PolicyViolation: a setting the policy forbids.
    """
    spec = manifest.spec
    if spec.modality != "video":
        raise InvalidRequest(f"model {spec.name!r} takes {spec.modality}: use StreamAudio / CheckAudio")
    video = spec.video
    request_id = _request_id(cfg)
    if require_video_format:
        if cfg.pixel_format not in (pb.PIXEL_FORMAT_RGB24, pb.PIXEL_FORMAT_I420, pb.PIXEL_FORMAT_JPEG):
            raise InvalidRequest(
                "pixel_format must be PIXEL_FORMAT_RGB24, PIXEL_FORMAT_I420 or PIXEL_FORMAT_JPEG"
            )
        if not (1 <= cfg.width <= MAX_SIDE and 1 <= cfg.height <= MAX_SIDE):
            raise InvalidRequest(f"width and height must be in [1, {MAX_SIDE}], got {cfg.width}x{cfg.height}")
        if cfg.width * cfg.height > MAX_STREAM_PIXELS:
            raise InvalidRequest(
                f"frames of at most {MAX_STREAM_PIXELS} pixels (1920x1088) a stream, "
                f"got {cfg.width}x{cfg.height}"
            )
        if not (math.isfinite(cfg.fps) and 0 < cfg.fps <= MAX_STREAM_FPS):
            raise InvalidRequest(f"fps must be in (0, {MAX_STREAM_FPS:g}], got {cfg.fps:g}")
    if cfg.clip_frames and cfg.clip_frames != video.frames:
        raise InvalidRequest(
            f"model {spec.name!r} takes clips of {video.frames} frames, got clip_frames={cfg.clip_frames}"
        )
    window_ms = round(1000 * spec.window_s)
    hop_ms = round(1000 * cfg.hop_frames / video.fps) if cfg.hop_frames else default.hop_ms
    detector, calibrated = _defence(cfg, default, policy, hop_ms=hop_ms, window_ms=window_ms)
    return StreamSettings(
        request_id=request_id,
        model=spec.name,
        format=VideoFormat(
            pixel_format=cfg.pixel_format, width=cfg.width, height=cfg.height, fps=float(cfg.fps)
        ),
        window=video.frames,
        hop=cfg.hop_frames or max(1, round(hop_ms * video.fps / 1000)),
        hop_ms=hop_ms,
        detector=detector,
        calibrated=calibrated,
        interim=cfg.interim_results,
        resume_window=cfg.resume_window,
    )


def _request_id(cfg: pb.StreamConfig | pb.VideoConfig) -> str:
    request_id = cfg.request_id or uuid.uuid4().hex
    if len(request_id) > MAX_REQUEST_ID_CHARS or not request_id.isascii() or not request_id.isprintable():
        raise InvalidRequest(f"request_id must be at most {MAX_REQUEST_ID_CHARS} printable ASCII characters")
    return request_id


def _defence(
    cfg: pb.StreamConfig | pb.VideoConfig,
    default: ModelDefence,
    policy: DefencePolicy,
    *,
    hop_ms: int,
    window_ms: int,
) -> tuple[DetectorConfig, bool]:
    """The stream's defence within the policy, and whether the card calibrated exactly it."""
    policy.check_hop(hop_ms, window_ms)
    detector = _requested_detector(cfg, default.detector, policy)
    policy.check_strengthens(detector, default.detector, hop_ms=hop_ms, default_hop_ms=default.hop_ms)
    same = (
        detector.fingerprint() == default.detector.fingerprint()
        and detector.threshold == default.detector.threshold
    )
    return detector, default.calibrated and same


def _requested_detector(
    cfg: pb.StreamConfig | pb.VideoConfig, default: DetectorConfig, policy: DefencePolicy
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


def decode_chunk(data: bytes, fmt: AudioFormat, *, max_frames: int) -> np.ndarray:
    """Chunk bytes -> ``(frames, channels)`` float32 in [-1, 1]; checks whole frames, size and
    finiteness (float samples beyond full scale are clipped, as a sound card would)."""
    if len(data) % fmt.frame_bytes:
        raise InvalidRequest(
            f"chunk of {len(data)} bytes is not whole frames of {fmt.frame_bytes} bytes "
            f"({fmt.channels} channel(s))"
        )
    frames = len(data) // fmt.frame_bytes
    if frames > max_frames:
        raise InvalidRequest(f"chunk of {frames} frames exceeds the limit of {max_frames} frames")
    dtype, _ = ENCODINGS[fmt.encoding]
    x = np.frombuffer(data, dtype=dtype).reshape(frames, fmt.channels)
    if fmt.encoding == pb.AUDIO_ENCODING_PCM16:
        return x.astype(np.float32) / 32768.0
    if not np.isfinite(x).all():
        raise InvalidRequest("chunk contains NaN or Inf samples")
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def _half(n: int) -> int:
    return (n + 1) // 2


def decode_frame(data: bytes, fmt: VideoFormat, *, index: int) -> np.ndarray:
    """One frame's bytes -> ``(1, height, width, 3)`` uint8 RGB; checks its size (and, for JPEG,
    that it is a whole JPEG image of the configured size) before decoding anything.

    Raises:
        InvalidRequest: wrong byte count, not a JPEG, a JPEG of another size, or a truncated or
            corrupt JPEG.
    """
    w, h = fmt.width, fmt.height
    if fmt.pixel_format == pb.PIXEL_FORMAT_JPEG:
        return _decode_jpeg(data, fmt, index=index)
    expected = fmt.frame_bytes
    if len(data) != expected:
        name = pb.PixelFormat.Name(fmt.pixel_format).removeprefix("PIXEL_FORMAT_")
        raise InvalidRequest(
            f"frame {index} is {len(data)} bytes; {w}x{h} {name} frames are {expected} bytes"
        )
    buf = np.frombuffer(data, dtype=np.uint8)
    if fmt.pixel_format == pb.PIXEL_FORMAT_RGB24:
        return buf.reshape(1, h, w, 3)
    return i420_to_rgb(buf, width=w, height=h)[None]


def _decode_jpeg(data: bytes, fmt: VideoFormat, *, index: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format != "JPEG":
                raise InvalidRequest(f"frame {index} is {img.format or 'an unknown'} image, not a JPEG")
            if img.size != (fmt.width, fmt.height):
                raise InvalidRequest(
                    f"frame {index} is a {img.size[0]}x{img.size[1]} JPEG; "
                    f"the stream is {fmt.width}x{fmt.height}"
                )
            rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except UnidentifiedImageError:
        raise InvalidRequest(f"frame {index} is not a JPEG image") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL: "image file is truncated", bad markers
        raise InvalidRequest(f"frame {index}: corrupt or truncated JPEG ({clip(str(e))})") from None
    return rgb[None]


def i420_to_rgb(buf: np.ndarray, *, width: int, height: int) -> np.ndarray:
    """Planar YUV 4:2:0 (BT.601, limited range) bytes -> ``(height, width, 3)`` uint8 RGB."""
    cw, ch = _half(width), _half(height)
    y = buf[: width * height].reshape(height, width).astype(np.float32)
    u = buf[width * height : width * height + cw * ch].reshape(ch, cw).astype(np.float32)
    v = buf[width * height + cw * ch :].reshape(ch, cw).astype(np.float32)
    u = u.repeat(2, axis=0).repeat(2, axis=1)[:height, :width] - 128.0
    v = v.repeat(2, axis=0).repeat(2, axis=1)[:height, :width] - 128.0
    c = 1.164 * (y - 16.0)
    rgb = np.stack([c + 1.596 * v, c - 0.392 * u - 0.813 * v, c + 2.017 * u], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def rgb_to_i420(rgb: np.ndarray) -> bytes:
    """``(height, width, 3)`` uint8 RGB -> planar YUV 4:2:0 bytes (the inverse of
    :func:`i420_to_rgb`, chroma averaged over 2x2 blocks); clients use this."""
    x = np.asarray(rgb, dtype=np.float32)
    h, w = x.shape[:2]
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 16.0 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128.0 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128.0 + 0.439 * r - 0.368 * g - 0.071 * b
    ph, pw = 2 * _half(h) - h, 2 * _half(w) - w

    def pooled(c: np.ndarray) -> np.ndarray:
        c = np.pad(c, ((0, ph), (0, pw)), mode="edge")
        return c.reshape(_half(h), 2, _half(w), 2).mean(axis=(1, 3))

    planes = [y, pooled(u), pooled(v)]
    return b"".join(np.clip(np.rint(p), 0, 255).astype(np.uint8).tobytes() for p in planes)


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
        target_fpr=float(det.get("target_fpr") or 0.0),
        measured_fpr=float(det.get("measured_fpr") or 0.0) if defence.calibrated else 0.0,
        transforms=list(cfg.transforms),
        is_default=is_default,
    )
    if spec.modality == "video":
        video = spec.video
        info.frames, info.height, info.width, info.fps = video.frames, video.height, video.width, video.fps
    else:
        info.sample_rate_hz, info.window_samples = spec.sample_rate_hz, spec.window_samples
    if cfg.threshold is not None:
        info.threshold = cfg.threshold
    if cfg.smoothing is not None:
        info.smoothing_n = cfg.smoothing.n
        info.smoothing_sigma = cfg.smoothing.sigma
        info.smoothing_representation = cfg.smoothing.representation
    return info


def replace_format(settings: StreamSettings, fmt: AudioFormat | VideoFormat) -> StreamSettings:
    """The settings for a file whose format (rate and channels, or frame size and rate) comes from
    its header, not the config."""
    return replace(settings, format=fmt)
