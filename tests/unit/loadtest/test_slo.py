"""The SLO rate search on a synthetic server: p95 grows without bound as the rate nears capacity."""

from __future__ import annotations

import pytest

from loadtest.slo import RateProbe, find_max_rate


def queueing_server(capacity: float, base_ms: float = 10.0):  # type: ignore[no-untyped-def]
    """M/M/1-like p95: base / (1 - rho); past capacity the server only delivers `capacity`."""
    calls: list[float] = []

    def measure(rate: float) -> RateProbe:
        calls.append(rate)
        rho = rate / capacity
        p95 = base_ms / (1.0 - rho) if rho < 1 else 10_000.0
        return RateProbe(rate, p95, min(rate, capacity), 0)

    return measure, calls


@pytest.mark.parametrize("start", [50.0, 400.0, 900.0])
def test_finds_the_rate_where_p95_reaches_the_slo_from_any_start(start: float) -> None:
    measure, calls = queueing_server(capacity=500.0)
    # p95 = 10 / (1 - r/500) <= 100 ms  <=>  r <= 450
    search = find_max_rate(measure, slo_p95_ms=100.0, start_rate=start, max_probes=20, tolerance=0.02)
    assert search.max_rate is not None
    assert 450.0 * 0.97 <= search.max_rate <= 450.0
    assert len(calls) == len(search.probes) <= 20
    # every reported pass really met the target, every fail really missed it
    for probe, ok in zip(search.probes, search.passed, strict=True):
        assert ok == (probe.p95_ms <= 100.0)


def test_probe_budget_bounds_the_run() -> None:
    measure, calls = queueing_server(capacity=500.0)
    search = find_max_rate(measure, slo_p95_ms=100.0, start_rate=100.0, max_probes=3)
    assert len(calls) == 3
    assert search.max_rate == pytest.approx(225.0)  # 100 -> 150 -> 225, all passing


def test_failures_or_a_server_that_falls_behind_do_not_pass() -> None:
    assert not RateProbe(100.0, 5.0, 100.0, failures=1).meets(100.0, 0.95)
    assert not RateProbe(100.0, 5.0, 80.0, failures=0).meets(100.0, 0.95)
    assert RateProbe(100.0, 5.0, 99.0, failures=0).meets(100.0, 0.95)


def test_no_passing_rate_is_reported_as_none() -> None:
    measure, _ = queueing_server(capacity=500.0, base_ms=500.0)  # even an idle server misses 100 ms
    search = find_max_rate(measure, slo_p95_ms=100.0, start_rate=100.0, max_probes=4)
    assert search.max_rate is None
    assert not any(search.passed)


def test_rejects_a_meaningless_configuration() -> None:
    measure, _ = queueing_server(capacity=500.0)
    with pytest.raises(ValueError):
        find_max_rate(measure, slo_p95_ms=100.0, start_rate=0.0)
