"""The models a server guards, their recognizers, and a bounded cache of detectors.

One detector per (model, defence configuration): windows of every stream that uses the same
configuration are batched together. Configurations are normalized (``DetectorConfig`` stores
canonical transform specs), so "mp3" and "mp3:bitrate_kbps=32" share one detector. The cache is
an LRU of at most ``max_detectors`` entries: a client cycling through configurations cannot grow
memory without bound (a stream keeps its own reference while it runs). Each detector's cost per
window is measured when it is built, for admission control.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from avsentry.pipelines.detection import Detector, DetectorConfig
from avsentry.pipelines.recognizers import Manifest, SmoothableRecognizer, load_recognizer, read_manifest
from avsentry.pipelines.types import ModelSpec
from avsentry.stream.convert import ModelDefence
from avsentry.stream.errors import InvalidRequest, clip
from avsentry.stream.inference import AnyDetector, PoolClient, RemoteDetector

# Windows judged to measure a detector's cost: two consecutive windows of each of this many
# synthetic streams (the second window of a stream reuses what the first computed, as in serving).
_COST_STREAMS = 8


@dataclass(frozen=True, slots=True)
class BuiltDetector:
    """A detector (in this process, or on the inference pool) and its measured wall time per
    window, in seconds."""

    detector: AnyDetector
    cost_s: float


class ModelRegistry:
    """Loads manifests at start-up and recognizers/detectors on first use.

    Args:
        default: Embedded model name or manifest path served when a request names no model.
        extra: More manifests to serve.
        backend: ``"torch"`` or ``"onnx"``.
        device: ``"cpu"``, ``"cuda[:N]"`` or ``"auto"``.
        max_detectors: Detectors kept built (least recently used ones are dropped).
        seed: Base seed of every detector's noise.
        defence_overrides: The server's default defence, as ``DetectorConfig.from_card``
            overrides applied to each audio model card's calibrated configuration (video models
            run their card's defence).
        hop_ms: The default hop.
        parallel: Detector calls the server runs at once (its batch workers), for the cost.
        executor: Where every detector's codec work runs (default: the process-wide thread pool).
        pool: Run detectors on this inference pool (:mod:`~avsentry.stream.inference`) instead
            of in this process: no model is loaded here, and each detector's cost is measured
            through the pool.
        on_cache: Called with ``"hit"``, ``"miss"`` or ``"evict"`` (metrics).
    """

    def __init__(
        self,
        default: str,
        extra: tuple[str, ...] = (),
        *,
        backend: str,
        device: str,
        max_detectors: int = 16,
        seed: int = 0,
        defence_overrides: dict | None = None,
        hop_ms: int = 500,
        parallel: int = 1,
        executor: Executor | None = None,
        pool: PoolClient | None = None,
        on_cache: Callable[[str], None] | None = None,
    ) -> None:
        self.backend = backend
        self.pool = pool
        self.device = device
        self.max_detectors = max_detectors
        self.parallel = parallel
        self.executor = executor
        self.manifests: dict[str, Manifest] = {}
        self.defences: dict[str, ModelDefence] = {}
        self._refs: dict[str, str] = {}
        for ref in (default, *extra):
            m = read_manifest(ref)
            self.manifests[m.spec.name] = m
            self._refs[m.spec.name] = ref
            # the server's [defence] settings are in audio units (codecs, sigma in sample units):
            # a video model runs its card's defence
            overrides = (defence_overrides or {}) if m.spec.modality == "audio" else {}
            cfg, calibrated = DetectorConfig.from_card(m.detector, seed=seed, **overrides)
            # audio: the server's hop; video: one clip after another
            model_hop_ms = hop_ms if m.spec.modality == "audio" else round(1000 * m.spec.window_s)
            self.defences[m.spec.name] = ModelDefence(
                detector=cfg, calibrated=calibrated, hop_ms=model_hop_ms
            )
        self.default = read_manifest(default).spec.name
        # what a call that names no model gets, per modality: the default if it is of that
        # modality, else the first served model that is
        self.defaults: dict[str, str] = {}
        for name in (self.default, *self.manifests):
            self.defaults.setdefault(self.manifests[name].spec.modality, name)
        self._recognizers: dict[str, SmoothableRecognizer] = {}
        self._detectors: OrderedDict[tuple[str, DetectorConfig], BuiltDetector] = OrderedDict()
        self._lock = threading.Lock()
        self._on_cache = on_cache or (lambda event: None)

    def manifest(self, name: str, modality: str = "audio") -> Manifest:
        """The named model's manifest; an empty name is the default model of ``modality``."""
        if not name:
            if modality not in self.defaults:
                raise InvalidRequest(
                    f"this server guards no {modality} model (it has: {', '.join(self.manifests)})"
                )
            name = self.defaults[modality]
        if name not in self.manifests:
            raise InvalidRequest(f"unknown model {clip(name)}; this server has: {', '.join(self.manifests)}")
        return self.manifests[name]

    def recognizer(self, name: str) -> SmoothableRecognizer:
        """The named model, loaded on first use (not with an inference pool: it runs there)."""
        if self.pool is not None:
            raise RuntimeError("models run on the inference pool, not in this front end")
        with self._lock:
            if name not in self._recognizers:
                self._recognizers[name] = load_recognizer(
                    self._refs[name], backend=self.backend, device=self.device
                )
            return self._recognizers[name]

    @property
    def cached(self) -> int:
        """Detectors currently built."""
        return len(self._detectors)

    def detector(self, name: str, config: DetectorConfig, *, cost_s: float | None = None) -> BuiltDetector:
        """The shared detector for ``(model, config)``, built (and its cost measured, unless
        ``cost_s`` is given) on first use. Blocking: call it off the event loop.

        Raises:
            InvalidRequest: the model cannot run this configuration (e.g. a smoothing
                representation it does not offer).
        """
        key = (name, config)
        with self._lock:
            found = self._detectors.get(key)
            if found is not None:
                self._detectors.move_to_end(key)
        if found is not None:
            self._on_cache("hit")
            return found
        self._on_cache("miss")
        try:
            det: AnyDetector
            if self.pool is not None:
                det = RemoteDetector(self.pool, name, self.manifests[name].spec, config)
            else:
                det = Detector(self.recognizer(name), config, executor=self.executor)
        except ValueError as e:
            raise InvalidRequest(str(e)) from e
        built = BuiltDetector(det, measure_cost(det, parallel=self.parallel) if cost_s is None else cost_s)
        with self._lock:
            built = self._detectors.setdefault(key, built)
            self._detectors.move_to_end(key)
            while len(self._detectors) > self.max_detectors:
                self._detectors.popitem(last=False)
                self._on_cache("evict")
        return built

    def warm_up(self, cost_s: float | None = None) -> BuiltDetector:
        """Load the default model and build (and measure) its default detector."""
        return self.detector(self.default, self.defences[self.default].detector, cost_s=cost_s)


def measure_cost(detector: AnyDetector, *, parallel: int = 1) -> float:
    """Wall seconds per window of ``detector`` in serving conditions: ``parallel`` workers (as the
    batcher runs them) each judging windows of several streams, each window reusing what its
    stream's previous window computed where the detector can. The throughput is ``1 / cost``.

    The input looks like what the model is served (see :func:`synthetic_stream`), so codecs work
    as hard as in service. The best of two runs is kept.
    """
    spec = detector.spec
    window = spec.window_shape[0]
    hop = max(1, window // 2)
    rng = np.random.default_rng(0)
    audio = [
        [synthetic_stream(spec, window + 2 * hop, rng) for _ in range(_COST_STREAMS)] for _ in range(parallel)
    ]
    barrier = threading.Barrier(parallel)

    def worker(streams: list[np.ndarray], spans: list[float]) -> None:
        states = [detector.stream_state() for _ in streams]
        for k, start in enumerate((0, hop, 2 * hop)):
            batch = np.stack([s[start : start + window] for s in streams])
            if k == 1:
                barrier.wait()
                spans.append(time.perf_counter())
            detector.analyze(
                batch, keys=list(range(len(streams))), starts=[start] * len(streams), states=states
            )
        spans.append(time.perf_counter())

    best = float("inf")
    for _ in range(2):
        spans: list[list[float]] = [[] for _ in range(parallel)]
        threads = [threading.Thread(target=worker, args=(a, sp)) for a, sp in zip(audio, spans, strict=True)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = max(sp[1] for sp in spans) - min(sp[0] for sp in spans)
        best = min(best, wall / (2 * _COST_STREAMS * parallel))
    return best


def synthetic_stream(spec: ModelSpec, length: int, rng: np.random.Generator) -> np.ndarray:
    """``length`` model-rate steps of input that costs what real input costs: speech-like audio
    (harmonics under a syllable-rate envelope, plus noise), or video of a textured square moving
    over a gradient with sensor noise (motion and texture make H.264 work as on camera footage)."""
    if spec.modality == "audio":
        t = np.arange(length) / spec.sample_rate_hz
        f0 = rng.uniform(90, 220)
        x = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6)) / k for k in range(1, 12))
        env = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(2, 5) * t))
        return (0.1 * x * env + 0.01 * rng.standard_normal(len(t))).astype(np.float32)
    video = spec.video
    h, w = video.height, video.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    background = np.stack([xx / w, yy / h, 0.5 * np.ones_like(xx)], axis=-1)
    texture = rng.uniform(0, 1, (h // 4, w // 4, 3)).astype(np.float32)
    side = max(2, min(h, w) // 4)
    frames = np.empty((length, h, w, 3), np.float32)
    for i in range(length):
        frame = background.copy()
        y0 = (i * 2) % max(1, h - side)
        x0 = (i * 3) % max(1, w - side)
        frame[y0 : y0 + side, x0 : x0 + side] = (
            texture[: side // 4 + 1].repeat(4, 0).repeat(4, 1)[:side, :side]
        )
        frames[i] = frame
    frames += 0.02 * rng.standard_normal(frames.shape).astype(np.float32)
    return np.clip(frames, 0.0, 1.0)
