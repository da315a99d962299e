"""The batch shapes a TensorRT engine is built for, planned from the batcher's limits.

TensorRT tunes kernels for the `opt` shape of each optimization profile and runs every other shape
of the profile's range with those kernels. One profile from 1x1 to the largest batch therefore
runs most real batches far from the shape it was tuned for. Instead, sequence lengths are cut into
buckets (32, 64, 128, 256, 512 tokens, capped at the model's max_length); each bucket is one
profile whose `opt` and `max` shape is the largest batch the batcher can cut at that length, and
on TensorRT the batcher pads every batch up to its bucket's length (`ShapePlan.bucket_length`), so
each batch runs at a length an engine was tuned for. CPUs pay for every padded token and keep
padding to the longest sequence.

Pure values and functions: unit-tested without a GPU.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from bertserve.modelrepo import BatchingConfig
from bertserve.runtime.base import BackendKind

DEFAULT_BUCKET_LENGTHS: Final = (32, 64, 128, 256, 512)


@dataclass(frozen=True, slots=True)
class ShapeBucket:
    """One optimization profile: batches padded to `length` tokens, at most `max_batch` of them;
    sequences of `min_length`..`length` tokens are padded up to it."""

    min_length: int
    length: int
    max_batch: int


@dataclass(frozen=True, slots=True)
class ShapePlan:
    """The buckets of one model on one batcher, shortest first; together they cover every batch
    the batcher can cut (1..max_length tokens)."""

    buckets: tuple[ShapeBucket, ...]

    @classmethod
    def for_batching(
        cls,
        max_batch_size: int,
        max_batch_tokens: int,
        max_length: int,
        lengths: Sequence[int] = DEFAULT_BUCKET_LENGTHS,
    ) -> ShapePlan:
        """Bucket lengths below `max_length`, then `max_length` itself; each bucket's batch is
        what the token budget allows at its length (never more than `max_batch_size`, never less
        than one: a sequence longer than the budget still runs, alone)."""
        if max_batch_size < 1 or max_batch_tokens < 1 or max_length < 1:
            raise ValueError("batch size, token budget and max_length must be at least 1")
        if any(length < 1 for length in lengths):
            raise ValueError(f"bucket lengths must be at least 1, not {sorted(lengths)}")
        edges = [*sorted({length for length in lengths if length < max_length}), max_length]
        buckets = []
        previous = 0
        for length in edges:
            batch = max(1, min(max_batch_size, max_batch_tokens // length))
            buckets.append(ShapeBucket(min_length=previous + 1, length=length, max_batch=batch))
            previous = length
        return cls(tuple(buckets))

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(b.length for b in self.buckets)

    @property
    def max_length(self) -> int:
        return self.buckets[-1].length

    def bucket_length(self, length: int) -> int:
        """The length a batch whose longest sequence has `length` tokens is padded to.

        NOTE: a sequence longer than max_length (which the tokenizer never produces) keeps its
        length rather than raising: this runs in the batch worker, where an exception would stop
        the model; TensorRT then refuses that one batch, and its requests get the error."""
        lengths = self.lengths
        i = bisect.bisect_left(lengths, length)
        return lengths[i] if i < len(lengths) else length

    def describe(self) -> str:
        """`32x64,64x64,...` (length x batch per bucket): the profile set, for logs and cache keys."""
        return ",".join(f"{b.length}x{b.max_batch}" for b in self.buckets)

    @property
    def digest(self) -> str:
        """12 hex digits naming the profile set (other buckets or batch limits: another engine)."""
        return hashlib.sha256(self.describe().encode("ascii")).hexdigest()[:12]

    def tensorrt_shapes(self, input_names: Sequence[str]) -> tuple[str, str, str]:
        """ONNX Runtime's `trt_profile_{min,opt,max}_shapes`: every input once per profile, profile
        after profile (a name given again starts the next profile)."""

        def shapes(dims: Sequence[tuple[int, int]]) -> str:
            return ",".join(f"{name}:{b}x{n}" for b, n in dims for name in input_names)

        return (
            shapes([(1, b.min_length) for b in self.buckets]),
            shapes([(b.max_batch, b.length) for b in self.buckets]),
            shapes([(b.max_batch, b.length) for b in self.buckets]),
        )

    def warmup_shapes(self) -> tuple[tuple[int, int], ...]:
        """(batch, length) of each profile's tuned shape: running each once before the model is
        ready makes TensorRT build (or load) the engine for every profile and reserves its memory."""
        return tuple((b.max_batch, b.length) for b in self.buckets)


def padding_plan(kind: str, batching: BatchingConfig, max_length: int) -> ShapePlan | None:
    """The buckets batches are padded to on the backend named `kind` (a `BackendKind` value):
    TensorRT's profiles, planned from the batcher's limits; None elsewhere (pad to the longest
    sequence: a CPU computes every padded token, and ONNX Runtime's CUDA kernels need no fixed
    shapes). The loader builds the engine profiles from it and the batcher pads by it, so the
    two always agree."""
    if kind != BackendKind.TENSORRT:
        return None
    return ShapePlan.for_batching(batching.max_batch_size, batching.max_batch_tokens, max_length)
