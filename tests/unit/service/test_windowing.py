"""Window planning, window inputs and stitching (`bertserve.service.windowing`)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import numpy as np
import pytest
from tokenizers import Tokenizer

from bertserve.modelrepo import TagScheme
from bertserve.service.heads.token_classification import AggregationStrategy, aggregate, softmax
from bertserve.service.windowing import Window, WindowInputs, WindowPlan, plan_windows


def single_sequence(word_ids: Sequence[int]) -> tuple[list[int], list[int | None]]:
    """Special mask and word ids of ``[CLS] <content> [SEP]``."""
    return [1, *([0] * len(word_ids)), 1], [None, *word_ids, None]


def run_windows(plan: WindowPlan, ids: Sequence[int], model: np.ndarray) -> np.ndarray:
    """Run a context-free "model" (a lookup table: token id -> logits) on every window, stitch."""
    outputs = [model[plan.window_inputs(k, ids).input_ids] for k in range(len(plan.windows))]
    return plan.stitch(outputs)


def test_a_text_that_fits_is_one_window_whose_input_is_its_encoding(wordpiece: Tokenizer) -> None:
    enc = wordpiece.encode("Angela Merkel met Emmanuel Macron in Brussels")
    plan = plan_windows(enc.special_tokens_mask, enc.word_ids, max_length=len(enc.ids), stride=4)
    assert plan.windows == (Window(1, len(enc.ids) - 1),)
    inputs = plan.window_inputs(0, enc.ids, enc.type_ids)
    np.testing.assert_array_equal(inputs.input_ids, enc.ids)
    np.testing.assert_array_equal(inputs.token_type_ids, enc.type_ids)
    assert len(inputs.input_ids) == plan.sequence_length(0) == sum(enc.attention_mask)
    logits = np.random.default_rng(0).normal(size=(len(enc.ids), 3)).astype(np.float32)
    np.testing.assert_array_equal(plan.stitch([logits]), logits)


def test_an_empty_text_is_one_empty_window(wordpiece: Tokenizer) -> None:
    enc = wordpiece.encode("   ")
    plan = plan_windows(enc.special_tokens_mask, enc.word_ids, max_length=8, stride=2)
    assert len(plan.windows) == 1
    assert len(plan.windows[0]) == 0
    assert plan.sequence_length(0) == plan.prefix + plan.suffix  # no content rows
    np.testing.assert_array_equal(plan.window_inputs(0, enc.ids).input_ids, enc.ids)


def test_windows_and_owners_planned_by_hand() -> None:
    # 10 one-token words, 6 positions per window = 4 content tokens, overlap 2.
    special, word_ids = single_sequence(range(10))
    plan = plan_windows(special, word_ids, max_length=6, stride=2)
    assert plan.windows == (Window(1, 5), Window(3, 7), Window(5, 9), Window(7, 11))
    # position 4: 0 tokens right of it in window 0, 1 on each side in window 1 -> window 1;
    # position 7: (2, 1) in window 2 against (0, document end) in window 3 -> window 2
    assert plan.owner == (0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 3, 3)
    assert plan.sequence_length(0) == 6
    assert (plan.prefix, plan.prefix + len(plan.windows[3])) == (1, 5)  # window 3's content rows


def test_cuts_move_back_to_word_boundaries() -> None:
    # content words (by token): aaa bb c ddd e ff; windows of 6 content tokens, overlap >= 2
    special, word_ids = single_sequence([0, 0, 0, 1, 1, 2, 3, 3, 3, 4, 5, 5])
    plan = plan_windows(special, word_ids, max_length=8, stride=2)
    # raw cuts would be [1, 7) [5, 11) [9, 13): 5 and 11 split "bb" and "ff"; the second window
    # starts back at "bb" (overlap 3), and the last one reaches back to a full 6 tokens
    assert plan.windows == (Window(1, 7), Window(4, 10), Window(7, 13))


def test_a_word_longer_than_half_a_window_is_cut() -> None:
    special, word_ids = single_sequence([0] * 3 + [1] * 20 + [2] * 3)
    plan = plan_windows(special, word_ids, max_length=10, stride=2)
    assert plan.windows[0] == Window(1, 9)
    assert plan.windows[-1].end == len(special) - 1
    assert all(len(w) <= 8 for w in plan.windows)


def brute_force_owner(windows: Sequence[Window], pos: int, first: int, stop: int) -> set[int]:
    """Indices of the windows where `pos` has the most context on its poorer side."""
    unbounded = 10**9

    def distance(w: Window) -> int:
        left = pos - w.start if w.start > first else unbounded
        right = w.end - 1 - pos if w.end < stop else unbounded
        return min(left, right)

    holding = [k for k, w in enumerate(windows) if w.start <= pos < w.end]
    best = max(distance(windows[k]) for k in holding)
    return {k for k in holding if distance(windows[k]) == best}


def test_planned_windows_cover_overlap_and_respect_words_on_random_documents() -> None:
    rng = random.Random(7)
    word_safe = 0
    for _ in range(300):
        word_lengths = [rng.choice((1, 1, 1, 2, 2, 3, 5)) for _ in range(rng.randint(1, 120))]
        content = [w for w, length in enumerate(word_lengths) for _ in range(length)]
        special, word_ids = single_sequence(content)
        max_length = rng.randint(8, 40)
        capacity = max_length - 2
        stride = rng.randint(0, capacity - 1 if rng.random() < 0.5 else capacity // 5)
        plan = plan_windows(special, word_ids, max_length, stride)
        first, stop = 1, len(special) - 1
        windows = plan.windows

        assert windows[0].start == first
        assert windows[-1].end == stop
        assert all(len(w) <= capacity for w in windows)
        for a, b in itertools.pairwise(windows):
            assert a.start < b.start <= a.end < b.end  # forward progress, no gap
            assert a.end - b.start >= stride
        if len(windows) > 1:
            # the last window reaches back to full size, less at most part of a word
            assert len(windows[-1]) > capacity - max(word_lengths)

        boundaries = {first, stop} | {p for p in range(first + 1, stop) if word_ids[p] != word_ids[p - 1]}
        if max(word_lengths) <= capacity // 2 - stride - 1:
            # words short enough that a boundary always lies within the allowed moves
            word_safe += 1
            assert all(w.end in boundaries for w in windows)
            assert all(w.start in boundaries for w in windows[:-1])

        for pos in range(first, stop):
            assert plan.owner[pos] == min(brute_force_owner(windows, pos, first, stop))  # ties: earlier
    assert word_safe > 30


def test_stitch_takes_each_row_from_the_owning_window_position() -> None:
    special, word_ids = single_sequence(range(23))
    plan = plan_windows(special, word_ids, max_length=9, stride=3)
    # a fake output that says which window and which row of it a score came from
    outputs = [
        np.stack([np.full(plan.sequence_length(k), k), np.arange(plan.sequence_length(k))], axis=1).astype(
            np.float32
        )
        for k in range(len(plan.windows))
    ]
    stitched = plan.stitch(outputs)
    assert stitched.shape == (25, 2)
    for pos in range(1, 24):
        k = plan.owner[pos]
        assert stitched[pos, 0] == k
        assert stitched[pos, 1] == pos - plan.windows[k].start + plan.prefix
    last = len(plan.windows) - 1
    assert stitched[0].tolist() == [0, 0]  # [CLS] from the first window
    assert stitched[24].tolist() == [last, plan.sequence_length(last) - 1]  # [SEP] from the last


def test_window_inputs_carry_the_documents_special_tokens_and_type_ids() -> None:
    special, word_ids = single_sequence(range(10))
    ids = [101, *range(1000, 1010), 102]
    type_ids = [0] * 12
    plan = plan_windows(special, word_ids, max_length=6, stride=2)
    inputs = plan.window_inputs(1, ids, type_ids)
    assert isinstance(inputs, WindowInputs)
    assert inputs.input_ids.tolist() == [101, 1002, 1003, 1004, 1005, 102]
    assert inputs.token_type_ids.tolist() == [0] * 6
    assert len(inputs.input_ids) == plan.sequence_length(1) == 6
    assert inputs.input_ids.dtype == np.int64
    assert plan.window_inputs(1, ids).token_type_ids.tolist() == [0] * 6


LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")


def test_an_entity_straddling_a_window_boundary_is_found_once_with_its_span() -> None:
    words = ["we", "met", "in", "the", "old", "Angela", "Merkel", "yesterday", "in", "Berlin", "again"]
    text = " ".join(words)
    offsets, cursor = [(0, 0)], 0
    for word in words:
        offsets.append((cursor, cursor + len(word)))
        cursor += len(word) + 1
    offsets.append((0, 0))
    special, word_ids = single_sequence(range(len(words)))
    ids = [0, *range(1, len(words) + 1), 0]
    # a context-free model: "Angela" -> B-PER, "Merkel" -> I-PER, "Berlin" -> B-LOC, else O
    table = np.full((len(words) + 1, len(LABELS)), -2.0, dtype=np.float32)
    table[:, 0] = 2.0
    table[6] = [-2, 3, -2, -2, -2]
    table[7] = [-2, -2, 3, -2, -2]
    table[10] = [-2, -2, -2, 3, -2]

    plan = plan_windows(special, word_ids, max_length=8, stride=2)
    assert plan.windows[0] == Window(1, 7)  # ends between "Angela" (6) and "Merkel" (7)
    scores = softmax(run_windows(plan, ids, table))
    for strategy in AggregationStrategy:
        entities = aggregate(text, offsets, word_ids, special, scores, LABELS, TagScheme.IOB2, strategy)
        if strategy is AggregationStrategy.NONE:
            assert [(e.label, e.text, e.index) for e in entities] == [
                ("B-PER", "Angela", 6),
                ("I-PER", "Merkel", 7),
                ("B-LOC", "Berlin", 10),
            ]
        else:
            assert [(e.label, e.start, e.end, e.text) for e in entities] == [
                ("PER", 18, 31, "Angela Merkel"),
                ("LOC", 45, 51, "Berlin"),
            ]


def test_windowed_equals_unwindowed_for_a_context_free_model(wordpiece: Tokenizer) -> None:
    rng = random.Random(3)
    vocabulary = (
        "angela", "merkel", "met", "emmanuel", "macron", "in", "brussels", ",", "the", "new", "office",
        "berlin", "zoë", "東京", "🎉",
    )  # fmt: skip
    text = " ".join(rng.choice(vocabulary) for _ in range(400))
    enc = wordpiece.encode(text)
    table = np.random.default_rng(3).normal(0.0, 2.0, size=(wordpiece.get_vocab_size(), len(LABELS)))
    table = table.astype(np.float32)
    whole = softmax(table[enc.ids])
    plan = plan_windows(enc.special_tokens_mask, enc.word_ids, max_length=24, stride=6)
    assert len(plan.windows) > 20
    windowed = softmax(run_windows(plan, enc.ids, table))
    np.testing.assert_array_equal(windowed, whole)

    straddling = 0
    for strategy in AggregationStrategy:
        expected = aggregate(
            text, enc.offsets, enc.word_ids, enc.special_tokens_mask, whole, LABELS, TagScheme.IOB2, strategy
        )
        got = aggregate(
            text,
            enc.offsets,
            enc.word_ids,
            enc.special_tokens_mask,
            windowed,
            LABELS,
            TagScheme.IOB2,
            strategy,
        )
        assert got == expected
        # count the entities that a window edge cuts, so the test is known to cover them
        cuts = [enc.offsets[w.end - 1][1] for w in plan.windows[:-1]]
        straddling += sum(any(e.start < cut < e.end for cut in cuts) for e in got)
    assert straddling > 0


def test_invalid_plans_are_refused(wordpiece: Tokenizer) -> None:
    special, word_ids = single_sequence(range(10))
    with pytest.raises(ValueError, match="stride"):
        plan_windows(special, word_ids, max_length=6, stride=4)
    with pytest.raises(ValueError, match="stride"):
        plan_windows(special, word_ids, max_length=6, stride=-1)
    with pytest.raises(ValueError, match="no room"):
        plan_windows(special, word_ids, max_length=2, stride=0)
    with pytest.raises(ValueError, match="differ in length"):
        plan_windows(special, word_ids[:-1], max_length=6, stride=0)
    bare = wordpiece.encode("angela merkel met macron in brussels", add_special_tokens=False)
    with pytest.raises(ValueError, match="no special tokens"):
        plan_windows(bare.special_tokens_mask, bare.word_ids, max_length=4, stride=1)
    pair = wordpiece.encode("angela merkel met macron", "in brussels on monday")
    with pytest.raises(ValueError, match="single sequence"):
        plan_windows(pair.special_tokens_mask, pair.word_ids, max_length=6, stride=1)

    plan = plan_windows(special, word_ids, max_length=6, stride=2)
    with pytest.raises(ValueError, match="window outputs"):
        plan.stitch([np.zeros((6, 3))])
    with pytest.raises(ValueError, match="shape"):
        plan.stitch([np.zeros((5, 3))] * len(plan.windows))
    with pytest.raises(ValueError, match="ids"):
        plan.window_inputs(0, [1, 2, 3])
