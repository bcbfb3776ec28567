"""Building transforms by name and parsing ``name:key=value`` specs."""

from __future__ import annotations

import pytest

import avsentry.pipelines.transforms as transforms
from avsentry.pipelines.transforms import (
    TRANSFORM_NAMES,
    LowPass,
    Mp3RoundTrip,
    Quantize,
    make_transform,
    parse_transform_spec,
    transform_params,
)


def test_names_are_sorted_and_complete() -> None:
    assert TRANSFORM_NAMES == (
        "aac",
        "lowpass",
        "mel_inversion",
        "mp3",
        "noise",
        "opus",
        "quantize",
        "resample",
    )


def test_all_is_sorted_and_importable() -> None:
    assert transforms.__all__ == sorted(transforms.__all__, key=lambda n: (not n.isupper(), n))
    for exported in transforms.__all__:
        assert hasattr(transforms, exported)


@pytest.mark.parametrize("name", TRANSFORM_NAMES)
def test_make_transform_builds_each_name_at_its_rate(name: str) -> None:
    transform = make_transform(name, sample_rate_hz=16000)
    assert transform.name == name
    assert transform.sample_rate_hz == 16000


def test_make_transform_passes_params() -> None:
    mp3 = make_transform("mp3", sample_rate_hz=16000, bitrate_kbps=24, workers=1)
    assert mp3 == Mp3RoundTrip(sample_rate_hz=16000, bitrate_kbps=24)
    assert make_transform("quantize", sample_rate_hz=8000, bits=6) == Quantize(sample_rate_hz=8000, bits=6)
    assert make_transform("lowpass", sample_rate_hz=16000, cutoff_hz=3000) == LowPass(cutoff_hz=3000)


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown transform 'flac'; known: aac, lowpass"):
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
    assert transform_params("mp3") == ("bitrate_kbps", "workers")
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
