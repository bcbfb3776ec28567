"""Defence transforms of every modality and one registry to build them by name.

Each transform belongs to one modality: audio transforms map ``(batch, samples)`` float32
waveforms to the same shape, sample-aligned; video transforms map ``(batch, frames, height,
width, 3)`` RGB clips in [0, 1] to the same shape, frame-aligned. None mutates its input and each
offers an identity (BPDA) gradient for adaptive attacks. Names are unique across modalities;
:func:`transform_names` lists a modality's, and :func:`transform_for_input` builds a spec for a
model's input (its rate, its modality checked).

A transform spec is ``"name"`` or ``"name:key=value,..."``; its canonical form
(:func:`normalize_transform_spec`) names every parameter, defaults filled in, sorted, so specs
that build the same defence are equal strings.

Example:
    >>> normalize_transform_spec(" mp3: bitrate_kbps=24 ")
    'mp3:bitrate_kbps=24,segments=2'
    >>> mp3 = transform_from_spec("mp3:bitrate_kbps=24", sample_rate_hz=16000)
    >>> h264 = transform_from_spec("h264:crf=30", fps=25)
"""

from __future__ import annotations

import dataclasses
import re

from avsentry.pipelines.transforms._codec import CodecProcessPool, codec_executor
from avsentry.pipelines.transforms.aac import AacRoundTrip
from avsentry.pipelines.transforms.base import (
    AudioTransform,
    BaseTransform,
    SegmentedTransform,
    Transform,
    VideoTransform,
)
from avsentry.pipelines.transforms.h264 import H264RoundTrip
from avsentry.pipelines.transforms.jpeg import JpegRoundTrip
from avsentry.pipelines.transforms.lowpass import LowPass
from avsentry.pipelines.transforms.mel_inversion import MelInversion
from avsentry.pipelines.transforms.mp3 import Mp3RoundTrip
from avsentry.pipelines.transforms.noise import GaussianNoise
from avsentry.pipelines.transforms.opus import OpusRoundTrip
from avsentry.pipelines.transforms.quantize import Quantize
from avsentry.pipelines.transforms.resample import ResampleRoundTrip
from avsentry.pipelines.transforms.rescale import Rescale
from avsentry.pipelines.transforms.temporal_median import TemporalMedian
from avsentry.pipelines.types import InputSpec

__all__ = [
    "TRANSFORM_NAMES",
    "AacRoundTrip",
    "AudioTransform",
    "BaseTransform",
    "CodecProcessPool",
    "GaussianNoise",
    "H264RoundTrip",
    "JpegRoundTrip",
    "LowPass",
    "MelInversion",
    "Mp3RoundTrip",
    "OpusRoundTrip",
    "Quantize",
    "ResampleRoundTrip",
    "Rescale",
    "SegmentedTransform",
    "TemporalMedian",
    "Transform",
    "VideoTransform",
    "codec_executor",
    "make_transform",
    "normalize_transform_spec",
    "parse_transform_spec",
    "transform_defaults",
    "transform_for_input",
    "transform_from_spec",
    "transform_modality",
    "transform_names",
    "transform_params",
]

_REGISTRY: dict[str, type[BaseTransform]] = {
    cls.name: cls
    for cls in (
        # audio
        AacRoundTrip,
        GaussianNoise,
        LowPass,
        MelInversion,
        Mp3RoundTrip,
        OpusRoundTrip,
        Quantize,
        ResampleRoundTrip,
        # video
        H264RoundTrip,
        JpegRoundTrip,
        Rescale,
        TemporalMedian,
    )
}

TRANSFORM_NAMES: tuple[str, ...] = tuple(sorted(_REGISTRY))
"""Names accepted by :func:`make_transform`, sorted, all modalities."""


def transform_names(modality: str) -> tuple[str, ...]:
    """The transforms of one modality (``"audio"``, ``"video"``), sorted."""
    return tuple(name for name in TRANSFORM_NAMES if _REGISTRY[name].modality == modality)


def transform_modality(spec: str) -> str:
    """The modality of the transform a spec names.

    Raises:
        ValueError: malformed spec or unknown transform.
    """
    return _lookup(parse_transform_spec(spec)[0]).modality


ParamValue = bool | int | float | str

_NAME = re.compile(r"[a-z][a-z0-9_]*")


def transform_params(name: str) -> tuple[str, ...]:
    """Return the parameters ``make_transform(name, ...)`` accepts besides its context (the
    model's ``sample_rate_hz`` for audio, ``fps`` for video).

    Raises:
        ValueError: ``name`` is not in :data:`TRANSFORM_NAMES`.
    """
    cls = _lookup(name)
    return tuple(
        field.name
        for field in dataclasses.fields(cls)  # type: ignore[arg-type]
        if field.init and field.name not in cls.context_fields
    )


def transform_defaults(name: str) -> dict[str, ParamValue]:
    """Each parameter of :func:`transform_params` with its default value.

    Raises:
        ValueError: ``name`` is not in :data:`TRANSFORM_NAMES`.
    """
    cls = _lookup(name)
    fields = {field.name: field for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    defaults: dict[str, ParamValue] = {}
    for param in transform_params(name):
        field = fields[param]
        if field.default is not dataclasses.MISSING:
            defaults[param] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            defaults[param] = field.default_factory()
    return defaults


def normalize_transform_spec(spec: str) -> str:
    """The canonical form of a transform spec: every parameter named, unset ones at their
    defaults, typed like their defaults (``cutoff_hz=3000`` -> ``cutoff_hz=3000.0``), sorted.

    Specs with equal canonical forms build equal transforms. Values are vetted here only for
    their type; their ranges depend on the sample rate and are checked when the transform is
    built (:func:`transform_from_spec`).

    Args:
        spec: For example ``"mp3"``, ``" mp3: bitrate_kbps=32 "`` or ``"lowpass:cutoff_hz=3e3"``.

    Returns:
        For example ``"mp3:bitrate_kbps=32,segments=2"``.

    Raises:
        ValueError: Malformed spec, unknown transform or parameter, or a value of the wrong type.
    """
    name, params = parse_transform_spec(spec)
    _check_known(name, params)
    merged = transform_defaults(name)
    for key, value in params.items():
        merged[key] = _coerce(name, key, value, merged[key])
    return f"{name}:" + ",".join(f"{key}={_format(merged[key])}" for key in sorted(merged))


def transform_from_spec(spec: str, **context: ParamValue) -> Transform:
    """Build the transform a spec names, with its context (``sample_rate_hz=`` for an audio
    transform, ``fps=`` for a video one).

    Raises:
        ValueError: Anything wrong with the spec or its values (never ``TypeError``).
    """
    name, params = parse_transform_spec(normalize_transform_spec(spec))
    return make_transform(name, **context, **params)


def transform_for_input(spec: str, model_input: InputSpec) -> Transform:
    """Build the transform a spec names for a model's input: its modality must match, and the
    context (sample rate, frame rate) comes from ``model_input``.

    Raises:
        ValueError: A transform of another modality, or anything wrong with the spec.
    """
    name = parse_transform_spec(spec)[0]
    modality = _lookup(name).modality
    if modality != model_input.modality:
        raise ValueError(
            f"{name} is {'an' if modality[0] in 'aeiou' else 'a'} {modality} transform; this model takes "
            f"{model_input.modality} "
            f"(its transforms: {', '.join(transform_names(model_input.modality))})"
        )
    context: dict[str, ParamValue] = (
        {"fps": float(model_input.rate_hz)}
        if modality == "video"
        else {"sample_rate_hz": int(model_input.rate_hz)}
    )
    return transform_from_spec(spec, **context)


def make_transform(name: str, **context_and_params: ParamValue) -> Transform:
    """Build a transform by name.

    Args:
        name: One of :data:`TRANSFORM_NAMES`.
        **context_and_params: The context of the transform's modality (``sample_rate_hz``: the
            rate of the audio it will see, in Hz; ``fps`` for video) and its own parameters (e.g.
            ``bitrate_kbps=32`` for ``"mp3"``, ``crf=30`` for ``"h264"``); unset ones keep their
            defaults.

    Returns:
        The configured transform.

    Raises:
        ValueError: Unknown name, unknown parameter, or a value the transform rejects.
    """
    cls = _lookup(name)
    params = {k: v for k, v in context_and_params.items() if k not in cls.context_fields}
    _check_known(name, params)
    try:
        return cls(**context_and_params)  # type: ignore[call-arg]
    except TypeError as error:  # a value of a type the checks did not foresee
        raise ValueError(f"{name}: {error}") from error


def parse_transform_spec(spec: str) -> tuple[str, dict[str, ParamValue]]:
    """Parse ``"name"`` or ``"name:key=value,key=value"`` into a name and parameters.

    Values become ``int`` (``"32"``), ``float`` (``"3.5"``, ``"4e3"``), ``bool`` (``"true"``,
    ``"false"``) or else stay ``str``. Only the syntax is checked here; :func:`make_transform`
    checks names and values.

    Args:
        spec: For example ``"mp3:bitrate_kbps=32"``, ``"quantize:bits=6"`` or ``"lowpass"``.

    Returns:
        ``(name, params)``, e.g. ``("mp3", {"bitrate_kbps": 32})``.

    Raises:
        ValueError: Malformed spec (empty name, missing ``=``, empty key, repeated key).
    """
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    if not _NAME.fullmatch(name):
        raise ValueError(f"transform spec {spec!r}: expected 'name' or 'name:key=value,...'")
    params: dict[str, ParamValue] = {}
    if not rest.strip():
        if ":" in spec:
            raise ValueError(f"transform spec {spec!r}: nothing after ':'")
        return name, params
    for item in rest.split(","):
        key, equals, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not equals or not _NAME.fullmatch(key) or not value:
            raise ValueError(f"transform spec {spec!r}: expected key=value, got {item.strip()!r}")
        if key in params:
            raise ValueError(f"transform spec {spec!r}: {key} given twice")
        params[key] = _parse_value(value)
    return name, params


def _parse_value(text: str) -> ParamValue:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


def _check_known(name: str, params: dict[str, ParamValue]) -> None:
    known = transform_params(name)
    for context in _lookup(name).context_fields:
        if context in params:
            raise ValueError(
                f"{name}: {context} is not a transform parameter (the model's is used); "
                f"known: {', '.join(known) or '(none)'}"
            )
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(
            f"{name}: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(known) or '(none)'}"
        )


def _coerce(name: str, key: str, value: ParamValue, default: ParamValue) -> ParamValue:
    """``value`` as the type of ``default``: ints are accepted for floats, nothing else mixes."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name}: {key} must be true or false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{name}: {key} must be an integer, got {value!r}")
    if isinstance(default, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{name}: {key} must be a number, got {value!r}")
    return str(value)


def _format(value: ParamValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def _lookup(name: str) -> type[BaseTransform]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown transform {name!r}; known: {', '.join(TRANSFORM_NAMES)}") from None
