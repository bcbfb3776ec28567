"""Disagreement detection: is this window likely adversarial?

Feature squeezing (Xu, Evans & Qi, NDSS 2018) applied to audio (as in Yang et al., ICLR 2019,
"Characterizing audio adversarial examples using temporal dependency" and Rajaratnam et al.,
2018, for compression defences): adversarial perturbations are brittle, so the recognizer's
softmax on the raw window and on defended copies (codec round trips, quantization, randomized
smoothing) diverge far more than on clean input. The score combines the L1 distances between the
raw softmax and each defended softmax (:mod:`~avsentry.pipelines.scoring`: their maximum, or a
conformal combination of how rare each is on clean speech); the flag is ``score > threshold``,
with the threshold calibrated on held-out clean audio to a target false-positive rate
(:func:`calibrate_threshold`).
Label disagreements and a smoothed abstention are reported as reasons.

Randomized smoothing per window uses one draw of ``n`` noisy copies in one forward pass: PREDICT
on all ``n`` votes, and CERTIFY with the first ``n0`` copies selecting ``c_A`` and the other
``n - n0`` bounding it. Each window's noise comes from its own generator seeded by
``(seed, key)``, so a window's verdict does not depend on what else is in the batch.

Codec round trips are segment-wise (:class:`~avsentry.pipelines.transforms.SegmentedTransform`):
all parts of a batch go to one shared thread pool at once and run while the raw forward pass,
the other transforms and smoothing run on the calling thread; equal parts within a batch are
round tripped once, and a :class:`StreamState` lets later windows of a stream reuse the part
they share with earlier ones (with a 1 s window, 2 segments and a 0.5 s hop, every sample of a
stream is encoded once per codec).
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import beta

from avsentry.pipelines.recognizers.base import SmoothableRecognizer
from avsentry.pipelines.recognizers.manifest import DEFAULT_DEFENCE, DEFAULT_SIGMAS
from avsentry.pipelines.scoring import ConformalCombination, MaxDistance, scoring_from_card
from avsentry.pipelines.smoothing import (
    SmoothingConfig,
    certify_from_counts,
    count_votes,
    detection_radius,
    encode,
    guaranteed_snr_db,
    lower_confidence_bound,
    offered_representations,
    predict_from_counts,
    sample_votes,
)
from avsentry.pipelines.transforms import (
    SegmentedTransform,
    Transform,
    codec_executor,
    normalize_transform_spec,
    transform_for_input,
)
from avsentry.pipelines.types import Abstain, Certified, ModelSpec, Prediction

# The defence of a card or manifest that names none (see DEFAULT_DEFENCE).
DEFAULT_TRANSFORMS: tuple[str, ...] = tuple(DEFAULT_DEFENCE["transforms"])
DEFAULT_SMOOTHING: dict = DEFAULT_DEFENCE["smoothing"]

UNCERTIFIED_REASON = "not certified"  # how a verdict's reasons begin when certified detection flags
UNCALIBRATED_REASON = "uncalibrated: nothing is flagged by score (no threshold; avsentry calibrate)"


def changed_smoothing(base: SmoothingConfig | None, **changes: Any) -> SmoothingConfig:
    """``base`` (default: :data:`DEFAULT_SMOOTHING`) with ``changes`` (``sigma``,
    ``representation``, ``n``, ``n0``, ``alpha``; ``None`` keeps the base's). A new
    representation without a sigma gets its :data:`DEFAULT_SIGMAS` one: sigmas of different
    representations are in different units.

    Raises:
        ValueError: a representation with no default sigma and none given, or a bad value.
    """
    base = base or SmoothingConfig(**DEFAULT_SMOOTHING)
    c = {k: v for k, v in changes.items() if v is not None}
    rep = str(c.get("representation", base.representation))
    sigma = c.get("sigma")
    if sigma is None and rep != base.representation:
        if rep not in DEFAULT_SIGMAS:
            raise ValueError(f"smoothing in {rep!r} needs a sigma in its units (e.g. --sigma)")
        sigma = DEFAULT_SIGMAS[rep]
    return SmoothingConfig(
        sigma=float(base.sigma if sigma is None else sigma),
        representation=rep,
        n=int(c.get("n", base.n)),
        n0=int(c.get("n0", base.n0)),
        alpha=float(c.get("alpha", base.alpha)),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectorConfig:
    """What the detector runs per window.

    Attributes:
        transforms: Transform specs (``"mp3"``, ``"opus:bitrate_kbps=12"``...), stored in their
            canonical form (:func:`~avsentry.pipelines.transforms.normalize_transform_spec`), so
            configs of the same defence are equal however their specs were spelled.
        smoothing: Randomized-smoothing parameters, or ``None`` to skip smoothing.
        threshold: Flag when the score exceeds this (from calibration); ``None`` never flags.
        seed: Base seed for transform and smoothing randomness.
        scoring: How distances become the score (:mod:`~avsentry.pipelines.scoring`); the
            threshold is on its scale.
        certified: Certified detection (needs ``smoothing``), ``None`` for off, else ``p_min``:
            also flag every window whose raw label gets a noisy-vote probability whose lower
            confidence bound (all ``n`` votes, Clopper-Pearson at ``alpha``) is under ``p_min``.
            Then no perturbation smaller than
            :func:`~avsentry.pipelines.smoothing.detection_radius` (``guaranteed_snr_db`` in a
            waveform representation) can change the raw label of a clean window without being
            flagged. ``0.5`` is the classic certificate (Cohen et al.); a smaller ``p_min``
            flags fewer clean windows for a smaller radius (``calibrate`` picks it). The
            smoothing output then leaves the distance score (it acts through the rule), and the
            threshold is calibrated for the union of both.
    """

    transforms: tuple[str, ...] = DEFAULT_TRANSFORMS
    smoothing: SmoothingConfig | None = field(default_factory=lambda: SmoothingConfig(n=32, n0=8))
    threshold: float | None = None
    seed: int = 0
    scoring: MaxDistance | ConformalCombination = field(default_factory=MaxDistance)
    certified: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.transforms, str):
            raise ValueError(f"transforms must be a sequence of specs, got the string {self.transforms!r}")
        # raises ValueError on a malformed spec, an unknown transform or parameter
        object.__setattr__(
            self, "transforms", tuple(normalize_transform_spec(spec) for spec in self.transforms)
        )
        if self.smoothing is not None and self.smoothing.n0 >= self.smoothing.n:
            raise ValueError(
                f"smoothing n0 ({self.smoothing.n0}) must be < n ({self.smoothing.n}): the first n0 "
                "copies select the class and the rest certify it"
            )
        if self.certified is not None:
            if isinstance(self.certified, bool) or not 0 < float(self.certified) < 1:
                raise ValueError(f"certified (p_min) must be in (0, 1) or None, got {self.certified!r}")
            if self.smoothing is None:
                raise ValueError("certified detection needs smoothing (the noisy votes are its rule)")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ValueError("threshold must be finite")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    @classmethod
    def from_card(cls, detector: dict | None, **overrides: Any) -> tuple[DetectorConfig, bool]:
        """The calibrated configuration stored in a model card, with overrides applied.

        Args:
            detector: The card's ``detector`` section (``None`` if the model is uncalibrated).
            overrides: Any of ``transforms`` (sequence of specs), ``n``, ``n0``, ``sigma``,
                ``representation``, ``alpha``, ``smoothing`` (``False`` disables it),
                ``threshold``, ``seed``, ``scoring`` (``"max"`` drops the card's conformal scoring),
                ``certified`` (``p_min`` of certified detection, ``True`` for the card's or 0.5,
                ``False`` for off);
            ``None`` values are ignored.

        Returns:
            The config, and whether the threshold in force was calibrated for exactly it.
        """
        detector = detector or {}
        fp = detector.get("config") or {}
        o = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(o) - {
            "transforms",
            "n",
            "n0",
            "sigma",
            "representation",
            "alpha",
            "smoothing",
            "threshold",
            "seed",
            "scoring",
            "certified",
        }
        if unknown:
            raise TypeError(f"unknown overrides: {sorted(unknown)}")
        stored = fp.get("smoothing", {}) if fp else {}  # None: calibrated without smoothing
        smoothing: SmoothingConfig | None = None
        if o.get("smoothing", stored is not None):
            smoothing = changed_smoothing(
                SmoothingConfig(**stored) if stored else None,
                **{k: o[k] for k in ("sigma", "representation", "n", "n0", "alpha") if k in o},
            )
        transforms = tuple(o.get("transforms", fp.get("transforms", DEFAULT_TRANSFORMS)))  # type: ignore[call-overload]
        if o.get("scoring") not in (None, "max", "card"):
            raise ValueError(f"scoring override must be 'max' or 'card', got {o['scoring']!r}")
        scoring = MaxDistance() if o.get("scoring") == "max" else scoring_from_card(detector.get("scoring"))
        stored_p = (fp.get("certified") or {}).get("p_min")
        wanted = o.get("certified", stored_p is not None)
        certified = None
        if wanted is not False and smoothing is not None:
            certified = float(stored_p or 0.5) if wanted is True else float(wanted)
        cfg = cls(
            transforms=transforms,
            smoothing=smoothing,
            seed=int(o.get("seed", 0)),  # type: ignore[call-overload]
            scoring=scoring,
            certified=certified,
        )
        threshold = o.get("threshold", detector.get("threshold"))
        # literal comparison: the card stores canonical specs; a spec missing a parameter added
        # since (whose default may differ from what was calibrated) does not count as calibrated
        calibrated = (
            "threshold" not in o
            and detector.get("threshold") is not None
            and bool(fp)
            and cfg.fingerprint() == fp
        )
        if scoring.kind != detector.get("scoring", {}).get("kind", "max"):
            threshold = None if "threshold" not in o else threshold  # the card's is on another scale
            calibrated = False
        cfg = cls(
            transforms=cfg.transforms,
            smoothing=cfg.smoothing,
            seed=cfg.seed,
            scoring=cfg.scoring,
            certified=cfg.certified,
            threshold=None if threshold is None else float(threshold),
        )  # type: ignore[arg-type]
        return cfg, calibrated

    def fingerprint(self) -> dict:
        """The fields a calibrated threshold depends on (stored in the model card); transform
        specs in canonical form."""
        s = self.smoothing
        scoring = {} if self.scoring.kind == "max" else {"scoring": self.scoring.fingerprint()}
        certified = {} if self.certified is None else {"certified": {"p_min": self.certified}}
        return {
            **scoring,
            **certified,
            "transforms": list(self.transforms),
            "smoothing": None
            if s is None
            else {
                "sigma": s.sigma,
                "representation": s.representation,
                "n": s.n,
                "n0": s.n0,
                "alpha": s.alpha,
            },
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class DefendedOutput:
    """The recognizer's answer on one defended copy of a window."""

    name: str
    label: int
    confidence: float
    distance: float


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowVerdict:
    """Everything the detector concluded about one window.

    Attributes:
        raw_label / raw_confidence: Top-1 on the untouched window.
        defended: One entry per transform, plus ``"smoothing"`` (mean noisy softmax).
        smoothed: PREDICT outcome over all ``n`` votes (``None`` without smoothing).
        certificate: CERTIFY outcome (``Certified`` with radius, or ``Abstain``).
        raw_p_lower: Lower confidence bound on the raw label's share of the ``n`` noisy votes
            (``None`` without smoothing).
        guaranteed_snr_db: When the noise is in a waveform representation (``waveform``,
            ``waveform_rms``) and :func:`~avsentry.pipelines.smoothing.detection_radius` is
            positive (at the config's ``p_min``, or 0.5 with certified detection off): the
            signal-to-perturbation ratio (dB, relative to this window) above which no
            perturbation could have turned a clean window with another passing raw label into
            this one (:func:`~avsentry.pipelines.smoothing.guaranteed_snr_db`). ``None``
            otherwise.
        score: The config's scoring of the raw-vs-defended L1 distances: the largest distance,
            in [0, 2] (``max``), or ``-log10`` of a conformal p-value (``conformal``; see
            :mod:`~avsentry.pipelines.scoring`); ``nan`` (or ``inf``) when a softmax was not
            finite.
        flagged: ``score > threshold``, or the score is not finite (whatever the threshold).
        reasons: Human-readable signals (score over threshold, label changes, abstention).
    """

    raw_label: int
    raw_confidence: float
    raw_probs: np.ndarray = field(repr=False)
    defended: tuple[DefendedOutput, ...]
    smoothed: Prediction | Abstain | None
    certificate: Certified | Abstain | None
    score: float
    flagged: bool
    reasons: tuple[str, ...]
    raw_p_lower: float | None = None
    guaranteed_snr_db: float | None = None


class StreamState:
    """What later windows of one stream can reuse: its recently round-tripped codec parts.

    Made by :meth:`Detector.stream_state`, kept by the caller for the stream's lifetime and passed
    with each of its windows. Thread-safe: batches of one stream may be analyzed at once on
    several threads; a part one of them is still encoding is awaited by the other, not encoded
    twice. An entry is the output of one transform on one part, keyed by the part's content (a
    BLAKE2b digest), so a reused output is exactly what encoding the part afresh gives. Memory is
    bounded: after each batch, parts starting a window length or more before the newest window
    seen are dropped (later windows start after it; the slack serves a batch running late on
    another thread), and at most ``max_entries`` are kept (the oldest go first).

    Attributes:
        hits: Parts found here (encoded for an earlier batch, or in flight).
        misses: Parts this state had to have encoded.
    """

    def __init__(self, *, owner: int, horizon: int, max_entries: int) -> None:
        self._owner = owner
        self._horizon = horizon
        self._max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: dict[tuple[int, bytes], tuple[int, Future]] = {}
        self._newest: int | None = None
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _advance(self, newest_start: int) -> None:
        """Note a window starting at ``newest_start``; drop parts no later window can need."""
        with self._lock:
            if self._newest is None or newest_start > self._newest:
                self._newest = newest_start
            oldest = self._newest - self._horizon
            for key in [k for k, (start, _) in self._entries.items() if start <= oldest]:
                del self._entries[key]

    def _get_or_submit(self, key: tuple[int, bytes], start: int, submit: Callable[[], Future]) -> Future:
        with self._lock:
            found = self._entries.get(key)
            if found is not None and not _failed(found[1]):
                self.hits += 1
                self._entries[key] = (max(found[0], start), found[1])
                return found[1]
            self.misses += 1
            future = submit()
            self._put(key, start, future)
            return future

    def _put_if_absent(self, key: tuple[int, bytes], start: int, future: Future) -> None:
        with self._lock:
            if key not in self._entries:
                self._put(key, start, future)

    def _put(self, key: tuple[int, bytes], start: int, future: Future) -> None:
        self._entries[key] = (start, future)
        if len(self._entries) > self._max_entries:
            by_age = sorted(self._entries, key=lambda k: self._entries[k][0])
            for old in by_age[: len(self._entries) - self._max_entries]:
                del self._entries[old]


def _failed(future: Future) -> bool:
    return future.done() and (future.cancelled() or future.exception() is not None)


def _digest(samples: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(samples).data, digest_size=16).digest()


def checked_windows(
    spec: ModelSpec, windows: np.ndarray, keys: Sequence[int] | None
) -> tuple[np.ndarray, list[int]]:
    """``windows`` as float32 and their noise keys (default ``0..batch-1``).

    Raises:
        ValueError: windows of another shape than the model's, NaN or Inf samples, or not one
            key per window.
    """
    x = np.asarray(windows, dtype=np.float32)
    if x.shape[1:] != spec.window_shape:
        raise ValueError(f"expected (batch, {', '.join(map(str, spec.window_shape))}) windows, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("windows contain NaN or Inf")
    keys = list(range(len(x))) if keys is None else [int(k) for k in keys]
    if len(keys) != len(x):
        raise ValueError("keys must have one entry per window")
    return x, keys


class Detector:
    """Runs raw, transformed and smoothed predictions on batches of windows.

    Thread-safe: several threads may call :meth:`analyze` at once.

    Args:
        recognizer: The model under guard.
        config: Transforms, smoothing and threshold.
        executor: Where codec parts are round tripped; default the process-wide pool
            (:func:`~avsentry.pipelines.transforms.codec_executor`).
    """

    def __init__(
        self,
        recognizer: SmoothableRecognizer,
        config: DetectorConfig | None = None,
        *,
        executor: Executor | None = None,
    ) -> None:
        self.recognizer = recognizer
        self.config = config or DetectorConfig()
        self._executor = executor
        self.transforms: list[Transform] = [
            transform_for_input(spec, recognizer.spec.input) for spec in self.config.transforms
        ]
        s = self.config.smoothing
        if s is not None and s.representation not in offered_representations(recognizer):
            raise ValueError(
                f"smoothing representation {s.representation!r} is not offered by model "
                f"{recognizer.spec.name!r} (offers {offered_representations(recognizer)})"
            )
        window = recognizer.spec.window_shape[0]  # time: samples or frames
        self._parts_per_window = sum(
            len(t.segment_bounds(window)) for t in self.transforms if isinstance(t, SegmentedTransform)
        )

    @property
    def spec(self) -> ModelSpec:
        """The guarded model's spec."""
        return self.recognizer.spec

    @property
    def executor(self) -> Executor:
        """The pool codec parts run on."""
        return self._executor or codec_executor()

    def stream_state(self) -> StreamState:
        """A fresh :class:`StreamState` for one stream analyzed by this detector."""
        return StreamState(
            owner=id(self),
            horizon=self.recognizer.spec.window_shape[0],
            max_entries=max(1, 4 * self._parts_per_window),
        )

    def _generators(self, keys: Sequence[int]) -> list[torch.Generator]:
        dev = self.recognizer.device
        return [
            torch.Generator(device=dev).manual_seed(hash((self.config.seed, int(k))) & 0x7FFF_FFFF_FFFF)
            for k in keys
        ]

    def analyze(
        self,
        windows: np.ndarray,
        keys: Sequence[int] | None = None,
        *,
        starts: Sequence[int] | None = None,
        states: Sequence[StreamState | None] | None = None,
        on_raw: Callable[[np.ndarray], None] | None = None,
    ) -> list[WindowVerdict]:
        """Verdicts for ``(batch, *window_shape)`` float32 windows (audio windows or video clips).

        Codec parts of all windows are submitted to the executor first; the raw forward pass,
        the other transforms and smoothing run on this thread meanwhile; then the defended copies
        go through the recognizer in one batch. A window's verdict is the same whatever it is
        batched with and whether its parts were reused or encoded afresh.

        Args:
            windows: Windows as the model's input spec has them (mono audio at its rate, or RGB
                clips), in its input bounds. Not modified.
            keys: Per-window integers (e.g. start sample) that seed its randomness;
                defaults to ``0..batch-1``.
            starts: Per-window first sample (or frame) at the model's rate within its stream; needed with
                ``states`` (to know which parts later windows may still reuse).
            states: Per-window :class:`StreamState` of its stream (from :meth:`stream_state`),
                or ``None`` for a window with no stream to reuse parts from.
            on_raw: Called with the raw probabilities ``(batch, classes)`` as soon as they are
                known, before the defences finish (for interim results).

        Raises:
            ValueError: Wrong shape, NaN or Inf samples, or ``keys``/``starts``/``states`` of
                the wrong length or from another detector.
        """
        x, keys = checked_windows(self.spec, windows, keys)
        if states is not None:
            if starts is None:
                raise ValueError("states need starts: each window's first sample in its stream")
            if len(states) != len(x):
                raise ValueError("states must have one entry per window")
            if any(st is not None and st._owner != id(self) for st in states):
                raise ValueError("a StreamState was made by another detector")
        if starts is not None and len(starts) != len(x):
            raise ValueError("starts must have one entry per window")
        if len(x) == 0:
            return []
        parts = self._submit_parts(x, starts, states)
        raw = self.recognizer.predict(x)
        if on_raw is not None:
            on_raw(raw)
        copies: dict[int, np.ndarray] = {
            j: self._transform(t, x, keys)
            for j, t in enumerate(self.transforms)
            if not isinstance(t, SegmentedTransform)
        }
        smoothed: list = [None] * len(x)
        certs: list = [None] * len(x)
        votes: list = [None] * len(x)
        mean_probs = None
        s = self.config.smoothing
        if s is not None:
            sel, est, mean_probs = self.smooth(x, keys)
            smoothed = [predict_from_counts(a + b, s.alpha) for a, b in zip(sel, est, strict=True)]
            certs = [certify_from_counts(a, b, s.alpha, s.sigma) for a, b in zip(sel, est, strict=True)]
            votes = list(sel + est)
        for j, futures in parts.items():
            copies[j] = np.stack([np.concatenate([f.result() for f in row]) for row in futures])
        defended: list[tuple[str, np.ndarray]] = []
        if self.transforms:
            probs = self.recognizer.predict(np.concatenate([copies[j] for j in range(len(self.transforms))]))
            for j, t in enumerate(self.transforms):
                defended.append((t.name, probs[j * len(x) : (j + 1) * len(x)]))
        if mean_probs is not None:
            defended.append(("smoothing", mean_probs))
        norms = np.linalg.norm(x.reshape(len(x), -1).astype(np.float64), axis=1)
        return [
            self._verdict(i, raw[i], defended, smoothed[i], certs[i], votes[i], float(norms[i]))
            for i in range(len(x))
        ]

    def _submit_parts(
        self,
        x: np.ndarray,
        starts: Sequence[int] | None,
        states: Sequence[StreamState | None] | None,
    ) -> dict[int, list[list[Future]]]:
        """Submit every part of every segment-wise transform; returns, per transform index, the
        futures of each window's parts in order. Equal parts (same transform, same samples) share
        one future, within the batch and, through ``states``, with earlier batches."""
        segmented = [(j, t) for j, t in enumerate(self.transforms) if isinstance(t, SegmentedTransform)]
        if not segmented:
            return {}
        executor = self.executor
        digests: dict[tuple[int, int, int], bytes] = {}
        local: dict[tuple[int, bytes], Future] = {}
        out: dict[int, list[list[Future]]] = {}
        for j, t in segmented:
            bounds = t.segment_bounds(x.shape[1])
            rows: list[list[Future]] = []
            for i in range(len(x)):
                row: list[Future] = []
                state = states[i] if states is not None else None
                for a, b in bounds:
                    segment = x[i, a:b]
                    digest = digests.get((i, a, b))
                    if digest is None:
                        digest = digests[(i, a, b)] = _digest(segment)
                    key = (j, digest)
                    start = 0 if starts is None else int(starts[i]) + a

                    def submit(t: SegmentedTransform = t, segment: np.ndarray = segment) -> Future:
                        # a copy: the job must not see the caller's buffer change under it
                        return executor.submit(t.apply_segment, segment.copy())

                    future = local.get(key)
                    if future is None:
                        future = submit() if state is None else state._get_or_submit(key, start, submit)
                        local[key] = future
                    elif state is not None:
                        state._put_if_absent(key, start, future)
                    row.append(future)
                rows.append(row)
            out[j] = rows
        if states is not None and starts is not None:  # after the look-ups: this batch's own
            for st, start in zip(states, starts, strict=True):  # first window needs its parts
                if st is not None:
                    st._advance(int(start))
        return out

    def _transform(self, t: Transform, x: np.ndarray, keys: Sequence[int]) -> np.ndarray:
        """Apply ``t``; a randomized transform draws each window's randomness from its key."""
        if not getattr(t, "randomized", False):
            return t.apply(x, np.random.default_rng(self.config.seed))
        return np.concatenate(
            [
                t.apply(
                    x[i : i + 1],
                    np.random.default_rng([self.config.seed, int(k) & 0x7FFF_FFFF_FFFF]),
                )
                for i, k in enumerate(keys)
            ]
        )

    @torch.no_grad()
    def smooth(self, x: np.ndarray, keys: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Selection counts ``(batch, C)`` from the first ``n0`` of ``n`` noisy copies, estimation
        counts from the other ``n - n0``, and the mean softmax over all ``n`` copies; one draw
        and one pass of the ``n`` copies through the recognizer."""
        s = self.config.smoothing
        assert s is not None
        rec = self.recognizer
        z = encode(rec, torch.from_numpy(x).to(rec.device), s.representation)
        votes, mean = sample_votes(rec, z, s.n, s, self._generators(keys))
        n_classes = len(rec.spec.labels)
        sel = count_votes(votes[:, : s.n0], n_classes)
        est = count_votes(votes[:, s.n0 :], n_classes)
        return sel, est, mean.cpu().numpy().astype(np.float32, copy=False)

    def _verdict(
        self,
        i: int,
        raw: np.ndarray,
        defended: list[tuple[str, np.ndarray]],
        smoothed: Prediction | Abstain | None,
        cert: Certified | Abstain | None,
        votes: np.ndarray | None,
        norm: float,
    ) -> WindowVerdict:
        labels = self.recognizer.spec.labels
        raw_label = int(np.argmax(raw))
        outs = []
        reasons = []
        for name, probs in defended:
            p = probs[i]
            label = int(np.argmax(p))
            outs.append(
                DefendedOutput(
                    name=name,
                    label=label,
                    confidence=float(p[label]),
                    distance=float(np.abs(p - raw).sum()),
                )
            )
            if label != raw_label:
                reasons.append(f"{name} says {labels[label]}")
        # with certified detection, smoothing acts through its rule, not through the score
        scored = [o for o in outs if not (self.config.certified and o.name == "smoothing")]
        distances = np.array([o.distance for o in scored] or [0.0])
        finite = bool(np.isfinite(raw).all() and np.isfinite(distances).all())
        if finite:
            score = self.config.scoring.score({o.name: o.distance for o in scored})
        else:  # max() would depend on where the NaN sits
            score = float("nan") if np.isnan(distances).any() or np.isnan(raw).any() else float("inf")
        thr = self.config.threshold
        over = thr is not None and score > thr
        s = self.config.smoothing
        p_min = self.config.certified
        p_lower = snr_db = None
        if s is not None and votes is not None:
            p_lower = lower_confidence_bound(int(votes[raw_label]), int(votes.sum()), s.alpha)
            radius = detection_radius(p_lower, s.sigma, 0.5 if p_min is None else p_min)
            if radius > 0:
                size = math.prod(self.recognizer.spec.window_shape)
                snr_db = guaranteed_snr_db(norm, radius, s.representation, size)
        uncertified = p_min is not None and (p_lower is None or p_lower < p_min)
        flagged = not finite or over or uncertified
        if isinstance(smoothed, Abstain):
            reasons.append("smoothing abstained")
        elif isinstance(smoothed, Prediction) and smoothed.label != raw_label:
            reasons.append(f"smoothed vote says {labels[smoothed.label]}")
        if uncertified:
            reasons.insert(
                0,
                f"{UNCERTIFIED_REASON}: {labels[raw_label]} holds under noise with p >= {p_lower or 0:.2f}, "
                f"under {p_min:g}",
            )
        if not finite:
            reasons.insert(0, "non-finite score")
        elif over:
            reasons.insert(0, f"score {score:.3f} > threshold {thr:.3f}")
        if thr is None:
            reasons.append(UNCALIBRATED_REASON)
        return WindowVerdict(
            raw_label=raw_label,
            raw_confidence=float(raw[raw_label]),
            raw_probs=raw,
            defended=tuple(outs),
            smoothed=smoothed,
            certificate=cert,
            score=score,
            flagged=flagged,
            reasons=tuple(reasons),
            raw_p_lower=p_lower,
            guaranteed_snr_db=snr_db,
        )


def calibrate_threshold(
    clean_scores: np.ndarray, target_fpr: float, *, confidence: float | None = None
) -> float:
    """Threshold whose false-positive rate on exchangeable clean windows is <= ``target_fpr``.

    The threshold is the k-th smallest of ``m`` clean scores; the false-positive rate it gives on
    new clean windows from the same distribution is then ``1 - Beta(k, m + 1 - k)`` distributed
    over draws of the calibration set.

    - ``confidence=None``: split conformal, ``k = ceil((m + 1)(1 - target))``, so the *expected*
      false-positive rate is <= ``target_fpr`` (any one calibration set may give more).
    - ``confidence=c``: training-conditional split conformal (Vovk, 2012): the smallest ``k`` with
      ``P(FPR > target_fpr) <= 1 - c``, i.e. the rate stays under the target with probability
      ``c`` over calibration sets. Needs ``m > log(1 - c) / log(1 - target)`` scores (299 for
      95 % and 1 %).

    Raises:
        ValueError: too few scores for the target and confidence.
    """
    s = np.sort(np.asarray(clean_scores, dtype=np.float64))
    if not 0 < target_fpr < 1:
        raise ValueError(f"target_fpr must be in (0, 1), got {target_fpr}")
    m = len(s)
    if confidence is None:
        k = math.ceil((m + 1) * (1 - target_fpr))
    else:
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {confidence}")
        ranks = np.arange(1, m + 1)
        # P(coverage < 1 - target) for each rank; it falls as the rank grows
        too_low = beta.cdf(1 - target_fpr, ranks, m + 1 - ranks)
        ok = np.flatnonzero(too_low <= 1 - confidence)
        k = int(ranks[ok[0]]) if ok.size else m + 1
    if k > m:
        how = "" if confidence is None else f" at {confidence:.0%} confidence"
        raise ValueError(f"{m} clean windows are too few for a {target_fpr:.2%} target FPR{how}")
    return float(s[k - 1])
