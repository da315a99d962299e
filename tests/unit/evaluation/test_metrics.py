"""The one span decoder, entity scores, accuracy and decision agreement."""

from __future__ import annotations

import numpy as np
import pytest

from bertserve.evaluation.metrics import (
    accuracy,
    agreement,
    decisions,
    decode_spans,
    entity_scores,
    entity_scores_by_type,
)
from bertserve.modelrepo import ProblemType, TagScheme, Task


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        (["B-PER", "I-PER", "O", "B-LOC"], {(0, 2, "PER"), (3, 4, "LOC")}),
        (["I-PER", "I-PER", "I-LOC"], {(0, 2, "PER"), (2, 3, "LOC")}),  # IOB1 / lenient
        (["B-PER", "B-PER"], {(0, 1, "PER"), (1, 2, "PER")}),
        (["S-LOC", "B-ORG", "I-ORG", "E-ORG", "O"], {(0, 1, "LOC"), (1, 4, "ORG")}),
        (["U-LOC", "B-ORG", "L-ORG"], {(0, 1, "LOC"), (1, 3, "ORG")}),  # BILOU
        (["O", "O"], set()),
    ],
)
def test_extract_entities(tags, expected):
    # (moved from tests/unit/export/test_validate.py: export's extract_entities is decode_spans now)
    assert {(start, end, kind) for kind, start, end in decode_spans(tags)} == expected


@pytest.mark.parametrize(
    ("tags", "scheme", "expected"),
    [
        # conlleval: an I- after another type (or after O) opens an entity
        (
            ["B-PER", "I-LOC", "O", "I-ORG", "I-ORG"],
            TagScheme.IOB2,
            [("PER", 0, 1), ("LOC", 1, 2), ("ORG", 3, 5)],
        ),
        # BIOES: E- closes; an I- after it opens; a lone E- is a one-token entity
        (
            ["B-PER", "E-PER", "I-PER", "O", "E-LOC"],
            TagScheme.BIOES,
            [("PER", 0, 2), ("PER", 2, 3), ("LOC", 4, 5)],
        ),
        (["b-per", "i-per"], TagScheme.IOB2, [("per", 0, 2)]),  # prefixes in any case
        (["DATE", "DATE", "O", "TIME"], TagScheme.NONE, [("DATE", 0, 2), ("TIME", 3, 4)]),
    ],
)
def test_decode_spans_by_scheme(tags, scheme, expected):
    assert decode_spans(tags, scheme) == expected


def test_entity_scores_are_micro_averaged_exact_matches():
    gold = [{("PER", 0, 2), ("LOC", 5, 6)}, {("ORG", 0, 1)}, set()]
    predicted = [{("PER", 0, 2), ("LOC", 4, 6)}, {("ORG", 0, 1)}, {("PER", 3, 4)}]
    scores = entity_scores(gold, predicted)
    assert (scores.correct, scores.gold, scores.predicted) == (2, 3, 4)
    assert scores.precision == pytest.approx(0.5) and scores.recall == pytest.approx(2 / 3)
    assert scores.f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    by_type = entity_scores_by_type(gold, predicted)
    assert list(by_type) == ["LOC", "ORG", "PER"]
    assert by_type["LOC"].f1 == 0.0 and by_type["ORG"].f1 == 1.0
    assert (by_type["PER"].correct, by_type["PER"].predicted) == (1, 2)
    assert entity_scores(gold, predicted, "PER") == by_type["PER"]


def test_entity_scores_without_entities():
    scores = entity_scores([set()], [set()])
    assert (scores.precision, scores.recall, scores.f1) == (0.0, 0.0, 0.0)


def test_accuracy_and_agreement():
    assert accuracy([frozenset({"a"}), frozenset({"b"})], [frozenset({"a"}), frozenset({"a"})]) == 0.5
    with pytest.raises(ValueError, match="2 gold answers but 1"):
        accuracy(["a", "b"], ["a"])
    assert agreement(np.array([1, 0, 2]), np.array([1, 1, 2])) == (2, 3)
    with pytest.raises(ValueError, match="differ"):
        agreement(np.array([1]), np.array([1, 2]))


def test_a_single_logit_decides_by_its_sign_not_by_an_argmax_that_always_agrees() -> None:
    # with one logit, argmax is 0 for every row: agreement with PyTorch could never fall
    logits = np.array([[1.5], [-0.2], [0.3]], dtype=np.float32)
    mask = np.ones((3, 4), dtype=np.int64)
    got = decisions(logits, mask, Task.TEXT_CLASSIFICATION, ProblemType.SINGLE_LABEL)
    assert got.tolist() == [1, 0, 1]
    flipped = decisions(-logits, mask, Task.TEXT_CLASSIFICATION, ProblemType.SINGLE_LABEL)
    assert agreement(got, flipped) == (0, 3)


def test_embeddings_agree_by_cosine_similarity_not_by_equality() -> None:
    from bertserve.evaluation.metrics import cosine_similarity, embedding_agreement

    reference = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]], dtype=np.float32)
    candidate = np.array([[2.0, 0.01], [1.0, 0.0], [1.0, 1.1], [0.0, 0.0]], dtype=np.float32)
    cos = cosine_similarity(reference, candidate)
    assert cos[0] > 0.999 and cos[1] == 0.0 and 0.99 < cos[2] < 1.0 and cos[3] == 0.0
    assert embedding_agreement(reference, candidate) == (2, 4)  # scale does not matter; direction does
    assert embedding_agreement(reference, candidate, min_cosine=0.9999) == (1, 4)
    with pytest.raises(ValueError):
        cosine_similarity(reference, candidate[:, :1])
