"""Regenerate the Python gRPC stubs from protos/ (``make protos``).

The stubs are committed (users need no protoc); ``tests/common/test_protos.py``
fails when they are out of date with the .proto files.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "protos"
OUT_ROOT = REPO  # generated modules land in flatland/v1/ (package flatland.v1)


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_root: Path) -> list[Path]:
    """Run grpcio-tools' protoc over every .proto; return the files written."""
    from grpc_tools import protoc
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {files}")
    written = sorted((out_root / "flatland").rglob("*_pb2*.py*"))
    for pkg in {p.parent for p in written} | {out_root / "flatland"}:
        init = pkg / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated gRPC stubs (make protos). Do not edit."""\n')
    return written


def generated_matches(out_root: Path = OUT_ROOT) -> list[str]:
    """Names of generated files that differ from a fresh generation (empty: up to date)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = []
        fresh_names = set()
        for path in fresh:
            rel = path.relative_to(tmp)
            fresh_names.add(rel)
            committed = out_root / rel
            if not committed.exists() or committed.read_bytes() != path.read_bytes():
                stale.append(str(rel))
        for committed in (out_root / "flatland").rglob("*_pb2*.py*"):
            if committed.relative_to(out_root) not in fresh_names:
                stale.append(f"{committed.relative_to(out_root)} (no .proto makes it)")
        return stale


def main() -> int:
    for old in (OUT_ROOT / "flatland").rglob("*_pb2*.py*"):
        old.unlink()
    written = generate(OUT_ROOT)
    for path in written:
        print(path.relative_to(REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
