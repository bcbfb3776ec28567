"""Synthesis and training on a tiny corpus: the `avsentry train` recipe end to end, small."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from avsentry.pipelines.recognizers import load_recognizer
from avsentry.tools import augment, synth, train
from avsentry.tools.heldout import heldout_windows


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    utts = synth.plan(seed=0, scale=0.01, words=["hello", "garden"], phrases=["the sky is very blue today"])
    path = tmp_path_factory.mktemp("corpus") / "clips.npz"
    clips = synth.synthesize(utts, progress=False)
    synth.save(path, utts, clips, recipe=synth.recipe_id(utts))
    return synth.load(path)


def test_every_engine_speaks(tiny_corpus) -> None:
    assert set(tiny_corpus.engine) == {"espeak", "flite", "festival", "accented", "piper", "real"}
    assert set(tiny_corpus.label) == set(synth.DIGITS) | {synth.UNKNOWN}
    for i in range(len(tiny_corpus)):
        c = tiny_corpus.clip(i)
        assert 800 < len(c) <= synth.MAX_CLIP_S * 16000, (tiny_corpus.engine[i], tiny_corpus.voice[i], len(c))
        assert np.abs(c).max() > 0.01
    assert tiny_corpus.heldout.any() and (~tiny_corpus.heldout).any()


def test_heldout_split_is_by_whole_voice() -> None:
    assert synth.is_heldout_voice("flite", "rms") and not synth.is_heldout_voice("flite", "slt")
    assert synth.is_heldout_voice("festival", "ked_diphone")
    variants = synth.espeak_variants()
    held = [v for v in variants if synth.is_heldout_voice("espeak", f"en+{v}")]
    assert 0.05 < len(held) / len(variants) < 0.3
    # the decision depends on the variant only, so a held-out variant is held out under every accent
    assert all(synth.is_heldout_voice("espeak", f"{a}+{held[0]}") for a in synth.ESPEAK_ACCENTS)


def _median_f0_hz(x: np.ndarray, rate: int = 16000) -> float:
    """Median autocorrelation pitch over the voiced 40 ms frames of a clip."""
    frame, f0s = int(0.04 * rate), []
    for s in range(0, len(x) - frame, frame // 2):
        seg = x[s : s + frame] - x[s : s + frame].mean()
        if np.sqrt(np.mean(seg**2)) < 0.03:
            continue
        ac = np.correlate(seg, seg, "full")[frame - 1 :]
        lo, hi = rate // 400, rate // 60
        k = lo + int(np.argmax(ac[lo:hi]))
        if ac[k] > 0.5 * ac[0]:
            f0s.append(rate / k)
    return float(np.median(f0s))


def test_festival_diphone_pitch_follows_the_drawn_f0() -> None:
    utts = [
        synth.Utterance(
            text="seven", label="seven", engine="festival", voice="kal_diphone", params={"f0_mean": f0}
        )
        for f0 in (85.0, 170.0)
    ]
    low, high = (_median_f0_hz(c) for c in synth.synthesize(utts, progress=False))
    assert 70 < low < 100 and 150 < high < 190, (low, high)
    drawn = [u.params for u in synth.plan(seed=0, scale=0.01) if u.voice in synth.FESTIVAL_LR_INTONATION]
    assert drawn and all(80 <= p["f0_mean"] <= 180 for p in drawn)
    assert np.std([p["f0_mean"] for p in drawn]) > 10


def test_weight_average_follows_the_ema_rule() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    avg = train.WeightAverage(model, decay=0.9)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model(torch.randn(8, 3))  # training-mode forward: BatchNorm statistics move, the counter counts
    avg.update(model)
    d = min(0.9, 2 / 11)
    now = model.state_dict()
    for k in ("0.weight", "1.running_mean", "1.running_var"):
        torch.testing.assert_close(avg.state[k], d * start[k] + (1 - d) * now[k])
    target = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    target.load_state_dict(now)
    avg.copy_to(target)
    torch.testing.assert_close(target[0].weight, avg.state["0.weight"])
    assert int(target[1].num_batches_tracked) == 1  # integer buffers are the model's own
    with pytest.raises(ValueError, match="ema_decay"):
        train.TrainConfig(ema_decay=1.0)


def test_accented_voices_are_installed_and_train_only() -> None:
    assert synth.missing_programs() == []
    langs = synth.accented_languages()
    assert {lang.name for lang in langs} >= {"italian", "czech", "finnish"}
    utts = [u for u in synth.plan(seed=0, scale=0.01) if u.engine == "accented"]
    voices = {v for lang in langs for v in lang.voices}
    assert {u.voice for u in utts} == voices and not any(u.heldout for u in utts)
    for lang in langs:
        said = {u.text: u.label for u in utts if u.voice == lang.voices[0] and u.label != synth.UNKNOWN}
        assert said == dict(zip(lang.digits, synth.DIGITS, strict=True))
    # the held-out voices keep their own prosody: no drawn pitch
    assert not any("f0_mean" in u.params for u in synth.plan(seed=0, scale=0.01) if u.heldout)


def test_unknown_texts_never_say_a_digit() -> None:
    """Anything spoken as ``_unknown_`` that said a digit (or "to", "for", "won"...) would teach the
    model to miss that digit; the Italian/Czech/Finnish phrases avoid their own numerals too."""
    digit_like = {*synth.DIGITS, "to", "too", "do", "for", "fore", "won", "ate", "tree", "free", "fix"}
    digit_like |= {"uno", "due", "tre", "sei", "sette", "otto", "nove", "dieci"}  # Italian
    digit_like |= {"jedna", "dva", "tri", "ctyri", "pet", "sest", "sedm", "osm", "devet"}  # Czech
    digit_like |= {"yksi", "kaksi", "kolme", "nelja", "viisi", "kuusi", "seitseman", "kahdeksan"}
    texts = [*synth.read_word_list("unknown_words.txt"), *synth.read_word_list("phrases.txt")]
    texts += [p for lang in synth.accented_languages() for p in lang.phrases]
    assert len(texts) > 250
    said = {w for t in texts for w in t.lower().split() if w in digit_like}
    assert not said, said


def test_trim_silence_keeps_the_word() -> None:
    x = np.zeros(16000, np.float32)
    x[6000:9000] = 0.5 * np.sin(np.arange(3000) * 0.3)
    y = synth.trim_silence(x)
    assert 3000 <= len(y) <= 3000 + 2 * 480 + 320


def test_augmentations_keep_shape_and_range(rng) -> None:
    x = np.stack(
        [augment.place(rng, 0.9 * np.sin(np.arange(5000) * 0.2).astype(np.float32)) for _ in range(16)]
    )
    y = augment.degrade(rng, x)
    assert y.shape == x.shape and y.dtype == np.float32 and np.abs(y).max() <= 1
    assert not np.shares_memory(x, y) and not np.allclose(x, y)
    bg = [augment.background(rng) for _ in range(20)]
    assert all(b.shape == (16000,) and np.abs(b).max() < 1 for b in bg)


@pytest.mark.parametrize(("colour", "slope_db_per_octave"), [("white", 0.0), ("pink", -3.0), ("brown", -6.0)])
def test_coloured_noise_has_its_spectrum_and_varies(rng, colour, slope_db_per_octave) -> None:
    draws = np.stack([augment.coloured_noise(rng, 16000, colour) for _ in range(64)])
    assert draws.dtype == np.float32
    np.testing.assert_allclose(np.sqrt(np.mean(draws**2, axis=1)), 1.0, rtol=1e-4)
    power = np.mean(np.abs(np.fft.rfft(draws, axis=1)) ** 2, axis=0)
    f = np.fft.rfftfreq(16000, 1 / 16000)
    band = lambda lo: power[(f >= lo) & (f < 2 * lo)].mean()  # noqa: E731
    octaves = [10 * np.log10(band(2 * lo) / band(lo)) for lo in (125, 250, 500, 1000, 2000)]
    assert np.mean(octaves) == pytest.approx(slope_db_per_octave, abs=0.5)
    # no draw is a copy of another, up to sign (a bank row is shifted and signed at random);
    # independent brown-noise windows do correlate strongly: few low bins carry the power
    corr = np.corrcoef(draws)[np.triu_indices(len(draws), 1)]
    assert np.abs(corr).max() < 0.99
    with pytest.raises(ValueError, match="colour"):
        augment.coloured_noise(rng, 100, "blue")


def test_time_stretch_changes_duration_around_the_word() -> None:
    mag = torch.full((3, 8, 101), 1e-3)
    mag[:, :, 40:50] = 1.0  # a 10-frame word centred on frame 44.5
    loud = lambda m: (m.mean(1) > 0.5).sum(1)  # noqa: E731
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(train.time_stretch(mag, 1.0, gen), mag)
    # the factor is drawn per example: find slower and faster ones among many
    out = train.time_stretch(mag.repeat(20, 1, 1), 1.5, gen)
    lengths = loud(out)
    assert lengths.max() >= 13 and lengths.min() <= 8
    centre = (out.mean(1) * torch.arange(101)).sum(1) / out.mean(1).sum(1)
    assert torch.allclose(centre, torch.full_like(centre, 44.5), atol=1.0)
    # no pitch change: each frame keeps the frequency profile of the input
    np.testing.assert_allclose(out[:, :, 44].numpy(), 1.0)


def test_tiny_training_run_writes_a_loadable_model(tiny_corpus, tmp_path) -> None:
    cfg = train.TrainConfig(steps=4, batch_size=16)
    model, log = train.train(tiny_corpus, cfg, progress=False)
    assert np.isfinite(log["final_loss"])
    card = train.base_card(model, cfg, tiny_corpus)
    x = heldout_windows(tiny_corpus)["x"][:8]
    train.write_model(model, tmp_path, card, check_windows=x)
    agree = json.loads((tmp_path / "card.json").read_text())["onnx_agreement"]
    assert agree["n_windows"] == 8 and agree["max_abs_prob_diff"] < 1e-4
    rec_t = load_recognizer(tmp_path / "card.json", backend="torch", device="cpu")
    rec_o = load_recognizer(tmp_path / "card.json", backend="onnx", device="cpu")
    np.testing.assert_allclose(rec_t.predict(x), rec_o.predict(x), atol=1e-4)
    with torch.no_grad():
        np.testing.assert_allclose(rec_t.predict(x), model(torch.from_numpy(x)).softmax(1).numpy(), atol=1e-6)


def test_sampler_engine_weights_set_each_engines_share(tiny_corpus) -> None:
    train_clips = tiny_corpus.select(~tiny_corpus.heldout)
    off = {"flite": 0.0, "festival": 0.0, "piper": 0.0}
    s = train.BatchSampler(train_clips, seed=0, engine_weights={"espeak": 1.0, "accented": 3.0} | off)
    picked = [str(train_clips.engine[s.pick(synth.DIGITS[k % 10])]) for k in range(400)]
    share = {e: picked.count(e) / len(picked) for e in set(picked)}
    assert set(share) == {"espeak", "accented"} and 0.65 < share["accented"] < 0.85, share
    with pytest.raises(ValueError, match="engine weights"):
        train.BatchSampler(train_clips, seed=0, engine_weights=dict.fromkeys(share, 0.0) | off)


def test_a_corpus_from_another_recipe_is_synthesised_again(tmp_path) -> None:
    tiny = synth.plan(seed=0, scale=0.01)
    assert synth.recipe_id(tiny) == synth.recipe_id(synth.plan(seed=0, scale=0.01))
    assert synth.recipe_id(tiny) != synth.recipe_id(synth.plan(seed=1, scale=0.01))
    assert synth.recipe_id(tiny) != synth.recipe_id(synth.plan(seed=0, scale=0.02))
    data = tmp_path / "clips.npz"
    old = [u for u in tiny if u.engine == "espeak"][:3]
    synth.save(data, old, synth.synthesize(old, progress=False))  # no fingerprint, like old corpora
    assert synth.stored_recipe(data) == ""
    card = train.run(
        data=data,
        out_dir=tmp_path / "m",
        cfg=train.TrainConfig(steps=2, batch_size=16),
        synth_scale=0.01,
        progress=False,
    )
    assert synth.stored_recipe(data) == synth.recipe_id(tiny)
    assert len(synth.load(data)) > 100 and card["data"]["clips"]["heldout"] > 0
    assert "piper" not in card["heldout_accuracy"]["per_engine"]
    # a diagnostic run that never hears one engine reports it as held out
    kw = {
        "data": data,
        "cfg": train.TrainConfig(steps=2, batch_size=16),
        "synth_scale": 0.01,
        "progress": False,
    }
    left = train.run(out_dir=tmp_path / "left", leave_out="piper", **kw)
    assert left["data"]["left_out_engine"] == "piper" and "not for shipping" in left["limitations"]
    assert "piper" in left["heldout_accuracy"]["per_engine"]
    assert "piper" in left["speech_evaluation"]["telephone_8k"]["per_source"]
    with pytest.raises(ValueError, match="no such engine"):
        train.run(out_dir=tmp_path / "x", leave_out="nope", **kw)


def test_sampler_balances_classes(tiny_corpus) -> None:
    s = train.BatchSampler(tiny_corpus.select(~tiny_corpus.heldout), seed=0)
    _, y = s.windows(600, degrade=False)
    counts = np.bincount(y, minlength=len(synth.LABELS))
    assert counts.min() > 20  # every class, background included
    assert counts[synth.LABELS.index(synth.UNKNOWN)] > counts[:10].mean() * 1.4


@pytest.mark.slow
def test_train_command_end_to_end(tmp_path) -> None:
    """`avsentry train` on a 10 % corpus: synthesis, training, export, calibration (about 10 min)."""
    import json
    import subprocess
    import sys

    out = tmp_path / "model"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "avsentry",
            "train",
            "--data",
            str(tmp_path / "clips.npz"),
            "--out",
            str(out),
            "--synth-scale",
            "0.1",
            "--steps",
            "800",
            "--device",
            "cpu",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    card = json.loads((out / "card.json").read_text())
    assert card["heldout_accuracy"]["overall"] > 0.6
    assert card["detector"]["measured_fpr"] <= 0.05
    rec = load_recognizer(out / "card.json", backend="onnx", device="cpu")
    assert rec.spec.labels == synth.LABELS
