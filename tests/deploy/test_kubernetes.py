"""deploy/kubernetes: rendered by `kubectl kustomize` (base, GPU overlay, optional components),
validated against the Kubernetes OpenAPI schemas (kubernetes-validate, strict), then the
properties the cluster relies on: probes on the health services, named ports the Services and a
ServiceMonitor select, addresses that reach a Service listening there, pod IPs advertised by
the workers, GPU scheduling, the queue-depth HPA, and unprivileged pods."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.conftest import Docs, container, find
from tests.deploy.deployments import target_of_image
from tests.deploy.dockerfile import Dockerfile

# Native gRPC probes are GA since 1.27: the oldest version the manifests must be valid for.
KUBERNETES_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
# Kinds from CRDs the schemas do not cover; checked below by what they refer to.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
}
QUEUE_DEPTH_METRIC = "modelrunner_scheduler_queue_depth"
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


def _pods(docs: Docs) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(doc, doc["spec"]["template"]) for doc in docs if doc["kind"] in WORKLOADS]


def test_every_kustomization_renders(rendered: dict[str, Docs]) -> None:
    for name, docs in rendered.items():
        kinds = {doc["kind"] for doc in docs}
        assert {"Deployment", "Service", "PersistentVolumeClaim", "Job"} <= kinds, name


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(rendered: dict[str, Docs], version: str) -> None:
    checked = 0
    for name, docs in rendered.items():
        for doc in docs:
            if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name} {doc['kind']}/{doc['metadata']['name']}: {exc.message}")
            checked += 1
    assert checked >= 20


def test_strict_validation_rejects_unknown_fields(rendered: dict[str, Docs]) -> None:
    """The schema check is real: a misspelled probe field fails it."""
    worker = copy.deepcopy(find(rendered["base"], "Deployment", "worker"))
    probe = worker["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["periodSecond"] = probe.pop("periodSeconds")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, KUBERNETES_VERSIONS[-1], strict=True)


def test_images_are_dockerfile_targets_run_as_built(
    rendered: dict[str, Docs], dockerfile: Dockerfile
) -> None:
    for name, docs in rendered.items():
        for doc, pod in _pods(docs):
            for item in pod["spec"]["containers"]:
                target = target_of_image(item["image"])
                image = dockerfile.target(target)
                assert tuple(item["command"]) == image.cmd, f"{name} {doc['metadata']['name']}"
                ports = {p["containerPort"] for p in item.get("ports") or ()}
                assert ports == set(image.exposed), f"{name} {doc['metadata']['name']}"


def test_services_are_probed_on_their_health_endpoints(rendered: dict[str, Docs]) -> None:
    for name, docs in rendered.items():
        for doc, pod in _pods(docs):
            if doc["kind"] == "Job":
                continue
            for item in pod["spec"]["containers"]:
                ports = {p["name"]: p["containerPort"] for p in item["ports"]}
                for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                    probe = item[kind]
                    if "grpc" in ports:
                        # The standard grpc.health.v1 service every gRPC service serves.
                        assert probe["grpc"]["port"] == ports["grpc"], f"{name} {kind}"
                        listen = next(
                            e["value"] for e in item["env"] if e["name"].endswith("_LISTEN_ADDRESS")
                        )
                        assert listen == f"0.0.0.0:{ports['grpc']}"
                    else:
                        assert probe["httpGet"] == {"path": "/", "port": "http"}, f"{name} {kind}"


def test_services_select_one_workload_on_named_ports(rendered: dict[str, Docs]) -> None:
    for name, docs in rendered.items():
        pods = _pods(docs)
        for service in (doc for doc in docs if doc["kind"] == "Service"):
            selector = service["spec"]["selector"]
            matches = [
                pod for _, pod in pods if selector.items() <= pod["metadata"]["labels"].items()
            ]
            assert len(matches) == 1, f"{name} Service/{service['metadata']['name']}"
            named = {p["name"] for c in matches[0]["spec"]["containers"] for p in c["ports"]}
            for port in service["spec"]["ports"]:
                # Named ports are what ServiceMonitors and targetPorts refer to.
                assert port["name"] in named and port["targetPort"] == port["name"], port


def test_addresses_reach_a_service_listening_there(rendered: dict[str, Docs]) -> None:
    for name, docs in rendered.items():
        services = {
            doc["metadata"]["name"]: {p["port"] for p in doc["spec"]["ports"]}
            for doc in docs
            if doc["kind"] == "Service"
        }
        for _, pod in _pods(docs):
            for item in pod["spec"]["containers"]:
                for variable in item.get("env") or ():
                    value = variable.get("value", "")
                    if variable["name"] in {"REGISTRY_ADDRESS", "SCHEDULER_ADDRESS"}:
                        host, _, port = value.rpartition(":")
                    elif variable["name"] == "MODEL_RUNNER_HOST":
                        host, _, port = value.removeprefix("http://").rpartition(":")
                    else:
                        continue
                    assert int(port) in services.get(host, set()), f"{name}: {value}"


def test_workers_advertise_their_pod_ip(rendered: dict[str, Docs]) -> None:
    for name, docs in rendered.items():
        worker = container(docs, "Deployment", "worker", "worker")
        env = [e["name"] for e in worker["env"]]
        by_name = {e["name"]: e for e in worker["env"]}
        assert by_name["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        port = by_name["WORKER_LISTEN_ADDRESS"]["value"].rpartition(":")[2]
        assert by_name["WORKER_ADVERTISE_ADDRESS"]["value"] == f"$(POD_IP):{port}"
        # Kubernetes expands $(POD_IP) only from variables defined earlier in the list.
        assert env.index("POD_IP") < env.index("WORKER_ADVERTISE_ADDRESS"), name


def test_cpu_workers_report_their_memory_limit(rendered: dict[str, Docs]) -> None:
    worker = container(rendered["base"], "Deployment", "worker", "worker")
    memory = next(e for e in worker["env"] if e["name"] == "WORKER_MEMORY_BYTES")
    assert memory["valueFrom"]["resourceFieldRef"] == {
        "containerName": "worker",
        "resource": "limits.memory",
    }
    assert worker["resources"]["limits"]["memory"]


def test_gpu_overlay(rendered: dict[str, Docs]) -> None:
    for name in ("overlays/gpu", "overlays/gpu+components"):
        deployment = find(rendered[name], "Deployment", "worker")
        pod = deployment["spec"]["template"]["spec"]
        worker = container(rendered[name], "Deployment", "worker", "worker")
        assert worker["image"].endswith("-cuda")
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        env = {e["name"]: e for e in worker["env"]}
        assert "gpu=" in env["WORKER_TAGS"]["value"]
        assert "valueFrom" not in env["WORKER_MEMORY_BYTES"]
        # Only the worker changes.
        for other in ("registry", "scheduler", "gateway"):
            assert find(rendered[name], "Deployment", other) == find(
                rendered["base"], "Deployment", other
            )
    base = container(rendered["base"], "Deployment", "worker", "worker")
    assert "nvidia.com/gpu" not in base["resources"]["limits"]


def test_hpa_scales_workers_on_queue_depth(rendered: dict[str, Docs]) -> None:
    docs = rendered["overlays/gpu+components"]
    hpa = find(docs, "HorizontalPodAutoscaler", "worker")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "worker",
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == QUEUE_DEPTH_METRIC
    assert hpa["spec"]["minReplicas"] >= 1
    # The HPA owns the count: the Deployment's would reset it on every apply.
    assert "replicas" not in find(docs, "Deployment", "worker")["spec"]
    assert "replicas" in find(rendered["base"], "Deployment", "worker")["spec"]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels and In expressions, what the monitors use) against labels."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", ()):
        assert expression["operator"] == "In", expression
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def test_monitors_select_every_metrics_port(rendered: dict[str, Docs]) -> None:
    """The ServiceMonitors reach the gateway's /metrics and the registry's and scheduler's metrics
    ports; the PodMonitor reaches every worker pod's, each by a port name that exists there."""
    docs = rendered["overlays/gpu+components"]
    scraped: set[str] = set()
    for monitor in (doc for doc in docs if doc["kind"] == "ServiceMonitor"):
        assert (
            monitor["metadata"]["namespace"]
            == find(docs, "Service", "gateway")["metadata"]["namespace"]
        )
        selected = [
            doc
            for doc in docs
            if doc["kind"] == "Service"
            and _selects(monitor["spec"]["selector"], doc["metadata"]["labels"])
        ]
        assert selected, monitor["metadata"]["name"]
        for service in selected:
            ports = {p["name"] for p in service["spec"]["ports"]}
            for endpoint in monitor["spec"]["endpoints"]:
                assert endpoint["port"] in ports, (monitor["metadata"]["name"], service)
                assert endpoint["path"] == "/metrics"
            scraped.add(service["metadata"]["name"])
    (pod_monitor,) = [doc for doc in docs if doc["kind"] == "PodMonitor"]
    for workload, pod in _pods(docs):
        if not _selects(pod_monitor["spec"]["selector"], pod["metadata"]["labels"]):
            continue
        ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports") or ()}
        for endpoint in pod_monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint["port"] in ports, workload["metadata"]["name"]
        scraped.add(workload["metadata"]["name"])
    assert scraped == {"gateway", "registry", "scheduler", "worker"}


def test_everything_lands_in_one_namespace(rendered: dict[str, Docs]) -> None:
    """Components are added by the user's own kustomization, outside the base's namespace
    transformer: their resources must name the namespace themselves."""
    for name, docs in rendered.items():
        for doc in docs:
            if doc["kind"] != "Namespace":
                where = f"{name} {doc['kind']}/{doc['metadata']['name']}"
                assert doc["metadata"].get("namespace") == "model-runner", where


def test_pods_meet_the_restricted_pod_security_standard(rendered: dict[str, Docs]) -> None:
    for name, docs in rendered.items():
        namespace = find(docs, "Namespace", "model-runner")
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        for doc, pod in _pods(docs):
            where = f"{name} {doc['kind']}/{doc['metadata']['name']}"
            assert doc["metadata"]["namespace"] == "model-runner", where
            security = pod["spec"]["securityContext"]
            assert security["runAsNonRoot"] is True and security["runAsUser"] != 0, where
            assert security["seccompProfile"]["type"] == "RuntimeDefault", where
            for item in pod["spec"]["containers"]:
                context = item["securityContext"]
                assert context["allowPrivilegeEscalation"] is False, where
                assert context["capabilities"]["drop"] == ["ALL"], where
                assert context["readOnlyRootFilesystem"] is True, where
                for variable in item.get("env") or ():
                    if variable.get("value", "").startswith("/"):
                        # A path a service writes must be on a mounted volume.
                        assert any(
                            variable["value"].startswith(m["mountPath"])
                            for m in item.get("volumeMounts") or ()
                        ), f"{where}: {variable['name']}"


def test_stateful_services_keep_one_replica_on_a_volume(rendered: dict[str, Docs]) -> None:
    docs = rendered["base"]
    for name, variable in (("registry", "MODELS_PATH"), ("scheduler", "SCHEDULER_STATE_PATH")):
        deployment = find(docs, "Deployment", name)
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"]["type"] == "Recreate"
        item = container(docs, "Deployment", name, name)
        path = next(e["value"] for e in item["env"] if e["name"] == variable)
        mount = next(m for m in item["volumeMounts"] if path.startswith(m["mountPath"]))
        volume = next(
            v
            for v in deployment["spec"]["template"]["spec"]["volumes"]
            if v["name"] == mount["name"]
        )
        claim = volume["persistentVolumeClaim"]["claimName"]
        find(docs, "PersistentVolumeClaim", claim)
