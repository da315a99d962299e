"""The raw ceiling (`loadtest.bench.RawBench.measure`): timed over whole passes of the sentences,
after one untimed pass that runs every shape once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from bertserve.modelrepo import load_model_config
from bertserve.runtime.fake import FakeBackend
from loadtest.bench import RawBench
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
