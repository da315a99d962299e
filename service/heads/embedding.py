"""Sentence embeddings: pooled vectors -> Matryoshka truncation and L2 normalization.

The graph pools (the export appends the checkpoint's pooling), so the head gets `[n, d]` rows.
Truncation comes first: a Matryoshka model's first k dimensions are themselves an embedding, and
normalizing after the cut gives the unit vector of that k-dimensional embedding (normalizing
first and cutting after would not)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from bertserve.modelrepo import EmbeddingConfig
from bertserve.service.errors import InvalidInputError


class EmbeddingHead:
    def __init__(self, config: EmbeddingConfig) -> None:
        self.config = config
        self.dimensions = config.dimensions

    def check_dimensions(self, dimensions: int | None) -> int:
        """The width a request asks for, refused (422) when the model cannot give it."""
        if dimensions is None:
            return self.dimensions
        if not 1 <= dimensions <= self.dimensions:
            raise InvalidInputError(
                f"dimensions must be between 1 and the model's {self.dimensions}, not {dimensions}"
            )
        return dimensions

    def postprocess(
        self, pooled: NDArray[np.float32], *, normalize: bool | None = None, dimensions: int | None = None
    ) -> NDArray[np.float32]:
        """`[n, d]` pooled vectors -> `[n, dimensions]`, L2-normalized unless `normalize` is False
        (None: the model's default)."""
        if pooled.ndim != 2 or pooled.shape[1] != self.dimensions:
            raise ValueError(f"expected embeddings [n, {self.dimensions}], got {list(pooled.shape)}")
        width = self.check_dimensions(dimensions)
        out = pooled[:, :width].astype(np.float32, copy=True)
        if self.config.normalize if normalize is None else normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            # a zero vector stays zero (sentence-transformers' normalize clamps the norm the same way)
            out /= np.maximum(norms, 1e-12)
        return out


def cosine_scores(query: NDArray[np.float32], documents: NDArray[np.float32]) -> NDArray[np.float32]:
    """Cosine similarity of one query vector `[d]` with each document `[n, d]`."""
    q = query / max(float(np.linalg.norm(query)), 1e-12)
    norms = np.maximum(np.linalg.norm(documents, axis=1), 1e-12)
    return np.asarray((documents @ q) / norms, dtype=np.float32)
