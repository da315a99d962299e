"""The Helm chart, rendered with each shipped value set: probes, drain, hardening, scaling objects."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from bertserve.service.settings import Settings
from tests.deploy.conftest import CHART, VALUE_SETS, HelmError, Manifests, kinds, only

Render = Callable[..., Manifests]


def container(docs: Manifests) -> dict[str, Any]:
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    (main,) = [c for c in pod["containers"] if c["name"] == "bertserve"]
    assert isinstance(main, dict)
    return main


def config_data(docs: Manifests) -> dict[str, str]:
    data: dict[str, str] = only(docs, "ConfigMap")["data"]
    return data


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_probes_hit_the_health_endpoints(render: Render, value_set: str) -> None:
    main = container(render(value_set))
    assert main["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
    # Startup waits for readiness (model loaded and warmed up) so liveness cannot kill a slow warm-up.
    assert main["startupProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
    startup = main["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    assert main["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert config_data(render(value_set))["BERTSERVE_PORT"] == "8000"


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_grace_period_outlasts_prestop_and_drain(render: Render, value_set: str) -> None:
    docs = render(value_set)
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    sleep = container(docs)["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = int(config_data(docs)["BERTSERVE_DRAIN_TIMEOUT_S"])
    assert sleep >= 1
    assert pod["terminationGracePeriodSeconds"] > sleep + drain


def test_prestop_falls_back_to_exec_sleep_before_kubernetes_1_30(render: Render) -> None:
    pre_stop = container(render("default", kube_version="1.29.0"))["lifecycle"]["preStop"]
    assert pre_stop == {"exec": {"command": ["sleep", "5"]}}


def test_grace_period_shorter_than_drain_is_refused(render: Render) -> None:
    with pytest.raises(HelmError, match="terminationGracePeriodSeconds"):
        render("default", set_values=("lifecycle.terminationGracePeriodSeconds=20",))


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_pod_meets_the_restricted_pod_security_standard(render: Render, value_set: str) -> None:
    docs = render(value_set)
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert "hostNetwork" not in pod and "hostPID" not in pod
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["privileged"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
    # Read-only root: the only writable mounts are /tmp (and the TensorRT cache on GPU).
    mounts = {m["mountPath"]: m for m in container(docs)["volumeMounts"]}
    assert "/tmp" in mounts


@pytest.mark.parametrize(
    "override", ["securityContext.readOnlyRootFilesystem=false", "podSecurityContext.runAsNonRoot=false"]
)
def test_hardening_cannot_be_switched_off(render: Render, override: str) -> None:
    with pytest.raises(HelmError, match="schema"):
        render("default", set_values=(override,))


def test_config_map_carries_settings_and_container_listens_beyond_loopback(render: Render) -> None:
    docs = render("default")
    data = config_data(docs)
    assert data["BERTSERVE_HOST"] == "0.0.0.0"
    assert data["BERTSERVE_REPO"] == "/models"
    assert data["BERTSERVE_BACKEND"] == "auto"
    assert all(key.startswith("BERTSERVE_") for key in data)
    main = container(docs)
    assert main["envFrom"] == [{"configMapRef": {"name": "bertserve"}}]
    # A settings change must roll the pods: the ConfigMap's hash is in the pod template.
    annotations = only(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    changed = render("default", set_values=("settings.log_level=debug",))
    changed_annotations = only(changed, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/config"] != changed_annotations["checksum/config"]


def test_chart_settings_are_service_settings() -> None:
    """values.schema.json's `settings` keys are exactly the service's fields (minus chart-owned ones)."""
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    allowed = set(schema["properties"]["settings"]["properties"])
    # grpc_port: set from grpc.containerPort when grpc.enabled (the container port the Service targets)
    chart_owned = {"host", "port", "repo", "tensorrt_cache_dir", "api_key", "drain_timeout_s", "grpc_port"}
    fields = set(Settings.model_fields)
    assert allowed <= fields, f"chart allows settings the service lacks: {sorted(allowed - fields)}"
    missing = fields - allowed - chart_owned
    assert not missing, (
        f"service settings the chart cannot set (add to values.schema.json): {sorted(missing)}"
    )


@pytest.mark.parametrize("key", ["host", "bogus"])
def test_unknown_or_chart_owned_settings_are_refused(render: Render, key: str) -> None:
    with pytest.raises(HelmError, match=f"settings.*{key}|{key}.*not allowed"):
        render("default", set_values=(f"settings.{key}=x",))


def test_api_key_comes_from_a_secret_never_the_config_map(render: Render) -> None:
    docs = render("default", set_values=("apiKey.existingSecret=bertserve-auth",))
    env = container(docs)["env"]
    assert env == [
        {
            "name": "BERTSERVE_API_KEY",
            "valueFrom": {"secretKeyRef": {"name": "bertserve-auth", "key": "api-key"}},
        }
    ]
    assert "BERTSERVE_API_KEY" not in config_data(docs)


def test_default_serves_the_baked_repository_without_volumes(render: Render) -> None:
    docs = render("default")
    assert "PersistentVolumeClaim" not in kinds(docs)
    assert {m["mountPath"] for m in container(docs)["volumeMounts"]} == {"/tmp"}


def test_model_repository_from_a_pvc_is_mounted_read_only(render: Render) -> None:
    docs = render("default", set_values=("modelRepository.source=pvc",))
    claim = only(docs, "PersistentVolumeClaim")
    mount = next(m for m in container(docs)["volumeMounts"] if m["name"] == "models")
    assert mount == {"name": "models", "mountPath": "/models", "readOnly": True}
    volumes = only(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    models = next(v for v in volumes if v["name"] == "models")
    assert models["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    existing = render(
        "default", set_values=("modelRepository.source=pvc", "modelRepository.pvc.existingClaim=mine")
    )
    assert "PersistentVolumeClaim" not in kinds(existing)


def test_model_repository_from_an_init_container(render: Render) -> None:
    docs = render(
        "default",
        set_values=(
            "modelRepository.source=initContainer",
            "modelRepository.initContainer.image=registry.example/models:1",
            "modelRepository.initContainer.command={sh,-c,cp -r /repo/. $BERTSERVE_REPO/}",
        ),
    )
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["image"] == "registry.example/models:1"
    assert {"name": "BERTSERVE_REPO", "value": "/models"} in init["env"]
    assert any(m["name"] == "models" and m["mountPath"] == "/models" for m in init["volumeMounts"])
    assert next(v for v in pod["volumes"] if v["name"] == "models")["emptyDir"]
    with pytest.raises(HelmError, match=r"initContainer\.image"):
        render("default", set_values=("modelRepository.source=initContainer",))


def test_gpu_variant_requests_a_gpu_and_a_writable_engine_cache(render: Render) -> None:
    docs = render("gpu")
    main = container(docs)
    assert main["image"].endswith("-gpu")
    assert main["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert config_data(docs)["BERTSERVE_BACKEND"] == "tensorrt"
    cache = config_data(docs)["BERTSERVE_TENSORRT_CACHE_DIR"]
    assert any(m["mountPath"] == cache for m in main["volumeMounts"])
    assert "nvidia.com/gpu" not in container(render("default"))["resources"].get("limits", {})
    assert container(render("default"))["image"].endswith("-cpu")


def test_autoscaling_variant_scales_on_the_per_pod_queue_depth(render: Render) -> None:
    docs = render("autoscaling")
    hpa = only(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "bertserve",
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "bertserve_queue_depth"
    assert metric["pods"]["target"]["type"] == "AverageValue"
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60
    # The autoscaler owns the replica count.
    assert "replicas" not in only(docs, "Deployment")["spec"]
    assert only(docs, "ServiceMonitor")["spec"]["endpoints"][0]["path"] == "/metrics"
    assert "ScaledObject" not in kinds(docs)


def test_keda_variant_replaces_the_hpa(render: Render) -> None:
    docs = render("keda")
    assert "HorizontalPodAutoscaler" not in kinds(docs)
    scaled = only(docs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == "bertserve"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert 'namespace="serving"' in trigger["metadata"]["query"]
    assert float(trigger["metadata"]["threshold"]) > 0
    assert "replicas" not in only(docs, "Deployment")["spec"]
    with pytest.raises(HelmError, match="exclusive"):
        render("keda", set_values=("autoscaling.enabled=true",))


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_disruption_budget_and_network_policy(render: Render, value_set: str) -> None:
    docs = render(value_set)
    selector = only(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    pdb = only(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert pdb["spec"]["maxUnavailable"] == 1
    policy = only(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == selector
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert policy["spec"]["egress"] == []  # the server calls nothing
    service = only(docs, "Service")
    assert service["spec"]["selector"] == selector
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_rollout_never_drops_below_desired_capacity(render: Render) -> None:
    strategy = only(render("default"), "Deployment")["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}


def test_grpc_port_is_exposed_only_when_enabled(render: Render) -> None:
    assert "BERTSERVE_GRPC_PORT" not in config_data(render("default"))
    docs = render(
        "default", set_values=("grpc.enabled=true", "grpc.containerPort=9001", "grpc.servicePort=8001")
    )
    assert config_data(docs)["BERTSERVE_GRPC_PORT"] == "9001"
    ports = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
    assert ports == {"http": 8000, "grpc": 9001}
    service_ports = only(docs, "Service")["spec"]["ports"]
    assert {"name": "grpc", "port": 8001, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"} in (
        service_ports
    )
    (rule,) = only(docs, "NetworkPolicy")["spec"]["ingress"]
    assert {"port": "grpc", "protocol": "TCP"} in rule["ports"]
