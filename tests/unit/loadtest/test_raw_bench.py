"""The raw ceiling (`loadtest.bench.RawBench.measure`): timed over whole passes of the sentences,
after one untimed pass that runs every shape once; and the raw backend on the service's own batch
plans (`plan_windows`, `RawBench.measure_plan`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from bertserve.modelrepo import load_model_config
from bertserve.runtime.collation import ModelInput
from bertserve.runtime.fake import FakeBackend
from loadtest.bench import PlanLimits, RawBench, plan_windows
from tests.helpers.fake_repo import write_fake_repo

SENTENCES = [" ".join(["word"] * n) for n in (9, 1, 5, 3, 7, 2, 8, 4, 6, 10, 11)]


class CountingBackend(FakeBackend):
    """Counts how often each batch (by its first row's ids) runs."""

    def __init__(self) -> None:
        super().__init__(num_labels=2)
        self.runs: Counter[tuple[int, ...]] = Counter()

    def infer(self, feeds):  # type: ignore[no-untyped-def]
        self.runs[tuple(int(x) for x in feeds["input_ids"][0])] += 1
        return super().infer(feeds)


def raw_bench(tmp_path: Path) -> tuple[RawBench, CountingBackend]:
    repo = write_fake_repo(tmp_path)
    backend = CountingBackend()
    config = load_model_config(repo, "cls")
    return RawBench(backend, config, repo / "cls" / "1" / "tokenizer.json", SENTENCES), backend


def test_every_batch_counts_equally_often(tmp_path: Path) -> None:
    bench, backend = raw_bench(tmp_path)
    ordered = bench.sorted_by_length()
    point = ordered.measure(2, seconds=0.0)
    # 11 sentences in batches of 2: 5 batches (the odd one out is left), each run once to warm
    # and once timed; a window would have stopped anywhere in the pass.
    assert len(backend.runs) == 5
    assert set(backend.runs.values()) == {2}
    assert point.sorted_by_length and point.batch_size == 2
    backend.runs.clear()
    ordered.measure(2, seconds=0.0)  # warmed already: one timed pass only
    assert set(backend.runs.values()) == {1} and len(backend.runs) == 5


def test_a_longer_budget_runs_more_whole_passes(tmp_path: Path) -> None:
    bench, backend = raw_bench(tmp_path)
    bench.measure(4, seconds=0.0)
    backend.runs.clear()
    bench.measure(4, seconds=0.05)
    counts = set(backend.runs.values())
    assert len(counts) == 1 and counts.pop() >= 1  # every batch equally often
    assert len(backend.runs) == 2  # 11 // 4 batches


def test_another_order_is_warmed_on_its_own(tmp_path: Path) -> None:
    bench, backend = raw_bench(tmp_path)
    bench.measure(2, seconds=0.0)
    backend.runs.clear()
    bench.sorted_by_length().measure(2, seconds=0.0)  # its batches have other shapes: warm pass
    assert set(backend.runs.values()) == {2}


# --- the raw backend on the service's own batch plans (`plan_windows`, `measure_plan`) ---------


def inputs_of(lengths: list[int]) -> list[ModelInput]:
    return [ModelInput(np.arange(1, n + 1, dtype=np.int64), None) for n in lengths]


def test_plans_cut_each_window_as_the_batcher_does() -> None:
    """Within a window: sorted by length, each batch grown around the oldest item left, under the
    size, token and padding-efficiency limits; no input is lost or repeated, none crosses into
    another window, and the tail that fills no window is left out (as `measure` leaves one)."""
    lengths = [10, 3, 10, 9, 3, 4, 30, 11, 2]
    xs = inputs_of(lengths)
    plans = plan_windows(
        xs, 4, PlanLimits(max_batch_size=8, max_batch_tokens=10_000, min_padding_efficiency=0.9)
    )
    # window 1 = [10, 3, 10, 9]: the oldest (10) takes the other 10 and 9 (29 real of 30 padded)
    # but not 3 (32 of 40); then 3 alone. Window 2 = [3, 4, 30, 11], oldest first: 3 with 4 would
    # be 7 real of 8 padded (0.875 < 0.9), so 3 alone; then 4, 30 and 11 each alone.
    assert [[x.length for x in b] for b in plans] == [[9, 10, 10], [3], [3], [4], [30], [11]]
    used = [id(x) for b in plans for x in b]
    assert sorted(used) == sorted(id(x) for x in xs[:8]) and len(used) == len(set(used))


def test_plans_keep_the_size_and_token_limits() -> None:
    xs = inputs_of([5] * 12)
    by_size = plan_windows(
        xs, 12, PlanLimits(max_batch_size=4, max_batch_tokens=10_000, min_padding_efficiency=0.0)
    )
    assert [len(b) for b in by_size] == [4, 4, 4]
    by_tokens = plan_windows(
        xs, 12, PlanLimits(max_batch_size=64, max_batch_tokens=15, min_padding_efficiency=0.0)
    )
    assert [len(b) for b in by_tokens] == [3, 3, 3, 3]  # 3 x 5 padded tokens each
    whole = plan_windows(
        xs, 6, PlanLimits(max_batch_size=64, max_batch_tokens=10_000, min_padding_efficiency=0.0)
    )
    assert [len(b) for b in whole] == [6, 6]  # a batch never spans two windows


def test_measure_plan_runs_the_planned_batches_with_their_mean_size(tmp_path: Path) -> None:
    bench, backend = raw_bench(tmp_path)
    limits = PlanLimits(max_batch_size=3, max_batch_tokens=10_000, min_padding_efficiency=0.0)
    point = bench.measure_plan(6, limits, seconds=0.0)
    # 11 sentences: one window of 6 (the tail of 5 fills none), cut into 2 batches of 3
    assert len(backend.runs) == 2 and set(backend.runs.values()) == {2}  # warm pass + timed pass
    assert point.batch_size == 3 and not point.sorted_by_length
    assert 0 < point.real_token_ratio <= 1
    backend.runs.clear()
    bench.measure_plan(6, limits, seconds=0.0)  # warmed already
    assert set(backend.runs.values()) == {1}
