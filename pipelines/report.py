"""One verdict schema for every output: ``check --json``, ``stream --json`` and the gRPC ``Verdict``.

A :class:`VerdictRecord` is a window's verdict as users see it: labels spelled out, the window's
bounds in the input's own samples and seconds, the threshold in force and whether it was
calibrated for this defence. Its field names and types are those of ``avsentry.v1.Verdict``
(``proto/avsentry/v1/guard.proto``); the server converts it to that message and clients convert the
message back (``avsentry.stream.convert``), so :func:`to_dict` and :func:`format_line` render the
same fields the same way whether a verdict came from an offline check or over the network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from avsentry.pipelines.detection import WindowVerdict
from avsentry.pipelines.types import Abstain, Certified, Prediction


@dataclass(frozen=True, slots=True, kw_only=True)
class DefendedRecord:
    """The recognizer on one defended copy: a transform name or ``"smoothing"``."""

    name: str
    label: str
    confidence: float
    distance: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SmoothedRecord:
    """Randomized smoothing: PREDICT (``label``/``abstain``, ``counts``, ``p_value``) and CERTIFY
    (``certified_label``, empty when it abstained; ``radius`` in the noise representation's units;
    ``p_lower``; certified detection: ``raw_p_lower``, the lower bound on the raw label's share of
    the noisy votes, and ``guaranteed_snr_db``, the SNR in dB down to which no perturbation could
    have turned a clean window with another passing raw label into this one, when the noise is in
    a waveform representation and the bound is high enough, else ``None``)."""

    label: str = ""
    abstain: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    p_value: float = 0.0
    certified_label: str = ""
    radius: float = 0.0
    p_lower: float = 0.0
    raw_p_lower: float | None = None
    guaranteed_snr_db: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class VerdictRecord:
    """One window's verdict; fields as in ``avsentry.v1.Verdict``.

    Attributes:
        request_id: The stream's id (for ``check``, the file).
        window_index: 0, 1, 2... within the stream.
        start_sample / end_sample: The window's sample range in the input (its rate, per
            channel); ``end_sample`` is exclusive and may pass the end of the audio for the
            zero-padded last window.
        start_s / end_s: The same bounds in seconds.
        threshold: The threshold in force, ``None`` when nothing can be flagged.
        calibrated: Whether ``threshold`` was calibrated for exactly this defence.
        latency_ms: Server latency (0 offline).
        is_final: False for an interim, raw-only verdict.
    """

    request_id: str
    window_index: int
    start_sample: int
    end_sample: int
    start_s: float
    end_s: float
    model: str
    raw_label: str
    raw_confidence: float
    defended: tuple[DefendedRecord, ...] = ()
    smoothed: SmoothedRecord | None = None
    score: float = 0.0
    threshold: float | None = None
    calibrated: bool = False
    flagged: bool = False
    reasons: tuple[str, ...] = ()
    latency_ms: float = 0.0
    is_final: bool = True


def window_fields(
    *,
    request_id: str,
    model: str,
    window_index: int,
    start_sample: int,
    end_sample: int,
    sample_rate_hz: float,
) -> dict:
    """The identifying fields of a record; bounds in the input's samples (frames for video, at
    ``sample_rate_hz`` = its frame rate) and seconds."""
    return {
        "request_id": request_id,
        "model": model,
        "window_index": int(window_index),
        "start_sample": int(start_sample),
        "end_sample": int(end_sample),
        "start_s": start_sample / sample_rate_hz,
        "end_s": end_sample / sample_rate_hz,
    }


def from_verdict(
    v: WindowVerdict,
    labels: Sequence[str],
    *,
    threshold: float | None,
    calibrated: bool,
    latency_ms: float = 0.0,
    **window: object,
) -> VerdictRecord:
    """A final record from a detector verdict; ``window`` is :func:`window_fields`' output."""
    smoothed: SmoothedRecord | None = None
    if v.smoothed is not None:
        counts = {labels[i]: int(c) for i, c in enumerate(v.smoothed.counts) if c}
        cert = v.certificate
        smoothed = SmoothedRecord(
            label=labels[v.smoothed.label] if isinstance(v.smoothed, Prediction) else "",
            abstain=not isinstance(v.smoothed, Prediction),
            counts=counts,
            p_value=float(v.smoothed.p_value),
            certified_label=labels[cert.label] if isinstance(cert, Certified) else "",
            radius=float(cert.radius) if isinstance(cert, Certified) else 0.0,
            p_lower=float(cert.p_lower) if isinstance(cert, Certified | Abstain) else 0.0,
            raw_p_lower=v.raw_p_lower,
            guaranteed_snr_db=v.guaranteed_snr_db,
        )
    return VerdictRecord(
        **window,  # type: ignore[arg-type]
        raw_label=labels[v.raw_label],
        raw_confidence=float(v.raw_confidence),
        defended=tuple(
            DefendedRecord(name=o.name, label=labels[o.label], confidence=o.confidence, distance=o.distance)
            for o in v.defended
        ),
        smoothed=smoothed,
        score=float(v.score),
        threshold=threshold,
        calibrated=calibrated,
        flagged=bool(v.flagged),
        reasons=tuple(v.reasons),
        latency_ms=latency_ms,
        is_final=True,
    )


def _finite(x: float) -> float | None:
    """JSON has no NaN: a non-finite number is rendered as null."""
    return float(x) if math.isfinite(x) else None


def to_dict(r: VerdictRecord) -> dict:
    """The JSON form: every field of the record under its proto name, numbers as numbers,
    ``threshold`` null when none is in force, ``smoothed`` null without smoothing."""
    return {
        "request_id": r.request_id,
        "window_index": r.window_index,
        "start_sample": r.start_sample,
        "end_sample": r.end_sample,
        "start_s": round(r.start_s, 6),
        "end_s": round(r.end_s, 6),
        "model": r.model,
        "raw_label": r.raw_label,
        "raw_confidence": _finite(r.raw_confidence),
        "defended": [
            {
                "name": d.name,
                "label": d.label,
                "confidence": _finite(d.confidence),
                "distance": _finite(d.distance),
            }
            for d in r.defended
        ],
        "smoothed": None
        if r.smoothed is None
        else {
            "label": r.smoothed.label,
            "abstain": r.smoothed.abstain,
            "counts": dict(r.smoothed.counts),
            "p_value": _finite(r.smoothed.p_value),
            "certified_label": r.smoothed.certified_label,
            "radius": _finite(r.smoothed.radius),
            "p_lower": _finite(r.smoothed.p_lower),
            "raw_p_lower": None if r.smoothed.raw_p_lower is None else _finite(r.smoothed.raw_p_lower),
            "guaranteed_snr_db": None
            if r.smoothed.guaranteed_snr_db is None
            else _finite(r.smoothed.guaranteed_snr_db),
        },
        "score": _finite(r.score),
        "threshold": None if r.threshold is None else _finite(r.threshold),
        "calibrated": r.calibrated,
        "flagged": r.flagged,
        "reasons": list(r.reasons),
        "latency_ms": round(r.latency_ms, 3),
        "is_final": r.is_final,
    }


def format_line(r: VerdictRecord, *, prefix: str = "") -> str:
    """One human-readable line: ``start-end s | raw LABEL conf | mp3:LABEL ... | smoothed LABEL
    (r=radius) | score | ok or FLAGGED: reasons | latency``."""
    head = f"{prefix}{r.start_s:6.2f}-{r.end_s:6.2f}s"
    if not r.is_final:
        return f"{head} | (interim) raw {r.raw_label} {r.raw_confidence:.2f}"
    parts = [head, f"raw {r.raw_label} {r.raw_confidence:.2f}"]
    defended = " ".join(f"{d.name}:{d.label}" for d in r.defended if d.name != "smoothing")
    if defended:
        parts.append(defended)
    if r.smoothed is None:
        parts.append("smoothed -")
    else:
        sm = "smoothed ABSTAIN" if r.smoothed.abstain else f"smoothed {r.smoothed.label}"
        if r.smoothed.certified_label:
            sm += f" (r={r.smoothed.radius:.2f})"
        g = r.smoothed.guaranteed_snr_db
        if g is not None and math.isfinite(g):
            sm += f" safe >= {g:.1f} dB"
        parts.append(sm)
    parts.append(f"score {r.score:.3f}")
    parts.append("FLAGGED: " + "; ".join(r.reasons) if r.flagged else "ok")
    if r.latency_ms:
        parts.append(f"{r.latency_ms:.0f} ms")
    return " | ".join(parts)
