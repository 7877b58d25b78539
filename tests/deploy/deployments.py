"""What each deployment file asks a container to run: command, environment, health checks, mounts.

Both orchestrators are read from what their real tools produce: compose from `docker-compose
config --format json` (anchors merged, variables interpolated), Kubernetes from `kubectl
kustomize` output. What a container inherits from its image (ENV, CMD, HEALTHCHECK) comes from
the Dockerfile target it is built from, as a container engine would combine them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tests.deploy.dockerfile import Dockerfile

__all__ = [
    "POD_IP",
    "ContainerSpec",
    "Probe",
    "compose_containers",
    "image_container",
    "kubernetes_containers",
    "parse_quantity",
    "target_of_image",
]

# status.podIP in the tests: a name under the reserved .invalid TLD, so a value the tests forgot
# to rewrite fails to resolve instead of reaching some address on a real network.
POD_IP = "pod-ip.invalid"

_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_QUANTITY_UNITS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}
_K8S_REFERENCE = re.compile(r"\$\((\w+)\)")


@dataclass(frozen=True)
class Probe:
    """A health check the way the orchestrator runs it: a command in the container, or a gRPC
    health / HTTP GET probe from outside on a container port."""

    kind: str  # "exec" | "grpc" | "http"
    argv: tuple[str, ...] = ()
    port: int = 0
    path: str = ""


@dataclass(frozen=True)
class ContainerSpec:
    source: str
    target: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    # Variables the file sets on the container itself (not inherited from the image).
    declared: frozenset[str]
    # Kubernetes: variables set only to be referenced as $(NAME) by other variables.
    helpers: frozenset[str]
    probes: tuple[Probe, ...]
    mounts: tuple[str, ...]
    ports: tuple[int, ...]
    one_shot: bool


def parse_quantity(text: str) -> int:
    """A Kubernetes resource quantity in bytes ("8Gi" -> 8589934592)."""
    match = _QUANTITY.match(text.strip())
    if not match:
        raise ValueError(f"unsupported quantity {text!r}")
    return int(float(match.group(1)) * _QUANTITY_UNITS[match.group(2)])


def target_of_image(image: str) -> str:
    """`model-runner/worker:dev-cuda` -> `worker`: images are named after their Dockerfile target."""
    name = image.rsplit("/", 1)[-1]
    return name.split(":", 1)[0].split("@", 1)[0]


def _exec_test(test: list[str]) -> tuple[str, ...]:
    if test[0] == "CMD":
        return tuple(test[1:])
    if test[0] == "CMD-SHELL":
        return ("/bin/sh", "-c", test[1])
    raise ValueError(f"unsupported healthcheck test {test}")


def compose_containers(config: Mapping[str, Any], dockerfile: Dockerfile) -> list[ContainerSpec]:
    """Every service built from this project's Dockerfile (third-party images are left out)."""
    specs: list[ContainerSpec] = []
    for name, service in sorted(config["services"].items()):
        build = service.get("build") or {}
        if "target" not in build:
            continue
        image = dockerfile.target(build["target"], build.get("args") or {})
        declared = {key: value for key, value in (service.get("environment") or {}).items()}
        unset = sorted(key for key, value in declared.items() if value is None)
        if unset:
            raise AssertionError(f"compose service {name}: variables without a value: {unset}")
        env = {**image.env, **declared}
        healthcheck = service.get("healthcheck") or {}
        if healthcheck.get("disable"):
            probes: tuple[Probe, ...] = ()
        elif "test" in healthcheck:
            probes = (Probe("exec", _exec_test(healthcheck["test"])),)
        elif image.healthcheck:
            probes = (Probe("exec", image.healthcheck),)
        else:
            probes = ()
        specs.append(
            ContainerSpec(
                source=f"compose service {name}",
                target=build["target"],
                argv=tuple(service.get("command") or image.cmd),
                env=env,
                declared=frozenset(declared),
                helpers=frozenset(),
                probes=probes,
                mounts=tuple(volume["target"] for volume in service.get("volumes") or ()),
                ports=tuple(image.exposed),
                one_shot=str(service.get("restart", "no")).startswith("on-failure"),
            )
        )
    return specs


def _pod_templates(docs: Iterable[Mapping[str, Any]]) -> Iterable[tuple[str, Mapping[str, Any]]]:
    for doc in docs:
        kind = doc.get("kind")
        if kind in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            yield f"{kind}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def _container_env(
    container: Mapping[str, Any], config_maps: Mapping[str, Mapping[str, str]], where: str
) -> tuple[dict[str, str], frozenset[str]]:
    """The environment as the kubelet builds it: envFrom first, then env in order, with
    $(VAR) references to variables defined before them expanded; and the referenced names."""
    env: dict[str, str] = {}
    referenced: set[str] = set()
    for source in container.get("envFrom") or ():
        if "configMapRef" not in source:
            raise AssertionError(f"{where}: unsupported envFrom {source}")
        env.update(config_maps[source["configMapRef"]["name"]])
    limits = (container.get("resources") or {}).get("limits") or {}
    for item in container.get("env") or ():
        name = item["name"]
        if "value" in item:
            referenced.update(
                found for found in _K8S_REFERENCE.findall(item["value"]) if found in env
            )
            env[name] = _K8S_REFERENCE.sub(lambda m: env.get(m.group(1), m.group(0)), item["value"])
            continue
        source = item.get("valueFrom") or {}
        if source.get("fieldRef", {}).get("fieldPath") == "status.podIP":
            env[name] = POD_IP
        elif "resourceFieldRef" in source:
            resource = source["resourceFieldRef"]["resource"]
            if not resource.startswith("limits.") or resource[7:] not in limits:
                raise AssertionError(f"{where}: {name} refers to {resource}, which is not set")
            env[name] = str(parse_quantity(str(limits[resource[7:]])))
        else:
            raise AssertionError(f"{where}: unsupported valueFrom for {name}: {source}")
    return env, frozenset(referenced)


def _k8s_probe(probe: Mapping[str, Any], ports: Mapping[str, int]) -> Probe:
    if "grpc" in probe:
        return Probe("grpc", port=int(probe["grpc"]["port"]))
    if "httpGet" in probe:
        port = probe["httpGet"]["port"]
        return Probe(
            "http",
            port=ports[port] if isinstance(port, str) else int(port),
            path=probe["httpGet"].get("path", "/"),
        )
    if "exec" in probe:
        return Probe("exec", tuple(probe["exec"]["command"]))
    raise AssertionError(f"unsupported probe {probe}")


def kubernetes_containers(
    docs: Sequence[Mapping[str, Any]], dockerfile: Dockerfile, label: str
) -> list[ContainerSpec]:
    config_maps = {
        doc["metadata"]["name"]: doc.get("data") or {} for doc in docs if doc["kind"] == "ConfigMap"
    }
    specs: list[ContainerSpec] = []
    for owner, pod in _pod_templates(docs):
        for container in pod["containers"]:
            where = f"{label} {owner} container {container['name']}"
            target = target_of_image(container["image"])
            image = dockerfile.target(target)
            declared, helpers = _container_env(container, config_maps, where)
            ports = {p["name"]: int(p["containerPort"]) for p in container.get("ports") or ()}
            probes = tuple(
                _k8s_probe(container[kind], ports)
                for kind in ("startupProbe", "readinessProbe", "livenessProbe")
                if kind in container
            )
            argv = tuple(container.get("command") or ()) + tuple(container.get("args") or ())
            specs.append(
                ContainerSpec(
                    source=where,
                    target=target,
                    argv=argv or image.cmd,
                    env={**image.env, **declared},
                    declared=frozenset(declared),
                    helpers=helpers,
                    probes=probes,
                    mounts=tuple(m["mountPath"] for m in container.get("volumeMounts") or ()),
                    ports=tuple(ports.values()),
                    one_shot=owner.startswith("Job/"),
                )
            )
    return specs


def image_container(dockerfile: Dockerfile, target: str) -> ContainerSpec:
    """`docker run <image>` with nothing added: the target's own ENV, CMD and HEALTHCHECK."""
    image = dockerfile.target(target)
    return ContainerSpec(
        source=f"Dockerfile target {target}",
        target=target,
        argv=image.cmd,
        env=dict(image.env),
        declared=frozenset(image.env),
        helpers=frozenset(),
        probes=(Probe("exec", image.healthcheck),) if image.healthcheck else (),
        mounts=(),
        ports=image.exposed,
        one_shot=False,
    )
