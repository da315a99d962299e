"""Metric names out of PromQL, and series names out of a Prometheus text exposition.

Queries are parsed with a real PromQL parser (promql-parser, the Rust one behind GreptimeDB), not with
regular expressions: function names, label names and `by (...)` clauses are not metrics.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import promql_parser
from prometheus_client.parser import text_string_to_metric_families

# Grafana and prometheus-adapter placeholders, replaced by something the parser (and Prometheus) accepts.
_SUBSTITUTIONS = (
    (re.compile(r"\$__rate_interval|\$__interval|\$__range"), "1m"),
    (re.compile(r"\$\{?model(?::\w+)?\}?"), ".*"),
    (re.compile(r"<<\.Series>>"), "__SERIES__"),
    (re.compile(r"<<\.LabelMatchers>>"), 'namespace="serving"'),
    (re.compile(r"<<\.GroupBy>>"), "pod"),
)

# Suffixes Prometheus adds to a family's name in the exposition, per metric type.
_TYPE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def substitute(query: str, series: str | None = None) -> str:
    """Concrete PromQL for a dashboard or adapter template (`series` fills the adapter's <<.Series>>)."""
    for pattern, replacement in _SUBSTITUTIONS:
        query = pattern.sub(replacement, query)
    if series is not None:
        query = query.replace("__SERIES__", series)
    return query


def metric_names(query: str) -> set[str]:
    """Every metric a query selects (`name{...}` or `{__name__="name"}`)."""
    names: set[str] = set()

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            for matcher in node.matchers.matchers:
                if matcher.name == "__name__":
                    names.add(matcher.value)
        return True

    promql_parser.walk(promql_parser.parse(substitute(query)), visit)
    return names


def exported_series(exposition: str) -> set[str]:
    """Series names a scrape of this text yields: family names with their type's suffixes.

    Families are listed by their `# TYPE` line even before their first observation (a labelled
    histogram has no samples until it has children), so the check does not depend on traffic.
    """
    series: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        series.update(family.name + suffix for suffix in _TYPE_SUFFIXES[family.type])
        series.update(sample.name for sample in family.samples)
    return series


def all_metric_names(queries: Iterable[str]) -> set[str]:
    names: set[str] = set()
    for query in queries:
        names |= metric_names(query)
    return names
