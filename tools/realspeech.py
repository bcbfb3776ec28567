"""Real human speech from Debian's packages: telephone prompts recorded by people.

Asterisk's sound packages hold a few hundred prompts per speaker ("please enter your
password", "the party you are calling is not available"...), each spoken by one professional
voice, at 8 kHz. The non-English ones are real speech the default recognizer must call
``_unknown_``, and real speech the detector must not flag: they feed the ``_unknown_`` class
(training speakers), the real-speech evaluation and the calibration (held-out speakers).

A speaker is either trained on or held out, never both. Held out: Allison (Mexican Spanish), who
also recorded the English prompts of the reserved ``asterisk-core-sounds-en`` set (training on her
voice as "other speech" would bias the reserved test), and Carlo (Italian, the only man).

Only prompts are read: the ``digits/`` and ``letters/`` folders (numbers and letters of their own
languages, some close to English digits: French "six", Russian "tri"), the ``silence/`` folder and
tone and beep files are skipped. **Reserved, refused here**: ``asterisk-core-sounds-en*`` (the
``en*`` folders) and ``pocketsphinx-testdata`` are an independent test set, never read for
training, tuning, calibration or evaluation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from avsentry.pipelines.audio_io import AudioReadError, read_audio

SOUNDS_ROOT = Path("/usr/share/asterisk/sounds")  # Debian's layout
SAMPLE_RATE_HZ = 16_000
SKIPPED_FOLDERS = frozenset({"digits", "letters", "silence"})
_SKIPPED_NAME = re.compile(r"tone|beep", re.IGNORECASE)
_RESERVED = re.compile(r"^en($|[_-])|pocketsphinx", re.IGNORECASE)


@dataclass(frozen=True, slots=True, kw_only=True)
class Speaker:
    """One recorded voice: its folder under :data:`SOUNDS_ROOT` and the package that installs it."""

    name: str
    folder: str
    package: str
    language: str
    sex: str
    heldout: bool


def _spk(name: str, folder: str, package: str, language: str, sex: str, *, heldout: bool) -> Speaker:
    return Speaker(name=name, folder=folder, package=package, language=language, sex=sex, heldout=heldout)


SPEAKERS = (
    _spk("june", "fr_CA_f_June", "asterisk-core-sounds-fr-wav", "fr-CA", "f", heldout=False),
    _spk("ivrvoice", "ru_RU_f_IvrvoiceRU", "asterisk-core-sounds-ru-wav", "ru", "f", heldout=False),
    _spk("armelle", "fr", "asterisk-prompt-fr-armelle", "fr", "f", heldout=False),
    _spk("es-co", "es", "asterisk-prompt-es-co", "es-CO", "unknown", heldout=False),
    _spk("allison", "es_MX_f_Allison", "asterisk-core-sounds-es-wav", "es-MX", "f", heldout=True),
    _spk("carlo", "it_IT_m_Carlo", "asterisk-core-sounds-it-wav", "it", "m", heldout=True),
)
PACKAGES = tuple(s.package for s in SPEAKERS)


def speaker(name: str) -> Speaker:
    for s in SPEAKERS:
        if s.name == name:
            return s
    raise ValueError(f"unknown real speaker {name!r}; expected one of {[s.name for s in SPEAKERS]}")


def _folder(spk: Speaker, root: Path) -> Path:
    if _RESERVED.search(spk.folder):
        raise ValueError(f"{spk.folder} is reserved as an independent test set and is never read")
    return root / spk.folder


def missing_speakers(root: Path = SOUNDS_ROOT) -> list[Speaker]:
    """Speakers whose recordings are not installed (``tools/setup.sh`` installs them)."""
    return [s for s in SPEAKERS if not _folder(s, root).is_dir()]


@cache
def recordings(name: str, root: Path = SOUNDS_ROOT) -> tuple[str, ...]:
    """The prompt files of speaker ``name``, as paths relative to its folder, sorted.

    Raises:
        RuntimeError: its package is not installed.
    """
    spk = speaker(name)
    folder = _folder(spk, root)
    if not folder.is_dir():
        raise RuntimeError(
            f"recordings of {spk.name} not installed: {folder} "
            f"(apt package {spk.package}; run tools/setup.sh)"
        )
    out = []
    for f in folder.rglob("*"):
        rel = f.relative_to(folder)
        if not f.is_file() or f.suffix not in (".wav", ".gsm") or _SKIPPED_NAME.search(f.stem):
            continue
        if len(rel.parts) > 1 and rel.parts[0] in SKIPPED_FOLDERS:
            continue
        out.append(rel.as_posix())
    return tuple(sorted(out))


def read(name: str, rel: str, root: Path = SOUNDS_ROOT) -> np.ndarray:
    """Recording ``rel`` of speaker ``name`` as float32 mono at 16 kHz (as recorded: 8 kHz
    telephone band, so nothing above 4 kHz). A file that holds no audio or cannot be decoded (a
    few of the packaged prompts are empty or truncated) gives an empty array, which the corpus
    drops."""
    path = _folder(speaker(name), root) / rel
    try:
        return read_audio(path, sample_rate_hz=SAMPLE_RATE_HZ)
    except AudioReadError:
        return np.zeros(0, np.float32)
