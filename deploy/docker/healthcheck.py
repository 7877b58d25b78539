#!/usr/bin/env python3
"""Container health check: does this container's service answer on its own health endpoint?

    model-runner-healthcheck registry|scheduler|worker|gateway [--timeout SECONDS]

Exits 0 once the service reports SERVING on the standard gRPC health service (registry,
scheduler, worker) or answers `GET /` with 200 (gateway); otherwise 1, with one line saying why.
The address comes from the service's own settings class, read from the same environment the
service started with, so the check follows a changed listen address or port. A wildcard listen
host is checked on loopback.

Installed in every image as /usr/local/bin/model-runner-healthcheck (Dockerfile); compose and
the images' HEALTHCHECK call it. Kubernetes uses its native gRPC and HTTP probes instead.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Mapping

import httpx

from services.common.env import SettingError
from services.common.health_client import NotServing, wait_until_serving
from services.common.internal_security import InternalSecurity
from services.gateway.config import GatewaySettings
from services.registry.config import RegistrySettings
from services.scheduler.config import SchedulerSettings
from services.worker.config import WorkerSettings

__all__ = ["GRPC_ROLES", "ROLES", "check", "grpc_address", "main"]

_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}
_LOOPBACK = "127.0.0.1"
_DEFAULT_TIMEOUT = 3.0

GRPC_ROLES: Mapping[str, Callable[[Mapping[str, str]], str]] = {
    "registry": lambda env: RegistrySettings.from_env(env).listen_address,
    "scheduler": lambda env: SchedulerSettings.from_env(env).listen_address,
    "worker": lambda env: WorkerSettings.from_env(env).listen_address,
}
ROLES = (*GRPC_ROLES, "gateway")


class Unhealthy(RuntimeError):
    """The service did not answer healthy within the timeout."""


def _reachable_host(host: str) -> str:
    return _LOOPBACK if host in _WILDCARD_HOSTS else host


def grpc_address(listen_address: str) -> str:
    """Where to reach a gRPC service that listens on `listen_address` from inside its container."""
    host, _, port = listen_address.rpartition(":")
    return f"{_reachable_host(host)}:{port}"


def _gateway_url(env: Mapping[str, str]) -> str:
    settings = GatewaySettings.from_env(env)
    host = _reachable_host(settings.listen_host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.port}/"


async def check(role: str, env: Mapping[str, str], timeout: float) -> str:
    """What answered healthy; Unhealthy (or SettingError) otherwise."""
    if role == "gateway":
        url = _gateway_url(env)
        try:
            async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
                response = await client.get(url)
        except httpx.HTTPError as exc:
            raise Unhealthy(f"gateway {url}: {exc.__class__.__name__}: {exc}") from exc
        if response.status_code != 200:
            raise Unhealthy(f"gateway {url} answered {response.status_code}")
        return url
    address = grpc_address(GRPC_ROLES[role](env))
    try:
        # With mutual TLS on, the probe presents the service's own certificate.
        await wait_until_serving(address, timeout=timeout, security=InternalSecurity.from_env(env))
    except NotServing as exc:
        raise Unhealthy(f"{role}: {exc}") from exc
    return address


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="model-runner-healthcheck", description=__doc__)
    parser.add_argument("role", choices=ROLES)
    parser.add_argument("--timeout", type=float, default=_DEFAULT_TIMEOUT, help="seconds")
    args = parser.parse_args(argv)
    try:
        where = asyncio.run(check(args.role, os.environ if env is None else env, args.timeout))
    except (Unhealthy, SettingError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    print(f"healthy: {args.role} on {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
