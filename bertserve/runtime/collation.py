"""Padding a batch of sequences into a backend's feeds: the one way every caller pads.

The batcher, the export gates, the evaluation and the benchmarks all collate through here, so a
figure measured offline was computed on exactly the arrays the service would feed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from bertserve.runtime.base import Feeds
from bertserve.runtime.errors import NonFiniteOutputError, OutputShapeError

KNOWN_INPUTS: Final = frozenset({"input_ids", "attention_mask", "token_type_ids"})


@dataclass(frozen=True, slots=True)
class ModelInput:
    """One sequence as the batcher pads it: token ids with special tokens, optional segment ids."""

    ids: NDArray[np.int64]
    type_ids: NDArray[np.int64] | None = None  # None = all zeros (single sentences)

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])


class Collator:
    """Pads a batch to its longest sequence (never to max_length) and builds the backend's feeds.

    `width`: the padded length for a batch's longest sequence, for backends that run fixed shapes
    (TensorRT's profile buckets, `ShapePlan.bucket_length`); default: the longest itself."""

    def __init__(
        self, input_names: tuple[str, ...], pad_token_id: int, width: Callable[[int], int] | None = None
    ) -> None:
        unknown = set(input_names) - KNOWN_INPUTS
        if unknown:
            raise ValueError(
                f"graph inputs {sorted(unknown)} are not supported (expected {sorted(KNOWN_INPUTS)})"
            )
        self._names = input_names
        self._types = "token_type_ids" in input_names
        self._pad = pad_token_id
        self._width = width

    def collate(self, batch: Sequence[ModelInput]) -> tuple[Feeds, int, int]:
        """Returns (feeds, real tokens, padded tokens)."""
        longest = max(x.length for x in batch)
        if self._width is not None:
            longest = self._width(longest)
        ids = np.full((len(batch), longest), self._pad, dtype=np.int64)
        mask = np.zeros((len(batch), longest), dtype=np.int64)
        types = np.zeros((len(batch), longest), dtype=np.int64) if self._types else None
        real = 0
        for row, x in enumerate(batch):
            n = x.length
            real += n
            ids[row, :n] = x.ids
            mask[row, :n] = 1
            if types is not None and x.type_ids is not None:
                types[row, :n] = x.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask}
        if types is not None:
            feeds["token_type_ids"] = types
        return {k: v for k, v in feeds.items() if k in self._names}, real, ids.size


def check_logits(logits: NDArray[np.float32], batch_size: int) -> None:
    """Refuse an output the service could not answer with: one row per sequence, all finite.

    NaN/Inf would become "NaN" in a response (not JSON) or a silently wrong label."""
    if logits.shape[0] != batch_size:
        raise OutputShapeError(f"backend returned {logits.shape[0]} rows for a batch of {batch_size}")
    if not np.isfinite(logits).all():
        raise NonFiniteOutputError(f"backend returned non-finite logits for a batch of {batch_size}")
