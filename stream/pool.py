"""The inference pool: a Ray Serve application of stateless detector replicas.

Front ends (``avsentry serve --inference ray[=ADDRESS]``) send it batches of windows
(:class:`~avsentry.stream.inference.Batch`); each replica holds an
:class:`~avsentry.stream.inference.InferenceWorker` (the models, a cache of detectors, the same
detector code as the in-process server) and answers with verdicts. Serve's dynamic batching
(``@serve.batch``) merges the batches of several front ends into one detector call per model and
configuration; Serve's autoscaling adds and removes replicas with the load; a replica with
``num_gpus`` runs its models on CUDA (``device = "auto"``).

Run it::

    serve run avsentry.stream.pool:app                        # one CPU replica, digits model
    serve run avsentry.stream.pool:build models=digits,actions num_replicas=2
    serve run --non-blocking deploy/ray-serve.yaml            # onto a running cluster

``build`` takes (all optional): ``models`` (comma-separated names or manifest paths; default
``digits,actions``), ``backend`` (torch), ``device`` (auto), ``num_replicas`` (1; ignored when the
config file gives an autoscaling policy), ``num_cpus`` (1), ``num_gpus`` (0), ``max_batch_size``
(8 front-end batches per detector call), ``batch_wait_timeout_s`` (0.002), ``codec_processes``
(-1: one per CPU) and ``torch_threads`` (1). A replica runs two detector calls at once (one
forward pass while the other's codecs run).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
from ray import serve

from avsentry.stream.inference import Batch, InferenceWorker, Judged

DEFAULTS: dict[str, Any] = {
    "models": "digits,actions",
    "backend": "torch",
    "device": "auto",
    "num_replicas": 1,
    "num_cpus": 1,
    "num_gpus": 0,
    "max_batch_size": 8,
    "batch_wait_timeout_s": 0.002,
    "codec_processes": -1,
    "torch_threads": 1,
}


@serve.deployment(name="InferencePool", max_ongoing_requests=32, health_check_period_s=5)
class InferencePool:
    """One replica: an :class:`InferenceWorker` behind Serve's batching."""

    def __init__(
        self,
        models: Sequence[str],
        backend: str,
        device: str,
        codec_processes: int,
        torch_threads: int,
        max_batch_size: int,
        batch_wait_timeout_s: float,
    ) -> None:
        self.worker = InferenceWorker(
            models,
            backend=backend,
            device=device,
            codec_processes=codec_processes,
            torch_threads=torch_threads,
        )
        for method in (self.judge, self.raw):  # what @serve.batch adds to a method
            method.set_max_batch_size(max_batch_size)  # type: ignore[union-attr]
            method.set_batch_wait_timeout_s(batch_wait_timeout_s)  # type: ignore[union-attr]

    def describe(self, _: object = None) -> dict[str, Any]:
        return self.worker.describe()

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002, max_concurrent_batches=2)
    async def judge(self, batches: list[Batch]) -> list[Judged]:
        # the detector blocks (forward passes, codec round trips): off the replica's event loop
        return await asyncio.to_thread(self.worker.judge, batches)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002, max_concurrent_batches=2)
    async def raw(self, batches: list[tuple[str, np.ndarray]]) -> list[np.ndarray]:
        return await asyncio.to_thread(self.worker.raw, batches)

    def __del__(self) -> None:
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.close()


def build(args: dict[str, Any]) -> serve.Application:
    """The pool application, from ``serve run``/config ``args`` (see the module docstring).

    Raises:
        ValueError: an unknown or malformed argument.
    """
    unknown = set(args) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown pool arguments {sorted(unknown)}; known: {', '.join(DEFAULTS)}")
    a = {**DEFAULTS, **args}
    models = a["models"]
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    if not models:
        raise ValueError("models must name at least one model")
    actor: dict[str, Any] = {"num_cpus": float(a["num_cpus"])}
    if float(a["num_gpus"]):
        actor["num_gpus"] = float(a["num_gpus"])
    # @serve.deployment made the class a Deployment
    deployment = InferencePool.options(  # type: ignore[attr-defined]
        num_replicas=int(a["num_replicas"]), ray_actor_options=actor
    )
    return deployment.bind(
        list(models),
        str(a["backend"]),
        str(a["device"]),
        int(a["codec_processes"]),
        int(a["torch_threads"]),
        int(a["max_batch_size"]),
        float(a["batch_wait_timeout_s"]),
    )


app = build({})
