"""Entry point placeholder; the CLI is being written."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    sys.exit("model-cli is not implemented yet")


if __name__ == "__main__":
    main()
