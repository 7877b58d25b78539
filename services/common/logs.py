"""Log set-up shared by the services: one line per record on stderr, with the service's name."""

from __future__ import annotations

import logging

__all__ = ["configure_logging"]


def configure_logging(service: str, level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s",
    )
    # httpx logs every request at INFO; that is the hot path.
    logging.getLogger("httpx").setLevel(logging.WARNING)
