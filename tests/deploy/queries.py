"""Every PromQL query the deployment relies on: the Grafana dashboard, the prometheus-adapter rules behind
the HPA, and the KEDA trigger, each with where it comes from (for readable failures)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from tests.deploy.conftest import DEPLOY, Manifests, only
from tests.deploy.promql import metric_names, substitute

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "bertserve.json"
ADAPTER_VALUES = DEPLOY / "helm" / "prometheus-adapter-values.yaml"
_LABEL_VALUES = re.compile(r"^label_values\(\s*(?P<selector>.+?)\s*,\s*(?P<label>\w+)\s*\)$")


@dataclass(frozen=True)
class Query:
    origin: str
    promql: str  # concrete PromQL, placeholders substituted


def dashboard_queries() -> list[Query]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries: list[Query] = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            origin = f"dashboard panel {panel['title']!r} target {target['refId']}"
            queries.append(Query(origin, substitute(target["expr"])))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = _LABEL_VALUES.match(variable["query"]["query"])
        assert match, f"dashboard variable {variable['name']}: only label_values(selector, label) is used"
        queries.append(Query(f"dashboard variable ${variable['name']}", substitute(match["selector"])))
    return queries


def adapter_rules() -> list[dict[str, Any]]:
    values: dict[str, Any] = yaml.safe_load(ADAPTER_VALUES.read_text(encoding="utf-8"))
    rules: list[dict[str, Any]] = values["rules"]["custom"]
    return rules


def adapter_queries() -> list[Query]:
    queries = []
    for rule in adapter_rules():
        origin = f"prometheus-adapter rule {rule['name']['as']!r}"
        (series,) = metric_names(rule["seriesQuery"])
        queries.append(Query(f"{origin} seriesQuery", rule["seriesQuery"]))
        queries.append(Query(f"{origin} metricsQuery", substitute(rule["metricsQuery"], series=series)))
    return queries


def hpa_metric_names(render: Callable[..., Manifests]) -> set[str]:
    hpa = only(render("autoscaling"), "HorizontalPodAutoscaler")
    return {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}


def keda_queries(render: Callable[..., Manifests]) -> list[Query]:
    scaled = only(render("keda"), "ScaledObject")
    return [
        Query(f"KEDA ScaledObject trigger {i}", t["metadata"]["query"])
        for i, t in enumerate(scaled["spec"]["triggers"])
        if t["type"] == "prometheus"
    ]


def all_queries(render: Callable[..., Manifests]) -> list[Query]:
    return dashboard_queries() + adapter_queries() + keda_queries(render)
