"""Per-request work limits, counted while the work is produced, so that refusing costs little.

A request body is bounded in bytes, inputs and characters before anything runs, but what a text
turns into is not: ``"a! " * 33333`` is 100 kB and 33,333 sentences. `WorkBudget` counts the
sequences (texts, sentences, windows) and the tokens a request becomes while its inputs are
segmented and tokenized, and raises 413 as soon as a limit is passed, so the work and memory
spent on a request that is refused stay bounded by the limits themselves, whatever the input.

The same object carries the request's deadline and a cancel flag into the tokenization thread:
work whose client has gone, or whose deadline has passed, stops at the next check instead of
running to the end for nobody.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bertserve.service.errors import DeadlineExceededError, PayloadTooLargeError

if TYPE_CHECKING:
    from bertserve.service.settings import Settings
    from bertserve.service.tokenization import TextInput


def check_input_count(count: int, settings: Settings) -> None:
    """At most `max_inputs` inputs (texts, pairs, token-id lists) in one request, on every route."""
    if count > settings.max_inputs:
        raise PayloadTooLargeError(f"{count} inputs in one request; at most {settings.max_inputs}")


def normalize_inputs(raw: str | Sequence[TextInput], settings: Settings) -> list[TextInput]:
    """A request's texts (or pairs) as a list, within `max_inputs` and `max_input_chars` (413
    beyond): the input limits every route and protocol applies before any work."""
    inputs: list[TextInput] = [raw] if isinstance(raw, str) else list(raw)
    check_input_count(len(inputs), settings)
    limit = settings.max_input_chars
    for index, item in enumerate(inputs):
        size = len(item) if isinstance(item, str) else len(item[0]) + len(item[1])
        if size > limit:
            raise PayloadTooLargeError(f"input {index} has {size} characters; at most {limit}")
    return inputs


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """`max_sequences` already includes the queue's size: a request that can never fit the queue
    is too large (413), not "full right now" (429, which would invite retries forever)."""

    max_sequences: int
    max_tokens: int

    @classmethod
    def for_model(
        cls, max_request_sequences: int, max_request_tokens: int, max_queue_size: int
    ) -> RequestLimits:
        return cls(min(max_request_sequences, max_queue_size), max_request_tokens)


class WorkAbandonedError(Exception):
    """The request no longer waits for this work (cancelled, or past its deadline)."""


# The budgets of the request being served (for its access-log line), when something collects them.
REQUEST_WORK: ContextVar[list[WorkBudget] | None] = ContextVar("bertserve_request_work", default=None)


class WorkBudget:
    """Counts one request's sequences and tokens; thread-safe enough for its one writer (the
    tokenization thread) and one canceller (the event loop): `cancel` only sets a flag."""

    __slots__ = ("_cancelled", "deadline", "limits", "sequences", "tokens")

    def __init__(self, limits: RequestLimits, deadline: float | None = None) -> None:
        self.limits = limits
        self.deadline = deadline  # time.monotonic() instant, None = none
        self.sequences = 0
        self.tokens = 0
        self._cancelled = False
        collected = REQUEST_WORK.get()
        if collected is not None:
            collected.append(self)

    def cancel(self) -> None:
        self._cancelled = True

    def remaining_s(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check_alive(self) -> None:
        """Between chunks of work: stop when nobody waits for the result any more."""
        if self._cancelled:
            raise WorkAbandonedError("cancelled")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DeadlineExceededError("request deadline passed while its inputs were being prepared")

    def add_sequences(self, count: int) -> None:
        self.sequences += count
        limit = self.limits.max_sequences
        if self.sequences > limit:
            raise PayloadTooLargeError(
                f"the request becomes more than {limit} sequences (texts, sentences or windows of "
                f"long texts); at most {limit} per request (max_request_sequences, bounded by the "
                "model's max_queue_size): send fewer or shorter texts"
            )

    def add_tokens(self, count: int) -> None:
        self.tokens += count
        limit = self.limits.max_tokens
        if self.tokens > limit:
            raise PayloadTooLargeError(
                f"the request needs more than {limit} tokens (window overlaps included); at most "
                f"{limit} per request (max_request_tokens): send fewer or shorter texts"
            )
