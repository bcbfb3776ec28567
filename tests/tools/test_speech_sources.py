"""Model v3 data: the Piper voice, real recordings of people, the maintained-library
augmentations, and the evaluation helpers (per source, connected digits)."""

from __future__ import annotations

import numpy as np
import pytest

from avsentry.tools import augment, realspeech, speecheval, synth


def _band_energy(x: np.ndarray, lo_hz: float, hi_hz: float, rate: int = 16000) -> float:
    p = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / rate)
    return float(p[(f >= lo_hz) & (f < hi_hz)].sum())


def test_real_speakers_are_installed_and_split_by_speaker() -> None:
    assert realspeech.missing_speakers() == []
    train = [s for s in realspeech.SPEAKERS if not s.heldout]
    held = [s for s in realspeech.SPEAKERS if s.heldout]
    assert len(train) >= 3 and len(held) >= 2
    for s in realspeech.SPEAKERS:
        files = realspeech.recordings(s.name)
        assert len(files) > 150, s
        # numbers and letters of their own languages, silences and tones are never read
        assert not any(f.split("/")[0] in realspeech.SKIPPED_FOLDERS for f in files)
        assert not any("tone" in f or "beep" in f for f in files)
        assert synth.is_heldout_voice("real", s.name) == s.heldout
    utts = [u for u in synth.plan(seed=0, scale=0.02) if u.engine == "real"]
    assert {u.voice for u in utts} == {s.name for s in realspeech.SPEAKERS}
    assert all(u.label == synth.UNKNOWN for u in utts)


def test_reserved_test_sets_are_refused(tmp_path) -> None:
    for folder in ("en", "en_US_f_Allison", "en-gb", "pocketsphinx-testdata"):
        spk = realspeech.Speaker(name="x", folder=folder, package="p", language="en", sex="f", heldout=True)
        with pytest.raises(ValueError, match="reserved"):
            realspeech._folder(spk, tmp_path)


def test_a_real_recording_is_telephone_band_speech() -> None:
    name = realspeech.SPEAKERS[0].name
    x = realspeech.read(name, realspeech.recordings(name)[0])
    assert x.dtype == np.float32 and len(x) > 8000 and 0.05 < np.abs(x).max() <= 1
    # recorded at 8 kHz: nothing above 4 kHz once at 16 kHz
    assert _band_energy(x, 4300, 8000) < 1e-3 * _band_energy(x, 200, 3800)


def test_the_piper_voice_says_each_digit_in_each_accent() -> None:
    utts = [u for u in synth.plan(seed=0, scale=0.01) if u.engine == "piper"]
    assert {u.voice.split("+")[1] for u in utts} == set(synth.PIPER_ACCENTS)
    assert {u.label for u in utts} >= set(synth.DIGITS)
    digits = [u for u in utts if u.label in ("two", "seven")][:2]
    clips = synth.synthesize(digits, progress=False)
    for c in clips:
        assert 0.2 * 16000 < len(c) < 1.2 * 16000 and np.abs(c).max() > 0.1
    assert not np.allclose(clips[0][:3000], clips[1][:3000])


@pytest.mark.parametrize("codec", [*augment.TELEPHONE_CODECS, "pcm"])
def test_telephone_round_trip_keeps_the_speech_band_only(rng, codec) -> None:
    t = np.arange(16000) / 16000
    x = (0.3 * np.sin(2 * np.pi * 1000 * t) + 0.3 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32)
    y = augment.telephone(rng, x, codec=codec)
    assert y.shape == x.shape and y.dtype == np.float32
    speech, high = _band_energy(y, 900, 1100), _band_energy(y, 4200, 8000)
    assert high < 0.01 * speech, (codec, high, speech)
    assert speech > 0.1 * _band_energy(x, 900, 1100)


def test_room_impulse_responses_are_simulated_rooms() -> None:
    irs = augment.room_impulse_responses()
    assert len(irs) == 96
    for ir in irs[:10]:
        assert abs(float(np.sum(ir.astype(np.float64) ** 2)) - 1) < 1e-4
        assert np.argmax(np.abs(ir)) == 0  # the direct path first: no added delay
        assert len(ir) > 800  # reverberant tails, not a single tap
    lengths = [len(ir) for ir in irs]
    assert max(lengths) > 2 * min(lengths)  # rooms of different sizes and reverberation times


def test_word_in_context_stays_whole_between_fragments(rng) -> None:
    word = np.full(6000, 0.5, np.float32)
    others = (np.full(9000, 0.2, np.float32), np.full(9000, 0.2, np.float32))
    seen_fragments = 0
    for _ in range(40):
        w = augment.place_in_context(rng, word, others)
        assert w.shape == (16000,)
        # the word is somewhere in full (speed perturbation changes its length by <= 15 %)
        assert np.sum(w >= 0.5) >= 0.85 * 6000 / 1.15 - 1
        seen_fragments += bool(np.any((w > 0) & (w < 0.45)))
    assert seen_fragments > 20


def test_degrade_with_babble_keeps_shape_and_range(rng) -> None:
    x = np.stack(
        [augment.place(rng, 0.9 * np.sin(np.arange(5000) * 0.2).astype(np.float32)) for _ in range(12)]
    )
    babble = [0.5 * np.sin(np.arange(20000) * 0.05).astype(np.float32)]
    y = augment.degrade(rng, x, babble=babble, babble_prob=1.0)
    assert y.shape == x.shape and y.dtype == np.float32 and np.abs(y).max() <= 1
    # babble fills the silence around the word
    assert np.mean(np.abs(y[:, :2000]) > 1e-3) > 0.5


def test_window_targets_name_the_one_whole_digit() -> None:
    s = speecheval.DigitString(
        audio=np.zeros(40000, np.float32),
        digits=("two", "nine", "three"),
        spans=((3000, 9000), (12000, 20000), (30000, 36000)),
        voice="v",
    )
    starts = np.array([0, 8000, 16000, 24000])
    # [0,16000): two and the start of nine; [8000,24000): nine only (two cut); [16000, 32000): none
    # whole; [24000, 40000): three
    assert speecheval.window_targets(s, starts, 16000) == ["two", "nine", None, "three"]
    s2 = speecheval.DigitString(
        np.zeros(20000, np.float32), ("one", "two"), ((1000, 5000), (7000, 12000)), "v"
    )
    assert speecheval.window_targets(s2, np.array([0]), 16000) == [None]  # two whole digits


def test_per_source_separates_digits_from_other_speech() -> None:
    unknown = synth.LABELS.index(synth.UNKNOWN)
    data = {
        "y": np.array([0, 1, unknown, unknown, unknown]),
        "source": np.array(["flite", "flite", "flite", "real:carlo", "real:carlo"]),
    }
    pred = np.array([0, 2, unknown, unknown, 3])
    rep = speecheval.per_source(pred, data)
    assert rep["flite"]["digit_accuracy"] == 0.5 and rep["flite"]["other_speech_as_unknown"] == 1.0
    assert rep["real:carlo"] == {
        "accuracy": 0.5,
        "n": 2,
        "other_speech_as_unknown": 0.5,
        "other_speech_windows": 2,
    }
    m = speecheval.confusion(pred, data["y"])
    assert m.sum() == 5 and m[1, 2] == 1 and m[unknown, 3] == 1
