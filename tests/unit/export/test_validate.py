"""Unit tests of the validation helpers: inputs, decisions, comparison, eval files."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from bertserve.evaluation.metrics import decisions
from bertserve.export.errors import ExportError
from bertserve.export.validate import (
    build_validation_batches,
    compare,
    load_eval_file,
    random_sequences,
)
from bertserve.modelrepo import ProblemType, Task
from tests.helpers.checkpoints import (
    NER_LABELS_IOB2,
    bert_tokenizer,
    distilbert_tokenizer,
    roberta_tokenizer,
)


@pytest.mark.parametrize("factory", [bert_tokenizer, roberta_tokenizer])
def test_random_sequences_use_the_tokenizers_own_special_tokens(factory):
    tok = factory()
    feeds = random_sequences(tok, [1, 5, 9], ["input_ids", "attention_mask"], random.Random(0))
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    assert ids.shape == (3, 11) and mask.sum(axis=1).tolist() == [3, 7, 11]
    template = tok("a")["input_ids"]
    for row, n in zip(ids, [3, 7, 11], strict=True):
        assert row[0] == template[0] and row[n - 1] == template[-1]
        assert not set(row[1 : n - 1].tolist()) & set(tok.all_special_ids)
        assert (row[n:] == tok.pad_token_id).all()


def test_validation_batches_cover_padding_pairs_and_max_length():
    tok = bert_tokenizer()
    inputs = ["input_ids", "attention_mask", "token_type_ids"]
    batches = build_validation_batches(tok, Task.TEXT_CLASSIFICATION, inputs, max_length=64)
    kinds = {b.kind for b in batches}
    assert kinds == {"sentences", "long", "random", "pairs"}
    assert max(b.shape[1] for b in batches) == 64
    assert all(b.shape[0] > 1 for b in batches)
    # every batch but the equal-length ones carries padding
    assert sum(int((b.mask == 0).any()) for b in batches) >= len(batches) - 1
    pairs = next(b for b in batches if b.kind == "pairs")
    assert (pairs.feeds["token_type_ids"] == 1).any()
    ner = build_validation_batches(tok, Task.TOKEN_CLASSIFICATION, inputs, max_length=64)
    assert "pairs" not in {b.kind for b in ner}


def test_graph_without_token_type_ids_gets_no_such_feed():
    tok = distilbert_tokenizer()
    batches = build_validation_batches(tok, Task.TEXT_CLASSIFICATION, ["input_ids", "attention_mask"], 32)
    assert all(set(b.feeds) == {"input_ids", "attention_mask"} for b in batches)


def test_decisions_per_task():
    logits = np.array([[[0.1, 2.0], [3.0, -1.0], [0.0, 9.0]]], dtype=np.float32)
    mask = np.array([[1, 1, 0]], dtype=np.int64)
    assert decisions(logits, mask, Task.TOKEN_CLASSIFICATION, None).tolist() == [1, 0]
    rows = np.array([[0.5, -0.2], [-1.0, 2.0]], dtype=np.float32)
    row_mask = np.ones((2, 3), dtype=np.int64)
    assert decisions(rows, row_mask, Task.TEXT_CLASSIFICATION, ProblemType.SINGLE_LABEL).tolist() == [0, 1]
    assert decisions(rows, row_mask, Task.TEXT_CLASSIFICATION, ProblemType.MULTI_LABEL).tolist() == [
        1,
        0,
        0,
        1,
    ]


class _Shifted:
    """A fake artifact: PyTorch's logits plus an offset on real positions and garbage on padding."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def infer(self, feeds):
        mask = feeds["attention_mask"].astype(np.float32)
        base = np.stack([mask, -mask], axis=-1)
        return (base + self.offset + (1 - mask)[..., None] * 100.0).astype(np.float32)


def test_compare_ignores_padding_positions_for_token_classification():
    tok = bert_tokenizer()
    batches = build_validation_batches(tok, Task.TOKEN_CLASSIFICATION, ["input_ids", "attention_mask"], 32)
    reference = [_Shifted(0.0).infer(b.feeds) for b in batches]
    # reference and artifact both carry +100 on padding; remove it from the reference only
    reference = [r - (1 - b.mask)[..., None] * 100.0 for r, b in zip(reference, batches, strict=True)]
    result = compare(reference, _Shifted(1e-5), batches, Task.TOKEN_CLASSIFICATION, None)
    assert result.max_abs_diff == pytest.approx(1e-5, abs=1e-6)
    assert result.agreement == 1.0
    assert result.decisions == sum(int(b.mask.sum()) for b in batches)


def test_tsv_eval_file_with_header_pairs_and_label_ids(tmp_path: Path):
    path = tmp_path / "dev.tsv"
    path.write_text("sentence\tlabel\ngood film\t1\nbad film\tNEGATIVE\n", encoding="utf-8")
    data = load_eval_file(path, Task.TEXT_CLASSIFICATION, ["NEGATIVE", "POSITIVE"])
    # gold label sets by name: "1" is class id 1 (POSITIVE)
    assert [(e.text, gold) for e, gold in zip(data.examples, data.gold, strict=True)] == [
        ("good film", frozenset({"POSITIVE"})),
        ("bad film", frozenset({"NEGATIVE"})),
    ]
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("a cat\ta dog\tsports,travel\n", encoding="utf-8")
    data = load_eval_file(pairs, Task.TEXT_CLASSIFICATION, ["sports", "politics", "travel"])
    ((example,), (gold,)) = data.examples, data.gold
    assert example.pair == "a dog" and gold == frozenset({"sports", "travel"})


def test_tsv_eval_file_with_unknown_label_is_an_error(tmp_path: Path):
    path = tmp_path / "dev.tsv"
    path.write_text("good film\t1\nbad film\tmaybe\n", encoding="utf-8")
    with pytest.raises(ExportError, match="unknown label 'maybe'"):
        load_eval_file(path, Task.TEXT_CLASSIFICATION, ["NEGATIVE", "POSITIVE"])


def test_conll_eval_file(tmp_path: Path):
    path = tmp_path / "dev.conll"
    path.write_text("-DOCSTART- O\n\nJohn B-PER\nSmith I-PER\nsings O\n\nParis B-LOC\n", encoding="utf-8")
    data = load_eval_file(path, Task.TOKEN_CLASSIFICATION, list(NER_LABELS_IOB2))
    assert data.metric == "entity_f1"
    assert [s.words for s in data.sentences] == [("John", "Smith", "sings"), ("Paris",)]
    path.write_text("John B-person\n", encoding="utf-8")
    with pytest.raises(ExportError, match="unknown tag 'B-person'"):
        load_eval_file(path, Task.TOKEN_CLASSIFICATION, list(NER_LABELS_IOB2))
