"""Dynamic batching: many concurrent requests become few, well-packed batches.

One `DynamicBatcher` per model owns ONE worker thread per backend instance that cuts batches
and runs them back to back, so the backend never waits for the event loop between batches. The
event loop only enqueues (under a lock held for microseconds) and resolves futures (one callback
per batch). Several instances (`instances`: more sessions of the same model, as Triton's instance
groups) cut from the one queue, each running its own batch while the others run theirs.

The adaptive layout (`instances: adaptive`) holds one session with all of the model's threads
("wide") and one single-thread session per thread ("narrow"), and never runs both kinds at once,
so the cores are never oversubscribed: a lone sequence runs wide, at the latency of every core;
as soon as two or more wait, the narrow sessions take them, one batch per core, which on a
saturated CPU wastes less than one session's threads handing work to each other.

A batch closes when the queue holds `max_batch_size` sequences, or `max_batch_tokens` padded
tokens, or when its oldest sequence has waited `max_queue_delay_ms`, or as soon as no other
request for this model is still being tokenized: waiting for company that is not on its way
could only add latency. Batches are cut from the queue sorted by length, around the oldest
sequence (so nothing starves), taking the neighbours that add the least padding.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bertserve.runtime.base import Backend, Logits
from bertserve.runtime.budget import DeviceSlots
from bertserve.runtime.collation import Collator, ModelInput, check_logits
from bertserve.runtime.errors import NonFiniteOutputError
from bertserve.runtime.shapes import ShapePlan
from bertserve.service import tracing
from bertserve.service.errors import (
    DeadlineExceededError,
    InferenceError,
    NotReadyError,
    PayloadTooLargeError,
    QueueFullError,
)
from bertserve.service.metrics import Metrics

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchLimits:
    max_batch_size: int
    max_batch_tokens: int
    max_queue_delay_s: float
    max_queue_size: int
    min_padding_efficiency: float = 0.0  # real / padded tokens a growing batch must keep
    # Bucket lengths batches are padded up to (TensorRT's engine profiles); None pads to the
    # longest sequence, as every CPU backend wants.
    padding: ShapePlan | None = None


def plan_batch(
    lengths: Sequence[int], anchor: int, max_size: int, max_tokens: int, min_efficiency: float = 0.0
) -> tuple[int, int]:
    """Pick `[lo, hi)` of `lengths` (sorted ascending) containing `anchor`.

    Grows one neighbour at a time, choosing the side that adds less padding: a shorter item on the
    left pads itself up to the current longest; a longer one on the right pads every member. Stops
    at `max_size` items, when the padded size `count x longest` would exceed `max_tokens`, or when
    real / padded tokens would fall below `min_efficiency` (the rest then forms the next batch,
    which on a CPU costs less than computing the padding). The anchor alone may exceed the token
    budget: it still runs, alone.
    """
    lo, hi = anchor, anchor + 1
    longest = real = lengths[anchor]
    n = len(lengths)
    while hi - lo < max_size:
        count = hi - lo
        left_ok = (
            lo > 0
            and (count + 1) * longest <= max_tokens
            and real + lengths[lo - 1] >= min_efficiency * (count + 1) * longest
        )
        right_ok = (
            hi < n
            and (count + 1) * lengths[hi] <= max_tokens
            and real + lengths[hi] >= min_efficiency * (count + 1) * lengths[hi]
        )
        if left_ok and right_ok:
            take_left = longest - lengths[lo - 1] <= count * (lengths[hi] - longest)
        elif left_ok or right_ok:
            take_left = left_ok
        else:
            break
        if take_left:
            lo -= 1
            real += lengths[lo]
        else:
            longest = lengths[hi]
            real += longest
            hi += 1
    return lo, hi


class _Group:
    """The sequences of one `submit` call; resolved once all of them have a result. With tracing
    on, `trace` is the submitting request's span and `queued_ns` when its sequences were queued."""

    __slots__ = ("future", "queued_ns", "remaining", "results", "trace")

    def __init__(self, future: asyncio.Future[list[Logits]], size: int) -> None:
        self.future = future
        self.results: list[Logits | None] = [None] * size
        self.remaining = size
        self.trace = tracing.current()
        self.queued_ns = tracing.now_ns() if self.trace is not None else 0


class _Item:
    __slots__ = ("enqueued", "group", "index", "input", "length")

    def __init__(self, x: ModelInput, group: _Group, index: int, enqueued: float) -> None:
        self.input = x
        self.length = x.length
        self.group = group
        self.index = index
        self.enqueued = enqueued


class DynamicBatcher:
    """Per-model queue + worker thread. `submit` from the event loop; results come back per input."""

    def __init__(
        self,
        model: str,
        backend: Backend,
        limits: BatchLimits,
        pad_token_id: int,
        metrics: Metrics,
        unhealthy_after_failures: int = 3,
        stalled_after_s: float | None = None,
        slots: DeviceSlots | None = None,
        instances: Sequence[Backend] = (),
        narrow: Sequence[Backend] = (),
    ) -> None:
        """`slots`: the compute slots this model's batches share with other models' (the
        process's `max_concurrent_batches`); None runs every batch as soon as it is cut.
        `instances`: more sessions of the same model as `backend`, one more worker each.
        `narrow`: the adaptive layout's single-thread sessions (then `backend` is the wide one
        and `instances` must be empty)."""
        if narrow and instances:
            raise ValueError("the adaptive layout's narrow sessions replace `instances`")
        self.model = model
        self.limits = limits
        self._backend = backend
        self._padding = limits.padding
        self._backends = (backend, *instances, *narrow)
        self._adaptive = bool(narrow)
        self._wide_running = False  # adaptive: the wide session is running a batch
        self._narrow_running = 0  # adaptive: narrow sessions running a batch
        self._collator = Collator(
            backend.input_names,
            pad_token_id,
            width=None if limits.padding is None else limits.padding.bucket_length,
        )
        lock = threading.Lock()
        self._cond = threading.Condition(lock)
        # The adaptive layout's wide worker waits on a condition of its own (same lock), so that a
        # queue change wakes only the kind of worker that can act on it (see `_wake`).
        self._wide_cond = threading.Condition(lock)
        self._items: list[_Item] = []  # arrival order
        self._longest = 0  # longest queued sequence, for the token-budget trigger
        self._incoming = 0  # requests announced (being tokenized) but not yet enqueued
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []
        self._failures = 0
        self._unhealthy_after = unhealthy_after_failures
        self._crash: BaseException | None = None
        # NOTE: a backend call cannot be interrupted (ORT and OpenVINO run native code), so a hung
        # one is detected, not killed: while the running batch is older than `stalled_after_s`
        # readiness reports it and new requests are refused at once instead of queueing behind
        # it until their deadlines; both recover when the call returns.
        self._stalled_after = stalled_after_s
        # monotonic start of the batch each worker is running in its backend (None: none)
        self._running_since: list[float | None] = [None] * len(self._backends)
        self._slots = slots
        # Children bound once: label lookups are not free on the hot path.
        self._m_queue = metrics.queue_duration.labels(model)
        self._m_depth = metrics.queue_depth.labels(model)
        self._m_infer = metrics.inference_duration.labels(model, backend.name)
        self._m_slot_wait = metrics.compute_wait.labels(model)
        self._m_size = metrics.batch_size.labels(model)
        self._m_tokens = metrics.batch_tokens.labels(model)
        self._m_real = metrics.real_tokens.labels(model)
        self._m_padded = metrics.padded_tokens.labels(model)
        self._m_failures = metrics.batch_failures
        self._m_rejected_full = metrics.rejected.labels(model, "queue_full")
        self._m_rejected_deadline = metrics.rejected.labels(model, "deadline")
        self._m_rejected_stalled = metrics.rejected.labels(model, "backend_stalled")

    # --- lifecycle --------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._threads:
            raise RuntimeError("batcher already started")
        self._loop = loop
        for k in range(len(self._backends)):
            name = f"batcher-{self.model}" + (f"-{k}" if k else "")
            self._threads.append(threading.Thread(target=self._run, args=(k,), name=name, daemon=True))
        for thread in self._threads:
            thread.start()

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Run what is queued, then end the worker threads."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            self._wide_cond.notify_all()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            await asyncio.to_thread(thread.join, max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.error("batcher %s: worker did not finish within %.0fs", self.model, timeout_s)

    @property
    def crash(self) -> BaseException | None:
        """What killed the worker thread, if it died: the model can no longer serve."""
        return self._crash

    @property
    def healthy(self) -> bool:
        return self.health_problem is None

    @property
    def health_problem(self) -> str | None:
        if self._crash is not None:
            return f"batch worker crashed: {type(self._crash).__name__}"
        stalled = self._stalled_for()
        if stalled is not None:
            return f"a batch has been running for {stalled:.1f} s (backend stuck?)"
        if self._failures >= self._unhealthy_after:
            return f"{self._failures} consecutive batches failed"
        return None

    def _stalled_for(self) -> float | None:
        limit = self._stalled_after
        started = [since for since in self._running_since if since is not None]
        if not started or limit is None:
            return None
        running = time.monotonic() - min(started)
        return running if running > limit else None

    @property
    def backends(self) -> tuple[Backend, ...]:
        """Every session of the model this batcher runs: the backend, then its other instances."""
        return self._backends

    @property
    def queue_depth(self) -> int:
        return len(self._items)

    def warm_other_sessions(self, inputs: Sequence[ModelInput]) -> None:
        """Run `inputs` once on every session but the first, outside the queue (at warm-up, before
        requests come: the first session is warmed through the queue by the pipeline). Raises
        what a session raises, and what `check_logits` raises for logits that are wrong."""
        feeds, _, _ = self._collator.collate(list(inputs))
        for backend in self._backends[1:]:
            check_logits(backend.infer(feeds), len(inputs))

    # --- event-loop side --------------------------------------------------------------------

    def announce(self) -> None:
        """A request is about to be tokenized: the worker may wait (up to the delay) for it.
        Refuses at once when the queue is already full, before any tokenization work is spent."""
        with self._cond:
            self._check_open()
            if len(self._items) + self._incoming >= self.limits.max_queue_size:
                self._reject_full()
            self._incoming += 1

    def withdraw(self) -> None:
        """An announced request will not be submitted (tokenization failed, client gone)."""
        with self._cond:
            self._incoming -= 1
            if self._incoming == 0 and self._items:
                self._wake()

    async def submit(
        self, inputs: Sequence[ModelInput], *, announced: bool = False, timeout_s: float | None = None
    ) -> list[Logits]:
        """Queue the sequences of one request; returns their logits in input order.

        Raises `QueueFullError` at once when they do not fit, `DeadlineExceededError` when they
        are not done within `timeout_s` (queued ones are then dropped, never run), or the
        `InferenceError` of a failed batch.
        """
        loop = self._loop
        if loop is None:
            raise NotReadyError(f"model {self.model} is not started")
        if timeout_s is not None and timeout_s <= 0:
            # The deadline passed before the sequences were ready (e.g. slow tokenization): they
            # are never queued, so they can never run.
            if announced:
                self.withdraw()
            self._m_rejected_deadline.inc()
            raise DeadlineExceededError(f"model {self.model}: request deadline passed before queueing")
        future: asyncio.Future[list[Logits]] = loop.create_future()
        group = _Group(future, len(inputs))
        now = time.monotonic()
        with self._cond:
            if announced:
                self._incoming -= 1
            self._check_open()
            if len(inputs) > self.limits.max_queue_size:
                # Retrying can never help: 413, not the 429 that invites retries forever.
                raise PayloadTooLargeError(
                    f"model {self.model}: {len(inputs)} sequences in one request can never fit the "
                    f"queue of {self.limits.max_queue_size}; send fewer or shorter texts"
                )
            if len(self._items) + len(inputs) > self.limits.max_queue_size:
                self._reject_full()
            was_empty = not self._items
            for index, x in enumerate(inputs):
                self._items.append(_Item(x, group, index, now))
                self._longest = max(self._longest, x.length)
            # Wake the worker only when its decision can change; otherwise its timed wait stands.
            if was_empty or self._incoming == 0 or self._full():
                self._wake()
            # NOTE: the gauge is set under the lock, so a later value set by the worker's cut
            # can never be overwritten by this (older) one.
            self._m_depth.set(len(self._items))
        # NOTE: one timer on the loop instead of `asyncio.wait_for` (which adds a waiter future, a
        # done callback and a task wrapper to every request on the event loop).
        timer = None if timeout_s is None else loop.call_later(timeout_s, _expire, future)
        try:
            return await future
        except _Expired:
            # The future is done: its queued sequences are dropped now, not at the next cut.
            self._discard(group)
            self._m_rejected_deadline.inc()
            raise DeadlineExceededError(
                f"model {self.model}: request not completed within {(timeout_s or 0) * 1000:.0f} ms"
            ) from None
        except asyncio.CancelledError:
            self._discard(group)  # the client went away: nobody waits for these sequences
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _discard(self, group: _Group) -> None:
        """Remove a request's still-queued sequences (its future is done: timed out or cancelled),
        so the queue depth that autoscalers read counts only work somebody waits for."""
        with self._cond:
            kept = [item for item in self._items if item.group is not group]
            if len(kept) != len(self._items):
                self._items = kept
                self._longest = max((item.length for item in kept), default=0)
                self._m_depth.set(len(kept))

    def _check_open(self) -> None:
        if self._closing:
            raise NotReadyError(f"model {self.model} is shutting down")
        if self._crash is not None:
            raise InferenceError(f"model {self.model} is unavailable: its batch worker stopped")
        if self._stalled_for() is not None:
            self._m_rejected_stalled.inc()
            raise NotReadyError(f"model {self.model}: the backend is stuck on a batch; retry later")

    def _reject_full(self) -> None:
        self._m_rejected_full.inc()
        raise QueueFullError(
            f"model {self.model}: queue full ({self.limits.max_queue_size} sequences); retry later",
            retry_after_s=1,
        )

    def _wake(self) -> None:
        """Called with the lock held: the queue changed; one worker that can act on it looks.
        The adaptive layout's workers wait for different things (see `_adaptive_turn`): a lone
        sequence with nothing running is the wide session's; anything else is a narrow one's
        (which hands what it leaves to the next, `_adaptive_cut`), unless the wide session is
        running, whose end wakes them (`_done`)."""
        if not self._adaptive:
            self._cond.notify()
        elif len(self._items) == 1 and not self._narrow_running and not self._wide_running:
            self._wide_cond.notify()
        elif self._items and not self._wide_running:
            self._cond.notify()

    def _full(self) -> bool:
        n = len(self._items)
        return n >= self.limits.max_batch_size or n * self._longest >= self.limits.max_batch_tokens

    # --- worker thread ----------------------------------------------------------------------

    def _run(self, worker: int = 0) -> None:
        try:
            while True:
                batch = self._next_batch(worker)
                if batch is None:
                    return
                if batch:
                    try:
                        self._execute(batch, worker)
                    finally:
                        if self._adaptive:
                            self._done(worker)
        except BaseException as exc:  # NOTE: a dead worker must be visible, not silent
            log.exception("batcher %s: worker crashed", self.model)
            with self._cond:
                self._crash = exc
                stranded, self._items = self._items, []
            self._deliver_error(stranded, InferenceError(f"model {self.model}: batch worker stopped"))

    def _next_batch(self, worker: int = 0) -> list[_Item] | None:
        """Block until a batch should close, then cut it (for `worker`; [] when there is nothing
        for it after all). None = closing and drained."""
        limits = self.limits
        cond = self._wide_cond if self._adaptive and worker == 0 else self._cond
        with self._cond:
            while True:
                if not self._items:
                    if self._closing:
                        return None
                    cond.wait()
                    continue
                if self._closing or self._incoming <= 0 or self._full():
                    break
                wait = self._items[0].enqueued + limits.max_queue_delay_s - time.monotonic()
                if wait <= 0:
                    break
                cond.wait(wait)
            if self._adaptive:
                if not self._adaptive_turn(worker):
                    cond.wait()
                    return []  # looked again by the worker loop
                return self._adaptive_cut(worker)
            batch = self._cut()
            if self._items and len(self._backends) > 1:
                self._cond.notify()  # another instance may take what is left while this one runs
            return batch

    def _adaptive_turn(self, worker: int) -> bool:
        """Called with the lock held and a batch due: whether `worker` is the one to cut it.
        The wide session (worker 0) runs a lone sequence when nothing else runs; the narrow ones
        run everything else, never beside the wide one."""
        if self._closing:
            # NOTE: draining at shutdown: whoever is free runs what is left, one kind at a time.
            return not self._narrow_running if worker == 0 else not self._wide_running
        lone = len(self._items) == 1
        if worker == 0:
            return lone and not self._narrow_running and not self._wide_running
        return not self._wide_running and (not lone or self._narrow_running > 0)

    def _adaptive_cut(self, worker: int) -> list[_Item]:
        """Cut for the adaptive layout's `worker` (its turn, lock held) and mark it running. The
        narrow sessions share what waits: with k of them free, one takes at most 1/k of it."""
        if worker == 0:
            batch = self._cut()
            self._wide_running = bool(batch)
            return batch
        free = len(self._backends) - 1 - self._narrow_running
        batch = self._cut(max_size=-(-len(self._items) // max(free, 1)))
        if batch:
            self._narrow_running += 1
        if self._items:
            self._cond.notify()  # another narrow session may take what is left
        return batch

    def _done(self, worker: int) -> None:
        """An adaptive worker's batch is over: the worker that is due for what waits may have
        been waiting for it (with the queue empty, the next `submit` wakes the one that is due)."""
        with self._cond:
            if worker == 0:
                self._wide_running = False
            else:
                self._narrow_running -= 1
            if self._closing:
                self._cond.notify_all()
                self._wide_cond.notify_all()
            else:
                self._wake()

    def _cut(self, max_size: int | None = None) -> list[_Item]:
        """Called with the lock held. Drops abandoned items, then cuts one batch (of at most
        `max_size` sequences when given, and never more than `max_batch_size`)."""
        live = [item for item in self._items if not item.group.future.done()]
        # NOTE: reading done() from this thread is a plain attribute read; a future that
        # completes right after is handled on the loop side, where results for done futures
        # are ignored.
        if not live:
            self._items, self._longest = [], 0
            self._m_depth.set(0)
            return []
        order = sorted(range(len(live)), key=lambda i: live[i].length)
        anchor = order.index(0)  # live[0] is the oldest item
        limits = self.limits
        lengths = [live[i].length for i in order]
        if self._padding is not None:
            # NOTE: planned at the padded lengths, so that the token budget counts the padding
            # the bucket adds and no batch outgrows its engine profile (count x bucket length).
            lengths = [self._padding.bucket_length(n) for n in lengths]
        size = limits.max_batch_size if max_size is None else max(1, min(max_size, limits.max_batch_size))
        lo, hi = plan_batch(lengths, anchor, size, limits.max_batch_tokens, limits.min_padding_efficiency)
        chosen = set(order[lo:hi])
        batch = [live[i] for i in order[lo:hi]]
        self._items = [item for i, item in enumerate(live) if i not in chosen]
        self._longest = max((item.length for item in self._items), default=0)
        self._m_depth.set(len(self._items))
        return batch

    def _execute(self, batch: list[_Item], worker: int = 0) -> None:
        backend = self._backends[worker]
        start = time.monotonic()
        waited = 0.0
        for item in batch:
            self._m_queue.observe(start - item.enqueued)
        traced = self._trace_queue_waits(batch) if tracing.enabled() else []
        try:
            feeds, real, padded = self._collator.collate([item.input for item in batch])
            with (
                tracing.batch_span(traced, model=self.model, batch_size=len(batch), padded_tokens=padded),
                self._slot() as waited,
            ):
                self._running_since[worker] = time.monotonic()
                try:
                    logits = backend.infer(feeds)
                finally:
                    self._running_since[worker] = None
            check_logits(logits, len(batch))
        except Exception as exc:
            self._failures += 1
            reason = "non_finite" if isinstance(exc, NonFiniteOutputError) else "backend_error"
            self._m_failures.labels(self.model, backend.name, reason).inc()
            log.error(
                "batcher %s: batch of %d failed (%d in a row): %s: %s",
                self.model,
                len(batch),
                self._failures,
                type(exc).__name__,
                exc,
                exc_info=self._failures == 1,
            )
            self._deliver_error(batch, InferenceError(f"model {self.model}: inference failed"))
            return
        self._failures = 0
        # The wait for a compute slot is the other models' time, not this backend's.
        self._m_infer.observe(time.monotonic() - start - waited)
        self._m_size.observe(len(batch))
        self._m_tokens.observe(padded)
        self._m_real.inc(real)
        self._m_padded.inc(padded)
        # Token-level logits are cut back to each sequence's own tokens.
        rows = (
            [logits[i, : item.length] for i, item in enumerate(batch)] if logits.ndim == 3 else list(logits)
        )
        self._call_in_loop(_resolve, batch, rows)

    def _trace_queue_waits(self, batch: list[_Item]) -> list[SpanContext]:
        """Each request's `queue` span up to this cut; the requests' spans, for the batch's links."""
        cut = tracing.now_ns()
        groups = {id(item.group): item.group for item in batch}.values()
        traced = []
        for group in groups:
            if group.trace is not None:
                tracing.record_queue_wait(group.trace, group.queued_ns, cut, model=self.model)
                traced.append(group.trace)
        return traced

    @contextlib.contextmanager
    def _slot(self) -> Iterator[float]:
        """Hold one of the shared compute slots (if any) around the backend call; yields the
        seconds waited for it."""
        if self._slots is None:
            yield 0.0
            return
        with self._slots.hold() as waited:
            self._m_slot_wait.observe(waited)
            yield waited

    def _deliver_error(self, items: list[_Item], error: Exception) -> None:
        if items:
            self._call_in_loop(_fail, items, error)

    def _call_in_loop(self, fn: Callable[..., None], *args: object) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop already closed at shutdown: nobody is waiting any more
            log.debug("batcher %s: event loop closed, results dropped", self.model)


class _Expired(Exception):
    """A request's deadline passed while its sequences were queued or running."""


def _expire(future: asyncio.Future[list[Logits]]) -> None:
    if not future.done():
        future.set_exception(_Expired())


def _resolve(batch: list[_Item], rows: list[Logits]) -> None:
    for item, row in zip(batch, rows, strict=True):
        group = item.group
        if group.future.done():
            continue
        group.results[item.index] = row
        group.remaining -= 1
        if group.remaining == 0:
            group.future.set_result(group.results)  # type: ignore[arg-type]


def _fail(items: list[_Item], error: Exception) -> None:
    for item in items:
        if not item.group.future.done():
            item.group.future.set_exception(error)
