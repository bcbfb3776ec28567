"""Building transforms by name and parsing ``name:key=value`` specs."""

from __future__ import annotations

import numpy as np
import pytest

import avsentry.pipelines.transforms as transforms
from avsentry.pipelines.transforms import (
    TRANSFORM_NAMES,
    LowPass,
    Mp3RoundTrip,
    Quantize,
    make_transform,
    normalize_transform_spec,
    parse_transform_spec,
    transform_defaults,
    transform_from_spec,
    transform_names,
    transform_params,
)

AUDIO = transform_names("audio")


def test_names_are_sorted_and_complete_per_modality() -> None:
    assert AUDIO == ("aac", "lowpass", "mel_inversion", "mp3", "noise", "opus", "quantize", "resample")
    assert transform_names("video") == ("h264", "jpeg", "median", "rescale")
    assert TRANSFORM_NAMES == tuple(sorted(AUDIO + transform_names("video")))


def test_all_is_sorted_and_importable() -> None:
    assert transforms.__all__ == sorted(transforms.__all__, key=lambda n: (not n.isupper(), n))
    for exported in transforms.__all__:
        assert hasattr(transforms, exported)


@pytest.mark.parametrize("name", AUDIO)
def test_make_transform_builds_each_name_at_its_rate(name: str) -> None:
    transform = make_transform(name, sample_rate_hz=16000)
    assert transform.name == name
    assert transform.sample_rate_hz == 16000


def test_make_transform_passes_params() -> None:
    mp3 = make_transform("mp3", sample_rate_hz=16000, bitrate_kbps=24)
    assert mp3 == Mp3RoundTrip(sample_rate_hz=16000, bitrate_kbps=24)
    assert make_transform("quantize", sample_rate_hz=8000, bits=6) == Quantize(sample_rate_hz=8000, bits=6)
    assert make_transform("lowpass", sample_rate_hz=16000, cutoff_hz=3000) == LowPass(cutoff_hz=3000)


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown transform 'flac'; known: aac, h264, jpeg, lowpass"):
        make_transform("flac", sample_rate_hz=16000)


def test_unknown_param_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="mp3: unknown parameter.*bits.*known: bitrate_kbps"):
        make_transform("mp3", sample_rate_hz=16000, bits=8)


def test_invalid_param_value_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="quantize: bits must be in"):
        make_transform("quantize", sample_rate_hz=16000, bits=40)
    with pytest.raises(ValueError, match="sample_rate_hz"):
        make_transform("lowpass", sample_rate_hz=0)


def test_transform_params_names_the_knobs() -> None:
    assert transform_params("mp3") == ("bitrate_kbps", "segments", "quality")
    assert transform_params("quantize") == ("bits",)
    assert "_mel" not in transform_params("mel_inversion")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("mp3", ("mp3", {})),
        ("mp3:bitrate_kbps=32", ("mp3", {"bitrate_kbps": 32})),
        ("quantize:bits=6", ("quantize", {"bits": 6})),
        (
            " lowpass : cutoff_hz = 3500.5 , order=4 ",
            ("lowpass", {"cutoff_hz": 3500.5, "order": 4}),
        ),
        ("lowpass:cutoff_hz=4e3", ("lowpass", {"cutoff_hz": 4000.0})),
        (
            "x:flag=true,other=False,mode=fast",
            ("x", {"flag": True, "other": False, "mode": "fast"}),
        ),
    ],
)
def test_parse_transform_spec(spec: str, expected: tuple[str, dict[str, object]]) -> None:
    assert parse_transform_spec(spec) == expected


@pytest.mark.parametrize(
    "spec", ["", ":bits=3", "mp3:", "mp3:bitrate_kbps", "mp3:=3", "mp3:a=1,a=2", "mp3:a=", "MP3"]
)
def test_parse_transform_spec_rejects_malformed(spec: str) -> None:
    with pytest.raises(ValueError, match="transform spec"):
        parse_transform_spec(spec)


def test_spec_round_trips_into_a_transform() -> None:
    name, params = parse_transform_spec("quantize:bits=6")
    assert make_transform(name, sample_rate_hz=16000, **params) == Quantize(bits=6)


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("mp3", "mp3:bitrate_kbps=32,quality=7,segments=2"),
        (" mp3", "mp3:bitrate_kbps=32,quality=7,segments=2"),
        ("mp3: bitrate_kbps=32 ", "mp3:bitrate_kbps=32,quality=7,segments=2"),
        ("mp3:segments=2,bitrate_kbps=32", "mp3:bitrate_kbps=32,quality=7,segments=2"),
        ("opus:bitrate_kbps=12", "opus:bitrate_kbps=12,complexity=5,segments=2"),
        ("lowpass:cutoff_hz=3000", "lowpass:cutoff_hz=3000.0,order=8"),
        ("lowpass:cutoff_hz=3e3,order=8", "lowpass:cutoff_hz=3000.0,order=8"),
        ("noise", "noise:floor=0.0001,snr_db=10.0"),
        ("quantize", "quantize:bits=8"),
    ],
)
def test_normalize_transform_spec_is_canonical(spec: str, canonical: str) -> None:
    """Every parameter named, defaults filled in and typed like them, sorted: one string per
    defence, and a fixed point."""
    assert normalize_transform_spec(spec) == canonical
    assert normalize_transform_spec(canonical) == canonical
    name, params = parse_transform_spec(canonical)
    built = transform_from_spec(spec, sample_rate_hz=16000)
    assert make_transform(name, sample_rate_hz=16000, **params) == built


@pytest.mark.parametrize("name", AUDIO)
def test_every_transform_normalizes_to_its_defaults(name: str) -> None:
    name_, params = parse_transform_spec(normalize_transform_spec(name))
    assert name_ == name and params == transform_defaults(name)
    assert tuple(sorted(params)) == tuple(sorted(transform_params(name)))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mp3:sample_rate_hz=8000", "sample_rate_hz is not a transform parameter"),
        ("mp3:bitrate_kbps=32.5", "bitrate_kbps must be an integer"),
        ("mp3:bitrate_kbps=fast", "bitrate_kbps must be an integer"),
        ("lowpass:order=true", "order must be an integer"),
        ("lowpass:cutoff_hz=low", "cutoff_hz must be a number"),
        ("mp3:workers=4", "unknown parameter"),
        ("flac", "unknown transform"),
    ],
)
def test_bad_specs_are_value_errors_naming_the_parameter(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalize_transform_spec(spec)
    with pytest.raises(ValueError, match=message):
        transform_from_spec(spec, sample_rate_hz=16000)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("lowpass:cutoff_hz=1e-300", "cutoff_hz must be in"),
        ("lowpass:cutoff_hz=8000", "cutoff_hz must be in"),
        ("lowpass:cutoff_hz=1e300", "cutoff_hz must be in"),
        ("resample:intermediate_rate_hz=7919", "common divisor"),
        ("mel_inversion:n_iter=1000", "n_iter must be in"),
        ("noise:snr_db=1e300", "snr_db must be in"),
        ("mp3:segments=100", "segments must be in"),
    ],
)
def test_out_of_range_values_fail_at_construction(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        transform_from_spec(spec, sample_rate_hz=16000)


EXTREMES = (-(10**9), -1, 0, 1, 3, 10**9)
EXTREME_FLOATS = (-1e300, -1.0, 0.0, 1e-300, 0.5, 1e300)


@pytest.mark.parametrize("name", AUDIO)
def test_every_parameter_is_vetted_at_construction(name: str, batch) -> None:
    """For each numeric parameter, extreme values either fail at construction with a ValueError
    or give a transform that works: nothing constructs and then fails on every window."""
    defaults = transform_defaults(name)
    clip = batch[:1, :3200]
    for param, default in defaults.items():
        values = EXTREME_FLOATS if isinstance(default, float) else EXTREMES
        for value in values:
            try:
                transform = make_transform(name, sample_rate_hz=16000, **{param: value})
            except ValueError:
                continue
            out = transform.apply(clip, np.random.default_rng(0))
            assert out.shape == clip.shape and np.all(np.isfinite(out)), (param, value)
