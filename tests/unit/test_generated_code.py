"""The committed gRPC code in modelrunner/ is exactly what `make protos` generates from protos/."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _files(root: Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    generated = tmp_path / "modelrunner"
    committed = ROOT / "modelrunner"
    assert _files(generated) == _files(committed), "run `make protos` and commit the result"
    differing = [
        name
        for name in sorted(_files(generated))
        if not filecmp.cmp(generated / name, committed / name, shallow=False)
    ]
    assert not differing, f"stale generated code, run `make protos`: {differing}"
