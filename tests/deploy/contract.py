"""Running a deployment file's containers as local processes, with their own command and
environment, to prove the services accept them.

Two checks live here:
- `variables_read`: the variables a command's settings classes actually read (a recording
  mapping handed to their `from_env`), so a misspelled or misplaced variable is caught even
  though the services ignore unknown ones.
- `Fleet`: starts the containers as processes. Only what cannot work outside a container is
  changed: host names and wildcard binds become 127.0.0.1 with free ports, absolute paths move
  under a temporary directory, files the image copies in are taken from the repository (the
  bundled GGUF becomes a small real one). Everything else (variables, values, arguments, health
  check commands) is used as written.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from model_cli.config import CliSettings
from services.common.health_client import NotServing, wait_until_serving
from services.gateway.config import GatewaySettings
from services.registry.config import RegistrySettings
from services.scheduler.config import SchedulerSettings
from services.stack.config import StackSettings
from services.worker.config import WorkerSettings
from tests.deploy.deployments import ContainerSpec, Probe
from tests.deploy.dockerfile import Dockerfile
from tests.support.processes import free_port, stop_process

__all__ = [
    "RUNTIME_VARIABLES",
    "SETTINGS_BY_COMMAND",
    "Fleet",
    "LocalContainer",
    "RecordingEnv",
    "running_fleet",
    "variables_read",
]

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

# Set by the image for the interpreter and the shell, not settings of any service.
RUNTIME_VARIABLES = frozenset(
    {"PATH", "HOME", "VIRTUAL_ENV", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
)

_FromEnv = Callable[[Mapping[str, str]], object]
_SERVICES: tuple[_FromEnv, ...] = (
    RegistrySettings.from_env,
    SchedulerSettings.from_env,
    WorkerSettings.from_env,
    GatewaySettings.from_env,
)
# Each console script / image command and the settings classes its process reads. The stack
# hands its environment to all four services; the health check reads its role's settings.
SETTINGS_BY_COMMAND: Mapping[str, tuple[_FromEnv, ...]] = {
    "model-runner-registry": (RegistrySettings.from_env,),
    "model-runner-scheduler": (SchedulerSettings.from_env,),
    "model-runner-worker": (WorkerSettings.from_env,),
    "model-runner-gateway": (GatewaySettings.from_env,),
    "model-runner-stack": (StackSettings.from_env, *_SERVICES),
    "model-runner-seed": (CliSettings.from_env,),
}

_WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]", ""}
_LOOPBACK = "127.0.0.1"
# Variables holding `host:port` of a peer or of the service's own listener.
_ADDRESS_VARIABLES = {
    "REGISTRY_ADDRESS",
    "SCHEDULER_ADDRESS",
    "REGISTRY_LISTEN_ADDRESS",
    "SCHEDULER_LISTEN_ADDRESS",
    "WORKER_LISTEN_ADDRESS",
    "WORKER_ADVERTISE_ADDRESS",
    "REGISTRY_METRICS_ADDRESS",
    "SCHEDULER_METRICS_ADDRESS",
    "WORKER_METRICS_ADDRESS",
}
# Defaults that are fixed ports on 127.0.0.1: set to free ports when a container leaves them
# unset, so a test never meets another stack on the machine.
_FIXED_DEFAULT_ADDRESSES = ("REGISTRY_ADDRESS", "SCHEDULER_ADDRESS", "WORKER_ADVERTISE_ADDRESS")
_START_TIMEOUT = 90.0
_PROBE_TIMEOUT = 10.0
_LOG_TAIL = 3000


class RecordingEnv(Mapping[str, str]):
    """An environment that remembers which names were looked up."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return self._values[key]

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return self._values.get(key, default)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.read.add(key)
        return key in self._values

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("settings classes must look variables up by name, not iterate")

    def __len__(self) -> int:
        return len(self._values)


def variables_read(argv: tuple[str, ...], env: Mapping[str, str]) -> set[str]:
    """Names the command's settings read from `env` (its from_env also validates the values)."""
    command = Path(argv[0]).name
    if command not in SETTINGS_BY_COMMAND:
        raise AssertionError(f"unknown command {argv[0]!r}: not a Model Runner console script")
    recording = RecordingEnv(env)
    for from_env in SETTINGS_BY_COMMAND[command]:
        from_env(recording)
    return recording.read


@dataclass(frozen=True)
class LocalContainer:
    spec: ContainerSpec
    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    probes: tuple[Probe, ...]
    # Container port -> loopback port.
    ports: Mapping[int, int]
    log: Path

    @property
    def gateway_url(self) -> str:
        """Where the gateway of this container (gateway or standalone) answers."""
        return f"http://{_LOOPBACK}:{self.env['MODEL_RUNNER_PORT']}"


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


@dataclass
class Fleet:
    """Containers of one deployment, run as processes on loopback."""

    dockerfile: Dockerfile
    root: Path
    gguf: Path
    # Service ports peers dial (registry, scheduler, gateway): one loopback port each.
    shared_ports: dict[int, int] = field(default_factory=dict)
    _running: list[tuple[LocalContainer, subprocess.Popen[bytes]]] = field(default_factory=list)

    # -- rewriting ------------------------------------------------------------------------------

    def plan(self, specs: list[ContainerSpec]) -> None:
        """Give every port a peer dials (a host:port in a peer-address variable or a URL) one
        loopback port for the whole fleet."""
        for spec in specs:
            for key, value in spec.env.items():
                if key in {"REGISTRY_ADDRESS", "SCHEDULER_ADDRESS"}:
                    self.shared_ports.setdefault(_split(value)[1], free_port())
                elif key == "MODEL_RUNNER_HOST":
                    port = urlsplit(value).port
                    assert port is not None, f"{spec.source}: MODEL_RUNNER_HOST without a port"
                    self.shared_ports.setdefault(port, free_port())

    def _image_files(self, target: str) -> dict[str, str]:
        """In-image path -> local file: what the target copies from the build context, and the
        bundled model (from the `model` stage) as the test GGUF."""
        files: dict[str, str] = {}
        for copy in self.dockerfile.target(target).copies:
            if copy.from_stage is None and len(copy.sources) == 1:
                files[copy.destination] = str(ROOT / copy.sources[0])
            elif copy.from_stage == "model":
                files[copy.destination] = str(self.gguf)
        return files

    def _path(self, name: str, value: str, files: Mapping[str, str]) -> str:
        if value in files:
            return files[value]
        return str(self.root / name / value.lstrip("/"))

    def localize(self, spec: ContainerSpec, name: str) -> LocalContainer:
        ports = {port: free_port() for port in spec.ports}
        ports.update(self.shared_ports)
        files = self._image_files(spec.target)

        def address(key: str, value: str) -> str:
            host, port = _split(value)
            if port not in ports:
                raise AssertionError(f"{spec.source}: {key}={value}: nothing listens on {port}")
            if key.endswith("_LISTEN_ADDRESS") and host not in _WILDCARD_HOSTS | {_LOOPBACK}:
                raise AssertionError(f"{spec.source}: {key}={value} binds a specific host")
            return f"{_LOOPBACK}:{ports[port]}"

        env: dict[str, str] = {}
        for key, value in spec.env.items():
            if key in RUNTIME_VARIABLES:
                continue
            if key in _ADDRESS_VARIABLES and value:
                env[key] = address(key, value)
            elif key == "GATEWAY_LISTEN_HOST":
                assert value in _WILDCARD_HOSTS | {_LOOPBACK}, f"{spec.source}: {key}={value}"
                env[key] = _LOOPBACK
            elif key == "MODEL_RUNNER_PORT":
                env[key] = str(ports[int(value)])
            elif key == "MODEL_RUNNER_HOST":
                parts = urlsplit(value)
                assert parts.port is not None
                netloc = f"{_LOOPBACK}:{ports[parts.port]}"
                env[key] = urlunsplit(parts._replace(netloc=netloc))
            elif value.startswith("/"):
                env[key] = self._path(name, value, files)
            else:
                env[key] = value
        command = Path(spec.argv[0]).name
        if command == "model-runner-stack":
            for key in _FIXED_DEFAULT_ADDRESSES:
                env.setdefault(key, f"{_LOOPBACK}:{free_port()}")
        argv = self._argv(spec.argv, name, files)
        probes = tuple(
            Probe("exec", self._argv(p.argv, name, files)) if p.kind == "exec" else p
            for p in spec.probes
        )
        (self.root / name).mkdir(parents=True, exist_ok=True)
        return LocalContainer(spec, name, argv, env, probes, ports, self.root / f"{name}.log")

    def _argv(self, argv: tuple[str, ...], name: str, files: Mapping[str, str]) -> tuple[str, ...]:
        """The image's PATH lookup (its copied scripts, then the venv's console scripts), and
        absolute paths in arguments moved like those in variables."""
        program, *arguments = argv
        copied = files.get(f"/usr/local/bin/{program}")
        if copied is not None:
            head: tuple[str, ...] = (sys.executable, copied)
        elif (VENV_BIN / program).is_file():
            head = (str(VENV_BIN / program),)
        else:
            raise AssertionError(f"{program}: neither copied into the image nor a console script")
        return head + tuple(
            self._path(name, arg, files) if arg.startswith("/") else arg for arg in arguments
        )

    def process_env(self, local: LocalContainer) -> dict[str, str]:
        return {
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": str(self.root / local.name / "home"),
            "LANG": "C.UTF-8",
            **local.env,
        }

    # -- running --------------------------------------------------------------------------------

    def start(self, local: LocalContainer) -> subprocess.Popen[bytes]:
        with local.log.open("ab") as log:
            process = subprocess.Popen(
                local.argv,
                env=self.process_env(local),
                cwd=self.root / local.name,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._running.append((local, process))
        return process

    def log_tail(self, local: LocalContainer) -> str:
        try:
            return local.log.read_text(errors="replace")[-_LOG_TAIL:]
        except OSError:
            return ""

    def run_once(self, local: LocalContainer, timeout: float = 120.0) -> tuple[int, str]:
        """A one-shot container (a job): run to the end; (exit code, output)."""
        result = subprocess.run(
            local.argv,
            env=self.process_env(local),
            cwd=self.root / local.name,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return result.returncode, result.stdout + result.stderr

    def probe(self, local: LocalContainer, probe: Probe) -> tuple[bool, str]:
        """Run one health check the way the orchestrator would; (healthy, what it said)."""
        if probe.kind == "exec":
            result = subprocess.run(
                probe.argv,
                env=self.process_env(local),
                capture_output=True,
                text=True,
                timeout=_PROBE_TIMEOUT,
                check=False,
            )
            return result.returncode == 0, (result.stdout + result.stderr).strip()
        address = f"{_LOOPBACK}:{local.ports[probe.port]}"
        if probe.kind == "grpc":
            try:
                asyncio.run(wait_until_serving(address, timeout=1.0))
            except NotServing as exc:
                return False, str(exc)
            return True, f"grpc {address} SERVING"
        try:
            response = httpx.get(f"http://{address}{probe.path}", timeout=2.0, trust_env=False)
        except httpx.HTTPError as exc:
            return False, f"GET {address}{probe.path}: {exc}"
        return response.status_code == 200, f"GET {probe.path}: {response.status_code}"

    def wait_healthy(self, local: LocalContainer, process: subprocess.Popen[bytes]) -> None:
        """Every probe of the container passes, polled under a deadline; fails at once if the
        process exits."""
        for probe in local.probes:
            deadline = time.monotonic() + _START_TIMEOUT
            said = ""
            while True:
                if process.poll() is not None:
                    raise AssertionError(
                        f"{local.spec.source} exited with {process.returncode}:\n"
                        f"{self.log_tail(local)}"
                    )
                healthy, said = self.probe(local, probe)
                if healthy:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{local.spec.source}: {probe.kind} probe never passed ({said}):\n"
                        f"{self.log_tail(local)}"
                    )
                time.sleep(0.2)

    def stop(self) -> None:
        for _, process in reversed(self._running):
            stop_process(process, timeout=20.0)
        self._running.clear()


@contextmanager
def running_fleet(dockerfile: Dockerfile, root: Path, gguf: Path) -> Iterator[Fleet]:
    fleet = Fleet(dockerfile, root, gguf)
    try:
        yield fleet
    finally:
        fleet.stop()
