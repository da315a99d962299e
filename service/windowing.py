"""Long texts in overlapping windows, stitched back into one per-token score array.

A text is tokenized once, whole, with the tokenizer's special tokens and without truncation (the
*document* encoding, e.g. ``[CLS] t_0 ... t_{n-1} [SEP]``). When it is longer than the model's
``max_length``, its content tokens are cut into windows of at most
``max_length - n_special`` tokens, consecutive windows overlapping by at least ``stride`` tokens,
and every window is run as its own sequence: the document's leading specials + the window's
tokens + the document's trailing specials, so the special ids and token type ids are exactly
those the tokenizer's post-processor produced. A text that fits is a single window whose input
*is* the document encoding.

Cuts avoid splitting a word: a window's end is moved back, and the next window's start moved
back (more overlap, never less), to the nearest word boundary given by the tokenizer's word ids,
as long as the window keeps at least half its capacity and still ends past the previous window; a
word too long for that is cut (harmless: stitching takes such tokens from where they have
context). The last window reaches back to (about) full capacity, for the most context.

Stitching: each content token takes its scores from the window in which it sits farthest from a
window edge, i.e. with the most context on its poorer side (an edge that is the document's own
start or end counts as no edge, as no context is missing there); ties go to the earlier window.
The leading and trailing special positions take the first and last window's. The result has one
row per position of the document encoding, so aggregation (`bertserve.service.heads.token_classification`)
runs once over the whole document, with offsets into the original text, and overlaps cannot
produce duplicate entities. This replaces the transformers pipeline's approach (``stride=``),
which aggregates every chunk separately and then resolves overlapping entities heuristically.

Use, for one text (each window is an ordinary sequence for the batcher)::

    enc = tokenizer.encode(text)  # special tokens on, truncation off
    plan = plan_windows(enc.special_tokens_mask, enc.word_ids, max_length, stride)
    logits = [infer(plan.window_inputs(k, enc.ids, enc.type_ids)) for k in range(len(plan.windows))]
    entities = head.postprocess(text, enc, plan.stitch(logits), strategy, ignore_labels)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Window:
    """Document positions ``[start, end)`` of a window's content tokens."""

    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class WindowInputs:
    """One window as a model input sequence (no padding: every position is attended; the
    collator builds the batch's mask)."""

    input_ids: IntArray
    token_type_ids: IntArray


@dataclass(frozen=True, slots=True)
class WindowPlan:
    """How one document encoding is run: its windows and which window each position reads from.

    `prefix` and `suffix` count the document's leading and trailing special tokens; every window
    sequence carries the same ones, so window ``k``'s output rows
    ``[prefix, prefix + len(windows[k]))`` are the scores of document positions
    ``[windows[k].start, windows[k].end)``.
    """

    n_positions: int
    prefix: int
    suffix: int
    windows: tuple[Window, ...]
    owner: tuple[int, ...]  # per document position, the index of the window its scores come from

    def sequence_length(self, k: int) -> int:
        return self.prefix + len(self.windows[k]) + self.suffix

    def window_inputs(
        self, k: int, input_ids: Sequence[int], token_type_ids: Sequence[int] | None = None
    ) -> WindowInputs:
        """Window ``k`` as a model input, built from the *document* encoding's ids (and type ids,
        zeros when the tokenizer gives none): its leading specials, the window's slice, its
        trailing specials."""
        if len(input_ids) != self.n_positions:
            raise ValueError(f"got {len(input_ids)} ids for a plan of {self.n_positions} positions")
        ids = np.asarray(input_ids, dtype=np.int64)
        types = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids, dtype=np.int64)
        window = self.windows[k]
        head = slice(0, self.prefix)
        tail = slice(self.n_positions - self.suffix, self.n_positions)
        body = slice(window.start, window.end)
        seq_ids = np.concatenate([ids[head], ids[body], ids[tail]])
        seq_types = np.concatenate([types[head], types[body], types[tail]])
        return WindowInputs(seq_ids, seq_types)

    def stitch(self, window_outputs: Sequence[npt.NDArray[np.floating]]) -> npt.NDArray[np.floating]:
        """Per-window ``[sequence_length(k), n_labels]`` outputs (logits or probabilities, padding
        removed) -> ``[n_positions, n_labels]`` aligned with the document encoding."""
        if len(window_outputs) != len(self.windows):
            raise ValueError(f"got {len(window_outputs)} window outputs for {len(self.windows)} windows")
        for k, out in enumerate(window_outputs):
            if out.ndim != 2 or out.shape[0] != self.sequence_length(k):
                raise ValueError(
                    f"window {k} output has shape {out.shape}, expected ({self.sequence_length(k)}, n_labels)"
                )
        first, last = window_outputs[0], window_outputs[-1]
        result = np.empty((self.n_positions, first.shape[1]), dtype=first.dtype)
        result[: self.prefix] = first[: self.prefix]
        result[self.n_positions - self.suffix :] = last[last.shape[0] - self.suffix :]
        owner = np.asarray(self.owner)
        for k, (window, out) in enumerate(zip(self.windows, window_outputs, strict=True)):
            positions = np.flatnonzero(owner[window.start : window.end] == k) + window.start
            result[positions] = out[positions - window.start + self.prefix]
        return result


def _content_span(special_mask: Sequence[int]) -> tuple[int, int]:
    """``[first, stop)`` of the non-special positions; they must be contiguous (one sequence)."""
    content = np.flatnonzero(np.asarray(special_mask, dtype=np.int64) == 0)
    if content.size == 0:
        return len(special_mask), len(special_mask)
    first, stop = int(content[0]), int(content[-1]) + 1
    if content.size != stop - first:
        raise ValueError("windowing needs a single sequence: special tokens found between content tokens")
    return first, stop


def _cut_points(word_ids: Sequence[int | None], first: int, stop: int) -> IntArray:
    """Positions in ``[first, stop]`` where a window may begin or end without splitting a word
    (sorted; both ends included). Not the heads' word starts, which index content tokens."""
    starts = [first]
    for pos in range(first + 1, stop):
        current, previous = word_ids[pos], word_ids[pos - 1]
        if current is None or previous is None or current != previous:
            starts.append(pos)
    starts.append(stop)
    return np.asarray(starts, dtype=np.int64)


def _snap_back(boundaries: IntArray, pos: int, lowest: int) -> int:
    """The last word boundary in ``[lowest, pos]``, else `pos` itself."""
    i = int(np.searchsorted(boundaries, pos, side="right")) - 1
    return int(boundaries[i]) if i >= 0 and boundaries[i] >= lowest else pos


def _snap_forward(boundaries: IntArray, pos: int, highest: int) -> int:
    """The first word boundary in ``[pos, highest]``, else `pos` itself."""
    i = int(np.searchsorted(boundaries, pos, side="left"))
    return int(boundaries[i]) if i < boundaries.size and boundaries[i] <= highest else pos


def _owners(windows: Sequence[Window], n_positions: int, first: int, stop: int) -> tuple[int, ...]:
    """For every position, the window where its smaller distance to a window edge is largest."""
    owner = np.zeros(n_positions, dtype=np.int64)
    best = np.full(n_positions, -1, dtype=np.int64)
    unbounded = n_positions + 1  # a document edge: the window misses no context on that side
    for k, window in enumerate(windows):
        pos = np.arange(window.start, window.end, dtype=np.int64)
        left = pos - window.start if window.start > first else np.full_like(pos, unbounded)
        right = window.end - 1 - pos if window.end < stop else np.full_like(pos, unbounded)
        distance = np.minimum(left, right)
        better = distance > best[window.start : window.end]  # strict: ties stay with the earlier window
        best[window.start : window.end][better] = distance[better]
        owner[window.start : window.end][better] = k
    owner[stop:] = len(windows) - 1  # trailing specials come from the last window, like in `stitch`
    return tuple(owner.tolist())


def plan_windows(
    special_mask: Sequence[int],
    word_ids: Sequence[int | None],
    max_length: int,
    stride: int,
) -> WindowPlan:
    """Plan the windows for one document encoding (special tokens included, not truncated: a
    tokenizer.json may carry a truncation setting, which must be switched off for this encoding).

    Args:
        special_mask: the encoding's special-tokens mask.
        word_ids: the encoding's word ids (None for special tokens).
        max_length: the longest sequence the model runs, special tokens included.
        stride: tokens that consecutive windows share at least; ``0 <= stride`` and less than a
            window's content capacity (``max_length`` minus the special tokens).
    """
    n_positions = len(special_mask)
    if len(word_ids) != n_positions:
        raise ValueError(f"word_ids ({len(word_ids)}) and special_mask ({n_positions}) differ in length")
    first, stop = _content_span(special_mask)
    prefix, suffix = first, n_positions - stop
    if n_positions <= max_length:
        windows: tuple[Window, ...] = (Window(first, stop),)
        return WindowPlan(n_positions, prefix, suffix, windows, (0,) * n_positions)

    if prefix + suffix == 0:
        # NOTE: windows copy the document's own special tokens; an encoding made with
        # add_special_tokens=False would silently give windows without [CLS]/[SEP].
        raise ValueError(
            "the document encoding has no special tokens; encode it with add_special_tokens=True"
        )
    capacity = max_length - prefix - suffix
    if capacity < 1:
        raise ValueError(f"max_length {max_length} leaves no room beside {prefix + suffix} special tokens")
    if not 0 <= stride < capacity:
        raise ValueError(f"stride must be in [0, {capacity}) for max_length {max_length}, got {stride}")

    boundaries = _cut_points(word_ids, first, stop)
    planned: list[Window] = []
    start, previous_end = first, first
    while stop - start > capacity:
        # keep at least half the capacity, enough that the next window still moves forward, and
        # reach past the previous window (else this one would be a redundant sub-window of it)
        lowest = max(start + stride + 1, start + capacity // 2, previous_end + 1)
        end = _snap_back(boundaries, start + capacity, lowest)
        planned.append(Window(start, end))
        previous_end = end
        next_start = end - stride
        if stop - next_start <= capacity:
            # the last window: as much left context as fits, still overlapping by >= stride
            next_start = _snap_forward(boundaries, stop - capacity, next_start)
        else:
            next_start = _snap_back(boundaries, next_start, start + 1)
        start = next_start
    planned.append(Window(start, stop))
    return WindowPlan(n_positions, prefix, suffix, tuple(planned), _owners(planned, n_positions, first, stop))
