"""The avsentry gRPC service (``avsentry serve``), on grpc.aio.

Servicer methods stay short: admit the call, read and validate the config (against the server's
:class:`~avsentry.stream.policy.DefencePolicy`), push chunks through a
:class:`~avsentry.pipelines.session.StreamSession`, submit windows to the cross-stream
:class:`~avsentry.stream.batching.Batcher`, write verdicts in window order, flush. Domain errors
map to status codes through :mod:`avsentry.stream.errors`.

What a hostile client cannot do (README, "Threat model"): crash the process or fail other streams
(every input is validated, a failing window fails only its own call), buy unbounded work (the
policy bounds every defence setting; admission control refuses calls beyond the server's measured
capacity; each call has a few windows in flight at most; abandoned windows are dropped), hold
slots forever (config, idle and write timeouts, keepalive, connection age), switch the defence off
(the policy locks it), or predict the noise (a secret seed per server start, fresh per stream).
Health (``grpc.health.v1``) and reflection are on; TLS / mutual TLS and a bearer token are
optional; SIGTERM drains: NOT_SERVING first, open calls finish their windows, then stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import secrets
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import numpy as np
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from avsentry.pipelines.audio_io import AudioFile, AudioLimits, AudioTooLong
from avsentry.pipelines.report import VerdictRecord, from_verdict, window_fields
from avsentry.pipelines.session import Session, StreamTooLong, Window, open_session
from avsentry.pipelines.transforms import CodecProcessPool
from avsentry.pipelines.types import ModelSpec
from avsentry.pipelines.video_io import VideoFile, VideoLimits
from avsentry.stream import convert
from avsentry.stream._proto.avsentry.v1 import guard_pb2 as pb
from avsentry.stream.batching import Batcher
from avsentry.stream.config import ServerConfig
from avsentry.stream.errors import (
    AtCapacity,
    Draining,
    GuardError,
    IdleTimeout,
    InvalidRequest,
    SlowReader,
    TooManyStreams,
    details_for,
    status_for,
)
from avsentry.stream.inference import AnyDetector, PoolClient, connect
from avsentry.stream.metrics import Metrics
from avsentry.stream.offline import refuse_uncalibrated, uncalibrated_warning
from avsentry.stream.policy import DefencePolicy
from avsentry.stream.registry import BuiltDetector, ModelRegistry

log = logging.getLogger("avsentry.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Guard"].full_name
_END = object()
# Audio handed to the session per step when a CheckAudio file is decoded (bounds memory).
_CHECK_STEP_S = 0.5


@dataclass(frozen=True, slots=True)
class _Medium:
    """What differs between the audio and the video calls: the messages' names, what a payload
    message is called, and the response of a Check call."""

    modality: str
    request: str  # the streamed request message
    config: str  # its config message
    payload: str  # its payload field ("chunk", "frame")
    check_request: str
    check_response: Callable[[], pb.CheckAudioResponse | pb.CheckVideoResponse]
    what: str  # what an idle stream stops sending ("audio", "frames")


_AUDIO = _Medium(
    "audio", "AudioRequest", "StreamConfig", "chunk", "CheckAudioRequest", pb.CheckAudioResponse, "audio"
)
_VIDEO = _Medium(
    "video", "VideoRequest", "VideoConfig", "frame", "CheckVideoRequest", pb.CheckVideoResponse, "frames"
)


class _Malformed:
    """Stands in for a request whose bytes are not the expected protobuf message."""


MALFORMED = _Malformed()


def _lenient(parse: Callable[[bytes], object]) -> Callable[[bytes], object]:
    """A deserializer that turns undecodable bytes into :data:`MALFORMED` (the servicer answers
    INVALID_ARGUMENT) instead of an exception (which gRPC reports as UNKNOWN)."""

    def parse_or_flag(data: bytes) -> object:
        try:
            return parse(data)
        except (DecodeError, ValueError, TypeError):
            return MALFORMED

    return parse_or_flag


class Capacity:
    """Admission control: the detector work committed by open calls, as a share of real time.

    A call whose detector takes ``cost_s`` wall seconds per window and produces ``rate`` windows
    per second commits ``cost_s * rate``; a call is admitted while the total stays at or under
    ``max_load`` (1.0 = the worker pool busy all the time). ``max_load = 0`` admits everything.
    """

    def __init__(self, max_load: float, on_change: Callable[[float], None] | None = None) -> None:
        self.max_load = max_load
        self.load = 0.0
        self._on_change = on_change or (lambda load: None)

    def reserve(self, share: float) -> float:
        """Commit ``share``; raises :class:`AtCapacity` when it does not fit. Returns it."""
        if self.max_load and self.load + share > self.max_load:
            if share > self.max_load:
                raise AtCapacity(
                    f"this defence configuration alone needs {share:.0%} of the server's throughput "
                    f"(limit {self.max_load:.0%}): use fewer or cheaper transforms, a smaller n or a "
                    "longer hop"
                )
            raise AtCapacity(
                f"server at capacity ({self.load:.0%} of its throughput committed, limit "
                f"{self.max_load:.0%}); try again later or another replica"
            )
        self.load += share
        self._on_change(self.load)
        return share

    def release(self, share: float) -> None:
        self.load = max(0.0, self.load - share)
        self._on_change(self.load)


@dataclass(slots=True)
class _Pending:
    window: Window
    next_start: int  # where the next window starts in the client's stream (resume point)
    arrived: float
    interim: asyncio.Future | None
    final: asyncio.Future


@dataclass(slots=True, eq=False)
class _Call:
    """One open StreamAudio or CheckAudio call."""

    kind: str
    peer: str
    started: float = field(default_factory=time.perf_counter)
    request_id: str = ""
    windows: int = 0
    flags: int = 0
    share: float = 0.0
    closed: bool = False
    drain: asyncio.Event = field(default_factory=asyncio.Event)


class _Feeder:
    """Submits one call's windows to the batcher: its detector and stream state, its secret noise
    salt, and at most ``in_flight`` windows queued or being judged (released by the caller once a
    window's verdict is delivered)."""

    def __init__(
        self, service: GuardService, detector: AnyDetector, settings: convert.StreamSettings
    ) -> None:
        self.service = service
        self.detector = detector
        self.settings = settings
        self.state = detector.stream_state()
        self.salt = secrets.randbits(62)
        self.slots = asyncio.Semaphore(service.config.in_flight_windows)

    async def submit(
        self, w: Window, *, interim: bool = False
    ) -> tuple[asyncio.Future | None, asyncio.Future]:
        await self.slots.acquire()
        return await self.service.batcher.submit(
            self.detector,
            w.data,
            self.service.key(self.salt, w.start),
            start=w.start,
            state=self.state,
            interim=interim,
            request_id=self.settings.request_id,
        )


class GuardService:
    """Implements ``avsentry.v1.Guard``."""

    def __init__(
        self,
        config: ServerConfig,
        registry: ModelRegistry,
        batcher: Batcher,
        metrics: Metrics,
        *,
        policy: DefencePolicy,
        deterministic_noise: bool,
    ) -> None:
        self.config = config
        self.registry = registry
        self.batcher = batcher
        self.metrics = metrics
        self.policy = policy
        self.deterministic_noise = deterministic_noise
        self.capacity = Capacity(config.max_load, on_change=metrics.load.set)
        self.draining = False
        self.calls: set[_Call] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def active(self) -> int:
        return len(self.calls)

    def handler(self) -> grpc.GenericRpcHandler:
        """The ``Guard`` method handlers, with lenient deserializers (see :func:`_lenient`)."""
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "StreamAudio": grpc.stream_stream_rpc_method_handler(
                    self.StreamAudio,
                    request_deserializer=_lenient(pb.AudioRequest.FromString),
                    response_serializer=pb.Verdict.SerializeToString,
                ),
                "CheckAudio": grpc.unary_unary_rpc_method_handler(
                    self.CheckAudio,
                    request_deserializer=_lenient(pb.CheckAudioRequest.FromString),
                    response_serializer=pb.CheckAudioResponse.SerializeToString,
                ),
                "StreamVideo": grpc.stream_stream_rpc_method_handler(
                    self.StreamVideo,
                    request_deserializer=_lenient(pb.VideoRequest.FromString),
                    response_serializer=pb.Verdict.SerializeToString,
                ),
                "CheckVideo": grpc.unary_unary_rpc_method_handler(
                    self.CheckVideo,
                    request_deserializer=_lenient(pb.CheckVideoRequest.FromString),
                    response_serializer=pb.CheckVideoResponse.SerializeToString,
                ),
                "ListModels": grpc.unary_unary_rpc_method_handler(
                    self.ListModels,
                    request_deserializer=_lenient(pb.ListModelsRequest.FromString),
                    response_serializer=pb.ListModelsResponse.SerializeToString,
                ),
            },
        )

    # -- calls -------------------------------------------------------------------------------
    def _open(self, kind: str, context: grpc.aio.ServicerContext) -> _Call:
        if self.draining:
            raise Draining("server is shutting down")
        if len(self.calls) >= self.config.max_streams:
            raise TooManyStreams(f"server is at its limit of {self.config.max_streams} open calls")
        call = _Call(kind=kind, peer=context.peer() or "")
        self.calls.add(call)
        self._idle.clear()
        self.metrics.active_streams.inc()
        return call

    def _close(self, call: _Call, status: grpc.StatusCode, error: BaseException | None) -> None:
        """Release the call's slot and committed work, and log its end (once)."""
        if call.closed:
            return
        call.closed = True
        self.calls.discard(call)
        if not self.calls:
            self._idle.set()
        self.metrics.active_streams.dec()
        if call.share:
            self.capacity.release(call.share)
        fields = {
            "request_id": call.request_id or "-",
            "kind": call.kind,
            "status": status.name,
            "windows": call.windows,
            "flags": call.flags,
            "seconds": round(time.perf_counter() - call.started, 3),
            "peer": call.peer,
        }
        if error is not None and status != grpc.StatusCode.OK:
            fields["error"] = details_for(error, call.request_id)
            self.metrics.errors.labels(status.name).inc()
        if status == grpc.StatusCode.INTERNAL and error is not None:
            log.error("call_end", extra={"fields": fields}, exc_info=error)
        else:
            log.info("call_end", extra={"fields": fields})

    async def wait_idle(self, within_s: float) -> bool:
        """Until no call is open or ``within_s`` passes; True when idle."""
        try:
            await asyncio.wait_for(self._idle.wait(), within_s)
        except TimeoutError:
            return False
        return True

    def end_open_calls(self) -> None:
        """Drain's last step: open streams stop reading, judge what they have, and end."""
        for call in self.calls:
            call.drain.set()

    async def _settings(
        self, cfg: pb.StreamConfig | pb.VideoConfig, medium: _Medium, *, require_format: bool
    ) -> convert.StreamSettings:
        manifest = self.registry.manifest(cfg.model, medium.modality)
        default = self.registry.defences[manifest.spec.name]
        if isinstance(cfg, pb.VideoConfig):
            settings = convert.video_settings_from_proto(
                cfg, manifest, default=default, policy=self.policy, require_video_format=require_format
            )
            frame_bytes = settings.format.frame_bytes
            limit = self.config.max_message_bytes - 64  # room for the VideoFrame's other fields
            if require_format and frame_bytes is not None and frame_bytes > limit:
                raise InvalidRequest(
                    f"one {cfg.width}x{cfg.height} frame is {frame_bytes} bytes, over this server's "
                    f"{self.config.max_message_bytes}-byte message limit; send smaller frames or JPEG"
                )
            return settings
        return convert.settings_from_proto(
            cfg, manifest, default=default, policy=self.policy, require_audio_format=require_format
        )

    @staticmethod
    def _open_session(settings: convert.StreamSettings, spec: ModelSpec, max_seconds: float) -> Session:
        fmt = settings.format
        first = settings.resume_window
        if isinstance(fmt, convert.VideoFormat):
            session: Session = open_session(
                spec,
                rate_hz=fmt.fps,
                hop=settings.hop,
                frame_size=fmt.frame_size,
                max_seconds=max_seconds,
                first_window=first,
            )
        else:
            session = open_session(
                spec,
                rate_hz=fmt.sample_rate_hz,
                hop=settings.hop,
                channels=fmt.channels,
                max_seconds=max_seconds,
                first_window=first,
            )
        if first and session.start_in(first) / fmt.rate_hz > max_seconds:
            raise StreamTooLong(
                f"resume_window {first} starts past this server's {max_seconds:g} s stream cap"
            )
        return session

    async def _detector(self, call: _Call, settings: convert.StreamSettings) -> BuiltDetector:
        """The call's detector (built off the event loop on first use) and its admitted share."""
        built = await asyncio.to_thread(self.registry.detector, settings.model, settings.detector)
        self.metrics.detectors.set(self.registry.cached)
        windows_per_s = 1000 / settings.hop_ms
        call.share = self.capacity.reserve(built.cost_s * windows_per_s)
        return built

    def key(self, salt: int, start: int) -> int:
        """A window's noise key: its start sample, plus a per-call secret unless the server runs
        with a fixed noise seed (reproducible verdicts)."""
        return start if self.deterministic_noise else salt + start

    def _log_start(self, call: _Call, settings: convert.StreamSettings) -> None:
        det = settings.detector
        log.info(
            "call_start",
            extra={
                "fields": {
                    "request_id": call.request_id,
                    "kind": call.kind,
                    "peer": call.peer,
                    "model": settings.model,
                    **settings.format.log_fields(),
                    "hop_ms": settings.hop_ms,
                    "transforms": ",".join(det.transforms) or "none",
                    "smoothing_n": det.smoothing.n if det.smoothing else 0,
                    "calibrated": settings.calibrated,
                    "load": round(self.capacity.load, 3),
                }
            },
        )

    # -- StreamAudio, StreamVideo -------------------------------------------------------------
    async def StreamAudio(self, request_iterator: AsyncIterator, context: grpc.aio.ServicerContext) -> None:  # noqa: N802
        await self._stream(_AUDIO, request_iterator, context)

    async def StreamVideo(self, request_iterator: AsyncIterator, context: grpc.aio.ServicerContext) -> None:  # noqa: N802
        await self._stream(_VIDEO, request_iterator, context)

    async def _stream(
        self, medium: _Medium, request_iterator: AsyncIterator, context: grpc.aio.ServicerContext
    ) -> None:
        try:
            call = self._open("stream", context)
        except GuardError as e:
            await self._abort(context, e, None)
            return
        status, error = grpc.StatusCode.OK, None
        reader: asyncio.Task | None = None
        pending: asyncio.Queue = asyncio.Queue()
        try:
            requests = aiter(request_iterator)
            try:
                first = await asyncio.wait_for(anext(requests, None), self.config.config_timeout_s)
            except TimeoutError:
                raise IdleTimeout(f"no {medium.config} within {self.config.config_timeout_s:g} s") from None
            if first is MALFORMED:
                raise InvalidRequest(f"the first message is not a valid {medium.request}")
            if first is None or first.WhichOneof("request") != "config":
                raise InvalidRequest(f"the first message must be a {medium.config}")
            settings = await self._settings(first.config, medium, require_format=True)
            call.request_id = settings.request_id
            built = await self._detector(call, settings)
            self._log_start(call, settings)
            manifest = self.registry.manifest(settings.model)
            session = self._open_session(settings, manifest.spec, self.config.max_stream_s)
            feeder = _Feeder(self, built.detector, settings)
            reader = asyncio.get_running_loop().create_task(
                self._read(medium, requests, call, session, feeder, pending)
            )
            labels = manifest.spec.labels
            while True:
                item = await pending.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                await self._deliver(context, call, item, settings, labels)
                feeder.slots.release()
        except asyncio.CancelledError:
            status = grpc.StatusCode.CANCELLED
            raise
        except Exception as e:  # noqa: BLE001 - every error ends this call only, with its status
            status, error = status_for(e), e
            if isinstance(e, SlowReader):
                # The status cannot overtake the verdicts stuck behind HTTP/2 flow control, so
                # sending it waits until the client reads or its connection dies (keepalive,
                # connection age): free this call's slot, work and windows first.
                self._cleanup(reader, pending)
                self._close(call, status, error)
            await self._abort(context, e, call)
        finally:
            self._cleanup(reader, pending)
            self._close(call, status, error)

    @staticmethod
    def _cleanup(reader: asyncio.Task | None, pending: asyncio.Queue) -> None:
        """Stop reading and abandon the windows nobody will read."""
        if reader is not None:
            reader.cancel()
        while not pending.empty():
            item = pending.get_nowait()
            if isinstance(item, _Pending):
                item.final.cancel()
                if item.interim is not None:
                    item.interim.cancel()

    async def _deliver(
        self,
        context: grpc.aio.ServicerContext,
        call: _Call,
        item: _Pending,
        settings: convert.StreamSettings,
        labels: tuple[str, ...],
    ) -> None:
        """Await one window's interim and final verdicts and write them (slow readers are cut)."""
        window = window_fields(
            request_id=settings.request_id,
            model=settings.model,
            window_index=item.window.index,
            start_sample=item.window.start_in,
            end_sample=item.window.end_in,
            sample_rate_hz=settings.rate_hz,
        )
        if item.interim is not None:
            probs = await item.interim
            k = int(np.argmax(probs))
            interim = VerdictRecord(
                **window,
                raw_label=labels[k],
                raw_confidence=float(probs[k]),
                threshold=settings.detector.threshold,
                calibrated=settings.calibrated,
                latency_ms=(time.perf_counter() - item.arrived) * 1000,
                is_final=False,
            )
            await self._write(context, convert.record_to_proto(interim))
        verdict = await item.final
        latency = time.perf_counter() - item.arrived
        record = from_verdict(
            verdict,
            labels,
            threshold=settings.detector.threshold,
            calibrated=settings.calibrated,
            latency_ms=latency * 1000,
            **window,
        )
        msg = convert.record_to_proto(record)
        msg.next_start_sample = item.next_start
        await self._write(context, msg)
        call.windows += 1
        call.flags += record.flagged
        self.metrics.windows.labels(settings.model).inc()
        self.metrics.latency.observe(latency)
        if record.flagged:
            self.metrics.flags.labels(settings.model).inc()

    async def _write(self, context: grpc.aio.ServicerContext, msg: pb.Verdict) -> None:
        """Write one message; a client that reads nothing for ``write_timeout_s`` is cut. (Not
        ``wait_for``: cancelling a write blocked on flow control waits for the write itself.)"""
        write = asyncio.ensure_future(context.write(msg))
        done, _ = await asyncio.wait({write}, timeout=self.config.write_timeout_s)
        if write not in done:
            write.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieve, don't leak
            raise SlowReader(
                f"the client read no verdict for {self.config.write_timeout_s:g} s; stream closed"
            )
        write.result()

    async def _read(
        self,
        medium: _Medium,
        requests: AsyncIterator,
        call: _Call,
        session: Session,
        feeder: _Feeder,
        pending: asyncio.Queue,
    ) -> None:
        """Consume chunks (frames), cut windows (clips), submit them; errors go down the pending
        queue in order.

        Ends at the end of the stream, on an error, or when the server drains (then the input
        received so far is judged and the call ends UNAVAILABLE).
        """
        settings = feeder.settings
        fmt = settings.format
        if isinstance(fmt, convert.AudioFormat):
            max_frames = self.config.max_chunk_ms * fmt.sample_rate_hz // 1000

            def decode(data: bytes, index: int) -> np.ndarray:
                return convert.decode_chunk(data, fmt, max_frames=max_frames)
        else:

            def decode(data: bytes, index: int) -> np.ndarray:
                return convert.decode_frame(data, fmt, index=index)

        expected = 0
        drained = asyncio.ensure_future(call.drain.wait())

        async def submit(windows: list[Window], arrived: float) -> None:
            for w in windows:
                interim, final = await feeder.submit(w, interim=settings.interim)
                nxt = session.start_in(w.index + 1)
                await pending.put(
                    _Pending(window=w, next_start=nxt, arrived=arrived, interim=interim, final=final)
                )

        try:
            while True:
                nxt = asyncio.ensure_future(anext(requests, None))
                done, _ = await asyncio.wait(
                    {nxt, drained}, timeout=self.config.idle_timeout_s, return_when=asyncio.FIRST_COMPLETED
                )
                if nxt not in done:
                    nxt.cancel()
                    if drained in done:
                        await submit(session.flush(), time.perf_counter())
                        raise Draining(
                            f"server is shutting down: stream ended after {session.received_s:.3f} s "
                            "(every window of it was judged); reconnect to continue"
                        )
                    raise IdleTimeout(f"no {medium.what} for {self.config.idle_timeout_s:g} s")
                req = nxt.result()
                if req is None:
                    break
                if req is MALFORMED:
                    raise InvalidRequest(f"a message is not a valid {medium.request}")
                if req.WhichOneof("request") != medium.payload:
                    raise InvalidRequest(f"only the first message may be a {medium.config}")
                payload = getattr(req, medium.payload)
                if payload.sequence != expected:
                    raise InvalidRequest(
                        f"{medium.payload} sequence {payload.sequence} where {expected} was expected"
                    )
                if medium is _VIDEO:  # JPEG decoding and scaling: off the event loop
                    windows = await asyncio.to_thread(_push, session, decode, payload.data, expected)
                else:
                    windows = _push(session, decode, payload.data, expected)
                expected += 1
                await submit(windows, time.perf_counter())
                self.metrics.queue_depth.set(self.batcher.depth)
            await submit(session.flush(), time.perf_counter())
            await pending.put(_END)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - reported to the client in stream order
            await pending.put(e)
        finally:
            drained.cancel()

    # -- CheckAudio, CheckVideo -----------------------------------------------------------------
    async def CheckAudio(self, request, context: grpc.aio.ServicerContext) -> pb.CheckAudioResponse:  # noqa: N802
        return await self._check(_AUDIO, request, context)

    async def CheckVideo(self, request, context: grpc.aio.ServicerContext) -> pb.CheckVideoResponse:  # noqa: N802
        return await self._check(_VIDEO, request, context)

    async def _check(self, medium: _Medium, request, context: grpc.aio.ServicerContext):
        try:
            call = self._open("check", context)
        except GuardError as e:
            await self._abort(context, e, None)
            raise AssertionError("unreachable") from e
        status, error = grpc.StatusCode.OK, None
        futures: list[tuple[Window, asyncio.Future]] = []
        try:
            if request is MALFORMED:
                raise InvalidRequest(f"the request is not a valid {medium.check_request}")
            if medium is _AUDIO:
                which = request.WhichOneof("audio")
                if which is None:
                    raise InvalidRequest("CheckAudioRequest needs file or pcm audio")
            else:
                which = "file"
                if not request.file:
                    raise InvalidRequest("CheckVideoRequest needs a video file")
            settings = await self._settings(request.config, medium, require_format=which == "pcm")
            if settings.resume_window:
                raise InvalidRequest("resume_window resumes a stream; a check call judges a whole file")
            call.request_id = settings.request_id
            source: AudioFile | VideoFile | None = None
            if which == "file":
                source = await asyncio.to_thread(self._open_file, medium, request.file)
                settings = convert.replace_format(settings, _file_format(source, settings))
            try:
                built = await self._detector(call, settings)
                self._log_start(call, settings)
                manifest = self.registry.manifest(settings.model)
                session = self._open_session(settings, manifest.spec, self.config.max_check_s)
                t0 = time.perf_counter()
                feeder = _Feeder(self, built.detector, settings)

                async def submit(windows: list[Window]) -> None:
                    for w in windows:
                        _, final = await feeder.submit(w)
                        final.add_done_callback(lambda _: feeder.slots.release())
                        futures.append((w, final))

                if source is not None:
                    blocks = source.blocks()
                    while windows := await asyncio.to_thread(_decode_step, blocks, session):
                        await submit(windows)
                else:
                    fmt = settings.format
                    assert isinstance(fmt, convert.AudioFormat)
                    max_frames = int(self.config.max_check_s * fmt.sample_rate_hz)
                    seconds = len(request.pcm) // fmt.frame_bytes / fmt.sample_rate_hz
                    if seconds > self.config.max_check_s:
                        raise AudioTooLong(
                            f"{seconds:.0f} s of audio, at most {self.config.max_check_s:g} s accepted"
                        )
                    frames = convert.decode_chunk(request.pcm, fmt, max_frames=max_frames)
                    step = max(1, int(_CHECK_STEP_S * fmt.sample_rate_hz))
                    for s in range(0, len(frames), step):
                        try:
                            await submit(session.push(frames[s : s + step]))
                        except ValueError as e:
                            raise InvalidRequest(str(e)) from e
            finally:
                if source is not None:
                    source.close()
            await submit(session.flush())
            verdicts = await asyncio.gather(*(f for _, f in futures))
            latency_ms = (time.perf_counter() - t0) * 1000
            out = medium.check_response()
            labels = manifest.spec.labels
            for (w, _), v in zip(futures, verdicts, strict=True):
                record = from_verdict(
                    v,
                    labels,
                    threshold=settings.detector.threshold,
                    calibrated=settings.calibrated,
                    latency_ms=latency_ms,
                    **window_fields(
                        request_id=settings.request_id,
                        model=settings.model,
                        window_index=w.index,
                        start_sample=w.start_in,
                        end_sample=w.end_in,
                        sample_rate_hz=settings.rate_hz,
                    ),
                )
                out.verdicts.append(convert.record_to_proto(record))
                call.windows += 1
                call.flags += record.flagged
                self.metrics.windows.labels(settings.model).inc()
                if record.flagged:
                    self.metrics.flags.labels(settings.model).inc()
            return out
        except asyncio.CancelledError:
            status = grpc.StatusCode.CANCELLED
            raise
        except Exception as e:  # noqa: BLE001 - every error ends this call only, with its status
            status, error = status_for(e), e
            await self._abort(context, e, call)
            raise AssertionError("unreachable") from e
        finally:
            for _, f in futures:
                f.cancel()  # no-op for finished windows; drops the rest
            self._close(call, status, error)

    def _open_file(self, medium: _Medium, data: bytes) -> AudioFile | VideoFile:
        """A Check call's file, its header read and checked against the server's limits."""
        if medium is _VIDEO:
            return VideoFile(data, VideoLimits(max_seconds=self.config.max_check_s))
        return AudioFile(data, AudioLimits(max_seconds=self.config.max_check_s))

    async def ListModels(self, request, context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:  # noqa: N802
        if request is MALFORMED:
            await self._abort(context, InvalidRequest("the request is not a valid ListModelsRequest"), None)
        return pb.ListModelsResponse(
            models=[
                convert.model_info(m, self.registry.defences[name], is_default=name == self.registry.default)
                for name, m in self.registry.manifests.items()
            ]
        )

    async def _abort(self, context: grpc.aio.ServicerContext, e: BaseException, call: _Call | None) -> None:
        """End the call with the status code for ``e`` and a bounded one-line message."""
        code = status_for(e)
        if call is None:  # refused before it was opened: counted here, not in _close
            self.metrics.errors.labels(code.name).inc()
            log.info("call_refused", extra={"fields": {"status": code.name, "error": details_for(e)}})
        await context.abort(code, details_for(e, call.request_id if call else ""))


def _push(
    session: Session, decode: Callable[[bytes, int], np.ndarray], data: bytes, index: int
) -> list[Window]:
    """Decode one chunk (frame) into the session; the windows (clips) it completes."""
    x = decode(data, index)
    try:
        return session.push(x)
    except ValueError as e:
        raise InvalidRequest(str(e)) from e


def _file_format(
    source: AudioFile | VideoFile, settings: convert.StreamSettings
) -> convert.AudioFormat | convert.VideoFormat:
    """The format a Check call's file header gives (decoded frames travel as RGB)."""
    if isinstance(source, VideoFile):
        i = source.info
        return convert.VideoFormat(
            pixel_format=pb.PIXEL_FORMAT_RGB24, width=i.width, height=i.height, fps=i.fps
        )
    assert isinstance(settings.format, convert.AudioFormat)
    return convert.AudioFormat(
        encoding=settings.format.encoding,
        sample_rate_hz=source.info.sample_rate_hz,
        channels=source.info.channels,
    )


def _decode_step(blocks, session: Session) -> list[Window]:
    """Decode blocks of a Check call's file into the session until it yields windows (or the file
    ends); runs on a worker thread, so at most a few windows' worth of input is held at once."""
    for block in blocks:
        try:
            windows = session.push(block)
        except ValueError as e:
            raise InvalidRequest(str(e)) from e
        if windows:
            return windows
    return []


class TokenAuth(grpc.aio.ServerInterceptor):
    """Bearer-token check on every call but health checks: UNAUTHENTICATED without it.

    The comparison is constant-time (``hmac.compare_digest``); the refusal uses a handler of the
    same streaming kind as the method, so a streaming call (reflection too) fails at once.
    """

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

        async def deny_unary(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")

        async def deny_stream(request_iterator, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")

        self._deny = {
            (False, False): grpc.unary_unary_rpc_method_handler(deny_unary),
            (False, True): grpc.unary_stream_rpc_method_handler(deny_unary),
            (True, False): grpc.stream_unary_rpc_method_handler(deny_stream),
            (True, True): grpc.stream_stream_rpc_method_handler(deny_stream),
        }

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if details.method.startswith("/grpc.health.v1.Health/"):
            return handler
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if isinstance(given, str) and hmac.compare_digest(given.encode(), self._expected):
            return handler
        if handler is None:  # unknown method: let gRPC answer UNIMPLEMENTED
            return handler
        return self._deny[(handler.request_streaming, handler.response_streaming)]


@dataclass(slots=True)
class RunningServer:
    """A started server: its port, the service, and how to stop it."""

    server: grpc.aio.Server
    service: GuardService
    health: health_aio.HealthServicer
    batcher: Batcher
    port: int
    metrics_port: int | None
    config: ServerConfig
    codec_pool: CodecProcessPool | None = None
    inference_pool: PoolClient | None = None

    async def stop(self, grace: float | None = None) -> None:
        """Drain, then stop.

        1. Health turns NOT_SERVING (load balancers stop sending new calls) and new calls get
           UNAVAILABLE, while the server keeps answering health checks.
        2. Open calls get ``grace`` seconds (default ``grace_s``) to end on their own.
        3. Streams still open stop reading, judge the audio they have (every window submitted gets
           its verdict) and end with UNAVAILABLE.
        4. The server and the batcher stop.
        """
        grace = self.config.grace_s if grace is None else grace
        service = self.service
        service.draining = True
        await self.health.enter_graceful_shutdown()
        log.info("draining", extra={"fields": {"open_calls": service.active, "grace_s": grace}})
        if not await service.wait_idle(grace):
            service.end_open_calls()
            await service.wait_idle(max(5.0, self.config.write_timeout_s))
        await self.server.stop(1.0)
        await self.batcher.stop()
        if self.codec_pool is not None:
            await asyncio.to_thread(self.codec_pool.shutdown, cancel_futures=True)
        if self.inference_pool is not None:
            await asyncio.to_thread(self.inference_pool.close)
        log.info("stopped", extra={"fields": {"open_calls": service.active}})


async def start_server(config: ServerConfig, *, registry: ModelRegistry | None = None) -> RunningServer:
    """Build and start the server (port 0 picks a free port). Loads the default model and builds
    (and measures) its default detector before accepting calls.

    Raises:
        OSError: the address cannot be bound (in use, or not an address of this host).
    """
    if config.torch_threads:
        import torch

        torch.set_num_threads(config.torch_threads)
    metrics = Metrics()
    # with an inference pool, the codecs run on its replicas: this front end needs no workers
    local = config.inference == "local"
    pool = (
        None
        if config.codec_processes == 0 or not local
        else CodecProcessPool(max(0, config.codec_processes) or None)
    )
    try:
        return await _start(config, registry, metrics, pool)
    except BaseException:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        raise


async def _start(
    config: ServerConfig, registry: ModelRegistry | None, metrics: Metrics, pool: CodecProcessPool | None
) -> RunningServer:
    # bind first: a busy port fails at once, before the model loads
    interceptors = [TokenAuth(config.token)] if config.token else []
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
            ("grpc.max_concurrent_streams", config.max_streams + 8),  # per connection; health too
            ("grpc.keepalive_time_ms", int(config.keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            ("grpc.http2.max_ping_strikes", 3),
            ("grpc.max_connection_idle_ms", int(max(config.idle_timeout_s, 300) * 1000)),
            ("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int((config.max_stream_s + 60) * 1000)),
        ],
    )
    try:
        if config.tls:
            assert config.tls_cert is not None and config.tls_key is not None
            creds = grpc.ssl_server_credentials(
                [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())],
                root_certificates=config.tls_client_ca.read_bytes() if config.tls_client_ca else None,
                require_client_auth=config.tls_client_ca is not None,
            )
            port = server.add_secure_port(config.target, creds)
        else:
            port = server.add_insecure_port(config.target)
    except RuntimeError as e:  # grpc raises RuntimeError("Failed to bind ...")
        port = 0
        bind_error: BaseException | None = e
    else:
        bind_error = None
    if port == 0:
        raise OSError(f"cannot listen on {config.target}: address in use or not available") from bind_error
    inference = None
    try:
        if config.inference == "ray" and registry is None:
            inference = await asyncio.to_thread(
                connect,
                config.ray_address or None,
                app=config.pool_app,
                models=(config.model, *config.extra_models),
                backend=config.backend,
                device=config.device,
                replicas=config.pool_replicas,
                timeout_s=config.pool_timeout_s,
                retries=config.pool_retries,
            )
        return await _serve_on(server, port, config, registry, metrics, pool, inference)
    except BaseException:
        await server.stop(None)  # releases the port
        if inference is not None:
            await asyncio.to_thread(inference.close)
        raise


async def _serve_on(
    server: grpc.aio.Server,
    port: int,
    config: ServerConfig,
    registry: ModelRegistry | None,
    metrics: Metrics,
    pool: CodecProcessPool | None,
    inference: PoolClient | None,
) -> RunningServer:
    deterministic = config.noise_seed >= 0
    seed = config.noise_seed if deterministic else secrets.randbits(62)
    registry = registry or ModelRegistry(
        config.model,
        config.extra_models,
        backend=config.backend,
        device=config.device,
        max_detectors=config.max_detectors,
        seed=seed,
        defence_overrides=config.defence_overrides(),
        hop_ms=config.hop_ms,
        parallel=config.workers,
        executor=pool,
        pool=inference,
        on_cache=lambda event: metrics.detector_cache.labels(event).inc(),
    )
    for name, defence in registry.defences.items():
        refuse_uncalibrated(
            name,
            defence.detector.threshold,
            allowed=config.allow_uncalibrated,
            flag="--allow-uncalibrated (allow_uncalibrated = true in [model])",
        )
        if defence.detector.threshold is None:
            note = uncalibrated_warning(name)
            log.warning("uncalibrated_model", extra={"fields": {"model": name, "note": note}})
        elif not defence.calibrated:
            log.warning(
                "uncalibrated_defence",
                extra={
                    "fields": {
                        "model": name,
                        "note": "the threshold in force was not calibrated for this defence "
                        "configuration; its false-positive rate is unknown (avsentry calibrate)",
                    }
                },
            )
    if registry.pool is not None:  # the pool's replicas load the models: the same ones?
        registry.pool.check_models(registry.manifests)
    else:  # every model loads (and is probed) now, not on a client's call
        for name in registry.manifests:
            await asyncio.to_thread(registry.recognizer, name)
    built = await asyncio.to_thread(registry.warm_up, config.window_cost_ms / 1000 or None)
    metrics.detectors.set(registry.cached)
    batcher = Batcher(
        max_batch=config.max_batch,
        max_wait_ms=config.max_wait_ms,
        workers=config.workers,
        queue_size=config.queue_size,
        on_batch=lambda n, s: metrics.batch_size.observe(n),
        on_drop=lambda n: metrics.dropped.inc(n),
    )
    batcher.start()
    policy = DefencePolicy(
        lock=config.lock,
        allowed_transforms=config.allowed_transforms,
        max_transforms=config.max_transforms,
        min_smoothing_n=config.min_smoothing_n,
        max_smoothing_n=config.max_smoothing_n,
        min_sigma=config.min_sigma,
        max_sigma=config.max_sigma,
        min_hop_ms=config.min_hop_ms,
    )
    service = GuardService(
        config, registry, batcher, metrics, policy=policy, deterministic_noise=deterministic
    )
    server.add_generic_rpc_handlers((service.handler(),))
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    await server.start()
    # Everything loaded so far (torch, models, codecs, grpc) lives as long as the server: move it
    # out of the collector's reach. Full collections over it took 110 ms with the GIL held,
    # stalling every stream (the largest share of the p99 latency under load).
    gc.collect()
    gc.freeze()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    await health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    metrics_port = metrics.serve(config.metrics_port, config.metrics_address) if config.metrics_port else None
    log.info(
        "serving",
        extra={
            "fields": {
                "address": f"{config.address}:{port}",
                "models": ",".join(registry.manifests),
                "window_cost_ms": round(built.cost_s * 1000, 2),
                "inference": "in process"
                if inference is None
                else f"Ray Serve app {config.pool_app!r} at {config.ray_address or 'a local Ray instance'} "
                f"(replica device {inference.description.get('device', '?')})",
                "max_load": config.max_load,
                "lock": config.lock,
                "noise": f"fixed seed {config.noise_seed}"
                if deterministic
                else "secret seed, fresh per stream",
            }
        },
    )
    return RunningServer(
        server=server,
        service=service,
        health=health,
        batcher=batcher,
        port=port,
        metrics_port=metrics_port,
        config=config,
        codec_pool=pool,
        inference_pool=inference,
    )


async def serve_forever(
    config: ServerConfig, *, ready: Callable[[RunningServer], None] | None = None
) -> None:
    """Run until SIGINT/SIGTERM, then drain and stop (a second signal stops at once)."""
    running = await start_server(config)
    if ready is not None:
        ready(running)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            log.warning("second signal: stopping now")
            loop.create_task(running.server.stop(0))
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, on_signal)
    await stop.wait()
    await running.stop()
