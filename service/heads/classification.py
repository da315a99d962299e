"""Sequence classification: logits -> ranked (label, score) lists."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from bertserve.modelrepo import ProblemType, uses_sigmoid
from bertserve.service.heads.activations import sigmoid, softmax

__all__ = ["Activation", "ClassificationHead", "LabelScore", "decided", "sigmoid", "softmax", "uses_sigmoid"]


# what a client may ask for instead of the model's own activation (raw logits: "none")
Activation = Literal["softmax", "sigmoid", "none"]


@dataclass(frozen=True, slots=True)
class LabelScore:
    label: str
    score: float
    above_threshold: bool | None = None  # with thresholds in model.yaml: whether this label is decided


DEFAULT_THRESHOLD = 0.5


def decided(
    labels: Sequence[str], probs: NDArray[np.float32], thresholds: Mapping[str, float], independent: bool
) -> NDArray[np.bool_]:
    """`[inputs, labels]` decisions under `thresholds`: independent (sigmoid) scores each against
    its label's threshold (0.5 where none is set); a two-label softmax by its one thresholded
    label's probability (that label, else the other)."""
    if independent:
        cut = np.array([thresholds.get(label, DEFAULT_THRESHOLD) for label in labels], dtype=np.float32)
        return probs >= cut
    ((label, threshold),) = thresholds.items()
    j = list(labels).index(label)
    chosen = probs[:, j] >= threshold
    out = np.zeros(probs.shape, dtype=bool)
    out[:, j] = chosen
    out[:, 1 - j] = ~chosen
    return out


class ClassificationHead:
    """Softmax for single-label models; independent sigmoids for multi-label models and for a
    single logit (`uses_sigmoid`)."""

    def __init__(
        self, labels: Sequence[str], problem_type: ProblemType, thresholds: Mapping[str, float] | None = None
    ) -> None:
        self.labels = tuple(labels)
        self.problem_type = problem_type
        self.independent = uses_sigmoid(len(self.labels), problem_type)
        self._activation = sigmoid if self.independent else softmax
        self.thresholds = dict(thresholds) if thresholds else None

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
        if self.thresholds is None or function is not None:  # raw or re-activated scores: no decision
            return [
                [LabelScore(labels[j], s) for j, s in zip(idx_row, score_row, strict=True)]
                for idx_row, score_row in zip(order.tolist(), top.tolist(), strict=True)
            ]
        above = np.take_along_axis(decided(labels, probs, self.thresholds, self.independent), order, axis=1)
        return [
            [LabelScore(labels[j], s, a) for j, s, a in zip(idx_row, score_row, above_row, strict=True)]
            for idx_row, score_row, above_row in zip(
                order.tolist(), top.tolist(), above.tolist(), strict=True
            )
        ]
