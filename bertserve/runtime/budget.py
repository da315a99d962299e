"""The compute budget shared by the models one process serves.

Two mechanisms, both decided at load:

- `split_threads`: the CPUs available to the process are divided among the models, so that the
  batches of two models running at once each get cores of their own instead of oversubscribing
  the same ones (two backends sized to every CPU spin and preempt each other; each batch then
  takes longer than running them one after the other would).
- `DeviceSlots`: at most N batches run at once across all models, whatever model they belong to.
  With one slot, every batch gets the whole machine, and models take turns in arrival order.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager


def split_threads(cpus: int, models: int) -> tuple[int, ...]:
    """`cpus` divided among `models`: as even as it goes (the first ones get the remainder), and
    never fewer than one thread each (more models than CPUs then share cores)."""
    if models < 1:
        return ()
    base, extra = divmod(max(cpus, 1), models)
    return tuple(max(1, base + (1 if i < extra else 0)) for i in range(models))


def thread_shares(names: Sequence[str], cpus: int, per_model: int | None) -> dict[str, int]:
    """Intra-op threads per model: `per_model` for each when the operator set it, else the split."""
    if per_model is not None:
        return {name: per_model for name in names}
    return dict(zip(names, split_threads(cpus, len(names)), strict=True))


class DeviceSlots:
    """A fair counting semaphore around backend calls, shared by the models' batch workers.

    NOTE: FIFO by construction: a released slot is handed to the longest waiter directly, never
    put back for whoever asks first. With `threading.Semaphore` the worker that just released
    would usually take the slot again at once (it holds the GIL; the woken waiter does not yet),
    and a busy model would starve the other one."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("at least one batch must be able to run")
        self.slots = slots
        self._lock = threading.Lock()
        self._free = slots
        self._waiters: deque[threading.Lock] = deque()

    def acquire(self) -> None:
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return
            gate = threading.Lock()
            gate.acquire()
            self._waiters.append(gate)
        gate.acquire()  # released by the holder that hands its slot over

    def release(self) -> None:
        with self._lock:
            if self._waiters:
                self._waiters.popleft().release()  # the slot changes hands; `_free` is unchanged
            else:
                self._free += 1
                if self._free > self.slots:
                    self._free = self.slots
                    raise RuntimeError("DeviceSlots released more often than acquired")

    @property
    def in_use(self) -> int:
        with self._lock:
            return self.slots - self._free

    @contextmanager
    def hold(self) -> Iterator[float]:
        """Hold a slot for the block; yields the seconds spent waiting for it."""
        start = time.monotonic()
        self.acquire()
        try:
            yield time.monotonic() - start
        finally:
            self.release()
