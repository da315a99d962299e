"""A deterministic backend that needs no model file, with fault hooks for tests.

Logits are a pure function of each sequence's own unpadded tokens, so a test can recompute the
expected row for any input and detect a response that belongs to another input. Padding never
changes a row, exactly like a real masked encoder.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from bertserve.modelrepo import Precision
from bertserve.runtime.base import Feeds, Logits


class FakeBackendFailure(RuntimeError):
    """Raised by the fake backend when a test asks it to fail."""


@dataclass
class FaultHooks:
    """Mutable on purpose: a test flips these while the service runs. Read by the worker thread."""

    delay_s: float = 0.0  # sleep this long in every batch (a slow backend)
    fail_batches: int = 0  # fail this many upcoming batches, then recover
    fail_always: bool = False
    hang: threading.Event | None = None  # when set to an Event, each batch blocks until it is set

    def apply(self) -> None:
        """Act out the faults on one batch: block, sleep, then fail or let it through."""
        if self.hang is not None:
            self.hang.wait()
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        if self.fail_always:
            raise FakeBackendFailure("fake backend failure (fail_always)")
        if self.fail_batches > 0:
            self.fail_batches -= 1
            raise FakeBackendFailure("fake backend failure (fail_batches)")


@dataclass
class FakeBackend:
    num_labels: int
    token_level: bool = False
    input_names: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
    name: str = "fake"
    precision: Precision = Precision.FP32
    faults: FaultHooks = field(default_factory=FaultHooks)
    # Hooks shared with other backends (a test breaking every model at once), applied after this
    # backend's own `faults`; None when the backend answers to its own hooks only.
    shared_faults: FaultHooks | None = None
    # (batch, length) of the latest calls; bounded so that a long load test does not grow memory
    batch_shapes: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=10_000))
    sequences_run: int = 0  # sequences the backend was called with, ever: proves what never ran
    started: threading.Event = field(default_factory=threading.Event)  # set when a batch arrives
    closed: bool = False

    def infer(self, feeds: Feeds) -> Logits:
        ids = feeds["input_ids"]
        self.batch_shapes.append((int(ids.shape[0]), int(ids.shape[1])))
        self.sequences_run += int(ids.shape[0])
        self.started.set()
        self.faults.apply()
        if self.shared_faults is not None:
            self.shared_faults.apply()
        mask = feeds["attention_mask"]
        types = feeds.get("token_type_ids")
        return fake_logits(ids, mask, types, self.num_labels, self.token_level)

    def close(self) -> None:
        self.closed = True


def fake_logits(
    ids: NDArray[np.int64],
    mask: NDArray[np.int64],
    types: NDArray[np.int64] | None,
    num_labels: int,
    token_level: bool,
) -> Logits:
    """The fake model. Position-weighted so that token order matters; masked so padding does not."""
    ids_f = ids.astype(np.float64) * mask
    k = np.arange(1, num_labels + 1, dtype=np.float64)
    if token_level:
        out = np.sin(ids_f[:, :, None] * 0.37 * k) * 3.0 * mask[:, :, None]
        return out.astype(np.float32)
    positions = np.arange(1, ids.shape[1] + 1, dtype=np.float64)
    h: NDArray[np.float64] = (ids_f * positions).sum(axis=1)
    if types is not None:
        h += (ids_f * types).sum(axis=1) * 0.5
    out = np.sin(h[:, None] * 0.0137 * k) * 4.0
    return out.astype(np.float32)
