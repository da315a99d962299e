"""Output activations shared by the heads, in numpy."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating]


def softmax(logits: FloatArray, axis: int = -1) -> FloatArray:
    """Numerically stable softmax (max subtracted first), in the input's dtype.

    NOTE: written exactly as the transformers pipelines compute it, so float32 scores agree bit for bit."""
    shifted_exp = np.exp(logits - np.max(logits, axis=axis, keepdims=True))
    result: FloatArray = shifted_exp / shifted_exp.sum(axis=axis, keepdims=True)
    return result


def sigmoid(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    # exp of -|x| never overflows; both branches are exact rearrangements of 1 / (1 + e^-x).
    e = np.exp(-np.abs(logits))
    return np.where(logits >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)
