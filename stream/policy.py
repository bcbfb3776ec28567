"""The server's defence policy: what a client may choose, and what it may never turn off.

A stream's config may name transforms, smoothing n/sigma/representation, a hop and a threshold.
Unbounded, those choices let one client buy 100x the CPU (``smoothing_n = 10000``, a 100-iteration
Griffin-Lim at hop 16) or switch the guard off (``transforms: ["none"], disable_smoothing``) while
its verdicts still carry the calibrated threshold. :class:`DefencePolicy` bounds every choice
(INVALID_ARGUMENT outside the bounds) and, when ``lock`` is on (the default), lets a client only
*strengthen* the calibrated defence (PERMISSION_DENIED otherwise): it may add transforms, raise
``n``, shorten the hop or lower the threshold, but not drop a transform, disable smoothing,
change sigma or the representation, or raise the threshold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from avsentry.pipelines.detection import DetectorConfig
from avsentry.pipelines.smoothing import SmoothingConfig
from avsentry.pipelines.transforms import TRANSFORM_NAMES, parse_transform_spec
from avsentry.stream.errors import InvalidRequest, PolicyViolation

# Per transform, what a client may ask for: an inclusive (low, high) range, or a frozenset of the
# only values allowed; a parameter not listed keeps the transform's default. Chosen so no allowed
# setting costs much more than the default (resampling to 8001 Hz, coprime with 16 kHz, built a
# kernel that took 20 s and 1.5 GB for one window).
ParamBound = tuple[float, float] | frozenset[float]
DEFAULT_PARAM_BOUNDS: Mapping[str, Mapping[str, ParamBound]] = MappingProxyType(
    {
        "mp3": {"bitrate_kbps": (8, 320)},
        "opus": {"bitrate_kbps": (6, 256)},
        "aac": {"bitrate_kbps": (8, 256)},
        "noise": {"snr_db": (0.0, 60.0)},
        "quantize": {"bits": (2, 16)},
        "resample": {"intermediate_rate_hz": frozenset({4000, 8000, 11025, 12000, 22050, 24000})},
        "lowpass": {"cutoff_hz": (500.0, 24000.0), "order": (1, 10)},
        "mel_inversion": {
            "n_fft": (256, 1024),
            "hop_length": (64, 512),
            "n_mels": (20, 128),
            "n_iter": (1, 32),
        },
        "h264": {"crf": (0, 51), "gop": (1, 250)},
        "jpeg": {"quality": (5, 95)},
        "rescale": {"factor": (0.2, 0.9)},
        "median": {"frames": frozenset({3, 5, 7})},
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class DefencePolicy:
    """Bounds on client-chosen defence settings.

    Attributes:
        lock: A client may only strengthen the model's calibrated defence (see module doc).
        allowed_transforms: Transform names a client may ask for.
        max_transforms: Most transforms per stream.
        param_bounds: Per transform, ``{param: (low, high)}`` a client may ask for.
        min_smoothing_n / max_smoothing_n: Range of noisy copies per window.
        min_sigma / max_sigma: Range of smoothing sigma (in the representation's units).
        min_hop_ms: Shortest hop (more windows per second cost more).
    """

    lock: bool = True
    allowed_transforms: tuple[str, ...] = TRANSFORM_NAMES
    max_transforms: int = 6
    param_bounds: Mapping[str, Mapping[str, ParamBound]] = field(default_factory=lambda: DEFAULT_PARAM_BOUNDS)
    min_smoothing_n: int = 8
    max_smoothing_n: int = 128
    min_sigma: float = 0.001
    max_sigma: float = 2.0
    min_hop_ms: int = 100

    def __post_init__(self) -> None:
        unknown = sorted(set(self.allowed_transforms) - set(TRANSFORM_NAMES))
        if unknown:
            raise ValueError(f"policy: unknown transforms {unknown}; known: {', '.join(TRANSFORM_NAMES)}")
        if self.max_transforms < 0 or not 2 <= self.min_smoothing_n <= self.max_smoothing_n:
            raise ValueError("policy: need max_transforms >= 0 and 2 <= min_smoothing_n <= max_smoothing_n")
        if not 0 < self.min_sigma <= self.max_sigma:
            raise ValueError("policy: need 0 < min_sigma <= max_sigma")
        if self.min_hop_ms < 1:
            raise ValueError("policy: min_hop_ms must be >= 1")

    # -- checks ------------------------------------------------------------------------------
    def check_transforms(self, specs: tuple[str, ...]) -> None:
        """Bounds on a transform list (raises :class:`InvalidRequest`)."""
        if len(specs) > self.max_transforms:
            raise InvalidRequest(f"at most {self.max_transforms} transforms per stream, got {len(specs)}")
        for spec in specs:
            try:
                name, params = parse_transform_spec(spec)
            except ValueError as e:
                raise InvalidRequest(str(e)) from e
            if name not in self.allowed_transforms:
                raise InvalidRequest(
                    f"transform {name!r} is not allowed here; allowed: {', '.join(self.allowed_transforms)}"
                )
            bounds = self.param_bounds.get(name, {})
            for key, value in params.items():
                if key not in bounds:
                    allowed = ", ".join(sorted(bounds)) or "none"
                    raise InvalidRequest(
                        f"{name}: parameter {key!r} is not client-settable (settable: {allowed})"
                    )
                bound = bounds[key]
                number = None if isinstance(value, bool | str) else float(value)
                if isinstance(bound, frozenset):
                    if number is None or number not in bound:
                        allowed = ", ".join(f"{v:g}" for v in sorted(bound))
                        raise InvalidRequest(f"{name}: {key} must be one of {allowed}, got {value!r}")
                elif number is None or not bound[0] <= number <= bound[1]:
                    raise InvalidRequest(
                        f"{name}: {key} must be a number in [{bound[0]:g}, {bound[1]:g}], got {value!r}"
                    )

    def check_smoothing(self, s: SmoothingConfig | None) -> None:
        if s is None:
            return
        if not self.min_smoothing_n <= s.n <= self.max_smoothing_n:
            raise InvalidRequest(
                f"smoothing_n must be in [{self.min_smoothing_n}, {self.max_smoothing_n}], got {s.n}"
            )
        if not self.min_sigma <= s.sigma <= self.max_sigma:
            raise InvalidRequest(
                f"smoothing_sigma must be in [{self.min_sigma:g}, {self.max_sigma:g}], got {s.sigma:g}"
            )

    def check_hop(self, hop_ms: int, window_ms: int) -> None:
        if not self.min_hop_ms <= hop_ms <= window_ms:
            raise InvalidRequest(f"hop_ms must be in [{self.min_hop_ms}, {window_ms}], got {hop_ms}")

    def check_strengthens(
        self,
        requested: DetectorConfig,
        default: DetectorConfig,
        *,
        hop_ms: int,
        default_hop_ms: int,
    ) -> None:
        """With ``lock``, raise :class:`PolicyViolation` unless ``requested`` only strengthens
        ``default``: a superset of its transforms, smoothing kept with the same sigma and
        representation and at least as many copies, a hop no longer, a threshold no higher."""
        if not self.lock:
            return
        missing = [t for t in default.transforms if t not in requested.transforms]
        if missing:
            raise PolicyViolation(
                f"this server locks its defence: transforms {missing} cannot be dropped (you may add others)"
            )
        ds, rs = default.smoothing, requested.smoothing
        if ds is not None:
            if rs is None:
                raise PolicyViolation("this server locks its defence: smoothing cannot be disabled")
            if rs.sigma != ds.sigma or rs.representation != ds.representation:
                raise PolicyViolation(
                    f"this server locks its defence: smoothing sigma ({ds.sigma:g}) and representation "
                    f"({ds.representation}) are fixed"
                )
            if rs.n < ds.n:
                raise PolicyViolation(f"this server locks its defence: smoothing_n may not go below {ds.n}")
        if hop_ms > default_hop_ms:
            raise PolicyViolation(f"this server locks its defence: hop_ms may not exceed {default_hop_ms}")
        if default.threshold is not None and (
            requested.threshold is None or requested.threshold > default.threshold
        ):
            raise PolicyViolation(
                "this server locks its defence: the threshold may only be lowered "
                f"(calibrated {default.threshold:.4f})"
            )
