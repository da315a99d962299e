"""Sequence classification: logits -> ranked (label, score) lists."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from bertserve.modelrepo import ProblemType
from bertserve.service.heads.activations import sigmoid, softmax

__all__ = ["Activation", "ClassificationHead", "LabelScore", "sigmoid", "softmax", "uses_sigmoid"]


# what a client may ask for instead of the model's own activation (raw logits: "none")
Activation = Literal["softmax", "sigmoid", "none"]


@dataclass(frozen=True, slots=True)
class LabelScore:
    label: str
    score: float


def uses_sigmoid(num_labels: int, problem_type: ProblemType | None) -> bool:
    """Whether scores are independent sigmoids: multi-label models, and models with one logit
    (cross-encoders, binary scorers), whose softmax would always be 1.0. The transformers
    text-classification pipeline and TEI decide the same way."""
    return problem_type == ProblemType.MULTI_LABEL or num_labels == 1


class ClassificationHead:
    """Softmax for single-label models; independent sigmoids for multi-label models and for a
    single logit (`uses_sigmoid`)."""

    def __init__(self, labels: Sequence[str], problem_type: ProblemType) -> None:
        self.labels = tuple(labels)
        self.problem_type = problem_type
        self._activation = sigmoid if uses_sigmoid(len(self.labels), problem_type) else softmax

    def scores(self, logits: NDArray[np.float32], function: Activation | None = None) -> NDArray[np.float32]:
        """`[inputs, labels]` logits -> probabilities of the same shape (`function`: the model's
        own activation unless a client asks for another, as the transformers pipeline's
        `function_to_apply`; `none` leaves the logits as they are)."""
        if logits.ndim != 2 or logits.shape[1] != len(self.labels):
            raise ValueError(f"expected logits [n, {len(self.labels)}], got {list(logits.shape)}")
        x = logits.astype(np.float32, copy=False)
        if function is None:
            return self._activation(x)
        if function == "none":
            return x.copy()
        return sigmoid(x) if function == "sigmoid" else softmax(x)

    def postprocess(
        self, logits: NDArray[np.float32], top_k: int | None = None, function: Activation | None = None
    ) -> list[list[LabelScore]]:
        """Per input, the `top_k` (default: all) labels, highest score first."""
        probs = self.scores(logits, function)
        k = len(self.labels) if top_k is None else min(top_k, len(self.labels))
        # Stable sort on the negated scores: ties keep label order, so results are deterministic.
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(probs, order, axis=1)
        labels = self.labels
        return [
            [LabelScore(labels[j], s) for j, s in zip(idx_row, score_row, strict=True)]
            for idx_row, score_row in zip(order.tolist(), top.tolist(), strict=True)
        ]
