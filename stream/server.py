"""The avsentry gRPC service (``avsentry serve``), on grpc.aio.

Servicer methods stay short: read the config, push chunks through a
:class:`~pipelines.session.StreamSession`, submit windows to the cross-stream
:class:`~stream.batching.Batcher`, yield verdicts in window order, flush. Domain errors map to
status codes through :mod:`stream.errors`. Health (``grpc.health.v1``) and reflection are on;
TLS / mutual TLS and a bearer token are optional; shutdown drains gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from avsentry.pipelines.audio_io import read_audio
from avsentry.pipelines.session import StreamSession, StreamTooLong, Window
from avsentry.stream import convert
from avsentry.stream._proto.avsentry.v1 import guard_pb2 as pb
from avsentry.stream._proto.avsentry.v1 import guard_pb2_grpc as pb_grpc
from avsentry.stream.batching import Batcher
from avsentry.stream.config import ServerConfig
from avsentry.stream.errors import Draining, GuardError, InvalidRequest, TooManyStreams, status_for
from avsentry.stream.metrics import Metrics
from avsentry.stream.registry import ModelRegistry

log = logging.getLogger("avsentry.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Guard"].full_name
_END = object()


@dataclass(slots=True)
class _Pending:
    window: Window
    arrived: float
    interim: asyncio.Future | None
    final: asyncio.Future


class GuardService(pb_grpc.GuardServicer):
    """Implements ``avsentry.v1.Guard``."""

    def __init__(
        self, config: ServerConfig, registry: ModelRegistry, batcher: Batcher, metrics: Metrics
    ) -> None:
        self.config = config
        self.registry = registry
        self.batcher = batcher
        self.metrics = metrics
        self.draining = False
        self.active = 0

    # -- StreamAudio ------------------------------------------------------------------------
    async def StreamAudio(
        self, request_iterator: AsyncIterator[pb.AudioRequest], context
    ) -> AsyncIterator[pb.Verdict]:  # noqa: N802
        try:
            if self.draining:
                raise Draining("server is shutting down")
            if self.active >= self.config.max_streams:
                raise TooManyStreams(f"server is at its limit of {self.config.max_streams} streams")
            self.active += 1
            self.metrics.active_streams.inc()
        except GuardError as e:
            await self._abort(context, e)
            return
        reader: asyncio.Task | None = None
        try:
            first = await anext(aiter(request_iterator), None)
            if first is None or first.WhichOneof("request") != "config":
                raise InvalidRequest("the first message must be a StreamConfig")
            manifest = self.registry.manifest(first.config.model)
            settings = convert.settings_from_proto(
                first.config, manifest, default_detector=manifest.extra.get("detector"), threshold=None
            )
            # first use of a model or configuration loads weights and builds codecs: off the loop
            detector = await asyncio.to_thread(self.registry.detector, settings.model, settings.detector)
            session = StreamSession(
                input_rate_hz=settings.sample_rate_hz,
                channels=settings.channels,
                model_rate_hz=manifest.spec.sample_rate_hz,
                window=settings.window,
                hop=settings.hop,
                max_input_samples=int(self.config.max_stream_s * settings.sample_rate_hz),
            )
            pending: asyncio.Queue = asyncio.Queue(maxsize=32)
            reader = asyncio.get_running_loop().create_task(
                self._read(request_iterator, settings, session, detector, pending)
            )
            labels = manifest.spec.labels
            while True:
                item = await pending.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                if item.interim is not None:
                    probs = await item.interim
                    yield convert.interim_to_proto(
                        probs,
                        labels=labels,
                        window=item.window,
                        settings=settings,
                        latency_ms=(time.perf_counter() - item.arrived) * 1000,
                    )
                verdict = await item.final
                latency = time.perf_counter() - item.arrived
                self.metrics.windows.labels(settings.model).inc()
                self.metrics.latency.observe(latency)
                if verdict.flagged:
                    self.metrics.flags.labels(settings.model).inc()
                yield convert.verdict_to_proto(
                    verdict, labels=labels, window=item.window, settings=settings, latency_ms=latency * 1000
                )
        except (GuardError, ValueError, StreamTooLong) as e:
            await self._abort(context, e)
        finally:
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
            self.active -= 1
            self.metrics.active_streams.dec()

    async def _read(
        self, requests, settings, session: StreamSession, detector, pending: asyncio.Queue
    ) -> None:
        """Consume chunks, cut windows, submit them; errors go down the pending queue in order."""
        max_frames = self.config.max_chunk_ms * settings.sample_rate_hz // 1000
        expected = 0
        try:
            async for req in requests:
                if req.WhichOneof("request") != "chunk":
                    raise InvalidRequest("only the first message may be a StreamConfig")
                if req.chunk.sequence != expected:
                    raise InvalidRequest(f"chunk sequence {req.chunk.sequence} where {expected} was expected")
                expected += 1
                frames = convert.decode_chunk(req.chunk.data, settings, max_frames=max_frames)
                now = time.perf_counter()
                for w in session.push(frames):
                    await self._submit(w, now, settings, detector, pending)
                self.metrics.queue_depth.set(self.batcher.depth)
            now = time.perf_counter()
            for w in session.flush():
                await self._submit(w, now, settings, detector, pending)
            await pending.put(_END)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - reported to the client in stream order
            await pending.put(e)

    async def _submit(self, w: Window, arrived: float, settings, detector, pending: asyncio.Queue) -> None:
        interim, final = await self.batcher.submit(detector, w.samples, w.start, interim=settings.interim)
        await pending.put(_Pending(window=w, arrived=arrived, interim=interim, final=final))

    # -- CheckAudio ---------------------------------------------------------------------------
    async def CheckAudio(self, request: pb.CheckAudioRequest, context) -> pb.CheckAudioResponse:  # noqa: N802
        try:
            if self.draining:
                raise Draining("server is shutting down")
            manifest = self.registry.manifest(request.config.model)
            which = request.WhichOneof("audio")
            if which is None:
                raise InvalidRequest("CheckAudioRequest needs file or pcm audio")
            settings = convert.settings_from_proto(
                request.config,
                manifest,
                default_detector=manifest.extra.get("detector"),
                threshold=None,
                require_audio_format=which == "pcm",
            )
            rate = manifest.spec.sample_rate_hz
            t0 = time.perf_counter()
            if which == "file":
                audio = await asyncio.to_thread(read_audio, request.file, sample_rate_hz=rate)
                settings = replace(settings, sample_rate_hz=rate, channels=1)
                frames = audio[:, None]
            else:
                frames = convert.decode_chunk(request.pcm, settings, max_frames=len(request.pcm))
            session = StreamSession(
                input_rate_hz=settings.sample_rate_hz,
                channels=settings.channels,
                model_rate_hz=rate,
                window=settings.window,
                hop=settings.hop,
                max_input_samples=int(self.config.max_stream_s * settings.sample_rate_hz),
            )
            windows = await asyncio.to_thread(lambda: session.push(frames) + session.flush())
            # first use of a model or configuration loads weights and builds codecs: off the loop
            detector = await asyncio.to_thread(self.registry.detector, settings.model, settings.detector)
            futures = [(await self.batcher.submit(detector, w.samples, w.start))[1] for w in windows]
            verdicts = await asyncio.gather(*futures)
            out = pb.CheckAudioResponse()
            latency_ms = (time.perf_counter() - t0) * 1000
            for w, v in zip(windows, verdicts, strict=True):
                out.verdicts.append(
                    convert.verdict_to_proto(
                        v, labels=manifest.spec.labels, window=w, settings=settings, latency_ms=latency_ms
                    )
                )
                self.metrics.windows.labels(settings.model).inc()
                if v.flagged:
                    self.metrics.flags.labels(settings.model).inc()
            return out
        except (GuardError, ValueError, StreamTooLong) as e:
            await self._abort(context, e)
            raise

    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:  # noqa: N802
        return pb.ListModelsResponse(
            models=[
                convert.model_info(m, is_default=name == self.registry.default)
                for name, m in self.registry.manifests.items()
            ]
        )

    async def _abort(self, context, e: BaseException) -> None:
        """End the call with the status code for ``e`` and its one-line message."""
        code = status_for(e)
        self.metrics.errors.labels(code.name).inc()
        await context.abort(code, str(e).splitlines()[0] if str(e) else type(e).__name__)


class TokenAuth(grpc.aio.ServerInterceptor):
    """Bearer-token check on every call but health checks: UNAUTHENTICATED without it."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}"

        async def deny(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")

        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.stream_stream_rpc_method_handler(deny)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if details.method.startswith("/grpc.health.v1.Health/"):
            return await continuation(details)
        metadata = dict(details.invocation_metadata or ())
        if metadata.get("authorization") == self._expected:
            return await continuation(details)
        return self._deny_stream if details.method.endswith("/StreamAudio") else self._deny_unary


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

    async def stop(self, grace: float | None = None) -> None:
        """Drain: refuse new calls, mark health NOT_SERVING, let open calls finish within grace."""
        self.service.draining = True
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.config.grace_s if grace is None else grace)
        await self.batcher.stop()


async def start_server(config: ServerConfig, *, registry: ModelRegistry | None = None) -> RunningServer:
    """Build and start the server (port 0 picks a free port). Loads and warms up the default model."""
    if config.torch_threads:
        import torch

        torch.set_num_threads(config.torch_threads)
    registry = registry or ModelRegistry(
        config.model, config.extra_models, backend=config.backend, device=config.device
    )
    await asyncio.to_thread(registry.warm_up)
    metrics = Metrics()
    batcher = Batcher(
        max_batch=config.max_batch,
        max_wait_ms=config.max_wait_ms,
        workers=config.workers,
        queue_size=config.queue_size,
        on_batch=lambda n, s: metrics.batch_size.observe(n),
    )
    batcher.start()
    interceptors = [TokenAuth(config.token)] if config.token else []
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ],
    )
    service = GuardService(config, registry, batcher, metrics)
    pb_grpc.add_GuardServicer_to_server(service, server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    await health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
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
    if port == 0:
        raise RuntimeError(f"could not bind {config.target}")
    await server.start()
    metrics_port = metrics.serve(config.metrics_port, config.metrics_address) if config.metrics_port else None
    return RunningServer(
        server=server,
        service=service,
        health=health,
        batcher=batcher,
        port=port,
        metrics_port=metrics_port,
        config=config,
    )


async def serve_forever(
    config: ServerConfig, *, ready: Callable[[RunningServer], None] | None = None
) -> None:
    """Run until SIGINT/SIGTERM, then shut down gracefully."""
    running = await start_server(config)
    if ready is not None:
        ready(running)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining (grace %.1f s)", config.grace_s)
    await running.stop()
