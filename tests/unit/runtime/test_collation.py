"""Collation: the one way a batch is padded into a backend's feeds (service, export, evaluation)."""

from __future__ import annotations

import numpy as np
import pytest

from bertserve.runtime.collation import Collator, ModelInput, check_logits
from bertserve.runtime.errors import InferenceFailure, NonFiniteOutputError, OutputShapeError


def seq(length: int, start: int = 5, type_ids: bool = False) -> ModelInput:
    ids = np.arange(start, start + length, dtype=np.int64)
    types = (np.arange(length) >= length // 2).astype(np.int64) if type_ids else None
    return ModelInput(ids, types)


def test_collator_pads_to_the_longest_in_the_batch() -> None:
    collator = Collator(("input_ids", "attention_mask", "token_type_ids"), pad_token_id=0)
    feeds, real, padded = collator.collate([seq(2), seq(4, type_ids=True)])
    assert feeds["input_ids"].shape == (2, 4)
    assert feeds["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert feeds["token_type_ids"].tolist() == [[0, 0, 0, 0], [0, 0, 1, 1]]
    assert (real, padded) == (6, 8)


def test_collator_pads_to_the_width_a_fixed_shape_backend_wants() -> None:
    """TensorRT's bucket: the batch is padded past its longest sequence, masked like padding."""
    collator = Collator(("input_ids", "attention_mask"), pad_token_id=9, width=lambda n: 8 if n <= 8 else 16)
    feeds, real, padded = collator.collate([seq(2), seq(5)])
    assert feeds["input_ids"].shape == (2, 8)
    assert feeds["input_ids"][0].tolist() == [5, 6, 9, 9, 9, 9, 9, 9]
    assert feeds["attention_mask"].tolist() == [[1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]]
    assert (real, padded) == (7, 16)  # the bucket's padding is counted: the device computes it
    assert collator.collate([seq(9)])[0]["input_ids"].shape == (1, 16)


def test_collator_feeds_only_the_graph_inputs() -> None:
    feeds, _, _ = Collator(("input_ids", "attention_mask"), 0).collate([seq(3, type_ids=True)])
    assert set(feeds) == {"input_ids", "attention_mask"}


def test_collator_refuses_unknown_graph_inputs() -> None:
    with pytest.raises(ValueError, match="position_ids"):
        Collator(("input_ids", "position_ids"), 0)


def test_collator_pads_with_the_models_pad_token_and_keeps_int64() -> None:
    feeds, real, padded = Collator(("input_ids", "attention_mask"), pad_token_id=1).collate(
        [seq(1, start=7), seq(3, start=7)]
    )
    assert feeds["input_ids"].tolist() == [[7, 1, 1], [7, 8, 9]]
    assert all(v.dtype == np.int64 for v in feeds.values())
    assert (real, padded) == (4, 6)


def test_a_sequence_without_type_ids_gets_zeros() -> None:
    feeds, _, _ = Collator(("input_ids", "attention_mask", "token_type_ids"), 0).collate([seq(3)])
    assert feeds["token_type_ids"].tolist() == [[0, 0, 0]]


def test_model_input_length_is_its_token_count() -> None:
    assert seq(5).length == 5


def test_check_logits_accepts_one_finite_row_per_sequence() -> None:
    check_logits(np.zeros((3, 2), np.float32), 3)
    check_logits(np.zeros((2, 7, 4), np.float32), 2)  # token-level


def test_check_logits_refuses_a_wrong_row_count_or_non_finite_values() -> None:
    with pytest.raises(OutputShapeError, match="2 rows for a batch of 3"):
        check_logits(np.zeros((2, 2), np.float32), 3)
    bad = np.zeros((2, 2), np.float32)
    bad[1, 0] = np.inf
    with pytest.raises(NonFiniteOutputError, match="non-finite"):
        check_logits(bad, 2)
    assert issubclass(NonFiniteOutputError, InferenceFailure)
    assert issubclass(OutputShapeError, InferenceFailure)
