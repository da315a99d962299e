"""How often two models make the same decision: the rule the export's low-precision gate and the
service's bf16 warm-up check share (and `bertserve.evaluation.metrics` re-exports).

Decisions are what a user sees: class per row, label set per row for sigmoid models, tag per real
token; an embedding agrees when its cosine similarity to the reference is high enough.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from bertserve.modelrepo import ProblemType, Task, uses_sigmoid

# An embedding "agrees" with the reference when their cosine similarity is at least this: the
# low-precision gate's counterpart of a classifier's same argmax.
EMBEDDING_AGREEMENT_COSINE = 0.99


def decisions(
    logits: npt.NDArray[np.float32],
    mask: npt.NDArray[np.int64],
    task: Task,
    problem_type: ProblemType | None,
) -> npt.NDArray[np.int64]:
    """The discrete outputs a user sees: class per row, label set per row (also the one
    thresholded score of a single-logit model, where an argmax would always agree), or tag per
    real token."""
    if task == Task.TOKEN_CLASSIFICATION:
        return np.asarray(logits.argmax(-1)[mask.astype(bool)], dtype=np.int64)
    if uses_sigmoid(logits.shape[-1], problem_type):  # the head's rule; sigmoid > 0.5 is logit > 0
        return np.asarray((logits > 0).reshape(-1), dtype=np.int64)
    return np.asarray(logits.argmax(-1), dtype=np.int64)


def agreement(reference: npt.NDArray[np.int64], candidate: npt.NDArray[np.int64]) -> tuple[int, int]:
    """(decisions that agree, decisions) between two models' `decisions` on the same inputs."""
    if reference.shape != candidate.shape:
        raise ValueError(f"decisions of shape {reference.shape} and {candidate.shape} differ")
    return int((reference == candidate).sum()), int(reference.size)


def cosine_similarity(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Row-wise cosine similarity of two `[n, d]` arrays (0 where a row is all zeros)."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"embeddings of shape {a.shape} and {b.shape} cannot be compared row by row")
    x, y = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    dots = (x * y).sum(axis=1)
    return np.asarray(np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0), dtype=np.float64)


def embedding_agreement(
    reference: npt.NDArray[np.float32],
    candidate: npt.NDArray[np.float32],
    min_cosine: float = EMBEDDING_AGREEMENT_COSINE,
) -> tuple[int, int]:
    """(rows whose cosine similarity to the reference is at least `min_cosine`, rows)."""
    cos = cosine_similarity(reference, candidate)
    return int((cos >= min_cosine).sum()), int(cos.size)
