"""The highest constant arrival rate a server sustains with p95 latency under a target.

The search is pure (it calls a `measure(rate)` it is given), so its logic is unit-tested on a
synthetic latency curve; the benchmark passes a function that runs an open-loop load for a few
seconds. Latency must be measured from each request's *scheduled* start (see
`httpload.run_open_loop`), otherwise an overloaded server hides its queueing and every rate passes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RateProbe:
    """One open-loop run: the offered rate and what came back."""

    rate: float
    p95_ms: float
    achieved_rps: float
    failures: int  # transport errors and non-200 answers

    def meets(self, slo_p95_ms: float, min_delivery: float) -> bool:
        """p95 within the target, nothing failed, and the server kept up with the offered rate."""
        return (
            self.failures == 0 and self.p95_ms <= slo_p95_ms and self.achieved_rps >= min_delivery * self.rate
        )


@dataclass(frozen=True, slots=True)
class SloSearch:
    slo_p95_ms: float
    max_rate: float | None  # highest passing rate measured; None if even the lowest probe failed
    probes: tuple[RateProbe, ...]
    passed: tuple[bool, ...]


def find_max_rate(
    measure: Callable[[float], RateProbe],
    *,
    slo_p95_ms: float,
    start_rate: float,
    max_probes: int = 8,
    tolerance: float = 0.05,
    min_delivery: float = 0.95,
    growth: float = 1.5,
) -> SloSearch:
    """Bracket, then bisect.

    Starting at `start_rate` (a guess, e.g. 80 % of the closed-loop throughput), the rate grows by
    `growth` while probes pass and shrinks by it while they fail, until one passing and one failing
    rate bracket the answer; then the bracket is halved until its width is within `tolerance` of
    the passing rate or `max_probes` runs were spent. Bounded time: at most `max_probes` runs.
    """
    if start_rate <= 0 or max_probes < 1 or growth <= 1 or not 0 < tolerance < 1:
        raise ValueError("need start_rate > 0, max_probes >= 1, growth > 1 and 0 < tolerance < 1")
    probes: list[RateProbe] = []
    verdicts: list[bool] = []
    best_pass: float | None = None
    lowest_fail: float | None = None

    def run(rate: float) -> bool:
        nonlocal best_pass, lowest_fail
        probe = measure(rate)
        ok = probe.meets(slo_p95_ms, min_delivery)
        probes.append(probe)
        verdicts.append(ok)
        if ok:
            best_pass = rate if best_pass is None else max(best_pass, rate)
        else:
            lowest_fail = rate if lowest_fail is None else min(lowest_fail, rate)
        return ok

    rate = start_rate
    while len(probes) < max_probes:
        if best_pass is not None and lowest_fail is not None:
            if lowest_fail - best_pass <= tolerance * best_pass:
                break
            rate = (best_pass + lowest_fail) / 2.0
        elif probes:
            rate = rate * growth if best_pass is not None else rate / growth
        run(rate)
    return SloSearch(slo_p95_ms, best_pass, tuple(probes), tuple(verdicts))
