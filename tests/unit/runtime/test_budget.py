"""The compute budget: threads split among models, and fair slots around backend calls."""

from __future__ import annotations

import threading
import time

import pytest

from bertserve.runtime.budget import DeviceSlots, split_threads, thread_shares


@pytest.mark.parametrize(
    ("cpus", "models", "expected"),
    [
        (16, 1, (16,)),
        (16, 2, (8, 8)),
        (16, 3, (6, 5, 5)),  # the remainder goes to the first ones: every CPU is used
        (2, 3, (1, 1, 1)),  # never below one thread: more models than CPUs share cores
        (1, 1, (1,)),
        (4, 0, ()),
    ],
)
def test_split_threads(cpus: int, models: int, expected: tuple[int, ...]) -> None:
    assert split_threads(cpus, models) == expected


def test_thread_shares_split_unless_the_operator_chose() -> None:
    assert thread_shares(["a", "b"], 8, None) == {"a": 4, "b": 4}
    assert thread_shares(["a", "b"], 8, 8) == {"a": 8, "b": 8}


def test_slots_refuse_zero() -> None:
    with pytest.raises(ValueError):
        DeviceSlots(0)


def test_slots_bound_concurrency() -> None:
    slots = DeviceSlots(2)
    running = peak = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal running, peak
        with slots.hold():
            with lock:
                running += 1
                peak = max(peak, running)
            time.sleep(0.01)
            with lock:
                running -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert peak == 2
    assert slots.in_use == 0


def test_a_released_slot_goes_to_the_longest_waiter_not_back_to_the_releaser() -> None:
    """A busy worker that releases and asks again at once queues behind the others."""
    slots = DeviceSlots(1)
    order: list[str] = []
    slots.acquire()  # "a" holds the slot
    waiting = threading.Event()

    def b() -> None:
        waiting.set()
        with slots.hold() as waited:
            order.append("b")
            assert waited > 0

    tb = threading.Thread(target=b)
    tb.start()
    waiting.wait(5)
    time.sleep(0.05)  # b is queued
    slots.release()
    with slots.hold():  # "a" again, immediately
        order.append("a")
    tb.join(5)
    assert order == ["b", "a"]


def test_releasing_more_than_acquired_is_a_bug() -> None:
    slots = DeviceSlots(1)
    with pytest.raises(RuntimeError):
        slots.release()
