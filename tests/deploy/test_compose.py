"""deploy/compose.yaml parsed and checked: hardening, loopback ports, health checks, the gpu profile."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY

COMPOSE_FILE = DEPLOY / "compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def test_stack_has_the_service_prometheus_and_grafana(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {"bertserve", "bertserve-gpu", "prometheus", "grafana"}
    assert "profiles" not in services["bertserve"]  # the CPU service is in the default stack
    assert services["bertserve"]["build"]["target"] == "cpu"


def test_gpu_service_is_behind_the_gpu_profile(services: dict[str, dict[str, Any]]) -> None:
    gpu = services["bertserve-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["target"] == "gpu"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    cache = gpu["environment"]["BERTSERVE_TENSORRT_CACHE_DIR"]
    assert any(volume.endswith(f":{cache}") for volume in gpu["volumes"])


@pytest.mark.parametrize("name", ["bertserve", "bertserve-gpu", "prometheus", "grafana"])
def test_every_container_is_hardened(services: dict[str, dict[str, Any]], name: str) -> None:
    service = services[name]
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    uid = str(service["user"]).split(":", 1)[0]
    assert uid.isdigit() and int(uid) != 0, f"{name} must run as a non-root numeric uid"
    assert "privileged" not in service and "cap_add" not in service


@pytest.mark.parametrize("name", ["bertserve", "bertserve-gpu", "prometheus", "grafana"])
def test_ports_are_published_on_loopback_only(services: dict[str, dict[str, Any]], name: str) -> None:
    ports = services[name]["ports"]
    assert ports
    for port in ports:
        assert isinstance(port, str) and re.fullmatch(r"127\.0\.0\.1:\d+:\d+", port), port


@pytest.mark.parametrize("name", ["bertserve", "bertserve-gpu", "prometheus", "grafana"])
def test_every_service_has_a_healthcheck(services: dict[str, dict[str, Any]], name: str) -> None:
    check = services[name]["healthcheck"]
    assert check["test"][0] == "CMD"
    assert check["interval"] and check["timeout"] and check["start_period"]


@pytest.mark.parametrize("name", ["bertserve", "bertserve-gpu"])
def test_bertserve_listens_beyond_loopback_inside_and_drains(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    service = services[name]
    env = service["environment"]
    assert env["BERTSERVE_HOST"] == "0.0.0.0"
    assert env["BERTSERVE_PORT"] == "8000"
    assert service["healthcheck"]["test"] == ["CMD", "python", "/usr/local/lib/bertserve/healthcheck.py"]
    # Docker sends SIGKILL after stop_grace_period: it must outlast the service's drain (20 s default).
    assert int(service["stop_grace_period"].rstrip("s")) > 20
    # An empty API key must not be injected: the variable passes through from the shell only when set.
    assert env["BERTSERVE_API_KEY"] is None
    assert any(entry.startswith("/tmp") for entry in service["tmpfs"])


def test_prometheus_and_grafana_use_the_shipped_configuration(services: dict[str, dict[str, Any]]) -> None:
    prometheus_mounts = services["prometheus"]["volumes"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus_mounts
    grafana_mounts = services["grafana"]["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana_mounts
    assert "./grafana/dashboards:/etc/grafana/dashboards:ro" in grafana_mounts
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/bertserve.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    (source,) = datasource["datasources"]
    assert source["url"] == "http://prometheus:9090" and source["uid"] == "prometheus"
    # Relative paths in compose resolve against deploy/: the mounted files must exist there.
    for mount in prometheus_mounts + grafana_mounts:
        host = mount.split(":", 1)[0]
        if host.startswith("./"):
            assert (DEPLOY / host).exists(), host


def test_prometheus_scrapes_both_bertserve_services() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text(encoding="utf-8"))
    job = next(job for job in config["scrape_configs"] if job["job_name"] == "bertserve")
    (sd,) = job["dns_sd_configs"]
    assert set(sd["names"]) == {"bertserve", "bertserve-gpu"}
    assert sd["port"] == 8000
    assert job["metrics_path"] == "/metrics"


def test_named_volumes_are_declared(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    declared = set(compose["volumes"])
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in declared, source


def test_stand_in_override_swaps_image_names_only(services: dict[str, dict[str, Any]]) -> None:
    # make image-check runs deploy/compose.yaml as users do: its override may rename images, nothing else.
    override = yaml.safe_load((DEPLOY / "images" / "compose.stand-ins.yaml").read_text(encoding="utf-8"))
    assert set(override) == {"services"}
    for name, service in override["services"].items():
        assert name in services, name
        assert set(service) == {"image"}, name
        assert service["image"] != services[name]["image"], name
