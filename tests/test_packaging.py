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
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    files: set[Path] = set()
    for package, patterns in conf["package-data"].items():
        folder = ROOT / conf["package-dir"][package]
        for pattern in patterns:
            files |= {p for p in folder.glob(pattern) if p.is_file()}
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


def _tracked_tree(dest: Path) -> Path:
    """A copy of the files git tracks (a fresh clone's content), to build from without touching ROOT."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for rel in filter(None, files):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    return dest


def test_wheel_installs_one_namespace(tmp_path) -> None:
    """The wheel holds the ``avsentry`` import package and nothing else at the top level: no
    ``pipelines``, ``stream`` or ``tools`` to collide with other projects; the models, word lists and
    stubs are inside it, and ``python -m avsentry`` has its ``__main__``."""
    import sys
    import zipfile

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    src = _tracked_tree(tmp_path / "src")
    out = tmp_path / "dist"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(src),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = out.glob("avsentry-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"avsentry"}, f"unexpected top-level entries in the wheel: {sorted(top)}"
    for needed in (
        "avsentry/__main__.py",
        "avsentry/cli.py",
        "avsentry/pipelines/detection.py",
        "avsentry/pipelines/models/digits/model.onnx",
        "avsentry/pipelines/models/digits/card.json",
        "avsentry/stream/server.py",
        "avsentry/stream/_proto/avsentry/v1/guard_pb2.py",
        "avsentry/tools/data/unknown_words.txt",
        "avsentry/tools/attacks/pgd.py",
    ):
        assert needed in names, f"{needed} missing from the wheel"
    # every source module of the tree is in the wheel (a package missing from pyproject's list would not be)
    for folder, prefix in (
        ("pipelines", "avsentry/pipelines"),
        ("stream", "avsentry/stream"),
        ("tools", "avsentry/tools"),
    ):
        for py in (src / folder).rglob("*.py"):
            assert f"{prefix}/{py.relative_to(src / folder).as_posix()}" in names, f"{py} not packaged"
