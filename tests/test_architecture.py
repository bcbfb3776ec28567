"""Dependencies point inward: stream -> pipelines <- tools; pipelines imports no edge library."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imports_of(package: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        out[str(path.relative_to(ROOT))] = names
    return out


@pytest.mark.parametrize("forbidden", ["stream", "tools", "grpc", "sounddevice"])
def test_pipelines_is_a_pure_core(forbidden) -> None:
    offenders = [p for p, names in imports_of("pipelines").items() if forbidden in names]
    assert not offenders, f"pipelines must not import {forbidden}: {offenders}"


def test_stream_uses_tools_only_from_the_cli() -> None:
    offenders = [
        p for p, names in imports_of("stream").items() if "tools" in names and not p.endswith("cli.py")
    ]
    assert not offenders
