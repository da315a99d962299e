"""The soak's verdict: PASS only when every check holds, and each check can fail on its own."""

from __future__ import annotations

from dataclasses import replace

import pytest

from loadtest.httpload import LoadResult
from loadtest.soak import MAX_RSS_GROWTH, Sample, count_failures, rss_growth, verdict, warmup_s

WARMUP = 300.0


def run(rss: list[float], *, fds: int = 20, threads: int = 30, p99: float = 20.0) -> list[Sample]:
    """One sample every 30 s, as `make soak` takes them."""
    return [Sample(30.0 * (i + 1), mb, threads, fds, p99) for i, mb in enumerate(rss)]


def flat(n: int = 60, level: float = 420.0) -> list[float]:
    return [level + (i % 3) * 0.5 for i in range(n)]


def failed(samples: list[Sample], failures: int = 0) -> set[str]:
    ok, checks = verdict(samples, failures, WARMUP)
    names = {c.name.split(" (")[0] for c in checks if not c.ok}
    assert ok == (not names)
    return names


def test_a_flat_run_passes() -> None:
    assert failed(run(flat())) == set()


def test_growth_during_warm_up_is_allowed() -> None:
    rss = [300.0 + 10 * i for i in range(10)] + flat(50, 400.0)  # settles by 300 s
    assert failed(run(rss)) == set()


def test_a_step_after_warm_up_over_the_limit_fails() -> None:
    rss = flat(30) + [v + 0.11 * 420 for v in flat(30)]  # +11 % half-way
    assert "RSS growth after warm-up" in failed(run(rss))
    baseline, peak, growth = rss_growth(run(rss), WARMUP)
    assert peak > baseline
    assert baseline == pytest.approx(420.0, abs=1) and growth > MAX_RSS_GROWTH


def test_a_slow_leak_fails_on_the_slope_even_under_ten_percent() -> None:
    rss = [420.0 + 0.25 * i for i in range(60)]  # 30 MB/h, +3.5 % over the run
    assert failed(run(rss)) == {"RSS slope"}


def test_a_single_5xx_fails() -> None:
    assert failed(run(flat()), failures=1) == {"transport errors and 5xx"}
    result = LoadResult(codes={200: 10, 429: 3, 500: 1, 503: 2}, errors=1)
    assert count_failures(result) == 4  # 429 is load shedding, not a failure


def test_fd_thread_and_latency_drift_fail() -> None:
    samples = run(flat())
    leaking_fds = [replace(s, fds=s.fds + max(0, i - 30)) for i, s in enumerate(samples)]
    assert failed(leaking_fds) == {"fd range"}
    more_threads = [replace(s, threads=s.threads + (5 if i > 40 else 0)) for i, s in enumerate(samples)]
    assert failed(more_threads) == {"thread range"}
    slower = [replace(s, server_p99_ms=40.0 if i >= 30 else 20.0) for i, s in enumerate(samples)]
    assert failed(slower) == {"server p99, last quarter vs first"}


def test_no_samples_is_not_a_pass() -> None:
    assert verdict([], 0, WARMUP)[0] is False


def test_warm_up_is_a_sixth_of_the_run_at_most_five_minutes() -> None:
    assert warmup_s(30) == 300
    assert warmup_s(6) == 60
