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
from avsentry.stream.convert import ModelDefence
from avsentry.stream.errors import InvalidRequest, clip

# Windows judged to measure a detector's cost: two consecutive windows of each of this many
# synthetic streams (the second window of a stream reuses what the first computed, as in serving).
_COST_STREAMS = 8


@dataclass(frozen=True, slots=True)
class BuiltDetector:
    """A detector and its measured wall time per window, in seconds."""

    detector: Detector
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
            overrides applied to each model card's calibrated configuration.
        hop_ms: The default hop.
        parallel: Detector calls the server runs at once (its batch workers), for the cost.
        executor: Where every detector's codec work runs (default: the process-wide thread pool).
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
        on_cache: Callable[[str], None] | None = None,
    ) -> None:
        self.backend = backend
        self.device = device
        self.max_detectors = max_detectors
        self.parallel = parallel
        self.executor = executor
        self.manifests: dict[str, Manifest] = {}
        self.defences: dict[str, ModelDefence] = {}
        self._refs: dict[str, str] = {}
        for ref in (default, *extra):
            m = read_manifest(ref)
            if m.spec.modality != "audio":
                raise ValueError(
                    f"model {m.spec.name!r} takes {m.spec.modality}: this server streams audio only so far "
                    f"(StreamVideo is not built yet); judge video files offline with avsentry check "
                    f"--model {ref}"
                )
            self.manifests[m.spec.name] = m
            self._refs[m.spec.name] = ref
            cfg, calibrated = DetectorConfig.from_card(m.detector, seed=seed, **(defence_overrides or {}))
            self.defences[m.spec.name] = ModelDefence(detector=cfg, calibrated=calibrated, hop_ms=hop_ms)
        self.default = read_manifest(default).spec.name
        self._recognizers: dict[str, SmoothableRecognizer] = {}
        self._detectors: OrderedDict[tuple[str, DetectorConfig], BuiltDetector] = OrderedDict()
        self._lock = threading.Lock()
        self._on_cache = on_cache or (lambda event: None)

    def manifest(self, name: str) -> Manifest:
        name = name or self.default
        if name not in self.manifests:
            raise InvalidRequest(f"unknown model {clip(name)}; this server has: {', '.join(self.manifests)}")
        return self.manifests[name]

    def recognizer(self, name: str) -> SmoothableRecognizer:
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


def measure_cost(detector: Detector, *, parallel: int = 1) -> float:
    """Wall seconds per window of ``detector`` in serving conditions: ``parallel`` workers (as the
    batcher runs them) each judging windows of several streams, each window reusing what its
    stream's previous window computed where the detector can. The throughput is ``1 / cost``.

    The windows are speech-like (harmonics under a syllable-rate envelope, plus noise) so codecs
    work as hard as on speech. The best of two runs is kept.
    """
    spec = detector.recognizer.spec
    rate, window = spec.sample_rate_hz, spec.window_samples
    hop = window // 2
    rng = np.random.default_rng(0)
    t = np.arange(window + 2 * hop) / rate

    def stream() -> np.ndarray:
        f0 = rng.uniform(90, 220)
        x = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6)) / k for k in range(1, 12))
        env = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(2, 5) * t))
        return (0.1 * x * env + 0.01 * rng.standard_normal(len(t))).astype(np.float32)

    audio = [[stream() for _ in range(_COST_STREAMS)] for _ in range(parallel)]
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
