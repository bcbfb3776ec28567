"""The seam between front ends and the defended inference.

A front end (``avsentry serve``) keeps everything per stream: its config, windowing, ordering,
limits, auth, policy and admission control. What it asks of the inference is stateless: judge a
batch of windows of one model under one detector configuration, with each window's noise key,
and return one :class:`~avsentry.pipelines.detection.WindowVerdict` per window. A window's verdict
depends only on the model, the configuration (its seed included), the window and its key, never
on what it is batched with (:meth:`~avsentry.pipelines.detection.Detector.analyze`), so the same
verdicts come back wherever the batch runs.

- In process (the default), the batcher's threads call
  :meth:`Detector.analyze <avsentry.pipelines.detection.Detector.analyze>` directly.
- With ``avsentry serve --inference ray[=ADDRESS]`` they call :meth:`RemoteDetector.analyze`,
  which sends the batch to a Ray Serve application (:mod:`avsentry.stream.pool`). Its replicas
  each hold an :class:`InferenceWorker`: the registry's models and the same detector code.
  A batch whose replica dies before answering is sent again and lands on another replica
  (Serve stops routing to a dead replica and starts a new one).

What the remote mode gives up: the codec parts a stream's consecutive windows share are
round-tripped once per window instead of once per stream (a
:class:`~avsentry.pipelines.detection.StreamState` lives in one process), which doubles the codec
work at a half-window hop. The verdicts are the same.

Ray is imported only here and in :mod:`avsentry.stream.pool`, and only when the remote mode is
used: the ``ray`` extra (``pip install 'avsentry[ray]'``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from avsentry.pipelines.detection import Detector, DetectorConfig, StreamState, WindowVerdict, checked_windows
from avsentry.pipelines.recognizers import Manifest
from avsentry.pipelines.transforms import transform_for_input
from avsentry.pipelines.types import ModelSpec

log = logging.getLogger("avsentry.inference")

DEFAULT_APP = "avsentry"  # the Serve application's name, in deploy/ray-serve*.yaml too
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 3


class PoolUnavailable(RuntimeError):
    """The inference pool cannot be reached, or does not serve what this front end needs."""


@dataclass(frozen=True, slots=True)
class Batch:
    """One front end's windows of one model under one detector configuration.

    Attributes:
        model: The model's name (as the pool's registry knows it).
        config: The detector configuration, its noise seed and threshold included.
        windows: ``(batch, *window_shape)`` float32.
        keys: Each window's noise key.
    """

    model: str
    config: DetectorConfig
    windows: np.ndarray
    keys: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Judged:
    """The answer to one :class:`Batch`: its verdicts, or why the worker failed on it."""

    verdicts: tuple[WindowVerdict, ...] = ()
    error: str | None = None


def model_digest(manifest: Manifest) -> str:
    """A digest of a model's manifest and of every weights file it names: a front end and a pool
    replica serve the same model only if their digests agree."""
    h = hashlib.blake2b(digest_size=12)
    h.update(manifest.path.read_bytes())
    for backend in sorted(manifest.backends):
        path = manifest.path_for(backend)
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


class InferenceWorker:
    """What one inference replica holds and does: the models, a bounded cache of detectors (one
    per model and configuration, as in ``avsentry serve``), and the judging of batches.

    Args:
        models: Embedded model names or manifest paths; every one loads now.
        backend: ``"torch"`` or ``"onnx"``.
        device: ``"cpu"``, ``"cuda[:N]"`` or ``"auto"`` (CUDA when present).
        max_detectors: Detector configurations kept built.
        codec_processes: Codec round trips in this many worker processes (-1: one per CPU; 0:
            threads in this process).
        torch_threads: torch intra-op threads (0: torch's default).
    """

    def __init__(
        self,
        models: Sequence[str] = ("digits",),
        *,
        backend: str = "torch",
        device: str = "auto",
        max_detectors: int = 16,
        codec_processes: int = -1,
        torch_threads: int = 0,
    ) -> None:
        from avsentry.pipelines.transforms import CodecProcessPool
        from avsentry.stream.registry import ModelRegistry

        if not models:
            raise ValueError("an inference worker needs at least one model")
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        self.pool = None if codec_processes == 0 else CodecProcessPool(max(0, codec_processes) or None)
        self.registry = ModelRegistry(
            models[0],
            tuple(models[1:]),
            backend=backend,
            device=device,
            max_detectors=max_detectors,
            executor=self.pool,
        )
        self.digests = {name: model_digest(m) for name, m in self.registry.manifests.items()}
        for name in self.registry.manifests:
            self.registry.recognizer(name)
        self.device = str(self.registry.recognizer(self.registry.default).device)

    def describe(self) -> dict[str, Any]:
        """The models served (name -> digest), the smoothing representations each offers, the
        device, and this process's id."""
        from avsentry.pipelines.smoothing import offered_representations

        return {
            "models": dict(self.digests),
            "representations": {
                name: offered_representations(self.registry.recognizer(name)) for name in self.digests
            },
            "device": self.device,
            "pid": os.getpid(),
        }

    def judge(self, batches: Sequence[Batch]) -> list[Judged]:
        """Judge the batches, one detector call per (model, configuration) over all of them.
        A failing call is retried batch by batch, so a batch that breaks the detector fails
        alone."""
        out: list[Judged | None] = [None] * len(batches)
        groups: dict[tuple[str, DetectorConfig], list[int]] = {}
        for i, b in enumerate(batches):
            groups.setdefault((b.model, b.config), []).append(i)
        for (model, config), members in groups.items():
            try:
                detector = self.registry.detector(model, config, cost_s=0.0).detector
                verdicts = detector.analyze(
                    np.concatenate([batches[i].windows for i in members]),
                    keys=[k for i in members for k in batches[i].keys],
                )
            except Exception:  # noqa: BLE001 - isolate: retry each batch alone
                if len(members) == 1:
                    out[members[0]] = self._failed(batches[members[0]])
                    continue
                for i in members:
                    out[i] = self._judge_one(batches[i])
                continue
            pos = 0
            for i in members:
                n = len(batches[i].keys)
                out[i] = Judged(verdicts=tuple(verdicts[pos : pos + n]))
                pos += n
        return [j if j is not None else Judged(error="not judged") for j in out]

    def _judge_one(self, b: Batch) -> Judged:
        try:
            detector = self.registry.detector(b.model, b.config, cost_s=0.0).detector
            return Judged(verdicts=tuple(detector.analyze(b.windows, keys=list(b.keys))))
        except Exception:  # noqa: BLE001 - reported to the front end, which fails those windows
            return self._failed(b)

    @staticmethod
    def _failed(b: Batch) -> Judged:
        log.exception(
            "detector failed on a batch", extra={"fields": {"model": b.model, "windows": len(b.keys)}}
        )
        return Judged(error=f"the detector failed on a batch of {len(b.keys)} windows of model {b.model!r}")

    def raw(self, batches: Sequence[tuple[str, np.ndarray]]) -> list[np.ndarray]:
        """The raw softmax ``(batch, classes)`` of each ``(model, windows)``: the interim results."""
        return [self.registry.recognizer(model).predict(windows) for model, windows in batches]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def _retryable() -> tuple[type[BaseException], ...]:
    """Errors that mean the replica (not the batch) is gone: Serve routes a retry elsewhere."""
    from ray.exceptions import ActorUnavailableError, RayActorError

    return (RayActorError, ActorUnavailableError)


class PoolClient:
    """A front end's connection to the inference pool: a Serve deployment handle, the retry
    policy, and what the pool serves.

    Args:
        handle: A Ray Serve ``DeploymentHandle`` of the pool's deployment.
        timeout_s: Longest wait for one batch's answer.
        retries: Times a batch is sent again after its replica died.
        started_cluster: This process started the Ray instance (and stops it on ``close``).
    """

    def __init__(
        self,
        handle: Any,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        started_cluster: bool = False,
        description: dict[str, Any] | None = None,
    ) -> None:
        self.handle = handle
        self.timeout_s = timeout_s
        self.retries = retries
        self.started_cluster = started_cluster
        self.description = description or {}
        self.retried = 0  # batches sent again after a replica died
        self._lock = threading.Lock()
        self._errors = _retryable()

    def call(self, method: str, arg: Any) -> Any:
        """``method(arg)`` on some replica, blocking; sent again when the replica dies.

        Raises:
            PoolUnavailable: every try found a dead replica.
            TimeoutError: no answer within ``timeout_s``.
        """
        for attempt in range(self.retries + 1):
            try:
                return getattr(self.handle, method).remote(arg).result(timeout_s=self.timeout_s)
            except self._errors as e:
                if attempt == self.retries:
                    raise PoolUnavailable(
                        f"the inference pool lost a replica on each of {self.retries + 1} tries: {e}"
                    ) from e
                with self._lock:
                    self.retried += 1
                log.warning(
                    "inference replica lost; sending its batch again",
                    extra={"fields": {"method": method, "attempt": attempt + 1, "error": type(e).__name__}},
                )
                time.sleep(min(2.0, 0.1 * 2**attempt))
        raise AssertionError("unreachable")

    def check_models(self, manifests: dict[str, Manifest]) -> None:
        """Refuse to start unless the pool serves each of ``manifests``, byte for byte."""
        served = self.description.get("models", {})
        for name, manifest in manifests.items():
            if name not in served:
                raise PoolUnavailable(
                    f"the inference pool does not serve model {name!r} (it serves: "
                    f"{', '.join(served) or 'nothing'}); add it to the pool's models"
                )
            if served[name] != model_digest(manifest):
                raise PoolUnavailable(
                    f"the inference pool's model {name!r} differs from this front end's "
                    f"({manifest.path}): deploy the same manifest and weights to both"
                )

    def close(self) -> None:
        if self.started_cluster:  # ending the instance this process started ends its replicas
            import ray

            ray.shutdown()


class RemoteDetector:
    """A detector whose batches run on the inference pool; to the batcher and admission control
    it looks like a :class:`~avsentry.pipelines.detection.Detector` (``spec``, ``config``,
    ``stream_state``, ``analyze``)."""

    def __init__(self, client: PoolClient, model: str, spec: ModelSpec, config: DetectorConfig) -> None:
        """Raises ValueError where :class:`~avsentry.pipelines.detection.Detector` would: a
        transform of the other modality, a smoothing representation the model does not offer."""
        for t in config.transforms:
            transform_for_input(t, spec.input)
        offered = client.description.get("representations", {}).get(model)
        s = config.smoothing
        if s is not None and offered is not None and s.representation not in offered:
            raise ValueError(
                f"smoothing representation {s.representation!r} is not offered by model "
                f"{model!r} (offers {tuple(offered)})"
            )
        self.client = client
        self.model = model
        self.spec = spec
        self.config = config

    def stream_state(self) -> StreamState | None:
        """None: nothing is kept between a stream's windows in the remote mode (see the module)."""
        return None

    def analyze(
        self,
        windows: np.ndarray,
        keys: Sequence[int] | None = None,
        *,
        starts: Sequence[int] | None = None,
        states: Sequence[StreamState | None] | None = None,
        on_raw: Callable[[np.ndarray], None] | None = None,
    ) -> list[WindowVerdict]:
        """:meth:`Detector.analyze <avsentry.pipelines.detection.Detector.analyze>` on the pool
        (``starts`` and ``states`` are accepted and unused). With ``on_raw``, the raw softmax is
        asked for in a second, cheap call that runs beside the full one.

        Raises:
            ValueError: wrong shape, or non-finite samples (checked here, before sending).
            RuntimeError: the pool's detector failed on the batch.
            PoolUnavailable, TimeoutError: see :meth:`PoolClient.call`.
        """
        x, keys = checked_windows(self.spec, windows, keys)
        if len(x) == 0:
            return []
        batch = Batch(model=self.model, config=self.config, windows=x, keys=tuple(keys))
        raw_thread = None
        if on_raw is not None:
            raw_thread = threading.Thread(target=self._interim, args=(x, on_raw), daemon=True)
            raw_thread.start()
        judged: Judged = self.client.call("judge", batch)
        if raw_thread is not None:
            raw_thread.join()
        if judged.error is not None:
            raise RuntimeError(judged.error)
        return list(judged.verdicts)

    def _interim(self, x: np.ndarray, on_raw: Callable[[np.ndarray], None]) -> None:
        try:
            on_raw(self.client.call("raw", (self.model, x)))
        except Exception:  # noqa: BLE001 - an interim result is optional; the final one decides
            log.warning("interim inference failed", exc_info=True)


def connect(
    address: str | None,
    *,
    app: str = DEFAULT_APP,
    models: Sequence[str] = ("digits",),
    backend: str = "torch",
    device: str = "auto",
    replicas: int = 1,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    retries: int = DEFAULT_RETRIES,
) -> PoolClient:
    """Connect to the inference pool.

    ``address=None`` starts a local Ray instance in this process and deploys the pool there
    (``replicas`` CPU replicas serving ``models`` on ``backend``/``device``): one machine, no
    operator. Otherwise ``address`` is anything ``ray.init`` takes (``auto``, ``HOST:PORT``,
    ``ray://HOST:10001``) and the Serve application ``app`` must already run there
    (``serve run --non-blocking deploy/ray-serve.yaml``). Blocking.

    Raises:
        PoolUnavailable: Ray is not installed, the cluster or the application is not there.
    """
    try:
        import ray
        from ray import serve
    except ImportError as e:
        raise PoolUnavailable(
            "--inference ray needs Ray Serve: pip install 'avsentry[ray]' (or tools/setup.sh --ray)"
        ) from e
    started = address is None
    if not ray.is_initialized():
        try:
            ray.init(
                # "local": a new instance, never a cluster `ray start` left running here
                address=address or "local",
                log_to_driver=False,
                include_dashboard=False,
                logging_level=logging.WARNING,
                configure_logging=False,
            )
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise PoolUnavailable(f"cannot reach the Ray cluster at {address}: {e}") from e
    if started:
        from avsentry.stream.pool import build

        try:
            serve.run(
                build(
                    {"models": list(models), "backend": backend, "device": device, "num_replicas": replicas}
                ),
                name=app,
                route_prefix=None,
            )
        except Exception as e:  # noqa: BLE001 - Serve's deploy errors; the instance is ours to end
            ray.shutdown()
            raise PoolUnavailable(f"the inference pool did not start: {e}") from e
    try:
        _wait_running(serve, app, timeout_s)
        handle = serve.get_app_handle(app)
    except Exception as e:  # noqa: BLE001 - Serve raises its own exception types here
        if started:
            ray.shutdown()
        raise PoolUnavailable(
            f"no running Serve application {app!r} on the Ray cluster at {address}: deploy the pool "
            f"first (serve run --non-blocking deploy/ray-serve.yaml): {e}"
        ) from e
    client = PoolClient(handle, timeout_s=timeout_s, retries=retries, started_cluster=started)
    try:
        client.description = client.call("describe", None)
    except Exception as e:
        client.close()
        raise PoolUnavailable(f"the inference pool {app!r} does not answer: {e}") from e
    return client


def _wait_running(serve: Any, app: str, timeout_s: float) -> None:
    """Wait until the application runs (a pool just deployed still starts its replicas)."""
    start = time.monotonic()
    while True:
        status = serve.status().applications.get(app)
        state = getattr(getattr(status, "status", None), "value", None)
        if state == "RUNNING":
            return
        # an app that is deploying gets timeout_s; one that is not there, a few seconds (a
        # `serve run --non-blocking` just issued takes a moment to show)
        patience = timeout_s if status is not None else min(timeout_s, 10.0)
        if state in ("DEPLOY_FAILED", "UNHEALTHY") or time.monotonic() - start > patience:
            detail = f"status {state}: {status.message}" if status is not None else "not deployed"
            raise PoolUnavailable(detail)
        time.sleep(0.5)


AnyDetector = Detector | RemoteDetector  # what the batcher runs: in this process, or on the pool
