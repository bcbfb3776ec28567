"""Python client SDK for the avsentry service.

Stream a file or any iterator of audio chunks in a few lines::

    from avsentry.stream.client import GuardClient

    with GuardClient("127.0.0.1:50051") as client:
        for v in client.stream_file("speech.wav"):          # paced at real time
            print(v.start_s, v.raw_label, v.flagged, list(v.reasons))

        chunks = (np.zeros((1600, 1), np.float32) for _ in range(20))   # (frames, channels)
        verdicts = list(client.stream(chunks, sample_rate_hz=16000))

        for v in client.stream_video_file("clip.mp4", model="actions"):   # one verdict per clip
            print(v.start_s, v.raw_label, v.flagged)
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import numpy as np

from avsentry.pipelines.report import format_line, to_dict
from avsentry.stream._proto.avsentry.v1 import guard_pb2 as pb
from avsentry.stream._proto.avsentry.v1 import guard_pb2_grpc as pb_grpc
from avsentry.stream.convert import encode_pcm, record_from_proto, rgb_to_i420

if TYPE_CHECKING:
    from avsentry.stream.sources import AudioSource
    from avsentry.stream.video_sources import VideoSource

ENCODINGS = {"pcm16": pb.AUDIO_ENCODING_PCM16, "float32": pb.AUDIO_ENCODING_FLOAT32}
PIXEL_FORMATS = {"rgb24": pb.PIXEL_FORMAT_RGB24, "i420": pb.PIXEL_FORMAT_I420, "jpeg": pb.PIXEL_FORMAT_JPEG}


class GuardClient:
    """A connection to an avsentry server.

    Args:
        target: ``host:port``.
        ca: CA certificate (PEM) to verify the server; enables TLS. ``tls=True`` without it uses
            the system roots.
        cert / key: Client certificate and key (PEM) for mutual TLS.
        token: Bearer token sent with every call.
        timeout_s: Deadline per call (``None``: none).
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        tls: bool = False,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        token: str | None = None,
        timeout_s: float | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            # a resumed stream reconnects within a fraction of a second of a replica being back
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if tls or ca or cert:
            creds = grpc.ssl_channel_credentials(
                root_certificates=Path(ca).read_bytes() if ca else None,
                private_key=Path(key).read_bytes() if key else None,
                certificate_chain=Path(cert).read_bytes() if cert else None,
            )
            self.channel = grpc.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = pb_grpc.GuardStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout_s = timeout_s

    def __enter__(self) -> GuardClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Block until the channel connects (raises ``grpc.FutureTimeoutError``)."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout_s)

    def list_models(self) -> list[pb.ModelInfo]:
        return list(
            self.stub.ListModels(
                pb.ListModelsRequest(), metadata=self.metadata, timeout=self.timeout_s
            ).models
        )

    def check_file(self, path: str | Path, **config: Any) -> list[pb.Verdict]:
        """Verdicts for a whole file (sent as bytes; the server decodes it)."""
        req = pb.CheckAudioRequest(config=make_config(**config), file=Path(path).read_bytes())
        return list(self.stub.CheckAudio(req, metadata=self.metadata, timeout=self.timeout_s).verdicts)

    def check_video_file(self, path: str | Path, **config: Any) -> list[pb.Verdict]:
        """Verdicts for every clip of a video file (sent as bytes; the server decodes it).
        Keyword arguments are :func:`make_video_config` fields."""
        req = pb.CheckVideoRequest(config=make_video_config(**config), file=Path(path).read_bytes())
        return list(self.stub.CheckVideo(req, metadata=self.metadata, timeout=self.timeout_s).verdicts)

    def stream_video(
        self,
        frames: Iterable[np.ndarray],
        *,
        width: int,
        height: int,
        fps: float,
        pixel_format: str = "jpeg",
        jpeg_quality: int = 90,
        reconnect_s: float = 0.0,
        **config: Any,
    ) -> Iterator[pb.Verdict]:
        """Stream ``(height, width, 3)`` uint8 RGB frames; yields a verdict per clip as it comes.

        ``pixel_format`` is how frames travel: ``"jpeg"`` (default; compact, lossy at
        ``jpeg_quality``), ``"rgb24"`` (exact) or ``"i420"`` (YUV 4:2:0, half the bytes of RGB).
        ``reconnect_s``: resume a broken stream as :meth:`stream` does. Keyword arguments are
        :func:`make_video_config` fields (``model``, ``hop_frames``, ``transforms``, ...).
        """
        if pixel_format not in PIXEL_FORMATS:
            raise ValueError(f"pixel_format must be one of {sorted(PIXEL_FORMATS)}")
        cfg = make_video_config(
            width=width, height=height, fps=fps, pixel_format=PIXEL_FORMATS[pixel_format], **config
        )

        def requests(items: Iterator[np.ndarray]) -> Iterator[pb.VideoRequest]:
            yield pb.VideoRequest(config=cfg)
            for seq, block in enumerate(items):
                data = encode_frame(block[0], pixel_format, jpeg_quality=jpeg_quality)
                yield pb.VideoRequest(frame=pb.VideoFrame(sequence=seq, data=data))

        blocks = (np.asarray(f)[None] for f in frames)  # one frame a block: the tape's unit
        return self._resumable(self.stub.StreamVideo, cfg, requests, blocks, reconnect_s)

    def stream_video_source(self, source: VideoSource, **config: Any) -> Iterator[pb.Verdict]:
        """Stream a :class:`~stream.video_sources.VideoSource` (file or camera)."""
        return self.stream_video(
            source.frames(), width=source.width, height=source.height, fps=source.fps, **config
        )

    def stream_video_file(
        self, path: str | Path, *, rate: float = 1.0, **config: Any
    ) -> Iterator[pb.Verdict]:
        """Stream a video file at its own size and rate, paced at ``rate`` x real time (``0``: as
        fast as possible)."""
        from avsentry.stream.video_sources import VideoFileSource

        with VideoFileSource(path, rate=rate) as src:
            yield from self.stream_video_source(src, **config)

    def stream(
        self,
        chunks: Iterable[np.ndarray],
        *,
        sample_rate_hz: int,
        channels: int = 1,
        encoding: str = "pcm16",
        reconnect_s: float = 0.0,
        **config: Any,
    ) -> Iterator[pb.Verdict]:
        """Stream ``(frames, channels)`` float32 chunks; yields verdicts as they come back.

        Keyword arguments are :func:`make_config` fields (``model``, ``hop_ms``, ``transforms``,
        ``smoothing_n``, ``smoothing_sigma``, ``smoothing_representation``, ``disable_smoothing``,
        ``threshold``, ``interim_results``, ``request_id``). ``encoding`` is how samples travel:
        ``"pcm16"`` (half the bytes) or ``"float32"`` (exactly the samples given).

        ``reconnect_s`` > 0 makes the stream survive its server: when the call breaks with
        UNAVAILABLE (the server died or drained) or a proxy's stream reset (its server died
        behind a load balancer) after it had started, the client reconnects
        (through a load balancer, another replica) for up to ``reconnect_s`` seconds, resumes at
        the first window it has no final verdict for (``resume_window``) and resends the audio
        from that window's start (``next_start_sample`` of the last final verdict), which it
        keeps until it is judged. Every window's final verdict is yielded exactly once.
        """
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {sorted(ENCODINGS)}")
        cfg = make_config(
            sample_rate_hz=sample_rate_hz, channels=channels, encoding=ENCODINGS[encoding], **config
        )

        def requests(items: Iterator[np.ndarray]) -> Iterator[pb.AudioRequest]:
            yield pb.AudioRequest(config=cfg)
            for seq, chunk in enumerate(items):
                yield pb.AudioRequest(chunk=pb.AudioChunk(sequence=seq, data=encode_pcm(chunk, cfg.encoding)))

        return self._resumable(self.stub.StreamAudio, cfg, requests, iter(chunks), reconnect_s)

    def _resumable(
        self,
        rpc: Callable[..., Any],
        cfg: pb.StreamConfig | pb.VideoConfig,
        requests: Callable[[Iterator[np.ndarray]], Iterator[Any]],
        chunks: Iterator[np.ndarray],
        reconnect_s: float,
    ) -> Iterator[pb.Verdict]:
        """One streaming call, or with ``reconnect_s`` a chain of calls resumed after each break
        (see :meth:`stream`)."""
        tape = _Tape(chunks)
        last_final = last_interim = -1
        resume_at, deadline = 0, None
        while True:
            cfg.resume_window = last_final + 1
            call = rpc(requests(tape.reader(resume_at)), metadata=self.metadata, timeout=self.timeout_s)
            try:
                for v in call:
                    if v.is_final:
                        if v.window_index <= last_final:
                            continue
                        last_final, resume_at, deadline = v.window_index, v.next_start_sample, None
                        tape.trim(resume_at)
                    elif v.window_index <= last_interim:
                        continue
                    else:
                        last_interim = v.window_index
                    yield v
                return
            except grpc.RpcError as e:
                started = last_final >= 0 or deadline is not None
                if not reconnect_s or not _broken(e) or not started:
                    raise
                now = time.monotonic()
                deadline = deadline or now + reconnect_s
                if now >= deadline:
                    raise
                try:  # until a server (a replica behind the same address) accepts connections
                    grpc.channel_ready_future(self.channel).result(timeout=max(0.0, deadline - now))
                except grpc.FutureTimeoutError:
                    raise e from None
                time.sleep(0.05)
            finally:
                call.cancel()

    def stream_source(self, source: AudioSource, **config: Any) -> Iterator[pb.Verdict]:
        """Stream an :class:`~stream.sources.AudioSource` (file or microphone)."""
        return self.stream(
            source.chunks(),
            sample_rate_hz=source.sample_rate_hz,
            channels=source.channels,
            **config,
        )

    def stream_file(
        self, path: str | Path, *, rate: float = 1.0, chunk_ms: int = 100, **config: Any
    ) -> Iterator[pb.Verdict]:
        """Stream a file at its native rate and channels, paced at ``rate`` x real time
        (``0``: as fast as possible)."""
        from avsentry.stream.sources import FileSource

        with FileSource(path, chunk_ms=chunk_ms, rate=rate) as src:
            yield from self.stream_source(src, **config)


def _broken(e: grpc.RpcError) -> bool:
    """Whether a call ended because its server went away, not because of what it was sent:
    UNAVAILABLE (the server died or drained), or the HTTP/2 reset a proxy such as Envoy sends
    downstream when the server's connection dies mid-stream (INTERNAL, "Stream removed
    (RST_STREAM ...)"; the server's own INTERNAL errors never say that)."""
    code = e.code()  # type: ignore[attr-defined]
    details = e.details() or ""  # type: ignore[attr-defined]
    return code == grpc.StatusCode.UNAVAILABLE or (
        code == grpc.StatusCode.INTERNAL and "RST_STREAM" in details
    )


class _Tape:
    """What a resumable stream has read from its source and not yet seen judged: chunks (audio
    frames, or one video frame each) at their positions in the stream. Each call reads through a
    :meth:`reader` from its resume point; a newer reader stops the older ones, so only one call
    pulls from the source."""

    def __init__(self, source: Iterator[np.ndarray]) -> None:
        self._source = source
        self._lock = threading.Lock()  # the chunk list
        self._pull = threading.Lock()  # the source
        self._chunks: list[tuple[int, np.ndarray]] = []  # (start, chunk)
        self._end = 0
        self._done = False
        self._generation = 0

    def trim(self, upto: int) -> None:
        """Forget the chunks that end at or before ``upto`` (judged: no resume needs them)."""
        with self._lock:
            self._chunks = [(s, c) for s, c in self._chunks if s + len(c) > upto]

    def reader(self, start: int) -> Iterator[np.ndarray]:
        with self._lock:
            self._generation += 1
            generation = self._generation
        pos = start
        while True:
            with self._lock:
                if generation != self._generation:
                    return
                chunk = next((c[pos - s :] for s, c in self._chunks if s <= pos < s + len(c)), None)
                if chunk is None and self._chunks and pos < self._chunks[0][0]:
                    raise RuntimeError(f"resume point {pos} was already dropped")
                done = self._done
            if chunk is None:
                if done:
                    return
                # one reader pulls at a time, outside the lock trim() takes: a source that blocks
                # (a microphone, a paced file) never holds up the verdicts
                with self._pull:
                    with self._lock:
                        if generation != self._generation:
                            return
                        behind = pos < self._end  # another reader pulled meanwhile
                    if behind:
                        continue
                    nxt = next(self._source, None)
                    with self._lock:
                        if nxt is None:
                            self._done = True
                            return
                        chunk = np.asarray(nxt)
                        self._chunks.append((self._end, chunk))
                        self._end += len(chunk)
            if len(chunk):
                yield chunk
            pos += len(chunk)


def make_config(
    *,
    model: str = "",
    encoding: Any = pb.AUDIO_ENCODING_PCM16,
    sample_rate_hz: int = 0,
    channels: int = 1,
    hop_ms: int = 0,
    window_ms: int = 0,
    **defence: Any,
) -> pb.StreamConfig:
    """A ``StreamConfig`` message; zeros/empties mean the server's defaults. ``defence``: the
    fields :func:`_set_defence` takes."""
    msg = pb.StreamConfig(
        model=model,
        encoding=encoding,
        sample_rate_hz=sample_rate_hz,
        channels=channels,
        window_ms=window_ms,
        hop_ms=hop_ms,
    )
    return _set_defence(msg, **defence)


def make_video_config(
    *,
    model: str = "",
    pixel_format: Any = pb.PIXEL_FORMAT_UNSPECIFIED,
    width: int = 0,
    height: int = 0,
    fps: float = 0.0,
    clip_frames: int = 0,
    hop_frames: int = 0,
    **defence: Any,
) -> pb.VideoConfig:
    """A ``VideoConfig`` message; zeros/empties mean the server's defaults. ``defence``: the
    fields :func:`_set_defence` takes."""
    msg = pb.VideoConfig(
        model=model,
        pixel_format=pixel_format,
        width=width,
        height=height,
        fps=fps,
        clip_frames=clip_frames,
        hop_frames=hop_frames,
    )
    return _set_defence(msg, **defence)


ConfigT = TypeVar("ConfigT", pb.StreamConfig, pb.VideoConfig)


def _set_defence(
    msg: ConfigT,
    *,
    transforms: Sequence[str] = (),
    smoothing_n: int = 0,
    smoothing_sigma: float = 0.0,
    disable_smoothing: bool = False,
    interim_results: bool = False,
    request_id: str = "",
    smoothing_representation: str = "",
    threshold: float | None = None,
) -> ConfigT:
    """Set the fields both configs share (defence, interim verdicts, request id);
    ``threshold=None`` leaves the calibrated threshold in force."""
    msg.transforms.extend(transforms)
    msg.smoothing_n = smoothing_n
    msg.smoothing_sigma = smoothing_sigma
    msg.disable_smoothing = disable_smoothing
    msg.interim_results = interim_results
    msg.request_id = request_id
    msg.smoothing_representation = smoothing_representation
    if threshold is not None:
        msg.threshold = threshold
    return msg


def encode_frame(frame: np.ndarray, pixel_format: str, *, jpeg_quality: int = 90) -> bytes:
    """One ``(height, width, 3)`` uint8 RGB frame -> the bytes of a ``VideoFrame``."""
    x = np.ascontiguousarray(frame, dtype=np.uint8)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"frames must be (height, width, 3) RGB, got shape {x.shape}")
    if pixel_format == "rgb24":
        return x.tobytes()
    if pixel_format == "i420":
        return rgb_to_i420(x)
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(x).save(out, format="JPEG", quality=jpeg_quality)
    return out.getvalue()


def format_verdict(v: pb.Verdict, *, prefix: str = "") -> str:
    """One human-readable line per verdict (the same line ``avsentry check`` prints)."""
    return format_line(record_from_proto(v), prefix=prefix)


def verdict_to_dict(v: pb.Verdict) -> dict:
    """A JSON-ready dict of a verdict: the one verdict schema (the same as ``check --json``)."""
    return to_dict(record_from_proto(v))


def model_info_to_dict(m: pb.ModelInfo) -> dict:
    """A JSON-ready dict of a served model (``avsentry models --server``): the ``ModelInfo``
    fields under their proto names, ``threshold`` null when the model has none."""
    return {
        "name": m.name,
        "modality": m.modality,
        "labels": list(m.labels),
        "sample_rate_hz": m.sample_rate_hz,
        "window_samples": m.window_samples,
        "threshold": m.threshold if m.HasField("threshold") else None,
        "target_fpr": m.target_fpr,
        "measured_fpr": m.measured_fpr,
        "transforms": list(m.transforms),
        "smoothing_n": m.smoothing_n,
        "smoothing_sigma": m.smoothing_sigma,
        "smoothing_representation": m.smoothing_representation,
        "is_default": m.is_default,
        "frames": m.frames,
        "height": m.height,
        "width": m.width,
        "fps": m.fps,
    }
