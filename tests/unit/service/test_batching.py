"""The batcher's guarantees, with the deterministic fake backend."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest

from bertserve.runtime.budget import DeviceSlots
from bertserve.runtime.collation import ModelInput
from bertserve.runtime.fake import FakeBackend, fake_logits
from bertserve.runtime.shapes import ShapePlan
from bertserve.service.batching import BatchLimits, DynamicBatcher, plan_batch
from bertserve.service.errors import (
    DeadlineExceededError,
    InferenceError,
    NotReadyError,
    QueueFullError,
)
from bertserve.service.metrics import Metrics

NUM_LABELS = 3
Factory = Callable[..., DynamicBatcher]


def seq(length: int, start: int = 5, type_ids: bool = False) -> ModelInput:
    ids = np.arange(start, start + length, dtype=np.int64)
    types = (np.arange(length) >= length // 2).astype(np.int64) if type_ids else None
    return ModelInput(ids, types)


def expected_row(x: ModelInput, token_level: bool = False) -> np.ndarray:
    """What the fake model gives this sequence alone, unpadded."""
    mask = np.ones((1, x.length), dtype=np.int64)
    types = None if x.type_ids is None else x.type_ids[None]
    return fake_logits(x.ids[None], mask, types, NUM_LABELS, token_level)[0]


@pytest.fixture
async def make_batcher() -> AsyncIterator[Factory]:
    made: list[tuple[DynamicBatcher, FakeBackend]] = []

    def make(
        *,
        max_batch_size: int = 32,
        max_batch_tokens: int = 8192,
        delay_s: float = 0.05,
        queue: int = 1024,
        token_level: bool = False,
        unhealthy_after: int = 3,
        metrics: Metrics | None = None,
        padding: ShapePlan | None = None,
    ) -> DynamicBatcher:
        backend = FakeBackend(NUM_LABELS, token_level=token_level)
        batcher = DynamicBatcher(
            "m",
            backend,
            BatchLimits(max_batch_size, max_batch_tokens, delay_s, queue, padding=padding),
            pad_token_id=0,
            metrics=metrics or Metrics(process=False),
            unhealthy_after_failures=unhealthy_after,
        )
        batcher.start(asyncio.get_running_loop())
        made.append((batcher, backend))
        return batcher

    yield make
    for batcher, backend in made:
        if backend.faults.hang is not None:
            backend.faults.hang.set()
        await batcher.stop(timeout_s=5)


def backend_of(batcher: DynamicBatcher) -> FakeBackend:
    backend = batcher._backend
    assert isinstance(backend, FakeBackend)
    return backend


async def submit_announced(batcher: DynamicBatcher, inputs: list[ModelInput]) -> list[np.ndarray]:
    return await batcher.submit(inputs, announced=True)


async def hold_backend(batcher: DynamicBatcher) -> tuple[asyncio.Task[list[np.ndarray]], threading.Event]:
    """Occupy the worker with a one-sequence batch that blocks until the returned event is set."""
    backend = backend_of(batcher)
    release = threading.Event()
    backend.faults.hang = release
    blocker = asyncio.create_task(batcher.submit([seq(3)]))
    assert await asyncio.to_thread(backend.started.wait, 5)
    return blocker, release


# --- plan_batch ---------------------------------------------------------------------------------


def test_plan_batch_takes_the_neighbours_that_add_least_padding() -> None:
    assert plan_batch([1, 2, 10, 11, 12], anchor=3, max_size=3, max_tokens=10_000) == (2, 5)
    assert plan_batch([1, 2, 10, 11, 12], anchor=0, max_size=2, max_tokens=10_000) == (0, 2)


def test_plan_batch_anchor_over_budget_runs_alone() -> None:
    assert plan_batch([100, 200], anchor=1, max_size=8, max_tokens=50) == (1, 2)


def test_plan_batch_respects_every_budget_on_random_queues() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        lengths = sorted(rng.integers(1, 64, size=int(rng.integers(1, 40))).tolist())
        anchor = int(rng.integers(0, len(lengths)))
        max_size, max_tokens = int(rng.integers(1, 16)), int(rng.integers(16, 600))
        efficiency = float(rng.choice([0.0, 0.5, 0.85]))
        lo, hi = plan_batch(lengths, anchor, max_size, max_tokens, efficiency)
        assert lo <= anchor < hi
        assert hi - lo <= max_size
        if hi - lo > 1:
            padded = (hi - lo) * lengths[hi - 1]
            assert padded <= max_tokens
            assert sum(lengths[lo:hi]) >= efficiency * padded


def test_plan_batch_efficiency_floor_leaves_outliers_for_the_next_batch() -> None:
    lengths = [10, 11, 12, 40]
    assert plan_batch(lengths, anchor=0, max_size=8, max_tokens=10_000) == (0, 4)
    assert plan_batch(lengths, anchor=0, max_size=8, max_tokens=10_000, min_efficiency=0.85) == (0, 3)


# --- DynamicBatcher -----------------------------------------------------------------------------


async def test_concurrent_requests_share_a_batch(make_batcher: Factory) -> None:
    batcher = make_batcher(max_batch_size=8, delay_s=1.0)
    for _ in range(8):
        batcher.announce()
    await asyncio.gather(*(submit_announced(batcher, [seq(4, start=i)]) for i in range(8)))
    # Full at 8 sequences: closed without waiting the (long) delay.
    assert list(backend_of(batcher).batch_shapes) == [(8, 4)]


async def test_batch_waits_at_most_the_delay_for_announced_requests(make_batcher: Factory) -> None:
    batcher = make_batcher(delay_s=0.1)
    batcher.announce()
    batcher.announce()  # a second request is "still tokenizing" and never arrives
    start = time.monotonic()
    await submit_announced(batcher, [seq(4)])
    waited = time.monotonic() - start
    assert 0.1 <= waited < 0.5
    batcher.withdraw()


async def test_request_arriving_within_the_delay_joins_the_batch(make_batcher: Factory) -> None:
    batcher = make_batcher(delay_s=0.5)
    batcher.announce()
    batcher.announce()
    first = asyncio.create_task(submit_announced(batcher, [seq(4)]))
    await asyncio.sleep(0.02)
    await asyncio.gather(first, submit_announced(batcher, [seq(4, start=9)]))
    assert list(backend_of(batcher).batch_shapes) == [(2, 4)]


async def test_lone_request_does_not_wait_for_company(make_batcher: Factory) -> None:
    batcher = make_batcher(delay_s=5.0)
    start = time.monotonic()
    await batcher.submit([seq(4)])
    assert time.monotonic() - start < 1.0


async def test_max_batch_size_holds(make_batcher: Factory) -> None:
    batcher = make_batcher(max_batch_size=4, delay_s=0.2)
    for _ in range(10):
        batcher.announce()
    await asyncio.gather(*(submit_announced(batcher, [seq(5, start=i)]) for i in range(10)))
    sizes = [b for b, _ in backend_of(batcher).batch_shapes]
    assert sum(sizes) == 10
    assert max(sizes) == 4


async def test_token_budget_holds(make_batcher: Factory) -> None:
    batcher = make_batcher(max_batch_tokens=48, delay_s=0.2)
    rng = np.random.default_rng(1)
    lengths = rng.integers(3, 16, size=20).tolist()
    for _ in lengths:
        batcher.announce()
    await asyncio.gather(*(submit_announced(batcher, [seq(n)]) for n in lengths))
    shapes = backend_of(batcher).batch_shapes
    assert sum(b for b, _ in shapes) == 20
    assert all(b * n <= 48 for b, n in shapes)
    assert any(b > 1 for b, _ in shapes)


async def test_queued_sequences_are_batched_by_length(make_batcher: Factory) -> None:
    batcher = make_batcher(max_batch_size=2, delay_s=0.0)
    blocker, release = await hold_backend(batcher)
    # Queue [5, 30, 6, 31] while the worker is busy; FIFO cutting would pad 5->30 and 6->31.
    pending = asyncio.gather(*(batcher.submit([seq(n)]) for n in (5, 30, 6, 31)))
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.gather(blocker, pending)
    assert list(backend_of(batcher).batch_shapes)[1:] == [(2, 6), (2, 31)]


async def test_no_mixups_under_random_concurrent_load(make_batcher: Factory) -> None:
    batcher = make_batcher(max_batch_size=8, max_batch_tokens=200, delay_s=0.002)
    rng = np.random.default_rng(42)

    def random_input() -> ModelInput:
        n = int(rng.integers(2, 40))
        ids = rng.integers(5, 30_000, size=n).astype(np.int64)
        return ModelInput(ids, rng.integers(0, 2, size=n).astype(np.int64) if rng.random() < 0.5 else None)

    requests = [[random_input() for _ in range(int(rng.integers(1, 5)))] for _ in range(120)]
    for _ in requests:
        batcher.announce()
    results = await asyncio.gather(*(submit_announced(batcher, r) for r in requests))
    for inputs, rows in zip(requests, results, strict=True):
        assert len(rows) == len(inputs)
        for x, row in zip(inputs, rows, strict=True):
            np.testing.assert_allclose(row, expected_row(x), rtol=1e-6)
    assert max(b for b, _ in backend_of(batcher).batch_shapes) > 1


async def test_token_level_rows_are_cut_to_each_sequence(make_batcher: Factory) -> None:
    batcher = make_batcher(token_level=True)
    batcher.announce()
    batcher.announce()
    inputs = [seq(3), seq(7, start=40)]
    rows = await asyncio.gather(*(submit_announced(batcher, [x]) for x in inputs))
    for x, (row,) in zip(inputs, rows, strict=True):
        assert row.shape == (x.length, NUM_LABELS)
        np.testing.assert_allclose(row, expected_row(x, token_level=True), rtol=1e-6)


async def test_tensorrt_batches_are_padded_to_their_bucket_and_fit_its_profile(make_batcher: Factory) -> None:
    """With a shape plan (TensorRT) every batch runs at a bucket length and never outgrows the
    bucket's batch: the budget is applied to the padded length. Answers are those of each
    sequence alone: padding is masked, and token rows are cut back to each sequence."""
    plan = ShapePlan.for_batching(max_batch_size=8, max_batch_tokens=128, max_length=64, lengths=(8, 16, 32))
    batcher = make_batcher(
        max_batch_size=8, max_batch_tokens=128, delay_s=0.2, token_level=True, padding=plan
    )
    rng = np.random.default_rng(3)
    inputs = [seq(int(n), start=int(i) * 3) for i, n in enumerate(rng.integers(1, 64, size=40))]
    for _ in inputs:
        batcher.announce()
    rows = await asyncio.gather(*(submit_announced(batcher, [x]) for x in inputs))
    for x, (row,) in zip(inputs, rows, strict=True):
        np.testing.assert_allclose(row, expected_row(x, token_level=True), rtol=1e-6)
    by_length = {b.length: b for b in plan.buckets}
    shapes = backend_of(batcher).batch_shapes
    assert sum(b for b, _ in shapes) == 40
    assert all(n in by_length and b <= by_length[n].max_batch for b, n in shapes), shapes


async def test_without_a_shape_plan_batches_pad_to_their_longest(make_batcher: Factory) -> None:
    batcher = make_batcher(max_batch_size=4, delay_s=0.2)
    for _ in range(4):
        batcher.announce()
    await asyncio.gather(*(submit_announced(batcher, [seq(n)]) for n in (3, 5, 9, 11)))
    assert list(backend_of(batcher).batch_shapes) == [(4, 11)]


async def test_batch_error_reaches_every_waiter_then_recovers(make_batcher: Factory) -> None:
    batcher = make_batcher(delay_s=0.5)
    backend_of(batcher).faults.fail_batches = 1
    for _ in range(5):
        batcher.announce()
    outcomes = await asyncio.gather(
        *(submit_announced(batcher, [seq(4, start=i)]) for i in range(5)), return_exceptions=True
    )
    assert len(backend_of(batcher).batch_shapes) == 1
    assert all(isinstance(o, InferenceError) for o in outcomes)
    (row,) = await batcher.submit([seq(4)])
    np.testing.assert_allclose(row, expected_row(seq(4)), rtol=1e-6)


async def test_cancelled_request_is_dropped_before_inference(make_batcher: Factory) -> None:
    batcher = make_batcher(delay_s=0.0)
    blocker, release = await hold_backend(batcher)
    gone = asyncio.create_task(batcher.submit([seq(9), seq(10)]))
    await asyncio.sleep(0.01)
    gone.cancel()
    await asyncio.sleep(0.01)
    release.set()
    await blocker
    await batcher.submit([seq(4)])
    assert list(backend_of(batcher).batch_shapes) == [(1, 3), (1, 4)]


async def test_queue_full_is_rejected_immediately(make_batcher: Factory) -> None:
    metrics = Metrics(process=False)
    batcher = make_batcher(queue=4, delay_s=0.0, metrics=metrics)
    blocker, release = await hold_backend(batcher)
    queued = asyncio.gather(*(batcher.submit([seq(4)]) for _ in range(2)), batcher.submit([seq(4), seq(5)]))
    await asyncio.sleep(0.01)
    assert batcher.queue_depth == 4
    start = time.monotonic()
    with pytest.raises(QueueFullError) as info:
        await batcher.submit([seq(4)])
    with pytest.raises(QueueFullError):
        batcher.announce()  # refused before any tokenization is spent
    assert time.monotonic() - start < 0.05
    assert info.value.headers()["Retry-After"] == "1"
    assert (
        metrics.registry.get_sample_value("bertserve_rejected_total", {"model": "m", "reason": "queue_full"})
        == 2
    )
    release.set()
    await asyncio.gather(blocker, queued)


async def test_deadline_answers_and_drops_the_request(make_batcher: Factory) -> None:
    batcher = make_batcher(delay_s=0.0)
    blocker, release = await hold_backend(batcher)
    with pytest.raises(DeadlineExceededError):
        await batcher.submit([seq(8)], timeout_s=0.05)
    release.set()
    await blocker
    await batcher.submit([seq(4)])
    assert (1, 8) not in backend_of(batcher).batch_shapes


async def test_health_turns_bad_after_consecutive_failures_and_recovers(make_batcher: Factory) -> None:
    batcher = make_batcher(unhealthy_after=2)
    backend_of(batcher).faults.fail_always = True
    for _ in range(2):
        with pytest.raises(InferenceError):
            await batcher.submit([seq(4)])
    assert not batcher.healthy
    assert batcher.health_problem == "2 consecutive batches failed"
    backend_of(batcher).faults.fail_always = False
    await batcher.submit([seq(4)])
    assert batcher.healthy


async def test_stop_finishes_queued_work_then_refuses(make_batcher: Factory) -> None:
    batcher = make_batcher(delay_s=0.0)
    blocker, release = await hold_backend(batcher)
    queued = asyncio.create_task(batcher.submit([seq(6)]))
    await asyncio.sleep(0.01)
    stopping = asyncio.create_task(batcher.stop(timeout_s=5))
    await asyncio.sleep(0.01)
    release.set()
    await stopping
    (row,) = await queued
    np.testing.assert_allclose(row, expected_row(seq(6)), rtol=1e-6)
    await blocker
    with pytest.raises(NotReadyError):
        await batcher.submit([seq(4)])


async def test_batches_are_measured(make_batcher: Factory) -> None:
    metrics = Metrics(process=False)
    batcher = make_batcher(metrics=metrics, delay_s=0.2)
    batcher.announce()
    batcher.announce()
    await asyncio.gather(submit_announced(batcher, [seq(3)]), submit_announced(batcher, [seq(5)]))
    sample = metrics.registry.get_sample_value
    assert sample("bertserve_batch_size_sum", {"model": "m"}) == 2
    assert sample("bertserve_batch_tokens_sum", {"model": "m"}) == 10
    assert sample("bertserve_real_tokens_total", {"model": "m"}) == 8
    assert sample("bertserve_padded_tokens_total", {"model": "m"}) == 10
    assert sample("bertserve_queue_duration_seconds_count", {"model": "m"}) == 2
    assert sample("bertserve_inference_duration_seconds_count", {"model": "m", "backend": "fake"}) == 1


# --- compute slots shared across models -----------------------------------------------------


async def test_models_sharing_one_slot_run_their_batches_one_at_a_time() -> None:
    metrics = Metrics(process=False)
    slots = DeviceSlots(1)
    gate = threading.Event()
    first, second = FakeBackend(NUM_LABELS), FakeBackend(NUM_LABELS)
    first.faults.hang = gate
    loop = asyncio.get_running_loop()
    batchers = [
        DynamicBatcher(name, backend, BatchLimits(32, 8192, 0.0, 64), 0, metrics, slots=slots)
        for name, backend in (("a", first), ("b", second))
    ]
    for batcher in batchers:
        batcher.start(loop)
    try:
        running = asyncio.ensure_future(batchers[0].submit([seq(3)]))
        await asyncio.to_thread(first.started.wait, 5)
        waiting = asyncio.ensure_future(batchers[1].submit([seq(4)]))
        await asyncio.sleep(0.1)
        assert not second.started.is_set(), "model b ran while model a held the only slot"
        gate.set()
        _, (row_b,) = await asyncio.wait_for(asyncio.gather(running, waiting), 5)
        np.testing.assert_allclose(row_b, expected_row(seq(4)))
        sample = metrics.registry.get_sample_value
        assert sample("bertserve_compute_wait_seconds_count", {"model": "b"}) == 1
        assert (sample("bertserve_compute_wait_seconds_sum", {"model": "b"}) or 0) >= 0.05
        # The backend time excludes the wait for the slot.
        assert (
            sample("bertserve_inference_duration_seconds_sum", {"model": "b", "backend": "fake"}) or 1
        ) < 0.05
        assert slots.in_use == 0
    finally:
        gate.set()
        for batcher in batchers:
            await batcher.stop(timeout_s=5)


async def test_without_slots_no_wait_is_observed(make_batcher: Factory) -> None:
    metrics = Metrics(process=False)
    batcher = make_batcher(metrics=metrics, delay_s=0.0)
    await batcher.submit([seq(3)])
    assert metrics.registry.get_sample_value("bertserve_compute_wait_seconds_count", {"model": "m"}) == 0


# --- several instances of one model -------------------------------------------------------------


async def test_a_second_instance_runs_a_batch_while_the_first_is_busy() -> None:
    """Two sessions of one model cut from one queue: while instance 0 is stuck in a batch,
    instance 1 answers the next request; results stay exact and every instance is closed by
    its owner (the batcher lists them all)."""
    first, second = FakeBackend(NUM_LABELS), FakeBackend(NUM_LABELS)
    gate = threading.Event()
    first.faults.hang = gate
    batcher = DynamicBatcher(
        "m", first, BatchLimits(32, 8192, 0.0, 64), 0, Metrics(process=False), instances=[second]
    )
    assert batcher.backends == (first, second)
    batcher.start(asyncio.get_running_loop())
    try:
        held = asyncio.ensure_future(batcher.submit([seq(3)]))
        assert await asyncio.to_thread(first.started.wait, 5)
        (row,) = await asyncio.wait_for(batcher.submit([seq(6)]), 5)
        np.testing.assert_allclose(row, expected_row(seq(6)))
        assert second.started.is_set() and not held.done()
        gate.set()
        (held_row,) = await asyncio.wait_for(held, 5)
        np.testing.assert_allclose(held_row, expected_row(seq(3)))
    finally:
        gate.set()
        await batcher.stop(timeout_s=5)
    assert not any(t.is_alive() for t in batcher._threads)


async def test_instances_keep_every_result_in_order_under_random_load() -> None:
    rng = np.random.default_rng(1)
    backends = [FakeBackend(NUM_LABELS) for _ in range(3)]
    batcher = DynamicBatcher(
        "m", backends[0], BatchLimits(4, 8192, 0.001, 1024), 0, Metrics(process=False), instances=backends[1:]
    )
    batcher.start(asyncio.get_running_loop())
    try:
        requests = [
            [
                seq(int(n), start=int(s))
                for n, s in zip(rng.integers(1, 20, k), rng.integers(1, 50, k), strict=True)
            ]
            for k in rng.integers(1, 6, 60)
        ]
        answers = await asyncio.wait_for(asyncio.gather(*(batcher.submit(r) for r in requests)), 10)
        for inputs, rows in zip(requests, answers, strict=True):
            for x, row in zip(inputs, rows, strict=True):
                np.testing.assert_allclose(row, expected_row(x), rtol=1e-6)
        # every sequence ran exactly once, on one instance or another
        assert sum(b.sequences_run for b in backends) == sum(len(r) for r in requests)
    finally:
        await batcher.stop(timeout_s=5)


async def test_a_stalled_instance_is_reported_while_another_is_free() -> None:
    first, second = FakeBackend(NUM_LABELS), FakeBackend(NUM_LABELS)
    gate = threading.Event()
    first.faults.hang = gate
    batcher = DynamicBatcher(
        "m",
        first,
        BatchLimits(32, 8192, 0.0, 64),
        0,
        Metrics(process=False),
        stalled_after_s=0.05,
        instances=[second],
    )
    batcher.start(asyncio.get_running_loop())
    try:
        held = asyncio.ensure_future(batcher.submit([seq(3)]))
        assert await asyncio.to_thread(first.started.wait, 5)
        await asyncio.sleep(0.1)
        assert batcher.health_problem is not None and "running for" in batcher.health_problem
        with pytest.raises(NotReadyError):
            await batcher.submit([seq(4)])
        gate.set()
        await asyncio.wait_for(held, 5)
        assert batcher.healthy
    finally:
        gate.set()
        await batcher.stop(timeout_s=5)


# --- the adaptive layout: one wide session, single-thread ones under load -------------------------


class Occupancy:
    """Which of a batcher's sessions run at the same time (recorded from their infer calls)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: set[str] = set()
        self.seen: list[frozenset[str]] = []  # the set of running sessions at every start

    def wrap(self, backend: FakeBackend, name: str) -> FakeBackend:
        inner = backend.infer

        def infer(feeds: object) -> np.ndarray:
            with self.lock:
                self.running.add(name)
                self.seen.append(frozenset(self.running))
            try:
                return inner(feeds)  # type: ignore[arg-type]
            finally:
                with self.lock:
                    self.running.discard(name)

        backend.infer = infer  # type: ignore[method-assign]
        return backend


def adaptive_batcher(
    occupancy: Occupancy, delay_s: float = 0.0, max_batch_size: int = 32
) -> tuple[DynamicBatcher, FakeBackend, list[FakeBackend]]:
    wide = occupancy.wrap(FakeBackend(NUM_LABELS), "wide")
    narrow = [occupancy.wrap(FakeBackend(NUM_LABELS), f"narrow{k}") for k in range(2)]
    for b in (wide, *narrow):
        b.faults.delay_s = delay_s
    batcher = DynamicBatcher(
        "m", wide, BatchLimits(max_batch_size, 8192, 0.0, 1024), 0, Metrics(process=False), narrow=narrow
    )
    return batcher, wide, narrow


async def test_adaptive_runs_lone_requests_on_the_wide_session() -> None:
    occupancy = Occupancy()
    batcher, wide, narrow = adaptive_batcher(occupancy)
    assert batcher.backends == (wide, *narrow)
    batcher.start(asyncio.get_running_loop())
    try:
        for n in (3, 7, 12):  # one at a time: each waits alone
            (row,) = await asyncio.wait_for(batcher.submit([seq(n)]), 5)
            np.testing.assert_allclose(row, expected_row(seq(n)))
    finally:
        await batcher.stop(timeout_s=5)
    assert wide.sequences_run == 3 and all(b.sequences_run == 0 for b in narrow)


class CountingCondition(threading.Condition):
    """A condition that counts the waits it ends by a notification (not by a timeout)."""

    def __init__(self, lock: threading.Lock) -> None:
        super().__init__(lock)
        self.woken = 0

    def wait(self, timeout: float | None = None) -> bool:
        notified = super().wait(timeout)
        self.woken += notified
        return notified


async def test_adaptive_wakes_only_the_wide_worker_for_a_lone_request() -> None:
    """A lone request with nothing running is the wide session's: the narrow workers are not
    woken for it (each futile wake-up costs a thread switch and the GIL on the request's path)."""
    occupancy = Occupancy()
    batcher, wide, narrow = adaptive_batcher(occupancy)
    lock = threading.Lock()
    batcher._cond, batcher._wide_cond = CountingCondition(lock), CountingCondition(lock)
    batcher.start(asyncio.get_running_loop())
    try:
        await asyncio.sleep(0.05)  # every worker waits
        for n in (3, 7, 12):
            await asyncio.wait_for(batcher.submit([seq(n)]), 5)
        narrow_woken = batcher._cond.woken
        # at least the first request woke the (waiting) wide worker; later ones may find it awake
        assert batcher._wide_cond.woken >= 1
    finally:
        await batcher.stop(timeout_s=5)
    assert narrow_woken == 0
    assert wide.sequences_run == 3 and all(b.sequences_run == 0 for b in narrow)


async def test_adaptive_shares_queued_work_between_the_narrow_sessions_never_beside_the_wide() -> None:
    """Requests that queue together run on the single-thread sessions, both at once, and the
    wide session (all the threads) never runs beside one of them; every result stays exact."""
    occupancy = Occupancy()
    batcher, wide, narrow = adaptive_batcher(occupancy, delay_s=0.003, max_batch_size=4)
    batcher.start(asyncio.get_running_loop())
    rng = np.random.default_rng(7)
    try:
        for _ in range(3):  # bursts, with a lone request between them
            requests = [
                [seq(int(n), start=int(s))]
                for n, s in zip(rng.integers(1, 30, 40), rng.integers(1, 50, 40), strict=True)
            ]
            answers = await asyncio.wait_for(asyncio.gather(*(batcher.submit(r) for r in requests)), 10)
            for inputs, rows in zip(requests, answers, strict=True):
                np.testing.assert_allclose(rows[0], expected_row(inputs[0]), rtol=1e-6)
            await asyncio.wait_for(batcher.submit([seq(5)]), 5)
    finally:
        await batcher.stop(timeout_s=5)
    assert all(not ("wide" in s and len(s) > 1) for s in occupancy.seen), "wide ran beside a narrow one"
    assert frozenset({"narrow0", "narrow1"}) in occupancy.seen  # the narrow ones ran side by side
    assert sum(b.sequences_run for b in (wide, *narrow)) == 3 * 40 + 3
    assert all(b.sequences_run > 0 for b in narrow)


async def test_adaptive_waits_for_the_wide_batch_before_the_narrow_ones_start() -> None:
    occupancy = Occupancy()
    batcher, wide, narrow = adaptive_batcher(occupancy)
    gate = threading.Event()
    wide.faults.hang = gate
    batcher.start(asyncio.get_running_loop())
    try:
        lone = asyncio.ensure_future(batcher.submit([seq(4)]))
        assert await asyncio.to_thread(wide.started.wait, 5)
        queued = [asyncio.ensure_future(batcher.submit([seq(n)])) for n in (3, 6, 9)]
        await asyncio.sleep(0.05)
        assert not any(q.done() for q in queued)  # the cores are the wide session's
        assert all(b.sequences_run == 0 for b in narrow)
        gate.set()
        await asyncio.wait_for(asyncio.gather(lone, *queued), 5)
    finally:
        gate.set()
        await batcher.stop(timeout_s=5)
    # the three that queued together went to the narrow sessions (at least the first cut's two:
    # a last one left alone once they are done is a lone sequence again, the wide session's)
    assert wide.sequences_run + sum(b.sequences_run for b in narrow) == 4
    assert sum(b.sequences_run for b in narrow) >= 2
    assert all(not ("wide" in s and len(s) > 1) for s in occupancy.seen)


def test_the_adaptive_layout_takes_no_other_instances() -> None:
    one, two, three = FakeBackend(NUM_LABELS), FakeBackend(NUM_LABELS), FakeBackend(NUM_LABELS)
    with pytest.raises(ValueError, match="narrow"):
        DynamicBatcher(
            "m",
            one,
            BatchLimits(4, 8192, 0.0, 64),
            0,
            Metrics(process=False),
            instances=[two],
            narrow=[three],
        )
