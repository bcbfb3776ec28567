"""Dependencies point one way: ``stream -> pipelines <- tools``; only the CLI sees both edges.

An AST check over every module of the source tree (generated stubs excluded): each import of an
``avsentry.*`` package (absolute or relative) must follow the allowed arrows, and the pure core
imports no edge library.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source folder -> the avsentry layer it installs as
LAYERS = {"pipelines": "pipelines", "stream": "stream", "tools": "tools", "avsentry": "cli"}
# layer -> the layers it may import (besides itself)
ALLOWED = {
    "pipelines": set(),
    "stream": {"pipelines"},
    "tools": {"pipelines"},
    "cli": {"pipelines", "stream", "tools"},
}
EDGE_LIBRARIES = ("grpc", "grpc_health", "grpc_reflection", "sounddevice", "prometheus_client")


def _layer_of(module: str) -> str | None:
    """``avsentry.stream.client`` -> ``stream``; ``avsentry`` / ``avsentry.cli`` -> ``cli``."""
    parts = module.split(".")
    if parts[0] != "avsentry":
        return None
    if len(parts) > 1 and parts[1] in ("pipelines", "stream", "tools"):
        return parts[1]
    return "cli"


def imports_of(folder: str, root: Path = ROOT) -> dict[str, set[str]]:
    """Source file -> the absolute module names it imports (relative imports resolved)."""
    out: dict[str, set[str]] = {}
    base = "avsentry" if folder == "avsentry" else f"avsentry.{folder}"
    for path in sorted((root / folder).rglob("*.py")):
        if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        rel = path.relative_to(root / folder).with_suffix("")
        package = ".".join([base, *rel.parts[:-1]])
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    names.add(f"{anchor}.{node.module}" if node.module else anchor)
                elif node.module:
                    names.add(node.module)
        out[path.relative_to(root).as_posix()] = names
    return out


@pytest.mark.parametrize("folder", sorted(LAYERS))
def test_imports_follow_the_layer_arrows(folder: str) -> None:
    layer = LAYERS[folder]
    wrong = {
        path: sorted(
            name
            for name in names
            if (target := _layer_of(name)) is not None and target != layer and target not in ALLOWED[layer]
        )
        for path, names in imports_of(folder).items()
    }
    wrong = {p: n for p, n in wrong.items() if n}
    assert not wrong, f"{layer} may import only {sorted(ALLOWED[layer]) or 'itself'}: {wrong}"


def test_no_module_imports_the_old_top_level_names() -> None:
    """Everything imports through the avsentry namespace; ``import stream`` would find nothing."""
    old = {"pipelines", "stream", "tools"}
    offenders = {
        path: sorted(n for n in names if n.split(".")[0] in old)
        for folder in LAYERS
        for path, names in imports_of(folder).items()
    }
    assert not {p: n for p, n in offenders.items() if n}


@pytest.mark.parametrize("library", EDGE_LIBRARIES)
def test_pipelines_is_a_pure_core(library: str) -> None:
    offenders = [
        p for p, names in imports_of("pipelines").items() if any(n.split(".")[0] == library for n in names)
    ]
    assert not offenders, f"pipelines must not import {library}: {offenders}"


def test_the_checker_sees_a_wrong_arrow(tmp_path) -> None:
    """The check itself can fail: a tools module importing the stream client is caught."""
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "bad.py").write_text("from avsentry.stream.client import GuardClient\n")
    (tmp_path / "tools" / "fine.py").write_text("from ..pipelines import detection\nimport numpy\n")
    found = imports_of("tools", root=tmp_path)
    assert found["tools/bad.py"] == {"avsentry.stream.client"}
    assert found["tools/fine.py"] == {"avsentry.pipelines", "numpy"}
    assert _layer_of("avsentry.stream.client") not in ALLOWED["tools"]
