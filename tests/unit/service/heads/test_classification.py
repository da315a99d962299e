from __future__ import annotations

import math

import numpy as np
import pytest

from bertserve.modelrepo import ProblemType
from bertserve.service.heads.classification import ClassificationHead, sigmoid, softmax

LABELS = ("neg", "neu", "pos")


def test_softmax_matches_the_definition_and_survives_huge_logits() -> None:
    logits = np.array([[1.0, 2.0, 3.0], [1000.0, 1001.0, 999.0]], dtype=np.float32)
    probs = softmax(logits)
    row = [math.exp(v) for v in (1.0, 2.0, 3.0)]
    np.testing.assert_allclose(probs[0], [v / sum(row) for v in row], rtol=1e-6)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probs[1], softmax(np.array([[1.0, 2.0, 0.0]], dtype=np.float32))[0], rtol=1e-6)


def test_sigmoid_is_stable_at_both_ends() -> None:
    x = np.array([-1000.0, -2.0, 0.0, 2.0, 1000.0], dtype=np.float32)
    out = sigmoid(x)
    np.testing.assert_allclose(out[1:4], [1 / (1 + math.exp(2)), 0.5, 1 / (1 + math.exp(-2))], rtol=1e-6)
    assert out[0] == 0.0 and out[4] == 1.0


def test_single_label_ranks_all_labels_by_softmax() -> None:
    head = ClassificationHead(LABELS, ProblemType.SINGLE_LABEL)
    (result,) = head.postprocess(np.array([[0.1, 2.0, -1.0]], dtype=np.float32))
    assert [r.label for r in result] == ["neu", "neg", "pos"]
    assert math.isclose(sum(r.score for r in result), 1.0, rel_tol=1e-6)


def test_multi_label_uses_independent_sigmoids() -> None:
    head = ClassificationHead(LABELS, ProblemType.MULTI_LABEL)
    (result,) = head.postprocess(np.array([[3.0, 3.0, -3.0]], dtype=np.float32))
    scores = {r.label: r.score for r in result}
    assert scores["neg"] == pytest.approx(1 / (1 + math.exp(-3)), rel=1e-6)
    assert scores["pos"] == pytest.approx(1 / (1 + math.exp(3)), rel=1e-6)
    # ties keep label order
    assert [r.label for r in result] == ["neg", "neu", "pos"]


def test_top_k_per_input() -> None:
    head = ClassificationHead(LABELS, ProblemType.SINGLE_LABEL)
    results = head.postprocess(np.array([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]], dtype=np.float32), top_k=1)
    assert [[r.label for r in row] for row in results] == [["pos"], ["neg"]]
    assert len(head.postprocess(np.zeros((1, 3), dtype=np.float32), top_k=10)[0]) == 3


def test_wrong_logit_shape_is_refused() -> None:
    head = ClassificationHead(LABELS, ProblemType.SINGLE_LABEL)
    with pytest.raises(ValueError, match=r"\[n, 3\]"):
        head.postprocess(np.zeros((2, 4), dtype=np.float32))


def test_a_single_logit_gets_a_sigmoid_not_a_softmax_of_one() -> None:
    # a cross-encoder or binary scorer: softmax over one logit would answer 1.0 for every input
    head = ClassificationHead(("relevance",), ProblemType.SINGLE_LABEL)
    results = head.postprocess(np.array([[2.0], [-3.0], [0.0]], dtype=np.float32))
    assert [row[0].score for row in results] == pytest.approx(
        [1 / (1 + math.exp(-2)), 1 / (1 + math.exp(3)), 0.5], rel=1e-6
    )
    assert all(row[0].label == "relevance" for row in results)


def test_thresholds_mark_each_independent_label_against_its_own_cut() -> None:
    import numpy as np

    from bertserve.modelrepo import ProblemType
    from bertserve.service.heads.classification import ClassificationHead

    head = ClassificationHead(["a", "b", "c"], ProblemType.MULTI_LABEL, {"a": 0.9, "b": 0.2})
    logits = np.log(np.array([[0.8, 0.3, 0.6]]) / (1 - np.array([[0.8, 0.3, 0.6]]))).astype(np.float32)
    (row,) = head.postprocess(logits)
    marks = {s.label: s.above_threshold for s in row}
    assert marks == {"a": False, "b": True, "c": True}  # c keeps the default 0.5
    # raw or re-activated scores carry no decision
    (raw,) = head.postprocess(logits, function="none")
    assert all(s.above_threshold is None for s in raw)


def test_a_binary_softmax_threshold_decides_between_its_two_labels() -> None:
    import numpy as np

    from bertserve.modelrepo import ProblemType
    from bertserve.service.heads.classification import ClassificationHead

    head = ClassificationHead(["NEGATIVE", "POSITIVE"], ProblemType.SINGLE_LABEL, {"POSITIVE": 0.8})
    rows = head.postprocess(np.array([[0.0, 1.0], [0.0, 2.0]], dtype=np.float32))  # P(pos) 0.73, 0.88
    decided = [{s.label: s.above_threshold for s in row} for row in rows]
    assert decided == [{"NEGATIVE": True, "POSITIVE": False}, {"NEGATIVE": False, "POSITIVE": True}]
    plain = ClassificationHead(["NEGATIVE", "POSITIVE"], ProblemType.SINGLE_LABEL)
    assert all(s.above_threshold is None for s in plain.postprocess(np.zeros((1, 2), np.float32))[0])
