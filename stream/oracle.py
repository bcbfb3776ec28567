"""A guard server seen from outside: a black-box query oracle (what a remote attacker sees) and a
remote guard (what ``avsentry evaluate --server`` judges by).

Each row of a ``(batch, window_samples)`` query goes to the server as one window of raw float32
PCM through the unary ``CheckAudio`` call (so exactly one verdict comes back per row); the
answer keeps only what a verdict exposes: the raw top-1 label (as an index into the model's
labels from ``ListModels``) and its confidence, the detector score and the flag. No probabilities.

It satisfies ``avsentry.tools.attacks.nes.Oracle`` structurally (``query(batch) -> answer`` with
``labels``, ``confidence``, ``probabilities``, ``flagged``, ``score``) without importing the tools
layer; the CLI or a test composes the two::

    with GuardClient("127.0.0.1:50051") as client:
        result = NES(max_queries=2000).run(GuardOracle(client), x, y)
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from avsentry.stream._proto.avsentry.v1 import guard_pb2 as pb
from avsentry.stream.client import GuardClient, make_config
from avsentry.stream.convert import encode_pcm


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdicts:
    """The server's answer for ``b`` rows, ``(b,)`` arrays (``probabilities`` is never exposed)."""

    labels: np.ndarray
    confidence: np.ndarray
    flagged: np.ndarray
    score: np.ndarray
    probabilities: None = None


class GuardOracle:
    """Queries a guard server one window per row.

    Args:
        client: A connected :class:`~avsentry.stream.client.GuardClient`.
        model: Model name as in ``ListModels``; empty: the server's default.
        max_in_flight: Concurrent ``CheckAudio`` calls (keep it under the server's
            ``max_streams``).
        config: Further :func:`~avsentry.stream.client.make_config` fields (``transforms``,
            ``smoothing_n``, ``threshold``...), within the server's policy.

    Attributes:
        labels: The model's label names (a verdict's ``raw_label`` maps to its index here).
        window_samples / sample_rate_hz: What each row must be.
    """

    def __init__(
        self, client: GuardClient, *, model: str = "", max_in_flight: int = 8, **config: Any
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        models = client.list_models()
        info = next((m for m in models if (m.name == model if model else m.is_default)), None)
        if info is None:
            raise ValueError(f"the server has no model {model or '(default)'!r}: {[m.name for m in models]}")
        self.client = client
        self.labels = list(info.labels)
        self.window_samples = int(info.window_samples)
        self.sample_rate_hz = int(info.sample_rate_hz)
        self.max_in_flight = max_in_flight
        self._index = {name: i for i, name in enumerate(self.labels)}
        self._config = make_config(
            model=info.name,
            encoding=pb.AUDIO_ENCODING_FLOAT32,
            sample_rate_hz=self.sample_rate_hz,
            **config,
        )

    def query(self, batch: np.ndarray) -> Verdicts:
        """One verdict per ``(window_samples,)`` row of ``batch``, in order."""
        verdicts = self.verdicts(batch)
        return Verdicts(
            labels=np.array([self._index[v.raw_label] for v in verdicts], dtype=np.int64),
            confidence=np.array([v.raw_confidence for v in verdicts], dtype=np.float32),
            flagged=np.array([v.flagged for v in verdicts], dtype=bool),
            score=np.array([v.score for v in verdicts], dtype=np.float32),
        )

    def verdicts(self, batch: np.ndarray) -> list[pb.Verdict]:
        """The server's whole verdict for each ``(window_samples,)`` row of ``batch``, in order."""
        x = np.asarray(batch, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.window_samples:
            raise ValueError(f"expected (batch, {self.window_samples}) rows, got {x.shape}")
        verdicts: list[pb.Verdict] = []
        pending: deque[grpc.Future] = deque()
        for row in x:
            if len(pending) >= self.max_in_flight:
                verdicts.append(self._one(pending.popleft()))
            req = pb.CheckAudioRequest(config=self._config, pcm=encode_pcm(row, pb.AUDIO_ENCODING_FLOAT32))
            pending.append(
                self.client.stub.CheckAudio.future(
                    req, metadata=self.client.metadata, timeout=self.client.timeout_s
                )
            )
        return verdicts + [self._one(f) for f in pending]

    @staticmethod
    def _one(future: grpc.Future) -> pb.Verdict:
        verdicts = future.result().verdicts
        if len(verdicts) != 1:
            raise RuntimeError(f"expected one verdict per window, got {len(verdicts)}")
        return verdicts[0]


@dataclass(frozen=True, slots=True)
class RemoteDefended:
    name: str
    label: int
    confidence: float
    distance: float


@dataclass(frozen=True, slots=True)
class RemoteVerdict:
    """The fields of a server's verdict that offline evaluation reads, labels as indices."""

    raw_label: int
    raw_confidence: float
    score: float
    flagged: bool
    defended: tuple[RemoteDefended, ...]
    reasons: tuple[str, ...]


class RemoteGuard(GuardOracle):
    """A running server's guard as a local callable, windows in, one verdict each: what
    ``avsentry evaluate --server`` judges clean and adversarial windows by (the server's own
    defence, threshold and hop)."""

    def __call__(self, windows: np.ndarray) -> list[RemoteVerdict]:
        return [self._convert(v) for v in self.verdicts(windows)]

    def _convert(self, v: pb.Verdict) -> RemoteVerdict:
        return RemoteVerdict(
            raw_label=self._index[v.raw_label],
            raw_confidence=float(v.raw_confidence),
            score=float(v.score),
            flagged=bool(v.flagged),
            defended=tuple(
                RemoteDefended(
                    name=d.name, label=self._index[d.label], confidence=d.confidence, distance=d.distance
                )
                for d in v.defended
            ),
            reasons=tuple(v.reasons),
        )
