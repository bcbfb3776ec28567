"""mypy over the installed namespace (``avsentry.*``), as a user's type checker sees it.

The source folders are mapped into the namespace by setuptools ``package-dir``, which mypy does not
read, so the check runs on a tree of links laid out as the wheel installs it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_is_clean(tmp_path) -> None:
    if shutil.which("mypy", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("mypy is not installed (tools/setup.sh --dev)")
    pkg = tmp_path / "avsentry"
    pkg.mkdir()
    for f in (ROOT / "avsentry").iterdir():
        if f.suffix in (".py", ".typed"):
            (pkg / f.name).symlink_to(f)
    for folder in ("pipelines", "stream", "tools"):
        (pkg / folder).symlink_to(ROOT / folder, target_is_directory=True)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            "-p",
            "avsentry",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-2000:]
