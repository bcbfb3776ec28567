"""Python client SDK for the avsentry service.

Stream a file or any iterator of audio chunks in a few lines::

    from avsentry.stream.client import GuardClient

    with GuardClient("127.0.0.1:50051") as client:
        for v in client.stream_file("speech.wav"):          # paced at real time
            print(v.start_s, v.raw_label, v.flagged, list(v.reasons))

        chunks = (np.zeros((1600, 1), np.float32) for _ in range(20))   # (frames, channels)
        verdicts = list(client.stream(chunks, sample_rate_hz=16000))
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from avsentry.pipelines.report import format_line, to_dict
from avsentry.stream._proto.avsentry.v1 import guard_pb2 as pb
from avsentry.stream._proto.avsentry.v1 import guard_pb2_grpc as pb_grpc
from avsentry.stream.convert import encode_pcm, record_from_proto

if TYPE_CHECKING:
    from avsentry.stream.sources import AudioSource

ENCODINGS = {"pcm16": pb.AUDIO_ENCODING_PCM16, "float32": pb.AUDIO_ENCODING_FLOAT32}


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
        options = [("grpc.max_receive_message_length", max_message_bytes)]
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

    def stream(
        self,
        chunks: Iterable[np.ndarray],
        *,
        sample_rate_hz: int,
        channels: int = 1,
        encoding: str = "pcm16",
        **config: Any,
    ) -> Iterator[pb.Verdict]:
        """Stream ``(frames, channels)`` float32 chunks; yields verdicts as they come back.

        Keyword arguments are :func:`make_config` fields (``model``, ``hop_ms``, ``transforms``,
        ``smoothing_n``, ``smoothing_sigma``, ``smoothing_representation``, ``disable_smoothing``,
        ``threshold``, ``interim_results``, ``request_id``). ``encoding`` is how samples travel:
        ``"pcm16"`` (half the bytes) or ``"float32"`` (exactly the samples given).
        """
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {sorted(ENCODINGS)}")
        cfg = make_config(
            sample_rate_hz=sample_rate_hz, channels=channels, encoding=ENCODINGS[encoding], **config
        )

        def requests() -> Iterator[pb.AudioRequest]:
            yield pb.AudioRequest(config=cfg)
            for seq, chunk in enumerate(chunks):
                yield pb.AudioRequest(chunk=pb.AudioChunk(sequence=seq, data=encode_pcm(chunk, cfg.encoding)))

        call = self.stub.StreamAudio(requests(), metadata=self.metadata, timeout=self.timeout_s)
        try:
            yield from call
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


def make_config(
    *,
    model: str = "",
    encoding: Any = pb.AUDIO_ENCODING_PCM16,
    sample_rate_hz: int = 0,
    channels: int = 1,
    hop_ms: int = 0,
    window_ms: int = 0,
    transforms: Sequence[str] = (),
    smoothing_n: int = 0,
    smoothing_sigma: float = 0.0,
    disable_smoothing: bool = False,
    interim_results: bool = False,
    request_id: str = "",
    smoothing_representation: str = "",
    threshold: float | None = None,
) -> pb.StreamConfig:
    """A ``StreamConfig`` message; zeros/empties (and ``threshold=None``) mean the server's defaults."""
    msg = pb.StreamConfig(
        model=model,
        encoding=encoding,
        sample_rate_hz=sample_rate_hz,
        channels=channels,
        window_ms=window_ms,
        hop_ms=hop_ms,
        transforms=list(transforms),
        smoothing_n=smoothing_n,
        smoothing_sigma=smoothing_sigma,
        disable_smoothing=disable_smoothing,
        interim_results=interim_results,
        request_id=request_id,
        smoothing_representation=smoothing_representation,
    )
    if threshold is not None:
        msg.threshold = threshold
    return msg


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
    }
