"""Regenerate the gRPC Python stubs from ``proto/avsentry/v1/*.proto`` with grpcio-tools.

The stubs are committed under ``stream/_proto`` (so installs need no code generation; grpcio-tools
is a ``dev`` extra, not a runtime dependency) and import each other as
``avsentry.stream._proto.avsentry.v1``. ``tests/stream/test_protocol_config.py`` regenerates them
into a temporary folder and fails if the committed copies are stale. Run
``python -m avsentry.stream.protogen`` after editing a ``.proto``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto"
STUBS = ROOT / "stream" / "_proto"  # where the committed stubs live in the source tree
VIRTUAL = "avsentry/stream/_proto"  # their import path once installed: avsentry.stream._proto.avsentry.v1


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.rglob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (grpcio-tools) for every .proto into ``out_dir``; returns the stub files written,
    laid out as under :data:`STUBS` (``out_dir/avsentry/v1/guard_pb2.py``...)."""
    from grpc_tools import protoc  # dev dependency, imported only here

    with tempfile.TemporaryDirectory() as tmp:
        files = [f"{VIRTUAL}/{p.relative_to(PROTO_DIR).as_posix()}" for p in proto_files()]
        args = [
            "grpc_tools.protoc",
            f"--proto_path={VIRTUAL}={PROTO_DIR}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *files,
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed for {files}")
        gen = Path(tmp) / VIRTUAL
        written = []
        for p in sorted(gen.rglob("*_pb2*")):
            if p.suffix in (".py", ".pyi"):
                dest = out_dir / p.relative_to(gen)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, dest)
                written.append(dest)
    return written


def main() -> int:
    written = generate(STUBS)
    for sub in ("", "avsentry", "avsentry/v1"):
        init = STUBS / sub / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated gRPC stubs (python -m avsentry.stream.protogen)."""\n')
    print("\n".join(str(p.relative_to(ROOT)) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
