"""The dashboard and the autoscalers refer only to metrics the running service exports."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.deploy.conftest import Manifests
from tests.deploy.live_service import LiveService
from tests.deploy.promql import exported_series, metric_names
from tests.deploy.queries import adapter_queries, adapter_rules, all_queries, hpa_metric_names

Render = Callable[..., Manifests]


@pytest.fixture(scope="module")
def exported(live_service: LiveService) -> set[str]:
    response = httpx.get(f"{live_service.url}/metrics", timeout=5)
    assert response.status_code == 200
    return exported_series(response.text)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (
            "histogram_quantile(0.99, sum by (le, model) "
            '(rate(x_seconds_bucket{model=~"$model"}[$__rate_interval])))',
            {"x_seconds_bucket"},
        ),
        ("sum(rate(a_total[1m])) / on () group_left sum(b) + c offset 5m", {"a_total", "b", "c"}),
        ('count({__name__="named_by_matcher", job="x"})', {"named_by_matcher"}),
        ("sum(avg_over_time(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)", {"__SERIES__"}),
        ("sum by (model) (rate(histogram_quantile_total[1m]))", {"histogram_quantile_total"}),
    ],
)
def test_metric_names_come_from_the_promql_syntax_tree(query: str, expected: set[str]) -> None:
    # Function names, label names and grouping clauses are not metrics; a selector is, wherever it sits.
    assert metric_names(query) == expected


def test_exported_series_cover_type_suffixes() -> None:
    text = (
        "# HELP h_seconds x\n# TYPE h_seconds histogram\n"
        "# HELP c x\n# TYPE c counter\n"
        "# HELP g x\n# TYPE g gauge\ng 1.0\n"
    )
    assert exported_series(text) >= {"h_seconds_bucket", "h_seconds_sum", "h_seconds_count", "c_total", "g"}
    assert "h_seconds" not in exported_series(text)  # a histogram's bare name is not a series


def test_every_queried_metric_is_exported(render: Render, exported: set[str]) -> None:
    queries = all_queries(render)
    assert len(queries) >= 20
    missing = {
        f"{query.origin}: {name}"
        for query in queries
        for name in metric_names(query.promql)
        if name not in exported
    }
    assert not missing, "queries refer to series the service does not export:\n" + "\n".join(sorted(missing))


def test_dashboard_covers_every_stage_and_signal(exported: set[str]) -> None:
    from tests.deploy.queries import dashboard_queries

    used = set().union(*(metric_names(q.promql) for q in dashboard_queries()))
    for series in (
        "bertserve_requests_total",
        "bertserve_request_duration_seconds_bucket",
        "bertserve_tokenize_duration_seconds_bucket",
        "bertserve_queue_duration_seconds_bucket",
        "bertserve_inference_duration_seconds_bucket",
        "bertserve_batch_size_sum",
        "bertserve_batch_tokens_sum",
        "bertserve_real_tokens_total",
        "bertserve_padded_tokens_total",
        "bertserve_queue_depth",
        "bertserve_inflight_requests",
        "bertserve_rejected_total",
    ):
        assert series in used, f"the dashboard shows no {series}"
        assert series in exported


def test_hpa_metric_is_served_by_an_adapter_rule_on_an_exported_series(
    render: Render, exported: set[str]
) -> None:
    provided = {rule["name"]["as"]: rule for rule in adapter_rules()}
    for name in hpa_metric_names(render):
        assert name in provided, f"HPA metric {name} has no prometheus-adapter rule"
        rule = provided[name]
        (series,) = metric_names(rule["seriesQuery"])
        assert series in exported
        # Per-pod: the adapter must be able to map the series to pods.
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert adapter_queries()
