"""What the package reads at run time is in git, so a fresh clone has it.

A ``data/`` rule in ``.gitignore`` once matched ``tools/data/`` too: the word lists the corpus
recipe reads stayed on one machine and ``avsentry train`` failed on every fresh clone.
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def package_data_files() -> list[Path]:
    """Every file on disk matched by ``[tool.setuptools.package-data]`` in pyproject.toml."""
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    files: set[Path] = set()
    for package, patterns in conf["tool"]["setuptools"]["package-data"].items():
        for pattern in patterns:
            files |= {p for p in (ROOT / package).glob(pattern) if p.is_file()}
    return sorted(files)


def test_package_data_covers_the_bundled_lists() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in package_data_files()}
    assert {
        "tools/data/unknown_words.txt",
        "tools/data/phrases.txt",
        "tools/data/accented_voices.toml",
        "pipelines/models/digits/model.pt",
        "pipelines/models/digits/model.onnx",
        "pipelines/models/digits/card.json",
    } <= names


def test_no_package_data_is_git_ignored() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    files = [str(p.relative_to(ROOT)) for p in package_data_files()]
    r = subprocess.run(
        ["git", "check-ignore", "--no-index", "--verbose", *files], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 1 and not r.stdout, f"git would leave these out of a clone:\n{r.stdout}"
