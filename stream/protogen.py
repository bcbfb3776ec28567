"""Regenerate the gRPC Python stubs from ``proto/avsentry/v1/*.proto`` with grpcio-tools.

The stubs are committed under ``stream/_proto`` (so installs need no code generation);
``tests/stream/test_protocol.py`` regenerates them into a temporary folder and fails if the
committed copies are stale. Run ``python -m stream.protogen`` after editing a ``.proto``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto"
VIRTUAL = "stream/_proto"  # import path the generated modules use: stream._proto.avsentry.v1


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.rglob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (grpcio-tools) for every .proto; returns the files written under ``out_dir``."""
    from grpc_tools import protoc  # dev/build dependency, imported only here

    out_dir.mkdir(parents=True, exist_ok=True)
    files = [f"{VIRTUAL}/{p.relative_to(PROTO_DIR).as_posix()}" for p in proto_files()]
    args = [
        "grpc_tools.protoc",
        f"--proto_path={VIRTUAL}={PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed for {files}")
    gen = out_dir / VIRTUAL
    return sorted(p for p in gen.rglob("*_pb2*") if p.suffix in (".py", ".pyi"))


def main() -> int:
    written = generate(ROOT)
    for sub in ("stream/_proto", "stream/_proto/avsentry", "stream/_proto/avsentry/v1"):
        init = ROOT / sub / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated gRPC stubs (python -m stream.protogen)."""\n')
    print("\n".join(str(p.relative_to(ROOT)) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
