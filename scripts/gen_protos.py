"""Regenerate the gRPC Python code in modelrunner/ from protos/ (`make protos`).

The committed output must equal what this script produces; tests/unit/test_protos.py checks that.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIRS = ("modelrunner", "modelrunner/v1")


def generate(out_dir: Path) -> None:
    """Write the generated package (with __init__.py files) under out_dir."""
    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    # protoc-gen-mypy and protoc-gen-mypy_grpc live next to the interpreter in the venv.
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    grpc_include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{grpc_include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for package in PACKAGE_DIRS:
        init = out_dir / package / "__init__.py"
        init.parent.mkdir(parents=True, exist_ok=True)
        init.write_text('"""Generated from protos/ by scripts/gen_protos.py; do not edit."""\n')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: repo root)")
    args = parser.parse_args()
    if args.out.resolve() == ROOT:
        shutil.rmtree(ROOT / "modelrunner", ignore_errors=True)
    generate(args.out)


if __name__ == "__main__":
    main()
